"""Weekly history, steps that stand on what they load, and checks that can fail.

Runs the graph the way a deployment does (weekly partitions, one store), on a small
synthetic source spanning 2023-2024, so each run takes a second.
"""

import datetime as dt
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from rfm_assets.component import build_rfm_definitions
from rfm_assets.engines import pandas_compute
from rfm_assets.engines.dispatch import PandasEngine
from rfm_assets.io_manager import RFMParquetIOManager
from rfm_assets.runner import step_failure_message
from rfm_assets.settings import RFMSettings
from rfm_assets.synthetic import generate_transactions

WEEKS = ("2024-10-07", "2024-12-30")
WEEK, NEXT_WEEK = "2024-11-25", "2024-12-02"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("weekly") / "tx.parquet"
    generate_transactions(6_000, customers=600, seed=8).to_parquet(path)
    return str(path)


def materialize(source, store, week, select=None, raise_on_error=True, **settings):
    definitions = build_rfm_definitions(
        RFMSettings(input_path=source, columns={"order_id": "order_id"}, **settings),
        weeks_start=WEEKS[0],
        weeks_end=WEEKS[1],
    )
    assets = list(definitions.assets)
    checks = list(definitions.asset_checks)
    resources = dict(definitions.resources)
    resources["io_manager"] = RFMParquetIOManager(base_dir=str(store))
    selection = None
    if select:
        selection = dg.AssetSelection.assets(*select) | dg.AssetSelection.checks_for_assets(*select)
    return dg.materialize(
        [*assets, *checks],
        selection=selection,
        partition_key=week,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )


def stored(store: Path, asset: str, week: str) -> pd.DataFrame:
    location = store / asset / week
    return pd.read_parquet(location / (location / "CURRENT").read_text().strip())


def test_each_week_is_segmented_as_of_its_end_and_stays_readable(source, tmp_path):
    store = tmp_path / "store"
    for week in (WEEK, NEXT_WEEK):
        assert materialize(source, store, week).success
    for week in (WEEK, NEXT_WEEK):
        segments = stored(store, "customer_segments", week)
        week_end = dt.date.fromisoformat(week) + dt.timedelta(days=7)
        last = segments["last_purchase_date"].max().date()
        assert last < week_end and (week_end - last).days == segments["recency"].min()
    transactions = stored(store, "transactions", WEEK)
    assert transactions["transaction_date"].max() < pd.Timestamp("2024-12-02")
    # Unkeyed loads return the latest week; any week by its key.
    definitions = build_rfm_definitions(
        RFMSettings(), weeks_start=WEEKS[0], weeks_end=WEEKS[1], bundled_sample=True
    )
    definitions = dg.Definitions.merge(
        dg.Definitions(assets=list(definitions.assets)),
        dg.Definitions(resources={
            "io_manager": RFMParquetIOManager(base_dir=str(store)),
            **{k: v for k, v in definitions.resources.items() if k != "io_manager"},
        }),
    )  # fmt: skip
    latest = definitions.load_asset_value("customer_segments")
    earlier = definitions.load_asset_value("customer_segments", partition_key=WEEK)
    assert latest.attrs["rfm_context"]["reference_date"] == "2024-12-09"
    assert earlier.attrs["rfm_context"]["reference_date"] == "2024-12-02"
    assert len(earlier) == len(stored(store, "customer_segments", WEEK))
    # A backfill of an older week does not move "latest".
    assert materialize(source, store, "2024-11-18").success
    again = definitions.load_asset_value("customer_segments")
    assert again.attrs["rfm_context"]["reference_date"] == "2024-12-09"


def test_every_step_runs_alone_on_what_it_loads_after_a_settings_change(source, tmp_path):
    store = tmp_path / "store"
    assert materialize(source, store, WEEK, scoring_method="quintiles").success
    before = stored(store, "segment_analytics", WEEK)
    # Only segment_analytics, with quartiles now: it segments by the 5-point scale stored.
    assert materialize(
        source, store, WEEK, ["segment_analytics"], scoring_method="quartiles"
    ).success
    after = stored(store, "segment_analytics", WEEK)
    pd.testing.assert_frame_equal(before, after)
    # Only customer_segments: the same, by the stored scale.
    assert materialize(
        source, store, WEEK, ["customer_segments"], scoring_method="quartiles"
    ).success
    assert set(stored(store, "customer_segments", WEEK)["R_score"]) <= {1, 2, 3, 4, 5}
    # rfm_scores alone rescoring on 4 points, then its dependants alone, one by one.
    for asset in ("rfm_scores", "customer_segments", "segment_analytics"):
        assert materialize(source, store, WEEK, [asset], scoring_method="quartiles").success
    assert stored(store, "customer_segments", WEEK)["R_score"].max() == 4
    assert len(stored(store, "segment_analytics", WEEK)) == 11
    # transactions and rfm_metrics alone, with another window.
    for asset in ("transactions", "rfm_metrics"):
        assert materialize(source, store, WEEK, [asset], analysis_period_days=90).success
    metrics = stored(store, "rfm_metrics", WEEK)
    assert metrics["recency"].max() <= 90


def test_a_grid_for_another_scale_stops_with_the_asset_to_rematerialize(source, tmp_path):
    store = tmp_path / "store"
    assert materialize(source, store, WEEK).success  # 5-point scores
    grid = tmp_path / "grid4.yaml"
    grid.write_text("scale: 4\nrules:\n  - {segment: Champions, R: [3, 4], FM: [3, 4]}\n"
                    "  - {segment: Lost, R: [1, 4], FM: [1, 4]}\n")  # fmt: skip
    result = materialize(
        source, store, WEEK, ["customer_segments"], raise_on_error=False,
        scoring_method="quartiles", segment_grid_file=str(grid),
    )  # fmt: skip
    assert not result.success
    message = step_failure_message(result)
    assert "rfm_scores holds 5-point scores" in message and "rematerialize rfm_scores" in message
    assert "\n" not in message


def test_thresholds_of_an_earlier_week_keep_scores_comparable(source, tmp_path):
    store = tmp_path / "store"
    first = materialize(source, store, WEEK)
    published = first.asset_materializations_for_node("rfm_scores")[0].metadata["thresholds"]
    later = materialize(source, store, NEXT_WEEK, thresholds_from_week=WEEK)
    used = later.asset_materializations_for_node("rfm_scores")[0].metadata["thresholds"]
    assert used.value == published.value
    scores = stored(store, "rfm_scores", NEXT_WEEK)
    expected = pandas_compute.fixed_scores(
        scores["monetary"].to_numpy(), published.value["monetary"], higher_is_better=True
    )
    assert (scores["M_score"].to_numpy() == expected).all()
    missing = materialize(source, store, NEXT_WEEK, raise_on_error=False,
                          thresholds_from_week="2024-10-07")  # fmt: skip
    assert not missing.success


def test_segment_trends_are_numeric_metadata_with_stable_keys(source, tmp_path):
    result = materialize(source, tmp_path / "store", WEEK)
    metadata = result.asset_materializations_for_node("segment_analytics")[0].metadata
    assert isinstance(metadata["customers/champions"], dg.IntMetadataValue)
    assert isinstance(metadata["customer_share/cannot_lose_them"], dg.FloatMetadataValue)
    shares = [metadata[k].value for k in metadata if k.startswith("customer_share/")]
    assert len(shares) == 11 and abs(sum(shares) - 1) < 1e-9


def test_columns_and_kinds_are_declared_before_the_first_run():
    definitions = build_rfm_definitions(
        RFMSettings(engine="spark"), weeks_start=WEEKS[0], bundled_sample=True
    )
    graph = definitions.resolve_asset_graph()
    node = graph.get(dg.AssetKey("customer_segments"))
    schema = node.metadata["dagster/column_schema"]
    assert "segment" in [c.name for c in schema.columns]
    assert node.kinds == {"spark"}
    # Dagster's column-schema-change check on every asset.
    schema_checks = {
        key.asset_key.to_user_string()
        for checks in definitions.asset_checks
        for key in checks.check_keys
        if key.name == "column_schema_change"
    }
    assert schema_checks == {
        "transactions",
        "rfm_metrics",
        "rfm_scores",
        "customer_segments",
        "segment_analytics",
        "high_value_customers",
        "segment_migration",
        "slipping_customers",
    }


# --- checks that fail on a crafted bad value, and never publish it --------------------------


def _duplicate_first_row(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.concat([frame, frame.iloc[:1]], ignore_index=True)
    out.attrs = frame.attrs
    return out


def _break(method: str, damage):
    original = getattr(PandasEngine, method)

    def broken(self, *args, **kwargs):
        return damage(original(self, *args, **kwargs))

    return broken


def _lose_a_row(result):
    kept, account = result
    return kept.iloc[1:].reset_index(drop=True), account


def _score_off_scale(result):
    scores, thresholds = result
    scores = scores.copy()
    scores.loc[0, "F_score"] = 9
    return scores, thresholds


def _unknown_segment(segmented):
    segmented = segmented.copy()
    segmented["segment"] = segmented["segment"].cat.rename_categories(
        {segmented["segment"].cat.categories[0]: "Mystery Shoppers"}
    )
    return segmented


def _wrong_revenue(analytics):
    analytics = analytics.copy()
    analytics.loc[0, "revenue"] += 0.01
    return analytics


@pytest.mark.parametrize(
    "method, damage, asset, check",
    [
        ("prepare", _lose_a_row, "transactions", "rows_accounted_for"),
        ("metrics", _duplicate_first_row, "rfm_metrics", "one_row_per_customer"),
        ("scores", _score_off_scale, "rfm_scores", "scores_on_scale"),
        ("segments", _duplicate_first_row, "customer_segments", "one_row_per_customer"),
        ("segments", _unknown_segment, "customer_segments", "segments_in_catalog"),
        ("analytics", _wrong_revenue, "segment_analytics", "revenue_matches_customers"),
    ],
)
def test_a_failing_blocking_check_keeps_the_bad_value_out_of_view(
    source, tmp_path, monkeypatch, method, damage, asset, check
):
    store = tmp_path / "store"
    assert materialize(source, store, WEEK).success
    before = _snapshot(store, WEEK)
    monkeypatch.setattr(PandasEngine, method, _break(method, damage))
    result = materialize(source, store, WEEK, raise_on_error=False, analysis_period_days=300)
    assert not result.success
    evaluations = {
        (e.asset_key.to_user_string(), e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
    }
    assert evaluations[(asset, check)] is False
    after = _snapshot(store, WEEK)
    assert after[asset] == before[asset]  # the previous value is what readers load


def _snapshot(store: Path, week: str) -> dict[str, bytes]:
    snapshot = {}
    for location in store.iterdir():
        if location.name == "rfm_report":  # a file per week, not a versioned table
            continue
        current = (location / week / "CURRENT").read_text().strip()
        snapshot[location.name] = current.encode() + (location / week / current).read_bytes()
    return snapshot


def test_warnings_for_a_dominant_segment_and_a_share_move_do_not_block(tmp_path):
    # Every customer alike in the first week: one segment holds everyone. In the next week
    # half of them buy again, and the segments split.
    path = tmp_path / "alike.parquet"
    pd.DataFrame(
        {
            "customer_id": np.r_[np.arange(50), np.arange(25)],
            "transaction_date": pd.to_datetime(["2024-11-25"] * 50 + ["2024-12-03"] * 25),
            "amount": 10.0,
            "order_id": [f"o{i}" for i in range(75)],
        }
    ).to_parquet(path)
    store = tmp_path / "store"
    first = materialize(str(path), store, WEEK)
    checks = {e.check_name: e for e in first.get_asset_check_evaluations()}
    assert not checks["dominant_segment"].passed
    assert checks["dominant_segment"].severity == dg.AssetCheckSeverity.WARN
    assert "holds 100.0%" in checks["dominant_segment"].description
    assert checks["share_change_from_previous_week"].description == "no previous week stored"
    second = materialize(str(path), store, NEXT_WEEK)  # new purchases: everyone moves
    moved = {e.check_name: e for e in second.get_asset_check_evaluations()}
    assert second.success
    assert not moved["share_change_from_previous_week"].passed
    assert "from the previous week" in moved["share_change_from_previous_week"].description


def test_two_component_instances_load_in_one_code_location(monkeypatch):
    """The example deployment: eu and us instances from defs.yaml, sources from the env."""
    import importlib
    import sys

    project = REPO / "examples" / "two_regions"
    monkeypatch.setenv("RFM_EU_TRANSACTIONS", str(REPO / "rfm_assets/data/online_retail.parquet"))
    monkeypatch.setenv(
        "RFM_US_TRANSACTIONS", str(REPO / "rfm_assets_tests/data/cdnow_master.parquet")
    )
    monkeypatch.syspath_prepend(str(project))
    sys.modules.pop("two_regions.definitions", None)
    module = importlib.import_module("two_regions.definitions")
    definitions = module.defs()
    dg.Definitions.validate_loadable(definitions)
    keys = {k.to_user_string() for k in definitions.resolve_asset_graph().get_all_asset_keys()}
    for region in ("eu", "us"):
        assert f"{region}/customer_segments" in keys
        assert definitions.resolve_schedule_def(f"rfm_{region}_weekly").job_name == (
            f"rfm_{region}_job"
        )
    # The shared resources are bound once, by defs/resources.py; each instance its settings.
    own = {"rfm_settings_eu", "rfm_settings_us"}
    assert set(definitions.resources) == {"spark", "io_manager", *own}
    # eu's defs.yaml gives its assets owners and tags (Dagster's post_processing).
    graph = definitions.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["eu", "customer_segments"])).owners == ["team:crm_eu"]
    assert graph.get(dg.AssetKey(["eu", "rfm_report"])).tags["region"] == "eu"
    assert graph.get(dg.AssetKey(["us", "customer_segments"])).owners == []
    settings = definitions.resources["rfm_settings_us"]
    assert settings.input_path == os.environ["RFM_US_TRANSACTIONS"]
    assert settings.scoring_method == "quartiles" and settings.weights.recency == 2
    assert settings.exclude_recent_days == 30 and settings.high_value_share == 0.1
    schedule = definitions.resolve_schedule_def("rfm_us_weekly")
    monday = dt.datetime(1998, 3, 2, 7, 0, tzinfo=dt.UTC)
    (request,) = schedule.evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=monday)
    ).run_requests
    assert request.partition_key == "1998-02-23"  # the week that just ended


def test_a_step_run_alone_after_its_source_changed_uses_what_it_loads(source, tmp_path):
    """All from A, then transactions alone from B, then customer_segments alone: the
    segments are A's scores segmented, consistent and published; nothing compares them
    with B's transactions through the event log."""
    store = tmp_path / "store"
    assert materialize(source, store, WEEK).success
    other = tmp_path / "b.parquet"
    generate_transactions(2_000, customers=100, seed=9).to_parquet(other)
    assert materialize(str(other), store, WEEK, ["transactions"]).success
    assert materialize(str(other), store, WEEK, ["customer_segments"]).success
    segments = stored(store, "customer_segments", WEEK)
    assert len(segments) == len(stored(store, "rfm_scores", WEEK)) > 100


def test_the_graph_can_start_from_a_table_another_asset_produces(source, tmp_path):
    """source_asset: the transactions step reads an upstream asset's value, with the same
    rules and numbers as reading the same table from a path."""

    @dg.asset(key=["raw", "orders"], partitions_def=dg.WeeklyPartitionsDefinition(
        start_date=WEEKS[0], end_date=WEEKS[1], day_offset=1))  # fmt: skip
    def orders() -> pd.DataFrame:
        return pd.read_parquet(source).rename(columns={"customer_id": "client"})

    definitions = build_rfm_definitions(
        RFMSettings(columns={"customer_id": "client", "order_id": "order_id"}),
        weeks_start=WEEKS[0],
        weeks_end=WEEKS[1],
        source_asset="raw/orders",
    )
    store = RFMParquetIOManager(base_dir=str(tmp_path / "from_asset"))
    resources = {**definitions.resources, "io_manager": store}
    result = dg.materialize(
        [orders, *definitions.assets],
        partition_key=WEEK,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    from_asset = result.output_for_node("customer_segments")
    from_path = materialize(source, tmp_path / "store", WEEK)
    assert from_path.success
    expected = stored(tmp_path / "store", "customer_segments", WEEK)
    columns = ["customer_id", "recency", "frequency", "monetary", "segment"]
    pd.testing.assert_frame_equal(
        from_asset[columns].astype({"segment": str}).reset_index(drop=True),
        expected[columns].astype({"segment": str}).reset_index(drop=True),
    )
    metadata = result.asset_materializations_for_node("transactions")[0].metadata
    assert metadata["source"].value == "asset raw/orders"


def test_a_changed_column_schema_is_flagged(source, tmp_path):
    """Dagster's column-schema-change check warns when an asset's stored columns change:
    here transactions loses order_id when the order column is no longer mapped."""
    store = tmp_path / "store"
    assert materialize(source, store, WEEK).success
    definitions = build_rfm_definitions(
        RFMSettings(input_path=source), weeks_start=WEEKS[0], weeks_end=WEEKS[1]
    )
    resources = {**definitions.resources, "io_manager": RFMParquetIOManager(base_dir=str(store))}
    instance = dg.DagsterInstance.ephemeral()
    for settings in ({"columns": {"order_id": "order_id"}}, {}):
        resources["rfm_settings"] = RFMSettings(input_path=source, **settings)
        result = dg.materialize(
            [*definitions.assets, *definitions.asset_checks],
            selection=dg.AssetSelection.assets("transactions")
            | dg.AssetSelection.checks_for_assets("transactions"),
            partition_key=WEEK,
            resources=resources,
            instance=instance,
        )
    (changed,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "column_schema_change"
    ]
    assert not changed.passed and changed.severity == dg.AssetCheckSeverity.WARN


def test_revenue_beyond_int64_micro_units_passes_the_checks_exactly(tmp_path):
    """Customers each under the 9e12 limit whose segments and moves together pass 9.2e12:
    the revenue checks add up exactly instead of overflowing int64 micro-units."""
    from fractions import Fraction

    frame = generate_transactions(3_000, customers=300, seed=4)
    big = frame["customer_id"].isin(frame["customer_id"].unique()[:40])
    rows = frame.groupby("customer_id")["amount"].transform("size")
    frame.loc[big, "amount"] = 8.5e12 / rows[big]  # each of 40 customers: 8.5e12 in all
    path = tmp_path / "big.parquet"
    frame.to_parquet(path)
    store = tmp_path / "store"
    for week in (WEEK, NEXT_WEEK):
        result = materialize(str(path), store, week)
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert checks["revenue_matches_customers"].passed
    assert checks["margins_match_both_weeks"].passed
    segments = stored(store, "customer_segments", NEXT_WEEK)
    analytics = stored(store, "segment_analytics", NEXT_WEEK)
    exact = sum(Fraction(m) for m in segments["monetary"])
    assert exact > 9.3e12 and analytics["revenue"].max() > 9.3e12
    assert abs(sum(Fraction(r) for r in analytics["revenue"]) - exact) < 0.01


def test_a_damaged_store_is_one_line_naming_the_file_or_recovers(source, tmp_path):
    """LATEST gone: the newest stored week is certain, and is what an unkeyed load returns.
    A damaged run context, or CURRENT naming a version that is gone or holding anything else:
    one line naming the file."""
    from rfm_assets.io_manager import RFMParquetIOManager

    store = tmp_path / "store"
    notes = store / "customer_segments" / NEXT_WEEK / "v0notes.txt"
    for week in (WEEK, NEXT_WEEK, NEXT_WEEK):  # NEXT_WEEK twice: old versions are removed
        assert materialize(source, store, week).success
        notes.parent.mkdir(parents=True, exist_ok=True)
        notes.write_text("mine") if not notes.exists() else None
    assert notes.read_text() == "mine"  # only versions the store wrote are removed
    built = build_rfm_definitions(
        RFMSettings(input_path=source), weeks_start=WEEKS[0], weeks_end=WEEKS[1]
    )
    definitions = dg.Definitions(
        assets=list(built.assets),
        resources={**built.resources, "io_manager": RFMParquetIOManager(base_dir=str(store))},
    )
    newest = stored(store, "customer_segments", NEXT_WEEK)
    for latest in ("", "garbage\n", "2099-01-05\n"):  # gone, damaged, a week not stored
        path = store / "customer_segments" / "LATEST"
        path.unlink(missing_ok=True)
        if latest:
            path.write_text(latest)
        loaded = definitions.load_asset_value("customer_segments")
        assert loaded["customer_id"].tolist() == newest["customer_id"].tolist()

    def failure(asset: str) -> str:
        with pytest.raises(dg.Failure) as raised:
            materialize(source, store, NEXT_WEEK, [asset])
        return raised.value.description

    location = store / "rfm_scores" / NEXT_WEEK
    version = (location / "CURRENT").read_text().strip()
    (location / f"{version}.context.json").write_text("{damaged")
    message = failure("customer_segments")
    assert f"{location / version}.context.json is damaged" in message
    assert "materialize rfm_scores again" in message and "\n" not in message
    (location / "CURRENT").write_text("v1-0000abcd.parquet\n")
    message = failure("customer_segments")
    assert f"{location / 'CURRENT'} names v1-0000abcd.parquet, which is not stored" in message
    (location / "CURRENT").write_text("../../../etc/passwd\n")
    assert "is damaged: it holds '../../../etc/passwd'" in failure("customer_segments")
    (location / "CURRENT").write_text(version + "\n")
    assert materialize(source, store, NEXT_WEEK, ["rfm_scores"]).success  # whole again
    version = (location / "CURRENT").read_text().strip()
    (location / version).write_bytes(b"PAR1 not a table")
    with pytest.raises(Exception, match="the stored table cannot be read") as raised:
        materialize(source, store, NEXT_WEEK, ["customer_segments"])
    assert str(location / version) in str(raised.value)
