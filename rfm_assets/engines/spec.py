"""What the engines read of a run's settings, as plain values: no Dagster, no pydantic.

`RFMSettings.run_spec()` (rfm_assets.settings) makes a `RunSpec` from the validated settings;
the engines take that and nothing else, so they import, run and are tested without Dagster.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Optional

# The fields of each input level, which the other level may not map.
TRANSACTION_FIELDS = ("transaction_date", "amount", "quantity", "unit_price", "order_id")
CUSTOMER_FIELDS = ("recency", "last_purchase_date", "first_purchase_date", "frequency", "monetary")


@dataclass(frozen=True)
class SourceColumns:
    """The source column behind each canonical field, resolved for one input.

    `level` says which fields apply: transaction lines (transaction_date, amount or quantity
    and unit_price, order_id) or one row per customer (recency or last_purchase_date,
    first_purchase_date, frequency, monetary).
    """

    customer_id: str
    transaction_date: Optional[str] = None
    amount: Optional[str] = None
    quantity: Optional[str] = None
    unit_price: Optional[str] = None
    order_id: Optional[str] = None
    recency: Optional[str] = None
    last_purchase_date: Optional[str] = None
    first_purchase_date: Optional[str] = None
    frequency: Optional[str] = None
    monetary: Optional[str] = None
    level: str = "transactions"
    # Read every column of the source, not only the mapped ones: drop_duplicate_rows compares
    # whole lines.
    every_column: bool = False

    @property
    def mapping(self) -> dict[str, Optional[str]]:
        """Canonical field -> source column (None where not used)."""
        fields = TRANSACTION_FIELDS if self.level == "transactions" else CUSTOMER_FIELDS
        return {"customer_id": self.customer_id} | {f: getattr(self, f) for f in fields}

    @property
    def date_fields(self) -> list[str]:
        """Canonical fields read as dates."""
        dates = ("transaction_date", "last_purchase_date", "first_purchase_date")
        return [f for f in dates if self.mapping.get(f)]

    @property
    def number_fields(self) -> list[str]:
        """Canonical fields read as numbers."""
        numbers = ("amount", "quantity", "unit_price", "recency", "frequency", "monetary")
        return [f for f in numbers if self.mapping.get(f)]

    @property
    def needed(self) -> list[str]:
        """The source columns to read, each once, in a stable order."""
        return list(dict.fromkeys(n for n in self.mapping.values() if n))


@dataclass(frozen=True)
class RunSpec:
    """One run's settings as the engines read them (see RFMSettings for each field's meaning).

    `columns` maps a file source (the bundled sample has its own column names);
    `table_columns` maps a table another asset produced.
    """

    source_path: str
    input_path: Optional[str]
    input_level: str
    columns: SourceColumns
    table_columns: SourceColumns
    reference_date: Optional[dt.date]
    analysis_period_days: Optional[int]
    valid_dates: tuple[dt.date, dt.date]
    returns_policy: str
    cancelled_order_prefix: str
    min_frequency: Optional[int]
    exclude_recent_days: Optional[int]
    scale: int
    weights: tuple[float, float, float]
    fixed_cut_points: Optional[dict[str, list[float]]]
    k_range: tuple[int, int]
    cluster_sample_size: int
    cluster_seed: int
    cluster_model_path: Optional[str]
    cluster_features: tuple[str, ...]
    segmentation_method: str
    high_value_share: float
    high_value_by: str
    sheet: Optional[str] = None
