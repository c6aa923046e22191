"""The code location: definitions, lineage, UI metadata, schedule, storage, downstream contract."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from rfm_assets import defs
from rfm_assets.assets import COLUMNS_OF, RFM_ASSETS
from rfm_assets.contract import (
    COLUMN_DESCRIPTIONS,
)
from rfm_assets.definitions import rfm_weekly_schedule
from rfm_assets.io_manager import RFMParquetIOManager, default_base_dir
from rfm_assets.settings import RFMSettings
from rfm_assets.synthetic import generate_transactions
from rfm_assets_tests.conftest import rfm_resources, stored_frame

REPO = Path(__file__).resolve().parents[1]
CHAIN = ["transactions", "rfm_metrics", "rfm_scores", "customer_segments", "segment_analytics"]
PUBLISHED = [
    "customer_id",
    "recency",
    "frequency",
    "monetary",
    "R_score",
    "F_score",
    "M_score",
    "RFM_score",
    "segment",
    "recommendation",
    "segmented_at",
]


def test_definitions_load_and_form_the_documented_chain():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    for upstream, downstream in zip(CHAIN, CHAIN[1:]):
        # Besides its step before, an asset may read its own earlier weeks (an edge too).
        parents = graph.get(dg.AssetKey(downstream)).parent_keys - {dg.AssetKey(downstream)}
        assert parents == {dg.AssetKey(upstream)}
    for name in CHAIN:
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == "rfm"
        assert node.description and len(node.description) > 40


def test_workspace_yaml_loads_with_the_dagster_cli(tmp_dagster_home):
    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "Validation successful" in completed.stderr + completed.stdout


def test_weekly_schedule_targets_the_rfm_job_on_monday_morning():
    assert rfm_weekly_schedule.cron_schedule == "0 6 * * 1"  # minute hour dom month dow=Monday
    assert rfm_weekly_schedule.job_name == "rfm_job"
    monday = dt.datetime(2011, 11, 28, 6, 0, tzinfo=dt.UTC)
    assert monday.weekday() == 0
    context = dg.build_schedule_context(scheduled_execution_time=monday)
    (request,) = rfm_weekly_schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2011-11-21"  # the week that just ended
    # The bundled sample's weeks are past: its schedule is deployed stopped.
    assert rfm_weekly_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    job = defs.resolve_job_def("rfm_job")
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == {
        *CHAIN,
        "high_value_customers",
        "segment_migration",
        "slipping_customers",
        "rfm_report",
        "cluster_model",
    }


def test_materialize_attaches_schema_row_counts_and_passing_checks(tmp_path):
    source = tmp_path / "tx.parquet"
    generate_transactions(2000, customers=300, seed=2).to_parquet(source)
    result = dg.materialize(
        RFM_ASSETS,
        resources=rfm_resources(
            RFMSettings(input_path=str(source), columns={"order_id": "order_id"}),
            tmp_path / "store",
        ),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    for name in CHAIN:
        metadata = result.asset_materializations_for_node(name)[0].metadata
        stored = stored_frame(tmp_path / "store", name)
        assert list(stored.columns) == COLUMNS_OF[name]
        assert metadata["dagster/row_count"].value == len(stored)
        schema = metadata["dagster/column_schema"].schema
        assert [c.name for c in schema.columns] == list(stored.columns)
        assert all(c.description == COLUMN_DESCRIPTIONS[c.name] for c in schema.columns)
    checks = result.get_asset_check_evaluations()
    assert {(c.asset_key.to_user_string(), c.check_name) for c in checks} == {
        ("transactions", "rows_accounted_for"),
        ("rfm_metrics", "one_row_per_customer"),
        ("rfm_scores", "scores_on_scale"),
        ("customer_segments", "one_row_per_customer"),
        ("customer_segments", "segments_in_catalog"),
        ("customer_segments", "dominant_segment"),
        ("segment_analytics", "revenue_matches_customers"),
        ("segment_analytics", "share_change_from_previous_week"),
        ("segment_migration", "margins_match_both_weeks"),
    }
    assert all(c.passed for c in checks if c.severity == dg.AssetCheckSeverity.ERROR)
    segments = stored_frame(tmp_path / "store", "customer_segments")
    assert set(PUBLISHED) <= set(segments.columns)
    analytics = result.asset_materializations_for_node("segment_analytics")[0].metadata
    assert "| Champions |" in analytics["segment_distribution"].value


def test_base_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert default_base_dir() == str(tmp_path / "storage" / "rfm_assets")
    monkeypatch.setenv("RFM_ASSETS_BASE_DIR", "s3://bucket/rfm")
    assert default_base_dir() == "s3://bucket/rfm"
    monkeypatch.delenv("RFM_ASSETS_BASE_DIR")
    monkeypatch.delenv("DAGSTER_HOME")
    assert default_base_dir() == str(Path.home() / ".rfm_assets" / "storage")


def test_load_asset_value_in_a_fresh_process_from_another_directory(tmp_dagster_home, tmp_path):
    """The downstream contract: run with the dagster CLI and a preset, read in a new process."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_dagster_home)}
    (tmp_dagster_home / "dagster.yaml").touch()  # a set-up instance, as the README says
    materialize = subprocess.run(
        [
            sys.executable, "-m", "dagster", "asset", "materialize",
            "-m", "rfm_assets", "--select", "*", "--partition", "2011-11-28",
            "-c", str(REPO / "config" / "subscription.yaml"),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert materialize.returncode == 0, materialize.stderr[-3000:]
    elsewhere = tmp_path / "notebook"
    elsewhere.mkdir()
    reader = (
        "from rfm_assets import defs\n"
        "df = defs.load_asset_value('customer_segments')\n"
        "week = defs.load_asset_value('customer_segments', partition_key='2011-11-28')\n"
        "assert week.equals(df) and df.attrs['rfm_context']['reference_date'] == '2011-12-05'\n"
        "print(type(df).__module__, len(df), df['customer_id'].is_unique, "
        "int((df['segment'] == 'Champions').sum()))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", reader],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    # On a set-up instance (a dagster.yaml in DAGSTER_HOME) reading prints nothing else: no
    # DEBUG line per stored file, no warning.
    assert loaded.stderr == "", loaded.stderr[-3000:]
    module, rows, unique, champions = loaded.stdout.split()
    stored = stored_frame(
        tmp_dagster_home / "storage" / "rfm_assets", "customer_segments/2011-11-28"
    )
    assert module.startswith("pandas")
    assert int(rows) == len(stored) > 3000 and unique == "True"  # 180-day window
    assert int(champions) == int((stored["segment"] == "Champions").sum()) > 0


@dg.asset
def fragile(context: dg.AssetExecutionContext) -> pd.DataFrame:
    """Returns a good frame on the first run and an unwritable one on the second."""
    if context.run.tags.get("fail") == "yes":
        return pd.DataFrame({"x": [1, "mixed types cannot become Parquet", 2.5]})
    return pd.DataFrame({"x": [1, 2, 3]})


def test_failed_write_leaves_the_previous_value_readable(tmp_path):
    folder = tmp_path / "store"
    store = RFMParquetIOManager(base_dir=str(folder))
    assert dg.materialize([fragile], resources={"io_manager": store}).success
    failed = dg.materialize(
        [fragile], resources={"io_manager": store}, tags={"fail": "yes"}, raise_on_error=False
    )
    assert not failed.success
    assert stored_frame(folder, "fragile")["x"].tolist() == [1, 2, 3]
    assert len(list((folder / "fragile").iterdir())) == 2  # CURRENT and one version, no debris


_SEEN: dict[str, pd.DataFrame] = {}


@dg.asset
def written() -> pd.DataFrame:
    frame = pd.DataFrame({"x": [1, 2, 3]})
    _SEEN["written"] = frame
    return frame


@dg.asset
def reads_written(written: pd.DataFrame) -> pd.DataFrame:
    _SEEN["read"] = written
    return written.assign(y=written["x"] * 2)


def test_a_step_gets_the_frame_stored_just_before_it_and_a_later_run_reads_it_back(tmp_path):
    store = RFMParquetIOManager(base_dir=str(tmp_path / "store"))
    assert dg.materialize([written, reads_written], resources={"io_manager": store}).success
    assert _SEEN["read"] is _SEEN["written"]  # not read back from the Parquet just written
    stored = stored_frame(tmp_path / "store", "reads_written")
    assert stored.to_dict("list") == {"x": [1, 2, 3], "y": [2, 4, 6]}

    _SEEN.clear()
    assert dg.materialize(
        [written, reads_written], selection=[reads_written], resources={"io_manager": store}
    ).success
    assert "written" not in _SEEN and _SEEN["read"]["x"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("module", ["rfm_assets", "rfm_assets.definitions"])
def test_defs_is_importable_from_both_documented_modules(module):
    imported = __import__(module, fromlist=["defs"])
    assert isinstance(imported.defs, dg.Definitions)


def test_cleanup_keeps_a_newer_version_that_another_run_is_writing(tmp_path):
    store = RFMParquetIOManager(base_dir=str(tmp_path / "store"))
    assert dg.materialize([fragile], resources={"io_manager": store}).success
    location = tmp_path / "store" / "fragile"
    in_progress = location / "v9999999999999999999-concurrent.parquet"
    in_progress.write_bytes(b"PAR1 another run is writing this")
    assert dg.materialize([fragile], resources={"io_manager": store}).success
    assert in_progress.exists()
    # CURRENT, the previous version, the new one, and the newer one still being written.
    assert len(list(location.iterdir())) == 4


def test_old_versions_are_removed_and_the_previous_one_kept(tmp_path):
    store = RFMParquetIOManager(base_dir=str(tmp_path / "store"))
    for _ in range(4):
        assert dg.materialize([fragile], resources={"io_manager": store}).success
    names = sorted(p.name for p in (tmp_path / "store" / "fragile").iterdir())
    current = (tmp_path / "store" / "fragile" / "CURRENT").read_text().strip()
    assert len(names) == 3 and names[0] == "CURRENT" and current == names[2]  # newest


class _JavaSideError(Exception):
    """Stands in for py4j's Py4JJavaError, whose message carries the Java stack trace."""


JAVA_HEAP = (
    "An error occurred while calling o278.count.\n: java.lang.OutOfMemoryError: Java heap "
    "space\n\tat java.base/java.util.Arrays.copyOf(Arrays.java:3537)\n"
)


def _failed_step_errors(result) -> list:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1
    chain, error = [], failures[0].step_failure_data.error
    while error is not None:
        chain.append(error)
        error = error.cause or error.context
    return chain


def _failing_run_errors(tmp_path, monkeypatch, step: str, message: str) -> list:
    """The error chain of a run whose engine `step` fails with `message`."""
    from rfm_assets.engines.dispatch import PandasEngine

    def failing(*args, **kwargs):
        raise _JavaSideError(message)

    monkeypatch.setattr(PandasEngine, step, failing)
    source = tmp_path / "tx.parquet"
    generate_transactions(500, customers=50, seed=3).to_parquet(source)
    result = dg.materialize(
        RFM_ASSETS,
        resources=rfm_resources(RFMSettings(input_path=str(source)), tmp_path / "store"),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    return _failed_step_errors(result)


@pytest.mark.parametrize("step", ["read", "metrics"])
def test_a_step_out_of_memory_fails_in_one_line_naming_the_setting(tmp_path, monkeypatch, step):
    """What the Dagster UI shows for a step whose Spark job ran out of memory: our one-line
    error naming the setting, not Py4J's Java stack trace (a generator step and a plain one)."""
    chain = _failing_run_errors(tmp_path, monkeypatch, step, JAVA_HEAP)
    user_error = chain[-1]
    assert user_error.cls_name == "RFMError"
    assert user_error.message.startswith("rfm_assets.errors.RFMError: Spark ran out of memory")
    assert "spark.driver.memory" in user_error.message
    assert user_error.message.strip().count("\n") == 0
    assert not any("Arrays.copyOf" in e.message for e in chain)  # the Java trace is gone


def test_other_step_failures_keep_their_own_error(tmp_path, monkeypatch):
    message = "An error occurred while calling o12.count.\n: AnalysisException"
    chain = _failing_run_errors(tmp_path, monkeypatch, "metrics", message)
    assert chain[-1].cls_name == "_JavaSideError"
