"""Writing result tables for people and other tools: atomic files, spreadsheet-safe CSV."""

import csv
import html
import json
import math
import numbers
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rfm_assets.errors import RFMError

# OWASP "CSV Injection": a spreadsheet treats a cell that starts with one of these as a
# formula. Such text cells get a leading single quote, and every text field is quoted.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def markdown_cell(value, number: Optional[str] = None) -> str:
    """Text safe inside a Markdown table cell: no raw HTML, no link or image, no column
    breaks, one line. With `number` (a format spec such as ",.2f") a real number is formatted
    with it and a missing one is "-"; anything else, text included, is escaped text."""
    if number is not None:
        nan = isinstance(value, (float, np.floating)) and math.isnan(value)
        if value is None or value is pd.NA or nan:
            return "-"
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return format(value, number)
    text = html.escape(" ".join(str(value).split()), quote=False)
    for special in ("\\", "|", "[", "]"):  # the backslash first: it escapes the others
        text = text.replace(special, "\\" + special)
    return text


def write_atomically(path: Path, write) -> None:
    """Write via a temporary file in the same folder, then rename it into place."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(staging)
        os.replace(staging, path)
    except OSError as error:
        raise RFMError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        staging.unlink(missing_ok=True)


def _is_text(series: pd.Series) -> bool:
    return (
        isinstance(series.dtype, pd.CategoricalDtype)
        or pd.api.types.is_string_dtype(series.dtype)
        or series.dtype == object
    )


def _is_list(value) -> bool:
    """A list cell: a list, or the array pyarrow reads a Parquet list back as."""
    return isinstance(value, (list, tuple, np.ndarray))


def list_text(value) -> str:
    """A list cell (the score thresholds) as CSV text: a JSON list of numbers, written as
    Spark's to_json writes it, so both engines' CSVs read alike."""
    if not _is_list(value):
        return json.dumps(value)
    return json.dumps([v.item() if isinstance(v, np.generic) else v for v in value],
                      separators=(",", ":"))  # fmt: skip


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy in which no text cell can start a spreadsheet formula; numbers are untouched.

    List cells (the score thresholds) become JSON text first.
    """
    safe = frame.copy()
    for column in safe.columns:
        values = safe[column]
        if not _is_text(values):
            continue
        if values.dtype == object and values.map(_is_list).any():
            safe[column] = values.map(list_text)
            continue
        if isinstance(values.dtype, pd.CategoricalDtype):
            categories = values.cat.categories.astype("str")
            risky = categories.str.startswith(FORMULA_TRIGGERS)
            safe[column] = values.cat.rename_categories(categories.where(~risky, "'" + categories))
            continue
        text = values.astype("str")
        risky = text.str.startswith(FORMULA_TRIGGERS).fillna(False).to_numpy(dtype=bool)
        safe[column] = text.where(~risky, "'" + text).where(values.notna(), None)
    return safe


# --- one set of column types and one CSV text, whichever engine wrote ------------------------
# The Spark engine's types are the published ones (Spark writes what it holds): text, not
# categories; 64-bit integers; timestamps in microseconds. The pandas engine's tables are
# written in them, so a table reads back the same whichever engine wrote it.


def published_arrow(frame: pd.DataFrame) -> pa.Table:
    """The frame as the Arrow table both engines write, in the published types (Spark's):
    categories and text as `string`, nullable integers without a missing value as int64,
    timestamps in microseconds. The types are changed in Arrow, not in pandas: turning a category
    column into a million Python strings took a second at 1M customers, where Arrow decodes
    the dictionary in C++. The pandas metadata is changed to match, so pandas reads the
    table back in the published types."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    described = json.loads(table.schema.metadata[b"pandas"])
    by_field = {column["field_name"]: column for column in described["columns"]}
    fields = []
    for field in table.schema:
        kind, column = field.type, by_field.get(field.name, {})
        if pa.types.is_dictionary(kind) or pa.types.is_large_string(kind):
            kind = pa.string()
            column.update(pandas_type="object", numpy_type="str", metadata=None)
        elif pa.types.is_timestamp(kind) and kind.unit != "us":
            kind = pa.timestamp("us", tz=kind.tz)
            column["numpy_type"] = "datetime64[us]"
        elif column.get("numpy_type") == "Int64" and table[field.name].null_count == 0:
            column["numpy_type"] = "int64"
        fields.append(field.with_type(kind))
    metadata = {**table.schema.metadata, b"pandas": json.dumps(described).encode()}
    return table.cast(pa.schema(fields, metadata=metadata))


def published_types(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` in the published column types, as pandas reads `published_arrow` back:
    categories as text, nullable integers without a missing value as int64, timestamps in
    microseconds (pandas keeps days as ms)."""
    return published_arrow(frame).to_pandas()


def write_parquet(frame: pd.DataFrame, target) -> None:
    """A pandas table as Parquet in the published types (`target`: a path or a handle)."""
    pq.write_table(published_arrow(frame), target)


# Zone-less timestamps (the purchase dates) as CSV text; a zoned one (segmented_at) is written
# as Python's isoformat writes it ("2024-01-01 06:00:00+00:00").
NAIVE_TEXT = "%Y-%m-%d %H:%M:%S"


def csv_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` as `write_csv` hands it to pandas' writer: the published types, text made
    spreadsheet-safe and lists as JSON (`neutralise_formulas`), booleans as true / false,
    zoned timestamps as text. Numbers keep pandas' text: Python's shortest exact form."""
    safe = neutralise_formulas(published_types(frame))
    changed = {}
    for name, column in safe.items():
        if pd.api.types.is_bool_dtype(column.dtype):
            changed[name] = column.map({True: "true", False: "false"})
        elif isinstance(column.dtype, pd.DatetimeTZDtype):
            changed[name] = column.map(
                lambda v: None if pd.isna(v) else v.isoformat(sep=" ", timespec="seconds")
            )
    return safe.assign(**changed) if changed else safe


def write_csv(frame: pd.DataFrame, target, header: bool = True) -> None:
    """The CSV text of both engines: every field quoted, a missing value empty."""
    csv_ready(frame).to_csv(target, index=False, header=header, quoting=csv.QUOTE_ALL,
                            date_format=NAIVE_TEXT)  # fmt: skip


def write_table(frame: pd.DataFrame, path: Path, file_format: str) -> None:
    """Parquet keeps the raw values, in the published types; CSV is `write_csv`'s text."""
    if file_format == "parquet":
        write_atomically(path, lambda p: write_parquet(frame, p))
    else:
        write_atomically(path, lambda p: write_csv(frame, p))


def write_spark_table(frame, path: Path, file_format: str) -> None:
    """Write a Spark DataFrame: Spark writes Parquet, a directory of part files (any Parquet
    reader opens it), without collecting the table to the driver. CSV is one file of
    `write_csv`'s text, the pandas engine's: Spark writes Parquet beside the target, then the
    driver turns it into CSV one record batch at a time, in the table's row order (Java
    writes doubles unlike Python, 1.0E7 for 10000000.0). Either is moved into place once
    written."""
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        frame.write.parquet(str(staging))
        if file_format == "parquet":
            replace_path(staging, path)
            return
        write_atomically(path, lambda p: _parquet_parts_as_csv(staging, p))
    except OSError as error:
        raise RFMError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _parquet_parts_as_csv(folder: Path, target: Path) -> None:
    """A Spark Parquet folder as one CSV, its header first, then batch by batch."""
    rows = _parts_in_order(folder)
    with open(target, "w", newline="", encoding="utf-8") as out:
        write_csv(rows.schema.empty_table().to_pandas(), out)
        for batch in rows:
            write_csv(batch.to_pandas(), out, header=False)


def _parts_in_order(folder: Path) -> pa.RecordBatchReader:
    """The rows of a Parquet folder Spark wrote, read batch by batch in the table's order:
    Spark writes partition i to part file i, so the files in name order are in row order."""
    parts = sorted(folder.glob("part-*.parquet"))
    batches = (batch for part in parts for batch in pq.ParquetFile(part).iter_batches())
    return pa.RecordBatchReader.from_batches(pq.ParquetFile(parts[0]).schema_arrow, batches)


# --- the gold table: customer_segments as a Delta table users query ------------------------

DELTA_HINT = 'output_table: needs the deltalake package; pip install "rfm_assets[delta]"'


def require_delta() -> None:
    """Refuse in one line when deltalake (the `delta` extra) is not installed."""
    import importlib.util

    if importlib.util.find_spec("deltalake") is None:
        raise RFMError(DELTA_HINT)


def write_delta_table(frame, uri: str, week: Optional[str] = None) -> int:
    """`frame` (pandas or Spark) as the Delta table at `uri`, in the published types and
    column names; returns the table's new version. The whole table is replaced in one
    commit, so a reader sees the old table or the new one, never a mix; with `week` (a
    weekly partition), only that week's rows are replaced, told apart by a `week` column.

    A Spark frame is written by Spark as Parquet beside the table, then streamed into it by
    record batches on the driver (delta-rs, the same writer as pandas')."""
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import DeltaError

    from rfm_assets.engines.stored import is_spark_dataframe

    def write(data) -> int:
        exists = DeltaTable.is_deltatable(uri)
        try:
            if week is not None and exists:
                write_deltalake(uri, data, mode="overwrite", predicate=f"week = '{week}'")
            else:
                write_deltalake(uri, data, mode="overwrite", schema_mode="overwrite")
            return DeltaTable(uri).version()
        except (DeltaError, OSError, ValueError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RFMError(f"output_table: cannot write {uri}: {first}") from None

    if not is_spark_dataframe(frame):
        table = published_arrow(frame)
        if week is not None:
            table = table.append_column("week", pa.array([week] * table.num_rows, pa.string()))
        return write(table.replace_schema_metadata(None))
    from pyspark.sql import functions as F

    if week is not None:
        frame = frame.withColumn("week", F.lit(week))
    staging = Path(tempfile.mkdtemp(prefix="rfm-delta-"))
    try:
        frame.write.parquet(str(staging / "table"))
        return write(_parts_in_order(staging / "table"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_path(staging: Path, path: Path) -> None:
    """Move a finished file or directory into place, replacing a file or directory there."""
    previous = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
    if path.exists():
        os.replace(path, previous)
    os.replace(staging, path)
    if previous.is_dir():
        shutil.rmtree(previous, ignore_errors=True)
    elif previous.exists():
        previous.unlink()


# --- campaign lists -------------------------------------------------------------------------

# What an email or ads tool needs per customer, by default.
CAMPAIGN_COLUMNS = (
    "customer_id",
    "segment",
    "recommendation",
    "R_score",
    "F_score",
    "M_score",
    "recency",
    "frequency",
    "monetary",
)


def campaign_lists(
    segments: pd.DataFrame,
    catalog: dict[str, str],
    chosen: tuple[str, ...] = (),
    columns: tuple[str, ...] = CAMPAIGN_COLUMNS,
) -> dict[str, pd.DataFrame]:
    """segment_id -> that segment's customers (in customer_segments order) with `columns`.

    `catalog` maps the rule set's segment_ids to names, in priority order; `chosen` names
    segments by either (all when empty). A segment without customers still gets its list,
    with the header only.
    """
    unknown = [c for c in columns if c not in segments.columns]
    if unknown:
        raise RFMError(
            f"--campaign-columns: {', '.join(unknown)} not in customer_segments; its columns "
            f"are: {', '.join(map(str, segments.columns))}"
        )
    by_name = {name: segment_id for segment_id, name in catalog.items()}
    wanted = []
    for item in chosen or tuple(catalog):
        segment_id = item if item in catalog else by_name.get(item)
        if segment_id is None:
            raise RFMError(
                f"--campaign-segments: no segment {item!r}; the segments are: {', '.join(catalog)}"
            )
        wanted.append(segment_id)
    ids = segments["segment_id"].astype("str").to_numpy()
    return {
        segment_id: segments.loc[ids == segment_id, list(columns)]
        for segment_id in dict.fromkeys(wanted)
    }
