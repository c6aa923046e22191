"""`rfm_assets.run` (`run` here): the asset graph, run in this process, as one call.

This is the one chain of steps: the command line, the tests and the benchmark all run the
graph through it, so what they check is what Dagster runs. Every step's value stays in memory
(`HeldIOManager`: nothing is written; a Spark DataFrame is handed on as the same DataFrame),
and a failed step is one line (`RFMError`).
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional

from rfm_assets.assets.core import SEGMENTED_AT_TAG
from rfm_assets.engines import caches
from rfm_assets.engines.shared import RowAccount
from rfm_assets.errors import RFMError

# The graph's tables, in its order. A run computes all of them but those it is told to leave
# out; the two that compare with a previous result need one.
TABLES = ("transactions", "rfm_metrics", "rfm_scores", "customer_segments",
          "customer_lifetime_value", "segment_analytics", "high_value_customers",
          "segment_migration", "slipping_customers")  # fmt: skip
COMPARING = ("segment_migration", "slipping_customers")
# The in-memory Dagster instance each thread's runs share (see `_instance`).
_INSTANCES = threading.local()


@dataclass
class RFMRun:
    """What a run produced: each table kept (pandas or Spark DataFrames, by the engine), the
    materializations' metadata by asset, and the facts the steps published.

    On Spark the tables are cached frames, and the cache is the run's until `release()` (or
    the end of a `with run(...) as result:` block): a Spark table read after that is computed
    again from the source."""

    tables: dict[str, Any]
    metadata: dict[str, dict]
    account: RowAccount
    thresholds: dict[str, list[float]]
    customers_held_out: dict[str, int]
    clustering: Optional[dict] = None  # what k-means measured (segmentation_method kmeans)
    cluster_model: Optional[dict] = None  # the model's document (ClusterModel.document)
    skipped: tuple[str, ...] = field(default=())
    cached: list = field(default_factory=list, repr=False)  # Spark frames the run cached

    def release(self) -> None:
        """Let go of the Spark caches the run made (nothing to do on pandas)."""
        caches.release(self.cached)

    def __enter__(self) -> RFMRun:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __getattr__(self, name: str) -> Any:  # result.customer_segments, ...
        tables = self.__dict__.get("tables", {})
        if name in tables:
            return tables[name]
        raise AttributeError(name)


def run(
    settings,
    source: Any = None,
    spark_session=None,
    spark=None,
    previous: Any = None,
    keep: Optional[tuple[str, ...]] = None,
    leave_out: tuple[str, ...] = ("high_value_customers",),
    segmented_at: Optional[dt.datetime] = None,
    pictures: bool = False,
) -> RFMRun:
    """Run the RFM graph on `settings` and return its tables.

    - `source`: a DataFrame (pandas for the pandas engine, Spark for Spark) to read instead
      of `settings.input_path`, with the canonical column names or the mapped ones.
    - `spark_session` (a SparkSession) or `spark` (the Dagster resource): for engine spark.
    - `previous`: the customer_segments of the result this run follows (a DataFrame or a
      stored table), so the graph also computes segment_migration and slipping_customers.
    - `keep`: the tables handed back (default: all); the others are let go as soon as their
      last reader is done, so a large run holds no row-level table to its end.
    - `leave_out`: tables not computed (default: the high-value list, which is asked for).
    - `pictures`: draw the metadata's pictures (off: nobody sees them outside Dagster's UI).

    On Spark, let the run's caches go once its tables are used: `result.release()`, or
    `with run(...) as result:`. A session that outlives many runs holds them all otherwise.
    """
    import dagster as dg

    from rfm_assets.assets import RFMGraph, build_rfm_assets
    from rfm_assets.io_manager import HeldIOManager

    if settings.pictures != pictures:
        settings = settings.changed(pictures=pictures)
    graph = RFMGraph(
        source_asset=("rfm_source",) if source is not None else None,
        lifetime_value=settings.clv,
        clv_holdout_days=settings.clv_holdout_days,
    )
    assets = build_rfm_assets(graph)
    left_out = set(leave_out) | {"rfm_report"} | (set(COMPARING) if previous is None else set())
    if not settings.clustered:
        left_out.add("cluster_model")
    selection = dg.AssetSelection.assets(*assets) - dg.AssetSelection.assets(*left_out)
    if source is not None:

        @dg.asset(key="rfm_source")
        def rfm_source():
            # The transactions step lets each source column go once it is read: a shallow
            # copy, so the caller's frame keeps its columns.
            return source.copy(deep=False) if hasattr(source, "copy") else source

        assets = [rfm_source, *assets]
        selection = selection | dg.AssetSelection.assets(rfm_source)
    wanted = set(TABLES) - left_out if keep is None else set(keep)
    kept = {dg.AssetKey(name) for name in wanted}
    readers = {
        upstream: reads
        for upstream, reads in readers_within(assets, selection).items()
        if upstream not in kept
    }
    if spark is None:
        spark = SimpleNamespace(spark_session=spark_session) if spark_session else None
    tags = {SEGMENTED_AT_TAG: segmented_at.isoformat()} if segmented_at else {}
    instance = _instance()
    with caches.kept_by_run() as cached:
        result = dg.materialize(
            assets,
            instance=instance,
            selection=selection,
            resources={
                "rfm_settings": settings,
                "spark": spark if spark is not None else dg.ResourceDefinition.none_resource(),
                "io_manager": HeldIOManager(
                    readers,
                    {dg.AssetKey("customer_segments"): previous} if previous is not None else None,
                ),
            },  # fmt: skip
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            tags=tags,
            raise_on_error=False,
        )
    try:
        if not result.success:
            caches.release(cached)
            raise _own_error(result)(step_failure_message(result))
        collected = _collected(result, sorted(wanted), settings)
        collected.cached = cached
        return collected
    finally:
        instance.delete_run(result.run_id)


def _instance():
    """This thread's in-memory Dagster instance, made once and reused by its runs: making
    one (its event log's SQLite schema) cost a run on five rows a seventh of its time
    (benchmarks/README.md, `small_runs.py`). Each run is deleted from it once its result is
    taken, so it keeps no run's events."""
    import dagster as dg

    instance = getattr(_INSTANCES, "instance", None)
    if instance is None:
        instance = _INSTANCES.instance = dg.DagsterInstance.ephemeral()
    return instance


def _collected(result, wanted: list[str], settings) -> RFMRun:
    metadata = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        metadata[materialization.asset_key.to_user_string()] = {
            key: value.value for key, value in materialization.metadata.items()
        }
    tx = metadata["transactions"]
    account = RowAccount(
        rows_read=tx["rows_read"],
        rows_kept=tx["rows_kept"],
        rows_excluded=dict(tx["rows_excluded"]),
        reference_date=dt.date.fromisoformat(tx["reference_date"]),
        window_start=dt.date.fromisoformat(tx["window_start"]) if tx.get("window_start") else None,
        customers=tx["customers"],
        files_read=tx["files_read"],
        files_skipped=tx["files_skipped"],
    )
    model = None
    if settings.clustered and "cluster_model" in metadata:
        model = result.output_for_node("cluster_model", "cluster_model")
    return RFMRun(
        tables={name: result.output_for_node(name) for name in wanted if name in metadata},
        metadata=metadata,
        account=account,
        # (a run that stops before the scores, or the segments, has none of theirs)
        thresholds=metadata.get("rfm_scores", {}).get("thresholds", {}),
        customers_held_out=dict(metadata["rfm_metrics"]["customers_held_out"]),
        clustering=metadata.get("customer_segments", {}).get("clustering"),
        cluster_model=model,
    )


def readers_within(assets, selection) -> dict:
    """{asset key: how many of the selected assets read it}, over the selected assets."""
    selected = selection.resolve(assets)
    reads: dict = {}
    for definition in assets:
        for key in set(definition.keys) & selected:
            for upstream in definition.asset_deps.get(key, ()):
                if upstream in selected:
                    reads[upstream] = reads.get(upstream, 0) + 1
    return reads


_OWN_ERRORS = {"RFMError", "RFMConfigError", "RFMInputError", "Failure"}


def _own_error(result) -> type[RFMError]:
    """The class of ours that failed the run's first failed step (RFMError for any other)."""
    from rfm_assets.errors import RFMConfigError, RFMInputError

    ours = {"RFMConfigError": RFMConfigError, "RFMInputError": RFMInputError}
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None:
                if error.cls_name in ours:
                    return ours[error.cls_name]
                error = error.cause
            break
    return RFMError


def step_failure_message(result) -> str:
    """The user-facing message of the first failed step (our own errors say it all; a Spark
    failure for lack of memory names the setting to raise)."""
    from rfm_assets.errors import memory_failure

    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            chain, link = [], error
            while link is not None:
                chain += [link.message, *link.stack]
                link = link.cause
            memory = memory_failure("\n".join(chain))
            if memory is not None:
                return f"step {event.step_key} failed: {memory}"
            while error.cause is not None and error.cls_name not in _OWN_ERRORS:
                error = error.cause
            if error.cls_name in _OWN_ERRORS:
                return error.message.strip().split(": ", 1)[-1]
            return f"step {event.step_key} failed: {error.message.strip().splitlines()[0]}"
    return "the run failed"
