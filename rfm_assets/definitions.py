"""The package's own code location: the RFM graph on the bundled sample, by week.

A deployment declares its own instances with the `RFMSegmentation` component (see
`rfm_assets.component` and the README); this one is the demo that `dagster dev` shows and
that `from rfm_assets import defs; defs.load_asset_value("customer_segments")` reads.
"""

import dagster as dg

from rfm_assets.component import build_rfm_definitions
from rfm_assets.settings import RFMSettings
from rfm_assets.spark_resource import DEFAULT_SPARK_CONFIG, spark

__all__ = ["BUNDLED_WEEKS", "DEFAULT_SPARK_CONFIG", "defs", "spark"]

# The bundled sample runs from 2010-12-01 to 2011-12-09: its weeks (Mondays) to 2011-12-05.
BUNDLED_WEEKS = ("2010-11-29", "2011-12-12")

defs: dg.Definitions = build_rfm_definitions(
    RFMSettings(),
    weeks_start=BUNDLED_WEEKS[0],
    weeks_end=BUNDLED_WEEKS[1],
    # The sample's weeks are long past: nothing for a schedule to run until you point the
    # graph at your own data (RFMSegmentation), so it is deployed stopped.
    schedule_running=False,
    # The demo, and with the command line the only reader of the bundled sample.
    bundled_sample=True,
)
rfm_job = defs.resolve_job_def("rfm_job")
rfm_weekly_schedule = defs.resolve_schedule_def("rfm_weekly")
