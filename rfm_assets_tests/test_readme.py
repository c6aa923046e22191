"""The README's Dagster commands run as written, so they cannot rot.

Every line of the README's bash blocks that sets up an instance or runs `dagster` is run in
a shell from the repository root, with HOME in a temporary folder (so `~/dagster_home` is
one) and, for the package's own location, a run config that points it at a small slice of
the bundled sample (a second `-c`, which Dagster merges over the README's). `dagster dev`
serves until stopped: its lines are run as `dagster definitions validate` with the same
flags, which loads the same code location.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from rfm_assets_tests.conftest import bundled_slice

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def bash_lines(text: str) -> list[str]:
    """The commands of the README's bash blocks, without comments, in order."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def as_run(command: str, small_config: Path) -> str:
    """A README line as the test runs it: this environment's executables, `dev` validated,
    the package's own location on the small source."""
    command = command.replace(".venv/bin/", f"{BIN}/")
    command = re.sub(r"(^|\s)(dagster|dg)(?=\s)", lambda m: f"{m[1]}{BIN}/{m[2]}", command)
    command = re.sub(r"\bdagster dev\b", "dagster definitions validate", command)
    if "asset materialize" in command:
        spark = "spark" in command
        command += f" -c {small_config.with_name('small_spark.yaml') if spark else small_config}"
    return command


@pytest.fixture(scope="module")
def small_config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small")
    bundled_slice(folder / "small.parquet")
    config = folder / "small.yaml"
    config.write_text(
        f"resources:\n  rfm_settings:\n    config:\n      input_path: {folder / 'small.parquet'}\n"
    )
    # The Spark preset's run also launches its session with a shuffle partition count of its
    # own, which the engine must keep rather than scale; and, as the Spark tests' session,
    # with no adaptive re-planning or generated code, which cost more than they save on a
    # few thousand rows.
    spark_config = (
        "  spark:\n"
        "    config:\n"
        "      spark_config:\n"
        "        spark.sql.shuffle.partitions: '3'\n"
        "        spark.sql.adaptive.enabled: 'false'\n"
        "        spark.sql.codegen.wholeStage: 'false'\n"
        "        spark.sql.codegen.factoryMode: NO_CODEGEN\n"
    )
    config.with_name("small_spark.yaml").write_text(config.read_text() + spark_config)
    return config


def run_line(command: str, home: Path, cwd: Path = REPO, env: dict | None = None):
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env={**os.environ, "HOME": str(home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.heavy
def test_the_readme_dagster_commands_run_as_written(tmp_path, small_config):
    lines = bash_lines((REPO / "README.md").read_text())
    ours = [
        line
        for line in lines
        if re.match(r"(mkdir|export DAGSTER_HOME|DAGSTER_HOME=|(\.venv/bin/)?dagster )", line)
    ]
    if shutil.which("java") is None:  # Spark needs Java; everything else still runs
        ours = [line for line in ours if "spark" not in line]
    assert any("backfill" in line for line in ours) and any(" dev" in line for line in ours)
    assert sum("asset materialize" in line for line in ours) >= 4
    # One shell for them all, as a reader pastes them: `export` carries to the lines after.
    script = "set -e\n" + "\n".join(as_run(line, small_config) for line in ours)
    run_line(script, tmp_path)

    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster_home"))
    try:
        # Each materialize ran the whole graph for its week and stored the segments.
        weeks = instance.get_materialized_partitions(dg.AssetKey("customer_segments"))
        assert "2011-11-28" in weeks
        # The range ran as one run of three weeks.
        assert {"2011-11-07", "2011-11-14", "2011-11-21"} <= weeks
        start = "dagster/asset_partition_range_start"
        ranged = [run for run in instance.get_runs() if run.tags.get(start) == "2011-11-07"]
        assert len(ranged) == 1 and ranged[0].status == dg.DagsterRunStatus.SUCCESS
        runs = [(run.job_name, run.tags.get("dagster/partition"), run.status)
                for run in instance.get_runs()]  # fmt: skip
        materialized = [run for run in runs if run[0] == "__ASSET_JOB"]
        assert materialized and all(s == dg.DagsterRunStatus.SUCCESS for *_, s in materialized)
        if shutil.which("java") is not None:
            spark_runs = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("customer_segments")), limit=10
            ).records
            kept = {
                record.asset_materialization.metadata["spark_shuffle_partitions"].value
                for record in spark_runs
                if "spark_shuffle_partitions" in record.asset_materialization.metadata
            }
            assert kept == {"3"}  # set when the session was launched: kept, not scaled
        # The backfill queued one run per week; the daemon (`dagster dev`) starts them.
        queued = sorted((week, status) for job, week, status in runs if job == "rfm_job")
        assert queued == [
            (week, dg.DagsterRunStatus.QUEUED)
            for week in ("2011-10-10", "2011-10-17", "2011-10-24")
        ], runs
    finally:
        instance.dispose()


def test_the_readme_component_example_loads_as_written(tmp_path, small_config):
    """The two-region example: `dagster dev -m two_regions.definitions` with its variables,
    and `dg dev` (checked as `dg check defs`, which loads the same definitions)."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "two_regions" in b)
    lines = bash_lines(f"```bash\n{block}```")
    assert lines[0] == "cd examples/two_regions"
    source = small_config.parent / "small.parquet"
    commands = []
    for line in lines[1:]:
        line = re.sub(r"=/data/\S+", f"={source}", line)
        line = re.sub(r"\bdg dev\b", "dg check defs", line)
        commands.append(as_run(line, small_config))
    env = {"RFM_EU_TRANSACTIONS": str(source), "RFM_US_TRANSACTIONS": str(source)}
    for command in commands:
        run_line(command, tmp_path, cwd=REPO / "examples" / "two_regions", env=env)
