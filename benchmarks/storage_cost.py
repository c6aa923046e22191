"""What weekly history costs on disk: materialize the first week of a weekly graph on
synthetic data from scratch, then the weeks after it as one range run, and print what each
asset stores per week, what a further week adds against the first, and the weeks'
transactions together against one copy of the kept rows (README, "History on disk").

    python benchmarks/storage_cost.py --rows 3000000 --customers 200000 --weeks 52
    python benchmarks/storage_cost.py --rows 30000000 --customers 2000000 --weeks 4

One copy of the kept rows is what a from-scratch week stores as transactions: the last
week's, materialized alone in a store of its own.

`--range-weeks N` runs the further weeks as ranges of at most N weeks (a range step writes
each week as it computes it and makes the weeks current once all have passed, so a range's
memory is one week's). Each run is its own process; its peak memory is printed with it.
"""

import argparse
import datetime as dt
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg

from rfm_assets.assets.core import SEGMENTED_AT_TAG
from rfm_assets.component import build_rfm_definitions
from rfm_assets.io_manager import RFMParquetIOManager
from rfm_assets.settings import RFMSettings
from rfm_assets.synthetic import generate_transactions

# The synthetic log runs 2023-01-01 .. 2024-12-31: a year of Monday weeks inside it.
FIRST_WEEK = dt.date(2023, 12, 25)
WEEKS_END = "2024-12-30"


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def materialize(source: Path, store: Path, weeks: tuple[str, str]) -> dict:
    """Materialize `weeks` (first, last) in a process of its own: its wall time, its success
    and its peak memory."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_materialize, (source, store, weeks))


def peak_rss_mib() -> int:
    """This process's peak resident memory (VmHWM: getrusage's maxrss on Linux carries the
    parent's peak over a spawn, and the parent built the whole source)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def _materialize(source: Path, store: Path, weeks: tuple[str, str]) -> dict:
    definitions = build_rfm_definitions(
        RFMSettings(input_path=str(source), columns={"order_id": "order_id"}, pictures=False),
        weeks_start=FIRST_WEEK.isoformat(),
        weeks_end=WEEKS_END,
    )
    resources = {**definitions.resources, "io_manager": RFMParquetIOManager(base_dir=str(store))}
    tags = {SEGMENTED_AT_TAG: "2025-01-01T00:00:00+00:00"}
    if weeks[0] != weeks[1]:
        tags |= {"dagster/asset_partition_range_start": weeks[0],
                 "dagster/asset_partition_range_end": weeks[1]}  # fmt: skip
    started = time.perf_counter()
    result = dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        partition_key=weeks[0] if weeks[0] == weeks[1] else None,
        tags=tags,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    return {
        "weeks": list(weeks),
        "seconds": round(time.perf_counter() - started, 1),
        "succeeded": result.success,
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--rows", type=int, default=3_000_000)
    arguments.add_argument("--customers", type=int, default=200_000)
    arguments.add_argument("--weeks", type=int, default=52)
    arguments.add_argument("--seed", type=int, default=5)
    arguments.add_argument("--range-weeks", type=int, default=52, help="weeks per range run")
    arguments.add_argument("--json", help="write the figures to this file")
    options = arguments.parse_args()
    weeks = [(FIRST_WEEK + dt.timedelta(weeks=i)).isoformat() for i in range(options.weeks)]
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "transactions.parquet"
        generate_transactions(
            options.rows, customers=options.customers, seed=options.seed
        ).to_parquet(source)
        store, alone = Path(folder) / "store", Path(folder) / "alone"
        runs = [materialize(source, store, (weeks[0], weeks[0]))]
        for start in range(1, len(weeks), options.range_weeks):
            chunk = weeks[start : start + options.range_weeks]
            runs.append(materialize(source, store, (chunk[0], chunk[-1])))
        alone_run = materialize(source, alone, (weeks[-1], weeks[-1]))
        for run in [*runs, alone_run]:
            print(json.dumps(run))
        per_week = {
            asset.name: {week: size_of(asset / week) for week in weeks}
            for asset in sorted(store.iterdir()) if asset.is_dir()
        }  # fmt: skip
        one_copy = size_of(alone / "transactions" / weeks[-1])
    transactions = per_week["transactions"]
    further = [transactions[week] / transactions[weeks[0]] for week in weeks[1:]]
    figures = {
        "rows": options.rows,
        "customers": options.customers,
        "weeks": options.weeks,
        "range_weeks": options.range_weeks,
        "succeeded": all(run["succeeded"] for run in [*runs, alone_run]),
        "first_week_seconds": runs[0]["seconds"],
        "further_weeks_seconds": round(sum(run["seconds"] for run in runs[1:]), 1),
        "runs": runs,
        "one_copy_run": alone_run,
        "first_week_mib": {a: round(s[weeks[0]] / 2**20, 2) for a, s in per_week.items()},
        "further_week_median_mib": {
            a: round(statistics.median(s[w] for w in weeks[1:]) / 2**20, 2)
            for a, s in per_week.items()
            if len(weeks) > 1
        },  # fmt: skip
        "further_week_transactions_to_first_max": round(max(further, default=0.0), 3),
        "further_week_transactions_to_first_median": round(
            statistics.median(further) if further else 0.0, 3
        ),
        "transactions_all_weeks_mib": round(sum(transactions.values()) / 2**20, 1),
        "one_copy_of_kept_rows_mib": round(one_copy / 2**20, 1),
        "transactions_all_weeks_to_one_copy": round(sum(transactions.values()) / one_copy, 3),
    }
    print(json.dumps(figures, indent=2))
    if options.json:
        Path(options.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
