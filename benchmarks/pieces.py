"""Time the pieces of one run inside one process: what a whole-process benchmark cannot split.

Run from the repository root on a file `large.py` wrote (duckdb, pyspark and Java 17 installed):

    python benchmarks/pieces.py spark /tmp/rfm-large/large_10000000_1000000_seed42.parquet
    python benchmarks/pieces.py pandas /tmp/rfm-large/large_10000000_1000000_seed42.parquet

`spark` (local[2], the package's Spark defaults) writes each plan to Spark's `noop` sink, so
every column is computed and nothing is stored; median of --repeats after one warm-up pass:
- scan: the four needed columns as they are;
- trim (regular expression / btrim / ours): the customer id trimmed of the whitespace set
  the engines share, by the regular expression the engine used before, by btrim alone, and
  by `spark_compute.trimmed` (btrim only where an end is not printable ASCII); the three
  are checked to give the same ids first;
- canonical: the engine's validated, typed columns (`read_transactions`);
- kept: the kept rows (`prepare_transactions`, its accounting not timed);
- metrics: `compute_metrics` over the kept rows, as a step reading stored rows computes them;
  bare metrics: the bare PySpark job's two group-bys (benchmarks/peers.py) over the raw scan;
- distinct kept customers: the exact count of the kept rows' customers alone, which the
  accounting takes along (the transactions step reports it, rfm_metrics checks against it);
- accounting (prepare): `prepare_transactions`' one aggregation of every row per customer:
  rows by reason, the metrics' sums and the overflow guard's total (the command line's
  metrics step takes its metrics from it).

`pandas` times each step of the pandas engine in the process (the data read once beforehand;
each step on the previous step's output): the I/O floor (pyarrow reading the four columns),
reading and validating (`read_transactions`), cleaning and accounting
(`prepare_transactions`), the per-customer metrics (`compute_metrics`, DuckDB's two-level
GROUP BY over the Arrow columns), scores and thresholds, segments and analytics.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time

COLUMNS = ["customer_id", "transaction_date", "amount", "order_id"]


def median_seconds(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def settings_for(path: str, engine: str):
    from rfm_assets.settings import RFMSettings

    return RFMSettings(
        input_path=path, engine=engine, columns={"order_id": "order_id", "amount": "amount"}
    )


def spark_pieces(path: str, repeats: int) -> None:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from rfm_assets.engines.dispatch import SparkEngine
    from rfm_assets.engines.shared import WHITESPACE
    from rfm_assets.engines.spark_compute import compute_metrics, trimmed
    from rfm_assets.spark_resource import DEFAULT_SPARK_CONFIG

    builder = SparkSession.builder.master("local[2]")
    for key, value in {**DEFAULT_SPARK_CONFIG, "spark.ui.enabled": "false"}.items():
        if key != "spark.master":
            builder = builder.config(key, value)
    spark = builder.getOrCreate()

    def noop(frame) -> None:
        frame.write.format("noop").mode("overwrite").save()

    settings = settings_for(path, "spark")
    spec = settings.run_spec()
    engine = SparkEngine(spark)
    raw, listing = engine.read(spec)
    kept, account = engine.prepare(raw, spec, listing)
    scan = spark.read.parquet(path).select(*COLUMNS)
    ids = F.col("customer_id")
    space = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]"
    trims = {
        "trim (regular expression)": F.regexp_replace(ids, f"^{space}+|{space}+$", ""),
        "trim (btrim)": F.btrim(ids, F.lit("".join(WHITESPACE))),
        "trim (ours)": trimmed(ids),
    }
    differ = scan.filter(
        (trims["trim (ours)"] != trims["trim (btrim)"])
        | (trims["trim (ours)"] != trims["trim (regular expression)"])
    ).count()
    if differ:
        raise SystemExit(f"the trims disagree on {differ:,} ids")
    bare = (
        scan.filter(F.col("customer_id").isNotNull())
        .groupBy("customer_id", "order_id")
        .agg(F.sum(F.bround(F.col("amount") * 1_000_000).cast("long")).alias("micro"),
             F.max("transaction_date").alias("last_ts"))
        .groupBy("customer_id")
        .agg(F.sum("micro"), F.max("last_ts"), F.count(F.lit(1)))
    )  # fmt: skip
    plans = {
        "scan": scan,
        **{name: scan.select(column.alias("id")) for name, column in trims.items()},
        "canonical": raw,
        "kept": kept,
        # Another frame over the kept rows: compute_metrics would otherwise take the metrics
        # from the totals the accounting cached (what the command line does).
        "metrics": compute_metrics(kept.select("*"), account.reference_date),
        "bare metrics": bare,
    }
    plans["distinct kept customers"] = kept.agg(F.count_distinct("customer_id"))
    print(f"{account.rows_read:,} rows, {account.customers:,} customers; median s of {repeats}")
    for name, frame in plans.items():
        print(
            f"  {name:<28} {median_seconds(lambda frame=frame: noop(frame), repeats):7.2f}",
            flush=True,
        )
    # The accounting is an action of its own: prepare_transactions runs it, and it is also
    # the metrics' aggregation (every row per customer, cached for the metrics step).
    seconds = median_seconds(lambda: engine.prepare(raw, spec, listing), repeats)
    print(f"  {'accounting (prepare)':<28} {seconds:7.2f}", flush=True)
    spark.stop()


def pandas_pieces(path: str, repeats: int) -> None:
    import pyarrow.parquet as pq

    from rfm_assets.engines.dispatch import PandasEngine

    settings = settings_for(path, "pandas")
    spec = settings.run_spec()
    engine = PandasEngine()
    rule_set = settings.rule_set()
    raw, listing = engine.read(spec)
    kept, account = engine.prepare(raw, spec, listing)
    metrics = engine.metrics(kept, account.reference_date)
    scores, thresholds = engine.scores(metrics, spec)
    segmented = engine.segments(scores, rule_set, dt.datetime(2026, 1, 1))
    print(f"{len(kept):,} kept rows, {len(metrics):,} customers; median s of {repeats}")
    pieces = {
        "I/O floor (pyarrow, 4 columns)": lambda: pq.read_table(path, columns=COLUMNS),
        "read (read_transactions)": lambda: engine.read(spec),
        "prepare (cleaning, accounting)": lambda: engine.prepare(raw, spec, listing),
        "metrics (DuckDB group-bys)": lambda: engine.metrics(kept, account.reference_date),
        "scores and thresholds": lambda: engine.scores(metrics, spec),
        "segments": lambda: engine.segments(scores, rule_set, dt.datetime(2026, 1, 1)),
        "analytics": lambda: engine.analytics(segmented, rule_set, thresholds),
    }
    for name, work in pieces.items():
        print(f"  {name:<32} {median_seconds(work, repeats):7.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=("spark", "pandas"))
    parser.add_argument("file", help="a Parquet file with customer_id, transaction_date, "
                        "amount and order_id (benchmarks/large.py writes them)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    (spark_pieces if args.engine == "spark" else pandas_pieces)(args.file, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
