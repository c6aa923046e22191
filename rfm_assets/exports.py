"""Writing result tables for people and other tools: atomic files, spreadsheet-safe CSV."""

import csv
import html
import json
import math
import numbers
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

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


def write_table(frame: pd.DataFrame, path: Path, file_format: str) -> None:
    """Parquet keeps the raw values; CSV is made spreadsheet-safe."""
    if file_format == "parquet":
        write_atomically(path, lambda p: frame.to_parquet(p, index=False))
    else:
        safe = neutralise_formulas(frame)
        write_atomically(path, lambda p: safe.to_csv(p, index=False, quoting=csv.QUOTE_NONNUMERIC))


def write_spark_table(frame, path: Path, file_format: str) -> None:
    """Write a Spark DataFrame by Spark, without collecting it to the driver.

    Parquet becomes a directory of part files (any Parquet reader opens it). CSV becomes one
    file, made spreadsheet-safe as `write_table` does. Either is written beside the target
    and then moved into place.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if file_format == "parquet":
            frame.write.parquet(str(staging))
            replace_path(staging, path)
            return
        triggers = "^[" + "".join("\\" + t if t in "-+" else t for t in FORMULA_TRIGGERS) + "]"
        safe = []
        for field in frame.schema.fields:
            column = F.col(f"`{field.name}`")
            if isinstance(field.dataType, T.ArrayType):
                column = F.to_json(column)
            elif isinstance(field.dataType, T.StringType):
                column = F.when(column.rlike(triggers), F.concat(F.lit("'"), column)).otherwise(
                    column
                )
            safe.append(column.alias(field.name))
        frame.select(*safe).coalesce(1).write.options(
            header=True,
            quoteAll=True,
            escape='"',
            timestampNTZFormat="yyyy-MM-dd HH:mm:ss",
            timestampFormat="yyyy-MM-dd HH:mm:ssXXX",
        ).csv(str(staging))
        (part,) = staging.glob("part-*.csv")
        write_atomically(path, lambda p: os.replace(part, p))
    except OSError as error:
        raise RFMError(f"cannot write {path}: {error.strerror or error}") from None
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
