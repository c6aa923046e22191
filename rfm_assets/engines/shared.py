"""Rules both engines share verbatim: input checks, cut points, and the analytics table.

Each engine computes the large per-row and per-customer work natively and hands small
summaries (a few numbers per score or per segment) to these functions, so the published
numbers and messages cannot drift apart between engines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rfm_assets.contract import MICRO_UNITS
from rfm_assets.errors import RFMInputError
from rfm_assets.segments import SegmentGrid
from rfm_assets.settings import SourceColumns

# Per dimension: is a larger value better? (recency: smaller is better)
HIGHER_IS_BETTER = {"recency": False, "frequency": True, "monetary": True}
SCORE_OF = {"recency": "R_score", "frequency": "F_score", "monetary": "M_score"}
EXAMPLES_SHOWN = 5


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def check_input_path(path: str) -> None:
    """Errors that a local path shows before any reader opens it."""
    if not is_local(path):
        return
    source = Path(path.removeprefix("file://"))
    if not source.exists():
        raise RFMInputError(f"input_path: {path} does not exist")
    if source.is_file() and source.stat().st_size == 0:
        raise RFMInputError(f"input_path: {path} is empty")
    if source.is_dir() and not any(
        p.is_file() and not p.name.startswith(("_", ".")) for p in source.rglob("*")
    ):
        raise RFMInputError(f"input_path: {path} holds no columns (no Parquet files?)")


def check_columns(path: str, columns: SourceColumns, available: list[str]) -> None:
    """Every mapped column must exist; the message names the setting and lists what exists."""
    if not available:
        raise RFMInputError(f"input_path: {path} holds no columns (no Parquet files?)")
    missing = [
        f"columns.{field}={source!r}"
        for field, source in columns.mapping.items()
        if source and source not in available
    ]
    if missing:
        hint = ""
        if columns.amount == "amount" and "amount" not in available:
            hint = " (map columns.amount, or columns.quantity and columns.unit_price)"
        raise RFMInputError(
            f"{', '.join(missing)} not found in {path}{hint}; "
            f"its columns are: {', '.join(available)}"
        )


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def cut_points_from_extremes(
    extremes: dict[str, dict[int, tuple[float, float]]],
    maxima: dict[str, float],
    scale: int,
) -> dict[str, list[float]]:
    """Cut points that reproduce quantile scores under fixed scoring on the same customers.

    `extremes[dimension][score] = (least, greatest)` value among customers with that score.
    Larger-is-better: t(s-1) = least value scoring >= s (max + 1 where no customer does).
    Recency: t(j) = greatest recency scoring >= k-j+1 (0 where no customer does).
    """
    published = {}
    for dimension, higher_is_better in HIGHER_IS_BETTER.items():
        by_score = extremes[dimension]
        cuts = []
        for j in range(1, scale):
            if higher_is_better:
                reached = [by_score[s][0] for s in by_score if s >= j + 1]
                cuts.append(float(min(reached)) if reached else float(maxima[dimension]) + 1)
            else:
                reached = [by_score[s][1] for s in by_score if s >= scale - j + 1]
                cuts.append(float(max(reached)) if reached else 0.0)
        published[dimension] = cuts
    return published


def analytics_from_aggregates(
    aggregates: dict[str, dict[str, int]],
    grid: SegmentGrid,
    thresholds: dict[str, list[float]],
) -> pd.DataFrame:
    """The segment_analytics table from per-segment sums.

    `aggregates[segment name]` holds integer sums: customers, revenue_micro, recency, orders.
    Every segment of the grid gets a row (zero-customer ones too), in priority order.
    """
    segments = grid.segments
    empty = {"customers": 0, "revenue_micro": 0, "recency": 0, "orders": 0}
    sums = {key: np.array([aggregates.get(s.name, empty)[key] for s in segments], dtype=np.int64)
            for key in empty}  # fmt: skip
    customers = sums["customers"]
    revenue = sums["revenue_micro"] / MICRO_UNITS
    total_revenue = sums["revenue_micro"].sum() / MICRO_UNITS
    with np.errstate(divide="ignore", invalid="ignore"):
        analytics = pd.DataFrame(
            {
                "segment": pd.array([s.name for s in segments], dtype="str"),
                "segment_id": pd.array([s.segment_id for s in segments], dtype="str"),
                "priority": np.array([s.priority for s in segments], dtype=np.int64),
                "customers": customers,
                "customer_share": customers / customers.sum(),
                "revenue": revenue,
                "revenue_share": revenue / total_revenue if total_revenue else np.nan,
                "avg_recency": sums["recency"] / customers,
                "avg_frequency": sums["orders"] / customers,
                "avg_monetary": revenue / customers,
                "avg_order_value": revenue / sums["orders"],
                "recommendation": pd.array([s.recommendation for s in segments], dtype="str"),
            }
        )
    for dimension in HIGHER_IS_BETTER:
        analytics[f"{dimension}_thresholds"] = [list(thresholds[dimension])] * len(segments)
    return analytics
