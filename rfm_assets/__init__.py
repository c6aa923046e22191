"""RFM customer segmentation as a Dagster asset graph.

`from rfm_assets import defs; defs.load_asset_value("customer_segments")` returns the last
materialized customer table as a pandas DataFrame; `rfm_assets.run(settings)` runs the same
graph in this process and returns its tables.
"""

from rfm_assets.lists import identify_high_value_customers

__all__ = ["RFMSegmentationEngine", "defs", "identify_high_value_customers", "run"]


def __getattr__(name: str):
    # The code location is built on first use, so that the engines, the CLI's other commands
    # and `rfm_assets.run` import without building (or importing) the Dagster graph.
    if name == "defs":
        from rfm_assets.definitions import defs

        return defs
    if name == "run":
        from rfm_assets.runner import run

        return run
    if name == "RFMSegmentationEngine":
        from rfm_assets.frames import RFMSegmentationEngine

        return RFMSegmentationEngine
    raise AttributeError(f"module 'rfm_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    # Dagster finds a module's Definitions by walking dir(module): listing the lazy names
    # lets `dagster dev -m rfm_assets` find `defs` (and build it only then).
    return sorted({*globals(), *__all__})
