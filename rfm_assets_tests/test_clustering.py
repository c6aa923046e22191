"""k-means segmentation (segmentation_method: kmeans): known groups are recovered, clusters get
catalog names, the metrics are reported, and results repeat."""

import contextlib
import os

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from sklearn.metrics import adjusted_rand_score

from rfm_assets import run
from rfm_assets.engines.clustering import cluster_names
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
    result = run(kmeans_settings(path, cluster_range=[2, 8]))
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
    first = run(RFMSettings(segmentation_method="kmeans"))
    again = run(RFMSettings(segmentation_method="kmeans"))
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
    catalog = {e.name: e for e in RFMSettings().rule_set().catalog.values()}
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
    five = run(RFMSettings(segmentation_method="kmeans", clusters=5))
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
    assert (
        "Clusters (segmentation_method kmeans or auto)" in page and 'alt="k-means clusters"' in page
    )
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
    fitted = run(kmeans_settings(path, cluster_range=[2, 8]))
    document = fitted.cluster_model
    assert document["format"] == "rfm_assets.cluster_model" and document["version"] == 2
    assert document["features"] == ["recency", "frequency", "monetary"]
    assert set(document["inertia_by_k"]) == {str(k) for k in range(2, 9)}  # the elbow curve
    assert document["fitted"]["customers"] == 1_200
    model_file = tmp_path / "cluster_model.json"
    model_file.write_text(json.dumps(document))
    # Applied to the customers it was fitted on, the stored model gives the same clusters.
    again = run(kmeans_settings(path, cluster_model_path=str(model_file)))
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
    applied = run(kmeans_settings(new_file, cluster_model_path=str(tmp_path)))
    segments = applied.customer_segments.set_index("customer_id")
    expected = nearest_centroid_oracle(document, new)
    assert segments.loc[new["customer_id"], "cluster"].tolist() == expected
    names = {c["cluster"]: c["name"] for c in document["clusters"]}
    assert segments["cluster_name"].tolist() == [names[c] for c in segments["cluster"]]
    assert applied.cluster_model["clusters"] == document["clusters"]
    assert applied.clustering["methods_compared"] == {}


def applied_to_one_group(model: dict, folder, engine: str = "pandas", **options):
    """A stored model applied to customers of one group only, all nearest one of its
    centroids, on `engine`: (the run's result, the customers, each one's nearest centroid by
    the oracle). `options` go to `run`."""
    import json

    one_group = grouped_customers(40, seed=5)
    one_group = one_group[one_group["group"] == 0].drop(columns="group")
    path = folder / "one_group.parquet"
    one_group.to_parquet(path)
    (folder / "model").mkdir()
    (folder / "model" / "cluster_model.json").write_text(json.dumps(model))
    settings = kmeans_settings(path, cluster_model_path=str(folder / "model"), engine=engine)
    return run(settings, **options), one_group, nearest_centroid_oracle(model, one_group)


def test_a_stored_model_applied_to_customers_of_one_cluster_reports_no_comparison(
    fitted_model, tmp_path
):
    """Customers who are all nearest one stored centroid: the run succeeds, every customer in
    that cluster, and the scores that compare clusters with each other are null (they once
    divided by zero: `step customer_segments failed: ZeroDivisionError`). On Spark:
    test_spark.py."""
    result, customers, expected = applied_to_one_group(fitted_model, tmp_path)
    assert len(set(expected)) == 1  # the case this test is about
    segments = result.customer_segments.set_index("customer_id")
    assert segments.loc[customers["customer_id"], "cluster"].tolist() == expected
    clustering = result.clustering
    assert clustering["davies_bouldin"] is None and clustering["calinski_harabasz"] is None
    assert clustering["silhouette"] == -1.0
    sizes = [cluster["customers"] for cluster in clustering["clusters"]]
    assert sorted(sizes) == [0] * (len(sizes) - 1) + [len(customers)]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not JSON"),
        ('{"format": "something else"}', "not an rfm_assets cluster model"),
        (None, "format version 3; this rfm_assets reads versions 1 and 2"),
        ("missing", "does not exist"),
    ],
)
def test_a_model_that_cannot_be_applied_is_one_line(groups_file, tmp_path, content, message):
    import json

    from rfm_assets.errors import RFMConfigError

    path, _ = groups_file
    model_file = tmp_path / "cluster_model.json"
    if content is None:
        document = run(kmeans_settings(path, clusters=3)).cluster_model
        content = json.dumps({**document, "version": 3})
    if content != "missing":
        model_file.write_text(content)
    with pytest.raises(RFMConfigError, match=message) as raised:
        run(kmeans_settings(path, cluster_model_path=str(model_file)))
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
    with pytest.raises(SystemExit) as usage:  # the stored model fixes k: not an option
        main(["predict", "--model", str(tmp_path), "--clusters", "3", *common])
    assert usage.value.code == 2
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


# --- A stored model is checked when it loads: every field in its domain, a regular file of
# bounded size (docs/contract.md, "Clustering").

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def fitted_model(groups_file):
    """The document of a k = 3 model fitted once for the module."""
    path, _ = groups_file
    return run(kmeans_settings(path, clusters=3)).cluster_model


def put(*where):
    """A change of a model document: the value at the keys (the last argument) replaced."""
    *keys, value = where

    def change(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def drop(*keys):
    def change(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


def both(*changes):
    def change(document):
        for each in changes:
            each(document)

    return change


def keep_clusters(count):
    return lambda document: document.__setitem__("clusters", document["clusters"][:count])


A_NUMBER_PER_FEATURE = "it must be a list of 3 values (recency, frequency, monetary)"
FIELDS = "format, version, features, scaling, median, iqr, clusters, silhouette_by_k, " + (
    "inertia_by_k, fitted"
)
A_NAME = "it must be text with a letter or digit"
# (change, the message after "cluster model <file>: "; "..." at the end: the start of it)
DAMAGED_MODELS = {
    "iqr NaN": (put("iqr", 0, NAN), "iqr[0] is NaN; it must be a finite number > 0"),
    "iqr inf": (put("iqr", 1, INF), "iqr[1] is inf; it must be a finite number > 0"),
    "iqr negative": (put("iqr", 2, -0.5), "iqr[2] is -0.5; it must be a finite number > 0"),
    "iqr zero": (put("iqr", 0, 0), "iqr[0] is 0; it must be a finite number > 0"),
    "iqr two values": (put("iqr", [1.0, 1.0]), f"iqr is [1.0, 1.0]; {A_NUMBER_PER_FEATURE}"),
    "median NaN": (put("median", 1, NAN), "median[1] is NaN; it must be a finite number >= 0"),
    "median text": (put("median", 0, "3.9"), "median[0] is '3.9'; it must be a finite number >= 0"),
    "median missing": (drop("median"), "median is missing"),
    "centroid NaN": (
        put("clusters", 1, "centroid_scaled", 2, NAN),
        "clusters[1].centroid_scaled[2] is NaN; it must be a finite number",
    ),
    "centroid -inf": (
        put("clusters", 0, "centroid_scaled", 0, -INF),
        "clusters[0].centroid_scaled[0] is -inf; it must be a finite number",
    ),
    "centroid of 2 values": (
        put("clusters", 0, "centroid_scaled", [0.5, 0.5]),
        f"clusters[0].centroid_scaled is [0.5, 0.5]; {A_NUMBER_PER_FEATURE}",
    ),
    "centroid beyond any float in units": (
        put("clusters", 2, "centroid_scaled", 0, 1e6),
        "clusters[2].centroid_scaled puts the centroid at [inf, ...",
    ),
    "centroid in units edited by hand": (
        put("clusters", 0, "centroid", "recency", 5.0),
        "clusters[0].centroid.recency is 5.0; it must be ...",
    ),
    "centroid in units lacks a feature": (
        put("clusters", 0, "centroid", {"recency": 1.0}),
        "clusters[0].centroid is {'recency': 1.0}; it must be a mapping of recency, frequency, "
        "monetary",
    ),
    "k: a cluster without a name": (drop("clusters", 2, "name"), "clusters[2].name is missing"),
    "k: one cluster": (
        keep_clusters(1),
        "clusters has 1 entries; it must have 2 to 20 (k, the number of clusters)",
    ),
    "k: silhouette_by_k lacks the model's k": (
        put("silhouette_by_k", {"4": 0.3}),
        "silhouette_by_k has no entry for k = 3 (the model's clusters); it must hold the k the "
        "model was fitted with",
    ),
    "clusters not a list": (
        put("clusters", {}),
        "clusters is {}; it must be a list of 2 to 20 clusters",
    ),
    "a cluster not a mapping": (put("clusters", 0, 3), "clusters[0] is 3; it must be a mapping"),
    "cluster id repeated": (
        put("clusters", 1, "cluster", 0),
        "clusters[1].cluster is 0; it must be one of 0 to 2, each id once (there are 3 clusters)",
    ),
    "cluster id beyond k": (
        put("clusters", 2, "cluster", 3),
        "clusters[2].cluster is 3; it must be one of 0 to 2, each id once (there are 3 clusters)",
    ),
    "cluster id negative": (
        put("clusters", 0, "cluster", -1),
        "clusters[0].cluster is -1; it must be a whole number (the cluster id)",
    ),
    "cluster id text": (
        put("clusters", 1, "cluster", "1"),
        "clusters[1].cluster is '1'; it must be a whole number (the cluster id)",
    ),
    "cluster id true": (
        put("clusters", 1, "cluster", True),
        "clusters[1].cluster is True; it must be a whole number (the cluster id)",
    ),
    "name blank": (put("clusters", 0, "name", " "), f"clusters[0].name is ' '; {A_NAME}"),
    "name without a letter": (
        put("clusters", 0, "name", "--"),
        f"clusters[0].name is '--'; {A_NAME}",
    ),
    "name repeated": (
        both(put("clusters", 0, "name", "Same"), put("clusters", 1, "name", "Same")),
        "clusters[1].name is 'Same'; it must be a name no other cluster has",
    ),
    "segment not text": (put("clusters", 0, "segment", 3), f"clusters[0].segment is 3; {A_NAME}"),
    "silhouette_by_k key not a number": (
        put("silhouette_by_k", "x", 0.5),
        "silhouette_by_k has the key 'x'; its keys must be whole numbers k from 2 to 20",
    ),
    "silhouette_by_k key 1": (
        put("silhouette_by_k", "1", 0.5),
        "silhouette_by_k has the key '1'; its keys must be whole numbers k from 2 to 20",
    ),
    "silhouette NaN": (
        put("silhouette_by_k", "3", NAN),
        "silhouette_by_k['3'] is NaN; it must be a finite number from -1 to 1",
    ),
    "silhouette above 1": (
        put("silhouette_by_k", "3", 1.5),
        "silhouette_by_k['3'] is 1.5; it must be a finite number from -1 to 1",
    ),
    "silhouette_by_k not a mapping": (
        put("silhouette_by_k", [0.5]),
        "silhouette_by_k is [0.5]; it must be a mapping of k to a number",
    ),
    "inertia negative": (
        put("inertia_by_k", "3", -1.0),
        "inertia_by_k['3'] is -1.0; it must be a finite number >= 0",
    ),
    "inertia inf": (
        put("inertia_by_k", "3", INF),
        "inertia_by_k['3'] is inf; it must be a finite number >= 0",
    ),
    "fitted not a mapping": (
        put("fitted", 3),
        "fitted is 3; it must be a mapping (engine, customers, reference date, ...)",
    ),
    "fitted customers text": (
        put("fitted", "customers", "many"),
        "fitted['customers'] is 'many'; it must be a whole number >= 0",
    ),
    "fitted value nested": (
        put("fitted", "engine", {"name": "pandas"}),
        "fitted['engine'] is {'name': 'pandas'}; it must be text, a finite number, true/false or "
        "null",
    ),
    "fitted value NaN": (
        put("fitted", "note", NAN),
        "fitted['note'] is NaN; it must be text, a finite number, true/false or null",
    ),
    "unknown field": (
        put("silhouete_by_k", {}),
        f"silhouete_by_k is not a field of a version-2 cluster model (the fields: {FIELDS})",
    ),
    "unknown field of a cluster": (
        put("clusters", 0, "size", 10),
        "clusters[0].size is not a field of a version-2 cluster model (the fields of a cluster: "
        "cluster, name, segment, centroid_scaled, centroid)",
    ),
    "scaling changed": (
        put("scaling", "x / 2"),
        "scaling is 'x / 2'; it must be 'log1p(max(x, 0)), then (x - median) / iqr'",
    ),
    "features reordered in version 1": (
        lambda document: document.update(version=1, features=["frequency", "recency", "monetary"]),
        "features is ['frequency', 'recency', 'monetary']; it must be ['recency', 'frequency', "
        "'monetary']",
    ),
    "a feature unknown": (
        put("features", ["recency", "frequency", "age"]),
        "features: 'age' is not a feature; the features: recency, frequency, monetary, "
        "tenure_days, avg_order_value, purchase_frequency_per_month, days_between_purchases",
    ),
    "features without monetary": (
        put("features", ["recency", "frequency", "tenure_days"]),
        "features is ['recency', 'frequency', 'tenure_days']; it must be a list of names from ...",
    ),
    "a feature more than its numbers": (
        put("features", ["recency", "frequency", "monetary", "tenure_days"]),
        "median is [...",
    ),
    "version true": (
        put("version", True),
        "format version True; this rfm_assets reads versions 1 and 2",
    ),
}


def predict_args(groups_path, model, output) -> list[str]:
    return ["predict", "--model", str(model), "--input", str(groups_path), "--input-level",
            "customers", "--reference-date", "2024-06-01", "--output", str(output)]  # fmt: skip


def one_error_line(capsys) -> str:
    """The one line `rfm-assets` wrote to stderr (no traceback, nothing else)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def assert_says(line: str, expected: str) -> None:
    if expected.endswith("..."):
        assert line.startswith(expected[:-3]), line
    else:
        assert line == expected, line


@pytest.mark.parametrize("damage", DAMAGED_MODELS, ids=list(DAMAGED_MODELS))
def test_a_damaged_model_is_refused_in_one_line_naming_the_field(
    groups_file, fitted_model, tmp_path, capsys, damage
):
    import copy
    import json

    from rfm_assets.cli import main

    change, message = DAMAGED_MODELS[damage]
    document = copy.deepcopy(fitted_model)
    change(document)
    model_file = tmp_path / "model" / "cluster_model.json"
    model_file.parent.mkdir()
    model_file.write_text(json.dumps(document))  # NaN and Infinity as Python's json writes them
    path, _ = groups_file
    capsys.readouterr()
    assert main(predict_args(path, model_file.parent, tmp_path / "out")) == 1
    assert_says(one_error_line(capsys), f"rfm-assets: error: cluster model {model_file}: {message}")
    assert not (tmp_path / "out" / "customer_segments.parquet").exists()


def test_the_setting_gets_the_same_line_as_predict(groups_file, fitted_model, tmp_path):
    """cluster_model_path in a Dagster run: the step fails with the same message."""
    import json

    import dagster as dg

    from rfm_assets.assets import RFM_ASSETS
    from rfm_assets.errors import RFMConfigError
    from rfm_assets_tests.conftest import rfm_resources

    model_file = tmp_path / "cluster_model.json"
    model_file.write_text(json.dumps({**fitted_model, "iqr": [NAN, 1, 1]}))
    path, _ = groups_file
    settings = kmeans_settings(path, cluster_model_path=str(model_file))
    expected = f"cluster model {model_file}: iqr[0] is NaN; it must be a finite number > 0"
    with pytest.raises(RFMConfigError) as raised:
        run(settings)
    assert str(raised.value) == expected
    result = dg.materialize(
        RFM_ASSETS,
        resources=rfm_resources(settings, tmp_path / "store"),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["customer_segments"]
    error = failures[0].step_failure_data.error  # Dagster's wrapper; the cause is ours
    while error.cls_name != "RFMConfigError" and error.cause is not None:
        error = error.cause
    assert error.cls_name == "RFMConfigError" and error.message.strip().endswith(f": {expected}")


def test_a_valid_model_round_trips_unchanged(fitted_model):
    """from_document(model.document()) is the same model, for the fitted one and for random
    valid models (any k, any order of the clusters in the file)."""
    import json

    from rfm_assets.engines.clustering import MODEL_K, ClusterModel

    def same(model, back):
        assert np.array_equal(back.median, model.median) and np.array_equal(back.iqr, model.iqr)
        assert np.array_equal(back.centroids, model.centroids)
        assert (back.names, back.segments) == (list(model.names), list(model.segments))
        assert back.silhouette_by_k == model.silhouette_by_k
        assert back.inertia_by_k == model.inertia_by_k and back.fitted == model.fitted

    stored = ClusterModel.from_document(fitted_model, "fitted")
    assert stored.document() == fitted_model
    rng = np.random.default_rng(5)
    for _ in range(200):
        k = int(rng.integers(MODEL_K[0], MODEL_K[1] + 1))
        tried = sorted({k, *rng.integers(2, 21, size=int(rng.integers(0, 6))).tolist()})
        model = ClusterModel(
            median=rng.uniform(0, 9, 3),
            iqr=rng.choice([1.0, rng.uniform(1e-6, 5)], 3),
            centroids=rng.normal(0, 2, (k, 3)),
            silhouette_by_k={t: float(rng.uniform(-1, 1)) for t in tried},
            inertia_by_k={t: float(rng.uniform(0, 1e9)) for t in tried},
            names=[f"Cluster {c} é" for c in rng.permutation(k)],
            segments=[str(s) for s in rng.choice(["Champions", "Lost", "At Risk"], k)],
            fitted={
                "engine": "pandas",
                "customers": int(rng.integers(0, 10**7)),
                "seed": -3,
                "reference_date": None,
                "rule_set": "rfm_grid",
            },  # fmt: skip
        )
        document = json.loads(json.dumps(model.document()))
        same(model, ClusterModel.from_document(document, "random"))
        document["clusters"] = [document["clusters"][c] for c in rng.permutation(k)]
        back = ClusterModel.from_document(document, "shuffled")
        same(model, back)
        assert back.document() == model.document()


@contextlib.contextmanager
def fifo_released(fifo):
    """While in it, a reader that opens `fifo` gets an empty file instead of waiting forever
    (a writer stands by), so a test of a FIFO fails instead of hanging."""
    import threading

    def writer():
        os.close(os.open(fifo, os.O_WRONLY))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        yield
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # releases the waiting writer
        thread.join(timeout=10)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="FIFOs and /dev/zero are POSIX")  # fmt: skip
@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "fifo in a folder", "fifo as LATEST",
                                  "oversized", "oversized in a folder"])  # fmt: skip
def test_a_model_path_that_is_not_a_small_regular_file_is_refused_unread(
    groups_file, tmp_path, capsys, monkeypatch, kind
):
    from upath import UPath

    from rfm_assets.cli import main
    from rfm_assets.engines.clustering import MODEL_MAX_BYTES

    folder = tmp_path / "model"
    folder.mkdir()
    not_a_file = "is not a regular file (a directory, pipe or device?)"
    too_big = "is larger than 64 MiB, the most a cluster model may be (a model is a few KB)"
    if kind == "/dev/zero":
        location = target = "/dev/zero"
        expected = "/dev/zero is not a regular file or directory (a pipe or device?)"
    elif kind == "fifo":
        location = target = str(tmp_path / "cluster_model.json")
        expected = f"{location} is not a regular file or directory (a pipe or device?)"
    elif kind == "fifo in a folder":
        location, target = str(folder), str(folder / "cluster_model.json")
        expected = f"{location}: {target} {not_a_file}"
    elif kind == "fifo as LATEST":
        location, target = str(folder), str(folder / "LATEST")
        expected = f"{location}: {target} {not_a_file}"
    else:
        location = target = str(tmp_path / "cluster_model.json")
        if kind == "oversized in a folder":
            location = str(tmp_path)
        expected = (
            f"{target} {too_big}" if location == target else f"{location}: {target} {too_big}"
        )
        with open(target, "wb") as handle:  # sparse: no disk space used
            handle.truncate(MODEL_MAX_BYTES + 1)
    if kind.startswith("fifo"):
        os.mkfifo(target)
    opened = []
    local_path = type(UPath(str(tmp_path)))
    real_open = local_path.open

    def recording_open(self, *args, **kwargs):
        opened.append(self.path)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(local_path, "open", recording_open)
    path, _ = groups_file
    capsys.readouterr()
    with fifo_released(target) if kind.startswith("fifo") else contextlib.nullcontext():
        assert main(predict_args(path, location, tmp_path / "out")) == 1
    assert one_error_line(capsys) == f"rfm-assets: error: cluster_model_path: {expected}"
    assert target not in opened  # refused from a stat, never opened


def test_a_model_at_a_uri_is_bounded_too(fitted_model, monkeypatch):
    """A URI (here fsspec's memory file system): its size from the file system's info when it
    tells one, and the read stops at the bound when it does not."""
    import json
    import uuid

    from upath import UPath

    from rfm_assets.engines import clustering, stored
    from rfm_assets.errors import RFMConfigError

    folder = UPath(f"memory://rfm-model-test-{uuid.uuid4().hex}")
    model = folder / "cluster_model.json"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model.write_text(json.dumps(fitted_model))
        document, source = stored.model_document_at(str(folder))
        assert document == fitted_model and source == str(model)
        monkeypatch.setattr(clustering, "MODEL_MAX_BYTES", 1000)
        expected = (
            f"cluster_model_path: {folder}: {model} is larger than 1,000 bytes, the most a "
            "cluster model may be (a model is a few KB)"
        )
        with pytest.raises(RFMConfigError) as raised:
            stored.model_document_at(str(folder))
        assert str(raised.value) == expected
        # The file system does not tell the size: the read stops after the bound.
        real_kind = stored.small_file_kind
        monkeypatch.setattr(
            stored,
            "small_file_kind",
            lambda path: ("file", None) if path.name == model.name else real_kind(path),
        )
        with pytest.raises(RFMConfigError) as raised:
            stored.model_document_at(str(folder))
        assert str(raised.value) == expected
    finally:
        folder.fs.rm(folder.path, recursive=True)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "not JSON (nested too deeply)"),
        ("1" * 5_000, "not JSON (Exceeds the limit ..."),
        (b"\xff\xfe", None),
    ],
)
def test_a_model_file_that_is_not_json_is_one_line(tmp_path, text, message):
    from rfm_assets.engines.stored import model_document_at
    from rfm_assets.errors import RFMConfigError

    model_file = tmp_path / "cluster_model.json"
    if isinstance(text, bytes):
        model_file.write_bytes(text)
        message = f"cluster_model_path: cannot read {model_file}: 'utf-8' codec can't decode ..."
    else:
        model_file.write_text(text)
        message = f"cluster model {model_file}: {message}"
    with pytest.raises(RFMConfigError) as raised:
        model_document_at(str(model_file))
    assert "\n" not in str(raised.value)
    assert_says(str(raised.value), message)


def test_a_store_pointer_names_a_version_beside_it(fitted_model, tmp_path):
    """CURRENT and LATEST of a store location are one plain name each: a name that leads
    elsewhere, or one that is not stored, is one line naming the pointer."""
    import json

    from rfm_assets.engines.stored import model_document_at
    from rfm_assets.errors import RFMConfigError

    store = tmp_path / "cluster_model"
    week = store / "2024-06-03"
    week.mkdir(parents=True)
    (week / "v1-0000abcd.json").write_text(json.dumps(fitted_model))
    (week / "CURRENT").write_text("v1-0000abcd.json\n")
    (store / "LATEST").write_text("2024-06-03\n")
    assert model_document_at(str(store)) == (fitted_model, str(week / "v1-0000abcd.json"))
    (tmp_path / "elsewhere.json").write_text(json.dumps(fitted_model))
    for pointer, text, problem in [
        (week / "CURRENT", "../../elsewhere.json", "is damaged: it holds '../../elsewhere.json', "
         "not the name of what is stored beside it"),
        (week / "CURRENT", "v2-0000abcd.json", None),
        (store / "LATEST", "..", "is damaged: it holds '..', not the name of what is stored "
         "beside it"),
    ]:  # fmt: skip
        saved = pointer.read_text()
        pointer.write_text(text + "\n")
        if problem is None:
            expected = f"cluster_model_path: {store}: {week / text} does not exist"
        else:
            expected = f"cluster_model_path: {store}: {pointer} {problem}"
        with pytest.raises(RFMConfigError) as raised:
            model_document_at(str(store))
        assert str(raised.value) == expected
        pointer.write_text(saved)


# The seven features a k-means notebook clusters on.
SEVEN = ["recency", "frequency", "monetary", "tenure_days", "avg_order_value",
         "purchase_frequency_per_month", "days_between_purchases"]  # fmt: skip


def oracle_features(features: list[str]) -> pd.DataFrame:
    """Each bundled customer's features by the oracle loop (days between purchases: the mean
    gap between consecutive orders' days, counted order by order)."""
    from rfm_assets_tests.conftest import bundled_oracle

    expected, _ = bundled_oracle()
    rows = []
    for customer, values in expected.items():
        values = {**values, "avg_order_value": values["monetary"] / values["frequency"]}
        rows.append({"customer_id": customer, **{name: values[name] for name in features}})
    return pd.DataFrame(rows)


def test_kmeans_on_the_seven_features_of_a_kmeans_notebook(tmp_path, capsys):
    """cluster_features: the model scales the seven features the oracle computes (log1p,
    median, IQR), and each customer is in the cluster of the nearest stored centroid."""
    import json

    from rfm_assets.cli import main

    result = run(RFMSettings(segmentation_method="kmeans", clusters=4, cluster_features=SEVEN))
    document = result.cluster_model
    assert document["version"] == 2 and document["features"] == SEVEN
    features = oracle_features(SEVEN)
    logged = np.log1p(np.maximum(features[SEVEN].to_numpy(dtype=float), 0.0))
    assert document["median"] == pytest.approx(np.median(logged, axis=0), rel=1e-12)
    high, low = np.percentile(logged, [75, 25], axis=0)
    assert document["iqr"] == pytest.approx(np.where(high > low, high - low, 1.0), rel=1e-12)
    segments = result.customer_segments.set_index("customer_id")
    expected = nearest_centroid_oracle(document, features)
    assert segments.loc[features["customer_id"], "cluster"].tolist() == expected
    assert [set(c) >= set(SEVEN) for c in result.clustering["clusters"]] == [True] * 4
    assert result.clustering["features"] == SEVEN
    # Stored and applied again, the seven-feature model gives every customer the same cluster.
    (tmp_path / "cluster_model.json").write_text(json.dumps(document))
    again = run(RFMSettings(segmentation_method="kmeans", cluster_model_path=str(tmp_path)))
    assert (
        again.customer_segments["cluster"].tolist() == result.customer_segments["cluster"].tolist()
    )
    # On the command line, and the settings it refuses, each in one line.
    output = tmp_path / "out"
    assert main(["analyze", "--segmentation", "kmeans", "--clusters", "4", "--cluster-features",
                 ",".join(SEVEN), "--output", str(output)]) == 0  # fmt: skip
    assert "on recency, frequency, monetary, tenure_days" in capsys.readouterr().out
    stored = json.loads((output / "cluster_model.json").read_text())
    assert stored["features"] == SEVEN and stored["clusters"] == document["clusters"]
    refused = {
        "recency,frequency": "cluster_features is ['recency', 'frequency']; it must be a list",
        "recency,frequency,monetary,age": "cluster_features: 'age' is not a feature",
        "recency,frequency,monetary,monetary": "cluster_features is ['recency', 'frequency', "
        "'monetary', 'monetary']",
    }
    for given, message in refused.items():
        assert main(["analyze", "--segmentation", "kmeans", "--cluster-features", given,
                     "--output", str(tmp_path / "x")]) == 1  # fmt: skip
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error, error
    assert main(["analyze", "--cluster-features", ",".join(SEVEN), "--output",
                 str(tmp_path / "x")]) == 1  # fmt: skip
    assert "cluster_features: applies to segmentation_method kmeans or auto" in (
        capsys.readouterr().err
    )


def test_days_between_purchases_is_the_mean_gap_between_orders():
    """The engines' expression against gaps counted order by order, on customers with one
    order, with orders on one day and with uneven gaps."""
    from rfm_assets.engines.clustering import days_between_purchases

    # (order days, reference day): one order; two on one day; gaps 1, 9 and 20.
    cases = [([10], 40), ([5, 5], 12), ([0, 1, 10, 30], 31)]
    frequency = [len(days) for days, _ in cases]
    lifetime = [max(days) - min(days) + 1 for days, _ in cases]
    tenure = [reference - min(days) for days, reference in cases]
    expected = []
    for days, reference in cases:
        gaps = [b - a for a, b in zip(sorted(days), sorted(days)[1:])]
        expected.append(sum(gaps) / len(gaps) if gaps else reference - min(days))
    assert days_between_purchases(frequency, lifetime, tenure).tolist() == expected == [
        30.0, 0.0, 10.0
    ]  # fmt: skip


def test_auto_keeps_the_method_with_the_best_silhouette(tmp_path):
    """segmentation_method auto on the bundled data: the method of the best silhouette among
    the three compared, customers at the nearest of its means, and the model applies again."""
    import json

    from rfm_assets.engines import clustering

    result = run(RFMSettings(segmentation_method="auto"))
    compared = result.clustering["methods_compared"]
    assert set(compared) == set(clustering.METHODS)
    best = max(compared.values(), key=lambda scores: scores["silhouette"])["silhouette"]
    method = result.clustering["method"]
    assert compared[method]["silhouette"] == best
    assert result.cluster_model["fitted"]["method"] == method
    customers = result.customer_segments
    expected = nearest_centroid_oracle(result.cluster_model, customers)
    assert customers["cluster"].tolist() == expected
    (tmp_path / "cluster_model.json").write_text(json.dumps(result.cluster_model))
    again = run(RFMSettings(segmentation_method="kmeans", cluster_model_path=str(tmp_path)))
    assert again.clustering["method"] == method
    assert again.customer_segments["cluster"].tolist() == customers["cluster"].tolist()


@pytest.mark.parametrize("winner", ["gaussian_mixture", "agglomerative_ward"])
def test_a_winner_other_than_kmeans_is_kept_as_its_clusters_means(monkeypatch, winner):
    """Whichever method wins, its clusters' means on the sample become the centroids."""
    from rfm_assets.engines import clustering

    seen = {}
    labels_by_method = clustering._labels_by_method

    def recorded(model, scaled, sample_size, seed):
        seen["sample"], seen["labels"] = labels_by_method(model, scaled, sample_size, seed)
        return seen["sample"], seen["labels"]

    def scores(sample, labels):  # the winner scores best, the others as measured
        return {name: {"silhouette": 1.0 if name == winner else 0.0} for name in labels}

    monkeypatch.setattr(clustering, "_labels_by_method", recorded)
    monkeypatch.setattr(clustering, "_scores", scores)
    result = run(RFMSettings(segmentation_method="auto", clusters=3))
    assert result.clustering["method"] == winner
    sample, labels = seen["sample"], seen["labels"][winner]
    means = [sample[labels == c].mean(axis=0).tolist() for c in range(3)]
    stored = [c["centroid_scaled"] for c in result.cluster_model["clusters"]]
    assert np.array(stored) == pytest.approx(np.array(means), rel=1e-12)


def test_a_version_1_model_is_still_applied(groups_file, fitted_model, tmp_path):
    """Version 1 documents (R, F and M, before features were named) are read as written."""
    import json

    path, _ = groups_file
    for version in (1, 2):
        folder = tmp_path / str(version)
        folder.mkdir()
        document = {**fitted_model, "version": version}
        (folder / "cluster_model.json").write_text(json.dumps(document))
        applied = run(kmeans_settings(path, cluster_model_path=str(folder)))
        segments = applied.customer_segments
        assert segments["cluster"].tolist() == nearest_centroid_oracle(fitted_model, segments)
        assert applied.cluster_model["features"] == ["recency", "frequency", "monetary"]
