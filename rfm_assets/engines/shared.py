"""Rules both engines share verbatim: the row account, calendar days and valid dates, the
reference date and window, money bounds, fixed and quantile scores, text grammars, cut
points, and the analytics table.

Each engine computes the large per-row and per-customer work natively and hands small
summaries (a few numbers per score or per segment) to these functions, so the published
numbers and messages cannot drift apart between engines.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from rfm_assets.contract import MICRO_UNITS
from rfm_assets.errors import RFMConfigError, RFMInputError
from rfm_assets.segments import RuleSet

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
# Text rules both engines apply to the same strings (docs/contract.md).
# A UTC offset only counts as one after a time of day, so 05-01-2021 is not "-2021"; it is
# `Z`, `+hh`, `+hhmm` or `+hh:mm`. Groups in order: the wall-clock text, the offset, its signed
# hours, its minutes (absent for `+hh`). Named as RE2 (pyarrow) writes it; `java_regex`
# gives Java's spelling.
TIME_WITH_OFFSET = (
    r"^(?P<wall>.*\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)\s?"
    r"(?P<offset>Z|(?P<hours>[+-]\d{2})(?::?(?P<minutes>\d{2}))?)$"
)
# ISO 8601 wall-clock text (offset already removed): a full date, optionally a time.
ISO_DATE_TEXT = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$"
# Fractions beyond microseconds are cut (never rounded: rounding 23:59:59.9999999 up would
# move the calendar date). Group 1 keeps the first six digits.
EXTRA_FRACTION_DIGITS = r"(\.\d{6})\d+"
# Numbers as text: decimal notation with an optional exponent. Hexadecimal, Java suffixes
# (5d, 5f), thousands separators and the like are not numbers in either engine.
NUMBER_TEXT = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
# The words NaN and inf(inity) are numbers too, counted later as invalid_amount.
NAN_TEXT = r"^[+-]?(?i:nan)$"
INFINITY_TEXT = r"^([+-]?)(?i:inf|infinity)$"


def java_regex(pattern: str) -> str:
    """The same regular expression in Java's syntax for named groups (`(?<name>`)."""
    return pattern.replace("(?P<", "(?<")


def zone_label(offset: str, hours: str | None, minutes: str | None) -> str:
    """`+hh:mm` of an offset: `Z` is +00:00 and `+09` is +09:00."""
    return "+00:00" if offset == "Z" else f"{hours}:{minutes or '00'}"


def infer_date_format(sample: list[str]) -> str | None:
    """One strftime format for a column of non-ISO dates: the first that the sorted sample
    yields with a day, a month and a year (`2024` and `2024-01` are no dates). None if none.
    """
    from pandas.tseries.api import guess_datetime_format

    for value in sample:
        found = guess_datetime_format(value) or ""
        has_day = "%d" in found or "%j" in found
        has_month = any(d in found for d in ("%m", "%b", "%B")) or "%j" in found
        has_year = "%Y" in found or "%y" in found
        if has_day and has_month and has_year:
            return found
    return None


EPOCH = np.datetime64("1970-01-01", "D")


# Dates outside these are placeholders ("no date" markers such as 9999-12-31), not
# purchases: excluded and counted as date_out_of_range. Settings can move both.
EARLIEST_VALID_DATE = dt.date(1900, 1, 1)


LATEST_VALID_DATE = dt.date(2999, 12, 31)


# The average month, in days: purchase_frequency_per_month counts orders per this many days.
DAYS_PER_MONTH = 30.44


# Beyond this an amount's micro-units would overflow int64.
MAX_ABS_AMOUNT = 9.0e12


@dataclass(frozen=True)
class RowAccount:
    """Where every input row went: `rows_read == rows_kept + sum(rows_excluded.values())`."""

    rows_read: int
    rows_kept: int
    rows_excluded: dict[str, int] = field(default_factory=dict)
    reference_date: Optional[dt.date] = None
    window_start: Optional[dt.date] = None
    customers: int = 0
    files_read: int = 1
    files_skipped: int = 0

    def as_metadata(self) -> dict:
        return {
            "files_read": self.files_read,
            "files_skipped": self.files_skipped,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_excluded": dict(self.rows_excluded),
            "customers": self.customers,
            "reference_date": self.reference_date.isoformat() if self.reference_date else None,
            "window_start": self.window_start.isoformat() if self.window_start else None,
        }


def day_number(date: dt.date) -> int:
    return int((np.datetime64(date, "D") - EPOCH).astype(np.int64))


def from_day_number(day: int) -> dt.date:
    return (EPOCH + np.timedelta64(int(day), "D")).astype(dt.date)


# Frequencies are counts of orders: whole numbers from 1 up to where doubles stop being exact.
LARGEST_FREQUENCY = 2.0**53


def reference_day_for_recency(reference_date: Optional[dt.date]) -> int:
    if reference_date is None:
        raise RFMConfigError(
            "reference_date: customer-level input with recency in days needs the date the "
            "recency was counted to; set reference_date (or map columns.last_purchase_date)"
        )
    return day_number(reference_date)


def reference_and_window(
    reference_date: Optional[dt.date],
    analysis_period_days: Optional[int],
    first_day: int,
    last_day: int,
    earliest_valid_day: int,
) -> tuple[int, Optional[int]]:
    """(reference day, window start day or None) from the in-range dates' first and last day.

    The default reference date is the day after the last in-range date. A window reaching
    back past earliest_valid_date starts there (older rows are out of range anyway).
    """
    ref_day = day_number(reference_date) if reference_date else last_day + 1
    if ref_day <= first_day:
        raise RFMInputError(
            f"reference_date: {from_day_number(ref_day)} is on or before all data "
            f"(earliest transaction {from_day_number(first_day)})"
        )
    if not analysis_period_days:
        return ref_day, None
    return ref_day, max(ref_day - analysis_period_days, earliest_valid_day)


def no_valid_dates_error(valid_dates: tuple[dt.date, dt.date], rows: int) -> RFMInputError:
    return RFMInputError(
        f"no transactions left after filtering (date_out_of_range: {rows}): no date lies "
        f"between earliest_valid_date {valid_dates[0]} and latest_valid_date {valid_dates[1]}"
    )


def quantile_scores(values: np.ndarray, scale: int, higher_is_better: bool) -> np.ndarray:
    """score = 1 + floor(k * b / n), b = customers with a strictly worse value.

    Ties share a score and the result does not depend on row order.
    """
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # One stable sort, then each run of equal values shares the count of values below it
    # (or above it, for recency); a binary search per customer costs several times more.
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    run_starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    run_of = np.repeat(np.arange(len(run_starts)), np.diff(np.append(run_starts, n)))
    if higher_is_better:
        worse_sorted = run_starts[run_of]  # values strictly below
    else:
        run_ends = np.append(run_starts[1:], n)
        worse_sorted = n - run_ends[run_of]  # values strictly above
    worse = np.empty(n, dtype=np.int64)
    worse[order] = worse_sorted
    return 1 + (scale * worse) // n


def fixed_scores(values: np.ndarray, cut_points: list[float], higher_is_better: bool) -> np.ndarray:
    """Scores from ascending cut points t1..t(k-1).

    Larger-is-better: value < t1 scores 1, t1 <= value < t2 scores 2, ..., >= t(k-1) scores k.
    Recency: value <= t1 scores k, t1 < value <= t2 scores k-1, ..., > t(k-1) scores 1.
    """
    cuts = np.asarray(cut_points, dtype=np.float64)
    if higher_is_better:
        return 1 + np.searchsorted(cuts, values, side="right").astype(np.int64)
    return len(cuts) + 1 - np.searchsorted(cuts, values, side="left").astype(np.int64)


# Exact sums are int64 micro-units: one customer's amounts may add up to at most this
# (in size), or a sum could overflow.
MAX_CUSTOMER_TOTAL = 9.0e12


def customer_total_error(customer, total: float) -> RFMInputError:
    return RFMInputError(
        f"column amount: the amounts of customer {customer!r} add up to {total:.6g} in size, "
        f"beyond the {MAX_CUSTOMER_TOTAL:g} that exact micro-unit sums allow"
    )


def _largest_zero_amount() -> float:
    """The largest double whose micro-units (x * 10**6 rounded half to even) are 0."""
    import math

    amount = 0.5 / MICRO_UNITS
    while round(amount * MICRO_UNITS) > 0:
        amount = math.nextafter(amount, -math.inf)
    while round(math.nextafter(amount, math.inf) * MICRO_UNITS) <= 0:
        amount = math.nextafter(amount, math.inf)
    return amount


# Money is counted in micro-units, so an amount or a customer's total is positive only when
# its micro-units are: `x <= LARGEST_ZERO_AMOUNT` is exactly `round_half_even(x * 10**6) <= 0`
# (multiplying by 10**6 is monotonic in doubles), one comparison and no rounded copy. So
# 0.0000004 is not positive, as 0 is not.
LARGEST_ZERO_AMOUNT = _largest_zero_amount()


def amounts_add_up(amounts, exact_micro: int) -> bool:
    """Whether money values, each a float rounded from an exact sum of micro-units (a
    segment's revenue), add up to `exact_micro` micro-units.

    Exact at any size: the floats are added as the rationals they are, with no int64 to
    overflow, and each may differ from the sum it was rounded from by half its last place
    (a float of 10**13 holds no micro-units), which is all the slack allowed.
    """
    import math
    from fractions import Fraction

    total, slack = Fraction(0), Fraction(0)
    for amount in amounts:
        amount = float(amount)
        if not math.isfinite(amount):
            return False
        total += Fraction(amount)
        slack += Fraction(math.ulp(amount)) / 2
    return abs(total - Fraction(exact_micro, MICRO_UNITS)) <= slack


# Integer ids held as floats are exact only below 2**53.
LARGEST_FLOAT_ID = 2.0**53


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
    rule_set: RuleSet,
    thresholds: dict[str, list[float]],
) -> pd.DataFrame:
    """The segment_analytics table from per-segment sums.

    `aggregates[segment name]` holds integer sums: customers, revenue_micro, recency, orders.
    Every segment of the rule_set gets a row (zero-customer ones too), in priority order.
    """
    segments = rule_set.segments
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


# --- segment movement -----------------------------------------------------------------------

# The from-segment of customers absent the week before, and the to-segment of customers
# absent this week.
NEW_CUSTOMERS = "(new)"
LAPSED_CUSTOMERS = "(lapsed)"


def migration_from_aggregates(
    aggregates: dict[tuple[str, str], tuple[int, int]], order: list[str]
) -> pd.DataFrame:
    """The segment_migration table from per-(from, to) sums (customers, revenue micro-units).

    Rows are the pairs that hold customers, ordered by from-segment then to-segment in
    `order` (segment names in priority order); names not in it follow alphabetically, then
    (new) or (lapsed).
    """
    rank = {name: i for i, name in enumerate(order)}

    def position(name: str) -> tuple:
        special = name in (NEW_CUSTOMERS, LAPSED_CUSTOMERS)
        return (special, rank.get(name, len(rank)), name)

    pairs = sorted(aggregates, key=lambda pair: (position(pair[0]), position(pair[1])))
    return pd.DataFrame(
        {
            "from_segment": pd.array([p[0] for p in pairs], dtype="str"),
            "to_segment": pd.array([p[1] for p in pairs], dtype="str"),
            "customers": np.array([aggregates[p][0] for p in pairs], dtype=np.int64),
            "revenue": np.array([aggregates[p][1] / MICRO_UNITS for p in pairs], dtype=np.float64),
        }
    )


# --- pictures' inputs -----------------------------------------------------------------------

HISTOGRAM_BINS = 30


def histogram_edges(name: str, low: float, high: float) -> np.ndarray:
    """Bin edges for a metric's histogram: linear for recency, log-spaced for frequency and
    monetary (long tails), from the least to the greatest value."""
    if name == "recency":
        return np.linspace(low, max(high, low + 1), HISTOGRAM_BINS + 1)
    low = max(low, 1e-6)
    return np.geomspace(low, max(high, low * 1.01), HISTOGRAM_BINS + 1)


def moves_between_segments(migration: pd.DataFrame) -> pd.DataFrame:
    """The rows of a segment_migration table where customers changed segment (neither new,
    gone, nor staying)."""
    source, target = migration["from_segment"], migration["to_segment"]
    return migration[(source != target) & (source != NEW_CUSTOMERS) & (target != LAPSED_CUSTOMERS)]


def movement_counts(migration: pd.DataFrame) -> dict[str, int]:
    """Customers new, gone (lapsed), moved to another segment and staying, from the table."""
    source, target = migration["from_segment"], migration["to_segment"]
    customers = migration["customers"]
    return {
        "customers_new": int(customers[source == NEW_CUSTOMERS].sum()),
        "customers_lapsed": int(customers[target == LAPSED_CUSTOMERS].sum()),
        "customers_moved": int(moves_between_segments(migration)["customers"].sum()),
        "customers_stayed": int(customers[source == target].sum()),
    }
