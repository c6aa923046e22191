"""The Dagster code location: assets, job, weekly schedule and shared resources."""

import dagster as dg
from dagster_pyspark import LazyPySparkResource

from rfm_assets.assets import GROUP, RFM_ASSETS
from rfm_assets.io_manager import RFMParquetIOManager
from rfm_assets.settings import RFMSettings

rfm_job = dg.define_asset_job(
    "rfm_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Materialize the whole RFM graph: transactions to segment analytics.",
)

# Monday 06:00 UTC, so the week's segments are ready before the working day.
rfm_weekly_schedule = dg.ScheduleDefinition(
    name="rfm_weekly",
    job=rfm_job,
    cron_schedule="0 6 * * 1",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Refresh the RFM segments every Monday at 06:00 UTC.",
)

# Started only when a step asks for the session (engine: spark), so pandas runs never start
# a JVM. Point it at a cluster with spark.master in run config (see config/large_run_spark.yaml).
DEFAULT_SPARK_CONFIG = {
    "spark.master": "local[*]",
    "spark.app.name": "rfm_assets",
    # Calendar dates of time-zone-aware timestamps are taken in this zone.
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
}
spark = LazyPySparkResource(spark_config=DEFAULT_SPARK_CONFIG)

defs = dg.Definitions(
    assets=RFM_ASSETS,
    jobs=[rfm_job],
    schedules=[rfm_weekly_schedule],
    resources={
        "rfm_settings": RFMSettings(),
        "spark": spark,
        "io_manager": RFMParquetIOManager(spark=spark),
    },
)
