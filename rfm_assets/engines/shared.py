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

# Trimmed from both ends of text ids and dates, by both engines: ASCII whitespace and the
# Unicode space separators. One explicit set, because pyarrow's and Java's notions of
# "whitespace" differ at the edges (e.g. U+001F).
WHITESPACE = (
    " \t\n\r\x0b\x0c\u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# A UTC offset only counts as one after a time of day, so 05-01-2021 is not "-2021".
# Group 1 is the wall-clock text, group 2 the offset.
TIME_WITH_OFFSET = r"^(.*\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)\s?(Z|[+-]\d{2}:?\d{2})$"
# Exact sums are int64 micro-units: one customer's amounts may add up to at most this
# (in size), or a sum could overflow.
MAX_CUSTOMER_TOTAL = 9.0e12


def customer_total_error(customer, total: float) -> RFMInputError:
    return RFMInputError(
        f"column amount: the amounts of customer {customer!r} add up to {total:.6g} in size, "
        f"beyond the {MAX_CUSTOMER_TOTAL:g} that exact micro-unit sums allow"
    )


# Integer ids held as floats are exact only below 2**53.
LARGEST_FLOAT_ID = 2.0**53


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


def csv_header(path: str) -> list[str]:
    """The column names of a local CSV file; a repeated name is an error in both engines."""
    import csv

    try:
        with open(path.removeprefix("file://"), newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError) as error:
        raise RFMInputError(f"input_path: cannot read {path}: {first_line(error)}") from None
    if not header:
        raise RFMInputError(f"input_path: {path} is empty")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise RFMInputError(f"input_path: the header of {path} repeats {', '.join(repeated)}")
    return header


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
            for key in ("customers", "recency", "orders")}  # fmt: skip
    customers = sums["customers"]
    # Revenue in micro-units can pass int64 across many customers: Python ints, exact.
    revenue_micro = [int(aggregates.get(s.name, empty)["revenue_micro"]) for s in segments]
    revenue = np.array([m / MICRO_UNITS for m in revenue_micro], dtype=np.float64)
    total_revenue = sum(revenue_micro) / MICRO_UNITS
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
