"""The whole RFM computation as one function call, outside Dagster (tests, benchmarks).

The assets run the same steps one by one; this chains them in the same order.
"""

from dataclasses import dataclass

import pandas as pd

from rfm_assets.engines.pandas_compute import (
    RowAccount,
    assign_segments,
    compute_metrics,
    compute_scores,
    prepare_transactions,
    segment_analytics,
    thresholds_from_scores,
)
from rfm_assets.engines.pandas_read import read_transactions
from rfm_assets.settings import RFMSettings


@dataclass
class RFMResult:
    transactions: pd.DataFrame
    rfm_metrics: pd.DataFrame
    rfm_scores: pd.DataFrame
    customer_segments: pd.DataFrame
    segment_analytics: pd.DataFrame
    account: RowAccount
    thresholds: dict[str, list[float]]


def used_thresholds(settings: RFMSettings, scores: pd.DataFrame) -> dict[str, list[float]]:
    """The cut points behind the scores: the configured ones, or those the quantiles drew."""
    return settings.fixed_cut_points() or thresholds_from_scores(scores, settings.scale)


def run_pandas(settings: RFMSettings, segmented_at: pd.Timestamp | None = None) -> RFMResult:
    raw = read_transactions(settings.source_path, settings.source_columns())
    kept, account = prepare_transactions(
        raw,
        reference_date=settings.parsed_reference_date,
        analysis_period_days=settings.analysis_period_days,
        returns_policy=settings.returns_policy,
        cancelled_order_prefix=settings.cancelled_order_prefix,
    )
    metrics = compute_metrics(kept, account.reference_date)
    weights = settings.weights
    scores = compute_scores(
        metrics,
        settings.scale,
        (weights.recency, weights.frequency, weights.monetary),
        settings.fixed_cut_points(),
    )
    grid = settings.segment_grid()
    segmented = assign_segments(scores, grid, segmented_at or pd.Timestamp.now(tz="UTC").floor("s"))
    thresholds = used_thresholds(settings, scores)
    analytics = segment_analytics(segmented, grid, thresholds)
    return RFMResult(kept, metrics, scores, segmented, analytics, account, thresholds)
