"""The report people share: one self-contained HTML page (pictures embedded, no network).

`report_html` takes what a run produced (its summary, the analytics table, the small
aggregates behind the pictures and, when there was an earlier week, the migration table) and
is used by `rfm-assets report` and by the `rfm_report` asset alike.

Every value reaches the page as text: markup is only assembled by `markup`, from this
module's own templates, and it escapes each value it is given unless that value is `Html`
this module made. A real number is formatted (`_number`, `_share`); anything else where a
number belongs (text in an edited run_summary.json, say) is shown as escaped text. So a
segment name, a setting or a hand-edited file is shown as what it says, never run as markup.
What a picture is drawn from must be numbers: text there is refused in one line that names
the table or file and the field.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from rfm_assets import pictures
from rfm_assets.engines.clustering import METHOD_NAMES
from rfm_assets.engines.clv import segment_value_table
from rfm_assets.engines.shared import movement_counts, moves_between_segments
from rfm_assets.errors import RFMError
from rfm_assets.segments import default_catalog

STYLE = """
body{font-family:Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top}th{background:#f3f3f3;text-align:left}td.n{text-align:right;
white-space:nowrap}.muted{color:#666}ul.actions{margin:0;padding-left:1.1em}
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RFM segment report {reference}</title>
<style>{style}</style></head><body>
<h1>RFM segment report</h1>
<p class="muted">Reference date {reference} · generated {generated} UTC</p>
<h2>Run</h2>{run}
<h2>Segments</h2>{segments}
<h2>Pictures</h2>{shown}
{clusters}{lifetime}<h2>Movement since the previous week</h2>{movement}
<h2>Score thresholds used</h2>{thresholds}
<p class="muted">Made by rfm_assets. Scores are 1 (worst) to {scale} (best); the rules
are in the project's docs/contract.md.</p>
</body></html>
"""


@dataclass
class ReportInputs:
    """What a report shows; every table is small (segments, a score grid, histograms)."""

    analytics: pd.DataFrame
    score_grid: pd.DataFrame
    histograms: dict
    scale: int
    summary: dict = field(default_factory=dict)
    migration: Optional[pd.DataFrame] = None
    previous: Optional[str] = None  # what the migration compares with
    slipping: Optional[int] = None  # customers in slipping_customers
    clustering: Optional[dict] = None  # what k-means measured (segmentation_method kmeans)
    cluster_sample: Optional[pd.DataFrame] = None  # customers drawn in the clusters picture
    # Why the page draws no pictures (a week of a range run that drew its last week's only).
    pictures_left_out: Optional[str] = None
    # What customer_lifetime_value's context holds (clv: true): fit, value by segment, holdout.
    lifetime_value: Optional[dict] = None


# --- values to page text: the only ways onto the page ------------------------------------------


class Html(str):
    """Markup this module made (`markup`, `_number`, `_share`, `_image`); every other value
    meets the page through `escape`."""


def escape(value) -> Html:
    """Any value as text, safe in an element and in a quoted attribute alike."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def markup(template: str, *values, **named) -> Html:
    """One of this module's templates with every value escaped (unless it is `Html`).
    Templates take plain `{}` fields: numbers are formatted by `_number` first."""
    return Html(template.format(*map(escape, values), **{k: escape(v) for k, v in named.items()}))


def _join(separator: str, parts: Iterable) -> Html:
    return Html(escape(separator).join(escape(part) for part in parts))


def is_number(value) -> bool:
    """A real number: not a bool, and not text that looks like one."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _finite(value) -> bool:
    try:
        return is_number(value) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _formatted(value, spec: str) -> Html:
    """A real number in `spec`, '–' when missing; anything else is shown as escaped text."""
    if value is None or value is pd.NA or value is pd.NaT:
        return Html("–")
    if not is_number(value):
        return escape(value)
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return Html("–")
    return Html(format(value, spec))


def _number(value, digits: int = 0) -> Html:
    return _formatted(value, f",.{digits}f")


def _share(value) -> Html:
    return _formatted(value, ".1%")


def _image(png: bytes, title: str) -> Html:
    return markup("<p>{}</p>", Html(pictures.html_image(png, title)))  # it escapes the title


def _get(mapping, key: str):
    """`mapping[key]` of a JSON object, None when it is missing or `mapping` is no object."""
    return mapping.get(key) if isinstance(mapping, dict) else None


def _row(cells: list, numeric: set[int] = frozenset()) -> Html:
    """A table row: each cell escaped unless it is `Html`; the `numeric` ones right-aligned."""
    tds = (
        markup('<td class="n">{}</td>' if i in numeric else "<td>{}</td>", cell)
        for i, cell in enumerate(cells)
    )
    return markup("<tr>{}</tr>", _join("", tds))


def _head(names: list[str]) -> Html:
    return markup("<tr>{}</tr>", _join("", (markup("<th>{}</th>", n) for n in names)))


def _table(names: list[str], rows: Iterable[Html]) -> Html:
    return markup("<table>{}{}</table>", _head(names) if names else "", _join("", rows))


def require_numbers(frame: pd.DataFrame, columns: Iterable[str], table: str, drawn: str) -> None:
    """Refuse, in one line naming the table and column, what a picture cannot be drawn from."""
    for column in columns:
        values = frame[column] if column in frame else None
        types = pd.api.types
        if values is None or not types.is_numeric_dtype(values) or types.is_bool_dtype(values):
            found = "missing" if values is None else f"{values.dtype}, not numbers"
            raise RFMError(f"{table}: column {column} is {found}; the report draws {drawn} from it")


# --- the sections ------------------------------------------------------------------------------


def _counted(label: str, counts) -> list[Html]:
    """A row per reason that counts something; a value that is no JSON object is one row."""
    if isinstance(counts, dict):
        return [
            _row([markup("{}: {}", label, reason), _number(n)], {1})
            for reason, n in counts.items()
            if n
        ]
    return [_row([label, _number(counts)], {1})] if counts else []


def summary_section(summary: dict) -> Html:
    if not summary:
        return Html('<p class="muted">No run summary was found beside the tables.</p>')
    if not isinstance(summary, dict):
        return markup("<p>{}</p>", summary)
    weights = summary.get("weights")
    facts = [
        ("input", summary.get("input")),
        ("input level", summary.get("input_level", "transactions")),
        ("engine", summary.get("engine")),
        ("reference date", summary.get("reference_date")),
        ("window starts", summary.get("window_start") or "all history"),
        *(
            # A week of a weekly history: its rows are this week's, its customers the window's.
            [("window's weeks", _join(" to ", summary["window_weeks"]))]
            if isinstance(summary.get("window_weeks"), list)
            else []
        ),
        ("scoring", markup("{} ({}-point)", summary.get("scoring_method"), summary.get("scale"))),
        (
            "weights R/F/M",
            _join("/", (_number(w, 2) for w in weights.values()))
            if isinstance(weights, dict)
            else _number(weights, 2),
        ),
        ("customers", _number(summary.get("customers"))),
    ]
    accounting = [
        _row(["rows read", _number(summary.get("rows_read"))], {1}),
        _row(["rows kept", _number(summary.get("rows_kept"))], {1}),
        *_counted("excluded", summary.get("rows_excluded")),
        # Rows the weeks before kept that the window's own rules leave out (net policy).
        *_counted("excluded from the window", summary.get("window_rows_excluded")),
        *_counted("customers held out", summary.get("customers_held_out")),
    ]
    return markup(
        "{}<h3>Every row accounted for</h3>{}",
        _table([], (_row([name, value]) for name, value in facts)),
        _table(["", "count"], accounting),
    )


def segment_section(analytics: pd.DataFrame) -> Html:
    catalog = {entry.segment_id: entry for entry in default_catalog().values()}
    rows = []
    for row in analytics.itertuples(index=False):
        entry = catalog.get(str(row.segment_id))
        actions = (markup("<li>{}</li>", a) for a in (entry.example_actions if entry else ()))
        rows.append(
            _row(
                [
                    row.segment,
                    _number(row.customers),
                    _share(row.customer_share),
                    _number(row.revenue, 2),
                    _share(row.revenue_share),
                    _number(row.avg_recency, 1),
                    _number(row.avg_frequency, 2),
                    _number(row.avg_monetary, 2),
                    # the catalog's where the table has none (include_recommendations false)
                    getattr(row, "recommendation", entry.recommendation if entry else ""),
                    markup('<ul class="actions">{}</ul>', _join("", actions)),
                ],
                {1, 2, 3, 4, 5, 6, 7},
            )
        )
    names = ["segment", "customers", "share", "revenue", "revenue share", "avg recency (days)",
             "avg orders", "avg monetary", "recommendation", "example actions"]  # fmt: skip
    return _table(names, rows)


def movement_section(inputs: ReportInputs) -> Html:
    migration = inputs.migration
    if migration is None or migration.empty:
        return Html('<p class="muted">No previous week to compare with.</p>')
    moved = moves_between_segments(migration)
    counts = movement_counts(migration)
    slipped = (
        markup(
            "; {} slipped from an engaged segment into a win-back one.", _number(inputs.slipping)
        )
        if inputs.slipping is not None
        else "."
    )
    facts = markup(
        "<p>Compared with {}: {} customers changed segment, {} are new and {} are gone{}</p>",
        inputs.previous or "the previous result",
        _number(counts["customers_moved"]),
        _number(counts["customers_new"]),
        _number(counts["customers_lapsed"]),
        slipped,
    )
    top = moved.sort_values("customers", ascending=False).head(12)
    rows = (
        _row([r.from_segment, r.to_segment, _number(r.customers), _number(r.revenue, 2)], {2, 3})
        for r in top.itertuples(index=False)
    )
    order = list(inputs.analytics["segment"].astype(str))
    picture = Html("")
    if inputs.pictures_left_out is None:
        picture = _image(pictures.migration_heatmap(migration, order), "movement")
    return markup("{}{}{}", facts, _table(["from", "to", "customers", "revenue"], rows), picture)


def _records(value) -> list[dict]:
    """The JSON objects of a list; anything else in it is a record that shows its text."""
    items = [] if value is None else value if isinstance(value, list) else [value]
    return [item if isinstance(item, dict) else {"name": item} for item in items]


def _is_curve(value) -> bool:
    """{k: number} as the clustering stores silhouette_by_k and inertia_by_k."""
    if not isinstance(value, dict) or not value:
        return False
    try:
        return all(int(k) == float(k) and _finite(v) for k, v in value.items())
    except (TypeError, ValueError, OverflowError):
        return False


def cluster_picture_input(clustering: dict) -> dict:
    """What the clusters picture is drawn from, refused in one line naming the field when it
    is not numbers."""
    clusters = clustering.get("clusters")
    problems = {
        "k": _finite(clustering.get("k")),
        "clusters": isinstance(clusters, list)
        and bool(clusters)
        and all(
            isinstance(c, dict)
            and isinstance(c.get("name"), str)
            and _finite(c.get("cluster"))
            and _finite(c.get("customers"))
            for c in clusters
        ),
        "silhouette_by_k": _is_curve(clustering.get("silhouette_by_k")),
        "inertia_by_k": not clustering.get("inertia_by_k")
        or _is_curve(clustering.get("inertia_by_k")),
    }
    for name, fine in problems.items():
        if not fine:
            raise RFMError(
                f"run summary (run_summary.json): clustering.{name} is not the numbers the "
                "clusters picture is drawn from"
            )
    return clustering


def clustering_section(inputs: ReportInputs) -> Html:
    """k-means: the model's quality, its clusters, the methods compared and the picture."""
    clustering = inputs.clustering
    if not isinstance(clustering, dict):
        return markup("<p>{}</p>", clustering)
    fitted = clustering.get("fitted")
    how = (
        markup("fitted now on {} customers", _number(_get(fitted, "customers")))
        if clustering.get("model") == "fitted"
        else markup(
            "a stored model applied (fitted on {} customers, reference date {}, {})",
            _number(_get(fitted, "customers")),
            _get(fitted, "reference_date"),
            _get(fitted, "engine"),
        )
    )
    method = str(clustering.get("method"))
    chosen = METHOD_NAMES.get(method, "k-means")
    if method == "gaussian_mixture":
        chosen = "a " + chosen
    if isinstance(fitted, dict) and fitted.get("method_choice"):
        chosen += ", the best silhouette of the methods compared below"
    features = clustering.get("features")
    if isinstance(features, list) and len(features) > 3:
        chosen += ", on " + ", ".join(map(str, features))
    facts = markup(
        "<p>k = {}, {}; {}. Silhouette {} (higher is better, at most 1), Davies-Bouldin {} "
        "(lower is better), Calinski-Harabasz {} (higher is better).</p>",
        _number(clustering.get("k")),
        how,
        chosen,
        _number(clustering.get("silhouette"), 3),
        _number(clustering.get("davies_bouldin"), 3),
        _number(clustering.get("calinski_harabasz"), 1),
    )
    rows = (
        _row(
            [
                c.get("name"),
                c.get("segment"),
                _number(c.get("customers")),
                _number(c.get("recency"), 1),
                _number(c.get("frequency"), 2),
                _number(c.get("monetary"), 2),
            ],
            {2, 3, 4, 5},
        )
        for c in _records(clustering.get("clusters"))
    )
    names = ["cluster", "segment", "customers", "centroid recency (days)", "centroid orders",
             "centroid monetary"]  # fmt: skip
    clusters = _table(names, rows)
    compared = clustering.get("methods_compared") or {}
    # A value that is no JSON object is one row that shows its text.
    compared = compared.items() if isinstance(compared, dict) else [(compared, None)]
    comparison = Html("")
    if compared:
        lines = (
            _row(
                [
                    str(name).replace("_", " "),
                    _number(_get(m, "silhouette"), 3),
                    _number(_get(m, "davies_bouldin"), 3),
                    _number(_get(m, "calinski_harabasz"), 1),
                ],
                {1, 2, 3},
            )
            for name, m in compared
        )
        comparison = markup(
            "<h3>Methods compared on one seeded sample, same features and k</h3>{}"
            '<p class="muted">k-means is the default method: it assigns new customers to stored '
            "centroids without refitting (rfm-assets predict), and it scales to millions of "
            "customers, where Ward's memory grows with the square of the customers. Compare the "
            "scores above on your data.</p>",
            _table(["method", "silhouette", "Davies-Bouldin", "Calinski-Harabasz"], lines),
        )
    picture = Html("")
    if (
        inputs.pictures_left_out is None
        and inputs.cluster_sample is not None
        and len(inputs.cluster_sample)
    ):
        png = pictures.clusters(inputs.cluster_sample, cluster_picture_input(clustering))
        picture = _image(png, "k-means clusters")
    return markup("{}{}{}{}", facts, clusters, comparison, picture)


def lifetime_section(inputs: ReportInputs) -> Html:
    """clv: the models' fit, the predicted value per segment and the holdout check."""
    lifetime = inputs.lifetime_value
    if not _get(lifetime, "fitted"):
        return markup(
            "<p>Not fitted, so the predictions are null: {}</p>", _get(lifetime, "refused")
        )
    horizon = _get(lifetime, "horizon_days")
    parameters = _get(lifetime, "parameters") or {}
    facts = markup(
        "<p>Predicted over the next {} days{}, by BG/NBD (purchases) and Gamma-Gamma (spend) "
        "fitted on {} customers ({} with a repeat purchase day). Parameters: {}.</p>",
        _number(horizon),
        markup(", discounted at {} a year", _share(_get(lifetime, "discount_rate")))
        if _get(lifetime, "discount_rate")
        else "",
        _number(_get(_get(lifetime, "diagnostics"), "customers")),
        _number(_get(_get(lifetime, "diagnostics"), "repeat_customers")),
        _join(", ", (markup("{} {}", k, _number(v, 3)) for k, v in parameters.items())),
    )
    by_segment = _get(lifetime, "value_by_segment") or {}
    priority = dict(zip(inputs.analytics["segment"].astype(str), inputs.analytics["priority"]))
    values = segment_value_table(by_segment if isinstance(by_segment, dict) else {}, priority)
    rows = (
        _row([r.segment, _number(r.predicted_clv, 2), _number(r.avg_predicted_clv, 2),
              _share(r.avg_probability_alive)], {1, 2, 3})
        for r in values.itertuples(index=False)
    )  # fmt: skip
    table = _table(["segment", "predicted value", "per customer", "probability alive"], rows)
    picture = Html("")
    if inputs.pictures_left_out is None and not values.empty:
        require_numbers(values, ["predicted_clv", "avg_predicted_clv", "avg_probability_alive"],
                        "customer_lifetime_value", "the expected value by segment")  # fmt: skip
        picture = _image(pictures.value_by_segment(values, int(horizon)), "Expected value")
    return markup("{}{}{}{}", facts, table, picture, holdout_section(inputs))


def holdout_section(inputs: ReportInputs) -> Html:
    holdout = _get(inputs.lifetime_value, "holdout")
    if holdout is None:
        return Html("")
    if "refused" in holdout:
        return markup("<h3>Holdout check</h3><p>Could not run: {}</p>", holdout["refused"])
    facts = markup(
        "<h3>Holdout check</h3><p>Fitted on the purchases before {}, the purchase model "
        "predicted {} purchase days up to {}; {} happened (ratio {}). Spearman rank "
        "correlation over {} customers: {}.</p>",
        _get(holdout, "cutoff"),
        _number(_get(holdout, "predicted_total")),
        _get(holdout, "end"),
        _number(_get(holdout, "actual_total")),
        _number(_get(holdout, "ratio"), 3),
        _number(_get(holdout, "customers")),
        _number(_get(holdout, "spearman"), 3),
    )
    chart = pd.DataFrame(_records(_get(holdout, "by_calibration_purchases")))
    picture = Html("")
    if inputs.pictures_left_out is None and not chart.empty:
        require_numbers(chart, ["calibration_purchases", "predicted", "actual"],
                        "customer_lifetime_value", "the holdout chart")  # fmt: skip
        png = pictures.clv_holdout(chart, str(holdout["cutoff"]), str(holdout["end"]))
        picture = _image(png, "Predicted and actual purchases")
    return markup("{}{}", facts, picture)


def _cut_points(cuts) -> Html:
    if isinstance(cuts, str):  # read back from CSV, where lists are JSON text
        try:
            cuts = json.loads(cuts)
        except (ValueError, RecursionError):
            return escape(cuts)
    if isinstance(cuts, (list, tuple, np.ndarray)):
        return _join(", ", (_number(c, 2) for c in cuts))
    return _number(cuts, 2)


def thresholds_section(analytics: pd.DataFrame) -> Html:
    rows = []
    for dimension in ("recency", "frequency", "monetary"):
        column = f"{dimension}_thresholds"
        if column in analytics and len(analytics):
            rows.append(_row([dimension, _cut_points(analytics[column].iloc[0])]))
    return _table(["dimension", "cut points"], rows)


def report_html(inputs: ReportInputs, generated: Optional[dt.datetime] = None) -> str:
    """The whole page."""
    generated = generated or dt.datetime.now(dt.UTC).replace(microsecond=0)
    analytics = inputs.analytics
    # What the pictures are drawn from must be numbers; refused before anything is drawn.
    drawn = [
        (analytics, ["priority", "customers", "revenue_share"], "segment_analytics",
         "the segment sizes"),
        (inputs.score_grid, ["R_score", "FM_score", "customers", "revenue"],
         "customer_segments", "the R x FM heatmaps"),
    ]  # fmt: skip
    if inputs.migration is not None and not inputs.migration.empty:
        drawn.append((inputs.migration, ["customers"], "segment_migration", "the movement"))
    for frame, columns, table, picture in drawn:
        require_numbers(frame, columns, table, picture)
    if inputs.pictures_left_out is None:
        shown = _join("", (_image(png, title) for png, title in (
            (pictures.segment_sizes(analytics), "Segment sizes and revenue share"),
            (pictures.score_heatmaps(inputs.score_grid, inputs.scale), "R x FM heatmaps"),
            (pictures.distributions(inputs.histograms), "Distributions"),
        )))  # fmt: skip
    else:
        shown = markup('<p class="muted">Pictures {}.</p>', inputs.pictures_left_out)
    clusters = Html("")
    if inputs.clustering:
        clusters = markup(
            "<h2>Clusters (segmentation_method kmeans or auto)</h2>{}", clustering_section(inputs)
        )
    lifetime = Html("")
    if inputs.lifetime_value is not None:
        lifetime = markup("<h2>Customer lifetime value</h2>{}", lifetime_section(inputs))
    return markup(
        PAGE,
        reference=_get(inputs.summary, "reference_date") or "",
        style=Html(STYLE),
        generated=generated.strftime("%Y-%m-%d %H:%M"),
        run=summary_section(inputs.summary),
        segments=segment_section(analytics),
        shown=shown,
        clusters=clusters,
        lifetime=lifetime,
        movement=movement_section(inputs),
        thresholds=thresholds_section(analytics),
        scale=inputs.scale,
    )
