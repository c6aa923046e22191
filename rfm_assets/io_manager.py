"""Parquet storage of asset values, one location per asset key under `base_dir`.

Layout of an asset's location `<base_dir>/<asset key path>/`:

    CURRENT                      the name of the current version (one line)
    v<time>-<id>.parquet         a version written by pandas (one file)
    v<time>-<id>.parquet/        a version written by Spark (a directory of part files)
    v<time>-<id>.parquet.context.json   the run context the version was computed in
                                 (reference date, scale, rule set, thresholds, engine, ...)
    v<time>-<id>.json            a version of a document asset (a dict: the cluster model)

A weekly-partitioned asset has one such location per partition key below its own, and a
`LATEST` file naming the latest week stored, which an unkeyed load (`defs.load_asset_value(
"customer_segments")`) returns.

A write puts a complete new version beside the old ones, then replaces `CURRENT` atomically
(a rename on a local disk, a single PUT on an object store), then removes the old versions.
A failed or killed write therefore never touches what `CURRENT` points to: the previous
value stays readable. Spark versions are written by the executors, never collected.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
import typing
import uuid
from pathlib import Path
from typing import Any, Literal, Optional

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

from rfm_assets.engines.stored import (
    LATEST_PARTITION,
    POINTER,
    HeldTable,
    StagedTable,
    StoredTable,
    WeeksReadOnUse,
    is_local,
    is_spark_dataframe,
    plain,
    small_file_kind,
)
from rfm_assets.errors import memory_failures_named
from rfm_assets.exports import write_parquet
from rfm_assets.spark_resource import SparkResource

# Output metadata key under which an asset hands the IO manager its table's run context.
CONTEXT_METADATA = "rfm/context"
CONTEXT_SUFFIX = ".context.json"
# Metadata of an input that takes several weeks of an asset (RFMGraph.weeks_in): the IO
# manager hands a {week: StoredTable} mapping of the weeks stored (unpartitioned: {"current":
# the value, "previous": the one it replaced}).
WEEKS_INPUT = "rfm/weeks"
# Where the rfm_report asset's page (its value, a str) is written in its location.
REPORT_FILE = "report.html"
# What `dump_to_path` names a version: v<nanoseconds>-<8 hex>.parquet or .json.
VERSION_NAME = re.compile(r"v\d+-[0-9a-f]{8}\.(?:parquet|json)")
# A week of a range written before the range is stored (RFMStore.stage): not a version, so no
# other write removes it; named as a version when the range is stored.
STAGED_NAME = re.compile(r"staged-(\d+)-[0-9a-f]{8}\.parquet")
# Staged weeks older than this are leftovers of a range that was killed: removed when the
# same week is staged again.
STAGED_LEFTOVER_NS = 24 * 3600 * 10**9
# A partition key of a weekly asset (YYYY-MM-DD), as LATEST holds it.
WEEK_NAME = re.compile(r"\d{4}-\d{2}-\d{2}")


def held(value: Any, metadata: dict) -> HeldTable:
    """`value` with the run context its step's output metadata gives it (CONTEXT_METADATA)."""
    table_context = metadata.get(CONTEXT_METADATA)
    return HeldTable(value, dict(table_context.value) if table_context else {})


def default_base_dir() -> str:
    """Where asset values live when `base_dir` is not set.

    `$RFM_ASSETS_BASE_DIR`, else `$DAGSTER_HOME/storage/rfm_assets`, else
    `~/.rfm_assets/storage`. It depends on the environment only, never on the working
    directory, so `defs.load_asset_value(...)` in any later process with the same
    `DAGSTER_HOME` finds what a run wrote.
    """
    if os.environ.get("RFM_ASSETS_BASE_DIR"):
        return os.environ["RFM_ASSETS_BASE_DIR"]
    if os.environ.get("DAGSTER_HOME"):
        return str(Path(os.environ["DAGSTER_HOME"]) / "storage" / "rfm_assets")
    return str(Path.home() / ".rfm_assets" / "storage")


def _wanted_type(context: dg.InputContext) -> Any:
    """The consumer's annotation, with Optional[...] unwrapped (Any when there is none)."""
    wanted = context.dagster_type.typing_type if context.dagster_type else Any
    arguments = [a for a in typing.get_args(wanted) if a is not type(None)]
    if typing.get_origin(wanted) is typing.Union and len(arguments) == 1:
        wanted = arguments[0]
    return wanted


def _write_durably(target: UPath, text: str) -> None:
    """Replace a small file atomically: a rename on a local disk, a single PUT elsewhere."""
    if not is_local(target):
        target.write_text(text, encoding="utf-8")
        return
    staging = Path(target.path).with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(staging, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, target.path)
    finally:
        staging.unlink(missing_ok=True)


def path_exists_and_is_document(path: UPath) -> bool:
    """Whether the current version at `path` is a JSON document (not a table)."""
    pointer = path / POINTER
    return pointer.exists() and pointer.read_text().strip().endswith(".json")


def _new_name(prefix: str, suffix: str, now: Optional[int] = None) -> str:
    """<prefix><nanoseconds>-<8 hex>.<suffix>: names sort by when they were made (see
    VERSION_NAME, STAGED_NAME)."""
    return f"{prefix}{now or time.time_ns()}-{uuid.uuid4().hex[:8]}.{suffix}"


class RFMStore(dg.UPathIOManager):
    """Stores pandas or Spark DataFrames as versioned Parquet; loads by the consumer's type.

    A `pd.DataFrame` or unannotated (`Any`) consumer, including `defs.load_asset_value`, gets
    pandas, read with pyarrow without starting Spark. A Spark `DataFrame` consumer gets Spark,
    from the `spark` resource. A `StoredTable` consumer gets the handle and loads it itself.
    """

    extension = ""

    def __init__(
        self,
        base_path: UPath,
        spark=None,
        load_as: str = "pandas",
    ):
        super().__init__(base_path=base_path)
        self._spark = spark
        self._load_as = load_as
        # The pandas table this store wrote last, by its path: a step of the same run that
        # loads it next (the steps of a run share one process) gets the frame itself instead
        # of reading back what was just written (10M transactions are a second's read).
        self._last_written: Optional[tuple[str, pd.DataFrame]] = None

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            # A range of weeks computed in one step: {week: HeldTable(value, run context)}.
            asset_path = self._base_path.joinpath(*context.asset_key.path)
            weeks = list(context.asset_partition_keys)
            stored = 0
            try:
                for week in weeks:
                    held = obj[week]
                    if isinstance(held, StagedTable):  # written already: made current now
                        self._commit(asset_path / week, held, week)
                    else:
                        self._store(context, held.frame, asset_path / week, held.context, week)
                    stored += 1
            except BaseException:
                for week in weeks[stored:]:  # not current, and never will be
                    if isinstance(obj[week], StagedTable):
                        self.discard(obj[week])
                raise
            return
        super().handle_output(context, obj)

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        table_context = context.output_metadata.get(CONTEXT_METADATA)
        week = context.asset_partition_key if context.has_asset_partitions else None
        self._store(context, obj, path, table_context and table_context.value, week)

    def _store(
        self,
        context: dg.OutputContext,
        obj: Any,
        path: UPath,
        table_context: Optional[dict],
        week: Optional[str],
    ) -> None:
        """Write `obj` as the new current version at `path`, with its run context beside it."""
        if isinstance(obj, str):  # the report: one page, replaced whole
            path.mkdir(parents=True, exist_ok=True)
            _write_durably(path / REPORT_FILE, obj)
            self._written_page = path / REPORT_FILE  # for get_metadata, which comes next
            return
        version = _new_name("v", "json" if isinstance(obj, dict) else "parquet")
        target = path / version
        self._last_written = None
        if not (isinstance(obj, (pd.DataFrame, dict)) or is_spark_dataframe(obj)):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: expected a pandas or Spark DataFrame "
                f"or a JSON document (dict), got {type(obj).__name__}"
            )
        path.mkdir(parents=True, exist_ok=True)
        pointer = path / POINTER
        previous = pointer.read_text().strip() if pointer.exists() else None
        try:
            if isinstance(obj, dict):
                _write_durably(target, json.dumps(obj, indent=2) + "\n")
            elif isinstance(obj, pd.DataFrame):
                self._write_pandas(obj, target)
            else:
                # The write is where a Spark table's plan runs: a lack of memory says so.
                with memory_failures_named():
                    obj.write.parquet(plain(target), mode="error")
            if table_context is not None:
                _write_durably(
                    path / f"{version}{CONTEXT_SUFFIX}", json.dumps(table_context) + "\n"
                )
        except BaseException:
            self._remove(target)
            self._remove(path / f"{version}{CONTEXT_SUFFIX}")
            raise
        self._make_current(path, version, week, previous)
        if isinstance(obj, pd.DataFrame):
            self._last_written = (plain(target), obj)

    def _make_current(self, path: UPath, version: str, week: Optional[str],
                      previous: Optional[str] = None) -> None:  # fmt: skip
        """Point `path` at `version` (written beside it), and drop what is older than the
        version it replaces."""
        if previous is None:
            pointer = path / POINTER
            previous = pointer.read_text().strip() if pointer.exists() else None
        self._point_to(path, version)
        if week is not None:
            self._note_partition(path.parent, week)
        if previous:
            self._remove_older_than(path, previous)

    def stage(self, asset_key: dg.AssetKey, week: str, frame: pd.DataFrame,
              table_context: dict) -> StagedTable:  # fmt: skip
        """Write one week of a range beside its current version, under a name no other
        write touches (see `_commit`, `discard`)."""
        path = self._base_path.joinpath(*asset_key.path) / week
        path.mkdir(parents=True, exist_ok=True)
        now = time.time_ns()
        for entry in path.iterdir():  # what a killed range left
            found = STAGED_NAME.fullmatch(entry.name.removesuffix(CONTEXT_SUFFIX))
            if found and int(found.group(1)) < now - STAGED_LEFTOVER_NS:
                self._remove(entry)
        name = _new_name("staged-", "parquet", now)
        staged = StagedTable(plain(path / name), dict(path.storage_options), table_context)
        try:
            self._write_pandas(frame, path / name)
            _write_durably(path / f"{name}{CONTEXT_SUFFIX}", json.dumps(table_context) + "\n")
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def _commit(self, path: UPath, staged: StagedTable, week: str) -> None:
        """Make a staged week current: renamed as a new version (so it is the newest, even
        when another run wrote the week meanwhile), then pointed at."""
        source = path / UPath(staged.path).name
        if not source.exists():
            raise dg.Failure(
                f"{plain(path)}: the week this range wrote ({source.name}) is gone (removed "
                f"while the range ran?); materialize week {week} again"
            )
        version = _new_name("v", "parquet")
        path.fs.mv(source.path, (path / version).path)
        path.fs.mv((path / f"{source.name}{CONTEXT_SUFFIX}").path,
                   (path / f"{version}{CONTEXT_SUFFIX}").path)  # fmt: skip
        self._make_current(path, version, week)

    def discard(self, staged: StagedTable) -> None:
        """Remove a staged week that will not become current (its range failed)."""
        target = UPath(staged.path, **staged.storage_options)
        self._remove(target)
        self._remove(target.with_name(f"{target.name}{CONTEXT_SUFFIX}"))

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict:
        if isinstance(obj, str):  # the report's own file, not its folder
            return {"path": dg.MetadataValue.path(plain(self._written_page))}
        return {}

    def load_input(self, context: dg.InputContext) -> Any:
        if (context.definition_metadata or {}).get(WEEKS_INPUT):
            return self._weeks(context)
        if not context.has_asset_partitions:
            return self.load_from_path(context, self._get_path(context))
        # Read without UPathIOManager's DEBUG line per path: outside a run (`load_asset_value`)
        # Dagster prints those on the console, and in a range each would be an event.
        paths = self._get_paths_for_partitions(context)
        if len(paths) == 1:
            return self.load_from_path(context, *paths.values())
        # A range of weeks: each week's table is read when that week is computed, so a range
        # step holds one week of its input at a time, not all of them.
        return WeeksReadOnUse(
            {week: functools.partial(self.load_from_path, context, path)
             for week, path in paths.items()}
        )  # fmt: skip

    def _weeks(self, context: dg.InputContext) -> dict[str, StoredTable]:
        """The stored weeks a `weeks_in` input asks for, by partition key (see WEEKS_INPUT)."""
        what = context.asset_key.to_user_string()
        path = self._base_path.joinpath(*context.asset_key.path)
        if not context.has_asset_partitions:
            weeks = {"current": self.stored_at(path, what)}
            replaced = self.replaced(context.asset_key)
            return weeks if replaced is None else {**weeks, "previous": replaced}
        return {
            week: self.stored_at(path / week, what)
            for week in context.asset_partition_keys
            if (path / week / POINTER).exists()
        }

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        what = context.asset_key.to_user_string()
        if not (path / POINTER).exists():
            # An unkeyed load of a partitioned asset: the latest week stored.
            path = latest_week(path) or path
        if path_exists_and_is_document(path):
            return json.loads(self.current_version(path, what).read_text(encoding="utf-8"))
        if not (path / POINTER).exists() and (path / REPORT_FILE).exists():
            return (path / REPORT_FILE).read_text(encoding="utf-8")
        stored = self.stored_at(path, what)
        wanted = _wanted_type(context)
        if wanted is StoredTable:
            return stored
        # An input may ask for its own (the Spark graph's source_asset input does).
        load_as = (context.definition_metadata or {}).get("load_as", self._load_as)
        as_spark = wanted is Any and load_as == "spark"
        if as_spark or (isinstance(wanted, type) and wanted.__module__.startswith("pyspark")):
            if self._spark is None:
                raise dg.Failure(
                    f"{context.asset_key.to_user_string()}: loading as a Spark DataFrame needs "
                    "the io_manager to be given the `spark` resource"
                )
            return stored.to_spark(self._spark.spark_session)
        if self._last_written is not None and self._last_written[0] == stored.path:
            return self._last_written[1]
        return stored.to_pandas()

    def stored_at(self, path: UPath, what: str, version: Optional[str] = None) -> StoredTable:
        """The handle on the current version at `path` (or the named one), with its context."""
        if not (path / POINTER).exists():
            raise dg.Failure(f"{what} is not stored at {path}: materialize it first")
        current = path / version if version else self.current_version(path, what)
        sidecar = path / f"{current.name}{CONTEXT_SUFFIX}"
        table_context = _run_context(sidecar, what) if sidecar.exists() else {}
        return StoredTable(plain(current), dict(current.storage_options), table_context)

    def stored(self, asset_key: dg.AssetKey, partition_key: Optional[str] = None):
        """The stored value of an asset (one week of it), or None when there is none."""
        path = self._base_path.joinpath(*asset_key.path)
        if partition_key is not None:
            path = path / partition_key
        if not (path / POINTER).exists():
            return None
        return self.stored_at(path, asset_key.to_user_string())

    def replaced(self, asset_key: dg.AssetKey) -> Optional[StoredTable]:
        """The version that the current one replaced, or None.

        Each write keeps the version it replaces (see `_remove_older_than`), so an
        unpartitioned asset can be compared with its previous value.
        """
        path = self._base_path.joinpath(*asset_key.path)
        if not (path / POINTER).exists():
            return None
        current = self.current_version(path, asset_key.to_user_string()).name
        older = sorted(
            entry.name
            for entry in path.iterdir()
            if VERSION_NAME.fullmatch(entry.name) and entry.name < current
        )
        if not older:
            return None
        return self.stored_at(path, asset_key.to_user_string(), version=older[-1])

    def write_file(
        self, asset_key: dg.AssetKey, partition_key: Optional[str], name: str, text: str
    ) -> str:
        """Write a text file (a report) under the asset's location, replacing it whole."""
        path = self._base_path.joinpath(*asset_key.path)
        if partition_key is not None:
            path = path / partition_key
        path.mkdir(parents=True, exist_ok=True)
        _write_durably(path / name, text)
        return plain(path / name)

    def stored_partitions(self, asset_key: dg.AssetKey) -> list[str]:
        """Partition keys stored for an asset, in order."""
        path = self._base_path.joinpath(*asset_key.path)
        if not path.exists():
            return []
        return sorted(p.name for p in path.iterdir() if (p / POINTER).exists())

    def _note_partition(self, asset_path: UPath, partition_key: str) -> None:
        """Move LATEST forward when this partition is the latest one stored."""
        latest = asset_path / LATEST_PARTITION
        current = _pointer_text(latest) if latest.exists() else ""
        if not WEEK_NAME.fullmatch(current) or partition_key >= current:
            _write_durably(latest, partition_key + "\n")

    def path_exists(self, path: UPath) -> bool:
        return (path / POINTER).exists()

    @staticmethod
    def current_version(path: UPath, what: str = "the asset") -> UPath:
        """The version `CURRENT` names; a damaged pointer, or one naming a version that is
        gone, is one line naming the file (materializing again writes a whole new one)."""
        pointer = path / POINTER
        if not pointer.exists():
            raise FileNotFoundError(f"no stored value at {path}: it has not been materialized")
        name = _pointer_text(pointer)
        if not VERSION_NAME.fullmatch(name):
            raise dg.Failure(
                f"{plain(pointer)} is damaged: it holds {name[:60]!r}, not the name of a stored "
                f"version; materialize {what} again"
            )
        if not (path / name).exists():
            raise dg.Failure(
                f"{plain(pointer)} names {name}, which is not stored beside it (removed by "
                f"hand?); materialize {what} again"
            )
        return path / name

    @staticmethod
    def _write_pandas(frame: pd.DataFrame, target: UPath) -> None:
        # In the published types, so a stored table loads the same whichever engine wrote it.
        if not is_local(target):
            with target.open("wb") as handle:
                write_parquet(frame, handle)
            return
        with open(target.path, "wb") as handle:
            write_parquet(frame, handle)
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _point_to(path: UPath, version: str) -> None:
        _write_durably(path / POINTER, version + "\n")

    @staticmethod
    def _remove_older_than(path: UPath, previous: str) -> None:
        """Remove versions older than the one that was current before this write.

        Those are superseded values and leftovers of killed writes; removal is best effort,
        and a failure costs disk only. The previous version stays, because a reader may still
        be loading it. Version names start with their creation time, so a version that another
        run began writing after the previous one was written is never removed. Only a writer
        that started before the previous version and is still writing can lose its version,
        which takes three overlapping writes of one asset. Dot names (the pointer's
        temporary files) and anything not named as a version (a file someone put here) are
        never touched.
        """
        for entry in path.iterdir():
            version = entry.name.removesuffix(CONTEXT_SUFFIX)
            if VERSION_NAME.fullmatch(version) and version < previous:
                RFMStore._remove(entry)

    @staticmethod
    def _remove(entry: UPath) -> None:
        try:
            if entry.is_dir():
                entry.fs.rm(entry.path, recursive=True)
            elif entry.exists():
                entry.unlink()
        except OSError:
            pass


def _pointer_text(pointer: UPath) -> str:
    """The one line of a CURRENT or LATEST file (read no further than a line could be; a
    pipe or device in its place is refused before it is opened, never waited on)."""
    if small_file_kind(pointer)[0] != "file":
        raise dg.Failure(f"{plain(pointer)} is not a regular file (a pipe or device?)")
    with pointer.open("rb") as handle:
        data = handle.read(256)
    return data.decode("utf-8", errors="replace").strip()


def latest_week(asset_path: UPath) -> Optional[UPath]:
    """The location of the newest stored week of a weekly asset, or None when none is stored.

    `LATEST` names it; LATEST only ever moves forward, so it is always the newest week holding
    a version. When LATEST is gone, damaged or names a week that is not stored (a store
    copied in part, a file removed by hand), the newest week holding a `CURRENT` is that
    same week, and is used.
    """
    latest = asset_path / LATEST_PARTITION
    if latest.exists():
        week = _pointer_text(latest)
        if WEEK_NAME.fullmatch(week) and (asset_path / week / POINTER).exists():
            return asset_path / week
    if not asset_path.exists():
        return None
    weeks = sorted(
        p.name
        for p in asset_path.iterdir()
        if WEEK_NAME.fullmatch(p.name) and (p / POINTER).exists()
    )
    return asset_path / weeks[-1] if weeks else None


def _run_context(sidecar: UPath, what: str) -> dict:
    """The run context stored beside a version; a damaged one is one line naming the file."""
    try:
        table_context = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = getattr(error, "msg", "not UTF-8 text")
        raise dg.Failure(
            f"{plain(sidecar)} is damaged ({problem}): the run context stored with {what} "
            f"cannot be read; materialize {what} again"
        ) from None
    if not isinstance(table_context, dict):
        raise dg.Failure(
            f"{plain(sidecar)} is damaged (not a JSON object): the run context stored with "
            f"{what} cannot be read; materialize {what} again"
        )
    return table_context


class HeldIOManager(dg.InMemoryIOManager):
    """Keeps every step's value in the process, for runs whose steps share one process and
    write nothing (the command line's). A Spark DataFrame is handed on as the same
    DataFrame, with its run context beside it (`HeldTable`): storing it as Parquet and reading
    it back would cost a write and a read where the next step computes it from the run's
    cache.

    `readers` names the values nobody needs once the run's steps have read them, with how
    many steps read each (the command line keeps only its output tables). Once the last of
    them has finished (at the next step's first load or output; the steps run one after
    another), such a value, if a pandas frame, is emptied in place: Dagster's in-process
    run keeps a reference to every step's output until the run ends, and the row-level
    transactions held to the end would set the run's peak memory.
    """

    def __init__(
        self,
        readers: Optional[dict[dg.AssetKey, int]] = None,
        previous: Optional[dict[dg.AssetKey, Any]] = None,
    ):
        super().__init__()
        self._reads_left = dict(readers or {})
        self._last_reader: dict[tuple, str] = {}  # value's identifier -> op that read it last
        # The value each asset had before this run (the command line's previous result), for
        # the inputs that compare weeks (WEEKS_INPUT).
        self._previous = dict(previous or {})

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        self._release_read(context.op_def.name)
        if is_spark_dataframe(obj):
            obj = held(obj, context.output_metadata)
        super().handle_output(context, obj)

    def load_input(self, context: dg.InputContext) -> Any:
        self._release_read(context.op_def.name)
        if (context.definition_metadata or {}).get(WEEKS_INPUT):
            if context.has_asset_partitions:
                raise dg.Failure("HeldIOManager keeps one run's values: it has no earlier weeks")
            value = {"current": self.values[tuple(context.upstream_output.get_identifier())]}
            previous = self._previous.get(context.asset_key)
            return value if previous is None else {**value, "previous": previous}
        value = super().load_input(context)
        key = context.asset_key
        if key in self._reads_left:
            self._reads_left[key] -= 1
            if self._reads_left[key] == 0:
                self._last_reader[tuple(context.get_identifier())] = context.op_def.name
        return value

    def _release_read(self, op_name: str) -> None:
        """Empty the values whose last reader was a step before this op's."""
        for identifier, reader in list(self._last_reader.items()):
            if reader == op_name:
                continue
            del self._last_reader[identifier]
            value = self.values.pop(identifier, None)
            if isinstance(value, pd.DataFrame):
                for column in list(value.columns):  # in place: the run holds this frame
                    del value[column]


class RFMParquetIOManager(dg.ConfigurableIOManagerFactory):
    """Versioned Parquet under `base_dir`, one location per asset key, pandas or Spark."""

    base_dir: Optional[str] = Field(
        default=None,
        description="Local path or URI (s3://..., gs://..., hdfs://...) of the asset storage. "
        "Unset: $RFM_ASSETS_BASE_DIR, else $DAGSTER_HOME/storage/rfm_assets, else "
        "~/.rfm_assets/storage.",
    )
    spark: Optional[SparkResource] = Field(
        default=None,
        description="Spark session for consumers that load an asset as a Spark DataFrame.",
    )
    load_as: Literal["pandas", "spark"] = Field(
        default="pandas",
        description="What unannotated consumers and defs.load_asset_value(...) get. pandas "
        "reads with pyarrow and never starts Spark; spark needs the `spark` resource.",
    )

    def create_io_manager(self, context) -> RFMStore:
        return RFMStore(
            base_path=UPath(self.base_dir or default_base_dir()),
            spark=self.spark,
            load_as=self.load_as,
        )
