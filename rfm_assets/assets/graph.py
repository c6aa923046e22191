"""What every asset of a graph instance shares: its keys and resources, the run context a
table carries, the step's output with its metadata, and blocking checks.

An asset body reads its settings and engine through the `RFMGraph` it belongs to, calls one
engine step, judges the result with a pure check (rfm_assets.assets.checks) and hands the
value on with `output`. Nothing here reads storage: what a step compares with arrives as an
input, mapped by Dagster (see `RFMGraph.weeks_in`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

import dagster as dg
import pandas as pd

from rfm_assets import pictures
from rfm_assets.contract import COLUMN_DESCRIPTIONS, COLUMN_TYPES, COLUMNS_OF
from rfm_assets.engines.dispatch import PandasEngine, engine_for
from rfm_assets.engines.stored import (
    HeldTable,
    StagedTable,
    StoredTable,
    WeeksReadOnUse,
    is_spark_dataframe,
)
from rfm_assets.errors import RFMConfigError
from rfm_assets.io_manager import CONTEXT_METADATA, WEEKS_INPUT, held
from rfm_assets.segments import RuleSet, load_rule_set
from rfm_assets.settings import RFMSettings

GROUP = "rfm"


def _is_table(value: Any) -> bool:
    return isinstance(value, (pd.DataFrame, StoredTable, HeldTable)) or is_spark_dataframe(value)


RFM_TABLE = dg.DagsterType(
    name="RFMTable",
    description="An RFM table: a pandas or Spark DataFrame, or a handle on its stored value "
    "(for a range of weeks run as one, a {week: table} mapping).",
    type_check_fn=lambda _, value: (
        _is_table(value)
        or isinstance(value, WeeksReadOnUse)  # stored weeks, read when used: tables as stored
        or (isinstance(value, dict) and all(map(_is_table, value.values())))
    ),
    typing_type=StoredTable,
)
# A range of weeks (`dagster asset materialize --partition-range A...B`, or a backfill from
# the UI) runs as one run: each step reads its inputs once and computes week after week.
WEEKS_IN_ONE_RUN = dg.BackfillPolicy.single_run()


@dataclass(frozen=True)
class RFMGraph:
    """One instance of the RFM graph in a code location."""

    key_prefix: tuple[str, ...] = ()
    settings_key: str = "rfm_settings"
    io_manager_key: str = "io_manager"
    partitions: Optional[dg.PartitionsDefinition] = None
    engine: str = "pandas"  # the kind shown in the UI
    group: str = GROUP
    # An upstream asset whose value is the source table, instead of settings.input_path.
    source_asset: Optional[tuple[str, ...]] = None
    # customer_lifetime_value in the graph (settings `clv`), and the days of its holdout
    # check (`clv_holdout_days`; None: no such check).
    lifetime_value: bool = False
    clv_holdout_days: Optional[int] = None
    # (asset, the name its key takes): the component's `asset_name` renames customer_segments
    renamed: tuple[tuple[str, str], ...] = ()

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([*self.key_prefix, dict(self.renamed).get(name, name)])

    def settings_of(self, context) -> RFMSettings:
        return getattr(context.resources, self.settings_key)

    def engine_of(self, context) -> PandasEngine:
        return engine_for(self.settings_of(context).engine, context.resources.spark)

    @property
    def backfill_policy(self) -> Optional[dg.BackfillPolicy]:
        return WEEKS_IN_ONE_RUN if self.partitions is not None else None

    @property
    def resource_keys(self) -> set[str]:
        return {self.settings_key, "spark", self.io_manager_key}

    def table_asset(self, name: str) -> dict:
        """The keyword arguments of `dg.asset` for the table `name`: key, schema, checks."""
        return dict(
            key=self.key(name),
            group_name=self.group,
            kinds={self.engine},
            dagster_type=RFM_TABLE,
            partitions_def=self.partitions,
            backfill_policy=self.backfill_policy,
            required_resource_keys=self.resource_keys,
            io_manager_key=self.io_manager_key,
            metadata={"dagster/column_schema": declared_schema(name)},
            check_specs=self.check_specs(name, self.checks_of(name)),
        )

    def checks_of(self, asset: str) -> tuple:
        """The checks (`checks.CHECKS`) this instance declares on `asset`."""
        from rfm_assets.assets.checks import CHECKS

        entries = CHECKS.get(asset, ())
        if asset == "customer_lifetime_value" and not self.clv_holdout_days:
            entries = tuple(c for c in entries if c.name != "predictions_match_holdout")
        return entries

    def check_specs(self, asset: str, entries) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(check.name, asset=self.key(asset), blocking=check.blocking,
                              description=check.description)
            for check in entries
        ]  # fmt: skip

    def ins(self, *upstream: str) -> dict[str, dg.AssetIn]:
        return {name: dg.AssetIn(key=self.key(name), dagster_type=RFM_TABLE) for name in upstream}

    def weeks_in(self, upstream: str, first: int, last: int = 0) -> dg.AssetIn:
        """`upstream` over the weeks `first`..`last` relative to this one (0 is this week,
        -1 the one before): a mapped input, so the lineage shows it and backfills order by
        it. Weeks before the first of the partitions, or not stored, are left out.
        Unpartitioned, the IO manager hands the value and the one it replaced. The value is
        a `{week: table}` mapping (unpartitioned: `{"current": ..., "previous": ...}`)."""
        mapping = None
        if self.partitions is not None:
            with warnings.catch_warnings():  # a beta parameter: Dagster's notice, not the user's
                warnings.simplefilter("ignore", dg.BetaWarning)
                mapping = dg.TimeWindowPartitionMapping(
                    start_offset=first,
                    end_offset=last,
                    allow_nonexistent_upstream_partitions=True,
                )
        return dg.AssetIn(
            key=self.key(upstream),
            partition_mapping=mapping,
            metadata={"allow_missing_partitions": True, WEEKS_INPUT: True},
        )


# --- the context a stored table carries -----------------------------------------------------


def context_of(value: Any) -> dict:
    """The run context of a loaded table: a stored handle's, or a pandas frame's attrs."""
    if isinstance(value, (StoredTable, HeldTable)):
        return dict(value.context)
    if isinstance(value, pd.DataFrame):
        return dict(value.attrs.get("rfm_context", {}))
    return {}


def needed(table_context: dict, key: str, upstream: str) -> Any:
    """A fact of the run context, or one line saying the table was stored without it."""
    if key not in table_context:
        raise dg.Failure(
            f"{upstream} carries no {key} (it was stored by an earlier version or without "
            f"context): rematerialize {upstream}"
        )
    return table_context[key]


def rule_set_of(table_context: dict, settings: RFMSettings, upstream: str) -> RuleSet:
    """The rule set for the loaded scores: the scale and weights they were made with, and
    the rule set their table names (or, when it names none yet, the settings')."""
    scale = int(needed(table_context, "scale", upstream))
    stored_weights = table_context.get("weights")
    weights = (
        tuple(float(stored_weights[k]) for k in ("recency", "frequency", "monetary"))
        if stored_weights
        else settings.weight_tuple()
    )
    rule_set = table_context.get("rule_set") or settings.rule_set_source
    display_names = table_context.get("display_names", settings.segment_display_names)
    try:
        return load_rule_set(rule_set, scale, weights, dict(display_names))
    except RFMConfigError as error:
        raise dg.Failure(
            f"{upstream} holds {scale}-point scores, which {rule_set} cannot segment "
            f"({error}): rematerialize {upstream} with the settings of this rule set"
        ) from None


def split_weeks(graph: RFMGraph, weeks: Any, context, upstream: str) -> tuple[Any, Any, str]:
    """(this week's table, the week before's or None, what the week before is) of a
    `weeks_in(upstream, -1)` value."""
    if graph.partitions is None:  # the value and the one it replaced
        previous = weeks.get("previous")
        if previous is None:
            return weeks["current"], None, f"no previous {upstream}: this is the first one stored"
        return weeks["current"], previous, f"the {upstream} this run replaced"
    week = context.partition_key
    if week not in weeks:
        raise dg.Failure(f"{upstream} of week {week} is not stored: materialize it first")
    window = graph.partitions.get_prev_partition_window(context.partition_time_window.start)
    if window is None:
        return weeks[week], None, "no previous week: this is the first week of the partitions"
    before = window.start.strftime("%Y-%m-%d")
    if before not in weeks:
        return weeks[week], None, f"no previous week: {upstream} of week {before} is not stored"
    return weeks[week], weeks[before], f"week {before}"


# --- a step's value, metadata and checks ----------------------------------------------------


def output(
    engine: PandasEngine, frame, table_context: dict, metadata: dict, rows: Optional[int] = None
) -> dg.Output:
    """The step's value with its metadata; `rows` when the step has counted them already."""
    if isinstance(frame, pd.DataFrame):
        frame.attrs["rfm_context"] = table_context  # travels in memory too (the CLI)
    return dg.Output(
        frame,
        metadata={
            **table_metadata(engine, frame, rows),
            **metadata,
            CONTEXT_METADATA: dg.MetadataValue.json(table_context),
        },
    )


def table_metadata(engine: PandasEngine, frame, rows: Optional[int] = None) -> dict:
    """Row count and column schema (with each column's meaning) for the Dagster UI."""
    return {
        "dagster/row_count": engine.row_count(frame) if rows is None else rows,
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(name=name, type=kind, description=COLUMN_DESCRIPTIONS.get(name))
                for name, kind in engine.schema(frame)
            ]
        ),
        "engine": engine.name,
        **engine.run_details(),
    }


def declared_schema(name: str) -> dg.TableSchema:
    """The contract's columns of an asset, shown in the catalog before the first run."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=c, type=COLUMN_TYPES[c], description=COLUMN_DESCRIPTIONS.get(c))
            for c in COLUMNS_OF[name]
        ]
    )


def picture(png: bytes, title: str) -> dg.MetadataValue:
    """A PNG as Markdown metadata, which the Dagster UI shows as an image."""
    return dg.MetadataValue.md(pictures.markdown_image(png, title))


def pictures_left_out(graph: RFMGraph, context) -> Optional[str]:
    """Why this week draws no pictures, or None when it draws them: a run of one week draws
    them; a run over a range of weeks draws them for its last week only, unless
    `range_pictures: every_week` (at about 0.6 s a week, drawing is most of a range's time)."""
    last = getattr(context, "last_week_of_range", None)
    if last is None or context.partition_key == last:
        return None
    if graph.settings_of(context).range_pictures == "every_week":
        return None
    return (
        f"not drawn: this run covered a range of weeks and drew the pictures of its last "
        f"week ({last}) only; materialize week {context.partition_key} alone to draw them, "
        f"or set range_pictures: every_week"
    )


def pictured(graph: RFMGraph, context, name: str, title: str, draw: Callable[[], bytes]) -> dict:
    """{name: the picture `draw` makes}; nothing when the settings draw no pictures (then
    neither the picture nor the aggregates behind it are computed); in a week of a range
    that draws none, the reason, where the picture would be."""
    if not graph.settings_of(context).pictures:
        return {}
    left_out = pictures_left_out(graph, context)
    if left_out is not None:
        return {name: dg.MetadataValue.text(left_out)}
    return {name: picture(draw(), title)}


def small_to_pandas(frame) -> pd.DataFrame:
    """A few rows of a Spark DataFrame as pandas, via Python rows (no Arrow conversion)."""
    if isinstance(frame, pd.DataFrame):
        return frame
    rows = frame.collect()
    return pd.DataFrame([row.asDict() for row in rows], columns=frame.columns)


def judged(graph: RFMGraph, asset: str, verdicts: dict):
    """Yield a check result per verdict (`checks.Verdict`, by check name) of each check the
    asset declares (`RFMGraph.checks_of`); if a blocking one failed, stop before the value
    is stored, so readers keep the previous one."""
    results = []
    for check in graph.checks_of(asset):
        verdict = verdicts[check.name]
        results.append(
            dg.AssetCheckResult(
                asset_key=graph.key(asset),
                check_name=check.name,
                passed=verdict.passed,
                severity=dg.AssetCheckSeverity.ERROR
                if check.blocking
                else dg.AssetCheckSeverity.WARN,
                description=verdict.description(check.blocking),
                metadata=verdict.metadata,
            )
        )
    yield from results
    failed = [r for r in results if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR]
    if failed:
        names = ", ".join(r.check_name for r in failed)
        raise dg.Failure(
            f"{asset}: blocking check {names} failed, so this value was not stored and the "
            f"previous one stays: {failed[0].description}"
        )


# --- a range of weeks in one step ----------------------------------------------------------


class WeekContext:
    """The run's context as one week of a range sees it: that week's partition key and time
    window; the resources, log and run are the run's."""

    has_partition_key = True

    def __init__(self, context, partitions: dg.PartitionsDefinition, week: str, last_week: str,
                 logged: set[str]):  # fmt: skip
        self._context = context
        self.partition_key = week
        self.last_week_of_range = last_week
        self.log = OncePerRange(context.log, logged)
        self.partition_keys = [week]
        self.partition_time_window = partitions.time_window_for_partition_key(week)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class OncePerRange:
    """The run's log as the weeks of a range share it: an info line that an earlier week of
    the range logged word for word is not logged again (each line is an event the run
    stores; a step that has nothing to do says so once, not once a week)."""

    def __init__(self, log, logged: set[str]):
        self._log, self._logged = log, logged

    def info(self, message: str, *args, **kwargs) -> None:
        if message not in self._logged:
            self._logged.add(message)
            self._log.info(message, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


# A range writes a week's table to the store as it computes it from this many rows: smaller
# tables (segment_analytics, segment_migration: a row a segment) stay in memory, where they
# cost nothing and the next weeks of the range read them without a file read each.
STAGED_FROM_ROWS = 10_000


def in_range(graph: RFMGraph, context) -> bool:
    """Whether the step computes a range of weeks (a single-run backfill), not one week."""
    return graph.partitions is not None and not context.has_partition_key


def _events(result) -> Iterable:
    """What a step body gave: a generator of events, one Output, or nothing."""
    return [result] if isinstance(result, dg.Output) else (result or ())


def week_by_week(
    graph: RFMGraph,
    context,
    step: Callable,
    weekly: Optional[dict] = None,
    spanning: Optional[dict] = None,
    own: Optional[str] = None,
    **fixed: Any,
):
    """Run `step(graph, context, **inputs)` for the run's week; for a range of weeks, once
    per week in order, then hand on the range's value, its metadata and its checks.

    `weekly` inputs are one table a week (a range brings `{week: table}`, and each week gets
    its own); `spanning` ones are `weeks_in(upstream, first, last)` mappings, given as
    `(value, first, last)` (each week gets the weeks its own mapping would); `fixed` ones are
    the same for every week. `own` names the spanning input that maps this asset's own
    earlier weeks: the weeks computed earlier in the range join it as they are made.

    Each week's value is checked as a run of that week alone would check it; a check result
    of the range passes when every week passed, and names the weeks that did not. A week
    whose blocking check fails fails the step, after every week has been judged: nothing of
    the range is stored.

    On the Parquet store a week's table of STAGED_FROM_ROWS rows or more is written (staged)
    as soon as it is made, and handed on as a handle the store makes current with the rest
    of the range: the step holds one week's table, not the range's.
    """
    weekly = dict(weekly or {})
    bounds = {name: (first, last) for name, (_, first, last) in (spanning or {}).items()}
    spanning = {name: dict(value or {}) for name, (value, _, _) in (spanning or {}).items()}
    if not in_range(graph, context):
        yield from _events(step(graph, context, **weekly, **spanning, **fixed))
        return
    keys = list(graph.partitions.get_partition_keys())
    metadata: dict[str, dict] = {}  # each week's output metadata
    values: dict[str, Any] = {}  # each week's table: staged in the store, or held
    output_name = None
    results: dict[str, dict[str, dg.AssetCheckResult]] = {}
    failures: dict[str, str] = {}
    weeks, logged = sorted(context.partition_keys), set()
    store = getattr(context.resources, graph.io_manager_key, None)
    staging = hasattr(store, "stage")  # the Parquet store (the CLI's in-memory one holds)
    try:
        for week in weeks:
            inputs = {name: value[week] for name, value in weekly.items()}
            at = keys.index(week)
            for name, (first, last) in bounds.items():
                mapped = set(keys[max(at + first, 0) : at + last + 1])
                inputs[name] = {k: v for k, v in spanning[name].items() if k in mapped}
            week_output = None
            try:
                week_context = WeekContext(context, graph.partitions, week, weeks[-1], logged)
                for event in _events(step(graph, week_context, **inputs, **fixed)):
                    if isinstance(event, dg.AssetCheckResult):
                        results.setdefault(event.check_name, {})[week] = event
                    else:
                        week_output = event
            except dg.Failure as failure:
                failures[week] = failure.description or str(failure)
                continue
            if week_output is not None:
                value = held(week_output.value, week_output.metadata)
                metadata[week], output_name = week_output.metadata, week_output.output_name
                event = week_output = None  # `value` alone holds the table now
                if (staging and isinstance(value.frame, pd.DataFrame)
                        and len(value.frame) >= STAGED_FROM_ROWS):  # fmt: skip
                    # Written now, made current when the range is stored: the step holds
                    # one week's table, not the range's.
                    value = store.stage(context.asset_key, week, value.frame, value.context)
                values[week] = value
                if own is not None:
                    spanning[own][week] = value
        yield from (range_check(by_week) for by_week in results.values())
        if failures:
            shown = "; ".join(f"week {week}: {why}" for week, why in list(failures.items())[:3])
            raise dg.Failure(
                f"{len(failures)} of {len(context.partition_keys)} weeks failed, so no week "
                f"of this range was stored: {shown}"
            )
    except BaseException:
        for value in values.values():
            if isinstance(value, StagedTable):
                store.discard(value)
        raise
    if not values:
        return
    for week, week_metadata in metadata.items():
        context.add_asset_metadata(dict(week_metadata), partition_key=week)
    yield dg.Output(values, output_name=output_name)


def range_check(by_week: dict[str, dg.AssetCheckResult]) -> dg.AssetCheckResult:
    """One check result for a range of weeks: passed when every week passed."""
    first = next(iter(by_week.values()))
    failed = [week for week, result in by_week.items() if not result.passed]
    shown = failed[0] if failed else max(by_week)
    if failed:
        description = (
            f"failed in {len(failed)} of {len(by_week)} weeks ({', '.join(failed)}): "
            f"week {shown}: {by_week[shown].description}"
        )
    else:
        description = f"passed in all {len(by_week)} weeks"
    return dg.AssetCheckResult(
        asset_key=first.asset_key,
        check_name=first.check_name,
        passed=not failed,
        severity=first.severity,
        description=description,
        metadata={
            **by_week[shown].metadata,
            "weeks": len(by_week),
            "failed_weeks": dg.MetadataValue.json(failed),
            "week_shown": shown,
        },
    )
