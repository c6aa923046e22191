"""RFMSegmentationEngine on a user's own pandas DataFrame: the graph's numbers, step by step.

Checked against the oracle (a plain loop over the bundled rows), against the graph's own run,
and the small tables against counts made here. The Spark half is in test_spark.py.
"""

import datetime as dt

import pandas as pd
import pytest

from rfm_assets import RFMSegmentationEngine, identify_high_value_customers, run
from rfm_assets.errors import RFMConfigError
from rfm_assets.packaged import BUNDLED_COLUMNS, BUNDLED_DATASET
from rfm_assets.settings import RFMSettings
from rfm_assets_tests.conftest import assert_matches_oracle, bundled_oracle

# The bundled sample's mapping: these tests give it explicitly, as a user with the file does.
COLUMNS = BUNDLED_COLUMNS


@pytest.fixture(scope="module")
def transactions():
    return pd.read_parquet(BUNDLED_DATASET)


@pytest.fixture(scope="module")
def engine_and_profiles(transactions):
    engine = RFMSegmentationEngine(columns=COLUMNS)
    return engine, engine.generate_customer_profiles(transactions)


def without_time(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="segmented_at").reset_index(drop=True)


def test_profiles_equal_the_oracle_and_the_steps_equal_the_whole(transactions, engine_and_profiles):
    engine, profiles = engine_and_profiles
    expected, excluded = bundled_oracle()
    assert_matches_oracle(profiles, expected)
    assert {k: v for k, v in engine.last_run.account.rows_excluded.items() if v} == excluded
    # One step at a time, on a fresh engine: the same tables.
    steps = RFMSegmentationEngine(columns=COLUMNS)
    metrics = steps.calculate_rfm_metrics(transactions)
    assert len(metrics) == len(expected) and "R_score" not in metrics.columns
    scores = steps.assign_rfm_scores(metrics)
    assert steps.thresholds == engine.thresholds
    segments = steps.assign_customer_segments(scores)
    pd.testing.assert_frame_equal(without_time(segments), without_time(profiles))
    # The summary of either is the graph's segment_analytics.
    graph = run(RFMSettings(), segmented_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    pd.testing.assert_frame_equal(engine.get_segment_summary(profiles), graph.segment_analytics)
    pd.testing.assert_frame_equal(steps.get_segment_summary(segments), graph.segment_analytics)


def test_the_lists_and_actions_count_the_profiles(engine_and_profiles):
    engine, profiles = engine_and_profiles
    top = engine.identify_high_value_customers(profiles, top_percentage=0.1)
    pd.testing.assert_frame_equal(top, identify_high_value_customers(profiles, 0.1))
    spend = profiles["monetary"].to_numpy()
    greater = [(spend > value).sum() for value in spend]  # a slow count, customer by customer
    chosen = {c for c, g in zip(profiles["customer_id"], greater) if g < 0.1 * len(spend)}
    assert set(top["customer_id"]) == chosen  # the top tenth by spend, ties at the cut in
    actions = engine.recommend_actions(profiles)
    counts = profiles["segment"].astype(str).value_counts()
    assert dict(zip(actions["segment"], actions["customers"])) == counts.to_dict()
    assert list(actions["priority"]) == sorted(actions["priority"])
    assert all(actions["example_actions"].map(len) > 0)
    assert actions["goal"].notna().all() and actions["budget_share"].sum() == pytest.approx(1)
    champions = actions.set_index("segment").loc["Champions"]
    assert (
        champions["recommendation"]
        == profiles.loc[profiles["segment"] == "Champions", "recommendation"].iloc[0]
    )


def test_segment_of_and_drift_between_two_results(engine_and_profiles, tmp_path):
    engine, profiles = engine_and_profiles
    row = profiles.iloc[7]
    found = engine.segment_of(row["customer_id"])
    assert found["segment"] == row["segment"] and found["monetary"] == row["monetary"]
    assert engine.segment_of(-1) is None
    # A result folder of the command line is a stored result too.
    from rfm_assets.cli import main

    assert main(["analyze", "--output", str(tmp_path / "out")]) == 0
    assert engine.segment_of(row["customer_id"], tmp_path / "out")["segment"] == row["segment"]
    # Drift: the shares of each segment before and after, by count here.
    later = profiles[profiles["segment"] != "Champions"]
    drift = engine.detect_drift(profiles, later, max_share_change=0.05).set_index("segment")
    for name, group in profiles.groupby("segment", observed=True):
        before = len(group) / len(profiles)
        after = (later["segment"] == name).sum() / len(later)
        assert drift.loc[name, "share_before"] == pytest.approx(before)
        assert drift.loc[name, "share_after"] == pytest.approx(after)
        assert drift.loc[name, "drifted"] == (abs(after - before) > 0.05)
    assert drift.loc["Champions", "customers_after"] == 0 and drift.loc["Champions", "drifted"]
    same = engine.detect_drift(profiles, engine.get_segment_summary(profiles))
    assert not same["drifted"].any() and (same["share_change"].abs() < 1e-12).all()


def test_arguments_are_the_settings_and_bad_ones_are_one_line(transactions):
    quartiles = RFMSegmentationEngine(quintiles=False, reference_date=pd.Timestamp("2011-12-01"),
                                      columns=COLUMNS)  # fmt: skip
    profiles = quartiles.generate_customer_profiles(transactions)
    assert profiles["R_score"].max() == 4
    assert quartiles.last_run.account.reference_date == dt.date(2011, 12, 1)
    with pytest.raises(
        RFMConfigError, match=r"^invalid settings: weights.recency: Input should be"
    ):
        RFMSegmentationEngine(weights={"recency": -1})
    with pytest.raises(RFMConfigError, match=r"^unknown settings: colums; known settings"):
        RFMSegmentationEngine(colums=COLUMNS)
    with pytest.raises(RFMConfigError, match="expected a pandas or a Spark DataFrame, got list"):
        quartiles.assign_rfm_scores([1, 2, 3])
    plain = RFMSegmentationEngine(columns=COLUMNS, include_recommendations=False)
    assert "recommendation" not in plain.generate_customer_profiles(transactions).columns
