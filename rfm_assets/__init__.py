"""RFM customer segmentation as a Dagster asset graph.

`from rfm_assets import defs; defs.load_asset_value("customer_segments")` returns the last
materialized customer table as a pandas DataFrame.
"""

from rfm_assets.definitions import defs
from rfm_assets.lists import identify_high_value_customers

__all__ = ["defs", "identify_high_value_customers"]
