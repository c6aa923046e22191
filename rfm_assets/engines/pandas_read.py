"""Read a transaction source into the canonical pandas frame, reading only the mapped columns.

Canonical frame: `customer_id` (int64 or str, nullable), `transaction_date` (datetime64, naive,
wall-clock time of the source), `amount` (float64, NaN where missing), and `order_id` when an
order column is mapped.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads

from rfm_assets.errors import RFMInputError
from rfm_assets.settings import SourceColumns

EXAMPLES_SHOWN = 5


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
    source = Path(path)
    if not source.exists():
        raise RFMInputError(f"input_path: {path} does not exist")
    is_csv = source.suffix.lower() == ".csv"
    try:
        available = _csv_header(source) if is_csv else _parquet_dataset(source).schema.names
    except (OSError, pa.ArrowException, UnicodeDecodeError) as error:
        raise RFMInputError(f"input_path: cannot read {path}: {_first_line(error)}") from None
    missing = [name for name in columns.needed if name not in available]
    if missing:
        raise RFMInputError(
            f"columns: {', '.join(repr(m) for m in missing)} not found in {path}; "
            f"its columns are: {', '.join(available)}"
        )
    try:
        if is_csv:
            # Ids stay text so that leading zeros survive.
            as_text = {c: pa.string() for c in (columns.customer_id, columns.order_id) if c}
            return pacsv.read_csv(
                source,
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns.needed, column_types=as_text
                ),
            )
        return _parquet_dataset(source).to_table(columns=columns.needed)
    except (OSError, pa.ArrowException) as error:
        raise RFMInputError(f"input_path: cannot read {path}: {_first_line(error)}") from None


def _parquet_dataset(source: Path) -> pads.Dataset:
    return pads.dataset(source, format="parquet")


def _csv_header(source: Path) -> list[str]:
    with open(source, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise RFMInputError(f"input_path: {source} is empty")
    return header


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _customer_ids(column: pa.ChunkedArray, name: str) -> pd.Series:
    """Integers stay integers; integer-valued floats become integers; text is trimmed."""
    kind = column.type
    if pa.types.is_integer(kind):
        return column.to_pandas(types_mapper={kind: pd.Int64Dtype()}.get)
    if pa.types.is_floating(kind):
        values = column.to_numpy(zero_copy_only=False)
        present = values[~np.isnan(values)]
        if np.all(present == np.floor(present)):
            return pd.Series(pd.array(values, dtype="Float64")).astype("Int64")
        return pd.Series(values)
    text = pc.utf8_trim_whitespace(column.cast(pa.string()))
    # A blank id is no id.
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    return text.to_pandas()


def _timestamps(column: pa.ChunkedArray, name: str) -> np.ndarray:
    kind = column.type
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        # The calendar date is the one on the source's own clock.
        column = pc.local_timestamp(column)
    elif pa.types.is_date(kind):
        column = column.cast(pa.timestamp("s"))
    if pa.types.is_timestamp(column.type):
        values = column.to_numpy()
        bad = np.isnat(values)
        raw = column
    else:
        raw = column.cast(pa.string())
        parsed = pd.to_datetime(raw.to_pandas(), errors="coerce", format="mixed")
        values = parsed.to_numpy()
        bad = np.isnat(values)
    if bad.any():
        examples = pc.unique(raw.filter(pa.array(bad))).to_pylist()[:EXAMPLES_SHOWN]
        raise RFMInputError(
            f"column '{name}': {int(bad.sum())} values are not dates, e.g. {examples}"
        )
    return values


def _numbers(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """float64 values; missing ones become NaN (counted later as invalid_amount)."""
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_decimal(column.type):
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    text = column.cast(pa.string())
    values = pd.to_numeric(text.to_pandas(), errors="coerce").to_numpy(dtype=np.float64)
    not_numbers = np.isnan(values) & ~text.is_null().to_numpy(zero_copy_only=False)
    if not_numbers.any():
        examples = pc.unique(text.filter(pa.array(not_numbers))).to_pylist()[:EXAMPLES_SHOWN]
        raise RFMInputError(
            f"column '{name}': {int(not_numbers.sum())} values are not numbers, e.g. {examples}"
        )
    return values


def _order_ids(column: pa.ChunkedArray) -> pd.Series:
    if pa.types.is_integer(column.type):
        return column.to_pandas(types_mapper={column.type: pd.Int64Dtype()}.get)
    return column.cast(pa.string()).to_pandas()
