"""The resources both RFM instances share, bound once for the code location: the `spark`
session (started only if a step runs on Spark) and the `io_manager` storing the assets.

`shared_resources(base_dir="s3://bucket/rfm")` puts the assets elsewhere; an instance whose
defs.yaml sets `storage:` keeps its assets apart, under its own IO manager.
"""

import dagster as dg

from rfm_assets.component import shared_resources


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=shared_resources())
