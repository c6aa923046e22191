"""The Spark engine gives the pandas engine's tables: same rows, same values.

Skipped only where Java is absent (Spark needs a JVM); CI installs Java 17, so CI runs these.
Floats are compared exactly: both engines do the same IEEE double operations in the same
order (monetary is an exact micro-unit sum divided once), so no tolerance is needed.
"""

import csv
import dataclasses
import datetime as dt
import gc
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from rfm_assets import run
from rfm_assets.cli import main
from rfm_assets.contract import exclusion_reasons
from rfm_assets.engines.dispatch import PandasEngine, SparkEngine
from rfm_assets.errors import RFMError
from rfm_assets.settings import RFMSettings
from rfm_assets.synthetic import generate_transactions
from rfm_assets_tests.conftest import (
    CDNOW,
    assert_rounded_half_to_even,
    bundled_slice_settings,
    half_micro_frame,
    parquet_rows,
    rfm_resources,
    stored_frame,
)
from rfm_assets_tests.test_clustering import (
    SEVEN,
    applied_to_one_group,
    grouped_customers,
    kmeans_settings,
    nearest_centroid_oracle,
    oracle_features,
)
from rfm_assets_tests.test_corpus import CASES, write_input
from rfm_assets_tests.test_customer_level import CASES as CUSTOMER_CASES
from rfm_assets_tests.test_customer_level import customer_settings, messy_customer_rows, write_csv
from rfm_assets_tests.test_duplicates import LINES as DUPLICATE_LINES
from rfm_assets_tests.test_duplicates import write_lines
from rfm_assets_tests.test_excel import COLUMNS as EXCEL_COLUMNS
from rfm_assets_tests.test_excel import online_retail_workbook
from rfm_assets_tests.test_week_ranges import (
    RANGE,
    WEEKS_OF_RANGE,
    assert_week_equals_a_run_from_scratch,
    current_version,
    run_weeks,
    store_range,
    stored,
    stored_context,
    write_source,
)
from rfm_assets_tests.test_weekly_history import write as write_history_source

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None, reason="Java is not installed: Spark needs Java 17"
)

SEGMENTED_AT = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def spark():
    """One session for the module, tuned for inputs of a few hundred rows: one shuffle
    partition per core instead of four, no adaptive re-planning (each adaptive stage is
    a Spark job of its own) and no generated code (compiling Java for each new plan costs
    more than running a few hundred rows through the interpreted one: a fifth of the Spark
    tests' time). None changes a number, which is exact under any partitioning and plan; the
    product's own defaults run in the subprocess and cluster tests. Together they take about
    half off every small Spark run. The JVM collects garbage on one thread, where the default
    collector's concurrent threads compete with the tests for two cores: this file took 383
    and 390 s on two workers against 412 and 428 s with the default, interleaved (set
    RFM_TEST_JAVA_OPTIONS to other options, or to nothing for the JVM's defaults, to compare;
    with the quick compiler only as well, 421 and 466 s)."""
    from pyspark.sql import SparkSession

    from rfm_assets.definitions import DEFAULT_SPARK_CONFIG
    from rfm_assets.engines import spark_compute

    builder = SparkSession.builder.master("local[2]")
    tuned = {"spark.ui.enabled": "false"}
    java_options = os.environ.get("RFM_TEST_JAVA_OPTIONS", "-XX:+UseSerialGC")
    if java_options:
        tuned["spark.driver.extraJavaOptions"] = java_options
    for key, value in {**DEFAULT_SPARK_CONFIG, **tuned}.items():
        if key != "spark.master":
            builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.conf.set("spark.sql.adaptive.enabled", "false")
    session.conf.set("spark.sql.codegen.wholeStage", "false")
    session.conf.set("spark.sql.codegen.factoryMode", "NO_CODEGEN")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spark_compute, "PARTITIONS_PER_CORE", 1)
        yield session


@pytest.fixture(scope="module", autouse=True)
def _no_pandas_spark_conversions():
    """The engine never converts between pandas and Spark in memory (see definitions.py):
    while this module's tests run, toPandas and createDataFrame of a pandas frame fail. Both
    are put back when the module is done, so no other test inherits the refusal."""
    from pyspark.sql import DataFrame, SparkSession

    def refuse(*args, **kwargs):
        raise AssertionError("pandas <-> Spark conversion in the Spark engine")

    original_create = SparkSession.createDataFrame

    def create(self, data, *args, **kwargs):
        if isinstance(data, pd.DataFrame):
            refuse()
        return original_create(self, data, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DataFrame, "toPandas", refuse)
        patch.setattr(SparkSession, "createDataFrame", create)
        yield
    assert DataFrame.toPandas is not refuse and SparkSession.createDataFrame is original_create


@pytest.fixture(autouse=True)
def _fresh_cache(request):
    """Each test starts with an empty cache, as each run of the graph does: the session is
    shared by the whole suite, and frames cached by earlier tests would otherwise pile up in
    its 1 GiB heap (a late test once failed with AGGREGATE_OUT_OF_MEMORY)."""
    yield
    if "spark" in request.fixturenames:
        request.getfixturevalue("spark").catalog.clearCache()


def as_pandas(frame, folder: Path) -> pd.DataFrame:
    """A Spark DataFrame through Parquet, as the IO manager hands it to pandas consumers."""
    path = folder / f"t{uuid.uuid4().hex}"
    frame.write.parquet(str(path))
    return pd.read_parquet(path)


def assert_same_customers(spark_frame, pandas_frame: pd.DataFrame, folder: Path) -> None:
    assert_same_rows(as_pandas(spark_frame, folder), pandas_frame, ["customer_id"])


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame, key: list[str]) -> None:
    """The same rows (in `key` order) and values, whichever engine's column types."""

    def order(column: pd.Series) -> pd.Series:  # a category sorts by its own order
        return column.astype(str) if isinstance(column.dtype, pd.CategoricalDtype) else column

    got = got.sort_values(key, key=order, ignore_index=True)
    want = want.sort_values(key, key=order, ignore_index=True)
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for column in want.columns:
        left, right = got[column], want[column]
        if column == "segmented_at":
            assert (left == right).all()
            continue
        if isinstance(right.dtype, pd.CategoricalDtype) or right.dtype == "str":
            left, right = left.astype(str), right.astype(str)
        elif pd.api.types.is_datetime64_any_dtype(right):
            left, right = left.astype("datetime64[ms]"), right.astype("datetime64[ms]")
        else:
            left, right = left.astype(right.dtype), right
        both_null = left.isna().to_numpy() & right.isna().to_numpy()
        one_null = left.isna().to_numpy() ^ right.isna().to_numpy()
        differ = (left != right).fillna(True).to_numpy(dtype=bool)
        mismatched = int((one_null | (differ & ~both_null)).sum())
        assert mismatched == 0, f"{column}: {mismatched} of {len(want)} differ"


def assert_same_analytics(spark_frame, pandas_frame: pd.DataFrame, folder: Path) -> None:
    assert_same_segment_rows(as_pandas(spark_frame, folder), pandas_frame)


def assert_same_segment_rows(got: pd.DataFrame, pandas_frame: pd.DataFrame) -> None:
    assert list(got["segment"]) == list(pandas_frame["segment"])
    for column in pandas_frame.columns:
        if column.endswith("_thresholds"):
            assert [list(v) for v in got[column]] == [list(v) for v in pandas_frame[column]]
        else:
            pd.testing.assert_series_equal(
                got[column], pandas_frame[column], check_dtype=False, check_names=False
            )


def both_engines(settings: dict, spark, folder: Path):
    pandas_result = run(RFMSettings(**settings), segmented_at=SEGMENTED_AT)
    spark_result = run(
        RFMSettings(**settings, engine="spark"), spark_session=spark, segmented_at=SEGMENTED_AT
    )
    assert spark_result.account == pandas_result.account
    assert spark_result.customers_held_out == pandas_result.customers_held_out
    assert spark_result.thresholds == pandas_result.thresholds
    assert_same_customers(spark_result.customer_segments, pandas_result.customer_segments, folder)
    assert_same_analytics(spark_result.segment_analytics, pandas_result.segment_analytics, folder)
    return pandas_result, spark_result


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "tx.parquet"
    generate_transactions(30_000, customers=3_000, seed=21).to_parquet(path)
    return path


@pytest.mark.parametrize(
    "extra",
    [
        {},
        # with the lifetime value: the summary, the fit and the holdout check on each engine
        {
            "returns_policy": "net",
            "scoring_method": "quartiles",
            "clv": True,
            "clv_holdout_days": 60,
            "clv_discount_rate": 0.08,
        },
        {"weights": {"recency": 3, "frequency": 0.5, "monetary": 2}, "analysis_period_days": 400},
        {
            "scoring_method": "fixed",
            "fixed_thresholds": {
                "recency": [30, 90, 180, 365],
                "frequency": [2, 3, 5, 8],
                "monetary": [50, 150, 400, 1000],
            },
            "reference_date": "2024-10-01",
        },
        {
            "segment_rules": str(Path(__file__).parent / "data" / "rules_f_and_m.yaml"),
            "weights": {"recency": 3, "frequency": 0.5, "monetary": 2},
        },
        {"segment_rules": "score_codes", "min_frequency": 2, "exclude_recent_days": 60},
        {"segment_rules": "ranges", "weights": {"recency": 2, "frequency": 1, "monetary": 1}},
    ],
    ids=[
        "defaults",
        "net-quartiles-clv",
        "weights-window",
        "fixed",
        "rules-over-f-and-m",
        "score-codes",
        "ranges",
    ],
)
def test_synthetic_heavy_ties_identical(spark, synthetic_file, tmp_path, extra):
    settings = {"input_path": str(synthetic_file), "columns": {"order_id": "order_id"}, **extra}
    pandas_result, spark_result = both_engines(settings, spark, tmp_path)
    if extra.get("clv"):  # every column to the bit, and the analytics' value per segment above
        table = pandas_result.customer_lifetime_value
        assert table["predicted_clv"].notna().all()
        assert_same_customers(spark_result.customer_lifetime_value, table, tmp_path)
        found = [r.metadata["customer_lifetime_value"]["rfm/context"]["lifetime_value"]
                 for r in (pandas_result, spark_result)]  # fmt: skip
        assert found[0]["holdout"]["actual_total"] > 0 and found[0] == found[1]
    frequency = pandas_result.customer_segments["frequency"]
    if "min_frequency" in extra:  # the filter held every one-order customer out
        assert frequency.min() >= extra["min_frequency"]
        assert pandas_result.customers_held_out["below_min_frequency"] > 0
    else:
        assert (frequency == 1).mean() > 0.2  # real ties


def test_bundled_online_retail_identical(spark, tmp_path):
    both_engines({}, spark, tmp_path)


def test_cdnow_without_orders_identical(spark, tmp_path):
    settings = {
        "input_path": str(CDNOW),
        "columns": {"customer_id": "customer_id", "transaction_date": "date",
                    "amount": "dollar_value"},
    }  # fmt: skip
    both_engines(settings, spark, tmp_path)


def test_a_run_lets_its_spark_caches_go_when_released(spark, tmp_path):
    """A session that outlives its runs (a notebook's, a loop of `run`) holds no run's
    caches once the run's result is released, and the notebook engine holds one run's at a
    time; a table read after the release is computed again, to the same rows."""
    from rfm_assets import RFMSegmentationEngine

    cache = spark._jsparkSession.sharedState().cacheManager()
    path = tmp_path / "tx.parquet"
    generate_transactions(400, customers=60, seed=5).to_parquet(path)
    settings = RFMSettings(input_path=str(path), columns={"order_id": "order_id"}, engine="spark")
    assert cache.isEmpty()
    with run(settings, spark_session=spark) as result:
        assert result.cached and all(frame.is_cached for frame in result.cached)
        assert not cache.isEmpty()
        rows = result.customer_segments.orderBy("customer_id").collect()
    assert cache.isEmpty() and not result.cached
    assert not result.customer_segments.is_cached
    assert result.customer_segments.orderBy("customer_id").collect() == rows

    engine = RFMSegmentationEngine(columns={"order_id": "order_id"})
    frame = spark.read.parquet(str(path))
    engine.generate_customer_profiles(frame)
    first = engine.last_run
    held = list(first.cached)
    engine.generate_customer_profiles(frame)
    assert not first.cached and not any(f.is_cached for f in held)
    assert engine.last_run.cached and all(f.is_cached for f in engine.last_run.cached)
    engine.last_run.release()
    assert cache.isEmpty()


def test_the_notebook_engine_gives_spark_frames_for_a_spark_frame(spark, tmp_path):
    """Every method of RFMSegmentationEngine on a Spark DataFrame returns a Spark DataFrame
    (identify_high_value_customers raised a TypeError on one), equal to pandas' tables. On
    300 customers of the bundled sample: what differs between the engines is each method's
    type, not the size (the whole sample is compared in test_bundled_online_retail_identical)."""
    from pyspark.sql import DataFrame

    from rfm_assets import RFMSegmentationEngine

    sample = bundled_slice_settings(tmp_path)
    on_spark = spark.read.parquet(sample["input_path"])
    on_pandas = pd.read_parquet(sample["input_path"])
    columns = sample["columns"]
    engines = [RFMSegmentationEngine(columns=columns) for _ in range(2)]
    spark_profiles = engines[0].generate_customer_profiles(on_spark)
    pandas_profiles = engines[1].generate_customer_profiles(on_pandas)
    assert engines[0].last_run.account == engines[1].last_run.account
    tables = {
        "profiles": (spark_profiles, pandas_profiles),
        "summary": tuple(
            e.get_segment_summary(p) for e, p in zip(engines, (spark_profiles, pandas_profiles))
        ),  # fmt: skip
        "top": tuple(
            e.identify_high_value_customers(p, 0.1)
            for e, p in zip(engines, (spark_profiles, pandas_profiles))
        ),  # fmt: skip
    }
    steps = RFMSegmentationEngine(columns=columns)
    metrics = steps.calculate_rfm_metrics(on_spark)
    scores = steps.assign_rfm_scores(metrics)
    segments = steps.assign_customer_segments(scores)
    assert steps.thresholds == engines[1].thresholds
    for table in (metrics, scores, segments, *(pair[0] for pair in tables.values())):
        assert isinstance(table, DataFrame)
    key = ["customer_id"]
    for got in (spark_profiles, segments):
        want = pandas_profiles.drop(columns="segmented_at")
        assert_same_rows(as_pandas(got.drop("segmented_at"), tmp_path), want, key)
    assert_same_segment_rows(as_pandas(tables["summary"][0], tmp_path), tables["summary"][1])
    top = as_pandas(tables["top"][0], tmp_path)
    assert_same_rows(top.drop(columns="segmented_at"),
                     tables["top"][1].drop(columns="segmented_at"), key)  # fmt: skip
    actions = engines[0].recommend_actions(spark_profiles)
    assert isinstance(actions, DataFrame)
    pd.testing.assert_frame_equal(
        as_pandas(actions, tmp_path),
        engines[1].recommend_actions(pandas_profiles),
        check_dtype=False,
    )
    row = pandas_profiles.iloc[3]
    assert engines[0].segment_of(row["customer_id"])["segment"] == row["segment"]
    drift = engines[0].detect_drift(spark_profiles, pandas_profiles)
    assert not drift["drifted"].any() and (drift["share_change"] == 0).all()


def test_duplicate_lines_are_the_same_on_both_engines(spark, tmp_path):
    """Whole lines compared on Spark as on pandas: CSV text as written, typed Parquet values
    with missing ids and NaN amounts (NaN equals NaN in both), and 300 customers of the
    bundled sample, whose lines (customer, time, amount, invoice) repeat."""
    sample = bundled_slice_settings(tmp_path)
    result, _ = both_engines({**sample, "drop_duplicate_rows": True}, spark, tmp_path)
    assert result.account.rows_excluded["duplicate_row"] > 0
    csv = write_lines(tmp_path / "tx.csv", "customer,day,total,order,note", DUPLICATE_LINES)
    columns = {"customer_id": "customer", "transaction_date": "day", "amount": "total",
               "order_id": "order"}  # fmt: skip
    settings = {"input_path": str(csv), "columns": columns, "drop_duplicate_rows": True}
    pandas_result, _ = both_engines(settings, spark, tmp_path)
    assert pandas_result.account.rows_excluded["duplicate_row"] == 3
    frame = pd.DataFrame(
        {
            "customer_id": [1, 1, None, None, 2, 2, 2],
            "transaction_date": pd.to_datetime(["2024-01-02"] * 4 + ["2024-01-03"] * 3),
            "amount": [5.0, 5.0, 7.0, 7.0, float("nan"), float("nan"), 4.0],
        }
    )
    frame.to_parquet(tmp_path / "typed.parquet")
    typed = {"input_path": str(tmp_path / "typed.parquet"), "drop_duplicate_rows": True}
    pandas_result, _ = both_engines(typed, spark, tmp_path)
    excluded = {k: v for k, v in pandas_result.account.rows_excluded.items() if v}
    assert excluded == {"duplicate_row": 3, "missing_customer_id": 1, "invalid_amount": 1}


def test_an_excel_workbook_reads_the_same_on_both_engines(spark, tmp_path):
    """Numbers, dates, text and mixed columns from the sheet's cells: the same rows
    excluded by reason and the same customers on Spark as on pandas."""
    path = online_retail_workbook(tmp_path / "Online Retail.xlsx")
    settings = {"input_path": str(path), "sheet": "Online Retail", "columns": EXCEL_COLUMNS}
    pandas_result, _ = both_engines(settings, spark, tmp_path)
    assert pandas_result.account.rows_excluded["missing_customer_id"] > 0


@pytest.mark.parametrize("name", list(CUSTOMER_CASES))
def test_customer_level_input_identical(spark, tmp_path, name):
    case = CUSTOMER_CASES[name]
    rows = messy_customer_rows(2_000, seed=len(name), by_date=case["by_date"],
                               with_first=case["with_first"])  # fmt: skip
    path = write_csv(rows, tmp_path / "customers.csv")
    settings = customer_settings(path, case["by_date"], case["with_first"], case["settings"])
    pandas_result, _ = both_engines(settings, spark, tmp_path)
    assert sum(pandas_result.account.rows_excluded.values()) > 0


def test_customer_table_from_parquet_identical(spark, tmp_path):
    """Typed columns (dates, integers, doubles) rather than text, from a run on 300
    customers of the bundled sample."""
    segments = run(RFMSettings(**bundled_slice_settings(tmp_path))).customer_segments
    path = tmp_path / "customers.parquet"
    segments[["customer_id", "last_purchase_date", "first_purchase_date", "frequency",
              "monetary"]].to_parquet(path)  # fmt: skip
    settings = {
        "input_path": str(path),
        "input_level": "customers",
        "columns": {"last_purchase_date": "last_purchase_date",
                    "first_purchase_date": "first_purchase_date"},
        "min_frequency": 2,
        "exclude_recent_days": 30,
    }  # fmt: skip
    both_engines(settings, spark, tmp_path)


# The steps after rfm_metrics, which the corpus's runs on Spark leave out (see below).
AFTER_METRICS = ("rfm_scores", "customer_segments", "segment_analytics", "high_value_customers")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_case_same_outcome_on_spark(spark, case, tmp_path):
    """Each malformed input: the same error on both engines, or the same row account and the
    same metrics, customer for customer. The runs stop at rfm_metrics: what a messy file can
    change is what is read, kept and excluded, and so each customer's recency, frequency,
    monetary and purchase dates. Every step after that reads only the metrics, and the parity
    tests above compare those steps on both engines (heavy ties, the customer-level inputs,
    the bundled sample). Stopping there halves each Spark run."""
    settings = {"input_path": str(write_input(case, tmp_path)), **case.get("settings", {})}
    if "error" in case["expect"]:
        messages = []
        for engine, session in (("pandas", None), ("spark", spark)):
            with pytest.raises(RFMError) as error:
                run(RFMSettings(**settings, engine=engine), spark_session=session)
            messages.append(str(error.value))
        import re

        assert all(re.search(case["expect"]["error"], m) for m in messages), messages
        return
    pandas_result, spark_result = (
        run(RFMSettings(**settings, engine=engine), spark_session=session,
            leave_out=AFTER_METRICS, keep=("rfm_metrics",))
        for engine, session in (("pandas", None), ("spark", spark))
    )  # fmt: skip
    assert spark_result.account == pandas_result.account
    assert spark_result.customers_held_out == pandas_result.customers_held_out
    assert_same_customers(spark_result.rfm_metrics, pandas_result.rfm_metrics, tmp_path)
    reasons = exclusion_reasons(RFMSettings(**settings).input_level)
    assert list(spark_result.account.rows_excluded) == list(reasons)


# The order each table is compared in (its rows are unique in it).
ROW_KEYS = {
    "transactions": ["customer_id", "transaction_date", "order_id", "amount"],
    "rfm_metrics": ["customer_id"],
    "rfm_scores": ["customer_id"],
    "customer_segments": ["customer_id"],
    "high_value_customers": ["customer_id"],
    "slipping_customers": ["customer_id"],
    "segment_migration": ["from_segment", "to_segment"],
}


@pytest.mark.heavy
def test_a_range_of_weeks_on_spark_stores_what_pandas_stores(spark, tmp_path):
    """Every week of a range run as one run on Spark (see test_week_ranges for pandas, where
    each week equals the week run alone and a run as of its end)."""
    source = write_source(tmp_path)
    window = {"analysis_period_days": 60}  # short enough for customers to lapse between weeks
    on_pandas = store_range(source, tmp_path / "pandas", **window)
    on_spark = store_range(source, tmp_path / "spark", engine="spark", **window)
    for week in WEEKS_OF_RANGE:
        for table, key in ROW_KEYS.items():
            assert_same_rows(stored(on_spark, table, week), stored(on_pandas, table, week), key)
        assert_same_segment_rows(
            stored(on_spark, "segment_analytics", week),
            stored(on_pandas, "segment_analytics", week),
        )
    # Between the weeks customers arrive, lapse and slip, so each kind of move was compared.
    moves = pd.concat([stored(on_pandas, "segment_migration", w) for w in WEEKS_OF_RANGE])
    assert (moves["from_segment"] == "(new)").any() and (moves["to_segment"] == "(lapsed)").any()
    assert sum(len(stored(on_pandas, "slipping_customers", w)) for w in WEEKS_OF_RANGE) > 0
    # The pictures' inputs, each engine on its own stored week: the same score grid and
    # histogram counts.
    week = WEEKS_OF_RANGE[-1]
    pandas_engine, spark_engine = PandasEngine(), SparkEngine(spark)
    key = ["R_score", "FM_score"]
    segments = stored(on_pandas, "customer_segments", week)
    spark_segments = spark.read.parquet(current_version(on_spark, "customer_segments", week))
    grid_pandas = pandas_engine.score_grid(segments).sort_values(key)
    grid_spark = spark_engine.score_grid(spark_segments).sort_values(key)
    pd.testing.assert_frame_equal(
        grid_spark.reset_index(drop=True), grid_pandas.reset_index(drop=True),
        check_dtype=False, rtol=1e-12,
    )  # fmt: skip
    histograms_spark = spark_engine.histograms(spark_segments)
    for name, (counts, edges) in pandas_engine.histograms(segments).items():
        assert list(histograms_spark[name][0]) == list(counts), name
        assert list(histograms_spark[name][1]) == list(edges), name


@pytest.mark.heavy
def test_a_range_under_net_on_spark_judges_the_window_as_pandas_does(spark, tmp_path):
    """Under `net` a week keeps its returns and rfm_metrics drops the customers whose net
    over the window is <= 0. A 10-day window: the week's rows come from two stored weeks, and
    customer 99999's return in the window outweighs their purchases in week 2024-11-25 but
    not in the weeks either side (test_weekly_history's rows, where pandas is checked the same
    way). Each week of one range on Spark stores what the range on pandas stores, and what a
    run from scratch as of the week's end computes, its net exclusions counted."""
    source = write_history_source(tmp_path)
    policy = {"returns_policy": "net", "analysis_period_days": 10}
    # A 10-day window moves segment shares more than the weekly warning allows: only the
    # run's success is asserted here, not that every warning passed.
    on_pandas, on_spark = tmp_path / "pandas", tmp_path / "spark"
    assert run_weeks(source, on_pandas, RANGE, **policy).success
    result = run_weeks(source, on_spark, RANGE, engine="spark", **policy)
    assert result.success
    reported = {
        event.partition: event.event_specific_data.materialization.metadata
        for event in result.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey("rfm_metrics")
    }
    dropped = {}
    for week in WEEKS_OF_RANGE:
        for table, key in ROW_KEYS.items():
            assert_same_rows(stored(on_spark, table, week), stored(on_pandas, table, week), key)
        contexts = [json.loads(stored_context(store, "rfm_metrics", week))
                    for store in (on_pandas, on_spark)]  # fmt: skip
        assert contexts[0]["window_weeks"] == contexts[1]["window_weeks"]
        assert contexts[0]["window_rows_excluded"] == contexts[1]["window_rows_excluded"]
        # The Spark week is the run from scratch (on pandas) as of its end, and its context
        # counts the rows the net rule dropped as that run counts them.
        alone = assert_week_equals_a_run_from_scratch(source, on_spark, week, **policy)
        dropped[week] = alone.account.rows_excluded["customer_monetary_not_positive"]
        # The materialization reports the count too (Dagster's UI shows it).
        assert reported[week]["window_rows_excluded"].value == contexts[1]["window_rows_excluded"]
    assert any(dropped.values()) and not all(dropped.values()), dropped
    # The customer is judged by the window: out in the week its net is below zero, back in
    # the week after, with only that week's purchase in its window.
    customers = {week: stored(on_spark, "rfm_metrics", week).set_index("customer_id")
                 for week in WEEKS_OF_RANGE}  # fmt: skip
    assert dropped["2024-11-25"] > 0
    assert 99999 in customers["2024-11-18"].index
    assert 99999 not in customers["2024-11-25"].index
    assert customers["2024-12-02"].loc[99999, "monetary"] == 100.0


def test_graph_on_spark_stores_spark_parquet_and_loads_as_pandas(spark, tmp_path):
    from rfm_assets_tests.oracle import oracle

    base = tmp_path / "store"
    sample = bundled_slice_settings(tmp_path)  # 300 customers
    settings = RFMSettings(engine="spark", **sample)
    result = dg.materialize(
        __import__("rfm_assets.assets", fromlist=["RFM_ASSETS"]).RFM_ASSETS,
        resources=rfm_resources(settings, base),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    names = {"customer_id": "customer_id", "date": "transaction_date", "order_id": "order_id",
             "amount": "amount"}  # fmt: skip
    customers = len(oracle(parquet_rows(sample["input_path"], names))[0])
    assert customers > 250  # the slice's customers, less those every line of which is excluded
    segments_meta = result.asset_materializations_for_node("customer_segments")[0].metadata
    assert segments_meta["dagster/row_count"].value == customers
    assert segments_meta["engine"].value == "spark"
    # Spark wrote a directory of part files; pandas reads it with pyarrow, no Spark involved.
    location = base / "customer_segments"
    version = location / (location / "CURRENT").read_text().strip()
    assert version.is_dir() and any(p.name.startswith("part-") for p in version.iterdir())
    segments = stored_frame(base, "customer_segments")
    assert len(segments) == customers and segments["customer_id"].is_unique

    from rfm_assets.io_manager import RFMParquetIOManager

    store_defs = dg.Definitions(
        assets=[dg.AssetSpec("customer_segments")],
        resources={"io_manager": RFMParquetIOManager(base_dir=str(base))},
    )
    assert len(store_defs.load_asset_value("customer_segments")) == customers
    from pyspark.sql import DataFrame

    from rfm_assets.definitions import spark as spark_resource

    spark_defs = dg.Definitions(
        assets=[dg.AssetSpec("customer_segments")],
        resources={"io_manager": RFMParquetIOManager(base_dir=str(base), spark=spark_resource)},
    )
    loaded = spark_defs.load_asset_value("customer_segments", python_type=DataFrame)
    assert isinstance(loaded, DataFrame) and loaded.count() == customers
    spark_default = dg.Definitions(
        assets=[dg.AssetSpec("customer_segments")],
        resources={
            "io_manager": RFMParquetIOManager(
                base_dir=str(base), spark=spark_resource, load_as="spark"
            )
        },
    )
    assert isinstance(spark_default.load_asset_value("customer_segments"), DataFrame)


def test_a_spark_graph_from_an_upstream_asset_reads_it_as_spark(spark, synthetic_file, tmp_path):
    """source_asset on the Spark engine: the upstream asset's stored table reaches the
    transactions step as a Spark DataFrame with the store's default load_as (pandas), and
    the segments equal the pandas engine's on the same rows."""
    from rfm_assets.component import build_rfm_definitions
    from rfm_assets.definitions import spark as spark_resource
    from rfm_assets.io_manager import RFMParquetIOManager

    @dg.asset(key=["raw", "orders"])
    def orders() -> pd.DataFrame:
        return pd.read_parquet(synthetic_file).rename(columns={"customer_id": "client"})

    settings = {"columns": {"customer_id": "client", "order_id": "order_id"}}
    found = {}
    for engine in ("pandas", "spark"):
        definitions = build_rfm_definitions(
            RFMSettings(**settings, engine=engine), source_asset="raw/orders", schedule_hour=None
        )
        store = RFMParquetIOManager(base_dir=str(tmp_path / engine), spark=spark_resource)
        result = dg.materialize(
            [orders, *definitions.assets],
            resources={**definitions.resources, "io_manager": store, "spark": spark_resource},
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success, engine
        metadata = result.asset_materializations_for_node("transactions")[0].metadata
        assert metadata["engine"].value == engine
        found[engine] = stored_frame(tmp_path / engine, "customer_segments")
    assert_same_rows(found["spark"], found["pandas"].drop(columns="segmented_at").assign(
        segmented_at=found["spark"]["segmented_at"]), ["customer_id"])  # fmt: skip


def test_cli_spark_output_equals_pandas_output(spark, tmp_path):
    # 300 customers of the bundled sample. Spark left to keep its sort's partitions apart
    # (adaptive execution would merge them into one), so the row order must hold across
    # several part files.
    given = ["--input", bundled_slice_settings(tmp_path)["input_path"], "--order-id", "order_id"]
    merging = "spark.sql.adaptive.coalescePartitions.enabled"
    for engine in ("pandas", "spark"):
        output = str(tmp_path / engine)
        spark.conf.set(merging, "false")
        try:
            arguments = ["analyze", *given, "--engine", engine, "--output", output, "--high-value"]
            assert main(arguments) == 0
        finally:
            spark.conf.unset(merging)
    assert len(list((tmp_path / "spark" / "customer_segments.parquet").glob("part-*"))) > 1
    lists = [
        pd.read_parquet(tmp_path / engine / "high_value_customers.parquet")
        for engine in ("pandas", "spark")
    ]
    for column in ("customer_id", "high_value_rank", "monetary", "segment"):
        assert list(lists[0][column].astype(str)) == list(lists[1][column].astype(str)), column
    # The same row order: segment priority, then the weighted RFM_score, then the id.
    ordered = [
        pd.read_parquet(tmp_path / engine / "customer_segments.parquet")["customer_id"].tolist()
        for engine in ("pandas", "spark")
    ]
    assert ordered[0] == ordered[1]
    pandas_summary = json.loads((tmp_path / "pandas" / "run_summary.json").read_text())
    spark_summary = json.loads((tmp_path / "spark" / "run_summary.json").read_text())
    assert {k: v for k, v in spark_summary.items() if k != "engine"} == {
        k: v for k, v in pandas_summary.items() if k != "engine"
    }
    spark_segments = pd.read_parquet(tmp_path / "spark" / "customer_segments.parquet")
    pandas_segments = pd.read_parquet(tmp_path / "pandas" / "customer_segments.parquet")
    columns = [c for c in pandas_segments.columns if c != "segmented_at"]
    pd.testing.assert_frame_equal(
        spark_segments.sort_values("customer_id", ignore_index=True)[columns],
        pandas_segments.sort_values("customer_id", ignore_index=True)[columns],
        check_dtype=False,
        check_categorical=False,
    )
    spark_analytics = pd.read_parquet(tmp_path / "spark" / "segment_analytics.parquet")
    assert list(spark_analytics["segment"]) == list(
        pd.read_parquet(tmp_path / "pandas" / "segment_analytics.parquet")["segment"]
    )
    assert main(["analyze", *given, "--engine", "spark", "--format", "csv",
                 "--output", str(tmp_path / "csv")]) == 0  # fmt: skip
    csv_segments = pd.read_csv(tmp_path / "csv" / "customer_segments.csv")
    assert len(csv_segments) == len(pandas_segments)


def test_both_engines_write_one_schema_and_one_csv_text(tmp_path):
    """The same Arrow types, the same pandas dtypes on reading, and the same CSV text from
    either engine (segmented_at, the time of the run, aside). One customer spends 20 million
    and one 0.0005, which Java writes as 2.0E7 and 5.0E-4."""
    frame = generate_transactions(3_000, customers=900, seed=5)
    last = int(frame["customer_id"].max())
    extremes = frame.iloc[:2].assign(customer_id=[last + 1, last + 2], amount=[2e7, 0.0005])
    path = tmp_path / "tx.parquet"
    pd.concat([frame, extremes], ignore_index=True).to_parquet(path)
    tables = ("customer_segments", "segment_analytics", "high_value_customers")
    for engine in ("pandas", "spark"):
        for kind in ("parquet", "csv"):
            flags = ["--input", str(path), "--order-id", "order_id", "--high-value", "0.001"]
            assert main(["analyze", "--engine", engine, "--format", kind, *flags,
                         "--output", str(tmp_path / f"{engine}-{kind}")]) == 0  # fmt: skip
    for table in tables:
        import pyarrow.dataset as ds

        schemas = [ds.dataset(tmp_path / f"{e}-parquet" / f"{table}.parquet").schema
                   for e in ("pandas", "spark")]  # fmt: skip
        assert [f.type for f in schemas[0]] == [f.type for f in schemas[1]], table
        assert schemas[0].names == schemas[1].names
        frames = [pd.read_parquet(tmp_path / f"{e}-parquet" / f"{table}.parquet")
                  for e in ("pandas", "spark")]  # fmt: skip
        assert dict(frames[0].dtypes) == dict(frames[1].dtypes), table
        texts = []
        for engine in ("pandas", "spark"):
            with open(tmp_path / f"{engine}-csv" / f"{table}.csv", newline="") as handle:
                rows = list(csv.reader(handle))
            if "segmented_at" in rows[0]:
                at = rows[0].index("segmented_at")
                rows = [row[:at] + row[at + 1 :] for row in rows]
            texts.append(rows)
        assert texts[0] == texts[1], table
        assert len(texts[0]) > 1
    lines = (tmp_path / "spark-csv" / "customer_segments.csv").read_text()
    assert '"20000000.0"' in lines and '"0.0005"' in lines and "E-" not in lines


def test_both_engines_write_the_same_gold_table(tmp_path):
    """The Delta table of a Spark run holds what a pandas run's holds, column for column and
    type for type (segmented_at, the run's time, aside)."""
    from deltalake import DeltaTable

    tables = {}
    for engine in ("pandas", "spark"):
        table = str(tmp_path / f"gold-{engine}")
        assert main(["analyze", "--engine", engine, "--output", str(tmp_path / engine),
                     "--output-table", table]) == 0  # fmt: skip
        gold = DeltaTable(table)
        assert gold.version() == 0
        tables[engine] = gold.to_pandas().drop(columns="segmented_at")
    pd.testing.assert_frame_equal(
        tables["spark"].sort_values("customer_id", ignore_index=True),
        tables["pandas"].sort_values("customer_id", ignore_index=True),
    )


def test_zoned_dates_do_not_depend_on_the_session_time_zone(spark, tmp_path):
    (case,) = [c for c in CASES if c["name"].startswith("time-zone-aware Parquet timestamps")]
    settings = RFMSettings(input_path=str(write_input(case, tmp_path)), engine="spark")
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
    try:
        result = run(settings, spark_session=spark, segmented_at=SEGMENTED_AT)
        recency = as_pandas(result.customer_segments, tmp_path).set_index("customer_id")["recency"]
    finally:
        spark.conf.set("spark.sql.session.timeZone", before)
    assert recency.to_dict() == {1: 2, 2: 1}  # Tokyo dates 1 and 2 January, as in pandas


@pytest.mark.heavy
def test_cli_on_spark_prints_one_line_and_no_jvm_output(tmp_path):
    """A user sees the result on success and one line on failure: Java's warnings and stack
    traces go to a log (`--debug` would show them). One process runs both, so one JVM."""
    source = tmp_path / "tx.parquet"
    generate_transactions(2_000, customers=200, seed=3).to_parquet(source)
    bad = tmp_path / "bad.csv"
    bad.write_text("customer_id,transaction_date,amount\n1,2024-01-01,5\n2,someday,5\n")
    script = (
        "import sys\n"
        "from rfm_assets.cli import main\n"
        "for path in sys.argv[2:]:\n"
        "    code = main(['analyze', '--engine', 'spark', '--spark-master', 'local[1]',\n"
        "                 '--input', path, '--output', sys.argv[1]])\n"
        "    print('EXIT', code, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "o"), str(source), str(bad)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("EXIT")] == [
        "EXIT 0",
        "EXIT 1",
    ]
    assert "wrote customer_segments.parquet" in done.stdout
    assert done.stderr == (
        "rfm-assets: error: column 'transaction_date': 1 values are not dates, e.g. ['someday']\n"
    )


# --- k-means on Spark (MLlib): the same rules, sizes within a stated tolerance ---------------

# Segment sizes of k-means on Spark and on pandas agree within this share of the customers,
# segment by segment: the scaling and the selection rule are the same, but MLlib's k-means||
# start and scikit-learn's k-means++ reach slightly different centroids.
KMEANS_SHARE_TOLERANCE = 0.02


def segment_shares(frame: pd.DataFrame) -> pd.Series:
    return frame["segment"].astype(str).value_counts(normalize=True)


def test_kmeans_on_spark_recovers_known_groups_in_the_graph(spark, tmp_path):
    from sklearn.metrics import adjusted_rand_score

    from rfm_assets.assets import RFM_ASSETS
    from rfm_assets_tests.test_clustering import grouped_customers

    customers = grouped_customers(300, seed=1)
    path = tmp_path / "customers.parquet"
    customers.drop(columns="group").to_parquet(path)
    settings = dict(input_path=str(path), input_level="customers", reference_date="2024-06-01",
                    segmentation_method="kmeans", cluster_range=[2, 8])  # fmt: skip
    base = tmp_path / "store"
    result = dg.materialize(
        RFM_ASSETS,
        resources=rfm_resources(RFMSettings(**settings, engine="spark"), base),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["model_reproduces_clusters"].passed
    metadata = result.asset_materializations_for_node("customer_segments")[0].metadata
    summary = metadata["clustering"].value
    assert summary["k"] == 4 and summary["fitted"]["engine"] == "spark"
    assert "clusters" in metadata  # the picture, from a sample collected as rows
    segments = stored_frame(base, "customer_segments").set_index("customer_id")
    truth = customers.set_index("customer_id")["group"]
    assert adjusted_rand_score(truth, segments.loc[truth.index, "cluster"]) > 0.95
    assert segments.loc["g0-0", "segment"] == "Champions"
    pandas_result = run(RFMSettings(**settings))
    assert summary["k"] == pandas_result.clustering["k"]
    assert (
        segment_shares(segments).to_dict()
        == segment_shares(pandas_result.customer_segments).to_dict()
    )


@pytest.mark.heavy
def test_kmeans_on_spark_agrees_with_pandas_on_the_bundled_data(spark, tmp_path):
    settings = dict(segmentation_method="kmeans")
    pandas_result = run(RFMSettings(**settings))
    spark_result = run(RFMSettings(**settings, engine="spark"), spark_session=spark)
    assert spark_result.clustering["k"] == pandas_result.clustering["k"]
    spark_shares = segment_shares(as_pandas(spark_result.customer_segments, tmp_path))
    pandas_shares = segment_shares(pandas_result.customer_segments)
    assert set(spark_shares.index) == set(pandas_shares.index)
    differences = (spark_shares - pandas_shares).abs()
    assert differences.max() <= KMEANS_SHARE_TOLERANCE, differences.to_dict()
    for name in ("silhouette", "davies_bouldin"):
        assert spark_result.clustering[name] == pytest.approx(
            pandas_result.clustering[name], abs=0.02
        )


@pytest.mark.parametrize(
    "method, features",
    [("kmeans", ["recency", "frequency", "monetary"]), ("auto", SEVEN)],
    ids=["kmeans", "auto-seven-features"],
)
def test_a_stored_model_assigns_identically_on_both_engines(spark, tmp_path, method, features):
    """Spark's features (days between purchases among them) and assignment equal pandas'."""
    model_file = tmp_path / "cluster_model.json"
    fitted = run(RFMSettings(segmentation_method=method, clusters=4, cluster_features=features))
    assert fitted.cluster_model["features"] == features
    model_file.write_text(json.dumps(fitted.cluster_model))
    settings = dict(segmentation_method="kmeans", cluster_model_path=str(model_file),
                    reference_date="2011-09-01")  # fmt: skip
    pandas_result = run(RFMSettings(**settings), segmented_at=SEGMENTED_AT)
    spark_result = run(
        RFMSettings(**settings, engine="spark"), spark_session=spark, segmented_at=SEGMENTED_AT
    )
    got = as_pandas(spark_result.customer_segments, tmp_path).set_index("customer_id")
    want = pandas_result.customer_segments.set_index("customer_id")
    assert (got.loc[want.index, "cluster"].to_numpy() == want["cluster"].to_numpy()).all()
    assert got.loc[want.index, "cluster_distance"].to_numpy() == pytest.approx(
        want["cluster_distance"].to_numpy(), abs=1e-9
    )
    assert list(got.loc[want.index, "segment"].astype(str)) == list(want["segment"].astype(str))
    assert spark_result.clustering["clusters"] == pandas_result.clustering["clusters"]
    assert spark_result.clustering["davies_bouldin"] == pytest.approx(
        pandas_result.clustering["davies_bouldin"], rel=1e-9
    )


def test_a_stored_model_applied_to_one_cluster_on_spark_reports_no_comparison(spark, tmp_path):
    """As test_clustering's pandas case: customers all nearest one stored centroid are
    assigned to it on Spark, and the scores that compare clusters are null, not a failure."""
    groups = tmp_path / "groups.parquet"
    grouped_customers(100, seed=1).drop(columns="group").to_parquet(groups)
    model = run(kmeans_settings(groups, clusters=3)).cluster_model
    result, customers, expected = applied_to_one_group(
        model, tmp_path, engine="spark", spark_session=spark
    )
    assert len(set(expected)) == 1
    segments = as_pandas(result.customer_segments, tmp_path).set_index("customer_id")
    assert segments.loc[customers["customer_id"], "cluster"].tolist() == expected
    assert result.clustering["davies_bouldin"] is None
    assert result.clustering["calinski_harabasz"] is None


def test_auto_on_the_seven_features_fits_on_spark(spark, tmp_path):
    """segmentation_method auto on Spark: the best silhouette of its own comparison, and
    every customer at the nearest centroid of the seven features the oracle computes."""
    settings = RFMSettings(
        segmentation_method="auto", clusters=4, cluster_features=SEVEN, engine="spark"
    )
    result = run(settings, spark_session=spark)
    compared = result.clustering["methods_compared"]
    best = max(scores["silhouette"] for scores in compared.values())
    assert compared[result.clustering["method"]]["silhouette"] == best
    document = result.cluster_model
    assert document["features"] == SEVEN and document["fitted"]["engine"] == "spark"
    customers = as_pandas(result.customer_segments, tmp_path).set_index("customer_id")
    features = oracle_features(SEVEN)
    expected = nearest_centroid_oracle(document, features)
    assert customers.loc[features["customer_id"], "cluster"].tolist() == expected


def test_lines_on_half_a_micro_unit_round_half_to_even_on_spark(spark, tmp_path):
    """micro_units rounds each line's amount * 10**6 half to even (F.bround), as the pandas
    engine does (see test_semantics): rounding half up gives other customers' monetary."""
    path = tmp_path / "half.parquet"
    half_micro_frame().to_parquet(path)
    result = run(RFMSettings(input_path=str(path), engine="spark"), spark_session=spark)
    rows = result.customer_segments.select("customer_id", "monetary").collect()
    assert_rounded_half_to_even({row[0]: row[1] for row in rows}, result.account)


def test_spark_trims_exactly_the_whitespace_pandas_trims(spark):
    """The fast path (printable ASCII at both ends) and btrim together equal Python's strip
    of the same set: every whitespace character at either end, inner ones kept, non-ASCII
    letters at the ends kept, blank text empty."""
    from pyspark.sql import functions as F

    from rfm_assets.engines.shared import WHITESPACE
    from rfm_assets.engines.spark_compute import trimmed

    cores = ["A", "007", "é", "Ω1", "a b", "x\u3000y", "\x7f", "!", "~z~", ""]
    texts = [
        w1 + core + w2
        for core in cores
        for w1 in ("", *WHITESPACE)
        for w2 in ("", " ", "\u3000", "\t\u2003")
    ]
    texts += ["".join(WHITESPACE), None]
    rows = spark.createDataFrame([(t,) for t in texts], "t string")
    got = [row[0] for row in rows.select(trimmed(F.col("t"))).collect()]
    expected = [None if t is None else t.strip("".join(WHITESPACE)) for t in texts]
    assert got == expected


def spark_engine_job():
    """The job of a code location built with engine: spark (reconstructable, so Dagster runs
    it with the job's own executor; the test gives the input and storage)."""
    import os

    from rfm_assets.component import build_rfm_definitions

    settings = RFMSettings(engine="spark", input_path=os.environ["RFM_TEST_INPUT"],
                           columns={"order_id": "order_id"})  # fmt: skip
    definitions = build_rfm_definitions(
        settings, storage=os.environ["RFM_TEST_STORAGE"], schedule_hour=None
    )
    return definitions.resolve_job_def("rfm_job")


def test_a_spark_run_is_one_spark_application_in_one_process(spark, tmp_path, monkeypatch):
    """Every step of a Spark run shares the run's process and so its Spark application (a
    process per step would start a JVM per step); the materializations name it."""
    import os

    source = tmp_path / "orders.parquet"
    generate_transactions(5_000, customers=500, seed=8).to_parquet(source)
    monkeypatch.setenv("RFM_TEST_INPUT", str(source))
    monkeypatch.setenv("RFM_TEST_STORAGE", str(tmp_path / "store"))
    with dg.instance_for_test() as instance:
        result = dg.execute_job(dg.reconstructable(spark_engine_job), instance=instance)
        assert result.success
        steps = [e for e in result.all_events if e.is_step_start]
        materialized = [
            e.event_specific_data.materialization for e in result.all_events
            if e.is_step_materialization
        ]  # fmt: skip
    assert len(steps) >= 6 and {e.pid for e in steps} == {os.getpid()}
    tables = [m for m in materialized if "engine" in m.metadata]  # the report is a file
    assert len(tables) >= 6
    applications = {m.metadata["spark_application"].value for m in tables}
    assert applications == {spark.sparkContext.applicationId}


def test_shuffle_partitions_scale_with_the_cores_and_the_source(spark, tmp_path, monkeypatch):
    """Four per core (local[2]: 8), one per 128 MiB of source when that is more. (A value
    set when the session was launched is kept: the README's Spark command shows it, in
    test_readme.py.)"""
    from rfm_assets.engines import spark_compute
    from rfm_assets.engines.source import SourceListing
    from rfm_assets.engines.spark_compute import SHUFFLE_PARTITIONS, scale_shuffle_partitions

    monkeypatch.setattr(spark_compute, "PARTITIONS_PER_CORE", 4)  # the product's (see `spark`)
    assert not spark.sparkContext.getConf().contains(SHUFFLE_PARTITIONS)
    big = tmp_path / "big.parquet"
    with open(big, "wb") as handle:  # sparse: its size without writing it
        handle.truncate(3 * 2**30 + 1)
    try:
        scale_shuffle_partitions(spark, SourceListing(path="t", is_csv=False, listed=False))
        assert spark.conf.get(SHUFFLE_PARTITIONS) == "8"
        listing = SourceListing(path=str(big), is_csv=False, files=(str(big),))
        scale_shuffle_partitions(spark, listing)
        assert spark.conf.get(SHUFFLE_PARTITIONS) == "25"  # ceil(3 GiB + 1 / 128 MiB)
    finally:
        spark.conf.set(SHUFFLE_PARTITIONS, "8")


def tied_metrics(customers: int, seed: int) -> pd.DataFrame:
    """Customers whose recency, frequency and monetary take a few values each: long runs of
    ties on both sides of every quantile boundary."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": np.arange(customers, dtype=np.int64),
            "recency": rng.choice([1, 2, 30, 31, 400], customers).astype(np.int64),
            "frequency": rng.geometric(0.6, customers).astype(np.int64),
            "monetary": rng.choice([5.0, 9.99, 10.0, 250.5], customers),
        }
    )


@pytest.mark.parametrize("approximation", ["usual", "missing"])
def test_quantile_scores_and_thresholds_equal_pandas_under_heavy_ties(
    spark, monkeypatch, approximation
):
    """The scores by the boundaries that quantile_boundaries finds, and the thresholds it
    derives without a pass over the scores, equal the pandas engine's at every scale and
    size; also when the approximate quantiles miss (crude, brackets of no width) and the
    gaps that hold a boundary are counted again."""
    from rfm_assets.engines import pandas_compute, spark_compute

    passes = []
    value_runs = spark_compute._value_runs
    monkeypatch.setattr(
        spark_compute, "_value_runs", lambda *args: passes.append(1) or value_runs(*args)
    )
    if approximation == "missing":
        monkeypatch.setattr(spark_compute, "QUANTILE_ACCURACY", 10)
        monkeypatch.setattr(spark_compute, "BRACKET", 0.0)
    scores = ["R_score", "F_score", "M_score"]
    found = 0
    for customers in (1, 2, 7, 500, 5_000):
        metrics = tied_metrics(customers, seed=customers)
        rows = list(zip(*(metrics[name].tolist() for name in metrics.columns)))
        schema = "customer_id long, recency long, frequency long, monetary double"
        frame = spark.createDataFrame(rows, schema).cache()
        for scale in (2, 4, 5, 9):
            quantiles = spark_compute.quantile_boundaries(frame, scale)
            found += 1
            got = spark_compute.compute_scores(frame, scale, quantiles=quantiles)
            got = [tuple(r) for r in got.orderBy("customer_id").select(*scores).collect()]
            want = pandas_compute.compute_scores(metrics, scale)
            assert got == list(want[scores].itertuples(index=False, name=None))
            assert quantiles.thresholds == pandas_compute.thresholds_from_scores(want, scale)
        frame.unpersist()
    if approximation == "missing":
        assert len(passes) > found  # some gaps were counted again


def test_the_read_takes_the_date_statistics_along(spark, synthetic_file):
    """With typed dates, read_transactions' validation pass takes the date statistics along,
    and prepare_transactions on the frame it returned gives the account it gives on any
    other frame of the same rows (which takes them itself); other valid dates are not
    answered from the read's."""
    from rfm_assets.engines import spark_compute
    from rfm_assets.engines.shared import EARLIEST_VALID_DATE

    settings = RFMSettings(input_path=str(synthetic_file), columns={"order_id": "order_id"})
    read, listing = spark_compute.read_transactions(
        spark, str(synthetic_file), settings.source_columns(), settings.valid_dates
    )
    other = read.select("*")
    taken = listing.date_statistics
    assert taken is not None and taken[0] == tuple(settings.valid_dates)
    _, account = spark_compute.prepare_transactions(
        read, valid_dates=settings.valid_dates, date_statistics=taken
    )
    _, again = spark_compute.prepare_transactions(other, valid_dates=settings.valid_dates)
    assert account == again
    narrow = (EARLIEST_VALID_DATE, account.reference_date - dt.timedelta(days=90))
    _, account = spark_compute.prepare_transactions(read, valid_dates=narrow, date_statistics=taken)
    _, again = spark_compute.prepare_transactions(other, valid_dates=narrow)
    assert account == again
    assert account.rows_excluded["date_out_of_range"] > 0


def test_a_local_frame_equals_create_data_frame(spark):
    """The small tables built from literals have createDataFrame's schema (nullability
    included), rows and order, empty too."""
    from rfm_assets.engines.spark_compute import local_frame

    schema = "segment string, customers long, share double, thresholds array<double>"
    records = [
        ("b", 3, 0.1, [1.0, 2.5, float("inf")]),
        (None, None, float("nan"), []),
        ("it's \\ 'quoted' é\n", 2**40, 1e300, None),
        ("", -(2**62), -0.0, [float("-inf"), 1 / 3]),
    ]
    got, want = local_frame(spark, records, schema), spark.createDataFrame(records, schema)
    assert got.schema == want.schema
    assert [repr(row) for row in got.collect()] == [repr(row) for row in want.collect()]
    empty = local_frame(spark, [], schema)
    assert empty.schema == want.schema and empty.count() == 0


def test_segment_revenue_beyond_int64_micro_units_on_both_engines(spark, tmp_path):
    """Ten customers of 8.9e12 each (under the 9e12 limit) in one segment: the graph's revenue
    check adds up exactly on both engines, and the two analytics tables agree."""
    source = tmp_path / "customers.csv"
    rows = [f"{i},5,3,8900000000000.25" for i in range(10)] + ["small,400,1,10"]
    source.write_text("customer_id,recency,frequency,monetary\n" + "\n".join(rows) + "\n")
    revenue = {}
    for engine in ("pandas", "spark"):
        output = tmp_path / engine
        argv = ["analyze", "--engine", engine, "--input", str(source), "--input-level",
                "customers", "--reference-date", "2024-01-01", "--output", str(output)]  # fmt: skip
        assert main(argv) == 0
        analytics = pd.read_parquet(output / "segment_analytics.parquet")
        revenue[engine] = analytics.set_index("segment")["revenue"].to_dict()
    assert revenue["pandas"] == revenue["spark"]
    assert max(revenue["pandas"].values()) == 89_000_000_000_002.5 + 10


@pytest.mark.parametrize("returns_policy", ["exclude", "net"])
def test_metrics_taken_with_the_accounting_equal_metrics_of_the_kept_rows(
    spark, returns_policy, tmp_path
):
    """The accounting aggregates every row per customer, and the metrics step takes the
    metrics of those very kept rows from it (no second pass over the source). On 300
    customers of the bundled sample and 500 of its lines without a customer id, with rows
    excluded for up to five reasons, they equal the metrics computed from the kept rows, and
    the customers counted equal the kept rows' distinct ids."""
    from rfm_assets.engines import spark_compute

    settings = RFMSettings(
        **bundled_slice_settings(tmp_path, lines_without_id=500),
        reference_date="2011-10-01",
        analysis_period_days=300,
        returns_policy=returns_policy,
    )
    spec, engine = settings.run_spec(), SparkEngine(spark)
    raw, listing = engine.read(spec)
    kept, account = engine.prepare(raw, spec, listing)
    reasons = {reason for reason, rows in account.rows_excluded.items() if rows}
    assert len(reasons) >= (5 if returns_policy == "exclude" else 3), reasons
    assert kept in spark_compute._TOTALS_OF_KEPT  # the metrics will come from the totals
    reference = dt.date(2011, 10, 1)
    along = engine.metrics(kept, reference).orderBy("customer_id").collect()
    from_rows = spark_compute.compute_metrics(kept.select("*"), reference)  # another frame
    assert along == from_rows.orderBy("customer_id").collect()
    assert account.customers == kept.select("customer_id").distinct().count() == len(along)
    assert account.rows_kept == kept.count()
    # The cached totals go with the kept rows they sum.
    totals = spark_compute._TOTALS_OF_KEPT[kept]
    assert totals.is_cached
    del kept, from_rows
    gc.collect()
    assert not totals.is_cached


# --- lifetime value: the purchase-day summary on Spark -------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"input_path": str(CDNOW), "reference_date": "1997-10-01",
         "columns": {"transaction_date": "date", "amount": "dollar_value"}},
        {"returns_policy": "net"},  # the bundled data: kept returns are never purchase days
    ],
    ids=["cdnow calibration", "bundled data under net"],
)  # fmt: skip
def test_lifetime_value_summary_is_the_same_to_the_bit_on_both_engines(spark, tmp_path, settings):
    from rfm_assets.engines import clv, spark_compute

    summaries = []
    for engine in (PandasEngine(), SparkEngine(spark)):
        spec = RFMSettings(**settings).run_spec()
        raw, listing = engine.read(spec)
        kept, account = engine.prepare(raw, spec, listing)
        if isinstance(engine, SparkEngine):
            assert int(kept.filter("is_return").count() > 0) == ("returns_policy" in settings)
            summary = spark_compute.purchase_summary(kept, account.reference_date)
            summaries.append(as_pandas(summary, tmp_path))
        else:
            summaries.append(clv.purchase_summary(kept, account.reference_date))
    on_spark, on_pandas = summaries
    assert_same_rows(on_spark, on_pandas, ["customer_id"])  # exact, float columns included
    assert (on_pandas["frequency"] > 0).sum() > 1_000


def test_the_checks_counts_on_spark_equal_a_count_of_the_rows(spark):
    """The counts the checks compare (rows, distinct ids, the exact micro-unit sum, scores
    off the scale), taken on Spark, against the pandas engine's and a loop over the rows: a
    repeated id and a missing one, amounts whose micro-unit sum passes int64, a score off
    the scale and a missing one."""
    rows = [
        ("a", 9_000_000_000_000.5, 1, 1, 1, 1, 1.0),
        ("a", 9_000_000_000_000.25, 5, 5, 5, 5, 5.0),
        ("b", 0.000_001, 6, 1, 1, 1, 2.7),
        (None, 2.5, 1, None, 1, 1, 1.0),
        ("c", 10.0, 3, 3, 3, 3, 3.0),
    ]
    columns = ["customer_id", "monetary", "R_score", "F_score", "M_score", "FM_score", "RFM_score"]
    frame = pd.DataFrame(rows, columns=columns).astype({"F_score": "Int64"})
    table = spark.createDataFrame(
        rows, "customer_id string, monetary double, R_score long, F_score long, "
        "M_score long, FM_score long, RFM_score double",
    )  # fmt: skip
    expected = {
        "rows": len(rows),
        "distinct": len({row[0] for row in rows if row[0] is not None}),
        "micro_sum": sum(round(row[1] * 1_000_000) for row in rows),
        "off_scale": sum(
            any(s is None or not 1 <= s <= 5 for s in row[2:6]) or not 1 <= row[6] <= 5
            for row in rows
        ),
    }
    assert expected == {"rows": 5, "distinct": 3, "micro_sum": expected["micro_sum"],
                        "off_scale": 2}  # fmt: skip
    assert expected["micro_sum"] > 2**63
    for engine, value in ((SparkEngine(spark), table), (PandasEngine(), frame)):
        both = engine.tally(value, distinct_of="customer_id", money_of="monetary", off_scale=5)
        alone = engine.tally(value, money_of="monetary", off_scale=5)
        assert dataclasses.asdict(both) == expected, engine.name
        assert dataclasses.asdict(alone) == {**expected, "distinct": None}, engine.name
