"""What the analyst view costs: the pictures, the HTML report, and choosing k for k-means.

Run from the repository root (figures go to stdout, one line each):

    .venv/bin/python benchmarks/analyst_costs.py [--customers 1000000]

- pictures: each PNG's size and drawing time on the bundled data (weeks 2011-11-28 and
  2011-12-05), and the HTML report's size;
- silhouette: the cost of one silhouette score by sample size (5,000 is the default
  cluster_sample_size);
- k-means: `clustering.fit` (k from 3 to 8) on N synthetic customers, searching k on the
  default 100,000-customer sample and, as the peer in the same invocation, on everyone.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def timed(run):
    start = time.perf_counter()
    value = run()
    return value, time.perf_counter() - start


def pictures_and_report() -> None:
    from rfm_assets import pictures, run
    from rfm_assets.engines.dispatch import PandasEngine
    from rfm_assets.report import ReportInputs, report_html
    from rfm_assets.settings import RFMSettings

    before = run(RFMSettings(reference_date="2011-11-28"))
    after = run(RFMSettings(reference_date="2011-12-05"))
    engine, rule_set = PandasEngine(), RFMSettings().rule_set()
    migration = engine.migration(before.customer_segments, after.customer_segments, rule_set)
    history = [a.segment_analytics.assign(week=w) for w, a in (("a", before), ("b", after))]

    drawings = {
        "segment_sizes": lambda: pictures.segment_sizes(after.segment_analytics),
        "score_heatmaps": lambda: pictures.score_heatmaps(
            engine.score_grid(after.customer_segments), 5
        ),
        "distributions": lambda: pictures.distributions(engine.histograms(after.rfm_metrics)),
        "movement": lambda: pictures.migration_heatmap(
            migration, [entry.name for entry in rule_set.segments]
        ),
        "share_trend": lambda: pictures.share_trend(
            pd.concat(history)[["week", "segment", "customer_share"]]
        ),
    }
    pictures.segment_sizes(after.segment_analytics)  # matplotlib's first-use cost, not timed
    total = 0.0
    for name, draw in drawings.items():
        png, seconds = timed(draw)
        total += seconds
        print(f"picture {name}: {len(png) / 1024:.0f} KiB in {seconds:.2f} s")
    print(f"pictures: all five in {total:.2f} s")
    page = report_html(
        ReportInputs(
            analytics=after.segment_analytics,
            score_grid=engine.score_grid(after.customer_segments),
            histograms=engine.histograms(after.customer_segments),
            scale=5,
            migration=migration,
        )
    )
    print(f"report: {len(page.encode()) / 1024:.0f} KiB")


def silhouette_cost() -> None:
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    points = rng.normal(size=(10_000, 3))
    labels = rng.integers(0, 4, size=len(points))
    for size in (2_500, 5_000, 10_000):
        _, seconds = timed(lambda n=size: silhouette_score(points[:n], labels[:n]))
        print(f"silhouette on {size:,} customers: {seconds:.2f} s")


def kmeans_cost(customers: int) -> None:
    from rfm_assets.engines import clustering

    rng = np.random.default_rng(0)
    values = np.column_stack(
        [
            rng.integers(1, 700, customers),
            np.maximum(1, rng.geometric(0.4, customers)),
            np.exp(rng.normal(6, 1.2, customers)),
        ]
    ).astype(float)
    default_search = clustering.SEARCH_SAMPLE
    for label, search in (("default search sample", default_search), ("search on everyone", None)):
        clustering.SEARCH_SAMPLE = search or customers
        model, seconds = timed(lambda: clustering.fit(values, (3, 8), 5_000, 0))
        print(f"k-means on {customers:,} customers, {label}: k={model.k} in {seconds:.1f} s")
    clustering.SEARCH_SAMPLE = default_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    args = parser.parse_args()
    pictures_and_report()
    silhouette_cost()
    kmeans_cost(args.customers)


if __name__ == "__main__":
    main()
