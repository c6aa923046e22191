"""What one fused scan would save the pandas engine: the design study behind the local plan.

    python benchmarks/fused_plan.py --rows 10000000 --customers 1000000 [--repeats 3]
        [--data-dir /tmp/rfm-large] [--results benchmarks/results/fused_plan_10m.json]

On the `large.py` file of that size (made there if missing), in one process, each repeat
times three ways from the source to the per-customer metrics and the row account, under the
default settings (returns_policy exclude, no analysis window, cancellation prefix "C"):

- `steps`: what the graph runs today: `pandas_read.read_transactions` (the canonical pandas
  frame), `pandas_compute.prepare_transactions` (the cleaning rules on numpy masks, the kept
  rows and their distinct customers) and `pandas_compute.compute_metrics` (DuckDB over the
  kept rows).
- `fused_arrow`: the same reader, then DuckDB over the canonical columns, no kept frame made:
  a small scan for the reference date, one that counts the rows by their first exclusion
  reason and the kept rows' distinct customers, and one that aggregates the kept rows per
  order and per customer (as the DuckDB peer of `peers.py` does).
- `fused_parquet`: DuckDB reads the Parquet file itself (the canonical read rules in SQL:
  only whitespace trimming of the ids is needed for this file), then the same statements.

Before any timing counts, each fused way's metrics and row account are checked equal to the
steps' (customer ids, recency, frequency, monetary to the micro-unit, first purchase dates,
every reason's count, the kept customers). Times are medians; the three ways run in turn
within each repeat.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# The default rules this study fuses, in EXCLUSION_REASONS order (no duplicate, window or
# weekly rule under the defaults; the net rule applies only under returns_policy net).
FUSED_REASONS = (
    "missing_customer_id",
    "invalid_amount",
    "date_out_of_range",
    "on_or_after_reference_date",
    "cancelled_order",
    "non_positive_amount",
)

DAY = "CAST(CAST(transaction_date AS DATE) - DATE '1970-01-01' AS INTEGER)"
RANGE_SQL = f"""
    SELECT min({DAY}) FILTER (WHERE {DAY} BETWEEN $low AND $high),
           max({DAY}) FILTER (WHERE {DAY} BETWEEN $low AND $high),
           count(*) FILTER (WHERE isfinite(amount) AND abs(amount) > $max_abs)
    FROM lines
"""
REASONS_SQL = f"""
    SELECT customer_id, order_id, amount, {DAY} AS day,
           CASE WHEN customer_id IS NULL THEN 1
                WHEN amount IS NULL OR NOT isfinite(amount) THEN 2
                WHEN {DAY} NOT BETWEEN $low AND $high THEN 3
                WHEN {DAY} >= $ref THEN 4
                WHEN starts_with(CAST(order_id AS VARCHAR), $prefix) THEN 5
                WHEN amount <= $zero THEN 6
           END AS reason
    FROM lines
"""
# Rows by first reason, and the kept rows' distinct customers (the count the metrics step's
# check compares with its rows): one scan with no grouping by customer.
COUNTS_SQL = f"""
    SELECT reason, count(*) AS n, count(DISTINCT customer_id) AS customers
    FROM ({REASONS_SQL}) GROUP BY reason
"""
# Per order, then per customer, over the kept rows only (as the DuckDB peer aggregates).
KEPT_SQL = f"""
    WITH orders AS (
        SELECT customer_id, sum(CAST(round_even(amount * 1000000, 0) AS BIGINT)) AS micro,
               max(day) AS last_day, min(day) AS first_day
        FROM ({REASONS_SQL}) WHERE reason IS NULL GROUP BY customer_id, order_id
    )
    SELECT customer_id, CAST(sum(micro) AS BIGINT) AS micro, max(last_day) AS last_day,
           min(first_day) AS first_day, count(*) AS frequency
    FROM orders GROUP BY customer_id
"""
# The canonical columns of a typed Parquet file, read by DuckDB: ids trimmed, a blank id none.
PARQUET_LINES = """
    SELECT NULLIF(trim(customer_id), '') AS customer_id, transaction_date, amount,
           order_id FROM read_parquet('{path}')
"""


def steps(path: str) -> tuple[dict, object]:
    from rfm_assets.engines import pandas_compute, pandas_read
    from rfm_assets.settings import RFMSettings

    spec = RFMSettings(input_path=path, columns={"order_id": "order_id"}).run_spec()
    frame, _ = pandas_read.read_transactions(spec.source_path, spec.columns)
    kept, account = pandas_compute.prepare_transactions(frame, consume=True)
    del frame
    metrics = pandas_compute.compute_metrics(kept, account.reference_date)
    return account.rows_excluded, metrics


def fused(connection, lines_sql: str) -> tuple[dict, object]:
    """The row account and per-customer totals of `lines_sql`, with no kept frame."""
    from rfm_assets.engines.shared import (
        EARLIEST_VALID_DATE,
        LARGEST_ZERO_AMOUNT,
        LATEST_VALID_DATE,
        MAX_ABS_AMOUNT,
        day_number,
    )

    connection.sql(f"CREATE OR REPLACE TEMP VIEW lines AS {lines_sql}")
    bounds = {"low": day_number(EARLIEST_VALID_DATE), "high": day_number(LATEST_VALID_DATE)}
    ((first, last, too_large),) = connection.sql(
        RANGE_SQL, params={**bounds, "max_abs": MAX_ABS_AMOUNT}
    ).fetchall()
    assert too_large == 0 and first is not None
    ref = last + 1
    parameters = {**bounds, "ref": ref, "prefix": "C", "zero": LARGEST_ZERO_AMOUNT}
    by_reason = {r: (n, c) for r, n, c in connection.sql(COUNTS_SQL, params=parameters).fetchall()}
    counts = {reason: by_reason.get(i + 1, (0,))[0] for i, reason in enumerate(FUSED_REASONS)}
    counts["customers"] = by_reason[None][1]
    totals = connection.sql(KEPT_SQL, params=parameters).to_arrow_table()
    return counts, (totals, ref)


def canonical_lines(path: str):
    """The canonical columns as Arrow (the reader's rules), no kept frame made."""
    import pyarrow as pa

    from rfm_assets.engines import pandas_read
    from rfm_assets.settings import RFMSettings

    spec = RFMSettings(input_path=path, columns={"order_id": "order_id"}).run_spec()
    frame, _ = pandas_read.read_transactions(spec.source_path, spec.columns)
    return pa.table({name: pa.array(frame[name]) for name in frame.columns})


def same(reference: tuple, candidate: tuple) -> dict:
    """Mismatches between the steps' (account, metrics) and a fused way's."""
    import numpy as np

    counts, metrics = reference
    fused_counts, (totals, ref) = candidate
    kept = totals.filter(totals["frequency"].to_numpy() > 0).sort_by("customer_id")
    got = {
        "customer_id": kept["customer_id"].to_pylist(),
        "recency": (ref - kept["last_day"].to_numpy()).tolist(),
        "frequency": kept["frequency"].to_numpy().tolist(),
        "micro": kept["micro"].to_numpy().tolist(),
        "first_day": kept["first_day"].to_numpy().tolist(),
    }
    want_metrics = metrics.sort_values("customer_id")
    epoch = np.datetime64("1970-01-01")
    want = {
        "customer_id": want_metrics["customer_id"].tolist(),
        "recency": want_metrics["recency"].tolist(),
        "frequency": want_metrics["frequency"].tolist(),
        "micro": np.rint(want_metrics["monetary"].to_numpy() * 1e6).astype(np.int64).tolist(),
        "first_day": (
            (want_metrics["first_purchase_date"].to_numpy() - epoch) // np.timedelta64(1, "D")
        ).tolist(),
    }
    mismatches = {name: sum(a != b for a, b in zip(got[name], want[name])) + abs(
        len(got[name]) - len(want[name])) for name in want}  # fmt: skip
    for reason in FUSED_REASONS:
        mismatches[f"rows {reason}"] = abs(fused_counts[reason] - counts.get(reason, 0))
    mismatches["kept customers"] = abs(fused_counts["customers"] - len(metrics))
    mismatches["rows of other reasons"] = sum(
        n for reason, n in counts.items() if reason not in FUSED_REASONS
    )
    return mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default="/tmp/rfm-large")
    parser.add_argument("--results", default=None)
    args = parser.parse_args()

    import duckdb
    from large import data_file  # the same file as the whole-process benchmark

    path = str(data_file(args.rows, args.customers, Path(args.data_dir)))
    connection = duckdb.connect()

    def arrow_way():
        connection.register("lines_arrow", canonical_lines(path))
        try:
            return fused(connection, "SELECT * FROM lines_arrow")
        finally:
            connection.unregister("lines_arrow")

    ways = {
        "steps": lambda: steps(path),
        "fused_arrow": arrow_way,
        "fused_parquet": lambda: fused(
            connection, PARQUET_LINES.format(path=path.replace("'", "''"))
        ),
    }
    reference = ways["steps"]()
    agreement = {name: same(reference, ways[name]()) for name in ("fused_arrow", "fused_parquet")}
    print(json.dumps(agreement, indent=1))
    if any(any(agreement[name].values()) for name in agreement):
        raise SystemExit("a fused way disagrees with the steps: no timing")
    del reference
    seconds = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            start = time.perf_counter()
            result = way()
            seconds[name].append(round(time.perf_counter() - start, 3))
            del result
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    for name in ways:
        ratio = medians[name] / medians["steps"]
        print(f"{name:14s} median {medians[name]:6.2f} s ({ratio:.2f}x the steps) {seconds[name]}")
    if args.results:
        Path(args.results).write_text(json.dumps({
            "command": "python benchmarks/fused_plan.py " + " ".join(sys.argv[1:]),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "rows": args.rows, "customers": args.customers, "agreement": agreement,
            "seconds": seconds, "medians": medians,
        }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
