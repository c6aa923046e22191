"""What one week of history costs on disk: materialize one weekly partition of the graph on
synthetic data and print each asset's stored size (README, "History on disk").

    python benchmarks/storage_cost.py --rows 30000000 --customers 2000000
"""

import argparse
import tempfile
import time
from pathlib import Path

import dagster as dg

from rfm_assets.component import build_rfm_definitions
from rfm_assets.io_manager import RFMParquetIOManager
from rfm_assets.settings import RFMSettings
from rfm_assets.synthetic import generate_transactions

WEEK = "2024-11-25"  # inside the synthetic data's two years


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--rows", type=int, default=3_000_000)
    arguments.add_argument("--customers", type=int, default=200_000)
    arguments.add_argument("--seed", type=int, default=5)
    options = arguments.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "transactions.parquet"
        generate_transactions(
            options.rows, customers=options.customers, seed=options.seed
        ).to_parquet(source)
        store = Path(folder) / "store"
        definitions = build_rfm_definitions(
            RFMSettings(input_path=str(source), columns={"order_id": "order_id"}),
            weeks_start="2024-10-07",
            weeks_end="2024-12-30",
        )
        resources = {
            **definitions.resources,
            "io_manager": RFMParquetIOManager(base_dir=str(store)),
        }
        started = time.perf_counter()
        result = dg.materialize(
            [*definitions.assets, *definitions.asset_checks],
            partition_key=WEEK,
            resources=resources,
            instance=dg.DagsterInstance.ephemeral(),
        )
        seconds = time.perf_counter() - started
        print(f"{options.rows:,} rows, {options.customers:,} customers: week {WEEK} in "
              f"{seconds:.1f} s (success: {result.success})")  # fmt: skip
        for asset in sorted(store.iterdir()):
            week = asset / WEEK
            size = sum(f.stat().st_size for f in week.rglob("*") if f.is_file())
            print(
                f"{asset.name:<22} {size / 2**20:>9.1f} MiB a week "
                f"{52 * size / 2**30:>7.2f} GiB a year"
            )


if __name__ == "__main__":
    main()
