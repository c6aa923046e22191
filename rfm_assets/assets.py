"""The five RFM assets (group `rfm`): thin Dagster wiring around `rfm_assets.engines`."""

import datetime as dt

import dagster as dg
import pandas as pd

from rfm_assets.contract import COLUMN_DESCRIPTIONS, EXCLUSION_REASONS
from rfm_assets.engines.pandas_compute import (
    assign_segments,
    compute_metrics,
    compute_scores,
    prepare_transactions,
)
from rfm_assets.engines.pandas_compute import (
    segment_analytics as analyse_segments,
)
from rfm_assets.engines.pandas_read import read_transactions
from rfm_assets.pipeline import used_thresholds
from rfm_assets.settings import RFMSettings

GROUP = "rfm"
KINDS = {"pandas"}


def table_metadata(frame: pd.DataFrame) -> dict:
    """Row count and column schema (with each column's meaning) for the Dagster UI."""
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(
                    name=str(name),
                    type=str(dtype),
                    description=COLUMN_DESCRIPTIONS.get(str(name)),
                )
                for name, dtype in frame.dtypes.items()
            ]
        ),
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
            f"| {row.segment} | {row.customers:,} | {row.customer_share:.1%} "
            f"| {row.revenue_share:.1%} | `{bar}` |"
        )
    return "\n".join(lines)


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
    check_specs=[
        dg.AssetCheckSpec(
            "rows_accounted_for",
            asset="transactions",
            blocking=True,
            description="rows_read == rows_kept + sum(rows_excluded by reason).",
        )
    ],
)
def transactions(context: dg.AssetExecutionContext, rfm_settings: RFMSettings):
    """Source transaction lines mapped to `customer_id, transaction_date, amount[, order_id]`.

    Cleaned by explicit rules; every excluded row is counted by reason in the metadata
    (`rows_excluded`). The resolved reference date is recorded here for the later steps.
    """
    raw = read_transactions(rfm_settings.source_path, rfm_settings.source_columns())
    kept, account = prepare_transactions(
        raw,
        reference_date=rfm_settings.parsed_reference_date,
        analysis_period_days=rfm_settings.analysis_period_days,
        returns_policy=rfm_settings.returns_policy,
        cancelled_order_prefix=rfm_settings.cancelled_order_prefix,
    )
    summary = account.as_metadata()
    excluded_total = sum(account.rows_excluded.values())
    context.log.info(
        f"{account.rows_read:,} rows read, {account.rows_kept:,} kept, "
        f"{excluded_total:,} excluded: {account.rows_excluded}"
    )
    yield dg.Output(
        kept,
        metadata={
            **table_metadata(kept),
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


def recorded_by_transactions(context: dg.AssetExecutionContext, key: str):
    """A value the stored `transactions` materialization recorded (reference date, customers).

    Later steps read it from the instance, so they agree with the table they load even when
    they are materialized on their own.
    """
    event = context.instance.get_latest_materialization_event(dg.AssetKey("transactions"))
    if event is None or key not in event.asset_materialization.metadata:
        raise dg.Failure(f"transactions has no recorded {key}: materialize transactions first")
    return event.asset_materialization.metadata[key].value


@dg.asset(group_name=GROUP, kinds=KINDS)
def rfm_metrics(
    context: dg.AssetExecutionContext, transactions: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """One row per customer: recency (days to the reference date), frequency, monetary.

    Also first and last purchase dates, tenure in days and average order value.
    """
    reference_date = dt.date.fromisoformat(recorded_by_transactions(context, "reference_date"))
    metrics = compute_metrics(transactions, reference_date)
    return dg.Output(
        metrics, metadata={**table_metadata(metrics), "reference_date": reference_date.isoformat()}
    )


@dg.asset(group_name=GROUP, kinds=KINDS)
def rfm_scores(rfm_settings: RFMSettings, rfm_metrics: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """Customer metrics with R, F and M scores (1 worst .. k best), FM_score, RFM_score, rfm_cell.

    Quantile scores are tie-safe (`1 + floor(k * b / n)`); the cut points they imply are
    published in the metadata so a later run can pin them with `scoring_method: fixed`.
    """
    weights = rfm_settings.weights
    scores = compute_scores(
        rfm_metrics,
        scale=rfm_settings.scale,
        weights=(weights.recency, weights.frequency, weights.monetary),
        fixed_cut_points=rfm_settings.fixed_cut_points(),
    )
    return dg.Output(
        scores,
        metadata={
            **table_metadata(scores),
            "scoring_method": rfm_settings.scoring_method,
            "thresholds": dg.MetadataValue.json(used_thresholds(rfm_settings, scores)),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds=KINDS,
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
    context: dg.AssetExecutionContext, rfm_settings: RFMSettings, rfm_scores: pd.DataFrame
):
    """Every customer with scores, one of the named segments, its recommendation, value tier
    and engagement level. Filter on the published columns, e.g.
    `df[df["segment"] == "Champions"]`.
    """
    segmented = assign_segments(
        rfm_scores,
        rfm_settings.segment_grid(),
        segmented_at=pd.Timestamp.now(tz="UTC").floor("s"),
    )
    counts = segmented["segment"].value_counts()
    yield dg.Output(
        segmented,
        metadata={
            **table_metadata(segmented),
            "segment_counts": dg.MetadataValue.json(
                {str(k): int(v) for k, v in counts.items() if v}
            ),
        },
    )
    duplicated = int(segmented["customer_id"].duplicated().sum())
    unsegmented = int(segmented["segment"].isna().sum())
    with_kept_rows = int(recorded_by_transactions(context, "customers"))
    yield dg.AssetCheckResult(
        check_name="one_row_per_customer",
        passed=duplicated == 0 and unsegmented == 0 and len(segmented) == with_kept_rows,
        metadata={
            "customers": len(segmented),
            "customers_with_kept_rows": with_kept_rows,
            "duplicated_customers": duplicated,
            "customers_without_segment": unsegmented,
        },
    )


@dg.asset(group_name=GROUP, kinds=KINDS)
def segment_analytics(
    rfm_settings: RFMSettings, customer_segments: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Per segment: customers, revenue, their shares, average R/F/M, average order value and
    the recommendation, in priority order, with the score thresholds the run used.
    """
    analytics = analyse_segments(
        customer_segments,
        rfm_settings.segment_grid(),
        used_thresholds(rfm_settings, customer_segments),
    )
    return dg.Output(
        analytics,
        metadata={
            **table_metadata(analytics),
            "segment_distribution": dg.MetadataValue.md(segment_table_markdown(analytics)),
        },
    )


RFM_ASSETS = [transactions, rfm_metrics, rfm_scores, customer_segments, segment_analytics]
