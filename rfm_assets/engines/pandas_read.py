"""Read a transaction source into the canonical pandas frame, reading only the mapped columns.

Canonical frame: `customer_id` (int64 or str, nullable), `transaction_date` (datetime64, naive,
wall-clock time of the source), `amount` (float64, NaN where missing), and `order_id` when an
order column is mapped.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from rfm_assets.engines.shared import (
    EXAMPLES_SHOWN,
    EXTRA_FRACTION_DIGITS,
    INFINITY_TEXT,
    ISO_DATE_TEXT,
    LARGEST_FLOAT_ID,
    NAN_TEXT,
    NUMBER_TEXT,
    TIME_WITH_OFFSET,
    WHITESPACE,
    infer_date_format,
    zone_label,
)
from rfm_assets.engines.source import (
    SourceListing,
    check_columns,
    check_types,
    first_line,
    list_source,
    unify_types,
)
from rfm_assets.engines.spec import SourceColumns
from rfm_assets.errors import RFMInputError

# INT96 timestamps (legacy Spark/Impala) as microseconds: as nanoseconds they wrap outside
# 1677-2262.
PARQUET = pads.ParquetFileFormat(
    default_fragment_scan_options=pads.ParquetFragmentScanOptions(),
    read_options=pads.ParquetReadOptions(coerce_int96_timestamp_unit="us"),
)


def read_transactions(
    path: str, columns: SourceColumns, sheet: Optional[str] = None
) -> tuple[pd.DataFrame, SourceListing]:
    """Read `path` (.parquet, .csv, a directory of Parquet or a sheet of an Excel workbook)
    into the canonical frame.

    Returns the frame and the listing of what was read (files read and skipped).
    """
    listing = list_source(path, columns, sheet)
    return _canonical(_read_table(listing, columns), columns, path), listing


def read_frame(
    frame: pd.DataFrame, columns: SourceColumns, name: str
) -> tuple[pd.DataFrame, SourceListing]:
    """The canonical frame of a table another asset produced (`name` says which)."""
    check_columns(name, columns, [str(c) for c in frame.columns])
    read = list(frame.columns) if columns.every_column else columns.needed
    table = pa.Table.from_pandas(frame[read], preserve_index=False)
    types = {}
    for field in table.schema:
        types[field.name] = unify_types(field.name, {name: field.type}, name, "")
    check_types(types, columns)
    table = _cast_columns(table, pa.schema([(n, types[n]) for n in read]))
    return _canonical(table, columns, name), SourceListing(path=name, is_csv=False, listed=False)


def _canonical(table: pa.Table, columns: SourceColumns, path: str) -> pd.DataFrame:
    """The canonical columns from the source's mapped columns, by the shared text rules."""
    if table.num_rows == 0:
        raise RFMInputError(f"input_path: {path} has no rows")
    if columns.level == "customers":
        return _customer_rows(table, columns)
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
    if columns.every_column:
        frame["duplicate_row"] = duplicate_lines(table)
    return pd.DataFrame(frame, copy=False)


def duplicate_lines(table: pa.Table) -> np.ndarray:
    """True for each line whose every column equals an earlier line's (missing equals
    missing), as read: CSV text as written, typed columns by value."""
    return table.to_pandas().duplicated(keep="first").to_numpy()


def _customer_rows(table: pa.Table, columns: SourceColumns) -> pd.DataFrame:
    """Customer-level input: ids, dates (missing allowed: counted later) and numbers."""
    frame = {"customer_id": _customer_ids(table[columns.customer_id], columns.customer_id)}
    for field in ("last_purchase_date", "first_purchase_date"):
        if name := getattr(columns, field):
            frame[field] = _timestamps(table[name], name, missing_allowed=True)
    for field in ("recency", "frequency", "monetary"):
        if name := getattr(columns, field):
            frame[field] = _numbers(table[name], name)
    return pd.DataFrame(frame, copy=False)


def _read_table(listing: SourceListing, columns: SourceColumns) -> pa.Table:
    """The needed columns of every listed file, each cast to the listing's one type."""
    if listing.table is not None:  # an Excel sheet, read by the listing
        return listing.table
    read = list(listing.read_columns) or columns.needed
    try:
        if listing.is_csv:
            return pacsv.read_csv(
                listing.files[0],
                # RFC 4180: doubled quotes and line breaks inside quoted fields, as Spark's
                # multiLine reader takes them.
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    include_columns=read,
                    # Every column stays text and is parsed by the rules both engines share:
                    # ids keep leading zeros, dates and numbers follow one grammar.
                    column_types={name: pa.string() for name in read},
                    # Only an empty field is missing, as in Spark's CSV reader; "NA" or
                    # "n/a" in an amount column are reported, not guessed.
                    null_values=[""],
                    strings_can_be_null=True,
                ),
            )
        partitioning = None
        if listing.partition_columns:
            partitioning = pads.partitioning(
                pa.schema([(name, pa.string()) for name in listing.partition_columns]),
                flavor="hive",
            )
        target = pa.schema([(name, listing.types[name]) for name in read])
        parts = []
        for group in listing.groups:
            dataset = pads.dataset(
                list(group),
                format=PARQUET,
                partitioning=partitioning,
                partition_base_dir=listing.root if partitioning else None,
            )
            part = dataset.to_table(columns=read)
            parts.append(_cast_columns(part, target))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    except (OSError, pa.ArrowException) as error:
        raise RFMInputError(
            f"input_path: cannot read {listing.path}: {first_line(error)}"
        ) from None


def _cast_columns(table: pa.Table, target: pa.Schema) -> pa.Table:
    """`table` with each column in the target type (timestamps may lose sub-microseconds)."""
    arrays = []
    for field in target:
        column = table[field.name]
        if column.type != field.type:
            column = column.cast(field.type, safe=not pa.types.is_timestamp(field.type))
        arrays.append(column)
    return pa.table(arrays, schema=target)


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
    text = pc.utf8_trim(_text(column), characters=WHITESPACE)
    # A blank id is no id (looked for only where the shortest id is empty: the lengths are
    # read from the offsets, the comparison reads every id).
    if pc.min(pc.binary_length(text)).as_py() == 0:
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text)
    return text.to_pandas()


def _timestamps(column: pa.ChunkedArray, name: str, missing_allowed: bool = False) -> np.ndarray:
    """Naive datetime64 values; the calendar date is the one on the source's own clock.

    A missing value (null, or blank text) is an error unless `missing_allowed`, where it
    stays NaT for the cleaning rules to count.
    """
    kind = column.type
    present = column
    if pa.types.is_timestamp(kind):
        parsed = pc.local_timestamp(column) if kind.tz is not None else column
    elif pa.types.is_date(kind):
        parsed = column.cast(pa.timestamp("s"))
    elif pa.types.is_string(kind):
        text = pc.utf8_trim(column, characters=WHITESPACE)
        if missing_allowed:
            text = present = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        parsed = _parse_text_timestamps(text, name)
    else:
        raise RFMInputError(
            f"column '{name}': type {kind} is not a date; expected a date, timestamp or text"
        )
    values = parsed.to_numpy()
    bad = np.isnat(values)
    if missing_allowed:
        bad &= present.is_valid().to_numpy(zero_copy_only=False)
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
    """Text to naive timestamps, keeping the wall-clock time of a single UTC offset.

    Text with more than one UTC offset (or offsets on some rows only) has no single calendar
    to take dates from, so it is an error rather than a guess. ISO 8601 text is parsed as
    such; anything else by one format inferred from the data and applied to every row, so an
    ambiguous day/month order is never mixed within a column.
    """
    parts = pc.extract_regex(text, TIME_WITH_OFFSET)
    offsets = pc.struct_field(parts, "offset")
    found = (
        pa.Table.from_arrays(
            [offsets, pc.struct_field(parts, "hours"), pc.struct_field(parts, "minutes")],
            names=["offset", "hours", "minutes"],
        )
        .group_by(["offset", "hours", "minutes"])
        .aggregate([])
    )
    zones = {
        zone_label(row["offset"], row["hours"], row["minutes"])
        for row in found.to_pylist()
        if row["offset"] is not None
    }
    with_offset = len(offsets) - offsets.null_count
    present = len(text) - text.null_count
    if len(zones) > 1 or (zones and with_offset != present):
        shown = sorted(zones) + (["none"] if with_offset != present else [])
        raise RFMInputError(
            f"column '{name}': mixed time zones ({', '.join(shown)}); convert the column to "
            "one zone first, e.g. UTC or the shop's local time"
        )
    wall_clock = pc.struct_field(parts, "wall") if zones else text
    is_iso = pc.match_substring_regex(wall_clock, ISO_DATE_TEXT)
    if pc.all(is_iso).as_py() in (True, None):
        try:
            return pc.cast(
                pc.replace_substring_regex(wall_clock, EXTRA_FRACTION_DIGITS, r"\1"),
                pa.timestamp("us"),
            )
        except pa.ArrowInvalid:  # e.g. 2024-02-30: reported row by row below
            pass
    # The 100 smallest distinct values, as the Spark reader samples them.
    distinct = pc.unique(wall_clock.drop_null())
    sample = distinct.take(pc.sort_indices(distinct)[:100]).to_pylist()
    date_format = infer_date_format(sample)
    if date_format is None:  # nothing looks like a whole date: every row is reported
        return pa.chunked_array([pa.nulls(len(wall_clock), pa.timestamp("us"))])
    parsed = pd.to_datetime(wall_clock.to_pandas(), format=date_format, errors="coerce")
    return pa.chunked_array([pa.array(parsed.to_numpy(dtype="datetime64[us]"))])


def _numbers(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """float64 values; missing ones become NaN (counted later as invalid_amount).

    Text follows NUMBER_TEXT (blank text is missing); the words NaN and inf are numbers too
    (counted later as invalid_amount). Anything else is reported with examples.
    """
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if not pa.types.is_string(kind):
        raise RFMInputError(f"column '{name}': type {kind} is not a number")
    text = pc.utf8_trim(column, characters=WHITESPACE)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    is_number = pc.match_substring_regex(text, NUMBER_TEXT)
    is_nan = pc.match_substring_regex(text, NAN_TEXT)
    is_infinite = pc.match_substring_regex(text, INFINITY_TEXT)
    not_numbers = pc.invert(pc.or_(pc.or_(is_number, is_nan), is_infinite))
    bad = pc.fill_null(not_numbers, False)
    if pc.any(bad).as_py():
        examples = sorted(pc.unique(text.filter(bad)).to_pylist(), key=str)[:EXAMPLES_SHOWN]
        raise RFMInputError(
            f"column '{name}': {pc.sum(bad).as_py()} values are not numbers, e.g. {examples}"
        )
    # The words become pyarrow's spelling; the sign of an infinity stays.
    spelled = pc.if_else(is_nan, "nan", pc.replace_substring_regex(text, INFINITY_TEXT, r"\1inf"))
    return pc.cast(spelled, pa.float64()).to_numpy(zero_copy_only=False)


def _order_ids(column: pa.ChunkedArray) -> pd.Series:
    if pa.types.is_integer(column.type):
        return column.to_pandas(types_mapper={column.type: pd.Int64Dtype()}.get)
    return _text(column).to_pandas()


def _text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column as large_string, the type pandas keeps text in: a large_string column is
    handed over without a copy, where a string one would be copied twice (cast, convert)."""
    return column if pa.types.is_large_string(column.type) else column.cast(pa.large_string())
