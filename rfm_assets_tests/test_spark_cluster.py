"""The graph on a real Spark standalone cluster (master + one worker on 127.0.0.1), not
local mode. The cluster is started from the pyspark package's own bin/spark-class.

Slow (most of a minute), and run by CI. Skipped only where Java is absent.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rfm_assets_tests.conftest import bundled_slice_settings

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None, reason="Java is not installed: Spark needs Java 17"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    return subprocess.Popen(
        [str(spark_class), *args],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def wait_for(log: Path, text: str, process: subprocess.Popen, seconds: int = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not seen; log:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def standalone_cluster(tmp_path):
    import pyspark

    env = {
        **os.environ,
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "SPARK_LOCAL_IP": "127.0.0.1",  # loopback only, never another interface
        "PYSPARK_PYTHON": sys.executable,
    }
    port = free_port()
    master_log, worker_log = tmp_path / "master.log", tmp_path / "worker.log"
    master = start(
        ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(free_port())],
        master_log, env,
    )  # fmt: skip
    worker = None
    try:
        wait_for(master_log, "I have been elected leader", master)
        worker = start(
            ["org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
             "--host", "127.0.0.1", "--cores", "2", "--memory", "2g",
             "--webui-port", str(free_port()), "--work-dir", str(tmp_path / "work")],
            worker_log, env,
        )  # fmt: skip
        wait_for(worker_log, "Successfully registered with master", worker)
        yield f"spark://127.0.0.1:{port}", env
    finally:
        for process in (worker, master):
            if process is not None:
                os.killpg(process.pid, 15)
                process.wait(timeout=60)


@pytest.mark.heavy
def test_graph_runs_on_a_standalone_cluster(standalone_cluster, tmp_path):
    from rfm_assets import run
    from rfm_assets.settings import RFMSettings

    master_url, env = standalone_cluster
    # 300 customers, about 75,000 lines: what the cluster's run must get right is the
    # cluster's part (executors in other JVMs, their Python, their writes).
    sample = bundled_slice_settings(tmp_path)
    output = tmp_path / "cluster"
    completed = subprocess.run(
        [sys.executable, "-m", "rfm_assets", "analyze", "--engine", "spark",
         "--input", sample["input_path"], "--order-id", "order_id",
         "--spark-master", master_url,
         "--spark-conf", "spark.driver.host=127.0.0.1",
         "--spark-conf", "spark.driver.bindAddress=127.0.0.1",
         "--spark-conf", "spark.executor.memory=1g",
         "--spark-conf", f"spark.pyspark.python={sys.executable}",
         "--output", str(output)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads((output / "run_summary.json").read_text())
    on_pandas = run(RFMSettings(**sample))
    assert summary["engine"] == "spark"
    assert summary["rows_read"] == on_pandas.account.rows_read > 10_000
    assert summary["rows_excluded"] == on_pandas.account.rows_excluded
    assert summary["customers"] == on_pandas.account.customers > 250
    columns = ["customer_id", "recency", "frequency", "monetary", "R_score", "F_score",
               "M_score", "RFM_score", "segment"]  # fmt: skip
    on_cluster = pd.read_parquet(output / "customer_segments.parquet")[columns]
    pd.testing.assert_frame_equal(
        on_cluster.sort_values("customer_id", ignore_index=True),
        on_pandas.customer_segments[columns].sort_values("customer_id", ignore_index=True),
        check_dtype=False,
        check_categorical=False,
    )
