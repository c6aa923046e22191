"""customer_lifetime_value in the graph: the asset against the models fitted on a summary
counted by a plain loop, segment_analytics' value per segment against the table, the
holdout check, the command line, and data the models cannot be fitted on."""

import datetime as dt
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rfm_assets.cli import main
from rfm_assets.contract import SEGMENT_VALUE_COLUMNS
from rfm_assets.engines import clv
from rfm_assets.settings import RFMSettings
from rfm_assets_tests.conftest import materialize_bundled_week

WEEK = "2011-12-05"  # the bundled sample's last week; its reference date is 2011-12-12


def stored(store: Path, asset: str, week: str = WEEK) -> pd.DataFrame:
    location = store / asset / week
    return pd.read_parquet(location / (location / "CURRENT").read_text().strip())


def loop_summary(rows: pd.DataFrame, end: dt.date) -> pd.DataFrame:
    """clv.SUMMARY_COLUMNS the slow way: a dict of purchase days per customer, each day's
    spend added in micro-units (as the engines add money)."""
    days: dict = {}
    for customer, when, amount, is_return in rows[
        ["customer_id", "transaction_date", "amount", "is_return"]
    ].itertuples(index=False):
        if is_return or when.date() >= end:
            continue
        spend = days.setdefault(customer, {})
        spend[when.date()] = spend.get(when.date(), 0) + round(amount * 1_000_000)
    out = []
    for customer in sorted(days):
        ordered = sorted(days[customer])
        repeat = sum(days[customer][d] for d in ordered[1:])
        repeats = len(ordered) - 1
        out.append(
            (customer, repeats, (ordered[-1] - ordered[0]).days, (end - ordered[0]).days,
             repeat / 1_000_000 / repeats if repeats else 0.0)
        )  # fmt: skip
    return pd.DataFrame(out, columns=clv.SUMMARY_COLUMNS)


def test_the_asset_equals_the_models_on_a_loop_summary_and_analytics_add_it_up(tmp_path):
    """A week of the bundled sample in Dagster with clv and a 90-day holdout check."""
    store = tmp_path / "store"
    settings = RFMSettings(clv=True, clv_holdout_days=90)
    result = materialize_bundled_week(store, WEEK, settings=settings)
    assert result.success
    table = stored(store, "customer_lifetime_value")
    segments = stored(store, "customer_segments")
    # One row per customer of customer_segments, with its segment.
    assert list(table.columns) == ["customer_id", "segment", *clv.CLV_COLUMNS[1:]]
    assert sorted(table["customer_id"]) == sorted(segments["customer_id"])
    assert table["customer_id"].is_unique
    merged = table.merge(segments[["customer_id", "segment"]], on="customer_id")
    assert (merged["segment_x"].astype(str) == merged["segment_y"].astype(str)).all()
    # The first week stored keeps its whole window: every kept row before the week's end.
    rows = stored(store, "transactions")
    end = dt.date(2011, 12, 12)
    summary = loop_summary(rows, end)
    fitted = clv.fit(summary)
    expected = clv.predict(fitted, summary, 365)
    got = table.set_index("customer_id").loc[expected["customer_id"]]
    for column in clv.CLV_COLUMNS[1:]:
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-9, err_msg=column)
    # segment_analytics' value per segment adds up the table.
    analytics = stored(store, "segment_analytics").set_index("segment")
    for segment, group in table.groupby(table["segment"].astype(str)):
        row = analytics.loc[segment]
        assert row["predicted_clv"] == pytest.approx(math.fsum(group["predicted_clv"]), rel=1e-9)
        assert row["avg_predicted_clv"] == pytest.approx(group["predicted_clv"].mean(), rel=1e-9)
        assert row["avg_probability_alive"] == pytest.approx(group["probability_alive"].mean())
    # The checks: the rows and the fit pass; the holdout check is a warning that ran on the
    # data before 2011-09-13, recomputed here from the loop's own calibration summary.
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()
              if e.asset_key.path[-1] == "customer_lifetime_value"}  # fmt: skip
    assert checks["one_row_per_customer"].passed and checks["lifetime_value_fitted"].passed
    holdout = checks["predictions_match_holdout"]
    cutoff = end - dt.timedelta(days=90)
    calibration = loop_summary(rows, cutoff)
    after = rows[~rows["is_return"] & (rows["transaction_date"].dt.date >= cutoff)
                 & (rows["transaction_date"].dt.date < end)]  # fmt: skip
    bought_after = (
        after.drop_duplicates(["customer_id", "transaction_date"])
        .assign(day=lambda f: f["transaction_date"].dt.date)
        .drop_duplicates(["customer_id", "day"])
    )
    actual = bought_after[bought_after["customer_id"].isin(calibration["customer_id"])]
    predicted = clv.expected_purchases(clv.fit(calibration, spend=False), calibration, 90).sum()
    found = {k: v.value for k, v in holdout.metadata.items()}
    assert found["actual"] == len(actual)
    assert found["predicted"] == pytest.approx(predicted, rel=1e-9)
    ratio = predicted / len(actual)
    assert holdout.passed == (abs(ratio - 1) <= 0.2)  # 0.75 here: a Christmas the fit missed
    assert holdout.severity.value == "WARN"
    # Metadata for the UI: the parameters, the horizon, the value by segment as a picture.
    materialization = next(
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key.path[-1] == "customer_lifetime_value"
    )
    metadata = {k: v.value for k, v in materialization.metadata.items()}
    assert set(metadata["parameters"]) == {"r", "alpha", "a", "b", "p", "q", "v"}
    assert metadata["parameters"]["r"] == pytest.approx(fitted.parameters["r"], rel=1e-9)
    assert metadata["horizon_days"] == 365 and metadata["fitted"] is True
    assert "data:image/png;base64," in metadata["expected_value_by_segment"]
    assert "data:image/png;base64," in metadata["holdout_chart"]
    # The report shows the same.
    page = next((store / "rfm_report").rglob("*.html")).read_text()
    assert "Customer lifetime value" in page and "Holdout check" in page


def test_analyze_writes_the_table_and_ranks_the_high_value_list_by_it(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["analyze", "--output", str(out), "--clv", "--clv-horizon-days", "180",
                 "--clv-discount-rate", "0.1", "--high-value", "0.1",
                 "--high-value-by", "predicted_clv"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    table = pd.read_parquet(out / "customer_lifetime_value.parquet")
    segments = pd.read_parquet(out / "customer_segments.parquet")
    assert sorted(table["customer_id"]) == sorted(segments["customer_id"])
    assert table[clv.CLV_COLUMNS[1:]].notna().all().all()
    # The top 10% by predicted_clv, tie-safe, counted here from the table.
    values = table["predicted_clv"].to_numpy()
    chosen = {c for c, v in zip(table["customer_id"], values)
              if (values > v).sum() < 0.1 * len(values)}  # fmt: skip
    listed = pd.read_parquet(out / "high_value_customers.parquet")
    assert set(listed["customer_id"]) == chosen
    assert listed["predicted_clv"].is_monotonic_decreasing
    summary = json.loads((out / "run_summary.json").read_text())["lifetime_value"]
    assert summary["horizon_days"] == 180 and summary["discount_rate"] == 0.1
    total = math.fsum(table["predicted_clv"])
    assert f"lifetime value: {total:,.2f} predicted over the next 180 days" in printed
    assert "discounted at 10.0% a year" in printed
    analytics = pd.read_parquet(out / "segment_analytics.parquet")
    assert math.fsum(analytics["predicted_clv"]) == pytest.approx(total, rel=1e-12)
    assert "pred.value" in printed  # the terminal's segment table shows it
    # The report of the result folder shows the fit, from run_summary.json.
    assert main(["report", "--input", str(out), "--output", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Customer lifetime value</h2>" in page and "over the next 180 days" in page


def test_data_the_models_cannot_fit_is_one_line_and_the_rest_publishes(tmp_path, capsys,
                                                                          monkeypatch):  # fmt: skip
    rows = [(i, dt.datetime(2024, 1, 1) + dt.timedelta(days=i), 10.0 + i) for i in range(40)]
    rows += [(i, dt.datetime(2024, 3, 1) + dt.timedelta(days=i), 5.0) for i in range(5)]
    source = tmp_path / "few.csv"
    frame = pd.DataFrame(rows, columns=["customer_id", "transaction_date", "amount"])
    frame.to_csv(source, index=False)
    out = tmp_path / "out"
    assert main(["analyze", "--input", str(source), "--output", str(out), "--clv"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "lifetime value not fitted, its predictions are null: clv: 5 of 40 customers bought "
        "on more than one day; the purchase model needs at least 20\n"
    )
    table = pd.read_parquet(out / "customer_lifetime_value.parquet")
    assert len(table) == 40 and table[clv.CLV_COLUMNS[1:]].isna().all().all()
    analytics = pd.read_parquet(out / "segment_analytics.parquet")
    assert analytics["customers"].sum() == 40
    assert analytics[SEGMENT_VALUE_COLUMNS].isna().all().all()
    # Ranking by a value that was not fitted is refused in one line.
    code = main(["analyze", "--input", str(source), "--output", str(tmp_path / "hv"), "--clv",
                 "--high-value", "--high-value-by", "predicted_clv"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("rfm-assets: error: high_value_by: predicted_clv, but "
                          "customer_lifetime_value was not fitted: clv: 5 of 40")  # fmt: skip
    assert err.count("\n") == 1
    # Settings that cannot mean anything, one line each.
    for flags, message in [
        (["--clv", "--clv-horizon-days", "0"], "clv_horizon_days"),
        (["--clv-holdout-days", "30"], "clv_holdout_days: applies with clv: true"),
        (["--high-value-by", "predicted_clv"], "high_value_by: predicted_clv needs clv: true"),
        (["--clv", "--input-level", "customers", "--recency", "r", "--frequency", "f",
          "--monetary", "m"], "clv: the lifetime-value models count purchase days"),
    ]:  # fmt: skip
        assert main(["analyze", "--output", str(tmp_path / "x"), *flags]) == 1, flags
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # Without the extra: refused when the graph is built, before anything runs.
    real = importlib.util.find_spec

    def without_the_extra(name, *args):
        return None if name == "pymc_marketing" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_the_extra)
    assert main(["analyze", "--input", str(source), "--output", str(tmp_path / "y"), "--clv"]) == 1
    err = capsys.readouterr().err
    assert err.endswith(f"clv: {clv.INSTALL_HINT}\n") and err.count("\n") == 1, err
    assert not (tmp_path / "y").exists()
