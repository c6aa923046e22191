"""Where a Spark run of the graph on a tiny input spends its time: what the Spark tests pay.

    .venv/bin/python benchmarks/spark_small_run.py [--runs 3] [--debugging off] [--jobs]
    .venv/bin/python benchmarks/spark_small_run.py --compare KEY A B [--runs 3 --repeats 4]
    .venv/bin/python benchmarks/spark_small_run.py --warm 40 --keep-caches [--runs 5]
    .venv/bin/python benchmarks/spark_small_run.py --warm 20 --runs 8 --threads

One local[2] session, tuned as the test suite's shared session is (one shuffle partition per
core, no adaptive re-planning, no generated code), with Spark's event log on. The graph runs
`--runs` times in that session (`rfm_assets.run`) on a five-row CSV, after one warm-up run.
For each run it prints the wall time, the Spark jobs the run started, their summed time and
the span from the first job's start to the last one's end (from the event log), and the
calls the driver made to the JVM over Py4J from the run's thread. `--debugging off` sets
`spark.python.sql.dataFrameDebugging.enabled=false` (PySpark's call-site capture, several
JVM calls around every Column function). `--jobs` lists each run's jobs, with their time,
where the driver started them and their scope (the action, or the plan node Spark runs as a
job of its own, such as a broadcast's).

Each run also reports the CPU time the JVM spent in it (all its threads: the driver's,
the compiler's, the garbage collector's, the tasks'). `--warm N` runs N warm-up runs first;
`--keep-caches` does not release the runs' caches (`RFMRun.release`), as a session that
outlived its runs did before the runs' caches were let go. `--compare KEY A B` sets the SQL
setting KEY to A and to B in turn, `--runs` runs each, `--repeats` times, alternating which
goes first, and prints each value's median run and JVM time. `--threads` prints the CPU time
spent within the timed runs, summed over them, by this Python process and by the JVM's
threads by kind (the driver's threads that answer Py4J and plan each query, the JIT
compilers, the tasks, the garbage collector's, the DAG scheduler; Linux only, from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def session(event_log: Path, debugging: bool):
    from pyspark.sql import SparkSession

    from rfm_assets.definitions import DEFAULT_SPARK_CONFIG
    from rfm_assets.engines import spark_compute

    config = {
        **DEFAULT_SPARK_CONFIG,
        "spark.ui.enabled": "false",
        "spark.eventLog.enabled": "true",
        "spark.eventLog.compress": "false",
        "spark.eventLog.dir": str(event_log),
        "spark.python.sql.dataFrameDebugging.enabled": str(debugging).lower(),
    }
    builder = SparkSession.builder.master("local[2]")
    for key, value in config.items():
        if key != "spark.master":
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    spark.conf.set("spark.sql.codegen.wholeStage", "false")
    spark.conf.set("spark.sql.codegen.factoryMode", "NO_CODEGEN")
    spark_compute.PARTITIONS_PER_CORE = 1
    return spark


def counting_jvm_calls() -> dict:
    """Count the driver's Py4J commands sent from the main thread (not the finalizer's)."""
    from py4j import clientserver

    count = {"calls": 0}
    send = clientserver.ClientServerConnection.send_command
    main = threading.main_thread()

    def counted(self, command):
        if threading.current_thread() is main:
            count["calls"] += 1
        return send(self, command)

    clientserver.ClientServerConnection.send_command = counted
    return count


def jvm_process():
    """The session's JVM: this process's child (psutil.Process)."""
    import psutil

    return next(p for p in psutil.Process().children(recursive=True) if "java" in p.name())


def jvm_cpu_seconds():
    """A function giving the CPU seconds the session's JVM has used."""
    jvm = jvm_process()

    def used() -> float:
        times = jvm.cpu_times()
        return times.user + times.system

    return used


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """{kind of thread: CPU seconds} of process `pid`'s threads, by their names with the
    numbers taken out (Py4J's driver threads are all "Thread-#")."""
    import re

    by_kind: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended while listed
            continue
        kind = re.sub(r"[0-9]+", "#", name)
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        by_kind[kind] = by_kind.get(kind, 0.0) + ticks / os.sysconf("SC_CLK_TCK")
    return by_kind


def jobs(event_log: Path) -> dict[int, tuple[int, int, str, str]]:
    """{job id: (start ms, end ms, where the driver started it, its scope)} from the
    session's event log."""
    times: dict[int, list] = {}
    for file in event_log.rglob("*"):
        if not file.is_file() or file.name.startswith("appstatus"):
            continue
        for line in file.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # the line being written as the log is read
                continue
            if event["Event"] == "SparkListenerJobStart":
                properties = event.get("Properties", {})
                site = properties.get("callSite.short", "")
                scope = json.loads(properties.get("spark.rdd.scope") or "{}").get("name", "")
                times[event["Job ID"]] = [event["Submission Time"], None, site, scope]
            elif event["Event"] == "SparkListenerJobEnd":
                times[event["Job ID"]][1] = event["Completion Time"]
    return {job: tuple(t) for job, t in times.items() if t[1] is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--debugging", choices=("on", "off"), default="on")
    parser.add_argument("--jobs", action="store_true", help="list each run's jobs")
    parser.add_argument("--warm", type=int, default=1, help="warm-up runs first")
    parser.add_argument("--keep-caches", action="store_true", help="never release caches")
    parser.add_argument("--compare", nargs=3, metavar=("KEY", "A", "B"))
    parser.add_argument("--repeats", type=int, default=4, help="with --compare")
    parser.add_argument("--threads", action="store_true", help="CPU by thread, all runs")
    args = parser.parse_args()
    import pandas as pd

    from rfm_assets import run
    from rfm_assets.settings import RFMSettings

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "events").mkdir()
        spark = session(folder / "events", args.debugging == "on")
        source = folder / "five.csv"
        pd.DataFrame(
            {
                "customer_id": [1, 2, 3, 1, 2],
                "transaction_date": [
                    "2024-01-01",
                    "2024-01-02",
                    "2024-01-03",
                    "2024-01-05",
                    "2024-01-06",
                ],  # fmt: skip
                "amount": [1.0, 2.0, 3.0, 4.0, 5.0],
            }
        ).to_csv(source, index=False)
        settings = RFMSettings(input_path=str(source), engine="spark")

        def one_run() -> None:
            result = run(settings, spark_session=spark)
            if not args.keep_caches:
                result.release()

        for _ in range(args.warm):  # the JVM's first plans and classes
            one_run()
        jvm_used = jvm_cpu_seconds()

        def timed_run() -> tuple[float, float]:
            """One run: (its wall time, the JVM's CPU time in it)."""
            before, started = jvm_used(), time.perf_counter()
            one_run()
            return time.perf_counter() - started, jvm_used() - before

        if args.compare:
            key, *values = args.compare
            walls: dict[str, list] = {v: [] for v in values}
            jvm: dict[str, list] = {v: [] for v in values}
            for repeat in range(args.repeats):
                for value in values if repeat % 2 == 0 else values[::-1]:
                    spark.conf.set(key, value)
                    for _ in range(args.runs):
                        wall, used = timed_run()
                        walls[value].append(wall)
                        jvm[value].append(used)
            for value in values:
                wall, cpu = statistics.median(walls[value]), statistics.median(jvm[value])
                print(f"{key}={value}: median run {wall:.2f} s, JVM CPU {cpu:.2f} s "
                      f"({len(walls[value])} runs)")  # fmt: skip
            spark.stop()
            return
        count = counting_jvm_calls()
        jvm_pid = jvm_process().pid
        # CPU within the runs only: reading the event log between them costs this process too.
        python, by_thread = 0.0, {}
        for number in range(1, args.runs + 1):
            seen = set(jobs(folder / "events"))
            count["calls"] = 0
            threads_before, python_before = thread_cpu_seconds(jvm_pid), time.process_time()
            wall, used = timed_run()
            python += time.process_time() - python_before
            for kind, seconds in thread_cpu_seconds(jvm_pid).items():
                by_thread[kind] = by_thread.get(kind, 0.0) + seconds - threads_before.get(kind, 0.0)
            time.sleep(0.5)  # the event log is written by a listener thread
            new = {job: t for job, t in jobs(folder / "events").items() if job not in seen}
            summed = sum(t[1] - t[0] for t in new.values()) / 1000
            span = (max(t[1] for t in new.values()) - min(t[0] for t in new.values())) / 1000
            print(f"run {number}: {wall:.2f} s; {len(new)} Spark jobs taking {summed:.2f} s "
                  f"of a {span:.2f} s span; {count['calls']:,} JVM calls; JVM CPU {used:.2f} s",
                  flush=True)  # fmt: skip
            if args.jobs:
                for job in sorted(new):
                    start, end, site, scope = new[job]
                    print(f"  job {job}: {(end - start) / 1000:.2f} s  {site}  ({scope})")
        if args.threads:
            print(f"CPU in the {args.runs} runs: this Python process {python:.2f} s; JVM "
                  f"{sum(by_thread.values()):.2f} s, by thread:")  # fmt: skip
            for kind, seconds in sorted(by_thread.items(), key=lambda kv: -kv[1]):
                if seconds >= 0.05:
                    print(f"  {kind}: {seconds:.2f} s")
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())
