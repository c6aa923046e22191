"""The whole RFM computation as one function call, outside Dagster (tests, benchmarks).

The assets run the same engine steps one by one; this chains them in the same order.
"""

import datetime as dt
from dataclasses import dataclass
from typing import Any, Optional

from rfm_assets.engines.dispatch import PandasEngine, SparkEngine
from rfm_assets.engines.pandas_compute import RowAccount
from rfm_assets.settings import RFMSettings


@dataclass
class RFMResult:
    transactions: Any
    rfm_metrics: Any
    rfm_scores: Any
    customer_segments: Any
    segment_analytics: Any
    account: RowAccount
    thresholds: dict[str, list[float]]
    customers_held_out: dict[str, int]
    clustering: Optional[dict] = None  # what k-means measured (segmentation_method kmeans)
    cluster_model: Optional[dict] = None  # the model's document (ClusterModel.document)


def run_engine(
    settings: RFMSettings,
    spark_session=None,
    segmented_at: Optional[dt.datetime] = None,
) -> RFMResult:
    """Run every step with the settings' engine (Spark needs `spark_session`)."""
    engine = SparkEngine(spark_session) if settings.engine == "spark" else PandasEngine()
    spec = settings.run_spec()
    raw, listing = engine.read(spec)
    kept, account = engine.prepare(raw, spec, listing, consume=True)
    del raw
    metrics = engine.keep(engine.metrics(kept, account.reference_date, settings.input_level))
    metrics, customers_held_out = engine.filter_customers(metrics, spec)
    metrics = engine.keep(metrics)
    scores, thresholds = engine.scores(metrics, spec)
    scores = engine.keep(scores)
    grid = settings.segment_grid()
    segmented_at = segmented_at or dt.datetime.now(dt.UTC).replace(microsecond=0)
    clustering = model = None
    if settings.segmentation_method == "kmeans":
        fitted = {"reference_date": str(account.reference_date)}
        segmented, clustering, model = engine.clusters(
            scores, grid, thresholds, spec, segmented_at, fitted
        )
    else:
        segmented = engine.segments(scores, grid, segmented_at)
    segmented = engine.keep(segmented)
    analytics = engine.analytics(segmented, grid, thresholds)
    return RFMResult(
        kept,
        metrics,
        scores,
        segmented,
        analytics,
        account,
        thresholds,
        customers_held_out,
        clustering,
        model.document() if model else None,
    )


def run_pandas(settings: RFMSettings, segmented_at: Optional[dt.datetime] = None) -> RFMResult:
    assert settings.engine == "pandas", "run_pandas runs the pandas engine"
    return run_engine(settings, None, segmented_at)
