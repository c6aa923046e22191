"""k-means segmentation beside the rule set: features, the choice of k, names from the catalog.

Pure numpy and scikit-learn, no Dagster. The rules (docs/contract.md, "Clustering"):
- features are log1p(recency), log1p(frequency) and log1p(monetary), or the chosen
  `cluster_features` (FEATURE_CHOICES; R, F and M always among them), each log1p-ed and
  scaled robustly: (x - median) / IQR (an IQR of 0 scales by 1);
- for every k in the range, k-means (seeded, k-means++) is fitted on the customers (a seeded
  sample of 100,000 when there are more); k is the one with the best silhouette, measured on
  a fixed-size seeded sample (ties: the smaller k); the chosen k is then fitted on everyone;
- each cluster is named by where its centroid, in original units, falls on the rule set:
  its recency, frequency and monetary are scored with the run's published cut points, and the
  (R, F, M) cell gives the segment. Clusters that land on one segment keep its catalog name
  in `segment` and get " 2", " 3"... in `cluster_name`, largest cluster first;
- `segmentation_method: auto` fits k-means, a Gaussian mixture and Ward's clustering with the
  chosen k on one seeded sample and keeps the best silhouette; a winner other than k-means
  is kept as the means of its clusters on the sample, and every customer goes to the
  nearest mean, so any model applies the same way on both engines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from rfm_assets.errors import RFMConfigError

# The features a model always has: clusters are named by their centroid's (R, F, M) cell.
FEATURES = ("recency", "frequency", "monetary")
# Every feature a model may use: the per-customer columns of rfm_metrics, and the mean days
# between orders (days_between_purchases, derived from them: see feature_values).
FEATURE_CHOICES = FEATURES + (
    "tenure_days",
    "avg_order_value",
    "purchase_frequency_per_month",
    "days_between_purchases",
)
# The features a customer-level input (recency, frequency, monetary given) cannot have.
DATED_FEATURES = ("tenure_days", "purchase_frequency_per_month", "days_between_purchases")
# The columns k-means adds to customer_segments, after the published ones.
CLUSTER_COLUMNS = ("cluster", "cluster_name", "cluster_distance")


# The stored model's format: a small JSON document (see ClusterModel.document).
MODEL_FORMAT = "rfm_assets.cluster_model"
# Version 2 names its features (any of FEATURE_CHOICES); version 1 had R, F and M only and
# is still read.
MODEL_VERSION = 2
READ_VERSIONS = (1, 2)


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
    features: tuple[str, ...] = FEATURES  # the columns of median, iqr and centroids

    @property
    def k(self) -> int:
        return len(self.centroids)

    def scaled(self, values: np.ndarray) -> np.ndarray:
        """Scaled features of raw feature rows (columns in `features`' order)."""
        return (np.log1p(np.maximum(values, 0.0)) - self.median) / self.iqr

    def assign(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cluster, distance to its centroid in scaled space) of raw feature rows: the
        nearest centroid, the lower cluster id on a tie."""
        scaled = self.scaled(values)
        distances = np.sqrt(((scaled[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2))
        cluster = distances.argmin(axis=1)
        return cluster, distances[np.arange(len(scaled)), cluster]

    def centroids_in_units(self) -> np.ndarray:
        """Centroids in the features' own units (columns in `features`' order)."""
        return np.expm1(self.centroids * self.iqr + self.median)

    def named(
        self, thresholds: dict[str, list[float]], rule_set, sizes: np.ndarray
    ) -> ClusterModel:
        """The model with its clusters named: each centroid's recency, frequency and monetary
        are scored with the run's cut points, and the (R, F, M) cell gives the segment."""
        from rfm_assets.engines.shared import HIGHER_IS_BETTER, fixed_scores

        centroids = self.centroids_in_units()
        scores = [
            fixed_scores(centroids[:, self.features.index(name)], thresholds[name],
                         HIGHER_IS_BETTER[name])
            for name in FEATURES
        ]  # fmt: skip
        segments = [rule_set.segment_of(int(r), int(f), int(m)) for r, f, m in zip(*scores)]
        return replace(self, segments=segments, names=cluster_names(segments, sizes))

    def document(self) -> dict:
        """The model as a small JSON-able document; `from_document` reads it back."""
        in_units = self.centroids_in_units()
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "features": list(self.features),
            "scaling": MODEL_SCALING,
            "median": [float(v) for v in self.median],
            "iqr": [float(v) for v in self.iqr],
            "clusters": [
                {
                    "cluster": c,
                    "name": self.names[c],
                    "segment": self.segments[c],
                    "centroid_scaled": [float(v) for v in self.centroids[c]],
                    "centroid": dict(zip(self.features, (float(v) for v in in_units[c]))),
                }
                for c in range(self.k)
            ],
            "silhouette_by_k": {str(k): v for k, v in self.silhouette_by_k.items()},
            "inertia_by_k": {str(k): v for k, v in self.inertia_by_k.items()},
            "fitted": dict(self.fitted),
        }

    @classmethod
    def from_document(cls, document: Any, source: str) -> ClusterModel:
        """The model of a stored document; anything else is one line naming `source` and the
        field (every field is checked by `checked_document`, docs/contract.md)."""
        try:
            fields = checked_document(document)
        except DamagedModel as error:
            raise RFMConfigError(f"cluster model {source}: {error}") from None
        return cls(**fields)


# --- What a stored model document may hold (docs/contract.md, "Clustering") ----------------

# A stored model is a few KB: a file larger than this is refused without being read.
MODEL_MAX_BYTES = 64 * 2**20
# k of a stored model: as many clusters as `clusters` / `cluster_range` allow.
MODEL_K = (2, 20)
MODEL_SCALING = "log1p(max(x, 0)), then (x - median) / iqr"


class DamagedModel(ValueError):
    """A field of a model document outside its domain; the message names the field."""


def _shown(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    try:
        text = repr(value)
    except ValueError:  # a whole number with more digits than Python shows
        return "a number too long to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(name: str, value: Any, rule: str) -> DamagedModel:
    return DamagedModel(f"{name} is {_shown(value)}; it must be {rule}")


def _number(
    value: Any, name: str, rule: str = "a finite number", low=None, high=None, above=None
) -> float:
    """A finite JSON number (not true/false) within the bounds, or refused naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(name, value, rule)
    try:
        number = float(value)
    except OverflowError:  # a whole number beyond any float
        raise _refuse(name, value, rule) from None
    if not math.isfinite(number) or (low is not None and number < low):
        raise _refuse(name, value, rule)
    if (high is not None and number > high) or (above is not None and number <= above):
        raise _refuse(name, value, rule)
    return number


def _whole(value: Any, name: str, rule: str, low=None, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(name, value, rule)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _refuse(name, value, rule)
    return value


def _text(value: Any, name: str) -> str:
    """Text with a letter or digit, as the rule sets' segment names are (segments.slugify)."""
    if not isinstance(value, str) or not any(c.isascii() and c.isalnum() for c in value):
        raise _refuse(name, value, "text with a letter or digit")
    return value


def _mapping(value: Any, name: str, rule: str = "a mapping") -> dict:
    if not isinstance(value, dict):
        raise _refuse(name, value, rule)
    return value


def _per_feature(features: tuple[str, ...], rule: str, **bounds):
    """The check of a list of one number per feature (in `features`' order), each checked."""

    def check(value: Any, name: str) -> np.ndarray:
        if not isinstance(value, list) or len(value) != len(features):
            raise _refuse(name, value, f"a list of {len(features)} values ({', '.join(features)})")
        return np.array([_number(v, f"{name}[{i}]", rule, **bounds) for i, v in enumerate(value)])

    return check


def feature_names(value: Any, name: str = "cluster_features") -> tuple[str, ...]:
    """A model's features: names from FEATURE_CHOICES, each once, recency, frequency and
    monetary among them (they name the clusters)."""
    rule = (f"a list of names from {', '.join(FEATURE_CHOICES)}, each once, with recency, "
            "frequency and monetary among them")  # fmt: skip
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _refuse(name, value, rule)
    unknown = [v for v in value if v not in FEATURE_CHOICES]
    if unknown:
        raise DamagedModel(f"{name}: {unknown[0]!r} is not a feature; the features: "
                           f"{', '.join(FEATURE_CHOICES)}")  # fmt: skip
    if len(set(value)) != len(value) or not set(FEATURES) <= set(value):
        raise _refuse(name, list(value), rule)
    return tuple(value)


def _by_k(value: Any, name: str, rule: str, **bounds) -> dict[int, float]:
    """silhouette_by_k / inertia_by_k: keys are k as text ("3"), values numbers."""
    low, high = MODEL_K
    result = {}
    for key, number in _mapping(value, name, "a mapping of k to a number").items():
        whole = isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 2
        if not whole or not low <= int(key) <= high:
            raise DamagedModel(
                f"{name} has the key {_shown(key)}; its keys must be whole numbers k from "
                f"{low} to {high}"
            )
        result[int(key)] = _number(number, f"{name}[{key!r}]", rule, **bounds)
    return result


def _fitted(value: Any, name: str) -> dict:
    """Where the model was fitted: a mapping of text, numbers, true/false or null."""
    fitted = _mapping(value, name, "a mapping (engine, customers, reference date, ...)")
    for key, item in fitted.items():
        where = f"{name}[{key!r}]"
        if key == "customers":
            _whole(item, where, "a whole number >= 0", low=0)
        elif key == "seed":
            _whole(item, where, "a whole number")
        elif isinstance(item, float):
            _number(item, where, "text, a finite number, true/false or null")
        elif not (item is None or isinstance(item, (str, int))):
            raise _refuse(where, item, "text, a finite number, true/false or null")
    return dict(fitted)


def _exactly(expected: Any) -> Callable[[Any, str], Any]:
    def check(value: Any, name: str) -> Any:
        if value != expected:
            raise _refuse(name, value, repr(expected))
        return value

    return check


# Every field of a model document: (required, check of its value). A field not listed is
# refused, so a misspelt optional field is not silently dropped.
def model_fields(features: tuple[str, ...]) -> dict[str, tuple[bool, Callable[[Any, str], Any]]]:
    return {
        "format": (True, _exactly(MODEL_FORMAT)),
        "version": (True, lambda v, n: v),  # checked first (checked_document)
        "features": (True, _exactly(list(features))),  # checked first, then as read
        "scaling": (False, _exactly(MODEL_SCALING)),
        "median": (True, _per_feature(features, "a finite number >= 0", low=0.0)),
        "iqr": (True, _per_feature(features, "a finite number > 0", above=0.0)),
        "clusters": (True, lambda v, n: v),  # checked entry by entry (cluster_fields)
        "silhouette_by_k": (
            False,
            lambda v, n: _by_k(v, n, "a finite number from -1 to 1", low=-1.0, high=1.0),
        ),
        "inertia_by_k": (False, lambda v, n: _by_k(v, n, "a finite number >= 0", low=0.0)),
        "fitted": (False, _fitted),
    }


# Every field of one entry of `clusters`. `centroid` (in units) is derived from
# centroid_scaled, median and iqr: when present it must agree with them (see _check_units).
def cluster_fields(features: tuple[str, ...]) -> dict[str, tuple[bool, Callable[[Any, str], Any]]]:
    return {
        "cluster": (True, lambda v, n: _whole(v, n, "a whole number (the cluster id)", low=0)),
        "name": (True, _text),
        "segment": (True, _text),
        "centroid_scaled": (True, _per_feature(features, "a finite number")),
        "centroid": (False, lambda v, n: _mapping(v, n, f"a mapping of {', '.join(features)}")),
    }


def _fields(mapping: dict, table: dict, prefix: str, version: int) -> dict[str, Any]:
    """Each field of `mapping` checked by its entry of `table`; unknown ones refused."""
    unknown = [key for key in mapping if key not in table]
    if unknown:
        raise DamagedModel(
            f"{prefix}{unknown[0]} is not a field of a version-{version} cluster model "
            f"(the fields{' of a cluster' if prefix else ''}: {', '.join(table)})"
        )
    checked = {}
    for key, (required, check) in table.items():
        if key in mapping:
            checked[key] = check(mapping[key], prefix + key)
        elif required:
            raise DamagedModel(f"{prefix}{key} is missing")
    return checked


def _check_units(entry: dict, c: int, derived: np.ndarray, features: tuple[str, ...]) -> None:
    """`centroid` in units is derived: it must be finite and, when stored, agree."""
    if not np.isfinite(derived).all():
        raise DamagedModel(
            f"clusters[{c}].centroid_scaled puts the centroid at {_shown(derived.tolist())} in "
            "units (expm1(centroid_scaled * iqr + median)); it must be finite"
        )
    stored = entry.get("centroid")
    if stored is None:
        return
    if set(stored) != set(features):
        raise _refuse(f"clusters[{c}].centroid", stored, f"a mapping of {', '.join(features)}")
    for i, feature in enumerate(features):
        name = f"clusters[{c}].centroid.{feature}"
        value = _number(stored[feature], name)
        if not np.isclose(value, derived[i], rtol=1e-9, atol=1e-9):
            raise _refuse(
                name,
                stored[feature],
                f"{derived[i]!r}, as centroid_scaled, median and iqr give (it is derived: "
                "move a centroid by its centroid_scaled)",
            )


def checked_document(document: Any) -> dict[str, Any]:
    """The arguments of ClusterModel from a stored document, every field checked against
    model_fields and cluster_fields; anything else raises DamagedModel naming the field."""
    if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
        raise DamagedModel(f'not an rfm_assets cluster model (no "format": "{MODEL_FORMAT}")')
    version = document.get("version")
    if isinstance(version, bool) or version not in READ_VERSIONS:
        raise DamagedModel(
            f"format version {_shown(version)}; this rfm_assets reads versions "
            f"{' and '.join(map(str, READ_VERSIONS))}"
        )
    features = FEATURES
    if version > 1 and "features" in document:
        features = feature_names(document["features"], "features")
    fields = _fields(document, model_fields(features), "", version)
    clusters = fields["clusters"]
    low, high = MODEL_K
    if not isinstance(clusters, list):
        raise _refuse("clusters", clusters, f"a list of {low} to {high} clusters")
    if not low <= len(clusters) <= high:
        raise DamagedModel(
            f"clusters has {len(clusters)} entries; it must have {low} to {high} (k, the number "
            "of clusters)"
        )
    entries = [
        _fields(
            _mapping(entry, f"clusters[{c}]", "a mapping"),
            cluster_fields(features),
            f"clusters[{c}].",
            version,
        )  # fmt: skip
        for c, entry in enumerate(clusters)
    ]
    k = len(entries)
    ids = [entry["cluster"] for entry in entries]
    for c, cluster in enumerate(ids):
        if cluster >= k or ids.index(cluster) != c:
            raise _refuse(
                f"clusters[{c}].cluster",
                cluster,
                f"one of 0 to {k - 1}, each id once (there are {k} clusters)",
            )
    order = sorted(range(k), key=ids.__getitem__)
    entries = [entries[c] for c in order]
    names = [entry["name"] for entry in entries]
    for c, name in enumerate(names):
        if names.index(name) != c:
            raise _refuse(f"clusters[{order[c]}].name", name, "a name no other cluster has")
    median, iqr = fields["median"], fields["iqr"]
    centroids = np.array([entry["centroid_scaled"] for entry in entries])
    with np.errstate(over="ignore", invalid="ignore"):
        derived = np.expm1(centroids * iqr + median)
    for c in range(k):
        _check_units(clusters[order[c]], order[c], derived[c], features)
    by_k = {key: fields.get(key, {}) for key in ("silhouette_by_k", "inertia_by_k")}
    for key, values in by_k.items():
        if values and k not in values:
            raise DamagedModel(
                f"{key} has no entry for k = {k} (the model's clusters); it "
                "must hold the k the model was fitted with"
            )
    return {
        "median": median,
        "iqr": iqr,
        "centroids": centroids,
        "silhouette_by_k": by_k["silhouette_by_k"],
        "inertia_by_k": by_k["inertia_by_k"],
        "names": names,
        "segments": [entry["segment"] for entry in entries],
        "fitted": fields.get("fitted", {}),
        "features": features,
    }


def feature_values(customers, features: tuple[str, ...] = FEATURES) -> np.ndarray:
    """The `features` of a customer table (rfm_scores, customer_segments) as float rows."""
    columns = []
    for name in features:
        if name == "days_between_purchases":
            columns.append(days_between_purchases(
                customers["frequency"], customers["customer_lifetime_days"],
                customers["tenure_days"]))  # fmt: skip
        else:
            columns.append(np.asarray(customers[name], dtype=np.float64))
    return np.column_stack(columns)


def days_between_purchases(frequency, lifetime_days, tenure_days) -> np.ndarray:
    """The mean days between a customer's consecutive orders: the days from the first order
    to the last over the gaps between them, (customer_lifetime_days - 1) / (frequency - 1).
    A customer with one order has no gap yet: the days since it (tenure_days), the gap so
    far. (The Spark engine's expression: spark_compute.days_between_purchases.)"""
    orders = np.asarray(frequency, dtype=np.float64)
    lifetime = np.asarray(lifetime_days, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (lifetime - 1) / (orders - 1)
    return np.where(orders > 1, between, np.asarray(tenure_days, dtype=np.float64))


def fit(values: np.ndarray, k_range: tuple[int, int], sample_size: int, seed: int,
        features: tuple[str, ...] = FEATURES) -> ClusterModel:  # fmt: skip
    """The model with the best silhouette over k in `k_range` (`assign` labels customers);
    `values` holds the `features` of each customer."""
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
    return ClusterModel(
        median, iqr, fitted.cluster_centers_, silhouettes, inertias, features=tuple(features)
    )


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
    from sklearn.metrics import silhouette_score

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
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if customers > MINI_BATCH_ABOVE:
        return MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=8192, random_state=seed)
    return KMeans(n_clusters=k, n_init=4, random_state=seed)


def silhouette_of_sample(model: ClusterModel, values: np.ndarray, labels: np.ndarray, seed: int,
                         sample: int) -> float:  # fmt: skip
    """The silhouette of the labels on a seeded sample of at most `sample` customers."""
    from sklearn.metrics import silhouette_score

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


def scores_from_sums(sums: ClusterSums) -> dict[str, Optional[float]]:
    """Davies-Bouldin and Calinski-Harabasz as scikit-learn defines them, over the clusters
    that hold customers; None for both when one cluster holds them all (a stored model
    applied to customers who are all nearest one centroid), as both compare clusters with
    each other."""
    held = sums.counts > 0
    counts, means, spread = sums.counts[held], sums.means[held], sums.mean_distance[held]
    k, n = len(counts), int(counts.sum())
    if k < 2:
        return {"davies_bouldin": None, "calinski_harabasz": None}
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
        "method": model.fitted.get("method", "kmeans"),
        "features": list(model.features),
        "model": "applied" if applied else "fitted",
        "fitted": dict(model.fitted),
        "silhouette": round(silhouette, 6),
        **{
            name: None if value is None else round(value, 6)
            for name, value in scores_from_sums(sums).items()
        },
        "silhouette_by_k": {str(k): round(v, 6) for k, v in model.silhouette_by_k.items()},
        "inertia_by_k": {str(k): round(v, 3) for k, v in model.inertia_by_k.items()},
        "methods_compared": methods_compared,
        "clusters": [
            {
                "cluster": c,
                "name": model.names[c],
                "segment": model.segments[c],
                "customers": int(sums.counts[c]),
                **{
                    name: round(
                        float(in_units[c, model.features.index(name)]),
                        2 if name in ("monetary", "avg_order_value") else 3,
                    )
                    for name in model.features
                },
            }  # fmt: skip
            for c in range(model.k)
        ],
    }


def check_segments(model: ClusterModel, rule_set, source: str) -> None:
    """A stored model names segments of the rule set in use, or it is refused."""
    known = {entry.name for entry in rule_set.segments}
    unknown = sorted(set(model.segments) - known)
    if unknown:
        raise RFMConfigError(
            f"cluster model {source}: names segments {unknown} that the rule set "
            f"{rule_set.name!r} does not have; fit a new model or use the rule set it was "
            "fitted with"
        )


# The methods `segmentation_method: auto` chooses among, in the order that breaks a tie.
METHODS = ("kmeans", "gaussian_mixture", "agglomerative_ward")
# Each method's name where people read it (the command line's printout, the report).
METHOD_NAMES = {
    "kmeans": "k-means",
    "gaussian_mixture": "Gaussian mixture",
    "agglomerative_ward": "Ward's clustering",
}


def _labels_by_method(model: ClusterModel, scaled: np.ndarray, sample_size: int, seed: int):
    """(one seeded sample of the `scaled` features, {method: its labels of the sample}) for
    k-means, a Gaussian mixture and agglomerative (Ward) clustering with the model's k."""
    # scikit-learn is imported where it is used: settings check features with this module.
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(seed)
    sample = scaled[rng.choice(len(scaled), size=min(sample_size, len(scaled)), replace=False)]
    methods = {
        "kmeans": lambda: KMeans(n_clusters=model.k, n_init=4, random_state=seed),
        "gaussian_mixture": lambda: GaussianMixture(model.k, random_state=seed),
        "agglomerative_ward": lambda: AgglomerativeClustering(n_clusters=model.k),
    }
    return sample, {name: make().fit_predict(sample) for name, make in methods.items()}


def _scores(sample: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    scores = {}
    for name, assigned in labels.items():
        if len(np.unique(assigned)) < 2:
            continue
        scores[name] = {
            "silhouette": round(float(silhouette_score(sample, assigned)), 6),
            "davies_bouldin": round(float(davies_bouldin_score(sample, assigned)), 6),
            "calinski_harabasz": round(float(calinski_harabasz_score(sample, assigned)), 3),
        }
    return scores


def compare_methods(
    model: ClusterModel, values: np.ndarray, sample_size: int, seed: int
) -> dict[str, dict[str, float]]:
    """k-means against a Gaussian mixture and agglomerative (Ward) clustering with the same k,
    each fitted and scored on one seeded sample of the scaled features, so the scores stand
    side by side."""
    return _scores(*_labels_by_method(model, model.scaled(values), sample_size, seed))


def best_method(model: ClusterModel, scaled: np.ndarray, sample_size: int, seed: int):
    """`segmentation_method: auto`: (the model of the method with the best silhouette in the
    comparison, the comparison), on customers' `scaled` features (ClusterModel.scaled).
    Ties go to the earlier of METHODS. A Gaussian mixture or
    Ward winner is kept as the means of its clusters on the sample (the scaled features), to
    which every customer then goes by nearest mean, as to k-means centroids; its
    `fitted["method"]` names it, and `fitted["method_choice"]` says it was chosen so."""
    sample, labels = _labels_by_method(model, scaled, sample_size, seed)
    compared = _scores(sample, labels)
    # A method that left a cluster of the k without customers (a mixture may) is not chosen.
    whole = [name for name in compared if len(np.unique(labels[name])) == model.k]
    best = max(whole, key=lambda name: (compared[name]["silhouette"], -METHODS.index(name)),
               default="kmeans")  # fmt: skip
    fitted = {**model.fitted, "method": best, "method_choice": "best silhouette of three"}
    if best == "kmeans":
        return replace(model, fitted=fitted), compared
    means = np.array([sample[labels[best] == c].mean(axis=0) for c in range(model.k)])
    return replace(model, centroids=means, fitted=fitted), compared


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
