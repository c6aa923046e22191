"""The RFM computation on pandas: pure functions from frame to frame, no Dagster.

Each function implements one step of docs/contract.md. Customers are grouped by integer
codes from one factorisation, never by object keys; all per-row work is vectorised.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
import threading
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from rfm_assets.contract import (
    CUSTOMER_ROW_EXCLUSIONS,
    EXCLUSION_REASONS,
    MICRO_UNITS,
    SLIPPING_COLUMNS,
)
from rfm_assets.engines.shared import (
    DAYS_PER_MONTH,
    EARLIEST_VALID_DATE,
    EPOCH,
    EXAMPLES_SHOWN,
    HIGHER_IS_BETTER,
    LAPSED_CUSTOMERS,
    LARGEST_FREQUENCY,
    LARGEST_ZERO_AMOUNT,
    LATEST_VALID_DATE,
    MAX_ABS_AMOUNT,
    MAX_CUSTOMER_TOTAL,
    NEW_CUSTOMERS,
    SCORE_OF,
    RowAccount,
    analytics_from_aggregates,
    customer_total_error,
    cut_points_from_extremes,
    day_number,
    fixed_scores,
    from_day_number,
    migration_from_aggregates,
    no_valid_dates_error,
    quantile_scores,
    reference_and_window,
    reference_day_for_recency,
)
from rfm_assets.errors import RFMInputError
from rfm_assets.formulas import combined_scores
from rfm_assets.segments import RuleSet


def to_day_numbers(timestamps: np.ndarray | pd.Series) -> np.ndarray:
    """Calendar day numbers (days since 1970-01-01) of naive timestamps; NaT stays NaT's
    integer (the int64 minimum), below every valid day."""
    values = np.asarray(timestamps)
    unit, count = np.datetime_data(values.dtype)
    per_day = np.timedelta64(1, "D") // np.timedelta64(count, unit)
    # Floor division of the integers: three times faster than numpy's datetime64[D] cast.
    ticks = values.view(np.int64)
    days = ticks // per_day
    missing = ticks == np.iinfo(np.int64).min
    if missing.any():
        days[missing] = np.iinfo(np.int64).min
    return days


def to_micro_units(amounts: np.ndarray) -> np.ndarray:
    """amount * 10**6 rounded half to even, as int64 (the exact unit of every sum)."""
    scaled = np.asarray(amounts, dtype=np.float64) * MICRO_UNITS
    return np.rint(scaled, out=scaled).astype(np.int64)  # rounded in place: one copy less


def prepare_transactions(
    frame: pd.DataFrame,
    reference_date: Optional[dt.date] = None,
    analysis_period_days: Optional[int] = None,
    returns_policy: str = "exclude",
    cancelled_order_prefix: str = "C",
    valid_dates: tuple[dt.date, dt.date] = (EARLIEST_VALID_DATE, LATEST_VALID_DATE),
    consume: bool = False,
    kept_from: Optional[dt.date] = None,
    net_by_window: bool = False,
) -> tuple[pd.DataFrame, RowAccount]:
    """Apply the counted cleaning rules (docs/contract.md) to the frame.

    With `kept_from` (one week of a weekly history whose earlier days the weeks before it
    keep), rows dated before it count as `kept_by_earlier_weeks` and the week may keep no
    row. With `net_by_window` the net rule, which judges a customer by the whole window, is
    left to the step that reads the window (`net_positive`): a weekly history keeps each
    week's rows for every later window.

    Returns the kept rows (columns `customer_id, transaction_date, amount, is_return
    [, order_id]`, where a kept return's amount is negative) and the account of every row.
    Rules apply in the order of `EXCLUSION_REASONS`; a row counts under its first reason.
    With `consume`, each source column leaves `frame` once its kept rows are taken, so the
    source and the kept rows are never held whole at once (for a caller done with `frame`).
    """
    rows_read = len(frame)
    days = to_day_numbers(frame["transaction_date"])
    amount = frame["amount"].to_numpy(dtype=np.float64)
    low_day, high_day = (day_number(d) for d in valid_dates)
    in_range = (days >= low_day) & (days <= high_day)
    if not in_range.any():
        raise no_valid_dates_error(valid_dates, rows_read)
    ref_day, window_start_day = reference_and_window(
        reference_date,
        analysis_period_days,
        # Masked reductions: no copy of the in-range days.
        int(days.min(where=in_range, initial=high_day)),
        int(days.max(where=in_range, initial=low_day)),
        low_day,
    )
    finite = np.isfinite(amount)
    too_large = finite & (np.abs(amount) > MAX_ABS_AMOUNT)
    if too_large.any():
        raise RFMInputError(
            f"column amount: {int(too_large.sum())} values exceed {MAX_ABS_AMOUNT:g} in size, "
            f"e.g. {amount[too_large][:3].tolist()}"
        )
    if "order_id" in frame and cancelled_order_prefix:
        # No name for the text: it may be the column itself, which `consume` lets go.
        cancelled = (
            frame["order_id"]
            .astype("str")
            .str.startswith(cancelled_order_prefix)
            .to_numpy(dtype=bool, na_value=False)
        )
    else:
        cancelled = np.zeros(rows_read, dtype=bool)

    rules: list[tuple[str, np.ndarray]] = [
        ("missing_customer_id", frame["customer_id"].isna().to_numpy()),
        ("invalid_amount", ~finite),
        ("date_out_of_range", ~in_range),
        ("on_or_after_reference_date", days >= ref_day),
        (
            "before_analysis_window",
            days < window_start_day if window_start_day is not None else np.zeros_like(finite),
        ),
    ]
    if kept_from is not None:
        rules.append(("kept_by_earlier_weeks", days < day_number(kept_from)))
    if returns_policy == "exclude":
        rules += [
            ("cancelled_order", cancelled),
            ("non_positive_amount", amount <= LARGEST_ZERO_AMOUNT),
        ]
    if "duplicate_row" in frame:  # drop_duplicate_rows: the reader marked repeated lines
        rules.insert(0, ("duplicate_row", frame["duplicate_row"].to_numpy(dtype=bool)))
    excluded, counts = first_reasons(rules, rows_read)

    del rules, days, in_range, finite
    _check_customer_totals(frame["customer_id"], amount, ~excluded)
    kept = ~excluded
    is_return = cancelled[kept] | (amount[kept] <= LARGEST_ZERO_AMOUNT)
    del cancelled
    # Under `net` a return or cancellation is subtracted, whatever the sign it was recorded with.
    signed_amount = amount[kept]
    signed_amount[is_return] = -np.abs(signed_amount[is_return])
    del amount
    if returns_policy == "net" and not net_by_window:
        positive = _net_positive_rows(frame["customer_id"].array[kept], signed_amount)
        counts["customer_monetary_not_positive"] = int((~positive).sum())
        kept[kept] = positive
        signed_amount, is_return = signed_amount[positive], is_return[positive]

    rows_kept = int(kept.sum())
    if rows_kept == 0 and kept_from is None:
        removed = ", ".join(f"{reason}: {n}" for reason, n in counts.items() if n)
        raise RFMInputError(f"no transactions left after filtering ({removed})")

    if consume:
        del frame["amount"]
    clean = _kept_frame(frame, kept, signed_amount, is_return, consume)
    account = RowAccount(
        rows_read=rows_read,
        rows_kept=rows_kept,
        rows_excluded={reason: counts.get(reason, 0) for reason in EXCLUSION_REASONS},
        reference_date=from_day_number(ref_day),
        window_start=from_day_number(window_start_day) if window_start_day is not None else None,
        customers=distinct_count(clean["customer_id"]),
    )
    return clean, account


def _kept_frame(frame: pd.DataFrame, kept: np.ndarray, signed_amount: np.ndarray,
                is_return: np.ndarray, consume: bool) -> pd.DataFrame:  # fmt: skip
    """The kept transactions; with `consume`, each source column leaves `frame` as its kept
    rows are taken."""

    def kept_rows_of(name: str):
        # A boolean take on the column's own array keeps Arrow-backed text in Arrow: no
        # Python objects per row.
        if not consume:
            return frame[name].array[kept]
        column = frame.pop(name)
        if not isinstance(column.array, pd.arrays.ArrowStringArray):
            return column.array[kept]
        chunks, dtype = column.array.__arrow_array__().chunks, column.dtype
        del column
        return _kept_text(chunks, kept, dtype)

    clean = pd.DataFrame(
        {
            "customer_id": kept_rows_of("customer_id"),
            "transaction_date": kept_rows_of("transaction_date"),
            "amount": signed_amount,
            "is_return": is_return,
        },
        copy=False,  # the columns are new already
    )
    if "order_id" in frame:
        clean["order_id"] = kept_rows_of("order_id")
    return clean


def _kept_text(chunks: list[pa.Array], kept: np.ndarray, dtype) -> pd.api.extensions.ExtensionArray:
    """The kept rows of a text column given as its only references to its chunks, each
    chunk let go once filtered: the column and its kept rows are never held whole at once
    (a Parquet file's row groups are its chunks)."""
    taken, start = [], 0
    for index in range(len(chunks)):
        chunk, chunks[index] = chunks[index], None
        taken.append(chunk.filter(pa.array(kept[start : start + len(chunk)])))
        start += len(chunk)
        del chunk
    return pd.array(pa.chunked_array(taken, type=taken[0].type).to_pandas(), dtype=dtype)


def distinct_count(values: pd.Series) -> int:
    """Distinct non-missing values; Arrow-backed text is counted by DuckDB on every core
    (0.57 s for 29M ids on two, where Arrow's one-threaded hash kernel takes 1.53 s)."""
    if isinstance(values.array, pd.arrays.ArrowStringArray):
        ids = pa.table({"id": values.array.__arrow_array__()})
        return _aggregated("SELECT count(DISTINCT id) FROM ids", ids=ids)[0][0].as_py()
    return int(values.nunique())


def prepare_customers(
    frame: pd.DataFrame,
    reference_date: Optional[dt.date] = None,
    analysis_period_days: Optional[int] = None,
    valid_dates: tuple[dt.date, dt.date] = (EARLIEST_VALID_DATE, LATEST_VALID_DATE),
) -> tuple[pd.DataFrame, RowAccount]:
    """The counted rules of customer-level input (one row per customer; docs/contract.md).

    Returns the kept rows (`customer_id, recency, last_purchase_date[, first_purchase_date],
    frequency, monetary`) and the account of every row, by `CUSTOMER_ROW_EXCLUSIONS` in order.
    """
    rows_read = len(frame)
    _refuse_repeated_ids(frame["customer_id"])
    low_day, high_day = (day_number(d) for d in valid_dates)
    if "last_purchase_date" in frame:
        last_present = ~np.isnat(frame["last_purchase_date"].to_numpy())
        last_day = np.where(last_present, to_day_numbers(frame["last_purchase_date"]), 0)
        in_range = last_present & (last_day >= low_day) & (last_day <= high_day)
        if not in_range.any():
            raise no_valid_dates_error(valid_dates, rows_read)
        ref_day, window_start_day = reference_and_window(
            reference_date,
            analysis_period_days,
            int(last_day[in_range].min()),
            int(last_day[in_range].max()),
            low_day,
        )
        invalid_recency = ~last_present
        last_day_value = last_day.astype(np.float64)
        after_reference = last_day >= ref_day
    else:
        ref_day = reference_day_for_recency(reference_date)
        window_start_day = (
            max(ref_day - analysis_period_days, low_day) if analysis_period_days else None
        )
        recency = frame["recency"].to_numpy(dtype=np.float64)
        invalid_recency = ~np.isfinite(recency) | (recency < 0) | (recency != np.floor(recency))
        last_day_value = np.where(invalid_recency, ref_day, ref_day - recency)
        after_reference = np.zeros(rows_read, dtype=bool)
    frequency = frame["frequency"].to_numpy(dtype=np.float64)
    monetary = frame["monetary"].to_numpy(dtype=np.float64)
    _refuse_huge_monetary(frame["customer_id"], monetary)
    if window_start_day is None:
        before_window = np.zeros(rows_read, dtype=bool)
    else:
        before_window = last_day_value < window_start_day
    last_in_range = (last_day_value >= low_day) & (last_day_value <= high_day)
    rules = [
        ("missing_customer_id", frame["customer_id"].isna().to_numpy()),
        ("invalid_recency", invalid_recency),
        ("invalid_frequency", ~_whole_count(frequency)),
        ("invalid_monetary", ~np.isfinite(monetary)),
        ("date_out_of_range", ~last_in_range),
        ("on_or_after_reference_date", after_reference),
        ("before_analysis_window", before_window),
    ]
    if "first_purchase_date" in frame:
        first_present = ~np.isnat(frame["first_purchase_date"].to_numpy())
        first_day = np.where(first_present, to_day_numbers(frame["first_purchase_date"]), 0)
        rules.append(
            (
                "invalid_first_purchase_date",
                ~first_present
                | (first_day < low_day)
                | (first_day > high_day)
                | (first_day > last_day_value),
            )
        )
    rules.append(("customer_monetary_not_positive", monetary <= LARGEST_ZERO_AMOUNT))
    excluded, counts = first_reasons(rules, rows_read)
    kept = ~excluded
    if not kept.any():
        removed = ", ".join(f"{reason}: {n}" for reason, n in counts.items() if n)
        raise RFMInputError(f"no customers left after filtering ({removed})")
    last_kept = last_day_value[kept].astype(np.int64)
    clean = pd.DataFrame(
        {
            "customer_id": frame["customer_id"].array[kept],
            "recency": ref_day - last_kept,
            "last_purchase_date": _dates_of_days(last_kept),
        }
    )
    if "first_purchase_date" in frame:
        clean["first_purchase_date"] = _dates_of_days(first_day[kept])
    clean["frequency"] = frequency[kept].astype(np.int64)
    clean["monetary"] = to_micro_units(monetary[kept]) / MICRO_UNITS
    account = RowAccount(
        rows_read=rows_read,
        rows_kept=int(kept.sum()),
        rows_excluded={reason: counts.get(reason, 0) for reason in CUSTOMER_ROW_EXCLUSIONS},
        reference_date=from_day_number(ref_day),
        window_start=from_day_number(window_start_day) if window_start_day is not None else None,
        customers=int(kept.sum()),
    )
    return clean, account


def _whole_count(values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (
            np.isfinite(values)
            & (values >= 1)
            & (values < LARGEST_FREQUENCY)
            & (values == np.floor(values))
        )


def _refuse_repeated_ids(customer_ids: pd.Series) -> None:
    """Customer-level input has one row per customer: a repeated id is ambiguous, not summed."""
    repeated = customer_ids[customer_ids.duplicated(keep=False) & customer_ids.notna()]
    if len(repeated):
        distinct = sorted(pd.unique(repeated.astype("object")).tolist())
        examples = sorted(distinct[:EXAMPLES_SHOWN], key=str)  # as the Spark engine picks
        raise RFMInputError(
            f"column customer_id: {len(distinct)} customer ids appear on more than one row, "
            f"e.g. {examples}; customer-level input holds one row per customer"
        )


def _refuse_huge_monetary(customer_ids: pd.Series, monetary: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):
        huge = np.isfinite(monetary) & (np.abs(monetary) >= MAX_CUSTOMER_TOTAL)
    if huge.any():
        worst = int(np.argmax(np.where(huge, np.abs(monetary), -1)))
        raise RFMInputError(
            f"column monetary: customer {customer_ids.iloc[worst]!r} has {monetary[worst]:.6g}, "
            f"beyond the {MAX_CUSTOMER_TOTAL:g} that exact micro-unit sums allow"
        )


def _dates_of_days(days: np.ndarray) -> np.ndarray:
    return (EPOCH + np.asarray(days, dtype=np.int64).astype("timedelta64[D]")).astype(
        "datetime64[ms]"
    )


def first_reasons(rules: list[tuple[str, np.ndarray]], rows: int) -> tuple[np.ndarray, dict]:
    """(rows some rule applies to, count per reason), each row counted under the first rule
    in `rules` that applies to it."""
    taken = np.zeros(rows, dtype=bool)
    counts = {}
    for reason, mask in rules:
        newly = mask & ~taken
        counts[reason] = int(newly.sum())
        taken |= newly
    return taken, counts


def _check_customer_totals(customer_ids: pd.Series, amount: np.ndarray, kept: np.ndarray) -> None:
    """Refuse inputs whose exact int64 micro-unit sums could overflow (see shared)."""
    magnitude = np.abs(amount)
    if magnitude.sum(where=kept) < MAX_CUSTOMER_TOTAL:  # no customer exceeds all together
        return
    magnitude = magnitude[kept]
    codes, uniques = pd.factorize(customer_ids.array[kept])
    totals = np.bincount(codes, weights=magnitude)
    worst = int(totals.argmax())
    if totals[worst] >= MAX_CUSTOMER_TOTAL:
        raise customer_total_error(uniques[worst], float(totals[worst]))


# Per order, then per customer: a missing order id is one order (GROUP BY keeps NULL as one
# group); an order with a purchase line counts once; returns add to monetary, never to dates.
_ORDERS = """
    SELECT customer_id, sum(micro) AS micro,
           max(day) FILTER (WHERE purchase) AS last_day,
           min(day) FILTER (WHERE purchase) AS first_day,
           bool_or(purchase) AS purchased
    FROM lines GROUP BY customer_id, order_id
"""
# Without an order column every purchase line is an order.
_LINES_AS_ORDERS = """
    SELECT customer_id, micro, CASE WHEN purchase THEN day END AS last_day,
           CASE WHEN purchase THEN day END AS first_day, purchase AS purchased
    FROM lines
"""
_PER_CUSTOMER = """
    WITH orders AS ({orders})
    SELECT customer_id, CAST(sum(micro) AS BIGINT) AS micro, max(last_day) AS last_day,
           min(first_day) AS first_day, count(*) FILTER (WHERE purchased) AS frequency
    FROM orders GROUP BY customer_id ORDER BY customer_id
"""


DUCKDB_LEAST_MEMORY = 256 * 2**20
# The DuckDB database a `one_duckdb()` block shares, per thread.
_SHARED_DUCKDB = threading.local()
# The DuckDB database each thread keeps for small aggregations, and their largest size.
_KEPT_DUCKDB = threading.local()
KEPT_DUCKDB_MOST_BYTES = 32 * 2**20


@contextlib.contextmanager
def one_duckdb():
    """One DuckDB database for the aggregations of the block (a range of weeks), closed at
    its end: opening one costs about 12 ms, which a range of the 54 bundled weeks paid 54
    times (0.7 s). Closed, it gives back what it held, as a database per aggregation does."""
    if getattr(_SHARED_DUCKDB, "connection", None) is not None:  # an outer block shares one
        yield
        return
    with _duckdb() as connection:
        _SHARED_DUCKDB.connection = connection
        try:
            yield
        finally:
            _SHARED_DUCKDB.connection = None


@contextlib.contextmanager
def _duckdb(nbytes: Optional[int] = None):
    """A cursor on the shared database of a `one_duckdb()` block; else, to aggregate tables
    of at most `KEPT_DUCKDB_MOST_BYTES`, a cursor on a database this thread keeps; else a
    database of its own that spills to a temporary directory and is gone at the end, giving
    back all it held. Opening a database costs several times what aggregating a few thousand
    rows does (see one_duckdb), and a run aggregates four times."""
    import duckdb

    shared = getattr(_SHARED_DUCKDB, "connection", None)
    if shared is None and nbytes is not None and nbytes <= KEPT_DUCKDB_MOST_BYTES:
        shared = getattr(_KEPT_DUCKDB, "connection", None)
        if shared is None:
            shared = _KEPT_DUCKDB.connection = duckdb.connect()
    if shared is not None:
        with shared.cursor() as cursor:
            yield cursor
        return
    with tempfile.TemporaryDirectory(prefix="rfm-duckdb-") as spill:
        with duckdb.connect(config={"temp_directory": spill}) as connection:
            yield connection


def _per_customer(transactions: pd.DataFrame) -> pa.Table:
    """(customer_id, micro, last_day, first_day, frequency), by customer id.

    DuckDB aggregates the Arrow columns in one multi-threaded hash pass per level, where
    pandas factorizes string ids on one core: 1.69 s against 4.63 s for 10M rows and 1M
    customers (benchmarks/README.md, "Large data shape"). The sums stay exact: int64
    micro-units, added in 128 bits, and _check_customer_totals has refused any total beyond
    int64.

    DuckDB's working memory is held to half the size of the columns it aggregates (at least
    256 MiB; beyond it DuckDB partitions its hash tables and may spill to a temporary
    directory): unbounded, its hash tables add more than the rows they group, and this step
    sets the pandas engine's peak (benchmarks/README.md, "Large data shape").
    """

    columns = {
        "customer_id": pa.array(transactions["customer_id"]),
        # Day numbers of kept rows (valid dates, no NaT) fit 32 bits: half the memory.
        "day": to_day_numbers(transactions["transaction_date"]).astype(np.int32),
        "micro": to_micro_units(transactions["amount"].to_numpy()),
        "purchase": ~transactions["is_return"].to_numpy(dtype=bool),
    }
    orders = _LINES_AS_ORDERS
    if "order_id" in transactions:
        columns["order_id"] = pa.array(transactions["order_id"])
        orders = _ORDERS
    return _aggregated(_PER_CUSTOMER.format(orders=orders), lines=pa.table(columns))


def _aggregated(sql: str, parameters: Optional[dict] = None, **tables: pa.Table) -> pa.Table:
    """The result of `sql` (with its `$parameters`) over `tables` (by their names), in DuckDB
    with its working memory held to half the tables' size, at least 256 MiB."""
    nbytes = sum(table.nbytes for table in tables.values())
    limit = max(DUCKDB_LEAST_MEMORY, nbytes // 2)
    with _duckdb(nbytes) as connection:
        connection.execute(f"SET memory_limit = '{limit // 2**20}MiB'")
        for name, table in tables.items():
            connection.register(name, table)
        # A relation, not execute(): DuckDB copies a DB-API result once more into Arrow.
        return connection.sql(sql, params=parameters).to_arrow_table()


def compute_metrics(transactions: pd.DataFrame, reference_date: dt.date) -> pd.DataFrame:
    """One row per customer, by customer id: recency, frequency, monetary and the dates
    behind them.

    recency = reference_date - last purchase date (calendar days); frequency = distinct orders
    (or purchase rows without an order column); monetary = exact sum of amounts (returns
    included, negative, under `net`); tenure_days = reference_date - first purchase date;
    avg_order_value = monetary / frequency. Returns are never purchases.
    """
    totals = _per_customer(transactions)
    last_day = totals["last_day"].to_numpy().astype(np.int64)
    first_day = totals["first_day"].to_numpy().astype(np.int64)
    frequency = totals["frequency"].to_numpy().astype(np.int64)
    ref_day = day_number(reference_date)
    monetary = totals["micro"].to_numpy() / MICRO_UNITS
    return pd.DataFrame(
        {
            "customer_id": totals["customer_id"]
            .to_pandas()
            .astype(transactions["customer_id"].dtype),
            "recency": ref_day - last_day,
            "frequency": frequency,
            "monetary": monetary,
            "first_purchase_date": _dates_of_days(first_day),
            "last_purchase_date": _dates_of_days(last_day),
            "tenure_days": ref_day - first_day,
            "avg_order_value": monetary / frequency,
            "customer_lifetime_days": last_day - first_day + 1,
            # Orders per month of tenure; a tenure under one month counts as one month.
            "purchase_frequency_per_month": frequency
            * DAYS_PER_MONTH
            / np.maximum(ref_day - first_day, DAYS_PER_MONTH),
        }
    )


def window_rows(frames: list[pd.DataFrame], window_start: Optional[dt.date]) -> pd.DataFrame:
    """The kept rows of several weeks as one frame, from `window_start` on (see dispatch)."""
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    if window_start is None:
        return frame
    in_window = to_day_numbers(frame["transaction_date"]) >= day_number(window_start)
    return frame if in_window.all() else frame[in_window].reset_index(drop=True)


def distinct_customers(kept: pd.DataFrame) -> int:
    return distinct_count(kept["customer_id"])


def _net_positive_rows(customer_ids, signed_amount: np.ndarray) -> np.ndarray:
    """Which rows belong to a customer whose exact netted sum is above zero."""
    codes, uniques = pd.factorize(customer_ids)
    net_micro = np.zeros(len(uniques), dtype=np.int64)
    np.add.at(net_micro, codes, to_micro_units(signed_amount))
    return net_micro[codes] > 0


def net_positive(kept: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The kept rows of customers whose netted monetary is above zero, and how many rows
    are not (the net rule of prepare_transactions, applied to a window's rows)."""
    positive = _net_positive_rows(kept["customer_id"].array, kept["amount"].to_numpy())
    if positive.all():
        return kept, 0
    return kept[positive].reset_index(drop=True), int((~positive).sum())


def customer_metrics(customers: pd.DataFrame, reference_date: dt.date) -> pd.DataFrame:
    """The metrics of kept customer-level rows (see compute_metrics for the definitions).

    Without a first purchase date, the columns that need one are null.
    """
    ref_day = day_number(reference_date)
    last_day = ref_day - customers["recency"].to_numpy()
    frequency = customers["frequency"].to_numpy()
    monetary = customers["monetary"].to_numpy()
    if "first_purchase_date" in customers:
        first_day = to_day_numbers(customers["first_purchase_date"])
        first_date = customers["first_purchase_date"].to_numpy()
        tenure, lifetime = ref_day - first_day, last_day - first_day + 1
        per_month = frequency * DAYS_PER_MONTH / np.maximum(ref_day - first_day, DAYS_PER_MONTH)
    else:
        first_date = np.full(len(customers), np.datetime64("NaT"), dtype="datetime64[ms]")
        tenure = lifetime = pd.array([pd.NA] * len(customers), dtype="Int64")
        per_month = np.full(len(customers), np.nan)
    return pd.DataFrame(
        {
            "customer_id": customers["customer_id"].array,
            "recency": customers["recency"].to_numpy(dtype=np.int64),
            "frequency": frequency.astype(np.int64),
            "monetary": monetary,
            "first_purchase_date": first_date,
            "last_purchase_date": customers["last_purchase_date"].to_numpy(),
            "tenure_days": tenure,
            "avg_order_value": monetary / frequency,
            "customer_lifetime_days": lifetime,
            "purchase_frequency_per_month": per_month,
        }
    )


def filter_customers(
    metrics: pd.DataFrame,
    min_frequency: Optional[int] = None,
    exclude_recent_days: Optional[int] = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Customers held out before scoring, counted by reason (first reason that applies):
    fewer orders than min_frequency; a first purchase within exclude_recent_days of the
    reference date (tenure_days <= N)."""
    masks = customer_filter_masks(metrics, min_frequency, exclude_recent_days)
    held_out, counts = first_reasons(masks, len(metrics))
    return metrics[~held_out].reset_index(drop=True), counts


def customer_filter_masks(metrics, min_frequency, exclude_recent_days):
    frequency = metrics["frequency"].to_numpy()
    tenure = metrics["tenure_days"].to_numpy()
    return [
        ("below_min_frequency", frequency < (min_frequency or 0)),
        (
            "first_purchase_too_recent",
            tenure <= exclude_recent_days
            if exclude_recent_days is not None
            else np.zeros(len(metrics), dtype=bool),
        ),
    ]


# --- scores -------------------------------------------------------------------------------


def thresholds_from_scores(scores: pd.DataFrame, scale: int) -> dict[str, list[float]]:
    """Cut points that reproduce `scores` under `fixed_scores` (see cut_points_from_extremes)."""
    extremes, maxima = {}, {}
    for dimension in HIGHER_IS_BETTER:
        values = scores[dimension].to_numpy(dtype=np.float64)
        grouped = pd.Series(values).groupby(scores[SCORE_OF[dimension]].to_numpy())
        lows, highs = grouped.min(), grouped.max()
        extremes[dimension] = {int(score): (low, highs[score]) for score, low in lows.items()}
        maxima[dimension] = float(values.max())
    return cut_points_from_extremes(extremes, maxima, scale)


_CELL_NAMES = np.array([f"{code:03d}" for code in range(1000)], dtype=object)


def compute_scores(
    metrics: pd.DataFrame,
    scale: int,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    fixed_cut_points: Optional[dict[str, list[float]]] = None,
) -> pd.DataFrame:
    """Metrics plus R/F/M scores (quantile, or fixed when cut points are given), FM, RFM, cell."""
    scores = metrics.copy()
    for dimension, higher_is_better in HIGHER_IS_BETTER.items():
        values = metrics[dimension].to_numpy()
        if fixed_cut_points is None:
            scores[SCORE_OF[dimension]] = quantile_scores(values, scale, higher_is_better)
        else:
            scores[SCORE_OF[dimension]] = fixed_scores(
                values, fixed_cut_points[dimension], higher_is_better
            )
    r, f, m = (scores[c].to_numpy() for c in ("R_score", "F_score", "M_score"))
    scores["FM_score"], scores["RFM_score"] = combined_scores(r, f, m, weights)
    scores["rfm_cell"] = pd.array(_CELL_NAMES[100 * r + 10 * f + m], dtype="str")
    return scores


# --- segments -----------------------------------------------------------------------------


def _categorical(codes: np.ndarray, labels: list[str]) -> pd.Categorical:
    """`labels[codes]` as a categorical column; labels may repeat."""
    categories = list(dict.fromkeys(labels))
    to_category = np.array([categories.index(label) for label in labels], dtype=np.int64)
    return pd.Categorical.from_codes(
        to_category[codes], categories=pd.Index(categories, dtype="str")
    )


def assign_segments(
    scores: pd.DataFrame, rule_set: RuleSet, segmented_at: dt.datetime
) -> pd.DataFrame:
    """Scores plus the segment of each (R, F, M) combination and its catalog fields.

    Rows come in segment priority order and, within a segment, by the weighted RFM_score,
    highest first (ties in customer id order): the recency weight orders every list.
    """
    table, segments = rule_set.lookup_table()
    codes = table[tuple(scores[c].to_numpy() for c in ("R_score", "F_score", "M_score"))]
    return _segmented(scores, rule_set, codes, segmented_at)


def _segmented(
    scores: pd.DataFrame, rule_set: RuleSet, codes: np.ndarray, segmented_at: dt.datetime
) -> pd.DataFrame:
    """Scores plus the segments `codes` name (positions in rule_set.segments), in list order."""
    segments = rule_set.segments
    # segments are in priority order, so the code is the priority rank; lexsort is stable.
    order = np.lexsort((-scores["RFM_score"].to_numpy(), codes))
    scores = scores.iloc[order].reset_index(drop=True)
    segment_code = codes[order]
    r = scores["R_score"].to_numpy()
    fm = scores["FM_score"].to_numpy()
    segmented = scores  # a new frame already (the reordering took the rows)
    for column in ("segment", "segment_id", "recommendation"):
        attribute = "name" if column == "segment" else column
        labels = [getattr(entry, attribute) for entry in segments]
        segmented[column] = _categorical(segment_code, labels)
    segmented["value_tier"] = _categorical(fm - 1, list(rule_set.value_tiers))
    segmented["engagement_level"] = _categorical(r - 1, list(rule_set.engagement_levels))
    segmented["segmented_at"] = pd.Timestamp(segmented_at)
    return segmented


def cluster_segments(
    scores: pd.DataFrame,
    rule_set: RuleSet,
    thresholds: dict[str, list[float]],
    k_range: tuple[int, int],
    sample_size: int,
    seed: int,
    segmented_at: dt.datetime,
    stored=None,
    fitted: Optional[dict] = None,
    features: tuple[str, ...] = ("recency", "frequency", "monetary"),
    method: str = "kmeans",
):
    """Segments by k-means (engines.clustering) instead of the rule set's cells: the
    `stored` model applied, or a model fitted here on `features` (with `method` auto, the
    best of three methods) and named from the run's cut points.
    `cluster`, `cluster_name` and `cluster_distance` are added. Returns the table, what
    the clustering measured and the model."""
    from rfm_assets.engines import clustering

    values = clustering.feature_values(scores, stored.features if stored else features)
    compared = {}
    if stored is None:
        model = clustering.fit(values, k_range, sample_size, seed, features)
        if method == "auto":
            scaled = model.scaled(values)
            model, compared = clustering.best_method(model, scaled, sample_size, seed)
        chosen = {"method": "kmeans", **model.fitted}  # (and method_choice with auto)
        sizes = np.bincount(model.assign(values)[0], minlength=model.k)
        model = model.named(thresholds, rule_set, sizes)
        model.fitted = {**(fitted or {}), **chosen, "engine": "pandas", "customers": len(scores)}
    else:
        model = stored
    cluster, distance = model.assign(values)
    position = {entry.name: i for i, entry in enumerate(rule_set.segments)}
    codes = np.array([position[name] for name in model.segments], dtype=np.int64)[cluster]
    with_clusters = scores.assign(
        cluster=cluster.astype(np.int64),
        cluster_name=pd.array(np.array(model.names, dtype=object)[cluster], dtype="str"),
        cluster_distance=distance,
    )
    segmented = _segmented(with_clusters, rule_set, codes, segmented_at)
    # The cluster columns go last, after the published segment columns.
    columns = [c for c in segmented.columns if not c.startswith("cluster")]
    segmented = segmented[columns + list(clustering.CLUSTER_COLUMNS)]
    if stored is None and not compared:
        compared = clustering.compare_methods(model, values, sample_size, seed)
    summary = clustering.summary(
        model,
        clustering.silhouette_of_sample(model, values, cluster, seed, sample_size),
        clustering.cluster_sums(model.scaled(values), cluster, model.k),
        applied=stored is not None,
        methods_compared=compared,
    )
    return segmented, summary, model


def segment_analytics(
    segmented: pd.DataFrame, rule_set: RuleSet, thresholds: dict[str, list[float]]
) -> pd.DataFrame:
    """One row per segment of the rule_set (zero-customer segments included), in priority order.

    Customers are counted by their `segment` column, whichever method named it."""
    segments = rule_set.segments
    position = {entry.name: i for i, entry in enumerate(segments)}
    named = pd.Categorical(segmented["segment"].astype("str"))
    to_position = np.array([position[str(c)] for c in named.categories], dtype=np.int64)
    code = to_position[named.codes]
    count = len(segments)
    micro = to_micro_units(segmented["monetary"].to_numpy())
    sums = {
        "customers": np.bincount(code, minlength=count),
        "revenue_micro": exact_micro_sums(code, micro, count),
        "recency": _integer_sums(code, segmented["recency"].to_numpy(), count),
        "orders": _integer_sums(code, segmented["frequency"].to_numpy(), count),
    }
    aggregates = {
        entry.name: {key: int(values[i]) for key, values in sums.items()}
        for i, entry in enumerate(segments)
    }  # revenue_micro as Python ints: exact at any size
    return analytics_from_aggregates(aggregates, rule_set, thresholds)


def _integer_sums(codes: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    totals = np.zeros(count, dtype=np.int64)
    np.add.at(totals, codes, values.astype(np.int64))
    return totals


def exact_micro_sums(codes: np.ndarray, micro: np.ndarray, count: int) -> list[int]:
    """Sums of int64 micro-units per code as Python ints: exact at any size (the high and
    low 32-bit halves are summed apart, so no int64 sum can overflow)."""
    high = _integer_sums(codes, micro >> 32, count)
    low = _integer_sums(codes, micro & 0xFFFFFFFF, count)
    return [int(h) * 2**32 + int(lo) for h, lo in zip(high, low)]


def _joinable_ids(before: pd.Series, now: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Ids of two weeks in one type: as they are when they agree, else as text."""
    if before.dtype == now.dtype:
        return before, now
    return before.astype("str"), now.astype("str")


def segment_migration(
    previous: pd.DataFrame, current: pd.DataFrame, order: list[str]
) -> pd.DataFrame:
    """From x to table of customers and revenue between two weeks' customer_segments.

    A customer absent the week before comes from (new); one absent this week goes to
    (lapsed). Revenue is this week's monetary, or the week before's for lapsed customers, so
    the table's rows per from-segment add up to the earlier week's segment sizes and its rows
    per to-segment to this week's.
    """
    before_ids, now_ids = _joinable_ids(previous["customer_id"], current["customer_id"])

    def week(ids: pd.Series, segmented: pd.DataFrame) -> pa.Table:
        return pa.table(
            {
                "customer_id": pa.array(ids),
                "segment": pa.array(segmented["segment"].astype("str")),
                "micro": to_micro_units(segmented["monetary"].to_numpy()),
            }
        )

    # DuckDB joins 2M customers on both cores in a tenth of the time of pandas' outer merge
    # and factorized pairs (0.55 s against 6.1 s); the sums stay exact (128-bit, as text).
    pairs = _aggregated(
        _MIGRATION,
        {"new": NEW_CUSTOMERS, "lapsed": LAPSED_CUSTOMERS},
        before=week(before_ids, previous),
        now=week(now_ids, current),
    ).to_pylist()
    aggregates = {
        (pair["from_segment"], pair["to_segment"]): (pair["customers"], int(pair["micro"]))
        for pair in pairs
    }
    return migration_from_aggregates(aggregates, order)


# A segmented table has no missing customer id (missing_customer_id is excluded first), so
# a NULL of the join means "absent that week" and nothing else.
_MIGRATION = """
    SELECT coalesce(b.segment, $new) AS from_segment, coalesce(n.segment, $lapsed) AS to_segment,
           count(*) AS customers,
           CAST(sum(CASE WHEN n.segment IS NULL THEN b.micro ELSE n.micro END) AS VARCHAR) AS micro
    FROM before AS b FULL OUTER JOIN now AS n ON b.customer_id = n.customer_id
    GROUP BY ALL
"""


def slipping_customers(
    previous: pd.DataFrame, current: pd.DataFrame, engaged: list[str], slipping: list[str]
) -> pd.DataFrame:
    """Customers in a slipping segment (segment_id in `slipping`) this week who were in an
    engaged one the week before, most valuable first (monetary, then customer id)."""
    before_ids, now_ids = _joinable_ids(previous["customer_id"], current["customer_id"])
    was_engaged = previous["segment_id"].astype("str").isin(engaged).to_numpy()
    before = pd.DataFrame(
        {
            "key": before_ids.array[was_engaged],
            "previous_segment": previous["segment"].astype("str").array[was_engaged],
        }
    )
    is_slipping = current["segment_id"].astype("str").isin(slipping).to_numpy()
    now = current[is_slipping].assign(key=now_ids.array[is_slipping])
    moved = now.merge(before, on="key", how="inner").drop(columns="key")
    moved = moved.sort_values(["monetary", "customer_id"], ascending=[False, True])
    # (no recommendation where include_recommendations is false)
    return moved[[c for c in SLIPPING_COLUMNS if c in moved]].reset_index(drop=True)


def high_value_customers(segmented: pd.DataFrame, top_percentage: float, by: str) -> pd.DataFrame:
    """The tie-safe top share of customers by `by` (see rfm_assets.lists)."""
    from rfm_assets.lists import identify_high_value_customers

    return identify_high_value_customers(segmented, top_percentage, by)
