"""The code location's Spark session: dagster-pyspark's lazy resource with our defaults."""

import re
import warnings
from typing import Optional

from dagster_pyspark import LazyPySparkResource

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
spark = LazyPySparkResource(spark_config=DEFAULT_SPARK_CONFIG)


_OUT_OF_MEMORY = re.compile(r"java\.lang\.OutOfMemoryError: ([^\r\n]+)")
_HEAP_TOO_SMALL = re.compile(r"System memory (\d+) must be at least (\d+)")
# What Py4J says when the JVM it talks to has died (the usual end of an out-of-memory kill).
_JVM_GONE = ("Answer from Java side is empty", "Error while sending or receiving",
             "Java gateway process exited")  # fmt: skip
_MEMORY_SETTINGS = (
    "raise spark.driver.memory (in local mode the driver computes everything; e.g. "
    "--spark-conf spark.driver.memory=8g, or spark_config of the spark resource) or, on a "
    "cluster, spark.executor.memory"
)


def memory_failure(text: str) -> Optional[str]:
    """The one-line message for a Spark failure whose cause is memory, found in the text of
    the error chain (Java stack traces included), or None when memory is not the cause."""
    found = _OUT_OF_MEMORY.search(text)
    if found:
        return (
            f"Spark ran out of memory (java.lang.OutOfMemoryError: {found.group(1).strip()}): "
            + _MEMORY_SETTINGS
        )
    found = _HEAP_TOO_SMALL.search(text)
    if found:
        have, need = (int(n) // 2**20 for n in found.groups())
        return (
            f"Spark cannot start: its JVM has {have} MiB of heap and needs at least {need} MiB: "
            + _MEMORY_SETTINGS
        )
    if any(marker in text for marker in _JVM_GONE):
        return (
            "Spark's JVM stopped in the middle of the step, usually out of memory: "
            + _MEMORY_SETTINGS
        )
    return None
