"""Benchmark: the pandas engine, the whole Dagster graph, a DuckDB SQL peer, the Spark engine.

Run from the repository root:

    /work/venv/bin/python benchmarks/bench.py --rows 100000,1000000 --repeats 5

For each size it writes seeded synthetic transactions to Parquet (not timed), checks once that
the DuckDB peer and the Spark engine give every customer the same R/F/M scores and segment as
the pandas engine, then runs each repeat as pandas, dagster, duckdb, spark in turn. Every run
is a fresh subprocess (`bench.py --single VARIANT --file F`): the modules are imported and a
tiny warm-up run is done first (not timed), then one timed run, and the process reports its
wall time and its peak RSS (VmHWM, including the interpreter and imports), so the variants
never share a heap.
It prints a Markdown table (median and min seconds, peak RSS, median time / DuckDB median time
of the same invocation, RSS after imports) and writes it with machine info to
benchmarks/results/latest.json.

Variants:
- pandas:  rfm_assets.pipeline.run_pandas: every engine step the assets run, without Dagster.
- dagster: `rfm-assets analyze` in-process (rfm_assets.cli.main): the asset graph through
           dg.materialize, asset checks, metadata, writing the two result tables as Parquet.
- duckdb:  one SQL query over the same Parquet file with the same semantics (README "How the
           numbers are computed", default settings), fetched to pandas; threads = CPU count.
- kmeans:  as pandas, with segmentation_method kmeans (k chosen by silhouette from 3..8);
           its ratio against pandas is the cost of clustering (rows / 25 customers, or
           --customers).
- kmeans_spark: as spark, with segmentation_method kmeans (MLlib); its ratio against spark is
           the cost of clustering on Spark.
- spark:   rfm_assets.pipeline.run_engine with engine spark on a local[2] session (started and
           warmed up before the timer), customer_segments written to Parquet and
           segment_analytics collected inside the timed region. Peak RSS is the Python driver's;
           the JVM's peak and the session start-up time are reported separately.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("pandas", "dagster", "duckdb", "spark", "kmeans", "kmeans_spark")
SEED = 42
WARMUP_ROWS = 10_000
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

# The default 5-point grid of the README: R -> segment for FM = 1..5.
GRID_5 = {
    5: ["New Customers", "Potential Loyalists", "Potential Loyalists", "Champions", "Champions"],
    4: ["Promising", "Potential Loyalists", "Potential Loyalists", "Loyal Customers", "Champions"],
    3: ["About to Sleep", "About to Sleep", "Need Attention", "Loyal Customers", "Loyal Customers"],
    2: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Cannot Lose Them"],
    1: ["Lost", "Hibernating", "At Risk", "Cannot Lose Them", "Cannot Lose Them"],
}


# --- the three variants ----------------------------------------------------------------------


def settings_for(path: str, engine: str = "pandas"):
    from rfm_assets.settings import RFMSettings

    return RFMSettings(input_path=path, columns={"order_id": "order_id"}, engine=engine)


def run_pandas(path: str):
    """The graph in this process (rfm_assets.run); returns (customer_segments,
    segment_analytics)."""
    from rfm_assets import run

    result = run(settings_for(path), keep=("customer_segments", "segment_analytics"))
    return result.customer_segments, result.segment_analytics


def start_spark():
    """The benchmark's session: local[2] plus the package defaults (not timed)."""
    from pyspark.sql import SparkSession

    from rfm_assets.definitions import DEFAULT_SPARK_CONFIG

    builder = SparkSession.builder.master("local[2]")
    for key, value in DEFAULT_SPARK_CONFIG.items():
        if key != "spark.master":
            builder = builder.config(key, value)
    return (
        builder.config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "8g")
        .getOrCreate()
    )


def run_spark(path: str, spark=None, keep: str | None = None, method: str = "grid") -> None:
    """rfm_assets.run with engine spark, forced: customer_segments written to Parquet (into
    `keep` if given, else a temporary directory) and segment_analytics collected."""
    from rfm_assets import run

    output = keep or tempfile.mkdtemp(prefix="rfm-bench-spark-")
    settings = settings_for(path, "spark").model_copy(update={"segmentation_method": method})
    try:
        result = run(settings, spark_session=spark, keep=("customer_segments", "segment_analytics"))
        result.customer_segments.write.mode("overwrite").parquet(
            os.path.join(output, "customer_segments")
        )
        result.segment_analytics.collect()
    finally:
        if keep is None:
            shutil.rmtree(output, ignore_errors=True)


def run_dagster(path: str) -> None:
    from rfm_assets.cli import main

    output = tempfile.mkdtemp(prefix="rfm-bench-out-")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(
                [
                    "analyze",
                    "--input",
                    path,
                    "--output",
                    output,
                    "--amount",
                    "amount",
                    "--order-id",
                    "order_id",
                ]
            )
        if code != 0:
            raise SystemExit(f"rfm-assets analyze failed with exit code {code}")
    finally:
        shutil.rmtree(output, ignore_errors=True)


def duckdb_sql(path: str, final: str) -> str:
    """The RFM computation as CTEs over the Parquet file, ending in `final`."""
    grid = ", ".join(
        f"({r}, {fm}, '{name}')"
        for r, row in GRID_5.items()
        for fm, name in enumerate(row, start=1)
    )
    source = path.replace("'", "''")
    return f"""
    WITH tx AS (
        SELECT customer_id, transaction_date, amount, order_id FROM read_parquet('{source}')
    ),
    ref AS (SELECT CAST(max(transaction_date) AS DATE) + 1 AS ref_day FROM tx),
    kept AS (                           -- returns policy `exclude`, cancellation prefix 'C'
        SELECT * FROM tx
        WHERE customer_id IS NOT NULL AND isfinite(amount) AND amount > 0
          AND (order_id IS NULL OR NOT starts_with(order_id, 'C'))
          AND transaction_date < (SELECT ref_day FROM ref)
    ),
    orders AS (                         -- one row per (customer, order)
        SELECT customer_id, order_id, max(transaction_date) AS last_ts,
               sum(CAST(round_even(amount * 1000000, 0) AS BIGINT)) AS micro
        FROM kept GROUP BY customer_id, order_id
    ),
    metrics AS (
        SELECT customer_id,
               (SELECT ref_day FROM ref) - CAST(max(last_ts) AS DATE) AS recency,
               count(*) AS frequency,
               sum(micro) AS monetary_micro
        FROM orders GROUP BY customer_id
    ),
    scores AS (                         -- score = 1 + floor(5 b / n), b = # strictly worse
        SELECT *,
            1 + (5 * (rank() OVER (ORDER BY recency DESC) - 1)) // count(*) OVER () AS r_score,
            1 + (5 * (rank() OVER (ORDER BY frequency) - 1)) // count(*) OVER () AS f_score,
            1 + (5 * (rank() OVER (ORDER BY monetary_micro) - 1)) // count(*) OVER () AS m_score
        FROM metrics
    ),
    grid(r, fm, segment) AS (VALUES {grid}),
    segmented AS (
        SELECT s.*, s.monetary_micro / 1e6 AS monetary, g.fm AS fm_score, g.segment
        FROM scores s JOIN grid g
          ON g.r = s.r_score AND g.fm = CAST(floor((s.f_score + s.m_score) / 2 + 0.5) AS INT)
    )
    {final}
    """


ANALYTICS = """
    SELECT segment,
           count(*) AS customers,
           count(*) / sum(count(*)) OVER () AS customer_share,
           sum(monetary_micro) / 1e6 AS revenue,
           sum(monetary_micro) / sum(sum(monetary_micro)) OVER () AS revenue_share,
           avg(recency) AS avg_recency,
           avg(frequency) AS avg_frequency,
           sum(monetary_micro) / 1e6 / count(*) AS avg_monetary,
           sum(monetary_micro) / 1e6 / sum(frequency) AS avg_order_value
    FROM segmented GROUP BY segment ORDER BY customers DESC
"""
PER_CUSTOMER = """
    SELECT customer_id, recency, frequency, monetary, r_score, f_score, m_score, fm_score,
           segment
    FROM segmented
"""


def duckdb_connection():
    import duckdb

    connection = duckdb.connect()
    connection.execute(f"SET threads = {os.cpu_count()}")
    return connection


def run_duckdb(path: str, final: str = ANALYTICS):
    return duckdb_connection().execute(duckdb_sql(path, final)).fetch_df()


def run_kmeans(path: str):
    """The pandas engine with segmentation_method kmeans (k chosen from 3..8)."""
    from rfm_assets import run

    settings = settings_for(path).model_copy(update={"segmentation_method": "kmeans"})
    result = run(settings)
    return result.customer_segments, result.segment_analytics


def run_kmeans_spark(path: str, spark=None, keep: str | None = None) -> None:
    """The Spark engine with segmentation_method kmeans (MLlib, k chosen from 3..8)."""
    run_spark(path, spark, keep, method="kmeans")


RUNNERS = {
    "pandas": run_pandas,
    "dagster": run_dagster,
    "duckdb": run_duckdb,
    "spark": run_spark,
    "kmeans": run_kmeans,
    "kmeans_spark": run_kmeans_spark,
}
SPARK_VARIANTS = ("spark", "kmeans_spark")


# --- one measured run in its own process -----------------------------------------------------


def peak_rss_mib(pid: str = "self") -> float:
    """A process's peak RSS. VmHWM, because after fork + exec `ru_maxrss` still holds the
    parent's RSS at the time of the fork (Linux), which would charge the parent's data to us."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def single(variant: str, path: str, warmup: str, keep: str | None = None) -> None:
    """Warm up on a tiny file, time one run on `path`, print one JSON line."""
    import warnings

    warnings.filterwarnings("ignore")
    # Import what the variant needs (only that, so RSS is its own); import time is not timed.
    import pandas  # noqa: F401

    if variant == "duckdb":
        import duckdb  # noqa: F401
    elif variant in SPARK_VARIANTS:
        import pyspark.sql  # noqa: F401

        import rfm_assets.definitions  # noqa: F401
        import rfm_assets.runner  # noqa: F401
    else:
        import rfm_assets.assets  # noqa: F401
        import rfm_assets.cli  # noqa: F401
    baseline = peak_rss_mib()
    report = {}
    run = RUNNERS[variant]
    if variant in SPARK_VARIANTS:
        start = time.perf_counter()
        spark = start_spark()
        report["startup_s"] = time.perf_counter() - start
        run(warmup, spark)
        spark.catalog.clearCache()
        start = time.perf_counter()
        run(path, spark, keep)
        seconds = time.perf_counter() - start
        jvm = getattr(spark.sparkContext._gateway, "proc", None)  # local mode: the driver JVM
        if jvm is not None:
            report["jvm_peak_rss_mib"] = peak_rss_mib(str(jvm.pid))
        spark.stop()
    else:
        run(warmup)
        start = time.perf_counter()
        run(path)
        seconds = time.perf_counter() - start
    report.update(seconds=seconds, peak_rss_mib=peak_rss_mib(), import_rss_mib=baseline)
    print(json.dumps(report))


def measure(variant: str, path: str, warmup: str, keep: str | None = None) -> dict:
    command = [sys.executable, __file__, "--single", variant, "--file", path, "--warmup", warmup]
    done = subprocess.run(
        command + (["--keep", keep] if keep else []), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{variant} on {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the comparison --------------------------------------------------------------------------


SCORES = ["customer_id", "R_score", "F_score", "M_score", "FM_score", "segment"]


def compare(ours, peer, peer_columns: list[str]) -> dict:
    """Outer-join two per-customer tables on customer_id; count the mismatches."""
    ours = ours[SCORES].astype({"customer_id": "int64", "segment": "str"})
    peer = (
        peer[peer_columns]
        .set_axis(SCORES, axis=1)
        .astype({"customer_id": "int64", "segment": "str"})
    )
    both = ours.merge(peer, on="customer_id", how="outer", indicator=True, suffixes=("", "_peer"))
    matched = both[both["_merge"] == "both"]
    mismatches = {
        name: int((matched[column].astype(str) != matched[column + "_peer"].astype(str)).sum())
        for name, column in zip(("R", "F", "M", "FM", "segment"), SCORES[1:])
    }
    return {
        "customers_pandas": len(ours),
        "customers_peer": len(peer),
        "customers_unmatched": int((both["_merge"] != "both").sum()),
        "score_mismatches": mismatches,
        "agree": len(ours) == len(peer) == len(matched) and not any(mismatches.values()),
    }


def verify(path: str, warmup: str, workdir: str, variants: tuple[str, ...]) -> dict:
    """Do the DuckDB peer and the Spark engine (when it is measured) agree with the pandas
    engine on every customer? (not timed; Spark runs in its own subprocess and hands its table
    over as Parquet)"""
    import pandas as pd

    segmented, _ = run_pandas(path)
    duck = run_duckdb(path, PER_CUSTOMER)
    checks = {
        "duckdb": compare(
            segmented, duck, ["customer_id", "r_score", "f_score", "m_score", "fm_score", "segment"]
        )
    }
    if "spark" in variants:
        keep = tempfile.mkdtemp(prefix="spark-check-", dir=workdir)
        measure("spark", path, warmup, keep)
        spark = pd.read_parquet(os.path.join(keep, "customer_segments"))
        shutil.rmtree(keep)
        checks["spark"] = compare(segmented, spark, SCORES)
    return checks


def machine_info() -> dict:
    import dagster
    import duckdb
    import numpy
    import pandas
    import pyarrow
    import pyspark

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
        "duckdb": duckdb.__version__,
        "dagster": dagster.__version__,
        "pyspark": pyspark.__version__,
    }


def code_version() -> dict:
    """The commit measured, and any uncommitted changes to the package."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "rfm_assets").splitlines()
    return {"git_commit": git("rev-parse", "HEAD").strip(), "rfm_assets_uncommitted": dirty}


def markdown(results: list[dict]) -> str:
    lines = [
        "| rows | customers | variant | median s | min s | peak RSS MiB | ratio vs duckdb "
        "| RSS after imports MiB | startup s | JVM peak RSS MiB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        startup = f"{r['startup_s']:.1f}" if "startup_s" in r else ""
        jvm = f"{r['jvm_peak_rss_mib']:,.0f}" if r.get("jvm_peak_rss_mib") else ""
        lines.append(
            f"| {r['rows']:,} | {r.get('customers', 0):,} | {r['variant']} "
            f"| {r['median_s']:.3f} | {r['min_s']:.3f} "
            f"| {r['peak_rss_mib']:,.0f} | {r['ratio_vs_duckdb']:.2f} "
            f"| {r['import_rss_mib']:,.0f} | {startup} | {jvm} |"
        )
    return "\n".join(lines)


def benchmark(
    sizes: list[int],
    repeats: int,
    variants: tuple[str, ...] = VARIANTS,
    customers: int | None = None,
) -> None:
    import gc

    from rfm_assets.synthetic import generate_transactions

    results, checks = [], {}
    code_at_start = code_version()
    with tempfile.TemporaryDirectory(prefix="rfm-bench-") as workdir:
        warmup = os.path.join(workdir, "warmup.parquet")
        generate_transactions(WARMUP_ROWS, seed=SEED).to_parquet(warmup, index=False)
        for rows in sizes:
            path = os.path.join(workdir, f"transactions_{rows}.parquet")
            generate_transactions(rows, customers, seed=SEED).to_parquet(path, index=False)
            gc.collect()
            checks[rows] = verify(path, warmup, workdir, variants)
            for peer, check in checks[rows].items():
                print(
                    f"{rows:,} rows: {peer} vs pandas: {check['customers_peer']:,} vs "
                    f"{check['customers_pandas']:,} customers, "
                    + (
                        "all R/F/M/FM scores and segments agree"
                        if check["agree"]
                        else f"MISMATCHES {check['score_mismatches']}, "
                        f"{check['customers_unmatched']} unmatched customers"
                    ),
                    flush=True,
                )
            runs = {v: [] for v in variants}
            for repeat in range(repeats):
                for variant in variants:  # interleaved, so machine noise hits all alike
                    runs[variant].append(measure(variant, path, warmup))
                    print(
                        f"  repeat {repeat + 1}/{repeats} {variant:<7} "
                        f"{runs[variant][-1]['seconds']:8.3f} s",
                        flush=True,
                    )
            duck = statistics.median(r["seconds"] for r in runs["duckdb"])
            for variant in variants:
                seconds = [r["seconds"] for r in runs[variant]]
                results.append(
                    {
                        "rows": rows,
                        "variant": variant,
                        "median_s": statistics.median(seconds),
                        "min_s": min(seconds),
                        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs[variant]),
                        "import_rss_mib": max(r["import_rss_mib"] for r in runs[variant]),
                        "ratio_vs_duckdb": statistics.median(seconds) / duck,
                        "seconds": seconds,
                    }
                )
                results[-1]["customers"] = checks[rows]["duckdb"]["customers_pandas"]
                if variant in SPARK_VARIANTS:
                    results[-1]["startup_s"] = statistics.median(
                        r["startup_s"] for r in runs[variant]
                    )
                    jvm = [r["jvm_peak_rss_mib"] for r in runs[variant] if "jvm_peak_rss_mib" in r]
                    results[-1]["jvm_peak_rss_mib"] = max(jvm) if jvm else None
    table = markdown(results)
    print()
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "machine": machine_info(),
                "code_at_start": code_at_start,
                "code_at_end": code_version(),
                "seed": SEED,
                "repeats": repeats,
                "agreement": checks,
                "results": results,
                "markdown": table,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--customers", type=int, help="customers in the generated data (default: rows / 25)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants"
    )
    parser.add_argument("--single", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", help=argparse.SUPPRESS)
    parser.add_argument("--keep", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        single(args.single, args.file, args.warmup, args.keep)
    else:
        chosen = [v for v in args.variants.split(",") if v]
        unknown = sorted(set(chosen) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"--variants: unknown {', '.join(unknown)}; known: {VARIANTS}")
        # DuckDB is the peer every ratio is taken against: always measured.
        variants = tuple(dict.fromkeys(["duckdb", *chosen]))
        benchmark([int(n) for n in args.rows.split(",")], args.repeats, variants, args.customers)


if __name__ == "__main__":
    main()
