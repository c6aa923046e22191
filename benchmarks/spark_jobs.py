"""Where a Spark run of `rfm-assets analyze` spends its time, job by job, from Spark's own
event log (no profiler in the process, so the times are the run's own).

    python benchmarks/spark_jobs.py FILE [--master local[2]] [-- extra analyze options]

Runs `rfm-assets analyze --input FILE --engine spark --order-id order_id --amount amount`
with Spark's event log on, then prints each Spark job: when it started (seconds after the
first job), how long it ran, and the line of the package that asked for it. The whole run's
wall time and the time before the first job (imports, JVM start, reading the footers) come
first. Nothing is written to the repository.

The event log costs the run itself time when the driver's JVM runs its default collector
(G1) in Spark's default 1 GiB heap (benchmarks/README.md, "The driver's garbage collector"):
add `-- --spark-conf spark.driver.extraJavaOptions=-XX:+UseParallelGC` for a profile closer
to a run nobody observes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def jobs_of(log_dir: Path) -> list[dict]:
    """[{start, seconds, site}] of every job in the (uncompressed) event log under log_dir."""
    jobs: dict[int, dict] = {}
    for path in sorted(p for p in log_dir.rglob("*") if p.is_file()):
        if not path.name.startswith(("events_", "local-", "app-")):
            continue
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # the last line of a log cut short at exit
                continue
            if event["Event"] == "SparkListenerJobStart":
                site = event.get("Properties", {}).get("callSite.short", "")
                jobs[event["Job ID"]] = {"start": event["Submission Time"], "site": site}
            elif event["Event"] == "SparkListenerJobEnd":
                jobs[event["Job ID"]]["end"] = event["Completion Time"]
    return [
        {"start": job["start"], "seconds": (job.get("end", job["start"]) - job["start"]) / 1000,
         "site": job["site"]}
        for _, job in sorted(jobs.items())
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("extra", nargs="*", help="more options of rfm-assets analyze")
    args = parser.parse_args()
    rfm = str(Path(sys.executable).with_name("rfm-assets"))
    with tempfile.TemporaryDirectory() as work:
        logs = Path(work) / "events"
        logs.mkdir()
        line = [rfm, "analyze", "--input", args.source, "--output", str(Path(work) / "out"),
                "--order-id", "order_id", "--amount", "amount", "--engine", "spark",
                "--spark-master", args.master,
                "--spark-conf", "spark.eventLog.enabled=true",
                "--spark-conf", f"spark.eventLog.dir={logs}",
                "--spark-conf", "spark.eventLog.compress=false", *args.extra]  # fmt: skip
        started = time.time()
        subprocess.run(line, check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - started
        jobs = jobs_of(logs)
    first = jobs[0]["start"] / 1000 if jobs else started
    print(f"wall {wall:.2f} s; before the first job {first - started:.2f} s; "
          f"{len(jobs)} jobs, {sum(j['seconds'] for j in jobs):.2f} s in jobs")  # fmt: skip
    for i, job in enumerate(jobs):
        at = job["start"] / 1000 - first
        print(f"{i:3d} at {at:6.2f} s {job['seconds']:6.2f} s  {job['site']}")


if __name__ == "__main__":
    main()
