"""k-means segmentation beside the rule grid: features, the choice of k, names from the catalog.

Pure numpy and scikit-learn, no Dagster. The rules (docs/contract.md, "Clustering"):
- features are log1p(recency), log1p(frequency) and log1p(monetary), each scaled robustly:
  (x - median) / IQR (an IQR of 0 scales by 1);
- for every k in the range, k-means (seeded, k-means++) is fitted on the customers (a seeded
  sample of 100,000 when there are more); k is the one with the best silhouette, measured on
  a fixed-size seeded sample (ties: the smaller k); the chosen k is then fitted on everyone;
- each cluster is named by where its centroid, in original units, falls on the rule set:
  its recency, frequency and monetary are scored with the run's published cut points, and the
  (R, F, M) cell gives the segment. Clusters that land on one segment keep its catalog name
  in `segment` and get " 2", " 3"... in `cluster_name`, largest cluster first.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from rfm_assets.errors import RFMConfigError

FEATURES = ("recency", "frequency", "monetary")
# The columns k-means adds to customer_segments, after the published ones.
CLUSTER_COLUMNS = ("cluster", "cluster_name", "cluster_distance")


# The stored model's format: a small JSON document (see ClusterModel.document).
MODEL_FORMAT = "rfm_assets.cluster_model"
MODEL_VERSION = 1


@dataclass
class ClusterModel:
    """A fitted clustering: how to scale features, the centroids, their names, what was
    measured when it was fitted, and where it was fitted (`fitted`: engine, customers, ...)."""

    median: np.ndarray
    iqr: np.ndarray
    centroids: np.ndarray  # in scaled feature space, one row per cluster
    silhouette_by_k: dict[int, float] = field(default_factory=dict)
    inertia_by_k: dict[int, float] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # cluster_name of each cluster
    segments: list[str] = field(default_factory=list)  # catalog segment of each cluster
    fitted: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """Scaled features of raw (recency, frequency, monetary) rows."""
        return (np.log1p(np.maximum(values, 0.0)) - self.median) / self.iqr

    def assign(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cluster, distance to its centroid in scaled space) of raw feature rows: the
        nearest centroid, the lower cluster id on a tie."""
        scaled = self.scaled(values)
        distances = np.sqrt(((scaled[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2))
        cluster = distances.argmin(axis=1)
        return cluster, distances[np.arange(len(scaled)), cluster]

    def centroids_in_units(self) -> np.ndarray:
        """Centroids as (recency, frequency, monetary) in the features' own units."""
        return np.expm1(self.centroids * self.iqr + self.median)

    def named(self, thresholds: dict[str, list[float]], grid, sizes: np.ndarray) -> ClusterModel:
        """The model with its clusters named: each centroid's recency, frequency and monetary
        are scored with the run's cut points, and the (R, F, M) cell gives the segment."""
        from rfm_assets.engines.pandas_compute import fixed_scores
        from rfm_assets.engines.shared import HIGHER_IS_BETTER

        centroids = self.centroids_in_units()
        scores = [
            fixed_scores(centroids[:, i], thresholds[name], HIGHER_IS_BETTER[name])
            for i, name in enumerate(FEATURES)
        ]
        segments = [grid.segment_of(int(r), int(f), int(m)) for r, f, m in zip(*scores)]
        return replace(self, segments=segments, names=cluster_names(segments, sizes))

    def document(self) -> dict:
        """The model as a small JSON-able document; `from_document` reads it back."""
        in_units = self.centroids_in_units()
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "features": list(FEATURES),
            "scaling": "log1p(max(x, 0)), then (x - median) / iqr",
            "median": [float(v) for v in self.median],
            "iqr": [float(v) for v in self.iqr],
            "clusters": [
                {
                    "cluster": c,
                    "name": self.names[c],
                    "segment": self.segments[c],
                    "centroid_scaled": [float(v) for v in self.centroids[c]],
                    "centroid": dict(zip(FEATURES, (float(v) for v in in_units[c]))),
                }
                for c in range(self.k)
            ],
            "silhouette_by_k": {str(k): v for k, v in self.silhouette_by_k.items()},
            "inertia_by_k": {str(k): v for k, v in self.inertia_by_k.items()},
            "fitted": dict(self.fitted),
        }

    @classmethod
    def from_document(cls, document: Any, source: str) -> ClusterModel:
        """The model of a stored document; anything else is one line naming `source`."""

        def refuse(problem: str) -> RFMConfigError:
            return RFMConfigError(f"cluster model {source}: {problem}")

        if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
            raise refuse(f'not an rfm_assets cluster model (no "format": "{MODEL_FORMAT}")')
        if document.get("version") != MODEL_VERSION:
            raise refuse(
                f"format version {document.get('version')!r}; this rfm_assets reads version "
                f"{MODEL_VERSION}"
            )
        if document.get("features") != list(FEATURES):
            raise refuse(f"features {document.get('features')!r}, expected {list(FEATURES)}")
        try:
            clusters = sorted(document["clusters"], key=lambda c: c["cluster"])
            centroids = np.array([c["centroid_scaled"] for c in clusters], dtype=np.float64)
            median = np.array(document["median"], dtype=np.float64)
            iqr = np.array(document["iqr"], dtype=np.float64)
            names = [str(c["name"]) for c in clusters]
            segments = [str(c["segment"]) for c in clusters]
        except (KeyError, TypeError, ValueError) as error:
            raise refuse(f"damaged ({type(error).__name__}: {error})") from None
        shapes_fit = centroids.ndim == 2 and centroids.shape[1] == 3 and median.shape == (3,)
        if not shapes_fit or iqr.shape != (3,) or len(centroids) < 2:
            raise refuse("damaged (it needs 3 medians, 3 IQRs and 2 or more 3-value centroids)")
        if [c["cluster"] for c in clusters] != list(range(len(clusters))):
            raise refuse("damaged (cluster ids must be 0, 1, ... without gaps)")
        if not (np.isfinite(centroids).all() and np.isfinite(median).all()) or (iqr <= 0).any():
            raise refuse("damaged (a centroid, median or IQR is not a finite number)")
        return cls(
            median,
            iqr,
            centroids,
            {int(k): float(v) for k, v in document.get("silhouette_by_k", {}).items()},
            {int(k): float(v) for k, v in document.get("inertia_by_k", {}).items()},
            names,
            segments,
            dict(document.get("fitted", {})),
        )


def feature_matrix(recency, frequency, monetary) -> np.ndarray:
    return np.column_stack(
        [np.asarray(v, dtype=np.float64) for v in (recency, frequency, monetary)]
    )


def fit(values: np.ndarray, k_range: tuple[int, int], sample_size: int, seed: int) -> ClusterModel:
    """The model with the best silhouette over k in `k_range` (`assign` labels customers)."""
    logged = np.log1p(np.maximum(values, 0.0))
    median = np.median(logged, axis=0)
    iqr = np.subtract(*np.percentile(logged, [75, 25], axis=0))
    iqr = np.where(iqr > 0, iqr, 1.0)
    scaled = (logged - median) / iqr
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(scaled), size=min(sample_size, len(scaled)), replace=False)
    highest = largest_k(k_range, len(np.unique(scaled, axis=0)))
    # k is chosen on a seeded sample of at most SEARCH_SAMPLE customers; the chosen k is then
    # fitted on everyone. Below that size the search sees every customer.
    search = scaled
    if len(scaled) > SEARCH_SAMPLE:
        search = scaled[np.sort(rng.choice(len(scaled), size=SEARCH_SAMPLE, replace=False))]
        sample = rng.choice(len(search), size=min(sample_size, len(search)), replace=False)
    k, silhouettes, inertias, fitted = search_k(search, sample, k_range[0], highest, seed)
    if search is not scaled:
        fitted = _kmeans(k, seed, len(scaled)).fit(scaled)
    return ClusterModel(median, iqr, fitted.cluster_centers_, silhouettes, inertias)


def largest_k(k_range: tuple[int, int], distinct: int) -> int:
    """The largest k to try: k-means cannot make more clusters than distinct points."""
    low, high = k_range
    if min(high, distinct) < max(low, 2):
        raise ValueError(
            f"cluster_range: the customers have {distinct} distinct feature values, too few for "
            f"{low} clusters"
        )
    return min(high, distinct)


def search_k(search: np.ndarray, sample: np.ndarray, lowest: int, highest: int, seed: int):
    """The selection rule, on scaled features of at most SEARCH_SAMPLE customers: k-means for
    each k, the silhouette of its labels on the rows `sample`; the best silhouette wins (ties:
    the smaller k). Returns (k, silhouette by k, inertia by k, the chosen k's fit)."""
    best = None
    silhouettes, inertias = {}, {}
    for k in range(max(lowest, 2), highest + 1):
        fitted = _kmeans(k, seed, len(search)).fit(search)
        labels = fitted.labels_
        inertias[k] = float(fitted.inertia_)
        sampled = labels[sample]
        if len(np.unique(sampled)) < 2:
            silhouettes[k] = -1.0
        else:
            silhouettes[k] = float(silhouette_score(search[sample], sampled))
        if best is None or silhouettes[k] > silhouettes[best[0]]:
            best = (k, fitted)
    return best[0], silhouettes, inertias, best[1]


# The choice of k looks at this many customers at most (a seeded sample).
SEARCH_SAMPLE = 100_000
# Above this many customers k-means runs in mini-batches: the same seeded k-means++ start,
# a fraction of the time, centroids within a few percent.
MINI_BATCH_ABOVE = 100_000


def _kmeans(k: int, seed: int, customers: int):
    if customers > MINI_BATCH_ABOVE:
        return MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=8192, random_state=seed)
    return KMeans(n_clusters=k, n_init=4, random_state=seed)


def silhouette_of_sample(model: ClusterModel, values: np.ndarray, labels: np.ndarray, seed: int,
                         sample: int) -> float:  # fmt: skip
    """The silhouette of the labels on a seeded sample of at most `sample` customers."""
    scaled = model.scaled(values)
    chosen = np.random.default_rng(seed).choice(
        len(scaled), size=min(sample, len(scaled)), replace=False
    )
    if len(np.unique(labels[chosen])) < 2:
        return -1.0
    return float(silhouette_score(scaled[chosen], labels[chosen]))


@dataclass
class ClusterSums:
    """Per-cluster sums over every customer, from which Davies-Bouldin and Calinski-Harabasz
    follow (both engines compute them in one or two passes; no engine holds all the rows)."""

    counts: np.ndarray  # customers per cluster
    means: np.ndarray  # mean scaled features of each cluster's customers
    mean_distance: np.ndarray  # mean distance of each cluster's customers to that mean
    within_squares: float  # sum over customers of the squared distance to their cluster mean


def cluster_sums(scaled: np.ndarray, labels: np.ndarray, k: int) -> ClusterSums:
    counts = np.bincount(labels, minlength=k)
    means = (
        np.column_stack(
            [np.bincount(labels, scaled[:, j], minlength=k) for j in range(scaled.shape[1])]
        )
        / np.maximum(counts, 1)[:, None]
    )
    distance = np.sqrt(((scaled - means[labels]) ** 2).sum(axis=1))
    mean_distance = np.bincount(labels, distance, minlength=k) / np.maximum(counts, 1)
    return ClusterSums(counts, means, mean_distance, float((distance**2).sum()))


def scores_from_sums(sums: ClusterSums) -> dict[str, float]:
    """Davies-Bouldin and Calinski-Harabasz as scikit-learn defines them, over the clusters
    that hold customers."""
    held = sums.counts > 0
    counts, means, spread = sums.counts[held], sums.means[held], sums.mean_distance[held]
    k, n = len(counts), int(counts.sum())
    between = np.sqrt(((means[:, None, :] - means[None, :, :]) ** 2).sum(axis=2))
    if np.allclose(spread, 0) or np.allclose(between, 0):
        davies_bouldin = 0.0
    else:
        between[between == 0] = np.inf
        davies_bouldin = float(np.mean(np.max((spread[:, None] + spread[None, :]) / between, 1)))
    overall = (counts[:, None] * means).sum(axis=0) / n
    dispersion = float((counts * ((means - overall) ** 2).sum(axis=1)).sum())
    calinski = (
        1.0 if sums.within_squares == 0 else dispersion * (n - k) / (sums.within_squares * (k - 1))
    )
    return {"davies_bouldin": davies_bouldin, "calinski_harabasz": float(calinski)}


def summary(model: ClusterModel, silhouette: float, sums: ClusterSums, applied: bool,
            methods_compared: dict) -> dict:  # fmt: skip
    """What the clustering measured, as the metadata and run_summary.json carry it."""
    in_units = model.centroids_in_units()
    return {
        "k": model.k,
        "model": "applied" if applied else "fitted",
        "fitted": dict(model.fitted),
        "silhouette": round(silhouette, 6),
        **{name: round(value, 6) for name, value in scores_from_sums(sums).items()},
        "silhouette_by_k": {str(k): round(v, 6) for k, v in model.silhouette_by_k.items()},
        "inertia_by_k": {str(k): round(v, 3) for k, v in model.inertia_by_k.items()},
        "methods_compared": methods_compared,
        "clusters": [
            {
                "cluster": c,
                "name": model.names[c],
                "segment": model.segments[c],
                "customers": int(sums.counts[c]),
                "recency": round(float(in_units[c, 0]), 3),
                "frequency": round(float(in_units[c, 1]), 3),
                "monetary": round(float(in_units[c, 2]), 2),
            }
            for c in range(model.k)
        ],
    }


def check_segments(model: ClusterModel, grid, source: str) -> None:
    """A stored model names segments of the rule set in use, or it is refused."""
    known = {entry.name for entry in grid.segments}
    unknown = sorted(set(model.segments) - known)
    if unknown:
        raise RFMConfigError(
            f"cluster model {source}: names segments {unknown} that the rule set "
            f"{grid.name!r} does not have; fit a new model or use the rule set it was fitted with"
        )


def compare_methods(
    model: ClusterModel, values: np.ndarray, sample_size: int, seed: int
) -> dict[str, dict[str, float]]:
    """k-means against a Gaussian mixture and agglomerative (Ward) clustering with the same k,
    each fitted and scored on one seeded sample of the scaled features, so the scores stand
    side by side."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.mixture import GaussianMixture

    scaled = model.scaled(values)
    rng = np.random.default_rng(seed)
    sample = scaled[rng.choice(len(scaled), size=min(sample_size, len(scaled)), replace=False)]
    methods = {
        "kmeans": lambda: KMeans(n_clusters=model.k, n_init=4, random_state=seed),
        "gaussian_mixture": lambda: GaussianMixture(model.k, random_state=seed),
        "agglomerative_ward": lambda: AgglomerativeClustering(n_clusters=model.k),
    }
    scores = {}
    for name, make in methods.items():
        labels = make().fit_predict(sample)
        if len(np.unique(labels)) < 2:
            continue
        scores[name] = {
            "silhouette": round(float(silhouette_score(sample, labels)), 6),
            "davies_bouldin": round(float(davies_bouldin_score(sample, labels)), 6),
            "calinski_harabasz": round(float(calinski_harabasz_score(sample, labels)), 3),
        }
    return scores


def cluster_names(segment_of_centroid: list[str], sizes: np.ndarray) -> list[str]:
    """Names of the clusters: the segment, with " 2", " 3"... for later clusters of one
    segment, the largest cluster first (then the lower id)."""
    order = sorted(range(len(sizes)), key=lambda c: (-int(sizes[c]), c))
    seen: dict[str, int] = {}
    names = [""] * len(sizes)
    for cluster in order:
        segment = segment_of_centroid[cluster]
        seen[segment] = seen.get(segment, 0) + 1
        names[cluster] = segment if seen[segment] == 1 else f"{segment} {seen[segment]}"
    return names
