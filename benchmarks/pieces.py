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
- metrics: `compute_metrics` over the kept rows; bare metrics: the bare PySpark job's two
  group-bys (benchmarks/peers.py) over the raw scan.

`pandas` times `pandas_compute.compute_metrics` against a DuckDB two-level GROUP BY (per
customer and order, then per customer; 2 threads) over the same kept frame, the pandas to
Arrow hand-off included, after checking that both give every customer the same exact
micro-unit monetary sum, frequency and first and last purchase day.
"""

from __future__ import annotations

import argparse
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
    engine = SparkEngine(spark)
    raw, listing = engine.read(settings)
    kept, account = engine.prepare(raw, settings, listing)
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
        "metrics": compute_metrics(kept, account.reference_date),
        "bare metrics": bare,
    }
    print(f"{account.rows_read:,} rows, {account.customers:,} customers; median s of {repeats}")
    for name, frame in plans.items():
        print(
            f"  {name:<28} {median_seconds(lambda frame=frame: noop(frame), repeats):7.2f}",
            flush=True,
        )
    spark.stop()


def pandas_pieces(path: str, repeats: int) -> None:
    import duckdb
    import numpy as np
    import pyarrow as pa

    from rfm_assets.engines import pandas_compute
    from rfm_assets.engines.dispatch import PandasEngine
    from rfm_assets.engines.shared import MICRO_UNITS

    settings = settings_for(path, "pandas")
    engine = PandasEngine()
    raw, listing = engine.read(settings)
    kept, account = engine.prepare(raw, settings, listing)
    columns = ["customer_id", "transaction_date", "amount", "is_return", "order_id"]
    query = """
        WITH lines AS (
            SELECT customer_id, order_id, is_return,
                   CAST(round_even(amount * 1e6, 0) AS BIGINT) AS micro,
                   CASE WHEN NOT is_return THEN CAST(transaction_date AS DATE) END AS day
            FROM rows),
        per_order AS (
            SELECT customer_id, order_id, sum(micro) AS micro, max(day) AS last_day,
                   min(day) AS first_day, max(CASE WHEN NOT is_return THEN 1 ELSE 0 END)
                   AS purchases
            FROM lines GROUP BY customer_id, order_id)
        SELECT customer_id, sum(micro) AS micro, max(last_day) AS last_day,
               min(first_day) AS first_day, sum(purchases) AS frequency
        FROM per_order GROUP BY customer_id ORDER BY customer_id
    """

    def by_duckdb():
        connection = duckdb.connect()
        connection.execute("SET threads = 2")
        rows = pa.Table.from_pandas(kept[columns], preserve_index=False)  # noqa: F841 (in SQL)
        return connection.execute(query).df()

    ours = pandas_compute.compute_metrics(kept, account.reference_date)
    theirs = by_duckdb()
    checks = {
        "customers": list(ours["customer_id"]) == list(theirs["customer_id"]),
        "monetary": np.array_equal(
            np.rint(ours["monetary"].to_numpy() * MICRO_UNITS).astype(np.int64),
            theirs["micro"].to_numpy(dtype=np.int64),
        ),
        "frequency": np.array_equal(ours["frequency"], theirs["frequency"]),
        "last_day": np.array_equal(ours["last_purchase_date"].dt.date, theirs["last_day"].dt.date),
        "first_day": np.array_equal(
            ours["first_purchase_date"].dt.date, theirs["first_day"].dt.date
        ),
    }
    if not all(checks.values()):
        raise SystemExit(f"DuckDB disagrees with compute_metrics: {checks}")
    print(f"{len(kept):,} kept rows, {len(ours):,} customers; agree; median s of {repeats}")
    seconds = median_seconds(lambda: pandas_compute.compute_metrics(kept, account.reference_date),
                             repeats)  # fmt: skip
    print(f"  {'compute_metrics (pandas)':<28} {seconds:7.2f}", flush=True)
    print(f"  {'DuckDB two-level GROUP BY':<28} {median_seconds(by_duckdb, repeats):7.2f}")


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
