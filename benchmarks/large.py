"""Whole-process benchmark on the large data shape: `rfm-assets analyze` against its peers.

Run from the repository root (duckdb, polars, pyspark and Java 17 installed):

    python benchmarks/large.py --rows 1000000,10000000 --customers 100000,1000000 --repeats 3

Data: `rfm_assets.synthetic.generate_transactions(rows, customers, seed=42, string_ids=True,
cancelled_share=0.01, one_time_share=0.59)`: every customer buys, 59% of them once, the rest
by a heavy-tailed weight; string customer ids (`C0012345`) and order ids, 1% refunded orders
(`C` prefix, negative amounts), 1% of lines without a customer id; written to Parquet once and
kept in --data-dir for the next invocation (not timed).

Each repeat runs every variant once, interleaved, as a fresh process timed from outside
(imports, JVM start-up and writing the result included). Peak memory is the largest sum of the
resident set sizes of the process and all its descendants (the JVM included for Spark),
sampled every 50 ms. The first repeat's output of every peer is compared with
`rfm-assets analyze`'s customer_segments (every customer, R/F/M values, scores and segment);
a peer that disagrees stops the benchmark, so no time is quoted for a different answer.

Variants:
- rfm:        rfm-assets analyze --input F --output O --order-id order_id --amount amount
- rfm_spark:  the same with --engine spark --spark-master local[2] (Spark's default memory)
- rfm_spark_parallel_gc: rfm_spark with the driver's JVM on the parallel garbage collector
              in place of the JVM's default (G1); not in the default --variants
- rfm_spark_200: rfm_spark with Spark's fixed 200 shuffle partitions (adaptive execution
              merging them by size) in place of the engine's scaled default; not in the
              default --variants
- rfm_clv, rfm_spark_clv: rfm and rfm_spark with --clv (customer_lifetime_value too); their
              peer is the run without it, so the ratio is what lifetime value adds; not in the
              default --variants
- duckdb, duckdb_after_imports, polars, tutorial, io_floor, spark: benchmarks/peers.py (see its
              docstring); duckdb_after_imports is the least the command line could cost
- <rfm variant>@base: that variant run from another checkout of the repository (--baseline,
              e.g. `git worktree add /tmp/base <commit>`) with this checkout's environment;
              its peer is the same variant here, so its ratio is before / after a change
- duckdb_in_dagster, spark_in_dagster: the DuckDB statement and the bare Spark job each as
              one Dagster asset run in process: the least any design of the graph could cost;
              not in the default --variants

Writes benchmarks/results/large.json (table, per-run figures, agreement, machine, commit).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import psutil

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "large.json"
SEED = 42
VARIANTS = (
    "rfm",
    "duckdb",
    "duckdb_after_imports",
    "polars",
    "tutorial",
    "io_floor",
    "rfm_spark",
    "spark",
    "rfm_spark_200",
    "rfm_spark_parallel_gc",
    "rfm_clv",
    "rfm_spark_clv",
    "duckdb_in_dagster",
    "spark_in_dagster",
)
# The variants run unless --variants names others.
DEFAULT = ("rfm", "duckdb", "duckdb_after_imports", "polars", "tutorial", "io_floor",
           "rfm_spark", "spark")  # fmt: skip
PEERS = ("duckdb", "duckdb_after_imports", "polars", "tutorial", "io_floor", "spark",
         "duckdb_in_dagster", "spark_in_dagster")  # fmt: skip
KEY = ["customer_id"]
COMPARED = [
    "recency",
    "frequency",
    "monetary",
    "R_score",
    "F_score",
    "M_score",
    "FM_score",
    "segment",
]


def data_file(rows: int, customers: int, data_dir: Path) -> Path:
    path = data_dir / f"large_{rows}_{customers}_seed{SEED}.parquet"
    if not path.exists():
        from rfm_assets.synthetic import generate_transactions

        frame = generate_transactions(
            rows, customers, seed=SEED, string_ids=True, cancelled_share=0.01, one_time_share=0.59
        )
        frame.to_parquet(path.with_suffix(".tmp"), index=False)
        del frame
        os.replace(path.with_suffix(".tmp"), path)
    return path


def command(variant: str, source: Path, output: Path, baseline: Optional[Path] = None) -> list[str]:
    variant, at_base = variant.removesuffix("@base"), variant.endswith("@base")
    if at_base and baseline is None:
        raise SystemExit(f"{variant}@base: give --baseline, a checkout to run it from")
    if variant.startswith("rfm"):
        rfm = str(Path(sys.executable).with_name("rfm-assets"))
        # The other checkout's package comes first on the path, ahead of the editable install.
        line = [
            *(["env", f"PYTHONPATH={baseline}"] if at_base else []),
            rfm,
            "analyze",
            "--input",
            str(source),
            "--output",
            str(output),
            "--order-id",
            "order_id",
            "--amount",
            "amount",
        ]
        if variant.startswith("rfm_spark"):
            line += ["--engine", "spark", "--spark-master", "local[2]"]
        if variant.endswith("_clv"):
            line.append("--clv")
        if variant == "rfm_spark_200":  # Spark's own default, with adaptive merging by size
            line += ["--spark-conf", "spark.sql.shuffle.partitions=200", "--spark-conf",
                     "spark.sql.adaptive.coalescePartitions.parallelismFirst=false"]  # fmt: skip
        if variant == "rfm_spark_parallel_gc":
            line += ["--spark-conf", "spark.driver.extraJavaOptions=-XX:+UseParallelGC"]
        return line
    return [sys.executable, str(HERE / "peers.py"), variant, str(source), str(output)]


def run_once(line: list[str]) -> dict:
    """Wall time and peak resident memory of a process tree, sampled every 50 ms."""
    start = time.perf_counter()
    process = psutil.Popen(line, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            total = 0
            for member in tree:
                try:
                    total += member.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    out, err = process.communicate()
    return {
        "seconds": seconds,
        "peak_mib": peak / 2**20,
        "exit": process.returncode,
        "error": (err or out).strip().splitlines()[-1:] if process.returncode else [],
    }


def read_result(variant: str, output: Path):
    import pandas as pd

    if variant.startswith("rfm"):
        frame = pd.read_parquet(output / "customer_segments.parquet")
    else:
        frame = pd.read_parquet(output / "customers.parquet")
    frame = frame[KEY + COMPARED].copy()
    frame["customer_id"] = frame["customer_id"].astype(str)
    frame["segment"] = frame["segment"].astype(str)
    for name in ("recency", "frequency", "R_score", "F_score", "M_score", "FM_score"):
        frame[name] = frame[name].astype("int64")
    frame["monetary"] = (frame["monetary"].astype("float64") * 1e6).round().astype("int64")
    return frame.sort_values("customer_id", ignore_index=True)


def agreement(ours, theirs) -> dict:
    both = ours.merge(theirs, on=KEY, how="outer", suffixes=("", "_peer"), indicator=True)
    matched = both[both["_merge"] == "both"]
    mismatches = {c: int((matched[c] != matched[c + "_peer"]).sum()) for c in COMPARED}
    return {
        "customers": len(ours),
        "customers_peer": len(theirs),
        "unmatched": int((both["_merge"] != "both").sum()),
        "mismatches": mismatches,
        "agree": len(ours) == len(theirs) == len(matched) and not any(mismatches.values()),
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| rows | customers | variant | median s | min s | max s | peak MiB | time vs duckdb "
        "| time vs peer | memory vs tutorial |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.get("failed"):
            lines.append(
                f"| {r['rows']:,} | {r['customers']:,} | {r['variant']} | failed: "
                f"{r['failed']} | | | | | | |"
            )
            continue
        vs_peer = f"{r['vs_peer']:.2f} ({r['peer']})" if r.get("vs_peer") else ""
        vs_duckdb = f"{r['vs_duckdb']:.2f}" if r.get("vs_duckdb") else ""
        lines.append(
            f"| {r['rows']:,} | {r['customers']:,} | {r['variant']} | {r['median_s']:.2f} "
            f"| {r['min_s']:.2f} | {r['max_s']:.2f} | {r['peak_mib']:,.0f} "
            f"| {vs_duckdb} | {vs_peer} | {r['memory_vs_tutorial']:.2f} |"
        )
    return "\n".join(lines)


def benchmark(sizes, customers, repeats, variants, data_dir: Path, results_file: Path,
              baseline: Optional[Path] = None) -> None:  # fmt: skip
    sys.path.insert(0, str(HERE))
    from bench import code_version, machine_info

    results, checks = [], {}
    started = code_version()
    for rows, buyers in zip(sizes, customers):
        source = data_file(rows, buyers, data_dir)
        runs = {v: [] for v in variants}
        failed = {}
        for repeat in range(repeats):
            for variant in variants:
                if variant in failed:
                    continue
                output = Path(tempfile.mkdtemp(prefix=f"rfm-large-{variant}-"))
                try:
                    run = run_once(command(variant, source, output, baseline))
                    if run["exit"] != 0:
                        failed[variant] = " ".join(run["error"])[:300] or f"exit {run['exit']}"
                        print(f"  {variant} failed: {failed[variant]}", flush=True)
                        continue
                    if repeat == 0 and variant != "io_floor":
                        checks.setdefault(rows, {})[variant] = read_result(variant, output)
                finally:
                    shutil.rmtree(output, ignore_errors=True)
                runs[variant].append(run)
                print(
                    f"  {rows:,} rows, repeat {repeat + 1}/{repeats}: {variant:<9} "
                    f"{run['seconds']:8.2f} s {run['peak_mib']:8,.0f} MiB",
                    flush=True,
                )
            if repeat == 0:
                tables = checks.get(rows, {})
                reference = tables.get("rfm")
                if reference is None:
                    raise SystemExit("rfm-assets analyze failed: nothing to compare with")
                checks[rows] = {
                    name: agreement(reference, table)
                    for name, table in tables.items()
                    if name != "rfm"
                }
                print(f"  agreement with rfm: {json.dumps(checks[rows])}", flush=True)
                if not all(check["agree"] for check in checks[rows].values()):
                    raise SystemExit("a variant disagrees with rfm-assets analyze; no times")
        medians = {v: statistics.median(r["seconds"] for r in runs[v]) for v in variants if runs[v]}
        tutorial_peak = max((r["peak_mib"] for r in runs.get("tutorial", [])), default=None)
        for variant in variants:
            if variant in failed and not runs[variant]:
                results.append(
                    {
                        "rows": rows,
                        "customers": buyers,
                        "variant": variant,
                        "failed": failed[variant],
                    }
                )
                continue
            seconds = [r["seconds"] for r in runs[variant]]
            peak = max(r["peak_mib"] for r in runs[variant])
            peer = {"rfm": "duckdb", "rfm_spark": "spark", "rfm_spark_200": "rfm_spark",
                    "rfm_spark_parallel_gc": "rfm_spark",
                    "rfm_clv": "rfm", "rfm_spark_clv": "rfm_spark",
                    "spark_in_dagster": "spark"}.get(variant)  # fmt: skip
            if variant.endswith("@base"):  # before a change, against after it
                peer = variant.removesuffix("@base")
            results.append(
                {
                    "rows": rows,
                    "customers": buyers,
                    "variant": variant,
                    "seconds": seconds,
                    "median_s": medians[variant],
                    "min_s": min(seconds),
                    "max_s": max(seconds),
                    "peak_mib": peak,
                    "peak_mib_each": [r["peak_mib"] for r in runs[variant]],
                    "vs_duckdb": medians[variant] / medians["duckdb"]
                    if "duckdb" in medians
                    else None,
                    "peer": peer,
                    "vs_peer": medians[variant] / medians[peer] if peer in medians else None,
                    "memory_vs_tutorial": peak / tutorial_peak if tutorial_peak else float("nan"),
                }
            )
    table = markdown(results)
    print("\n" + table)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(
        json.dumps(
            {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": machine_info(),
                "code_at_start": started,
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
    print(f"\nwrote {results_file}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,10000000")
    parser.add_argument(
        "--customers", default="100000,1000000", help="customers for each size, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v in DEFAULT))
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "rfm-large"))
    parser.add_argument("--results", default=str(RESULTS), help="the JSON file to write")
    parser.add_argument("--baseline", type=Path, help="the checkout the @base variants run from")
    args = parser.parse_args()
    sizes = [int(n) for n in args.rows.split(",")]
    customers = [int(n) for n in args.customers.split(",")]
    if len(customers) != len(sizes):
        raise SystemExit("--customers: give one number for each of --rows")
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = sorted({v.removesuffix("@base") for v in variants} - set(VARIANTS))
    unknown += [v for v in variants if v.endswith("@base") and not v.startswith("rfm")]
    if unknown or "rfm" not in variants:  # what every other variant is checked against
        raise SystemExit(f"--variants: rfm is required; known: {VARIANTS}")
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    benchmark(sizes, customers, args.repeats, variants, data_dir, Path(args.results),
              args.baseline and args.baseline.resolve())  # fmt: skip


if __name__ == "__main__":
    main()
