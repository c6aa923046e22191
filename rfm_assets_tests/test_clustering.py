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
        ({"cluster_model_path": "m.json"}, "cluster_model_path: applies to segmentation_method"),
        (
            {"segmentation_method": "kmeans", "cluster_model_path": "m.json", "clusters": 4},
            "clusters: the stored model",
        ),
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
    # The report asset shows the clusters, with the clusters picture.
    report = result.asset_materializations_for_node("rfm_report")[0].metadata["path"].value
    page = open(report, encoding="utf-8").read()
    assert "Clusters (segmentation_method kmeans)" in page and 'alt="k-means clusters"' in page
    output = tmp_path / "out"
    assert main(["analyze", "--input", str(path), "--input-level", "customers",
                 "--reference-date", "2024-06-01", "--segmentation", "kmeans",
                 "--clusters", "3", "--output", str(output)]) == 0  # fmt: skip
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["segmentation_method"] == "kmeans" and summary["clustering"]["k"] == 3
    assert len(summary["clustering"]["clusters"]) == 3


def test_davies_bouldin_and_calinski_harabasz_from_sums_equal_scikit_learn():
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    from rfm_assets.engines.clustering import cluster_sums, scores_from_sums

    rng = np.random.default_rng(3)
    for k in (2, 3, 7):
        points = rng.normal(size=(2_000, 3)) + rng.integers(0, 4, size=(2_000, 1))
        labels = rng.integers(0, k, size=2_000)
        scores = scores_from_sums(cluster_sums(points, labels, k))
        assert scores["davies_bouldin"] == pytest.approx(davies_bouldin_score(points, labels))
        assert scores["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(points, labels))


def nearest_centroid_oracle(document: dict, customers: pd.DataFrame) -> list[int]:
    """Cluster of each customer by a plain loop over the stored document."""
    import math

    clusters = []
    for row in customers.itertuples(index=False):
        features = [math.log1p(max(float(getattr(row, n)), 0.0)) for n in document["features"]]
        scaled = [(x - m) / q for x, m, q in zip(features, document["median"], document["iqr"])]
        best, best_distance = None, None
        for entry in document["clusters"]:
            distance = math.dist(scaled, entry["centroid_scaled"])
            if best_distance is None or distance < best_distance:
                best, best_distance = entry["cluster"], distance
        clusters.append(best)
    return clusters


def test_a_stored_model_assigns_new_customers_without_refitting(groups_file, tmp_path):
    import json

    path, _ = groups_file
    fitted = run_pandas(kmeans_settings(path, cluster_range=[2, 8]))
    document = fitted.cluster_model
    assert document["format"] == "rfm_assets.cluster_model" and document["version"] == 1
    assert set(document["inertia_by_k"]) == {str(k) for k in range(2, 9)}  # the elbow curve
    assert document["fitted"]["customers"] == 1_200
    model_file = tmp_path / "cluster_model.json"
    model_file.write_text(json.dumps(document))
    # Applied to the customers it was fitted on, the stored model gives the same clusters.
    again = run_pandas(kmeans_settings(path, cluster_model_path=str(model_file)))
    assert again.clustering["model"] == "applied"
    same = again.customer_segments.set_index("customer_id")["cluster"]
    first = fitted.customer_segments.set_index("customer_id")["cluster"]
    assert same.loc[first.index].tolist() == first.tolist()
    # New customers, drawn apart from the groups: assigned to the nearest stored centroid,
    # named as stored, and the model itself is unchanged (no refit).
    new = grouped_customers(50, seed=9).drop(columns="group")
    new["monetary"] = new["monetary"] * 3.0
    new_file = tmp_path / "new.parquet"
    new.to_parquet(new_file)
    applied = run_pandas(kmeans_settings(new_file, cluster_model_path=str(tmp_path)))
    segments = applied.customer_segments.set_index("customer_id")
    expected = nearest_centroid_oracle(document, new)
    assert segments.loc[new["customer_id"], "cluster"].tolist() == expected
    names = {c["cluster"]: c["name"] for c in document["clusters"]}
    assert segments["cluster_name"].tolist() == [names[c] for c in segments["cluster"]]
    assert applied.cluster_model["clusters"] == document["clusters"]
    assert applied.clustering["methods_compared"] == {}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not JSON"),
        ('{"format": "something else"}', "not an rfm_assets cluster model"),
        (None, "format version 2"),
        ("missing", "does not exist"),
    ],
)
def test_a_model_that_cannot_be_applied_is_one_line(groups_file, tmp_path, content, message):
    import json

    from rfm_assets.errors import RFMConfigError

    path, _ = groups_file
    model_file = tmp_path / "cluster_model.json"
    if content is None:
        document = run_pandas(kmeans_settings(path, clusters=3)).cluster_model
        content = json.dumps({**document, "version": 2})
    if content != "missing":
        model_file.write_text(content)
    with pytest.raises(RFMConfigError, match=message) as raised:
        run_pandas(kmeans_settings(path, cluster_model_path=str(model_file)))
    assert "\n" not in str(raised.value)


def test_the_cluster_model_asset_and_rfm_assets_predict(groups_file, tmp_path):
    import json

    import dagster as dg

    from rfm_assets.assets import RFM_ASSETS
    from rfm_assets.cli import main
    from rfm_assets_tests.conftest import rfm_resources

    path, _ = groups_file
    store = tmp_path / "store"
    definitions = dg.Definitions(
        assets=RFM_ASSETS, resources=rfm_resources(kmeans_settings(path), store)
    )
    job = definitions.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["model_reproduces_clusters"].passed
    document = definitions.load_asset_value("cluster_model")
    assert document["format"] == "rfm_assets.cluster_model" and len(document["clusters"]) == 4
    # predict from the asset store's location, on new customers.
    new = grouped_customers(40, seed=11).drop(columns="group")
    new_file = tmp_path / "new.csv"
    new.to_csv(new_file, index=False)
    output = tmp_path / "predicted"
    assert main(["predict", "--model", str(store / "cluster_model"), "--input", str(new_file),
                 "--input-level", "customers", "--reference-date", "2024-06-01",
                 "--output", str(output)]) == 0  # fmt: skip
    predicted = pd.read_parquet(output / "customer_segments.parquet").set_index("customer_id")
    expected = nearest_centroid_oracle(document, new)
    assert predicted.loc[new["customer_id"].astype(str), "cluster"].tolist() == expected
    assert (
        json.loads((output / "cluster_model.json").read_text())["clusters"]
        == (document["clusters"])
    )
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["clustering"]["model"] == "applied"
    # A grid run does not materialize cluster_model.
    grid = dg.materialize(
        RFM_ASSETS,
        resources=rfm_resources(RFMSettings(input_path=str(path), input_level="customers",
                                            reference_date="2024-06-01"), tmp_path / "grid"),
        instance=dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    assert grid.success
    assert not grid.asset_materializations_for_node("cluster_model")


def test_predict_refuses_what_it_cannot_do_in_one_line(groups_file, tmp_path, capsys):
    from rfm_assets.cli import main

    path, _ = groups_file
    common = ["--input", str(path), "--input-level", "customers", "--reference-date",
              "2024-06-01", "--output", str(tmp_path / "o")]  # fmt: skip
    assert main(["predict", "--model", str(tmp_path / "nowhere"), *common]) == 1
    assert main(["predict", "--model", str(tmp_path), "--clusters", "3", *common]) == 1
    (tmp_path / "m").mkdir()
    assert main(["analyze", "--segmentation", "kmeans", "--clusters", "3", *common[:-1],
                 str(tmp_path / "m")]) == 0  # fmt: skip
    capsys.readouterr()
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "scale: 5\nrules:\n  - {segment: Champions, R: 5, F: 5, M: 5}\n"
        "  - {segment: Lost, default: true}\n"
    )
    assert main(["predict", "--model", str(tmp_path / "m"), "--segment-rules", str(rules),
                 *common]) == 1  # fmt: skip
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "does not have" in errors[0], errors
