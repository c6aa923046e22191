"""The report people share: one self-contained HTML page (pictures embedded, no network).

`report_html` takes what a run produced (its summary, the analytics table, the small
aggregates behind the pictures and, when there was an earlier week, the migration table) and
is used by `rfm-assets report` and by the `rfm_report` asset alike.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from rfm_assets import pictures
from rfm_assets.engines.shared import movement_counts, moves_between_segments
from rfm_assets.segments import default_catalog

STYLE = """
body{font-family:Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top}th{background:#f3f3f3;text-align:left}td.n{text-align:right;
white-space:nowrap}.muted{color:#666}ul.actions{margin:0;padding-left:1.1em}
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


def _text(value) -> str:
    return html.escape("" if value is None else str(value))


def _number(value, digits: int = 0) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:,.{digits}f}"


def _row(cells: list[str], numeric: set[int] = frozenset()) -> str:
    return "<tr>" + "".join(
        f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells)
    ) + "</tr>"  # fmt: skip


def _head(names: list[str]) -> str:
    return "<tr>" + "".join(f"<th>{_text(n)}</th>" for n in names) + "</tr>"


def summary_section(summary: dict) -> str:
    if not summary:
        return '<p class="muted">No run summary was found beside the tables.</p>'
    facts = [
        ("input", summary.get("input")),
        ("input level", summary.get("input_level", "transactions")),
        ("engine", summary.get("engine")),
        ("reference date", summary.get("reference_date")),
        ("window starts", summary.get("window_start") or "all history"),
        ("scoring", f"{summary.get('scoring_method')} ({summary.get('scale')}-point)"),
        ("weights R/F/M", "/".join(_number(w, 2) for w in (summary.get("weights") or {}).values())),
        ("customers", _number(summary.get("customers"))),
    ]
    rows = "".join(_row([_text(k), _text(v)]) for k, v in facts)
    excluded = summary.get("rows_excluded") or {}
    accounting = [
        _row(["rows read", _number(summary.get("rows_read"))], {1}),
        _row(["rows kept", _number(summary.get("rows_kept"))], {1}),
    ] + [_row([f"excluded: {_text(r)}", _number(n)], {1}) for r, n in excluded.items() if n]
    held_out = summary.get("customers_held_out") or {}
    accounting += [
        _row([f"customers held out: {_text(r)}", _number(n)], {1}) for r, n in held_out.items() if n
    ]
    return (
        f"<table>{rows}</table><h3>Every row accounted for</h3>"
        f"<table>{_head(['', 'count'])}{''.join(accounting)}</table>"
    )


def segment_section(analytics: pd.DataFrame) -> str:
    catalog = {entry.segment_id: entry for entry in default_catalog().values()}
    rows = []
    for row in analytics.itertuples(index=False):
        entry = catalog.get(str(row.segment_id))
        actions = "".join(f"<li>{_text(a)}</li>" for a in (entry.example_actions if entry else ()))
        rows.append(
            _row(
                [
                    _text(row.segment),
                    _number(row.customers),
                    f"{row.customer_share:.1%}",
                    _number(row.revenue, 2),
                    "–" if pd.isna(row.revenue_share) else f"{row.revenue_share:.1%}",
                    _number(row.avg_recency, 1),
                    _number(row.avg_frequency, 2),
                    _number(row.avg_monetary, 2),
                    _text(row.recommendation),
                    f'<ul class="actions">{actions}</ul>',
                ],
                {1, 2, 3, 4, 5, 6, 7},
            )
        )
    names = ["segment", "customers", "share", "revenue", "revenue share", "avg recency (days)",
             "avg orders", "avg monetary", "recommendation", "example actions"]  # fmt: skip
    return f"<table>{_head(names)}{''.join(rows)}</table>"


def movement_section(inputs: ReportInputs) -> str:
    migration = inputs.migration
    if migration is None or migration.empty:
        return '<p class="muted">No previous week to compare with.</p>'
    moved = moves_between_segments(migration)
    counts = movement_counts(migration)
    facts = (
        f"<p>Compared with {_text(inputs.previous or 'the previous result')}: "
        f"{counts['customers_moved']:,} customers changed segment, "
        f"{counts['customers_new']:,} are new and {counts['customers_lapsed']:,} are gone"
        + (
            f"; {inputs.slipping:,} slipped from an engaged segment into a win-back one."
            if inputs.slipping is not None
            else "."
        )
        + "</p>"
    )
    top = moved.sort_values("customers", ascending=False).head(12)
    rows = "".join(
        _row(
            [
                _text(r.from_segment),
                _text(r.to_segment),
                _number(r.customers),
                _number(r.revenue, 2),
            ],
            {2, 3},
        )  # fmt: skip
        for r in top.itertuples(index=False)
    )
    order = list(inputs.analytics["segment"].astype(str))
    picture = pictures.html_image(pictures.migration_heatmap(migration, order), "movement")
    return (
        f"{facts}<table>{_head(['from', 'to', 'customers', 'revenue'])}{rows}</table>"
        f"<p>{picture}</p>"
    )


def clustering_section(inputs: ReportInputs) -> str:
    """k-means: the model's quality, its clusters, the methods compared and the picture."""
    clustering = inputs.clustering
    fitted = clustering.get("fitted") or {}
    how = (
        f"fitted now on {_number(fitted.get('customers'))} customers"
        if clustering.get("model") == "fitted"
        else f"a stored model applied (fitted on {_number(fitted.get('customers'))} customers, "
        f"reference date {_text(fitted.get('reference_date'))}, {_text(fitted.get('engine'))})"
    )
    facts = (
        f"<p>k = {clustering['k']}, {how}. Silhouette {_number(clustering['silhouette'], 3)} "
        f"(higher is better, at most 1), Davies-Bouldin "
        f"{_number(clustering['davies_bouldin'], 3)} (lower is better), Calinski-Harabasz "
        f"{_number(clustering['calinski_harabasz'], 1)} (higher is better).</p>"
    )
    rows = "".join(
        _row(
            [
                _text(c["name"]),
                _text(c["segment"]),
                _number(c["customers"]),
                _number(c["recency"], 1),
                _number(c["frequency"], 2),
                _number(c["monetary"], 2),
            ],
            {2, 3, 4, 5},
        )  # fmt: skip
        for c in clustering["clusters"]
    )
    names = ["cluster", "segment", "customers", "centroid recency (days)", "centroid orders",
             "centroid monetary"]  # fmt: skip
    clusters = f"<table>{_head(names)}{rows}</table>"
    compared = clustering.get("methods_compared") or {}
    comparison = ""
    if compared:
        lines = "".join(
            _row(
                [
                    _text(name.replace("_", " ")),
                    _number(m["silhouette"], 3),
                    _number(m["davies_bouldin"], 3),
                    _number(m["calinski_harabasz"], 1),
                ],
                {1, 2, 3},
            )  # fmt: skip
            for name, m in compared.items()
        )
        comparison = (
            "<h3>Methods compared on one seeded sample, same features and k</h3>"
            f"<table>{_head(['method', 'silhouette', 'Davies-Bouldin', 'Calinski-Harabasz'])}"
            f'{lines}</table><p class="muted">k-means is the default method: it assigns new '
            "customers to stored centroids without refitting (rfm-assets predict), and it "
            "scales to millions of customers, where Ward's memory grows with the square of "
            "the customers. Compare the scores above on your data.</p>"
        )
    picture = ""
    if inputs.cluster_sample is not None and len(inputs.cluster_sample):
        png = pictures.clusters(inputs.cluster_sample, clustering)
        picture = f"<p>{pictures.html_image(png, 'k-means clusters')}</p>"
    return facts + clusters + comparison + picture


def thresholds_section(analytics: pd.DataFrame) -> str:
    rows = []
    for dimension in ("recency", "frequency", "monetary"):
        column = f"{dimension}_thresholds"
        if column in analytics and len(analytics):
            cuts = analytics[column].iloc[0]
            if isinstance(cuts, str):  # read back from CSV, where lists are JSON text
                cuts = json.loads(cuts)
            cuts = ", ".join(_number(c, 2) for c in list(cuts))
            rows.append(_row([dimension, cuts]))
    return f"<table>{_head(['dimension', 'cut points'])}{''.join(rows)}</table>"


def report_html(inputs: ReportInputs, generated: Optional[dt.datetime] = None) -> str:
    """The whole page."""
    generated = generated or dt.datetime.now(dt.UTC).replace(microsecond=0)
    analytics = inputs.analytics
    images = [
        (pictures.segment_sizes(analytics), "Segment sizes and revenue share"),
        (pictures.score_heatmaps(inputs.score_grid, inputs.scale), "R x FM heatmaps"),
        (pictures.distributions(inputs.histograms), "Distributions"),
    ]
    shown = "".join(f"<p>{pictures.html_image(png, title)}</p>" for png, title in images)
    reference = _text(inputs.summary.get("reference_date", ""))
    clusters = ""
    if inputs.clustering:
        clusters = f"<h2>Clusters (segmentation_method kmeans)</h2>{clustering_section(inputs)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>RFM segment report {reference}</title>
<style>{STYLE}</style></head><body>
<h1>RFM segment report</h1>
<p class="muted">Reference date {reference} · generated {generated:%Y-%m-%d %H:%M} UTC</p>
<h2>Run</h2>{summary_section(inputs.summary)}
<h2>Segments</h2>{segment_section(analytics)}
<h2>Pictures</h2>{shown}
{clusters}<h2>Movement since the previous week</h2>{movement_section(inputs)}
<h2>Score thresholds used</h2>{thresholds_section(analytics)}
<p class="muted">Made by rfm_assets. Scores are 1 (worst) to {inputs.scale} (best); the rules
are in the project's docs/contract.md.</p>
</body></html>
"""
