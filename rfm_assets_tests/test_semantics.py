"""Every rule of docs/contract.md, engine against the oracle."""

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rfm_assets.engines.pandas_compute import thresholds_from_scores
from rfm_assets.engines.shared import fixed_scores, quantile_scores
from rfm_assets.errors import RFMInputError
from rfm_assets.synthetic import generate_transactions
from rfm_assets_tests.conftest import (
    assert_matches_oracle,
    assert_rounded_half_to_even,
    day,
    frame_of,
    half_micro_frame,
    run_on_frame,
)
from rfm_assets_tests.oracle import oracle


def synthetic_rows(rows=3000, customers=400, seed=7, string_ids=False):
    frame = generate_transactions(rows, customers=customers, seed=seed, string_ids=string_ids)
    return [
        {
            "customer_id": None if pd.isna(c) else (c if string_ids else int(c)),
            "date": d.to_pydatetime(),
            "amount": float(a),
            "order_id": o,
        }
        for c, d, a, o in zip(
            frame["customer_id"], frame["transaction_date"], frame["amount"], frame["order_id"]
        )
    ], frame


@pytest.mark.parametrize("scale", [5, 4])
@pytest.mark.parametrize("returns_policy", ["exclude", "net"])
def test_synthetic_with_heavy_ties_matches_oracle(scale, returns_policy):
    rows, frame = synthetic_rows()
    result, account = run_on_frame(frame, scale=scale, returns_policy=returns_policy)
    expected, excluded = oracle(rows, scale=scale, returns_policy=returns_policy)
    assert_matches_oracle(result, expected)
    assert {k: v for k, v in account.rows_excluded.items() if v} == excluded
    assert account.rows_read == account.rows_kept + sum(account.rows_excluded.values())
    # Most customers buy once: the frequency ties are real, not hypothetical.
    assert (result["frequency"] == 1).mean() > 0.2


def test_weights_window_and_reference_date_match_oracle():
    rows, frame = synthetic_rows(seed=11, string_ids=True)
    settings = dict(
        reference_date=day("2024-06-01"), analysis_period_days=200, weights=(3.0, 0.5, 2.0)
    )
    result, account = run_on_frame(frame, **settings)
    expected, excluded = oracle(rows, **settings)
    assert_matches_oracle(result, expected)
    assert account.rows_excluded["before_analysis_window"] == excluded["before_analysis_window"] > 0
    assert account.rows_excluded["on_or_after_reference_date"] > 0
    assert account.window_start == day("2024-06-01") - dt.timedelta(days=200)


def test_without_order_column_frequency_counts_rows():
    rows, frame = synthetic_rows(seed=3)
    frame = frame.drop(columns="order_id")
    rows = [{k: v for k, v in r.items() if k != "order_id"} for r in rows]
    result, _ = run_on_frame(frame)
    expected, _ = oracle(rows)
    assert_matches_oracle(result, expected)


def test_single_customer_scores_one_and_lands_in_lost():
    rows = [{"customer_id": 1, "date": dt.datetime(2024, 1, 5), "amount": 10.0}]
    result, account = run_on_frame(frame_of(rows))
    assert len(result) == 1
    row = result.iloc[0]
    # n = 1, b = 0: score 1 + floor(5 * 0 / 1) = 1 on every dimension.
    assert (row["R_score"], row["F_score"], row["M_score"]) == (1, 1, 1)
    assert row["recency"] == 1 and row["segment"] == "Lost"
    assert account.reference_date == day("2024-01-06")


def test_equal_values_across_all_customers_share_the_lowest_score():
    rows = [
        {"customer_id": c, "date": dt.datetime(2024, 3, 1, 9), "amount": 5.0} for c in range(50)
    ]
    result, _ = run_on_frame(frame_of(rows))
    assert set(result["rfm_cell"]) == {"111"}
    expected, _ = oracle(rows)
    assert_matches_oracle(result, expected)


def test_recency_counts_calendar_days_not_hours():
    rows = [
        {"customer_id": 1, "date": dt.datetime(2024, 1, 9, 23, 59), "amount": 1.0},
        {"customer_id": 2, "date": dt.datetime(2024, 1, 9, 0, 1), "amount": 1.0},
        {"customer_id": 3, "date": dt.datetime(2024, 1, 8, 23, 59), "amount": 1.0},
    ]
    result, _ = run_on_frame(frame_of(rows), reference_date=day("2024-01-10"))
    assert result.set_index("customer_id")["recency"].to_dict() == {1: 1, 2: 1, 3: 2}


def test_window_bounds_are_inclusive_at_start_exclusive_at_reference():
    dates = ["2024-01-01", "2024-01-02", "2024-01-10", "2024-01-11"]
    rows = [
        {"customer_id": i, "date": dt.datetime.fromisoformat(d), "amount": 1.0}
        for i, d in enumerate(dates)
    ]
    result, account = run_on_frame(
        frame_of(rows), reference_date=day("2024-01-11"), analysis_period_days=9
    )
    # ref - 9 = 2024-01-02 is kept, 2024-01-01 is before the window, 2024-01-11 is on ref.
    assert sorted(result["customer_id"]) == [1, 2]
    assert account.rows_excluded["before_analysis_window"] == 1
    assert account.rows_excluded["on_or_after_reference_date"] == 1


def test_monetary_sum_is_exact_in_micro_units():
    # 0.1 added ten times is 0.9999999999999999 in floats; the micro-unit sum is exactly 1.
    rows = [{"customer_id": 1, "date": dt.datetime(2024, 1, 1), "amount": 0.1}] * 10
    result, _ = run_on_frame(frame_of(rows))
    assert result.loc[0, "monetary"] == 1.0


def test_lines_on_half_a_micro_unit_round_half_to_even_in_the_graph():
    """Each line's amount * 10**6 is rounded half to even, as the contract says: through the
    graph, 0.0000005 -> 0 (not positive: excluded), 0.0000015 -> 0.000002, 0.0000025 ->
    0.000002, 0.0078125 -> 0.007812; rounding half up gives other customers' monetary."""
    segments, account = run_on_frame(half_micro_frame())  # rfm_assets.run on the frame
    assert_rounded_half_to_even(dict(zip(segments["customer_id"], segments["monetary"])), account)


def test_net_policy_subtracts_returns_and_excludes_non_positive_customers():
    rows = [
        {"customer_id": 1, "date": dt.datetime(2024, 1, 1), "amount": 100.0, "order_id": "1"},
        {"customer_id": 1, "date": dt.datetime(2024, 1, 3), "amount": -30.0, "order_id": "C2"},
        {"customer_id": 2, "date": dt.datetime(2024, 1, 1), "amount": 10.0, "order_id": "3"},
        {"customer_id": 2, "date": dt.datetime(2024, 1, 2), "amount": -10.0, "order_id": "C4"},
        {"customer_id": 3, "date": dt.datetime(2024, 1, 2), "amount": 5.0, "order_id": "5"},
        # A cancellation recorded with a positive amount is still subtracted.
        {"customer_id": 4, "date": dt.datetime(2024, 1, 1), "amount": 20.0, "order_id": "6"},
        {"customer_id": 4, "date": dt.datetime(2024, 1, 2), "amount": 5.0, "order_id": "C7"},
    ]
    result, account = run_on_frame(frame_of(rows), returns_policy="net")
    assert result.set_index("customer_id").loc[4, "monetary"] == 15.0
    by_id = result.set_index("customer_id")
    assert by_id.loc[1, "monetary"] == 70.0
    assert by_id.loc[1, "frequency"] == 1  # the return is not an order
    assert by_id.loc[1, "recency"] == 3  # nor a purchase date (ref = 2024-01-04)
    assert 2 not in by_id.index
    assert account.rows_excluded["customer_monetary_not_positive"] == 2
    expected, _ = oracle(rows, returns_policy="net")
    assert_matches_oracle(result, expected)


@pytest.mark.parametrize("returns_policy", ["exclude", "net"])
def test_orders_missing_shared_and_mixed_count_as_the_oracle_does(returns_policy):
    """Frequency counts distinct (customer, order) pairs with a purchase: lines without an
    order id are one order of their customer, an order id two customers share counts for
    each, and an order holding a return and a purchase counts once, from its purchase."""
    when = [dt.datetime(2024, 1, d) for d in range(1, 8)]
    rows = [
        {"customer_id": "a", "date": when[0], "amount": 10.0, "order_id": None},
        {"customer_id": "a", "date": when[2], "amount": 5.0, "order_id": None},
        {"customer_id": "a", "date": when[3], "amount": 7.0, "order_id": "1"},
        {"customer_id": "b", "date": when[1], "amount": 3.0, "order_id": "1"},  # shared with a
        {"customer_id": "b", "date": when[4], "amount": 8.0, "order_id": "2"},
        {"customer_id": "b", "date": when[5], "amount": -2.0, "order_id": "2"},  # a return
        {"customer_id": "c", "date": when[6], "amount": 4.0, "order_id": "3"},
        {"customer_id": "c", "date": when[6], "amount": 4.0, "order_id": "3"},  # same order
    ]
    result, _ = run_on_frame(frame_of(rows), returns_policy=returns_policy)
    expected, _ = oracle(rows, returns_policy=returns_policy)
    assert_matches_oracle(result, expected)
    frequency = dict(zip(result["customer_id"], result["frequency"]))
    assert frequency == {"a": 2, "b": 2, "c": 1}
    assert list(result.sort_values("customer_id")["customer_id"]) == ["a", "b", "c"]


def test_exclude_policy_counts_cancellations_and_non_positive_rows():
    rows = [
        {"customer_id": 1, "date": dt.datetime(2024, 1, 1), "amount": 100.0, "order_id": "1"},
        {"customer_id": 1, "date": dt.datetime(2024, 1, 3), "amount": -30.0, "order_id": "C2"},
        {"customer_id": 1, "date": dt.datetime(2024, 1, 3), "amount": 0.0, "order_id": "3"},
        {"customer_id": None, "date": dt.datetime(2024, 1, 3), "amount": 9.0, "order_id": "4"},
    ]
    result, account = run_on_frame(frame_of(rows))
    assert result.loc[0, "monetary"] == 100.0
    assert account.rows_excluded["cancelled_order"] == 1
    assert account.rows_excluded["non_positive_amount"] == 1
    assert account.rows_excluded["missing_customer_id"] == 1
    assert account.rows_kept == 1


def test_reference_date_before_all_data_is_a_clear_error():
    rows = [{"customer_id": 1, "date": dt.datetime(2024, 1, 5), "amount": 1.0}]
    with pytest.raises(RFMInputError, match="reference_date: 2024-01-05 is on or before all data"):
        run_on_frame(frame_of(rows), reference_date=day("2024-01-05"))


# --- the score formula on its own --------------------------------------------------------


def slow_scores(values, k, higher_is_better):
    n = len(values)
    out = []
    for v in values:
        b = sum(1 for w in values if (w < v if higher_is_better else w > v))
        out.append(1 + (k * b) // n)
    return out


@pytest.mark.parametrize("k", [4, 5])
@pytest.mark.parametrize("higher_is_better", [True, False])
def test_quantile_scores_match_the_definition_and_ignore_row_order(k, higher_is_better):
    rng = np.random.default_rng(k)
    values = rng.integers(0, 12, size=300)  # many ties
    scores = quantile_scores(values, k, higher_is_better)
    assert scores.tolist() == slow_scores(values.tolist(), k, higher_is_better)
    shuffled = rng.permutation(len(values))
    assert (
        quantile_scores(values[shuffled], k, higher_is_better).tolist() == scores[shuffled].tolist()
    )
    assert scores.min() >= 1 and scores.max() <= k


def test_fixed_scores_follow_documented_bounds():
    cuts = [10.0, 20.0, 30.0, 40.0]
    higher = fixed_scores(np.array([9.99, 10, 19, 20, 40, 1e9]), cuts, higher_is_better=True)
    assert higher.tolist() == [1, 2, 2, 3, 5, 5]
    recency = fixed_scores(np.array([1, 10, 11, 20, 40, 41]), cuts, higher_is_better=False)
    assert recency.tolist() == [5, 5, 4, 4, 2, 1]


@pytest.mark.parametrize("scale", [4, 5])
def test_published_thresholds_reproduce_quantile_scores_when_pinned(scale):
    _, frame = synthetic_rows(rows=5000, customers=700, seed=5)
    quantile, _ = run_on_frame(frame, scale=scale)
    cuts = thresholds_from_scores(quantile, scale)
    for dimension in ("recency", "frequency", "monetary"):
        assert cuts[dimension] == sorted(cuts[dimension])
    pinned, _ = run_on_frame(frame, scale=scale, fixed=cuts)
    for column in ("R_score", "F_score", "M_score", "segment"):
        assert pinned[column].tolist() == quantile[column].tolist()
    rows, _ = synthetic_rows(rows=5000, customers=700, seed=5)
    expected, _ = oracle(rows, scale=scale, fixed=cuts)
    assert_matches_oracle(pinned, expected)


def test_fm_and_rfm_scores_use_the_weights():
    rows, frame = synthetic_rows(seed=9)
    result, _ = run_on_frame(frame, weights=(2.0, 0.0, 1.0))
    f, m, r = result["F_score"], result["M_score"], result["R_score"]
    assert (result["FM_score"] == np.floor(m + 0.5)).all()  # wF = 0: FM is the M score
    assert np.allclose(result["RFM_score"], (2 * r + m) / 3)
    assert (result["rfm_cell"] == r.astype(str) + f.astype(str) + m.astype(str)).all()


RULES_OVER_F_AND_M = Path(__file__).parent / "data" / "rules_f_and_m.yaml"


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (3.0, 0.5, 2.0)])
def test_rules_over_r_f_m_fm_and_rfm_match_the_oracle(tmp_path, weights):
    import yaml

    rows, frame = synthetic_rows(seed=5)
    result, _ = run_on_frame(frame, weights=weights, rule_set=str(RULES_OVER_F_AND_M))
    rules = yaml.safe_load(RULES_OVER_F_AND_M.read_text())["rules"]
    expected, _ = oracle(rows, weights=weights, rules=rules)
    assert_matches_oracle(result, expected)
    # Every rule takes customers: F and M are told apart, RFM_score ranges work.
    assert len(set(result["segment"])) == len(rules)
    quiet = result[result["segment"] == "Big Spenders Gone Quiet"]
    assert ((quiet["F_score"] <= 3) & (quiet["M_score"] >= 3) & (quiet["R_score"] <= 2)).all()


@pytest.mark.parametrize("min_frequency, exclude_recent_days", [(2, None), (None, 60), (2, 60)])
def test_customer_filters_are_counted_and_scores_cover_the_rest(min_frequency, exclude_recent_days):
    from rfm_assets.engines.pandas_compute import compute_metrics, filter_customers

    rows, frame = synthetic_rows(seed=13)
    result, account = run_on_frame(
        frame, min_frequency=min_frequency, exclude_recent_days=exclude_recent_days
    )
    expected, excluded = oracle(
        rows, min_frequency=min_frequency, exclude_recent_days=exclude_recent_days
    )
    assert_matches_oracle(result, expected)  # scores over the customers that remain
    kept, account = prepare_transactions_of(frame)
    _, counts = filter_customers(
        compute_metrics(kept, account.reference_date), min_frequency, exclude_recent_days
    )
    assert counts == {
        "below_min_frequency": excluded.get("customers:below_min_frequency", 0),
        "first_purchase_too_recent": excluded.get("customers:first_purchase_too_recent", 0),
    }
    assert sum(counts.values()) > 0
    assert len(result) + sum(counts.values()) == kept["customer_id"].nunique()


def prepare_transactions_of(frame):
    from rfm_assets.engines.pandas_compute import prepare_transactions

    return prepare_transactions(frame)


def test_lifetime_and_monthly_purchase_rate_follow_their_stated_rules():
    rows = [
        {"customer_id": 1, "date": dt.datetime(2024, 1, 1), "amount": 5.0, "order_id": "a"},
        {"customer_id": 1, "date": dt.datetime(2024, 3, 1), "amount": 5.0, "order_id": "b"},
        {"customer_id": 2, "date": dt.datetime(2024, 3, 30), "amount": 5.0, "order_id": "c"},
    ]
    result, _ = run_on_frame(frame_of(rows))
    by_id = result.set_index("customer_id")
    # reference date 2024-03-31: customer 1 has tenure 90 days, lifetime 61 days (both ends)
    assert by_id.loc[1, "customer_lifetime_days"] == 61
    assert by_id.loc[1, "purchase_frequency_per_month"] == 2 * 30.44 / 90
    # one day of tenure counts as one month: one order a month, not 30
    assert by_id.loc[2, "customer_lifetime_days"] == 1
    assert by_id.loc[2, "purchase_frequency_per_month"] == 1.0


def test_customers_come_in_segment_priority_then_weighted_score_order():
    """The recency weight orders every segment's customers (and so every exported list)."""
    _, frame = synthetic_rows(seed=17)
    for weights in ((1.0, 1.0, 1.0), (3.0, 1.0, 1.0)):
        result, _ = run_on_frame(frame, weights=weights)
        priority = result["segment"].map(
            {
                s.name: s.priority
                for s in __import__("rfm_assets.segments").segments.default_rule_set(5).segments
            }  # fmt: skip
        )
        assert priority.is_monotonic_increasing
        for _, group in result.groupby("segment", observed=True):
            assert group["RFM_score"].is_monotonic_decreasing
    # With recency weighted up, the order inside segments changes for real.
    plain, _ = run_on_frame(frame)
    recency_first, _ = run_on_frame(frame, weights=(3.0, 1.0, 1.0))
    assert list(plain["customer_id"]) != list(recency_first["customer_id"])


@pytest.mark.parametrize("returns_policy", ["exclude", "net"])
def test_consuming_the_source_keeps_the_same_rows_and_account(tmp_path, returns_policy):
    """`consume` (the transactions step, done with its source) empties the source frame as
    the rules go, text columns row group by row group; what is kept and counted is what
    the non-consuming call gives."""
    from rfm_assets.engines.pandas_compute import prepare_transactions
    from rfm_assets.engines.pandas_read import read_transactions
    from rfm_assets.settings import RFMSettings

    source = generate_transactions(3000, customers=300, seed=11, string_ids=True)
    source.loc[::97, "customer_id"] = None  # some rows to exclude, by several reasons
    source.loc[::89, "amount"] = np.nan
    path = tmp_path / "tx.parquet"
    source.to_parquet(path, row_group_size=700)  # text columns of 5 chunks
    columns = RFMSettings(columns={"order_id": "order_id"}).source_columns(bundled=False)
    raw, _ = read_transactions(str(path), columns)
    assert raw["customer_id"].array.__arrow_array__().num_chunks == 5
    expected, expected_account = prepare_transactions(raw.copy(), returns_policy=returns_policy)
    kept, account = prepare_transactions(raw, returns_policy=returns_policy, consume=True)
    pd.testing.assert_frame_equal(kept, expected)
    assert account == expected_account
    assert account.rows_excluded["missing_customer_id"] > 0
    assert account.rows_excluded["invalid_amount"] > 0
    assert list(raw.columns) == []  # nothing of the source is left held


def test_text_of_either_arrow_width_reads_alike(tmp_path):
    """Parquet text comes as string or large_string (pandas writes the latter); dates and
    amounts written as text, blanks and padded ids included, read the same either way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rfm_assets.engines.pandas_read import read_transactions
    from rfm_assets.settings import RFMSettings

    text = {
        "customer_id": [" C1", "C2 ", "", "C1", "C3"],
        "transaction_date": ["2024-01-02", " 2024-01-03 ", "2024-01-04", "", "2024-01-05"],
        "amount": ["10.5", " 3", "7", "1e2", ""],
        "order_id": ["o1", "o2", "o3", "o4", "o5"],
    }
    columns = RFMSettings(columns={"order_id": "order_id"}).source_columns(bundled=False)
    read = {}
    for width in (pa.string(), pa.large_string()):
        path = tmp_path / f"{width}.parquet"
        pq.write_table(pa.table({k: pa.array(v, width) for k, v in text.items()}), path)
        with pytest.raises(RFMInputError, match="transaction_date.*1 values are not dates"):
            read_transactions(str(path), columns)
        pq.write_table(pa.table({k: pa.array(v[:3] + v[4:], width) for k, v in text.items()}), path)
        read[str(width)], _ = read_transactions(str(path), columns)
    pd.testing.assert_frame_equal(read["string"], read["large_string"])
    frame = read["string"]
    assert frame["customer_id"].tolist()[:2] == ["C1", "C2"] and pd.isna(frame["customer_id"][2])
    assert frame["amount"].tolist()[:3] == [10.5, 3.0, 7.0] and np.isnan(frame["amount"][3])


def test_money_values_add_up_exactly_at_any_size():
    from rfm_assets.engines.shared import amounts_add_up

    micro = [8_900_000_000_000_250_000] * 3 + [12_500_000]  # 3 x 8.9e12 + 12.5
    revenues = [m / 10**6 for m in micro]
    assert amounts_add_up(revenues, sum(micro))  # 2.67e13: beyond int64 micro-units
    assert not amounts_add_up(revenues, sum(micro) - 10_000)  # a cent short is seen
    small = [1234567, 89]
    assert amounts_add_up([m / 10**6 for m in small], sum(small))
    assert not amounts_add_up([m / 10**6 for m in small], sum(small) + 1)  # one micro-unit
    assert not amounts_add_up([float("nan")], 0)
