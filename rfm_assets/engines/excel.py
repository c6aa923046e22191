"""An Excel sheet as a typed Arrow table, read the same way for both engines.

A sheet's cells carry their own types, as a Parquet file's columns do: each column takes one
type from its cells (docs/contract.md, "Sources: files, folders and types"), and both engines
then read that table as they read Parquet, by the same grammar and the same counted
exclusions. The workbook is read by python-calamine, which reads .xlsx, .xlsm and .xls.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

import pyarrow as pa

from rfm_assets.errors import RFMInputError

EXCEL_SUFFIXES = (".xlsx", ".xlsm", ".xls")
# The largest integer a spreadsheet number (an IEEE double) holds exactly.
LARGEST_EXACT_INTEGER = 2**53


def is_excel(path: str) -> bool:
    return path.lower().endswith(EXCEL_SUFFIXES)


def read_sheet(
    path: str, sheet: Optional[str], needed: Optional[list[str]] = None
) -> tuple[str, list[str], pa.Table]:
    """(the sheet read, its header, its `needed` columns, or every column, as a typed table).

    The first sheet unless `sheet` names one; the first row is the header. An empty cell is
    missing. A column of numbers becomes int64 when every number is a whole one (Excel keeps
    whole numbers as doubles), else float64; a column of dates and date-times becomes a naive
    timestamp; a column of text stays text; a column that mixes kinds becomes text, each cell
    written as text (whole numbers without ".0", dates in ISO form) for the shared grammar.
    """
    from python_calamine import CalamineError, CalamineWorkbook

    def unreadable(error: Exception) -> RFMInputError:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return RFMInputError(f"input_path: cannot read {path}: {first}")

    try:
        book = CalamineWorkbook.from_path(path)
    except (CalamineError, OSError, ValueError) as error:
        raise unreadable(error) from None
    names = book.sheet_names
    if not names:
        raise RFMInputError(f"input_path: {path} has no sheets")
    if sheet is None:
        sheet = names[0]
    elif sheet not in names:
        raise RFMInputError(
            f"sheet: {sheet!r} is not a sheet of {path}; its sheets are: {', '.join(names)}"
        )
    try:
        rows = book.get_sheet_by_name(sheet).to_python()
    except (CalamineError, OSError, ValueError) as error:
        raise unreadable(error) from None
    if not rows or not any(cell != "" for cell in rows[0]):
        raise RFMInputError(f"input_path: sheet {sheet!r} of {path} is empty")
    header = [_text_of(cell) for cell in rows[0]]
    while header and header[-1] == "":  # a formatted but empty column at the right
        header.pop()
    # a blank name inside the header is named by its place, as pandas names it
    header = [name or f"Unnamed: {index}" for index, name in enumerate(header)]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise RFMInputError(
            f"input_path: the header of sheet {sheet!r} of {path} repeats {', '.join(repeated)}"
        )
    columns = {}
    for name in header if needed is None else needed:
        if name not in header:
            continue  # the caller names what is missing
        index = header.index(name)
        cells = [row[index] if index < len(row) else "" for row in rows[1:]]
        columns[name] = _column(cells)
    return sheet, header, pa.table(columns)


def _column(cells: list) -> pa.Array:
    """One column's cells as one Arrow type (see read_sheet)."""
    present = [cell for cell in cells if cell != ""]
    kinds = {_kind(cell) for cell in present}
    if kinds == {"number"}:
        whole = all(float(c).is_integer() and abs(c) < LARGEST_EXACT_INTEGER for c in present)
        values = [None if c == "" else (int(c) if whole else float(c)) for c in cells]
        return pa.array(values, type=pa.int64() if whole else pa.float64())
    if kinds == {"date"}:
        values = [None if c == "" else _timestamp(c) for c in cells]
        return pa.array(values, type=pa.timestamp("us"))
    if kinds == {"boolean"}:  # refused where a field is mapped to it, as in Parquet
        return pa.array([None if c == "" else c for c in cells], type=pa.bool_())
    return pa.array([None if c == "" else _text_of(c) for c in cells], type=pa.string())


def _kind(cell) -> str:
    if isinstance(cell, bool):
        return "boolean"
    if isinstance(cell, (int, float)):
        return "number"
    if isinstance(cell, (dt.datetime, dt.date)):
        return "date"
    return "text"


def _timestamp(cell) -> dt.datetime:
    return cell if isinstance(cell, dt.datetime) else dt.datetime.combine(cell, dt.time())


def _text_of(cell) -> str:
    """A cell as the text a CSV export of it would hold."""
    if isinstance(cell, bool):
        return "TRUE" if cell else "FALSE"
    if isinstance(cell, float) and cell.is_integer() and abs(cell) < LARGEST_EXACT_INTEGER:
        return str(int(cell))
    if isinstance(cell, dt.datetime):
        return cell.isoformat(sep=" ")
    if isinstance(cell, (dt.date, dt.time)):
        return cell.isoformat()
    return str(cell)
