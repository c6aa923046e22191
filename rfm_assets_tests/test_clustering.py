"""k-means segmentation (segmentation_method: kmeans): known groups are recovered, clusters get
catalog names, the metrics are reported, and results repeat."""

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.metrics import adjusted_rand_score

from rfm_assets.engines.clustering import cluster_names
from rfm_assets.pipeline import run_pandas
from rfm_assets.settings import RFMSettings

# Four groups far apart in log space: (recency days, orders, spend).
GROUPS = [(3, 20, 5000.0), (20, 5, 800.0), (120, 2, 150.0), (400, 1, 30.0)]


def grouped_customers(per_group: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for group, (recency, frequency, monetary) in enumerate(GROUPS):
        for i in range(per_group):
            rows.append(
                {
                    "customer_id": f"g{group}-{i}",
                    "recency": int(round(recency * np.exp(rng.normal(0, 0.12)))),
                    "frequency": max(1, int(round(frequency * np.exp(rng.normal(0, 0.1))))),
                    "monetary": round(monetary * float(np.exp(rng.normal(0, 0.12))), 2),
                    "group": group,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def groups_file(tmp_path_factory):
    customers = grouped_customers(300, seed=1)
    path = tmp_path_factory.mktemp("clusters") / "customers.parquet"
    customers.drop(columns="group").to_parquet(path)
    return path, customers


def kmeans_settings(path, **extra) -> RFMSettings:
    return RFMSettings(
        input_path=str(path),
        input_level="customers",
        reference_date="2024-06-01",
        segmentation_method="kmeans",
        **extra,
    )


def test_well_separated_groups_are_recovered(groups_file):
    path, customers = groups_file
    result = run_pandas(kmeans_settings(path, cluster_range=[2, 8]))
    assert result.clustering["k"] == 4  # the silhouette picks the true number of groups
    found = result.customer_segments.set_index("customer_id")["cluster"]
    truth = customers.set_index("customer_id")["group"]
    assert adjusted_rand_score(truth, found.loc[truth.index]) > 0.95
    # The most recent, most frequent, biggest spenders' cluster is named Champions.
    best = result.customer_segments.set_index("customer_id").loc["g0-0"]
    assert best["segment"] == "Champions" and best["cluster_name"] == "Champions"
    worst = result.customer_segments.set_index("customer_id").loc["g3-0"]
    assert worst["segment"] == "Lost"


def test_clusters_on_the_bundled_data_are_named_measured_and_repeatable():
    first = run_pandas(RFMSettings(segmentation_method="kmeans"))
    again = run_pandas(RFMSettings(segmentation_method="kmeans"))
    segments = first.customer_segments
    assert list(segments["cluster"]) == list(again.customer_segments["cluster"])
    summary = first.clustering
    assert 3 <= summary["k"] <= 8
    assert set(summary["silhouette_by_k"]) == {str(k) for k in range(3, 9)}
    assert summary["silhouette"] == pytest.approx(summary["silhouette_by_k"][str(summary["k"])],
                                                  abs=1e-6)  # fmt: skip
    assert summary["davies_bouldin"] > 0 and summary["calinski_harabasz"] > 0
    assert max(summary["silhouette_by_k"].values()) == summary["silhouette_by_k"][str(summary["k"])]
    # Every cluster has a catalog segment; the analytics count customers by it.
    catalog = {e.name: e for e in RFMSettings().segment_grid().catalog.values()}
    by_cluster = segments.groupby("cluster")["segment"].agg(lambda s: set(s.astype(str)))
    assert all(len(names) == 1 and names <= set(catalog) for names in by_cluster)
    for entry in summary["clusters"]:
        assert entry["customers"] == int((segments["cluster"] == entry["cluster"]).sum())
    counts = segments["segment"].astype(str).value_counts()
    analytics = first.segment_analytics.set_index("segment")["customers"]
    assert all(analytics[name] == counts.get(name, 0) for name in analytics.index)
    recommendations = segments.groupby("segment", observed=True)["recommendation"].first()
    assert all(recommendations[n] == catalog[n].recommendation for n in recommendations.index)
    # A fixed k is honoured; the distance column is each customer's to its own centroid.
    five = run_pandas(RFMSettings(segmentation_method="kmeans", clusters=5))
    assert five.clustering["k"] == 5 and five.customer_segments["cluster"].nunique() == 5
    assert (five.customer_segments["cluster_distance"] >= 0).all()


def test_clusters_on_one_segment_get_numbered_names_largest_first():
    names = cluster_names(["Champions", "Lost", "Champions", "Champions"], np.array([5, 9, 7, 7]))
    assert names == ["Champions 3", "Lost", "Champions", "Champions 2"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"segmentation_method": "kmeans", "engine": "spark"}, "kmeans runs on the pandas engine"),
        ({"cluster_range": [1, 5]}, "cluster_range: \\[1, 5\\] must be \\[low, high\\]"),
        ({"cluster_range": [6, 4]}, "cluster_range"),
        ({"clusters": 1}, "clusters"),
    ],
)
def test_clustering_settings_are_checked(settings, message):
    with pytest.raises(ValidationError, match=message):
        RFMSettings(**settings)


def test_kmeans_in_the_dagster_graph_and_on_the_command_line(groups_file, tmp_path):
    import json

    import dagster as dg

    from rfm_assets.assets import RFM_ASSETS
    from rfm_assets.cli import main
    from rfm_assets_tests.conftest import rfm_resources

    path, _ = groups_file
    result = dg.materialize(
        RFM_ASSETS,
        resources=rfm_resources(kmeans_settings(path), tmp_path / "store"),
        instance=dg.DagsterInstance.ephemeral(),
    )
    metadata = result.asset_materializations_for_node("customer_segments")[0].metadata
    assert metadata["segmentation_method"].value == "kmeans"
    assert metadata["clustering"].value["k"] == 4
    from rfm_assets import pictures
    from rfm_assets_tests.test_pictures import image_of, png_size

    assert png_size(image_of(metadata["clusters"].value)) == (pictures.WIDTH, pictures.HEIGHT)
    compared = metadata["clustering"].value["methods_compared"]
    assert set(compared) == {"kmeans", "gaussian_mixture", "agglomerative_ward"}
    # On well-separated groups every method finds them: all silhouettes are high.
    assert all(scores["silhouette"] > 0.7 for scores in compared.values())
    checks = result.get_asset_check_evaluations()
    assert all(c.passed for c in checks if c.severity == dg.AssetCheckSeverity.ERROR)
    output = tmp_path / "out"
    assert main(["analyze", "--input", str(path), "--input-level", "customers",
                 "--reference-date", "2024-06-01", "--segmentation", "kmeans",
                 "--clusters", "3", "--output", str(output)]) == 0  # fmt: skip
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["segmentation_method"] == "kmeans" and summary["clustering"]["k"] == 3
    assert len(summary["clustering"]["clusters"]) == 3
