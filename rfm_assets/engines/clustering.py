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

from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

FEATURES = ("recency", "frequency", "monetary")


@dataclass
class ClusterModel:
    """A fitted clustering: how to scale features, the centroids, and what was measured."""

    median: np.ndarray
    iqr: np.ndarray
    centroids: np.ndarray  # in scaled feature space, one row per cluster
    silhouette_by_k: dict[int, float] = field(default_factory=dict)
    inertia_by_k: dict[int, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """Scaled features of raw (recency, frequency, monetary) rows."""
        return (np.log1p(np.maximum(values, 0.0)) - self.median) / self.iqr

    def assign(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cluster, distance to its centroid in scaled space) of raw feature rows."""
        scaled = self.scaled(values)
        distances = np.linalg.norm(scaled[:, None, :] - self.centroids[None, :, :], axis=2)
        cluster = distances.argmin(axis=1)
        return cluster, distances[np.arange(len(scaled)), cluster]

    def centroids_in_units(self) -> np.ndarray:
        """Centroids as (recency, frequency, monetary) in the features' own units."""
        return np.expm1(self.centroids * self.iqr + self.median)


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
    distinct = len(np.unique(scaled, axis=0))
    low, high = k_range
    high = min(high, distinct)  # k-means cannot make more clusters than distinct points
    if high < max(low, 2):
        raise ValueError(
            f"cluster_range: the customers have {distinct} distinct feature values, too few for "
            f"{low} clusters"
        )
    # k is chosen on a seeded sample of at most SEARCH_SAMPLE customers; the chosen k is then
    # fitted on everyone. Below that size the search sees every customer.
    search = scaled
    if len(scaled) > SEARCH_SAMPLE:
        search = scaled[np.sort(rng.choice(len(scaled), size=SEARCH_SAMPLE, replace=False))]
        sample = rng.choice(len(search), size=min(sample_size, len(search)), replace=False)
    best = None
    silhouettes, inertias = {}, {}
    for k in range(max(low, 2), high + 1):
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
    k, fitted = best
    if search is not scaled:
        fitted = _kmeans(k, seed, len(scaled)).fit(scaled)
    return ClusterModel(median, iqr, fitted.cluster_centers_, silhouettes, inertias)


# The choice of k looks at this many customers at most (a seeded sample).
SEARCH_SAMPLE = 100_000
# Above this many customers k-means runs in mini-batches: the same seeded k-means++ start,
# a fraction of the time, centroids within a few percent.
MINI_BATCH_ABOVE = 100_000


def _kmeans(k: int, seed: int, customers: int):
    if customers > MINI_BATCH_ABOVE:
        return MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=8192, random_state=seed)
    return KMeans(n_clusters=k, n_init=4, random_state=seed)


def quality(model: ClusterModel, values: np.ndarray, labels: np.ndarray, sample: int, seed: int):
    """Silhouette (on the seeded sample), Davies-Bouldin and Calinski-Harabasz of the labels."""
    scaled = model.scaled(values)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(scaled), size=min(sample, len(scaled)), replace=False)
    return {
        "k": model.k,
        "silhouette": float(silhouette_score(scaled[chosen], labels[chosen])),
        "davies_bouldin": float(davies_bouldin_score(scaled, labels)),
        "calinski_harabasz": float(calinski_harabasz_score(scaled, labels)),
    }


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
