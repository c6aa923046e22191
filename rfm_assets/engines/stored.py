"""The store as the engines see it, without Dagster: handles on an asset value (`StoredTable`
for a stored one, `StagedTable` for a week of a range written but not yet current,
`HeldTable` for one held in the process), the names of the store's layout
(see rfm_assets.io_manager, which writes it), and the reading of a stored cluster model. The
IO managers hand the handles out."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd
from upath import UPath

from rfm_assets.errors import RFMError

LOCAL_PROTOCOLS = ("", "file", "local")


POINTER = "CURRENT"


LATEST_PARTITION = "LATEST"


def is_spark_dataframe(value: Any) -> bool:
    # No Spark DataFrame exists before PySpark is imported, and a pandas run never imports it.
    if "pyspark.sql" not in sys.modules:
        return False
    from pyspark.sql import DataFrame

    # PySpark 4's classic DataFrame is a subclass: isinstance, never ==.
    return isinstance(value, DataFrame)


def is_local(path: UPath) -> bool:
    return path.protocol in LOCAL_PROTOCOLS


def plain(path: UPath) -> str:
    """The path as readers outside fsspec take it: a plain local path or the full URI."""
    return path.path if is_local(path) else str(path)


MODEL_FILE = "cluster_model.json"


def small_file_kind(path: UPath) -> tuple[str, Optional[int]]:
    """("file", size), ("directory", None) or ("other", None) of `path`, from a stat (local)
    or the file system's info (a URI): nothing is opened, so a pipe or device cannot hang or
    fill memory. A missing path raises FileNotFoundError."""
    import stat

    if is_local(path):
        mode = os.stat(path.path)
        if stat.S_ISDIR(mode.st_mode):
            return "directory", None
        return ("file", mode.st_size) if stat.S_ISREG(mode.st_mode) else ("other", None)
    info = path.fs.info(path.path)
    kind = info.get("type")
    size = info.get("size")
    if kind == "directory":
        return "directory", None
    return ("file", size if isinstance(size, int) else None) if kind == "file" else ("other", None)


def _small_file_text(path: UPath, location: str) -> str:
    """The text of a model file (or of a store's CURRENT / LATEST pointer) at `path`: a
    regular file of at most MODEL_MAX_BYTES, checked before it is opened and read no further
    than that bound (a URI may not tell its size)."""
    from rfm_assets.engines.clustering import MODEL_MAX_BYTES
    from rfm_assets.errors import RFMConfigError

    shown = location if str(path) == str(UPath(location)) else f"{location}: {plain(path)}"
    try:
        kind, size = small_file_kind(path)
    except FileNotFoundError:
        raise RFMConfigError(f"cluster_model_path: {shown} does not exist") from None
    if kind != "file":
        raise RFMConfigError(
            f"cluster_model_path: {shown} is not a regular file (a directory, pipe or device?)"
        )
    bound = (
        f"{MODEL_MAX_BYTES // 2**20} MiB"
        if MODEL_MAX_BYTES % 2**20 == 0
        else f"{MODEL_MAX_BYTES:,} bytes"
    )
    too_big = (
        f"cluster_model_path: {shown} is larger than {bound}, the most a cluster model may be "
        "(a model is a few KB)"
    )
    if size is not None and size > MODEL_MAX_BYTES:
        raise RFMConfigError(too_big)
    with path.open("rb") as handle:
        data = handle.read(MODEL_MAX_BYTES + 1)
    if len(data) > MODEL_MAX_BYTES:
        raise RFMConfigError(too_big)
    return data.decode("utf-8")


def _named_by(pointer: UPath, location: str) -> UPath:
    """What a store's CURRENT or LATEST names, beside it: one plain name, never a path that
    leads elsewhere (`../..`)."""
    from rfm_assets.errors import RFMConfigError

    name = _small_file_text(pointer, location).strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise RFMConfigError(
            f"cluster_model_path: {location}: {plain(pointer)} is damaged: it holds "
            f"{name[:60]!r}, not the name of what is stored beside it"
        )
    return pointer.parent / name


def model_document_at(location: str) -> tuple[Any, str]:
    """(the JSON document, where it was read) of a stored cluster model.

    `location` is a model file, a folder holding `cluster_model.json` (an `analyze --output`),
    or a `cluster_model` location of this store: its current version, or, when it is
    weekly, the latest week's. Only regular files and directories are looked at, and files of
    at most MODEL_MAX_BYTES (see `_small_file_text`). Anything else is one line naming
    `location`.
    """
    from rfm_assets.errors import RFMConfigError

    path = UPath(location)
    try:
        kind, _ = small_file_kind(path)
        if kind == "other":
            raise RFMConfigError(
                f"cluster_model_path: {location} is not a regular file or directory (a pipe "
                "or device?)"
            )
        if kind == "directory":
            if (path / MODEL_FILE).exists():
                path = path / MODEL_FILE
            else:
                if not (path / POINTER).exists() and (path / LATEST_PARTITION).exists():
                    path = _named_by(path / LATEST_PARTITION, location)
                if not (path / POINTER).exists():
                    raise RFMConfigError(
                        f"cluster_model_path: {location} holds no {MODEL_FILE} and no stored "
                        "cluster_model"
                    )
                path = _named_by(path / POINTER, location)
        text = _small_file_text(path, location)
    except FileNotFoundError:
        raise RFMConfigError(f"cluster_model_path: {location} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RFMConfigError(f"cluster_model_path: cannot read {location}: {error}") from None
    try:
        return json.loads(text), plain(path)
    except json.JSONDecodeError as error:
        raise RFMConfigError(
            f"cluster model {plain(path)}: not JSON ({error.msg} at line {error.lineno})"
        ) from None
    except (ValueError, RecursionError) as error:  # a number too long, nesting too deep
        problem = "nested too deeply" if isinstance(error, RecursionError) else error
        raise RFMConfigError(f"cluster model {plain(path)}: not JSON ({problem})") from None


@dataclass(frozen=True)
class StoredTable:
    """A handle on a stored asset value, for consumers that load it with their own engine."""

    path: str
    storage_options: dict = field(default_factory=dict)
    # The run context the table was computed in (see rfm_assets.table_context).
    context: dict = field(default_factory=dict)

    def to_pandas(self, columns: Optional[list[str]] = None) -> pd.DataFrame:
        try:
            frame = pd.read_parquet(
                self.path, columns=columns, storage_options=self.storage_options or None
            )
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise RFMError(
                f"{self.path}: the stored table cannot be read ({first}); materialize it again"
            ) from None
        frame.attrs["rfm_context"] = dict(self.context)
        return frame

    def to_spark(self, spark):
        return spark.read.parquet(self.path)


@dataclass(frozen=True)
class StagedTable(StoredTable):
    """A week of a range of weeks written to the store but not current yet: a range's step
    writes each week as it computes it, so it holds one week's table in memory and not the
    range's, and the IO manager makes the weeks current only once every week has passed its
    checks (see rfm_assets.assets.graph.week_by_week)."""


@dataclass(frozen=True)
class HeldTable:
    """A value held in the process with the run context a stored table would carry beside
    it: a Spark DataFrame handed from step to step (the command line's runs), or one week's
    value of a range of weeks computed in one step (a single-run backfill), before it is
    stored."""

    frame: object
    context: dict = field(default_factory=dict)

    def to_spark(self, spark):
        return self.frame

    def to_pandas(self, columns: Optional[list[str]] = None) -> pd.DataFrame:
        if isinstance(self.frame, pd.DataFrame):
            return self.frame if columns is None else self.frame[columns]
        chosen = self.frame.select(*columns) if columns else self.frame  # a few Spark rows
        return pd.DataFrame([row.asDict() for row in chosen.collect()], columns=chosen.columns)


class WeeksReadOnUse(Mapping[str, Any]):
    """{week: table} whose tables are read from the store each time one is asked for."""

    def __init__(self, readers: dict[str, Callable[[], Any]]):
        self._readers = readers

    def __getitem__(self, week: str) -> Any:
        return self._readers[week]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._readers)

    def __len__(self) -> int:
        return len(self._readers)
