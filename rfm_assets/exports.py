"""Writing result tables for people and other tools: atomic files, spreadsheet-safe CSV."""

import csv
import json
import os
import uuid
from pathlib import Path

import pandas as pd

from rfm_assets.errors import RFMError

# OWASP "CSV Injection": a spreadsheet treats a cell that starts with one of these as a
# formula. Such text cells get a leading single quote, and every text field is quoted.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


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


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy in which no text cell can start a spreadsheet formula; numbers are untouched.

    List cells (the score thresholds) become JSON text first.
    """
    safe = frame.copy()
    for column in safe.columns:
        values = safe[column]
        if not _is_text(values):
            continue
        if values.dtype == object and values.map(lambda v: isinstance(v, list)).any():
            safe[column] = values.map(json.dumps)
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
