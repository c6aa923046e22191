"""The weekly history: each week's transactions keeps only its own days when the week before
it is stored, and rfm_metrics reads a window's rows from the weeks that keep them. Every
week is still what a run from scratch as of the week's end computes, customer for customer:
under both return policies, with a window in days that is not whole weeks, with an order
whose lines fall in two weeks, and after late rows for an old week.
"""

import re
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from rfm_assets.runner import run
from rfm_assets.synthetic import generate_transactions
from rfm_assets_tests.test_week_ranges import (
    assert_week_equals_a_run_from_scratch,
    current_version,
    run_weeks,
    settings,
    stored,
    week_end,
)

RANGE = ("2024-11-18", "2024-12-02")
WEEKS = ("2024-11-18", "2024-11-25", "2024-12-02", "2024-12-09")
# Crafted rows on top of the synthetic log (customer 10001 buys in the synthetic log too).
CRAFTED = [
    # One order whose lines fall in two weeks: one order, bought on its first and last day.
    (10001, "2024-11-20 10:00", 30.0, "SPAN-1"),
    (10001, "2024-11-27 11:00", 12.5, "SPAN-1"),
    # Under net, customer 99999 is not positive in the window of week 2024-11-25 (bought
    # 50, returned 80) and is again in the week after (bought 100 more).
    (99999, "2024-11-19 09:00", 50.0, "P-1"),
    (99999, "2024-11-26 09:00", -80.0, "C-2"),
    (99999, "2024-12-03 09:00", 100.0, "P-3"),
]


def write(folder: Path, extra_rows=()) -> str:
    frame = generate_transactions(6_000, customers=600, seed=8)
    crafted = pd.DataFrame(
        [*CRAFTED, *extra_rows], columns=["customer_id", "transaction_date", "amount", "order_id"]
    ).astype({"customer_id": "Int64", "transaction_date": "datetime64[s]", "order_id": "str"})
    frame = pd.concat([frame, crafted], ignore_index=True)
    path = folder / "tx.parquet"
    frame.to_parquet(path)
    return str(path)


def stored_context(store: Path, asset: str, week: str) -> dict:
    import json

    return json.loads(Path(current_version(store, asset, week) + ".context.json").read_text())


@pytest.mark.heavy
@pytest.mark.parametrize(
    "extra",
    [{}, {"returns_policy": "net", "analysis_period_days": 10}],
    ids=["exclude, all history", "net, a 10-day window"],
)
def test_each_week_keeps_its_own_days_and_equals_a_run_from_scratch(tmp_path, extra):
    source, store = write(tmp_path), tmp_path / "store"
    assert run_weeks(source, store, RANGE, **extra).success  # one run of three weeks
    assert run_weeks(source, store, WEEKS[-1], **extra).success  # the next week alone
    for at, week in enumerate(WEEKS):
        assert_week_equals_a_run_from_scratch(source, store, week, **extra)
        kept = stored(store, "transactions", week)
        facts = stored_context(store, "transactions", week)
        start, end = pd.Timestamp(week), pd.Timestamp(week_end(week))
        assert (kept["transaction_date"] < end).all()
        if at == 0:  # nothing stored before it: it keeps its whole window
            assert facts["kept_from"] is None
            assert (kept["transaction_date"] < start).any()
        else:  # only its own days, and every row of them
            assert facts["kept_from"] == week
            assert (kept["transaction_date"] >= start).all()
            assert facts["rows_excluded"]["kept_by_earlier_weeks"] > 0
        assert facts["rows_read"] == facts["rows_kept"] + sum(facts["rows_excluded"].values())
    # The window's rows are stored once: the weeks' rows together are what a run of the
    # last week keeps (under exclude, where no customer is judged by the window).
    if not extra:
        together = pd.concat([stored(store, "transactions", week) for week in WEEKS])
        alone = run(settings(source, reference_date=week_end(WEEKS[-1]).isoformat()),
                    keep=("transactions",)).tables["transactions"]  # fmt: skip
        order = ["transaction_date", "order_id", "amount"]
        pd.testing.assert_frame_equal(
            together.sort_values(order).reset_index(drop=True)[alone.columns],
            alone.sort_values(order).reset_index(drop=True),
            check_dtype=False,
        )


def test_an_order_in_two_weeks_counts_once_and_net_judges_the_window(tmp_path):
    source, store = write(tmp_path), tmp_path / "store"
    assert run_weeks(source, store, RANGE, returns_policy="net").success
    metrics = {
        week: stored(store, "rfm_metrics", week).set_index("customer_id") for week in WEEKS[:3]
    }
    rows = pd.read_parquet(source)
    for week in WEEKS[1:3]:
        # The oracle: distinct purchase orders of customer 10001 before the week's end.
        mine = rows[(rows["customer_id"] == 10001)
                    & (rows["transaction_date"] < pd.Timestamp(week_end(week)))]  # fmt: skip
        orders = set(mine.loc[~mine["order_id"].str.startswith("C") & (mine["amount"] > 0),
                              "order_id"])  # fmt: skip
        assert "SPAN-1" in orders
        assert metrics[week].loc[10001, "frequency"] == len(orders)
    # Net 50 - 80 < 0 in week 2024-11-25's window: held out, and counted; 70 a week later.
    assert 99999 in metrics["2024-11-18"].index
    assert 99999 not in metrics["2024-11-25"].index
    # Its rows are excluded from that window, and counted (the return and the purchase).
    excluded = stored_context(store, "rfm_metrics", "2024-11-25")["window_rows_excluded"]
    assert excluded["customer_monetary_not_positive"] >= 2
    # The week's report counts them with the rest of its rows, and names the window's weeks.
    page = (store / "rfm_report" / "2024-11-25" / "report.html").read_text()
    count = f"{excluded['customer_monetary_not_positive']:,}"
    assert re.search(r"excluded from the window: customer_monetary_not_positive</td>"
                     rf"<td[^>]*>{count}</td>", page)  # fmt: skip
    first = stored_context(store, "rfm_metrics", "2024-11-25")["window_weeks"][0]
    assert f"{first} to 2024-11-25" in page
    assert metrics["2024-12-02"].loc[99999, "monetary"] == pytest.approx(70.0)


def test_late_rows_for_an_old_week_reach_the_weeks_after_it_by_the_documented_range(tmp_path):
    source, store = write(tmp_path), tmp_path / "store"
    assert run_weeks(source, store, RANGE).success
    # Rows arrive late for the range's first week: a new customer and a big order.
    late = [
        (77777, "2024-11-19 12:00", 900.0, "LATE-1"),
        (10001, "2024-11-21 12:00", 5000.0, "LATE-2"),
    ]
    (tmp_path / "late").mkdir()
    shutil.copy(write(tmp_path / "late", late), source)
    with pytest.raises(AssertionError):  # what is stored no longer holds
        assert_week_equals_a_run_from_scratch(source, store, RANGE[1])
    # The README's way: the range from the late week to the last one, in one run.
    assert run_weeks(source, store, RANGE).success
    for week in WEEKS[:3]:
        assert_week_equals_a_run_from_scratch(source, store, week)
        assert 77777 in set(stored(store, "customer_segments", week)["customer_id"])
    # The weeks after the first built on it: each still keeps only its own days.
    assert stored_context(store, "transactions", RANGE[1])["kept_from"] == RANGE[1]


def test_a_week_that_settings_change_keeps_its_whole_window(tmp_path):
    source, store = write(tmp_path), tmp_path / "store"
    assert run_weeks(source, store, WEEKS[0]).success
    assert run_weeks(source, store, WEEKS[1], returns_policy="net").success
    assert stored_context(store, "transactions", WEEKS[1])["kept_from"] is None
    assert_week_equals_a_run_from_scratch(source, store, WEEKS[1], returns_policy="net")
    # A window longer than the history the week before holds: the whole window again.
    assert run_weeks(source, store, WEEKS[2], analysis_period_days=30).success
    assert run_weeks(source, store, WEEKS[3], analysis_period_days=60).success
    assert stored_context(store, "transactions", WEEKS[3])["kept_from"] is None
    assert_week_equals_a_run_from_scratch(source, store, WEEKS[3], analysis_period_days=60)


def test_a_week_missing_from_the_history_is_named_with_the_range_that_restores_it(tmp_path):
    source, store = write(tmp_path), tmp_path / "store"
    assert run_weeks(source, store, RANGE).success
    shutil.rmtree(store / "transactions" / RANGE[0])  # the week the others build on
    result = run_weeks(source, store, WEEKS[1], raise_on_error=False,
                       selection=["rfm_metrics"])  # fmt: skip
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message
    assert "week 2024-11-18" in message
    assert "--select '*' --partition-range 2024-11-18...2024-11-25" in message
    # What it says restores the week.
    assert run_weeks(source, store, ("2024-11-18", "2024-11-25")).success
    assert_week_equals_a_run_from_scratch(source, store, WEEKS[1])
