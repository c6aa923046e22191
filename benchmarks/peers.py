"""The peers of the whole-process benchmark (`large.py`): the same per-customer RFM table, by
other tools, each run as its own process.

    python benchmarks/peers.py PEER INPUT.parquet OUTPUT_DIR

PEER is one of duckdb, duckdb_after_imports, duckdb_in_dagster, polars, tutorial, io_floor,
spark, spark_in_dagster. Each reads INPUT (the columns customer_id, transaction_date, amount,
order_id), applies the package's default rules (the README's "How the numbers are computed":
the reference date is the day after the latest timestamp; rows kept when customer_id is
present, amount finite and > 0 and order_id not starting with "C"; recency in calendar days,
frequency = distinct orders, monetary = the sum of amounts to the micro-unit; score = 1 +
floor(5 b / n) with b the customers strictly worse; FM = floor((F + M) / 2 + 0.5); the default
5 x 5 grid), and writes OUTPUT_DIR/customers.parquet with customer_id, recency, frequency,
monetary, R_score, F_score, M_score, FM_score, segment, which `large.py` compares with the
package's customer_segments before any timing counts. `duckdb_after_imports` is the DuckDB
statement run after importing what the command line imports; `duckdb_in_dagster` and
`spark_in_dagster` run the DuckDB statement and the bare Spark job as the body of one Dagster
asset, materialized in process as the command line runs its graph: the least any design of the
graph could cost. `io_floor` only reads the four columns (the floor under any engine) and
writes nothing.
"""

from __future__ import annotations

import os
import sys

# The default 5-point grid: R -> segment for FM = 1..5 (as bench.GRID_5).
GRID_5 = {
    5: ["New Customers", "Potential Loyalists", "Potential Loyalists", "Champions", "Champions"],
    4: ["Promising", "Potential Loyalists", "Potential Loyalists", "Loyal Customers", "Champions"],
    3: ["About to Sleep", "About to Sleep", "Need Attention", "Loyal Customers", "Loyal Customers"],
    2: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Cannot Lose Them"],
    1: ["Lost", "Hibernating", "At Risk", "Cannot Lose Them", "Cannot Lose Them"],
}
GRID_ROWS = [(r, fm, name) for r, row in GRID_5.items() for fm, name in enumerate(row, start=1)]
COLUMNS = ["customer_id", "transaction_date", "amount", "order_id"]
OUTPUT = "customers.parquet"


def duckdb_peer(source: str, output: str) -> None:
    """One SQL statement, two-level group-by (per order, then per customer)."""
    import duckdb

    grid = ", ".join(f"({r}, {fm}, '{name}')" for r, fm, name in GRID_ROWS)
    source_sql = source.replace("'", "''")
    target = os.path.join(output, OUTPUT).replace("'", "''")
    connection = duckdb.connect()
    connection.execute(f"SET threads = {os.cpu_count()}")
    connection.execute(f"""
    COPY (
    WITH tx AS (SELECT {", ".join(COLUMNS)} FROM read_parquet('{source_sql}')),
    ref AS (SELECT CAST(max(transaction_date) AS DATE) + 1 AS ref_day FROM tx),
    orders AS (
        SELECT customer_id, order_id, max(transaction_date) AS last_ts,
               sum(CAST(round_even(amount * 1000000, 0) AS BIGINT)) AS micro
        FROM tx
        WHERE customer_id IS NOT NULL AND isfinite(amount) AND amount > 0
          AND (order_id IS NULL OR NOT starts_with(order_id, 'C'))
        GROUP BY customer_id, order_id
    ),
    metrics AS (
        SELECT customer_id, (SELECT ref_day FROM ref) - CAST(max(last_ts) AS DATE) AS recency,
               count(*) AS frequency, sum(micro) AS micro
        FROM orders GROUP BY customer_id
    ),
    scores AS (
        SELECT *,
            1 + (5 * (rank() OVER (ORDER BY recency DESC) - 1)) // count(*) OVER () AS R_score,
            1 + (5 * (rank() OVER (ORDER BY frequency) - 1)) // count(*) OVER () AS F_score,
            1 + (5 * (rank() OVER (ORDER BY micro) - 1)) // count(*) OVER () AS M_score
        FROM metrics
    ),
    grid(r, fm, segment) AS (VALUES {grid})
    SELECT s.customer_id, s.recency, s.frequency, s.micro / 1e6 AS monetary,
           s.R_score, s.F_score, s.M_score, g.fm AS FM_score, g.segment
    FROM scores s JOIN grid g
      ON g.r = s.R_score AND g.fm = CAST(floor((s.F_score + s.M_score) / 2 + 0.5) AS INT)
    ) TO '{target}' (FORMAT parquet)
    """)


def polars_peer(source: str, output: str) -> None:
    """A lazy Polars query, streamed."""
    import polars as pl

    tx = pl.scan_parquet(source).select(COLUMNS)
    ref_day = tx.select(pl.col("transaction_date").max().dt.date()).collect().item()
    ref_day = ref_day + __import__("datetime").timedelta(days=1)
    kept = tx.filter(
        pl.col("customer_id").is_not_null()
        & pl.col("amount").is_finite()
        & (pl.col("amount") > 0)
        & (pl.col("order_id").is_null() | ~pl.col("order_id").str.starts_with("C"))
    )
    orders = kept.group_by("customer_id", "order_id").agg(
        pl.col("transaction_date").max().alias("last_ts"),
        (pl.col("amount") * 1_000_000)
        .round(0, mode="half_to_even")
        .cast(pl.Int64)
        .sum()
        .alias("micro"),
    )
    metrics = orders.group_by("customer_id").agg(
        (pl.lit(ref_day) - pl.col("last_ts").max().dt.date()).dt.total_days().alias("recency"),
        pl.len().cast(pl.Int64).alias("frequency"),
        pl.col("micro").sum(),
    )

    def score(expression: pl.Expr) -> pl.Expr:
        rank = expression.rank("min").cast(pl.Int64)
        return 1 + (5 * (rank - 1)) // pl.len()

    grid = pl.LazyFrame(
        {
            "R_score": [r for r, _, _ in GRID_ROWS],
            "FM_score": [fm for _, fm, _ in GRID_ROWS],
            "segment": [name for _, _, name in GRID_ROWS],
        },
        schema={"R_score": pl.Int64, "FM_score": pl.Int64, "segment": pl.String},
    )
    (
        metrics.with_columns(
            score(-pl.col("recency")).alias("R_score"),
            score(pl.col("frequency")).alias("F_score"),
            score(pl.col("micro")).alias("M_score"),
        )
        .with_columns(
            ((pl.col("F_score") + pl.col("M_score")) / 2 + 0.5)
            .floor()
            .cast(pl.Int64)
            .alias("FM_score")
        )
        .join(grid, on=["R_score", "FM_score"])
        .select(
            "customer_id",
            "recency",
            "frequency",
            (pl.col("micro") / 1e6).alias("monetary"),
            "R_score",
            "F_score",
            "M_score",
            "FM_score",
            "segment",
        )
        .sink_parquet(os.path.join(output, OUTPUT))
    )


def tutorial_peer(source: str, output: str) -> None:
    """pandas as the tutorials write it: the whole file in a frame, a named-aggregation
    group-by, ranks cut into five bins, and a row-wise apply for the segment. (Tutorials use
    `pd.qcut(x.rank(method="first"), 5)`, which splits tied customers; this peer cuts
    `rank(method="min")` so that its scores can be checked against ours.)"""
    import numpy as np
    import pandas as pd

    frame = pd.read_parquet(source)
    reference = frame["transaction_date"].max().normalize() + pd.Timedelta(days=1)
    kept = frame[
        frame["customer_id"].notna()
        & np.isfinite(frame["amount"])
        & (frame["amount"] > 0)
        & ~frame["order_id"].fillna("").str.startswith("C")
    ].copy()
    kept["micro"] = np.round(kept["amount"] * 1e6).astype("int64")
    rfm = kept.groupby("customer_id").agg(
        last=("transaction_date", "max"),
        frequency=("order_id", "nunique"),
        micro=("micro", "sum"),
    )
    rfm["recency"] = (reference - rfm["last"].dt.normalize()).dt.days
    rfm["monetary"] = rfm["micro"] / 1e6
    n = len(rfm)
    bins = [0, 1, 2, 3, 4, 5]
    for score, column, ascending in (
        ("R_score", "recency", False),
        ("F_score", "frequency", True),
        ("M_score", "micro", True),
    ):
        worse = rfm[column].rank(method="min", ascending=ascending) - 1
        rfm[score] = pd.cut(5 * worse / n, bins, right=False, labels=[1, 2, 3, 4, 5]).astype(int)
    rfm["FM_score"] = np.floor((rfm["F_score"] + rfm["M_score"]) / 2 + 0.5).astype(int)
    rfm["segment"] = rfm.apply(lambda row: GRID_5[row["R_score"]][row["FM_score"] - 1], axis=1)
    columns = [
        "recency",
        "frequency",
        "monetary",
        "R_score",
        "F_score",
        "M_score",
        "FM_score",
        "segment",
    ]
    rfm[columns].reset_index().to_parquet(os.path.join(output, OUTPUT), index=False)


def io_floor_peer(source: str, output: str) -> None:
    """Reading the four needed columns into memory: the floor under every engine."""
    import pyarrow.parquet as pq

    table = pq.read_table(source, columns=COLUMNS)
    assert table.num_rows >= 0


def spark_peer(source: str, output: str) -> None:
    """A bare PySpark job as a data engineer writes it: two group-bys, rank() windows, a join
    with the grid, Parquet out; `local[2]` and Spark's default memory, as the CLI's default."""
    from pyspark.sql import SparkSession, Window
    from pyspark.sql import functions as F

    spark = (
        SparkSession.builder.master(os.environ.get("PEER_SPARK_MASTER", "local[2]"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    tx = spark.read.parquet(source).select(*COLUMNS)
    ref_day = tx.agg(F.date_add(F.to_date(F.max("transaction_date")), 1)).first()[0]
    kept = tx.filter(
        F.col("customer_id").isNotNull()
        & ~F.isnan("amount")
        & (F.abs("amount") != float("inf"))
        & (F.col("amount") > 0)
        & (F.col("order_id").isNull() | ~F.col("order_id").startswith("C"))
    )
    orders = kept.groupBy("customer_id", "order_id").agg(
        F.max("transaction_date").alias("last_ts"),
        F.sum(F.bround(F.col("amount") * 1_000_000).cast("long")).alias("micro"),
    )
    metrics = orders.groupBy("customer_id").agg(
        F.datediff(F.lit(ref_day), F.to_date(F.max("last_ts"))).alias("recency"),
        F.count(F.lit(1)).alias("frequency"),
        F.sum("micro").alias("micro"),
    )
    n = metrics.count()

    def score(order) -> F.Column:
        return 1 + F.floor(5 * (F.rank().over(Window.orderBy(order)) - 1) / n).cast("int")

    grid = spark.createDataFrame(GRID_ROWS, "R_score int, FM_score int, segment string")
    (
        metrics.withColumn("R_score", score(F.desc("recency")))
        .withColumn("F_score", score(F.asc("frequency")))
        .withColumn("M_score", score(F.asc("micro")))
        .withColumn(
            "FM_score", F.floor((F.col("F_score") + F.col("M_score")) / 2 + 0.5).cast("int")
        )
        .join(F.broadcast(grid), ["R_score", "FM_score"])
        .select(
            "customer_id",
            "recency",
            "frequency",
            (F.col("micro") / 1e6).alias("monetary"),
            "R_score",
            "F_score",
            "M_score",
            "FM_score",
            "segment",
        )
        .write.mode("overwrite")
        .parquet(os.path.join(output, OUTPUT))
    )
    spark.stop()


def duckdb_after_imports_peer(source: str, output: str) -> None:
    """The DuckDB statement, after importing what `rfm-assets analyze` imports (Dagster,
    pandas, pyarrow, the package): the least any design of the command line could cost, since
    it runs the asset graph in Dagster on pandas (docs/architecture.md) and must at least
    read, aggregate, score and write what the statement does."""
    import pyarrow.parquet  # noqa: F401

    import rfm_assets.cli  # noqa: F401
    import rfm_assets.definitions  # noqa: F401
    import rfm_assets.runner  # noqa: F401

    duckdb_peer(source, output)


def _as_one_dagster_asset(peer, source: str, output: str) -> None:
    """`peer` as the body of one asset, materialized in process the way `rfm-assets analyze`
    runs its graph (the command line's imports, an ephemeral instance, console logs off): the
    least any design of the asset graph could cost, whatever its steps."""
    import dagster as dg

    import rfm_assets.cli  # noqa: F401
    import rfm_assets.runner  # noqa: F401

    @dg.asset
    def customer_segments() -> None:
        peer(source, output)

    result = dg.materialize(
        [customer_segments],
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
    )
    assert result.success


def duckdb_in_dagster_peer(source: str, output: str) -> None:
    """The DuckDB statement as one Dagster asset (`_as_one_dagster_asset`)."""
    _as_one_dagster_asset(duckdb_peer, source, output)


def spark_in_dagster_peer(source: str, output: str) -> None:
    """The bare PySpark job as one Dagster asset (`_as_one_dagster_asset`)."""
    _as_one_dagster_asset(spark_peer, source, output)


PEERS = {
    "duckdb": duckdb_peer,
    "duckdb_after_imports": duckdb_after_imports_peer,
    "polars": polars_peer,
    "tutorial": tutorial_peer,
    "io_floor": io_floor_peer,
    "spark": spark_peer,
    "duckdb_in_dagster": duckdb_in_dagster_peer,
    "spark_in_dagster": spark_in_dagster_peer,
}

if __name__ == "__main__":
    peer, source, output = sys.argv[1:4]
    os.makedirs(output, exist_ok=True)
    PEERS[peer](source, output)
