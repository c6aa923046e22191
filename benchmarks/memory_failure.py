"""Show what a Dagster run says when Spark runs out of memory, with a real out-of-memory error.

Materializes the graph with the Spark engine in `local[2]` and a small driver heap on a file
`large.py` wrote, then prints the failed step's error chain as the Dagster UI shows it:

    python benchmarks/memory_failure.py /tmp/rfm-large/large_30000000_2000000_seed42.parquet 512m

At 30M rows and 512m the rfm_scores step's write runs out of heap; the error the step ends
with is the one-line RFMError naming spark.driver.memory, not Py4J's Java stack trace.
"""

from __future__ import annotations

import argparse
import sys
import tempfile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a Parquet file with customer_id, transaction_date, "
                        "amount and order_id (benchmarks/large.py writes them)")  # fmt: skip
    parser.add_argument("driver_memory", help="spark.driver.memory, e.g. 512m")
    args = parser.parse_args()

    import dagster as dg
    from dagster_pyspark import LazyPySparkResource

    from rfm_assets.assets import RFM_ASSETS
    from rfm_assets.io_manager import RFMParquetIOManager
    from rfm_assets.settings import RFMSettings
    from rfm_assets.spark_resource import DEFAULT_SPARK_CONFIG

    spark = LazyPySparkResource(
        spark_config={
            **DEFAULT_SPARK_CONFIG,
            "spark.master": "local[2]",
            "spark.driver.memory": args.driver_memory,
        }
    )
    settings = RFMSettings(
        input_path=args.file, engine="spark", columns={"order_id": "order_id", "amount": "amount"}
    )
    with tempfile.TemporaryDirectory() as store:
        result = dg.materialize(
            RFM_ASSETS,
            resources={
                "rfm_settings": settings,
                "spark": spark,
                "io_manager": RFMParquetIOManager(base_dir=store, spark=spark),
            },
            raise_on_error=False,
        )
    print(f"run succeeded: {result.success}")
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None:
                print(f"step {event.step_key}: {error.message.strip().splitlines()[0]}")
                error = error.cause or error.context
    return 0


if __name__ == "__main__":
    sys.exit(main())
