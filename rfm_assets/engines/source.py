"""What a source (transactions or customer rows) holds, decided once for both engines.

`list_source` opens nothing but file footers and a CSV header: it finds the data files of a
path, the Hive-style `key=value` directory columns, and one type per column that every file
agrees on (by `unify_types`). Both engines then read exactly those files with exactly those
types, so a directory reads the same whatever the order of its file names, and the pandas
and Spark engines read the same table. The rules are in docs/contract.md.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from rfm_assets.engines.excel import is_excel, read_sheet
from rfm_assets.errors import RFMInputError

if TYPE_CHECKING:
    from rfm_assets.engines.spec import SourceColumns

# Files and directories whose names start with these are not data (Spark's and pyarrow's
# rule: _SUCCESS, _metadata, .crc files, hidden files). They are counted, never read.
SKIPPED_PREFIXES = ("_", ".")
# How many file names an error message shows per type.
FILES_SHOWN = 3


@dataclass(frozen=True)
class SourceListing:
    """The files of a source and the one type of each column.

    `listed` is False for a path this machine cannot list (a Spark-only URI): the Spark
    engine then reads it with its own discovery and types.
    """

    path: str
    is_csv: bool
    listed: bool = True
    root: str = ""
    files: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    partition_columns: tuple[str, ...] = ()
    # column -> its unified Arrow type (CSV: every column is text)
    types: Optional[dict[str, pa.DataType]] = None
    # files whose needed columns have identical types, read together
    groups: tuple[tuple[str, ...], ...] = ()
    # file -> its own Arrow types of the needed columns (to cast each group to `types`)
    file_types: Optional[dict[str, dict[str, pa.DataType]]] = None
    # (valid dates, {rows, first_day, last_day, large}): date statistics a reader took along
    # while it validated the source, so that the cleaning step need not pass over it again.
    date_statistics: Optional[tuple] = None
    # the columns the readers read, in order: the mapped ones, or every column of the source
    # (SourceColumns.every_column); empty where not listed
    read_columns: tuple[str, ...] = ()
    # An Excel source: the sheet read and its needed columns, read once (engines/excel.py).
    sheet: Optional[str] = None
    table: Optional[pa.Table] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def files_read(self) -> int:
        return len(self.files)

    @property
    def files_skipped(self) -> int:
        return len(self.skipped)


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> Path:
    return Path(path.removeprefix("file://"))


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_input_path(path: str) -> None:
    """Errors a local path shows before any reader opens it.

    Only regular files and directories are read: a FIFO or a device (`/dev/zero`) would hang
    or grow memory without end.
    """
    if not is_local(path):
        return
    source = local_path(path)
    try:
        mode = source.stat().st_mode
    except FileNotFoundError:
        if source.is_symlink():
            raise RFMInputError(f"input_path: {path} is a link to a missing file") from None
        raise RFMInputError(f"input_path: {path} does not exist") from None
    except OSError as error:
        raise RFMInputError(f"input_path: cannot read {path}: {error.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise RFMInputError(
            f"input_path: {path} is not a regular file or directory (a pipe or device?)"
        )
    if stat.S_ISREG(mode) and source.stat().st_size == 0:
        raise RFMInputError(f"input_path: {path} is empty")


def csv_header(path: str) -> list[str]:
    """The column names of a local CSV file; a repeated name is an error in both engines."""
    try:
        with open(local_path(path), newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
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
        elif columns.recency == "recency" and "recency" not in available:
            hint = " (map columns.recency, or columns.last_purchase_date for a date)"
        raise RFMInputError(
            f"{', '.join(missing)} not found in {path}{hint}; "
            f"its columns are: {', '.join(available)}"
        )


def list_source(path: str, columns: SourceColumns, sheet: Optional[str] = None) -> SourceListing:
    """Files, directory columns and unified column types of `path` (see the module doc);
    `sheet` names the sheet of an Excel workbook (default: its first)."""
    check_input_path(path)
    is_csv = path.lower().endswith(".csv")
    if is_excel(path):
        return _excel_listing(path, columns, sheet)
    if not is_local(path):
        return SourceListing(path=path, is_csv=is_csv, listed=False)
    source = local_path(path)
    if is_csv:
        header = csv_header(path)
        check_columns(path, columns, header)
        file = str(source)
        read = header if columns.every_column else columns.needed
        text = {name: pa.string() for name in read}
        return SourceListing(
            path=path,
            is_csv=True,
            root=str(source.parent),
            files=(file,),
            types=dict.fromkeys(header, pa.string()) | text,
            groups=((file,),),
            file_types={file: text},
            read_columns=tuple(read),
        )
    if source.is_dir():
        files, skipped, partitions = _data_files(source, path)
        root = str(source)
    else:
        files, skipped, partitions, root = [str(source)], [], {}, str(source.parent)
    partition_columns = _partition_columns(partitions, path)
    schemas = {file: _parquet_schema(file, path) for file in files}
    available = list(dict.fromkeys(n for s in schemas.values() for n in s.names))
    available += [c for c in partition_columns if c not in available]
    check_columns(path, columns, available)
    read = available if columns.every_column else columns.needed
    file_types: dict[str, dict[str, pa.DataType]] = {}
    for file, schema in schemas.items():
        own = {}
        for name in read:
            if name in partition_columns:
                own[name] = pa.string()
            elif name in schema.names:
                own[name] = schema.field(name).type
            else:
                every = (
                    "every column, to compare whole lines (drop_duplicate_rows)"
                    if name not in columns.needed
                    else "every mapped column"
                )
                raise RFMInputError(
                    f"input_path: {_relative(file, root)} in {path} has no column {name!r}; "
                    f"every file needs {every}"
                )
        file_types[file] = own
    types = {name: unify_types(name, {f: t[name] for f, t in file_types.items()}, path, root)
             for name in read}  # fmt: skip
    check_types(types, columns)
    groups: dict[tuple, list[str]] = {}
    for file in files:
        signature = tuple(str(file_types[file][name]) for name in read)
        groups.setdefault(signature, []).append(file)
    return SourceListing(
        path=path,
        is_csv=False,
        root=root,
        files=tuple(files),
        skipped=tuple(skipped),
        partition_columns=tuple(partition_columns),
        types=types,
        groups=tuple(tuple(g) for g in groups.values()),
        file_types=file_types,
        read_columns=tuple(read),
    )


def _excel_listing(path: str, columns: SourceColumns, sheet: Optional[str]) -> SourceListing:
    """An Excel workbook's sheet, read once here: its cells' types are only known by reading
    them, and both engines read the table from the listing."""
    if not is_local(path):
        raise RFMInputError(
            f"input_path: {path}: Excel workbooks are read from a local path; copy it here "
            "or export the sheet to Parquet"
        )
    file = str(local_path(path))
    sheet, header, table = read_sheet(file, sheet, None if columns.every_column else columns.needed)
    check_columns(f"sheet {sheet!r} of {path}", columns, header)
    types = {name: table.schema.field(name).type for name in table.column_names}
    check_types(types, columns)
    return SourceListing(
        path=path,
        is_csv=False,
        root=str(local_path(path).parent),
        files=(file,),
        types=types,
        groups=((file,),),
        file_types={file: types},
        sheet=sheet,
        table=table,
        read_columns=tuple(table.column_names),
    )


def _data_files(root: Path, path: str) -> tuple[list[str], list[str], dict[str, dict]]:
    """Data files under `root` (sorted), the skipped ones, and each file's directory values."""
    files, skipped, partitions = [], [], {}
    for directory, subdirectories, names in os.walk(root, followlinks=True):
        subdirectories.sort()
        relative = Path(directory).relative_to(root)
        hidden = any(part.startswith(SKIPPED_PREFIXES) for part in relative.parts)
        for name in sorted(names):
            file = Path(directory) / name
            if hidden or name.startswith(SKIPPED_PREFIXES):
                skipped.append(str(file))
                continue
            try:
                mode = file.stat().st_mode
            except OSError:
                raise RFMInputError(
                    f"input_path: {_relative(str(file), str(root))} in {path} cannot be read "
                    "(a broken link?)"
                ) from None
            if not stat.S_ISREG(mode):
                raise RFMInputError(
                    f"input_path: {_relative(str(file), str(root))} in {path} is not a regular "
                    "file (a pipe or device?)"
                )
            files.append(str(file))
            partitions[str(file)] = dict(
                part.split("=", 1) for part in relative.parts if "=" in part
            )
    if not files:
        what = f" ({len(skipped)} skipped: names starting with _ or .)" if skipped else ""
        raise RFMInputError(f"input_path: {path} holds no columns (no Parquet files?){what}")
    return files, skipped, partitions


def _partition_columns(partitions: dict[str, dict], path: str) -> list[str]:
    """Hive-style directory columns, which every file must have the same of."""
    keys = {tuple(values) for values in partitions.values()}
    if len(keys) > 1:
        shown = " / ".join(sorted(", ".join(k) or "none" for k in keys))
        raise RFMInputError(
            f"input_path: the key=value directories of {path} name different columns ({shown})"
        )
    return list(keys.pop()) if keys else []


def _parquet_schema(file: str, path: str) -> pa.Schema:
    try:
        # INT96 timestamps (legacy Spark/Impala) as microseconds: as nanoseconds they wrap
        # outside 1677-2262.
        return pq.ParquetFile(file, coerce_int96_timestamp_unit="us").schema_arrow
    except (OSError, pa.ArrowException) as error:
        where = file if file == str(local_path(path)) else f"{file} in {path}"
        raise RFMInputError(f"input_path: cannot read {where}: {first_line(error)}") from None


def _relative(file: str, root: str) -> str:
    try:
        return str(Path(file).relative_to(root))
    except ValueError:
        return file


# --- one type per column -----------------------------------------------------------------

# What each canonical field may be read from, by type family.
ALLOWED_FAMILIES = {
    "customer_id": (
        {"integer", "float", "decimal", "text"},
        "is not an id; expected integers or text",
    ),
    "order_id": (
        {"integer", "float", "decimal", "text"},
        "is not an id; expected integers or text",
    ),
}
_DATE = ({"timestamp", "date", "text"}, "is not a date; expected a date, timestamp or text")
_NUMBER = ({"integer", "float", "decimal", "text"}, "is not a number")
ALLOWED_FAMILIES |= dict.fromkeys(
    ("transaction_date", "last_purchase_date", "first_purchase_date"), _DATE
)
ALLOWED_FAMILIES |= dict.fromkeys(
    ("amount", "quantity", "unit_price", "recency", "frequency", "monetary"), _NUMBER
)


def check_types(types: dict[str, pa.DataType], columns: SourceColumns) -> None:
    """Each mapped column's type must suit its field (booleans are no ids, numbers no dates)."""
    for field, name in columns.mapping.items():
        if not name:
            continue
        allowed, problem = ALLOWED_FAMILIES[field]
        family = _family(types[name]).split("[")[0]
        if family not in allowed:
            raise RFMInputError(f"column '{name}': type {types[name]} {problem}")


def _family(kind: pa.DataType) -> str:
    if pa.types.is_null(kind):
        return "null"
    if pa.types.is_dictionary(kind):
        return _family(kind.value_type)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "text"
    if pa.types.is_integer(kind):
        return "integer"
    if pa.types.is_floating(kind):
        return "float"
    if pa.types.is_decimal(kind):
        return "decimal"
    if pa.types.is_timestamp(kind):
        return f"timestamp[{kind.tz}]" if kind.tz else "timestamp"
    if pa.types.is_date(kind):
        return "date"
    if pa.types.is_boolean(kind):
        return "boolean"
    return "other"


def unify_types(
    column: str, types_by_file: dict[str, pa.DataType], path: str, root: str
) -> pa.DataType:
    """The one type of `column` across files, by a rule that ignores file order.

    - text of any Arrow flavour (string, large_string, string_view, dictionary) -> string;
    - integers -> int64; floats -> float64; integers with floats or decimals -> float64;
      one decimal type stays as it is;
    - timestamps in one zone (or all without one) -> microseconds in that zone; dates with
      zone-less timestamps -> zone-less microseconds;
    - an all-null file column takes the others' type;
    - anything else (text beside numbers, zoned beside zone-less timestamps, nested types)
      is refused, naming the files of each type.
    """
    kinds = list(types_by_file.values())
    families = {_family(k) for k in kinds} - {"null"}
    nested = [k for k in kinds if _family(k) == "other"]
    if nested:
        raise RFMInputError(
            f"column '{column}': type {nested[0]} is not supported; expected text, a number "
            "or a date"
        )
    if not families:
        return pa.string()
    if families == {"text"}:
        return pa.string()
    if families == {"integer"}:
        return pa.int64()
    if families == {"decimal"} and len({k for k in kinds if _family(k) == "decimal"}) == 1:
        return next(k for k in kinds if _family(k) == "decimal")
    if families <= {"integer", "float", "decimal"}:
        return pa.float64()
    if families == {"boolean"}:
        return pa.bool_()
    if len(families) == 1 and next(iter(families)).startswith("timestamp"):
        zone = next(k for k in kinds if pa.types.is_timestamp(k)).tz
        units = {k.unit for k in kinds if pa.types.is_timestamp(k)}
        return pa.timestamp(units.pop() if len(units) == 1 else "us", tz=zone)
    if families == {"date"}:
        return pa.date32()
    if families == {"date", "timestamp"}:
        return pa.timestamp("us")
    by_type: dict[str, list[str]] = {}
    for file, kind in types_by_file.items():
        if _family(kind) != "null":
            by_type.setdefault(str(kind), []).append(_relative(file, root))
    shown = ", ".join(
        f"{kind} ({', '.join(names[:FILES_SHOWN])}{', ...' if len(names) > FILES_SHOWN else ''})"
        for kind, names in sorted(by_type.items())
    )
    raise RFMInputError(
        f"input_path: column '{column}' has different types in the files of {path}: {shown}; "
        "write every file with one type"
    )
