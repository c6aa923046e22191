"""The code location's Spark session: dagster-pyspark's lazy resource with our defaults,
imported only when a step asks for the session, so a pandas code location (its every step
process and every `load_asset_value`) never imports PySpark."""

import warnings
from typing import Any

import dagster as dg
from pydantic import Field

# PySpark 4.3 warns about pandas 3 whenever a SparkContext starts (pyspark.testing checks the
# version on import), whether or not anything is converted. The warning concerns pandas <->
# Spark conversions (createDataFrame(pandas), toPandas), which this package never makes:
# tables cross between the engines only as Parquet, and the Spark tests make both calls fail.
warnings.filterwarnings(
    "ignore", message="PySpark does not yet fully support pandas >= 3.0.0", category=FutureWarning
)

# Started only when a step asks for the session (engine: spark), so pandas runs never start
# a JVM. Point it at a cluster with spark.master in run config (see config/large_run_spark.yaml).
DEFAULT_SPARK_CONFIG = {
    "spark.master": "local[*]",
    "spark.app.name": "rfm_assets",
    # Calendar dates of time-zone-aware timestamps are taken in this zone.
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.log.level": "ERROR",
    # Standard Parquet timestamps (not legacy INT96), so pandas reads segmented_at as UTC.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # Dates and INT96 timestamps in Parquet are proleptic Gregorian, as pyarrow writes and
    # reads them (Spark would otherwise refuse or shift dates before 1582/1900).
    "spark.sql.parquet.datetimeRebaseModeInRead": "CORRECTED",
    "spark.sql.parquet.int96RebaseModeInRead": "CORRECTED",
    # spark.sql.shuffle.partitions is left out on purpose: the engine sets it from the
    # session's cores and the source's size (spark_compute.scale_shuffle_partitions) unless
    # it is set here or in run config.
}


class SparkResource(dg.ConfigurableResource):
    """A Spark session started on first use: dagster-pyspark's `LazyPySparkResource`, which
    this hands `spark_config` to and imports only then."""

    spark_config: dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_SPARK_CONFIG),
        description="Spark settings of the session (spark.master, spark.driver.memory, ...).",
    )

    @property
    def spark_session(self):
        from dagster_pyspark import LazyPySparkResource

        # getOrCreate underneath: every call returns the one session of this process.
        return LazyPySparkResource(spark_config=self.spark_config).spark_session


spark = SparkResource(spark_config=DEFAULT_SPARK_CONFIG)
