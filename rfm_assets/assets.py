"""The five RFM assets (group `rfm`): thin Dagster wiring around `rfm_assets.engines`.

`build_rfm_assets` makes one instance of the graph: its key prefix, its settings resource,
its weekly partitions (or none) and the engine kind it shows. Each asset reads the settings,
asks `engine_for` for the pandas or Spark engine, calls one step, runs its checks on the
value *before* returning it, and attaches metadata. A blocking check that fails stops the
step, so the failed value never becomes what readers load; the previous one stays.

Every stored table carries the run context it was computed in (reference date, scale, rule
set, thresholds, engine; see `table_context`), and a step takes what it needs from the
table it loads, never from the event log or from today's settings: any subset of the graph
can run on its own.
"""

import datetime as dt
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import dagster as dg
import pandas as pd

from rfm_assets import pictures
from rfm_assets.contract import (
    ANALYTICS_COLUMNS,
    COLUMN_DESCRIPTIONS,
    COLUMN_TYPES,
    CUSTOMER_FILTERS,
    METRIC_COLUMNS,
    MICRO_UNITS,
    MIGRATION_COLUMNS,
    SCORE_COLUMNS,
    SEGMENT_COLUMNS,
    SLIPPING_COLUMNS,
    TRANSACTION_COLUMNS,
    exclusion_reasons,
)
from rfm_assets.engines.dispatch import CLUSTER_PICTURE_CUSTOMERS, PandasEngine, engine_for
from rfm_assets.engines.shared import (
    LAPSED_CUSTOMERS,
    NEW_CUSTOMERS,
    amounts_add_up,
    movement_counts,
    moves_between_segments,
)
from rfm_assets.engines.stored import HeldTable, StoredTable, is_spark_dataframe
from rfm_assets.errors import RFMConfigError, naming_memory_failures
from rfm_assets.exports import markdown_cell
from rfm_assets.io_manager import CONTEXT_METADATA
from rfm_assets.report import ReportInputs, report_html
from rfm_assets.segments import SegmentGrid, load_rule_set
from rfm_assets.settings import RFMSettings

GROUP = "rfm"
CHAIN = ("transactions", "rfm_metrics", "rfm_scores", "customer_segments", "segment_analytics")
COLUMNS_OF = {
    "transactions": TRANSACTION_COLUMNS,
    "rfm_metrics": METRIC_COLUMNS,
    "rfm_scores": METRIC_COLUMNS + SCORE_COLUMNS,
    "customer_segments": METRIC_COLUMNS + SCORE_COLUMNS + SEGMENT_COLUMNS,
    "segment_analytics": ANALYTICS_COLUMNS,
    "high_value_customers": METRIC_COLUMNS + SCORE_COLUMNS + SEGMENT_COLUMNS + ["high_value_rank"],
    "segment_migration": MIGRATION_COLUMNS,
    "slipping_customers": SLIPPING_COLUMNS,
}

CLUSTER_MODEL_DESCRIPTION = (
    "The k-means model of segmentation_method kmeans, as a small JSON document: the scaling "
    "(log1p, median, IQR), the centroids, each cluster's name and segment, the silhouette and "
    "inertia of every k tried (the elbow curve), and where it was fitted. Give it to "
    "`cluster_model_path` or `rfm-assets predict --model` to assign new customers to these "
    "clusters without refitting. Grid runs do not materialize it."
)

RFM_TABLE = dg.DagsterType(
    name="RFMTable",
    description="An RFM table: a pandas or Spark DataFrame, or a handle on its stored value.",
    type_check_fn=lambda _, value: (
        isinstance(value, (pd.DataFrame, StoredTable, HeldTable)) or is_spark_dataframe(value)
    ),
    typing_type=StoredTable,
)


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

    def key(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([*self.key_prefix, name])


# --- the context a stored table carries -----------------------------------------------------


def context_of(value: Any) -> dict:
    """The run context of a loaded table: a stored handle's, or a pandas frame's attrs."""
    if isinstance(value, (StoredTable, HeldTable)):
        return dict(value.context)
    if isinstance(value, pd.DataFrame):
        return dict(value.attrs.get("rfm_context", {}))
    return {}


def _needed(table_context: dict, key: str, upstream: str) -> Any:
    if key not in table_context:
        raise dg.Failure(
            f"{upstream} carries no {key} (it was stored by an earlier version or without "
            f"context): rematerialize {upstream}"
        )
    return table_context[key]


def _output(
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


def segment_table_markdown(analytics: pd.DataFrame) -> str:
    """The segment distribution as a Markdown table with a bar per segment."""
    widest = max(int(analytics["customers"].max()), 1)
    lines = [
        "| segment | customers | share | revenue share | |",
        "|---|---:|---:|---:|---|",
    ]
    for row in analytics.itertuples(index=False):
        bar = "█" * round(30 * row.customers / widest)
        lines.append(
            f"| {markdown_cell(row.segment)} | {row.customers:,} | {row.customer_share:.1%} "
            f"| {row.revenue_share:.1%} | `{bar}` |"
        )
    return "\n".join(lines)


# What the report's summary takes from the stored tables' context.
REPORT_FACTS = (
    "input_level", "engine", "reference_date", "window_start", "scoring_method", "scale",
    "weights", "rows_read", "rows_kept", "rows_excluded", "customers_held_out",
)  # fmt: skip
# Weeks shown in the share_trend picture.
TREND_WEEKS = 12


def picture(png: bytes, title: str) -> dg.MetadataValue:
    """A PNG as Markdown metadata, which the Dagster UI shows as an image."""
    return dg.MetadataValue.md(pictures.markdown_image(png, title))


def drawn(settings: RFMSettings, name: str, title: str, draw: Callable[[], bytes]) -> dict:
    """{name: the picture `draw` makes}, or nothing when the settings draw no pictures (then
    neither the picture nor the aggregates behind it are computed)."""
    return {name: picture(draw(), title)} if settings.pictures else {}


def migration_markdown(moved: pd.DataFrame, shown: int = 12) -> str:
    """The largest moves between two segments, by customers, as a Markdown table."""
    if moved.empty:
        return "No customer moved between segments."
    lines = ["| from | to | customers | revenue |", "|---|---|---:|---:|"]
    for row in moved.sort_values("customers", ascending=False).head(shown).itertuples():
        lines.append(
            f"| {markdown_cell(row.from_segment)} | {markdown_cell(row.to_segment)} "
            f"| {row.customers:,} | {row.revenue:,.2f} |"
        )
    return "\n".join(lines)


def segment_trends(analytics: pd.DataFrame) -> dict:
    """Numeric metadata with stable keys, which the UI plots week over week."""
    trends = {}
    for row in analytics.itertuples(index=False):
        trends[f"customers/{row.segment_id}"] = dg.MetadataValue.int(int(row.customers))
        trends[f"customer_share/{row.segment_id}"] = dg.MetadataValue.float(
            float(row.customer_share)
        )
        revenue_share = 0.0 if pd.isna(row.revenue_share) else float(row.revenue_share)
        trends[f"revenue_share/{row.segment_id}"] = dg.MetadataValue.float(revenue_share)
    return trends


def _small_to_pandas(frame) -> pd.DataFrame:
    """A few rows of a Spark DataFrame as pandas, via Python rows (no Arrow conversion)."""
    if isinstance(frame, pd.DataFrame):
        return frame
    rows = frame.collect()
    return pd.DataFrame([row.asDict() for row in rows], columns=frame.columns)


def _check(
    asset_key: dg.AssetKey,
    name: str,
    passed: bool,
    problem: Optional[str],
    metadata: dict,
    warn: bool = False,
) -> dg.AssetCheckResult:
    """A check result whose description says what is wrong only when it failed."""
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=name,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR,
        description=None if passed else problem,
        metadata=metadata,
    )


def _blocking(results: list[dg.AssetCheckResult], asset: str):
    """Yield the check results; if a blocking one failed, stop before the value is stored."""
    yield from results
    failed = [r for r in results if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR]
    if failed:
        names = ", ".join(r.check_name for r in failed)
        raise dg.Failure(
            f"{asset}: blocking check {names} failed, so this value was not stored and the "
            f"previous one stays: {failed[0].description}"
        )


def grid_of(table_context: dict, settings: RFMSettings, upstream: str) -> SegmentGrid:
    """The rule set for the loaded scores: the scale and weights they were made with, and
    the rule set their table names (or, when it names none yet, the settings')."""
    scale = int(_needed(table_context, "scale", upstream))
    stored_weights = table_context.get("weights")
    weights = (
        tuple(float(stored_weights[k]) for k in ("recency", "frequency", "monetary"))
        if stored_weights
        else settings.weight_tuple()
    )
    rule_set = table_context.get("rule_set") or settings.rule_set
    display_names = table_context.get("display_names", settings.segment_display_names)
    try:
        return load_rule_set(rule_set, scale, weights, dict(display_names))
    except RFMConfigError as error:
        raise dg.Failure(
            f"{upstream} holds {scale}-point scores, which {rule_set} cannot segment "
            f"({error}): rematerialize {upstream} with the settings of this rule set"
        ) from None


# --- the graph -------------------------------------------------------------------------------


def build_rfm_assets(graph: RFMGraph = RFMGraph()) -> list[dg.AssetsDefinition]:
    """The five assets of one graph instance, with their checks."""
    key, settings_key = graph.key, graph.settings_key
    common = dict(
        group_name=graph.group,
        kinds={graph.engine},
        dagster_type=RFM_TABLE,
        partitions_def=graph.partitions,
        required_resource_keys={settings_key, "spark", graph.io_manager_key},
        io_manager_key=graph.io_manager_key,
    )

    def settings_of(context) -> RFMSettings:
        return getattr(context.resources, settings_key)

    def engine_of(context):
        return engine_for(settings_of(context).engine, context.resources.spark)

    def checks(asset: str, *entries: tuple[str, str, bool]) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(name, asset=key(asset), blocking=blocking, description=text)
            for name, text, blocking in entries
        ]

    def ins(upstream: str) -> dict[str, dg.AssetIn]:
        return {upstream: dg.AssetIn(key=key(upstream), dagster_type=RFM_TABLE)}

    def meta(name: str) -> dict:
        return {"dagster/column_schema": declared_schema(name)}

    transactions_spec = dict(
        key=key("transactions"),
        description="Source transaction lines mapped to `customer_id, transaction_date, "
        "amount[, order_id]` (with `input_level: customers`, one row per customer: "
        "`customer_id, recency, last_purchase_date[, first_purchase_date], frequency, "
        "monetary`).\n\nCleaned by explicit rules; every excluded row is counted by "
        "reason in the metadata (`rows_excluded`). On weekly partitions the reference date "
        "is the end of the week.",
        metadata=meta("transactions"),
        check_specs=checks(
            "transactions",
            (
                "rows_accounted_for",
                "Rows read (counted on the table as read) == rows kept (counted on the kept "
                "table) + rows excluded by reason: nothing disappears without a number.",
                True,
            ),
        ),
        **common,
    )
    if graph.source_asset:
        source_key = dg.AssetKey(list(graph.source_asset))

        @dg.asset(ins={"source_table": dg.AssetIn(key=source_key)}, **transactions_spec)
        @naming_memory_failures
        def transactions(context: dg.AssetExecutionContext, source_table):
            yield from transactions_step(context, source_table)

    else:

        @dg.asset(**transactions_spec)
        @naming_memory_failures
        def transactions(context: dg.AssetExecutionContext):
            yield from transactions_step(context, None)

    def transactions_step(context, source_table):
        settings = settings_of(context)
        engine = engine_of(context)
        week_end = context.partition_time_window.end.date() if graph.partitions else None
        if source_table is None:
            raw, listing = engine.read(settings.run_spec())
            source = settings.source_path
        else:
            source = f"asset {'/'.join(graph.source_asset)}"
            raw, listing = engine.read_table(source_table, settings.run_spec(), source)
        # Nothing row-level is cached: on Spark the kept rows are a plan over the source,
        # computed again by whoever reads them (holding 10M rows in the JVM is what ran out).
        # The step is done with the source rows as they are kept: let them go as it goes
        # (this generator lives until the run moves on).
        kept, account = engine.prepare(
            raw, settings.run_spec(), listing, reference_date=week_end, consume=True
        )
        del raw
        rows_read, rows_kept = account.rows_read, engine.kept_rows(kept, account)
        excluded_total = sum(account.rows_excluded.values())
        context.log.info(
            f"{account.rows_read:,} rows read from {account.files_read:,} files "
            f"({account.files_skipped:,} skipped: names starting with _ or .), "
            f"{account.rows_kept:,} kept, {excluded_total:,} excluded: {account.rows_excluded}"
        )
        balanced = rows_read == rows_kept + excluded_total
        yield from _blocking(
            [
                _check(
                    key("transactions"),
                    "rows_accounted_for",
                    balanced,
                    f"{rows_read:,} rows read but {rows_kept:,} kept + {excluded_total:,} "
                    f"excluded = {rows_kept + excluded_total:,}",
                    {
                        "rows_read": rows_read,
                        "rows_kept": rows_kept,
                        "rows_excluded": excluded_total,
                    },
                )
            ],
            "transactions",
        )
        summary = account.as_metadata()
        table_context = {
            "reference_date": summary["reference_date"],
            "window_start": summary["window_start"],
            "partition_key": context.partition_key if graph.partitions else None,
            "source": source,
            "engine": engine.name,
            "customers": account.customers,
            "input_level": settings.input_level,
            # The row accounting travels on, for the report at the end of the graph.
            "files_read": account.files_read,
            "files_skipped": account.files_skipped,
            "rows_read": account.rows_read,
            "rows_kept": account.rows_kept,
            "rows_excluded": dict(account.rows_excluded),
        }
        yield _output(
            engine,
            kept,
            table_context,
            {
                **{k: v for k, v in summary.items() if v is not None and k != "rows_excluded"},
                "rows_excluded": dg.MetadataValue.json(summary["rows_excluded"]),
                "input_level": settings.input_level,
                "exclusion_rules": dg.MetadataValue.md(
                    "\n".join(
                        f"- `{reason}`: {rule}"
                        for reason, rule in exclusion_reasons(settings.input_level).items()
                    )
                ),
                "source": source,
            },
            rows=rows_kept,
        )

    @dg.asset(
        key=key("rfm_metrics"),
        ins=ins("transactions"),
        metadata=meta("rfm_metrics"),
        check_specs=checks(
            "rfm_metrics",
            (
                "one_row_per_customer",
                "Exactly one row per distinct customer id of the kept transactions: the rows "
                "and distinct ids of the loaded metrics against the transactions step's own "
                "count of customers, not the code that built the metrics.",
                True,
            ),
        ),
        **common,
    )
    @naming_memory_failures
    def rfm_metrics(context: dg.AssetExecutionContext, transactions):
        """One row per customer: recency (days to the reference date), frequency, monetary.

        Also first and last purchase dates, tenure in days and average order value.
        """
        engine, settings = engine_of(context), settings_of(context)
        upstream = context_of(transactions)
        reference_date = dt.date.fromisoformat(_needed(upstream, "reference_date", "transactions"))
        loaded = engine.load(transactions)
        input_level = upstream.get("input_level", "transactions")
        metrics = engine.keep(engine.metrics(loaded, reference_date, input_level))
        metrics, held_out = engine.filter_customers(metrics, settings.run_spec())
        metrics = engine.keep(metrics)
        # Customers of the kept transactions as the transactions step counted them (a second
        # pass over every row to count them again costs more than all the scoring), less
        # those the filters held out.
        customers = int(_needed(upstream, "customers", "transactions")) - sum(held_out.values())
        rows, distinct = engine.row_count(metrics), engine.distinct_count(metrics, "customer_id")
        passed = rows == distinct == customers
        yield from _blocking(
            [
                _check(
                    key("rfm_metrics"),
                    "one_row_per_customer",
                    passed,
                    f"{rows:,} rows for {distinct:,} distinct ids; the kept transactions have "
                    f"{customers:,} customers after the filters",
                    {"rows": rows, "distinct_ids": distinct, "customers": customers},
                )
            ],
            "rfm_metrics",
        )
        yield _output(
            engine,
            metrics,
            {**upstream, "customers_held_out": held_out},
            {
                "reference_date": reference_date.isoformat(),
                "customers_held_out": dg.MetadataValue.json(held_out),
                **drawn(
                    settings,
                    "distributions",
                    "Recency, frequency and monetary distributions",
                    lambda: pictures.distributions(engine.histograms(metrics)),
                ),
                "customer_filters": dg.MetadataValue.md(
                    "\n".join(f"- `{reason}`: {rule}" for reason, rule in CUSTOMER_FILTERS.items())
                ),
            },
            rows=rows,  # counted for the check above (a Spark job saved)
        )

    @dg.asset(
        key=key("rfm_scores"),
        ins=ins("rfm_metrics"),
        metadata=meta("rfm_scores"),
        check_specs=checks(
            "rfm_scores",
            (
                "scores_on_scale",
                "Every R, F, M and FM score is a whole number in 1..k and never null, and "
                "RFM_score lies in 1..k.",
                True,
            ),
        ),
        **common,
    )
    @naming_memory_failures
    def rfm_scores(context: dg.AssetExecutionContext, rfm_metrics):
        """Customer metrics with R, F and M scores (1 worst .. k best), FM_score, RFM_score,
        rfm_cell.

        Quantile scores are tie-safe (`1 + floor(k * b / n)`); the cut points they imply are
        published in the metadata so a later run can pin them (`thresholds_from_week` or
        `scoring_method: fixed`).
        """
        settings = settings_of(context)
        engine = engine_of(context)
        cut_points, source_of_cuts = None, settings.scoring_method
        if settings.thresholds_from_week:
            cut_points = _thresholds_of_week(context, settings.thresholds_from_week)
            source_of_cuts = f"thresholds of week {settings.thresholds_from_week}"
        scores, thresholds = engine.scores(
            engine.load(rfm_metrics), settings.run_spec(), cut_points
        )
        scores = engine.keep(scores)
        scale = len(thresholds["recency"]) + 1
        off_scale = engine.scores_off_scale(scores, scale)
        yield from _blocking(
            [
                _check(
                    key("rfm_scores"),
                    "scores_on_scale",
                    off_scale == 0,
                    f"{off_scale:,} customers have a score that is null or off the 1..{scale} "
                    "scale",
                    {"customers_off_scale": off_scale, "scale": scale},
                )
            ],
            "rfm_scores",
        )
        table_context = {
            **context_of(rfm_metrics),
            "scale": scale,
            "scoring_method": source_of_cuts,
            "weights": settings.effective_weights.model_dump(),
            "thresholds": thresholds,
        }
        yield _output(
            engine,
            scores,
            table_context,
            {
                "scoring_method": source_of_cuts,
                "thresholds": dg.MetadataValue.json(thresholds),
            },
        )

    @dg.asset(
        key=key("customer_segments"),
        ins=ins("rfm_scores"),
        metadata=meta("customer_segments"),
        check_specs=checks(
            "customer_segments",
            (
                "one_row_per_customer",
                "As many rows as scored customers, each customer id once.",
                True,
            ),
            (
                "segments_in_catalog",
                "Every customer has a segment, and every segment is a named entry of the "
                "catalog of the rule set in use.",
                True,
            ),
            (
                "dominant_segment",
                "Warns when one segment holds more than max_segment_share of the customers "
                "(default 50%). Usual causes: most customers bought once (F and FM pile up at "
                "the bottom, so Hibernating/Lost or New Customers dominate), a window too "
                "short or too long for the purchase cycle, fixed thresholds that no longer "
                "fit the data, or a rule set whose first rules are too wide.",
                False,
            ),
        ),
        **common,
    )
    @naming_memory_failures
    def customer_segments(context: dg.AssetExecutionContext, rfm_scores):
        """Every customer with scores, one of the named segments, its recommendation, value tier
        and engagement level. Filter on the published columns, e.g.
        `df[df["segment"] == "Champions"]`.
        """
        settings = settings_of(context)
        engine = engine_of(context)
        upstream = context_of(rfm_scores)
        grid = grid_of(upstream, settings, "rfm_scores")
        scores = engine.load(rfm_scores)
        segmented_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
        clustering, model_document = {}, None
        if settings.segmentation_method == "kmeans":
            thresholds = _needed(upstream, "thresholds", "rfm_scores")
            fitted = {"reference_date": upstream.get("reference_date")}
            segmented, summary, model = engine.clusters(
                scores, grid, thresholds, settings.run_spec(), segmented_at, fitted
            )
            model_document = model.document()
            clustering = {
                "clustering": dg.MetadataValue.json(summary),
                **drawn(
                    settings,
                    "clusters",
                    "k-means clusters",
                    lambda: pictures.clusters(
                        engine.cluster_sample(
                            segmented, CLUSTER_PICTURE_CUSTOMERS, settings.cluster_seed
                        ),
                        summary,
                    ),
                ),
            }
        else:
            segmented = engine.segments(scores, grid, segmented_at)
        segmented = engine.keep(segmented)
        rows, distinct = (
            engine.row_count(segmented),
            engine.distinct_count(segmented, "customer_id"),
        )
        scored = engine.row_count(scores)
        unknown = engine.unknown_segments(segmented, {entry.name for entry in grid.segments})
        counts = engine.segment_counts(segmented)
        largest = max(counts, key=counts.get) if counts else None
        largest_share = counts[largest] / rows if largest else 0.0
        dominant = largest_share > settings.max_segment_share
        yield from _blocking(
            [
                _check(
                    key("customer_segments"),
                    "one_row_per_customer",
                    rows == distinct == scored,
                    f"{rows:,} rows for {distinct:,} distinct ids; {scored:,} customers were "
                    "scored",
                    {"rows": rows, "distinct_ids": distinct, "scored": scored},
                ),
                _check(
                    key("customer_segments"),
                    "segments_in_catalog",
                    not unknown,
                    f"segments not in the catalog: {unknown}",
                    {"unknown_segments": dg.MetadataValue.json(unknown)},
                ),
                _check(
                    key("customer_segments"),
                    "dominant_segment",
                    not dominant,
                    f"{largest} holds {largest_share:.1%} of the customers, more than "
                    f"max_segment_share {settings.max_segment_share:.0%}",
                    {"largest_segment": str(largest), "share": float(largest_share)},
                    warn=True,
                ),
            ],
            "customer_segments",
        )
        table_context = {
            **upstream,
            "rule_set": grid.name,
            "display_names": dict(settings.segment_display_names),
            "segmented_at": str(segmented_at),
        }
        if model_document:  # the model that named the clusters, for cluster_model
            table_context["cluster_model"] = model_document
            table_context["clustering"] = summary  # for the report
        yield _output(
            engine,
            segmented,
            table_context,
            {
                "segmentation_method": settings.segmentation_method,
                "segment_counts": dg.MetadataValue.json(counts),
                **clustering,
            },
            rows=rows,
        )

    # A multi-asset only so that its output and its check may be absent (can_subset): grid
    # runs have no model to store or check.
    @dg.multi_asset(
        name=key("cluster_model").to_python_identifier(),  # one op per graph instance
        outs={
            "cluster_model": dg.AssetOut(
                key=key("cluster_model"),
                group_name=graph.group,
                kinds={"json"},
                io_manager_key=graph.io_manager_key,
                is_required=False,
                description=CLUSTER_MODEL_DESCRIPTION,
            )
        },
        ins=ins("customer_segments"),
        partitions_def=graph.partitions,
        required_resource_keys={settings_key, "spark", graph.io_manager_key},
        can_subset=True,
        check_specs=checks(
            "cluster_model",
            (
                "model_reproduces_clusters",
                "Applying the stored document to every customer of customer_segments gives "
                "the cluster each one was given, so `rfm-assets predict` and later weeks "
                "(cluster_model_path) assign as this run did.",
                True,
            ),
        ),
    )
    @naming_memory_failures
    def cluster_model(context: dg.AssetExecutionContext, customer_segments):
        document = context_of(customer_segments).get("cluster_model")
        if document is None:
            context.log.info("cluster_model: segmentation_method is grid; no model to store")
            return
        from rfm_assets.engines.clustering import ClusterModel

        engine = engine_of(context)
        model = ClusterModel.from_document(document, "customer_segments")
        segments = engine.load(customer_segments)
        mismatched = engine.cluster_mismatches(segments, model)
        yield from _blocking(
            [
                _check(
                    key("cluster_model"),
                    "model_reproduces_clusters",
                    mismatched == 0,
                    f"the stored model assigns {mismatched:,} customers to another cluster "
                    "than customer_segments holds",
                    {"mismatched_customers": mismatched},
                )
            ],
            "cluster_model",
        )
        yield dg.Output(
            document,
            output_name="cluster_model",
            metadata={
                "k": model.k,
                "clusters": dg.MetadataValue.json(
                    [
                        {"cluster": c, "name": n, "segment": s}
                        for c, (n, s) in enumerate(zip(model.names, model.segments))
                    ]
                ),  # fmt: skip
                "inertia_by_k": dg.MetadataValue.json(document["inertia_by_k"]),
                "fitted": dg.MetadataValue.json(document["fitted"]),
            },
        )

    @dg.asset(
        key=key("segment_analytics"),
        ins=ins("customer_segments"),
        metadata=meta("segment_analytics"),
        check_specs=checks(
            "segment_analytics",
            (
                "revenue_matches_customers",
                "Total revenue equals the exact sum of monetary over customer_segments, and "
                "the customers add up to its rows.",
                True,
            ),
            (
                "share_change_from_previous_week",
                "Warns when a segment's share of customers moves more than "
                "max_weekly_share_change (default 10 points) from the previous week's stored "
                "value: a change in the source, the settings or the business worth a look.",
                False,
            ),
        ),
        **common,
    )
    @naming_memory_failures
    def segment_analytics(context: dg.AssetExecutionContext, customer_segments):
        """Per segment: customers, revenue, their shares, average R/F/M, average order value and
        the recommendation, in priority order, with the score thresholds the run used.
        """
        settings = settings_of(context)
        engine = engine_of(context)
        upstream = context_of(customer_segments)
        grid = grid_of(upstream, settings, "customer_segments")
        thresholds = _needed(upstream, "thresholds", "customer_segments")
        segmented = engine.load(customer_segments)
        analytics = engine.analytics(segmented, grid, thresholds)
        shown = _small_to_pandas(analytics)  # a dozen rows at most
        customers = engine.row_count(segmented)
        expected_micro = engine.monetary_micro_sum(segmented, "monetary")
        revenue = math.fsum(shown["revenue"])
        matches = (
            amounts_add_up(shown["revenue"], expected_micro)
            and int(shown["customers"].sum()) == customers
        )
        moves = _share_moves(context, shown, graph, settings)
        worst = max(moves, key=lambda m: abs(m[1]), default=None)
        moved = worst is not None and abs(worst[1]) > settings.max_weekly_share_change
        yield from _blocking(
            [
                _check(
                    key("segment_analytics"),
                    "revenue_matches_customers",
                    matches,
                    f"revenue {revenue:,.2f} over {int(shown['customers'].sum()):,} "
                    f"customers, but customer_segments sums to "
                    f"{expected_micro / MICRO_UNITS:,.2f} over {customers:,}",
                    {"revenue": revenue, "monetary_of_customers": expected_micro / MICRO_UNITS},
                ),
                dg.AssetCheckResult(
                    asset_key=key("segment_analytics"),
                    check_name="share_change_from_previous_week",
                    passed=not moved,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=(
                        "no previous week stored"
                        if worst is None
                        else f"{worst[0]} moved {worst[1]:+.1%} from the previous week"
                    ),
                    metadata={
                        "moves": dg.MetadataValue.json({name: round(d, 6) for name, d in moves})
                    },
                ),
            ],
            "segment_analytics",
        )
        yield _output(
            engine,
            analytics,
            upstream,
            {
                "segment_distribution": dg.MetadataValue.md(segment_table_markdown(shown)),
                **drawn(
                    settings,
                    "segment_sizes",
                    "Segment sizes",
                    lambda: pictures.segment_sizes(shown),
                ),
                **drawn(
                    settings,
                    "score_heatmaps",
                    "Customers and average monetary by R x FM",
                    lambda: pictures.score_heatmaps(engine.score_grid(segmented), grid.scale),
                ),
                **share_history(context, shown),
                **segment_trends(shown),
            },
        )

    @dg.asset(
        key=key("high_value_customers"),
        ins=ins("customer_segments"),
        metadata=meta("high_value_customers"),
        **common,
    )
    @naming_memory_failures
    def high_value_customers(context: dg.AssetExecutionContext, customer_segments):
        """The top share of customers (high_value_share, default 20%) by monetary or by the
        weighted RFM_score (high_value_by), highest first, for a campaign list. Tie-safe:
        customers tied at the cut are all on the list.
        """
        settings = settings_of(context)
        engine = engine_of(context)
        chosen = engine.high_value(engine.load(customer_segments), settings.run_spec())
        table_context = {
            **context_of(customer_segments),
            "high_value_share": settings.high_value_share,
            "high_value_by": settings.high_value_by,
        }
        return _output(
            engine,
            chosen,
            table_context,
            {
                "high_value_share": settings.high_value_share,
                "high_value_by": settings.high_value_by,
            },
        )

    def previous_segments(context) -> tuple[Optional[StoredTable], str]:
        """The customer_segments to compare with: the previous week's on weekly partitions,
        else the value the current one replaced; (None, why) when there is none."""
        store = getattr(context.resources, graph.io_manager_key)
        if not hasattr(store, "stored"):  # another IO manager (in memory): no history
            return None, "no previous week: the IO manager keeps no history"
        if not graph.partitions:
            replaced = store.replaced(key("customer_segments"))
            if replaced is None:
                return None, "no previous customer_segments: this is the first one stored"
            return replaced, "the customer_segments this run replaced"
        window = graph.partitions.get_prev_partition_window(context.partition_time_window.start)
        if window is None:
            return None, "no previous week: this is the first week of the partitions"
        week = window.start.strftime("%Y-%m-%d")
        stored = store.stored(key("customer_segments"), week)
        if stored is None:
            return None, f"no previous week: customer_segments of week {week} is not stored"
        return stored, f"week {week}"

    def compared_weeks(context, customer_segments):
        """(engine, grid, this week's segments, last week's or an empty table, what it was)."""
        settings = settings_of(context)
        engine = engine_of(context)
        grid = grid_of(context_of(customer_segments), settings, "customer_segments")
        current = engine.load(customer_segments)
        stored, previous_label = previous_segments(context)
        previous = engine.load(stored) if stored is not None else engine.empty(current)
        return engine, grid, current, previous, stored is not None, previous_label

    @dg.asset(
        key=key("segment_migration"),
        ins=ins("customer_segments"),
        metadata=meta("segment_migration"),
        check_specs=checks(
            "segment_migration",
            (
                "margins_match_both_weeks",
                "The customers moving out of each segment add up to its size the week before, "
                "those moving into it to its size this week, and the revenue moving into "
                "this week's segments to this week's total monetary.",
                True,
            ),
        ),
        **common,
    )
    @naming_memory_failures
    def segment_migration(context: dg.AssetExecutionContext, customer_segments):
        """Who moved between segments since the previous week: customers and revenue from
        each segment to each segment, with (new) for customers absent the week before and
        (lapsed) for those absent now. The first week has no previous one and an empty table.
        """
        engine, grid, current, previous, found, previous_label = compared_weeks(
            context, customer_segments
        )
        if not found:  # nothing to compare with: an empty table, not everyone as (new)
            current = engine.empty(current)
        migration = engine.migration(previous, current, grid)
        table = _small_to_pandas(migration)  # at most (segments + 1) ** 2 rows
        into = table[table["to_segment"] != LAPSED_CUSTOMERS]
        out_of = table[table["from_segment"] != NEW_CUSTOMERS]
        sizes_before = engine.segment_counts(previous)
        sizes_now = engine.segment_counts(current)
        into_sizes = {
            str(k): int(v) for k, v in into.groupby("to_segment")["customers"].sum().items()
        }
        out_sizes = {
            str(k): int(v) for k, v in out_of.groupby("from_segment")["customers"].sum().items()
        }
        revenue_now = engine.monetary_micro_sum(current, "monetary")
        revenue_in = math.fsum(into["revenue"])
        passed = (
            out_sizes == sizes_before
            and into_sizes == sizes_now
            and amounts_add_up(into["revenue"], revenue_now)
        )
        yield from _blocking(
            [
                _check(
                    key("segment_migration"),
                    "margins_match_both_weeks",
                    passed,
                    f"moves out of segments {out_sizes} vs sizes the week before "
                    f"{sizes_before}; moves in {into_sizes} vs sizes now {sizes_now}; revenue "
                    f"in {revenue_in:,.2f} vs {revenue_now / MICRO_UNITS:,.2f}",
                    {"previous": previous_label},
                )
            ],
            "segment_migration",
        )
        moved = moves_between_segments(table)
        counts = movement_counts(table)
        yield _output(
            engine,
            migration,
            {**context_of(customer_segments), "previous": previous_label},
            {
                "previous": previous_label,
                **counts,
                "largest_moves": dg.MetadataValue.md(migration_markdown(moved)),
                **drawn(
                    settings_of(context),
                    "movement",
                    "Segment movement",
                    lambda: pictures.migration_heatmap(
                        table, [entry.name for entry in grid.segments]
                    ),
                ),
            },
        )

    @dg.asset(
        key=key("slipping_customers"),
        ins=ins("customer_segments"),
        metadata=meta("slipping_customers"),
        **common,
    )
    @naming_memory_failures
    def slipping_customers(context: dg.AssetExecutionContext, customer_segments):
        """Customers who moved since the previous week from an engaged segment into a slipping
        one (At Risk, Cannot Lose Them: the catalog's `standing`), most valuable first: the
        win-back list of the week. Empty in the first week.
        """
        engine, grid, current, previous, _, previous_label = compared_weeks(
            context, customer_segments
        )
        slipping = engine.keep(engine.slipping(previous, current, grid))
        return _output(
            engine,
            slipping,
            {**context_of(customer_segments), "previous": previous_label},
            {
                "previous": previous_label,
                "slipping_into": dg.MetadataValue.json(grid.segment_ids_by_standing("slipping")),
                "revenue_at_stake": engine.monetary_micro_sum(slipping, "monetary") / 1e6,
            },
        )

    @dg.asset(
        key=key("rfm_report"),
        ins={
            **ins("customer_segments"),
            **ins("segment_analytics"),
            **ins("segment_migration"),
            **ins("slipping_customers"),
        },
        group_name=graph.group,
        kinds={"html"},
        partitions_def=graph.partitions,
        required_resource_keys={settings_key, "spark", graph.io_manager_key},
    )
    @naming_memory_failures
    def rfm_report(
        context: dg.AssetExecutionContext,
        customer_segments,
        segment_analytics,
        segment_migration,
        slipping_customers,
    ):
        """The shareable HTML report of the week: run summary and row accounting, segments
        with recommendations and example actions, every picture, movement and thresholds, in
        one self-contained file beside the stored tables (its path is in the metadata)."""
        engine = engine_of(context)
        upstream = context_of(customer_segments)
        segments = engine.load(customer_segments)
        migration_context = context_of(segment_migration)
        summary = {
            **{k: upstream.get(k) for k in REPORT_FACTS},
            "input": upstream.get("source"),
            "customers": engine.row_count(segments),
        }
        page = report_html(
            ReportInputs(
                analytics=_small_to_pandas(engine.load(segment_analytics)),
                score_grid=engine.score_grid(segments),
                histograms=engine.histograms(segments),
                scale=int(_needed(upstream, "scale", "customer_segments")),
                summary=summary,
                migration=_small_to_pandas(engine.load(segment_migration)),
                previous=migration_context.get("previous"),
                slipping=engine.row_count(engine.load(slipping_customers)),
                clustering=upstream.get("clustering"),
                cluster_sample=(
                    engine.cluster_sample(
                        segments, CLUSTER_PICTURE_CUSTOMERS, settings_of(context).cluster_seed
                    )
                    if upstream.get("clustering")
                    else None
                ),
            )
        )
        store = getattr(context.resources, graph.io_manager_key)
        if not hasattr(store, "write_file"):  # e.g. an in-memory IO manager in a test
            context.log.warning("rfm_report: the io_manager keeps no files; report not written")
            return dg.MaterializeResult(metadata={"path": None, "bytes": len(page)})
        partition = context.partition_key if graph.partitions else None
        path = store.write_file(key("rfm_report"), partition, "report.html", page)
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(path),
                "bytes": len(page.encode("utf-8")),
                "reference_date": summary.get("reference_date"),
            }
        )

    def share_history(context, analytics: pd.DataFrame) -> dict:
        """The share_trend picture over the stored weeks up to this one (weekly only)."""
        store = getattr(context.resources, graph.io_manager_key)
        if (
            not graph.partitions
            or not hasattr(store, "stored")
            or not settings_of(context).pictures
        ):
            return {}
        week = context.partition_key
        earlier = [w for w in store.stored_partitions(key("segment_analytics")) if w < week]
        frames = [analytics.assign(week=week)]
        for other in earlier[-(TREND_WEEKS - 1) :]:
            frames.append(
                store.stored(key("segment_analytics"), other)
                .to_pandas(columns=["segment", "customer_share"])
                .assign(week=other)
            )
        history = pd.concat(frames)[["week", "segment", "customer_share"]]
        return {"share_trend": picture(pictures.share_trend(history), "Segment shares by week")}

    def _thresholds_of_week(context, week: str) -> dict[str, list[float]]:
        store = getattr(context.resources, graph.io_manager_key)
        stored = store.stored(key("rfm_scores"), week) if hasattr(store, "stored") else None
        if stored is None or "thresholds" not in stored.context:
            raise dg.Failure(
                f"thresholds_from_week: no rfm_scores with thresholds is stored for week {week}: "
                f"materialize rfm_scores for {week} first"
            )
        return stored.context["thresholds"]

    return [
        transactions,
        rfm_metrics,
        rfm_scores,
        customer_segments,
        cluster_model,
        segment_analytics,
        high_value_customers,
        segment_migration,
        slipping_customers,
        rfm_report,
    ]


def _share_moves(context, analytics: pd.DataFrame, graph: RFMGraph, settings) -> list:
    """(segment, share now - share the week before) per segment; [] without a previous week."""
    if not graph.partitions:
        return []
    previous_key = graph.partitions.get_prev_partition_window(context.partition_time_window.start)
    if previous_key is None:
        return []
    previous_week = previous_key.start.strftime("%Y-%m-%d")
    store = getattr(context.resources, graph.io_manager_key)
    if not hasattr(store, "stored"):  # another IO manager (in memory): no weekly history
        return []
    stored = store.stored(graph.key("segment_analytics"), previous_week)
    if stored is None:
        return []
    before = stored.to_pandas(columns=["segment", "customer_share"])
    shares = dict(zip(before["segment"], before["customer_share"]))
    return [
        (row.segment, float(row.customer_share) - float(shares.get(row.segment, 0.0)))
        for row in analytics.itertuples(index=False)
    ]


def build_rfm_checks(assets: list[dg.AssetsDefinition]) -> list:
    """Dagster's column-schema-change checks on every table of the graph."""
    with warnings.catch_warnings():  # a beta API: its notice is Dagster's, not the user's
        warnings.simplefilter("ignore", dg.BetaWarning)
        tables = [a for a in assets if a.key.path[-1] in COLUMNS_OF]  # not the HTML report
        return list(dg.build_column_schema_change_checks(assets=tables))


RFM_ASSETS = build_rfm_assets()
