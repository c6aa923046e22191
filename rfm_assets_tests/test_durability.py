"""A failed, killed or starved run never loses or half-writes the previous result."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import dagster as dg
import pyarrow.parquet as pq
import pytest

from rfm_assets import defs
from rfm_assets.assets import RFM_ASSETS
from rfm_assets.cli import main
from rfm_assets.engines.dispatch import PandasEngine
from rfm_assets.settings import RFMSettings
from rfm_assets_tests.conftest import rfm_resources, stored_snapshot

CHILD = textwrap.dedent(
    """
    import sys, time
    import dagster as dg, pandas as pd, pyarrow.parquet as pq
    from rfm_assets.io_manager import RFMParquetIOManager

    base, version, hang = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "hang"

    @dg.asset
    def customer_segments() -> pd.DataFrame:
        return pd.DataFrame({"customer_id": range(100_000), "version": version})

    if hang:
        def half_write(table, handle, **kwargs):
            handle.write(b"PAR1" + b"half a file" * 1000)
            handle.flush()
            print("WRITING", flush=True)
            time.sleep(120)
        pq.write_table = half_write  # what the store writes Parquet with

    store = RFMParquetIOManager(base_dir=base)
    dg.materialize([customer_segments], resources={"io_manager": store})
    """
)


def test_a_run_killed_mid_write_leaves_the_last_good_value(tmp_path, monkeypatch):
    base = tmp_path / "store"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    first = subprocess.run(
        [sys.executable, str(script), str(base), "1", "ok"], capture_output=True, timeout=300
    )
    assert first.returncode == 0, first.stderr[-2000:]
    before = stored_snapshot(base)

    child = subprocess.Popen(
        [sys.executable, str(script), str(base), "2", "hang"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "WRITING"
        location = base / "customer_segments"
        current = (location / "CURRENT").read_text().strip()
        staged = [p for p in location.iterdir() if p.name not in ("CURRENT", current)]
        assert staged and staged[0].stat().st_size > 0  # the kill lands mid-write
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        child.kill()
    assert stored_snapshot(base) == before
    monkeypatch.setenv("RFM_ASSETS_BASE_DIR", str(base))
    loaded = defs.load_asset_value("customer_segments")
    assert len(loaded) == 100_000 and set(loaded["version"]) == {1}


def materialize_graph(base, **settings):
    return dg.materialize(
        RFM_ASSETS,
        resources=rfm_resources(RFMSettings(**settings), base),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def test_an_exception_in_a_later_asset_keeps_every_earlier_value(tmp_path, monkeypatch):
    base = tmp_path / "store"
    assert materialize_graph(base).success
    before = stored_snapshot(base)

    def broken(*args, **kwargs):
        raise RuntimeError("segmenting failed")

    monkeypatch.setattr(PandasEngine, "segments", broken)
    result = materialize_graph(base, analysis_period_days=90)
    assert not result.success
    after = stored_snapshot(base)
    # Steps before the failure wrote their new values; the failed one and its dependant
    # kept the last good ones, byte for byte.
    assert after["customer_segments"] == before["customer_segments"]
    assert after["segment_analytics"] == before["segment_analytics"]
    assert after["transactions"] != before["transactions"]
    # Rewritten assets keep their previous version (and its context) beside the new one;
    # nothing else is left: CURRENT + 1 or 2 versions, each with its context file.
    tables = [location for location in base.iterdir() if location.name != "rfm_report"]
    assert {len(list(location.iterdir())) for location in tables} == {3, 5}
    assert not [p for p in base.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_keeps_the_previous_value_and_says_so(tmp_path, monkeypatch, capsys):
    base = tmp_path / "store"
    assert materialize_graph(base).success
    before = stored_snapshot(base)

    def disk_full(table, target, **kwargs):
        if hasattr(target, "write"):
            target.write(b"PAR1partial")
        else:
            with open(target, "wb") as handle:
                handle.write(b"PAR1partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq, "write_table", disk_full)  # what every table is written with
    result = materialize_graph(base, analysis_period_days=90)
    assert not result.success
    assert stored_snapshot(base) == before
    # no debris: CURRENT, one version and its context file
    tables = [location for location in base.iterdir() if location.name != "rfm_report"]
    assert all(len(list(location.iterdir())) == 3 for location in tables)

    output = tmp_path / "out"
    capsys.readouterr()
    assert main(["analyze", "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "No space left on device" in error
    assert not [p for p in output.iterdir() if p.name.endswith(".tmp")]


def visible_result(output) -> dict[str, bytes]:
    """The result a reader of `output` sees: each visible file's bytes, through its link."""
    return {p.name: p.read_bytes() for p in output.iterdir() if not p.name.startswith(".")}


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_an_existing_result_survives_a_failed_cli_run(tmp_path, file_format):
    """Also: real files where the result goes (a result of the layout before `.rfm/`, or
    the user's own) are never replaced: we cannot tell that rfm-assets wrote them."""
    output = tmp_path / "out"
    assert main(["analyze", "--output", str(output), "--format", file_format]) == 0
    before = visible_result(output)
    assert main(["analyze", "--output", str(output), "--weights", "1,0,0"]) == 1
    assert main(["analyze", "--output", str(output), "--reference-date", "1999-01-01"]) == 1
    assert visible_result(output) == before
    shutil.rmtree(output)
    output.mkdir()
    (output / f"customer_segments.{file_format}").mkdir()  # e.g. Spark part files
    (output / f"customer_segments.{file_format}" / "part-0").write_text("old")
    (output / "run_summary.json").write_text("{}")
    assert main(["analyze", "--output", str(output), "--format", file_format]) == 1
    assert (output / f"customer_segments.{file_format}" / "part-0").read_text() == "old"
    assert (output / "run_summary.json").read_text() == "{}"
    assert sorted(p.name for p in output.iterdir()) == [
        f"customer_segments.{file_format}",
        "run_summary.json",
    ]
