"""A range of weeks in one run (a single-run backfill): each week of the range is what the
same week run alone stores, and what a from-scratch run as of the week's end computes.

The Spark engine's range is compared with this module's pandas range in test_spark.py.
"""

import datetime as dt
import gc
import json
import re
import weakref
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import pytest
from upath import UPath

from rfm_assets.assets import graph as graph_module
from rfm_assets.assets.core import SEGMENTED_AT_TAG
from rfm_assets.assets.graph import STAGED_FROM_ROWS, RFMGraph, week_by_week
from rfm_assets.component import build_rfm_definitions
from rfm_assets.engines.stored import StagedTable
from rfm_assets.io_manager import RFMParquetIOManager, RFMStore
from rfm_assets.runner import RFMRun, run
from rfm_assets.settings import RFMSettings
from rfm_assets.synthetic import generate_transactions

PARTITIONED = ("2024-10-07", "2024-12-30")
RANGE = ("2024-11-18", "2024-12-02")
WEEKS_OF_RANGE = ("2024-11-18", "2024-11-25", "2024-12-02")
SEGMENTED_AT = "2024-12-10T00:00:00+00:00"
# Every table a week stores (the report is a page, compared apart).
TABLES = ("transactions", "rfm_metrics", "rfm_scores", "customer_segments", "segment_analytics",
          "high_value_customers", "segment_migration", "slipping_customers")  # fmt: skip
# The tables a stored week is compared by with a run from scratch as of its end.
FROM_SCRATCH = ("rfm_metrics", "customer_segments", "segment_analytics")


def write_source(folder: Path) -> str:
    path = folder / "tx.parquet"
    generate_transactions(6_000, customers=600, seed=8).to_parquet(path)
    return str(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    return write_source(tmp_path_factory.mktemp("ranges"))


def settings(source: str, **extra) -> RFMSettings:
    return RFMSettings(input_path=source, columns={"order_id": "order_id"}, **extra)


def run_weeks(source: str, store: Path, weeks, selection=None, raise_on_error=True,
              **extra) -> dg.ExecuteInProcessResult:  # fmt: skip
    """One run of the graph (or of `selection`) for one week (a key) or a range of weeks
    (first, last), as `dagster asset materialize --partition[-range]` makes it."""
    definitions = build_rfm_definitions(
        settings(source, **extra), weeks_start=PARTITIONED[0], weeks_end=PARTITIONED[1]
    )
    resources = {**definitions.resources, "io_manager": RFMParquetIOManager(base_dir=str(store))}
    tags = {SEGMENTED_AT_TAG: SEGMENTED_AT}
    if isinstance(weeks, tuple):
        tags |= {"dagster/asset_partition_range_start": weeks[0],
                 "dagster/asset_partition_range_end": weeks[1]}  # fmt: skip
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        partition_key=None if isinstance(weeks, tuple) else weeks,
        tags=tags,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        selection=selection,
        raise_on_error=raise_on_error,
    )


def current_version(store: Path, asset: str, week: str) -> str:
    location = store / asset / week
    return str(location / (location / "CURRENT").read_text().strip())


def stored(store: Path, asset: str, week: str) -> pd.DataFrame:
    return pd.read_parquet(current_version(store, asset, week))


def stored_context(store: Path, asset: str, week: str) -> str:
    location = store / asset / week
    return (location / f"{(location / 'CURRENT').read_text().strip()}.context.json").read_text()


def week_end(week: str) -> dt.date:
    """The week's reference date: the day after its last day."""
    return dt.date.fromisoformat(week) + dt.timedelta(days=7)


def assert_week_equals_a_run_from_scratch(source: str, store: Path, week: str, **extra) -> RFMRun:
    """The week as stored (by either engine) is what `rfm-assets analyze --reference-date
    <week end>` computes on pandas, customer for customer; and under `net` the rows the net
    rule drops from the week's window are the rows the run drops, counted in rfm_metrics'
    context (`window_rows_excluded`). `extra`: the settings both were run with (not the
    engine). rfm_metrics is compared in customer_id order (its row order is the engine's);
    the other tables in the order they are stored in. Returns the run from scratch."""
    alone = run(
        settings(source, reference_date=week_end(week).isoformat(), **extra),
        segmented_at=dt.datetime.fromisoformat(SEGMENTED_AT),
        keep=FROM_SCRATCH,
    )
    for table in FROM_SCRATCH:
        got, want = stored(store, table, week), alone.tables[table]
        if table == "rfm_metrics":
            got, want = (f.sort_values("customer_id", ignore_index=True) for f in (got, want))
        pd.testing.assert_frame_equal(
            got, want, check_dtype=False, check_categorical=False, obj=f"{table} {week} {extra}"
        )
    metrics = json.loads(stored_context(store, "rfm_metrics", week))
    dropped = alone.account.rows_excluded["customer_monetary_not_positive"]
    if settings(source, **extra).returns_policy == "net":
        assert metrics["window_rows_excluded"] == {"customer_monetary_not_positive": dropped}, week
    else:
        assert "window_rows_excluded" not in metrics and dropped == 0, week
    return alone


# Each materialization's metadata, by (asset, week), of every range run stored here.
RANGE_METADATA: dict[Path, dict[tuple[str, str], dict]] = {}


@pytest.fixture(scope="module")
def range_store(source, tmp_path_factory) -> Path:
    return store_range(source, tmp_path_factory.mktemp("range_store"))


def store_range(source: str, store: Path, **extra) -> Path:
    """The range's run, checked: one run stored every table of every week, checks passed.
    Every table is staged as its week is computed, however small (the product stages tables
    of STAGED_FROM_ROWS rows and more), so the range is stored as a big one is."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graph_module, "STAGED_FROM_ROWS", 0)
        result = run_weeks(source, store, RANGE, **extra)
    RANGE_METADATA[store] = {
        (event.asset_key.path[-1], event.partition): event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    assert result.success
    materialized = {
        (event.asset_key.path[-1], event.partition)
        for event in result.get_asset_materialization_events()
    }
    assert {(table, week) for table in TABLES for week in WEEKS_OF_RANGE} <= materialized
    assert {("rfm_report", week) for week in WEEKS_OF_RANGE} <= materialized
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations if e.check_name != "dominant_segment")
    for table in TABLES:  # each week holds its current version and nothing staged beside it
        for week in WEEKS_OF_RANGE:
            versions = sorted(p.name for p in (store / table / week).glob("*.parquet"))
            assert versions == [Path(current_version(store, table, week)).name], (table, week)
    return store


def test_a_range_of_weeks_stores_what_each_week_run_alone_stores(source, range_store, tmp_path):
    alone = tmp_path / "alone"
    for week in WEEKS_OF_RANGE:  # in order: each week compares with the one before
        assert run_weeks(source, alone, week).success
    for week in WEEKS_OF_RANGE:
        for table in TABLES:
            pd.testing.assert_frame_equal(
                stored(range_store, table, week), stored(alone, table, week), obj=f"{table} {week}"
            )
            assert stored_context(range_store, table, week) == stored_context(alone, table, week)
        # The week before the range's first is not stored: its movement is empty, as alone.
        # The same page but for the minute it was generated in; the range draws the pictures
        # of its last week only, and says so where the other weeks' would be.
        pages = [re.sub(r"generated [^<]* UTC", "generated", (store / "rfm_report" / week /
                        "report.html").read_text()) for store in (range_store, alone)]  # fmt: skip
        if week == WEEKS_OF_RANGE[-1]:
            assert pages[0] == pages[1] and "<img" in pages[0]
        else:
            assert "<img" not in pages[0] and "Pictures not drawn" in pages[0]
            assert without_pictures(pages[0]) == without_pictures(pages[1])
            # Sizes, heatmaps and distributions, and the movement after the range's first week.
            assert pages[1].count("<img") == (3 if week == WEEKS_OF_RANGE[0] else 4)
    assert stored(range_store, "segment_migration", WEEKS_OF_RANGE[0]).empty
    assert not stored(range_store, "segment_migration", WEEKS_OF_RANGE[1]).empty


def without_pictures(page: str) -> str:
    """A report page without its pictures, or without the note that stands in for them."""
    page = re.sub(r"<p><img [^>]*></p>", "", page)
    return re.sub(r'<p class="muted">Pictures not drawn[^<]*</p>', "", page)


def test_a_range_draws_the_pictures_of_its_last_week_only(source, range_store, tmp_path):
    """Drawing is most of a range's time: the weeks before the last say why they have none
    where each picture would be; `range_pictures: every_week` draws every week's."""
    metadata = RANGE_METADATA[range_store]
    pictured = {"rfm_metrics": "distributions", "segment_analytics": "segment_sizes",
                "segment_migration": "movement"}  # fmt: skip
    for asset, name in pictured.items():
        for week in WEEKS_OF_RANGE:
            value = metadata[(asset, week)][name]
            if week == WEEKS_OF_RANGE[-1]:
                assert isinstance(value, dg.MarkdownMetadataValue), (asset, week)
                assert "data:image/png;base64," in value.value
            else:
                assert isinstance(value, dg.TextMetadataValue), (asset, week)
                assert f"drew the pictures of its last week ({WEEKS_OF_RANGE[-1]})" in value.value
                assert f"materialize week {week} alone" in value.value
    assert "pictures" in metadata[("rfm_report", WEEKS_OF_RANGE[0])]
    assert "pictures" not in metadata[("rfm_report", WEEKS_OF_RANGE[-1])]

    every = store_range(source, tmp_path / "every", range_pictures="every_week")
    for week in WEEKS_OF_RANGE:
        page = (every / "rfm_report" / week / "report.html").read_text()
        assert "Pictures not drawn" not in page and "<img" in page
        for asset, name in pictured.items():
            value = RANGE_METADATA[every][(asset, week)][name]
            assert isinstance(value, dg.MarkdownMetadataValue), (asset, week)


def test_each_week_of_a_range_equals_a_run_as_of_the_week_end(source, range_store):
    """What `rfm-assets analyze --reference-date <week end>` computes, customer for customer."""
    for week in WEEKS_OF_RANGE:
        assert_week_equals_a_run_from_scratch(source, range_store, week)


class FakeLog:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(("info", message))

    def warning(self, message):
        self.lines.append(("warning", message))


class FakeRangeContext:
    """What week_by_week reads of a range run's context."""

    has_partition_key = False

    asset_key = dg.AssetKey("rfm_scores")

    def __init__(self, weeks, store=None):
        self.partition_keys = list(weeks)
        self.metadata = {}
        self.log = FakeLog()
        self.resources = SimpleNamespace(io_manager=store)

    def add_asset_metadata(self, metadata, partition_key=None):
        self.metadata[partition_key] = metadata


def test_a_range_with_a_failing_week_names_it_and_hands_on_nothing():
    weekly = dg.WeeklyPartitionsDefinition(start_date=PARTITIONED[0], day_offset=1)
    graph = RFMGraph(partitions=weekly)
    key = dg.AssetKey("rfm_scores")

    def step(graph, context, **_):
        passed = context.partition_key != "2024-11-25"
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name="scores_on_scale",
            passed=passed,
            description=None if passed else "2 scores off the scale",
        )
        if not passed:
            raise dg.Failure("rfm_scores: blocking check scores_on_scale failed")
        yield dg.Output(pd.DataFrame({"week": [context.partition_key]}))

    events = []
    with pytest.raises(dg.Failure, match=r"1 of 3 weeks failed.*week 2024-11-25"):
        for event in week_by_week(graph, FakeRangeContext(WEEKS_OF_RANGE), step):
            events.append(event)
    assert [type(event) for event in events] == [dg.AssetCheckResult]  # no value handed on
    (result,) = events
    assert not result.passed and "2024-11-25" in result.description
    assert result.metadata["failed_weeks"].value == ["2024-11-25"]
    assert result.metadata["weeks"].value == 3


def test_a_line_every_week_of_a_range_logs_alike_is_logged_once():
    """Each log line is an event the run stores: a step with nothing to do says so once for
    the range; lines that differ by week, and warnings, are all logged."""
    graph = RFMGraph(partitions=dg.WeeklyPartitionsDefinition(start_date=PARTITIONED[0],
                                                              day_offset=1))  # fmt: skip

    def step(graph, context, **_):
        context.log.info("segmentation_method is grid; no model to store")
        context.log.info(f"week {context.partition_key}: 10 rows read")
        context.log.warning("a warning")
        yield dg.Output(pd.DataFrame({"week": [context.partition_key]}))

    context = FakeRangeContext(WEEKS_OF_RANGE)
    list(week_by_week(graph, context, step))
    expected = [("info", "segmentation_method is grid; no model to store")]
    for week in WEEKS_OF_RANGE:
        expected += [("info", f"week {week}: 10 rows read"), ("warning", "a warning")]
    assert context.log.lines == expected


class FakeStore:
    """What week_by_week asks of the Parquet store: stage a week, discard a staged one."""

    def __init__(self, folder: Path):
        self.folder, self.staged, self.discarded = folder, [], []

    def stage(self, asset_key, week, frame, table_context):
        path = self.folder / f"{asset_key.path[-1]}-{week}.parquet"
        frame.to_parquet(path)
        self.staged.append(StagedTable(str(path), {}, dict(table_context)))
        return self.staged[-1]

    def discard(self, staged):
        self.discarded.append(staged)
        Path(staged.path).unlink()


def weekly_frames(made: list, fail_in: str = ""):
    """A step that makes a table a week (kept in `made` by weak reference only)."""

    def step(graph, context, **_):
        if context.partition_key == fail_in:
            raise dg.Failure("rfm_scores: blocking check scores_on_scale failed")
        rows = STAGED_FROM_ROWS
        frame = pd.DataFrame({"week": [context.partition_key] * rows, "n": range(rows)})
        made.append(weakref.ref(frame))
        yield dg.Output(frame, metadata={"rfm/context": dg.MetadataValue.json({"w": 1})})

    return step


def test_a_range_writes_each_week_as_it_goes_and_holds_none_of_them(tmp_path):
    """The range's tables are staged in the store week by week and handed on as handles:
    no week's table stays in memory, and each handle reads back what its week made."""
    graph = RFMGraph(partitions=dg.WeeklyPartitionsDefinition(start_date=PARTITIONED[0],
                                                              day_offset=1))  # fmt: skip
    store, made = FakeStore(tmp_path), []
    (output,) = week_by_week(graph, FakeRangeContext(WEEKS_OF_RANGE, store),
                             weekly_frames(made))  # fmt: skip
    gc.collect()
    assert len(made) == 3 and all(ref() is None for ref in made)
    assert list(output.value) == list(WEEKS_OF_RANGE) and store.discarded == []
    for week, staged in output.value.items():
        assert isinstance(staged, StagedTable) and staged.context == {"w": 1}
        assert set(staged.to_pandas()["week"]) == {week}


def test_a_range_that_fails_leaves_nothing_staged(tmp_path):
    graph = RFMGraph(partitions=dg.WeeklyPartitionsDefinition(start_date=PARTITIONED[0],
                                                              day_offset=1))  # fmt: skip
    (tmp_path / "staged").mkdir()
    store = FakeStore(tmp_path / "staged")
    steps = week_by_week(graph, FakeRangeContext(WEEKS_OF_RANGE, store),
                         weekly_frames([], fail_in=WEEKS_OF_RANGE[-1]))  # fmt: skip
    with pytest.raises(dg.Failure, match="1 of 3 weeks failed"):
        list(steps)
    assert len(store.staged) == 2 and store.discarded == store.staged
    assert list((tmp_path / "staged").iterdir()) == []


WEEK = WEEKS_OF_RANGE[0]


def test_a_staged_week_is_current_even_when_other_runs_wrote_the_week_meanwhile(tmp_path):
    """A range stores its weeks at its end: runs of one of its weeks alone in the meantime
    neither remove what it staged nor outlive it (the range ends last, its week is current)."""
    store = RFMStore(base_path=UPath(tmp_path / "store"))
    key, path = dg.AssetKey("rfm_scores"), UPath(tmp_path / "store" / "rfm_scores" / WEEK)
    staged = store.stage(key, WEEK, pd.DataFrame({"x": [1]}), {"run": "range"})
    for value in (2, 3):  # two runs of the week alone, while the range runs
        store._store(None, pd.DataFrame({"x": [value]}), path, {"run": value}, WEEK)
    assert staged.to_pandas()["x"].tolist() == [1]
    store._commit(path, staged, WEEK)
    current = store.stored(key, WEEK)
    assert current.to_pandas()["x"].tolist() == [1] and current.context == {"run": "range"}
    assert not [entry for entry in path.iterdir() if entry.name.startswith("staged-")]


def test_a_range_whose_storing_fails_leaves_no_week_staged(tmp_path, monkeypatch):
    store = RFMStore(base_path=UPath(tmp_path / "store"))
    key = dg.AssetKey("rfm_scores")
    weeks = {week: store.stage(key, week, pd.DataFrame({"x": [1]}), {}) for week in WEEKS_OF_RANGE}
    commit = store._commit

    def commit_then_fail(path, staged, week):
        if week == WEEKS_OF_RANGE[1]:
            raise OSError("the store went away")
        commit(path, staged, week)

    monkeypatch.setattr(store, "_commit", commit_then_fail)
    context = SimpleNamespace(has_asset_partitions=True, asset_partition_keys=WEEKS_OF_RANGE,
                              asset_key=key)  # fmt: skip
    with pytest.raises(OSError):
        store.handle_output(context, weeks)
    folder = tmp_path / "store" / "rfm_scores"
    assert store.stored(key, WEEKS_OF_RANGE[0]) is not None  # stored before the failure
    for week in WEEKS_OF_RANGE:
        assert not list((folder / week).glob("staged-*")), week


def test_a_range_that_fails_midway_stores_nothing_of_the_failed_step(tmp_path):
    """A real range whose rfm_metrics fails in its second week (its 7-day window has no
    rows) after staging the first: nothing of rfm_metrics is left in the store, while the
    transactions step, which passed, stored every week."""
    rows = [(1, "2024-11-19 10:00", 10.0, "O-1"), (2, "2024-11-20 10:00", 20.0, "O-2"),
            (1, "2024-12-03 10:00", 30.0, "O-3")]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["customer_id", "transaction_date", "amount", "order_id"])
    frame.astype({"transaction_date": "datetime64[s]"}).to_parquet(tmp_path / "tx.parquet")
    store = tmp_path / "store"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graph_module, "STAGED_FROM_ROWS", 0)
        result = run_weeks(str(tmp_path / "tx.parquet"), store, RANGE, raise_on_error=False,
                           analysis_period_days=7)  # fmt: skip
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "rfm_metrics"
    assert "no transactions in the window of week 2024-11-25" in str(failure.event_specific_data)
    assert not [p for p in (store / "rfm_metrics").rglob("*") if p.is_file()]
    assert [stored(store, "transactions", week).shape[0] for week in WEEKS_OF_RANGE] == [2, 0, 1]


def test_the_weeks_of_a_range_aggregate_in_one_duckdb_database_with_the_same_results(
    monkeypatch,
):
    """`one_duckdb` (a range's rfm_metrics) opens DuckDB once for every week, not once a
    week; outside it a small aggregation uses the database its thread keeps and a large one
    opens its own; the metrics are the same in every database."""
    import duckdb

    from rfm_assets.engines import pandas_compute

    rows = generate_transactions(3_000, customers=300, seed=3).assign(is_return=False)
    weeks = [rows[rows["transaction_date"] < day] for day in ("2024-06-01", "2024-12-01")]
    alone = [pandas_compute.compute_metrics(w, dt.date(2024, 12, 2)) for w in weeks]
    opened = []
    connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *a, **k: opened.append(1) or connect(*a, **k))
    with pandas_compute.one_duckdb():
        together = [pandas_compute.compute_metrics(w, dt.date(2024, 12, 2)) for w in weeks]
    assert len(opened) == 1
    for got, want in zip(together, alone):
        pd.testing.assert_frame_equal(got, want)
    kept = pandas_compute.compute_metrics(weeks[0], dt.date(2024, 12, 2))
    assert len(opened) == 1  # small: the database the thread kept when `alone` was computed
    monkeypatch.setattr(pandas_compute, "KEPT_DUCKDB_MOST_BYTES", 0)  # every table is large
    own = [pandas_compute.compute_metrics(weeks[0], dt.date(2024, 12, 2)) for _ in range(2)]
    assert len(opened) == 3  # a database of its own each time
    for got in (kept, *own):
        pd.testing.assert_frame_equal(got, alone[0])
