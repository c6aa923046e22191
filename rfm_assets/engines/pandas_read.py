"""Read a transaction source into the canonical pandas frame, reading only the mapped columns.

Canonical frame: `customer_id` (int64 or str, nullable), `transaction_date` (datetime64, naive,
wall-clock time of the source), `amount` (float64, NaN where missing), and `order_id` when an
order column is mapped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
from pandas.tseries.api import guess_datetime_format

from rfm_assets.engines.shared import (
    EXAMPLES_SHOWN,
    LARGEST_FLOAT_ID,
    TIME_WITH_OFFSET,
    WHITESPACE,
    check_columns,
    check_input_path,
    csv_header,
    first_line,
)
from rfm_assets.errors import RFMInputError
from rfm_assets.settings import SourceColumns


def read_transactions(path: str, columns: SourceColumns) -> pd.DataFrame:
    """Read `path` (.parquet, .csv or a directory of Parquet) into the canonical frame."""
    table = _read_table(path, columns)
    if table.num_rows == 0:
        raise RFMInputError(f"input_path: {path} has no rows")
    frame = {
        "customer_id": _customer_ids(table[columns.customer_id], columns.customer_id),
        "transaction_date": _timestamps(table[columns.transaction_date], columns.transaction_date),
    }
    if columns.amount:
        frame["amount"] = _numbers(table[columns.amount], columns.amount)
    else:
        frame["amount"] = _numbers(table[columns.quantity], columns.quantity) * _numbers(
            table[columns.unit_price], columns.unit_price
        )
    if columns.order_id:
        frame["order_id"] = _order_ids(table[columns.order_id])
    return pd.DataFrame(frame, copy=False)


def _read_table(path: str, columns: SourceColumns) -> pa.Table:
    check_input_path(path)
    source = Path(path)
    is_csv = source.suffix.lower() == ".csv"
    try:
        available = csv_header(path) if is_csv else _parquet_dataset(source).schema.names
    except (OSError, pa.ArrowException, UnicodeDecodeError) as error:
        raise RFMInputError(f"input_path: cannot read {path}: {first_line(error)}") from None
    check_columns(path, columns, available)
    try:
        if is_csv:
            # Ids stay text so that leading zeros survive; dates are parsed by
            # _timestamps, which keeps each row's own wall-clock date.
            as_text = {
                c: pa.string()
                for c in (columns.customer_id, columns.order_id, columns.transaction_date)
                if c
            }
            return pacsv.read_csv(
                source,
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns.needed,
                    column_types=as_text,
                    # Only an empty field is missing, as in Spark's CSV reader; "NA" or
                    # "n/a" in an amount column are reported, not guessed.
                    null_values=[""],
                    strings_can_be_null=True,
                ),
            )
        return _parquet_dataset(source).to_table(columns=columns.needed)
    except (OSError, pa.ArrowException) as error:
        raise RFMInputError(f"input_path: cannot read {path}: {first_line(error)}") from None


def _parquet_dataset(source: Path) -> pads.Dataset:
    return pads.dataset(source, format="parquet")


def _customer_ids(column: pa.ChunkedArray, name: str) -> pd.Series:
    """Integers stay integers; integer-valued floats become integers; text is trimmed."""
    kind = column.type
    if pa.types.is_integer(kind) or (pa.types.is_decimal(kind) and kind.scale == 0):
        extremes = pc.min_max(column).as_py()
        if (
            extremes["max"] is not None
            and not -(2**63) <= extremes["min"] <= extremes["max"] < 2**63
        ):
            raise RFMInputError(f"column '{name}': customer ids exceed the int64 range")
        return column.cast(pa.int64()).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        present = values[~np.isnan(values)]  # NaN is a missing id
        unusable = present[(np.abs(present) >= LARGEST_FLOAT_ID) | ~np.isfinite(present)]
        if len(unusable):
            raise RFMInputError(
                f"column '{name}': {len(unusable)} customer ids are too large to be exact as "
                f"numbers, e.g. {np.unique(unusable)[:EXAMPLES_SHOWN].tolist()}; store ids as "
                "integers or text"
            )
        fractional = present[present != np.floor(present)]
        if len(fractional):
            raise RFMInputError(
                f"column '{name}': {len(fractional)} customer ids are not whole numbers, "
                f"e.g. {np.unique(fractional)[:EXAMPLES_SHOWN].tolist()}; map an integer or "
                "text id column"
            )
        return pd.Series(pd.array(values, dtype="Float64")).astype("Int64")
    text = pc.utf8_trim(column.cast(pa.string()), characters=WHITESPACE)
    # A blank id is no id.
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    return text.to_pandas()


# TIME_WITH_OFFSET with named groups, as pyarrow's extract_regex wants them.
_NAMED_OFFSET = TIME_WITH_OFFSET.replace("^(", "^(?P<wall>", 1).replace(
    r"\s?(Z", r"\s?(?P<offset>Z", 1
)


def _timestamps(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """Naive datetime64 values; the calendar date is the one on the source's own clock."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        parsed = pc.local_timestamp(column) if kind.tz is not None else column
    elif pa.types.is_date(kind):
        parsed = column.cast(pa.timestamp("s"))
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        text = pc.utf8_trim(column.cast(pa.string()), characters=WHITESPACE)
        parsed = _parse_text_timestamps(text, name)
    else:
        raise RFMInputError(
            f"column '{name}': type {kind} is not a date; expected a date, timestamp or text"
        )
    values = parsed.to_numpy()
    bad = np.isnat(values)
    if bad.any():
        raw = column.cast(pa.string()) if not pa.types.is_timestamp(kind) else column
        examples = sorted(pc.unique(raw.filter(pa.array(bad))).to_pylist(), key=str)[
            :EXAMPLES_SHOWN
        ]
        raise RFMInputError(
            f"column '{name}': {int(bad.sum())} values are not dates, e.g. {examples}"
        )
    return values


def _parse_text_timestamps(text: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """ISO 8601 text to naive timestamps, keeping the wall-clock time of a single offset.

    Text with more than one UTC offset (or offsets on some rows only) has no single calendar
    to take dates from, so it is an error rather than a guess.
    """
    offsets = pc.struct_field(pc.extract_regex(text, _NAMED_OFFSET), "offset")
    zones = {
        "+00:00" if z == "Z" else z[:3] + ":" + z[-2:]
        for z in pc.unique(offsets).to_pylist()
        if z is not None
    }
    with_offset = int(pc.sum(pc.is_valid(offsets)).as_py() or 0)
    present = len(text) - text.null_count
    if len(zones) > 1 or (zones and with_offset != present):
        shown = sorted(zones) + (["none"] if with_offset != present else [])
        raise RFMInputError(
            f"column '{name}': mixed time zones ({', '.join(shown)}); convert the column to "
            "one zone first, e.g. UTC or the shop's local time"
        )
    wall_clock = pc.replace_substring_regex(text, TIME_WITH_OFFSET, r"\1") if zones else text
    try:
        return pc.cast(wall_clock, pa.timestamp("us"))
    except pa.ArrowInvalid:
        # Not plain ISO 8601: one format inferred from the data and applied to every row, so
        # an ambiguous day/month order is never mixed within a column.
        # The 100 smallest distinct values, as the Spark reader samples them.
        distinct = pc.unique(wall_clock.drop_null())
        sample = distinct.take(pc.sort_indices(distinct)[:100]).to_pylist()
        date_format = next((f for v in sample if (f := guess_datetime_format(v))), None)
        if date_format is None:  # nothing looks like a date: every row is reported
            return pa.chunked_array([pa.nulls(len(wall_clock), pa.timestamp("us"))])
        parsed = pd.to_datetime(wall_clock.to_pandas(), format=date_format, errors="coerce")
        return pa.chunked_array([pa.array(parsed.to_numpy(dtype="datetime64[us]"))])


def _numbers(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """float64 values; missing ones become NaN (counted later as invalid_amount).

    Text is parsed as numbers; the words NaN and inf are numbers too (counted later as
    invalid_amount), as Spark reads them.
    """
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_decimal(column.type):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    text = pc.utf8_trim(column.cast(pa.string()), characters=WHITESPACE)
    try:
        return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = pd.to_numeric(text.to_pandas(), errors="coerce").to_numpy(dtype=np.float64)
    nan_words = pc.match_substring_regex(text, r"^[+-]?(?i:nan)$")
    not_numbers = (
        np.isnan(values)
        & ~text.is_null().to_numpy(zero_copy_only=False)
        & ~pc.fill_null(nan_words, False).to_numpy(zero_copy_only=False)
    )
    if not_numbers.any():
        examples = sorted(pc.unique(text.filter(pa.array(not_numbers))).to_pylist(), key=str)[
            :EXAMPLES_SHOWN
        ]
        raise RFMInputError(
            f"column '{name}': {int(not_numbers.sum())} values are not numbers, e.g. {examples}"
        )
    return values


def _order_ids(column: pa.ChunkedArray) -> pd.Series:
    if pa.types.is_integer(column.type):
        return column.to_pandas(types_mapper={column.type: pd.Int64Dtype()}.get)
    return column.cast(pa.string()).to_pandas()
