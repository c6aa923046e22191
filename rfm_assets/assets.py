"""The five RFM assets (group `rfm`): thin Dagster wiring around `rfm_assets.engines`.

Each asset reads the settings, asks `engine_for` for the pandas or Spark engine, calls one
step, and attaches metadata. Inputs arrive as `StoredTable` handles (or frames, with an
in-memory IO manager), so each engine loads them natively: pandas with pyarrow, Spark with
its own reader, never one through the other.
"""

import datetime as dt

import dagster as dg
import pandas as pd
from dagster_pyspark import LazyPySparkResource

from rfm_assets.contract import COLUMN_DESCRIPTIONS, EXCLUSION_REASONS
from rfm_assets.engines.dispatch import PandasEngine, engine_for
from rfm_assets.exports import markdown_cell
from rfm_assets.io_manager import StoredTable, is_spark_dataframe
from rfm_assets.settings import RFMSettings

GROUP = "rfm"
KINDS = {"pandas", "spark"}

RFM_TABLE = dg.DagsterType(
    name="RFMTable",
    description="An RFM table: a pandas or Spark DataFrame, or a handle on its stored value.",
    type_check_fn=lambda _, value: (
        isinstance(value, (pd.DataFrame, StoredTable)) or is_spark_dataframe(value)
    ),
    typing_type=StoredTable,
)


def table_input(name: str) -> dict[str, dg.AssetIn]:
    return {name: dg.AssetIn(dagster_type=RFM_TABLE)}


def table_metadata(engine: PandasEngine, frame) -> dict:
    """Row count and column schema (with each column's meaning) for the Dagster UI."""
    return {
        "dagster/row_count": engine.row_count(frame),
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(name=name, type=kind, description=COLUMN_DESCRIPTIONS.get(name))
                for name, kind in engine.schema(frame)
            ]
        ),
        "engine": engine.name,
    }


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


def recorded_by_transactions(context: dg.AssetExecutionContext, key: str):
    """A value the stored `transactions` materialization recorded (reference date, customers).

    Later steps read it from the instance, so they agree with the table they load even when
    they are materialized on their own.
    """
    event = context.instance.get_latest_materialization_event(dg.AssetKey("transactions"))
    if event is None or key not in event.asset_materialization.metadata:
        raise dg.Failure(f"transactions has no recorded {key}: materialize transactions first")
    return event.asset_materialization.metadata[key].value


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    dagster_type=RFM_TABLE,
    check_specs=[
        dg.AssetCheckSpec(
            "rows_accounted_for",
            asset="transactions",
            blocking=True,
            description="rows_read == rows_kept + sum(rows_excluded by reason).",
        )
    ],
)
def transactions(
    context: dg.AssetExecutionContext, rfm_settings: RFMSettings, spark: LazyPySparkResource
):
    """Source transaction lines mapped to `customer_id, transaction_date, amount[, order_id]`.

    Cleaned by explicit rules; every excluded row is counted by reason in the metadata
    (`rows_excluded`). The resolved reference date is recorded here for the later steps.
    """
    engine = engine_for(rfm_settings, spark)
    raw, listing = engine.read(rfm_settings)
    kept, account = engine.prepare(raw, rfm_settings, listing)
    kept = engine.keep(kept)
    summary = account.as_metadata()
    excluded_total = sum(account.rows_excluded.values())
    context.log.info(
        f"{account.rows_read:,} rows read from {account.files_read:,} files "
        f"({account.files_skipped:,} skipped: names starting with _ or .), "
        f"{account.rows_kept:,} kept, {excluded_total:,} excluded: {account.rows_excluded}"
    )
    yield dg.Output(
        kept,
        metadata={
            **table_metadata(engine, kept),
            **{k: v for k, v in summary.items() if v is not None and k != "rows_excluded"},
            "rows_excluded": dg.MetadataValue.json(summary["rows_excluded"]),
            "exclusion_rules": dg.MetadataValue.md(
                "\n".join(f"- `{reason}`: {rule}" for reason, rule in EXCLUSION_REASONS.items())
            ),
            "source": rfm_settings.source_path,
        },
    )
    yield dg.AssetCheckResult(
        check_name="rows_accounted_for",
        passed=account.rows_read == account.rows_kept + excluded_total,
        metadata={
            "rows_read": account.rows_read,
            "rows_kept": account.rows_kept,
            "rows_excluded": excluded_total,
        },
    )


@dg.asset(group_name=GROUP, kinds=KINDS, dagster_type=RFM_TABLE, ins=table_input("transactions"))
def rfm_metrics(
    context: dg.AssetExecutionContext,
    rfm_settings: RFMSettings,
    spark: LazyPySparkResource,
    transactions,
) -> dg.Output:
    """One row per customer: recency (days to the reference date), frequency, monetary.

    Also first and last purchase dates, tenure in days and average order value.
    """
    engine = engine_for(rfm_settings, spark)
    reference_date = dt.date.fromisoformat(recorded_by_transactions(context, "reference_date"))
    metrics = engine.keep(engine.metrics(engine.load(transactions), reference_date))
    return dg.Output(
        metrics,
        metadata={
            **table_metadata(engine, metrics),
            "reference_date": reference_date.isoformat(),
        },
    )


@dg.asset(group_name=GROUP, kinds=KINDS, dagster_type=RFM_TABLE, ins=table_input("rfm_metrics"))
def rfm_scores(rfm_settings: RFMSettings, spark: LazyPySparkResource, rfm_metrics) -> dg.Output:
    """Customer metrics with R, F and M scores (1 worst .. k best), FM_score, RFM_score, rfm_cell.

    Quantile scores are tie-safe (`1 + floor(k * b / n)`); the cut points they imply are
    published in the metadata so a later run can pin them with `scoring_method: fixed`.
    """
    engine = engine_for(rfm_settings, spark)
    scores = engine.keep(engine.scores(engine.load(rfm_metrics), rfm_settings))
    return dg.Output(
        scores,
        metadata={
            **table_metadata(engine, scores),
            "scoring_method": rfm_settings.scoring_method,
            "thresholds": dg.MetadataValue.json(engine.thresholds(scores, rfm_settings)),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    dagster_type=RFM_TABLE,
    ins=table_input("rfm_scores"),
    check_specs=[
        dg.AssetCheckSpec(
            "one_row_per_customer",
            asset="customer_segments",
            blocking=True,
            description="Every customer with a kept transaction appears exactly once and has a "
            "segment.",
        )
    ],
)
def customer_segments(
    context: dg.AssetExecutionContext,
    rfm_settings: RFMSettings,
    spark: LazyPySparkResource,
    rfm_scores,
):
    """Every customer with scores, one of the named segments, its recommendation, value tier
    and engagement level. Filter on the published columns, e.g.
    `df[df["segment"] == "Champions"]`.
    """
    engine = engine_for(rfm_settings, spark)
    segmented_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    segmented = engine.keep(
        engine.segments(engine.load(rfm_scores), rfm_settings.segment_grid(), segmented_at)
    )
    yield dg.Output(
        segmented,
        metadata={
            **table_metadata(engine, segmented),
            "segment_counts": dg.MetadataValue.json(engine.segment_counts(segmented)),
        },
    )
    duplicated, unsegmented = engine.duplicates_and_unsegmented(segmented)
    customers = engine.row_count(segmented)
    with_kept_rows = int(recorded_by_transactions(context, "customers"))
    yield dg.AssetCheckResult(
        check_name="one_row_per_customer",
        passed=duplicated == 0 and unsegmented == 0 and customers == with_kept_rows,
        metadata={
            "customers": customers,
            "customers_with_kept_rows": with_kept_rows,
            "duplicated_customers": duplicated,
            "customers_without_segment": unsegmented,
        },
    )


@dg.asset(
    group_name=GROUP, kinds=KINDS, dagster_type=RFM_TABLE, ins=table_input("customer_segments")
)
def segment_analytics(
    rfm_settings: RFMSettings, spark: LazyPySparkResource, customer_segments
) -> dg.Output:
    """Per segment: customers, revenue, their shares, average R/F/M, average order value and
    the recommendation, in priority order, with the score thresholds the run used.
    """
    engine = engine_for(rfm_settings, spark)
    segmented = engine.load(customer_segments)
    analytics = engine.analytics(
        segmented, rfm_settings.segment_grid(), engine.thresholds(segmented, rfm_settings)
    )
    # A dozen rows at most: the picture for the UI is drawn from them on the driver.
    shown = analytics if isinstance(analytics, pd.DataFrame) else _small_to_pandas(analytics)
    return dg.Output(
        analytics,
        metadata={
            **table_metadata(engine, analytics),
            "segment_distribution": dg.MetadataValue.md(segment_table_markdown(shown)),
        },
    )


def _small_to_pandas(frame) -> pd.DataFrame:
    """A few rows of a Spark DataFrame as pandas, via Python rows (no Arrow conversion)."""
    rows = frame.collect()
    return pd.DataFrame([row.asDict() for row in rows], columns=frame.columns)


RFM_ASSETS = [transactions, rfm_metrics, rfm_scores, customer_segments, segment_analytics]
