"""The pictures analysts look at, as small PNGs: one module for the Dagster UI and the report.

Every function takes a small, already aggregated pandas table (a dozen segments, a 5 x 5
score grid, histogram counts, a migration table), so the engines stay free of plotting and a
picture never needs the customer table in memory. Figures are drawn with matplotlib's
object API on the Agg canvas: headless, no display, no global pyplot state.
"""

from __future__ import annotations

import base64
import html
import io
import threading
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd

from rfm_assets.engines.shared import LAPSED_CUSTOMERS, NEW_CUSTOMERS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Every picture is WIDTH x HEIGHT pixels: small enough for asset metadata, sharp on screen.
WIDTH, HEIGHT, DPI = 900, 500, 100
BAR = "#2f6f9f"
ACCENT = "#d9822b"
HEAT = "Blues"


# Where the axes sit, as fractions of the picture. Margins are set, not found by a layout
# engine: constrained layout measures every label several times, which took half of each
# picture's time (and a week's run draws five). Margins that depend on labels the user names
# (segment names) are measured from their length (see `_text_width`).
MARGINS = {"left": 0.08, "right": 0.97, "bottom": 0.11, "top": 0.9, "wspace": 0.3}


# matplotlib's import and its first picture (the font, the text layout) take most of a
# second. A run that draws pictures starts them on a thread at its first step, so they overlap
# the steps' reading, writing and event log (which release the GIL) instead of waiting for the
# first picture; a run that draws none (the command line keeps only tables) never pays.
_warming: Optional[threading.Thread] = None


def warm_up() -> None:
    """Import matplotlib and draw a throwaway picture on a background thread (once)."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_draw_nothing, name="rfm-pictures-warm-up", daemon=True)
        _warming.start()


def _draw_nothing() -> None:
    try:
        figure = _new_figure()
        figure.add_subplot().set_title("warm-up")
        _png(figure)
    except Exception:  # noqa: BLE001 - the first real picture raises it where it is reported
        pass


def _figure(**margins: float) -> Figure:
    if _warming is not None:
        _warming.join()  # matplotlib's state is not shared between threads mid-draw
    return _new_figure(**margins)


def _new_figure(**margins: float) -> Figure:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    figure.subplots_adjust(**{**MARGINS, **margins})
    return figure


def _text_width(labels, fontsize: float) -> float:
    """About how many pixels the longest label takes at `fontsize` points (matplotlib's
    default sans font is about 0.55 em a character)."""
    longest = max((len(str(label)) for label in labels), default=0)
    return longest * fontsize * 0.55 * DPI / 72


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _literal(label) -> str:
    """A label matplotlib draws as it is: a `$` would start mathtext (and a name such as
    `$\\frac{$` would fail the whole picture), so every `$` is escaped as `\\$`."""
    return str(label).replace("$", r"\$")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def markdown_image(png: bytes, title: str) -> str:
    """Markdown that shows the PNG inline (the Dagster UI renders it in asset metadata)."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def html_image(png: bytes, title: str) -> str:
    """An <img> with the PNG embedded, for a self-contained HTML page; the title is escaped."""
    encoded = base64.b64encode(png).decode()
    alt = html.escape(str(title), quote=True)
    return f'<img alt="{alt}" src="data:image/png;base64,{encoded}" width="{WIDTH}">'


# The report draws the same pictures the UI showed for the same week: keep the PNGs, keyed on
# the numbers they draw, so a Dagster run draws each picture once. A range of weeks in one run
# draws its report after every week's pictures: room for five a week over two years and more,
# at about 50 KiB each (32 MiB at most).
_DRAWN: dict[tuple, bytes] = {}
_DRAWN_KEPT = 640


def _drawn_once(key: tuple, draw) -> bytes:
    if key not in _DRAWN:
        if len(_DRAWN) >= _DRAWN_KEPT:
            _DRAWN.pop(next(iter(_DRAWN)))
        _DRAWN[key] = draw()
    return _DRAWN[key]


def _rows(table: pd.DataFrame) -> tuple:
    """A table's columns and rows as a hashable key, in a fixed row order."""
    rows = sorted(table.itertuples(index=False, name=None), key=repr)
    return (tuple(table.columns), tuple(map(repr, rows)))


def segment_sizes(analytics: pd.DataFrame) -> bytes:
    """Customers per segment (bars, in priority order) with each one's share of revenue."""
    key = ("segment_sizes", _rows(analytics[["segment", "priority", "customers", "revenue_share"]]))
    return _drawn_once(key, lambda: _segment_sizes(analytics))


def _segment_sizes(analytics: pd.DataFrame) -> bytes:
    rows = analytics.sort_values("priority", ascending=False)
    shares = rows["revenue_share"].fillna(0.0)
    labels = [f"{n:,} customers · {share:.1%} of revenue"
              for n, share in zip(rows["customers"], shares)]  # fmt: skip
    widest = max(int(rows["customers"].max()), 1)
    return _segment_bars(rows, rows["customers"], labels, widest, 1.45, "customers",
                         "Segment sizes and their share of revenue")  # fmt: skip


def _segment_bars(rows: pd.DataFrame, values, labels: list[str], widest: float,
                  room: float, xlabel: str, title: str, axis_format=None) -> bytes:  # fmt: skip
    """One bar a segment (`rows`, drawn top to bottom in reverse order: the first priority
    on top), each labelled beside its end; the x axis runs to `room` times the widest."""
    names = [_literal(name) for name in rows["segment"]]
    figure = _figure(left=min(0.5, (_text_width(names, 10) + 20) / WIDTH), top=0.93)
    axes = figure.add_subplot()
    axes.barh(names, values, color=BAR)
    for y, (value, label) in enumerate(zip(values, labels)):
        axes.text(value + widest * 0.01, y, label, va="center", fontsize=9)
    axes.set_xlim(0, widest * room)
    if axis_format is not None:
        from matplotlib.ticker import FuncFormatter

        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: axis_format(value)))
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def score_heatmaps(grid: pd.DataFrame, scale: int) -> bytes:
    """R_score x FM_score: customers, and their average monetary, side by side.

    `grid` has one row per (R_score, FM_score) with `customers` and `revenue`.
    """
    key = ("score_heatmaps", scale, _rows(grid[["R_score", "FM_score", "customers", "revenue"]]))
    return _drawn_once(key, lambda: _score_heatmaps(grid, scale))


def _score_heatmaps(grid: pd.DataFrame, scale: int) -> bytes:
    customers = np.zeros((scale, scale))
    revenue = np.zeros((scale, scale))
    for row in grid.itertuples(index=False):
        customers[scale - row.R_score, row.FM_score - 1] = row.customers
        revenue[scale - row.R_score, row.FM_score - 1] = row.revenue
    with np.errstate(divide="ignore", invalid="ignore"):
        average = np.where(customers > 0, revenue / customers, np.nan)
    figure = _figure(left=0.06, right=0.98, top=0.93)
    panels = figure.subplots(1, 2)
    for axes, values, title, text in (
        (panels[0], customers, "Customers", "{:,.0f}"),
        (panels[1], average, "Average monetary", "{:,.0f}"),
    ):
        image = axes.imshow(values, cmap=HEAT, aspect="auto")
        figure.colorbar(image, ax=axes, shrink=0.8)
        axes.set_xticks(range(scale), [str(s) for s in range(1, scale + 1)])
        axes.set_yticks(range(scale), [str(s) for s in range(scale, 0, -1)])
        axes.set_xlabel("FM_score")
        axes.set_ylabel("R_score")
        axes.set_title(f"{title} by R x FM")
        finite = values[np.isfinite(values)]
        middle = (finite.max() + finite.min()) / 2 if finite.size else 0
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                colour = "white" if value > middle else "black"
                axes.text(j, i, text.format(value), ha="center", va="center", fontsize=8,
                          color=colour)  # fmt: skip
    return _png(figure)


def distributions(histograms: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Recency, frequency and monetary histograms from (counts, bin edges); frequency and
    monetary have long tails and are drawn on log-spaced bins."""
    key = ("distributions",) + tuple(
        (name, tuple(np.asarray(counts).tolist()), tuple(np.asarray(edges).tolist()))
        for name, (counts, edges) in sorted(histograms.items())
    )
    return _drawn_once(key, lambda: _distributions(histograms))


def _distributions(histograms: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    figure = _figure(right=0.98, top=0.86, wspace=0.28)
    panels = figure.subplots(1, 3)
    for axes, name in zip(panels, ("recency", "frequency", "monetary")):
        counts, edges = histograms[name]
        axes.stairs(counts, edges, fill=True, color=BAR)
        if name != "recency":
            axes.set_xscale("log")
        axes.set_title(name)
        axes.set_xlabel({"recency": "days", "frequency": "orders", "monetary": "spend"}[name])
        axes.spines[["top", "right"]].set_visible(False)
    panels[0].set_ylabel("customers")
    figure.suptitle("Distributions of recency, frequency and monetary")
    return _png(figure)


def migration_heatmap(migration: pd.DataFrame, order: list[str]) -> bytes:
    """Customers from each segment (rows, last week) to each segment (columns, this week)."""
    sources = [n for n in [*order, NEW_CUSTOMERS] if n in set(migration["from_segment"])]
    targets = [n for n in [*order, LAPSED_CUSTOMERS] if n in set(migration["to_segment"])]
    key = ("migration_heatmap", _rows(migration[["from_segment", "to_segment", "customers"]]),
           tuple(sources), tuple(targets))  # fmt: skip
    return _drawn_once(key, lambda: _migration_heatmap(migration, sources, targets))


def _migration_heatmap(migration: pd.DataFrame, sources: list, targets: list) -> bytes:
    values = np.zeros((len(sources), len(targets)))
    for row in migration.itertuples(index=False):
        if row.from_segment in sources and row.to_segment in targets:
            values[sources.index(row.from_segment), targets.index(row.to_segment)] = row.customers
    # Row names on the left, column names below at 35 degrees (their height is ~0.6 of
    # their length), both at 8 points.
    figure = _figure(
        left=min(0.5, (_text_width([*sources, ""], 8) + 45) / WIDTH),
        bottom=min(0.5, (0.6 * _text_width([*targets, ""], 8) + 45) / HEIGHT),
        right=1.0,
        top=0.93,
    )
    axes = figure.add_subplot()
    if values.size == 0:
        axes.text(0.5, 0.5, "no previous week to compare with", ha="center", va="center")
        axes.set_axis_off()
        return _png(figure)
    image = axes.imshow(np.log1p(values), cmap=HEAT, aspect="auto")
    figure.colorbar(image, ax=axes, shrink=0.8, label="log(1 + customers)")
    labels = [_literal(t) for t in targets]
    axes.set_xticks(range(len(targets)), labels, rotation=35, ha="right", fontsize=8)
    axes.set_yticks(range(len(sources)), [_literal(s) for s in sources], fontsize=8)
    axes.set_xlabel("this week")
    axes.set_ylabel("last week")
    axes.set_title("Segment movement: customers from -> to")
    top = np.log1p(values).max() / 2
    for (i, j), value in np.ndenumerate(values):
        if value:
            colour = "white" if np.log1p(value) > top else "black"
            axes.text(j, i, f"{value:,.0f}", ha="center", va="center", fontsize=7, color=colour)
    return _png(figure)


def share_trend(history: pd.DataFrame) -> bytes:
    """Each segment's share of customers over the stored weeks (`week, segment,
    customer_share`)."""
    # The legend sits right of the plot: its names at 7 points and their markers.
    legend = _text_width(history["segment"].astype(str).unique(), 7) + 45
    figure = _figure(right=max(0.5, 1 - legend / WIDTH), bottom=0.16, top=0.93)
    axes = figure.add_subplot()
    # Twenty distinct colours: eleven segments never share one.
    axes.set_prop_cycle(color=[_colormap("tab20")(i) for i in range(20)])
    weeks = sorted(history["week"].unique())
    for segment, rows in history.groupby("segment", sort=False):
        shares = rows.set_index("week")["customer_share"].reindex(weeks)
        axes.plot(weeks, shares.to_numpy() * 100, marker="o", label=_literal(segment))
    axes.set_ylabel("% of customers")
    axes.set_title("Segment shares over the last weeks")
    axes.tick_params(axis="x", labelrotation=30, labelsize=8)
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def clusters(sample: pd.DataFrame, summary: dict) -> bytes:
    """k-means at a glance: a sample of customers in R x M and F x M coloured by cluster, the
    size of every cluster, and the silhouette and inertia (the elbow) of every k tried.
    `sample` has recency, frequency, monetary and cluster_name; `summary` is what the
    clustering measured (clusters, silhouette_by_k, inertia_by_k)."""
    entries = sorted(summary["clusters"], key=lambda c: c["cluster"])
    names = [_literal(c["name"]) for c in entries]  # left of the cluster sizes, at 7 points
    figure = _figure(left=min(0.4, max(0.08, (_text_width(names, 7) + 25) / WIDTH)),
                     right=0.93, bottom=0.09, top=0.94, hspace=0.45, wspace=0.35)  # fmt: skip
    panels = figure.subplots(2, 2)
    colours = [_colormap("tab10")(i) for i in range(10)]
    colour_of = {c["name"]: colours[i % 10] for i, c in enumerate(entries)}
    for axes, x in ((panels[0, 0], "recency"), (panels[0, 1], "frequency")):
        for name, colour in colour_of.items():
            rows = sample[sample["cluster_name"].astype(str) == name]
            axes.scatter(rows[x], rows["monetary"], s=3, alpha=0.5, color=colour,
                         label=_literal(name))  # fmt: skip
        axes.set_xscale("symlog" if x == "recency" else "log")
        axes.set_yscale("log")
        axes.set_xlabel(x, fontsize=8)
        axes.set_ylabel("monetary", fontsize=8)
        axes.set_title(f"{x} x monetary (a sample)", fontsize=9)
        axes.tick_params(labelsize=7)
    sizes = panels[1, 0]
    sizes.barh(names, [c["customers"] for c in entries],
               color=[colour_of[c["name"]] for c in entries])  # fmt: skip
    sizes.invert_yaxis()
    sizes.set_title("customers per cluster", fontsize=9)
    sizes.tick_params(labelsize=7)
    elbow = panels[1, 1]
    ks = sorted(summary["silhouette_by_k"], key=int)
    elbow.plot([int(k) for k in ks], [summary["silhouette_by_k"][k] for k in ks], marker="o",
               color=BAR)  # fmt: skip
    elbow.set_xlabel("k", fontsize=8)
    elbow.set_ylabel("silhouette", fontsize=8, color=BAR)
    elbow.axvline(summary["k"], color="#999", linestyle=":", linewidth=1)
    elbow.set_title(_literal(f"choice of k (k = {summary['k']})"), fontsize=9)
    elbow.tick_params(labelsize=7)
    inertia = summary.get("inertia_by_k") or {}
    if inertia:
        twin = elbow.twinx()
        ks = sorted(inertia, key=int)
        twin.plot([int(k) for k in ks], [inertia[k] for k in ks], marker="s", color=ACCENT)
        twin.set_ylabel("inertia", fontsize=8, color=ACCENT)
        twin.tick_params(labelsize=7)
    return _png(figure)


def clv_holdout(chart: pd.DataFrame, cutoff: str, end: str) -> bytes:
    """The classic check of a purchase model: mean predicted against mean actual purchase
    days in the holdout, by repeat purchase days in calibration (`calibration_purchases,
    customers, predicted, actual`; the last group holds that many and more)."""
    from rfm_assets.engines.clv import chart_label

    figure = _figure(bottom=0.13)
    axes = figure.add_subplot()
    labels = [chart_label(g) for g in chart["calibration_purchases"]]
    axes.plot(labels, chart["actual"], marker="o", color=BAR, label="actual")
    axes.plot(labels, chart["predicted"], marker="s", linestyle="--", color=ACCENT,
              label="predicted (BG/NBD)")  # fmt: skip
    axes.set_xlabel("repeat purchase days before the holdout")
    axes.set_ylabel("mean purchase days in the holdout")
    axes.set_title(f"Purchase model fitted before {cutoff}, checked to {end}")
    axes.legend(loc="upper left")
    axes.spines[["top", "right"]].set_visible(False)
    return _png(figure)


def value_by_segment(values: pd.DataFrame, horizon_days: int) -> bytes:
    """Predicted value per segment (`segment, priority, predicted_clv, avg_predicted_clv,
    avg_probability_alive`): the segment's total as bars, in priority order, with the mean
    per customer and the mean probability of being alive beside each."""
    rows = values.sort_values("priority", ascending=False)
    means = zip(rows["avg_predicted_clv"], rows["avg_probability_alive"])
    labels = [f"{value:,.0f} a customer · {alive:.1%} alive" for value, alive in means]
    widest = max(float(rows["predicted_clv"].max()), 1.0)
    # Whole amounts with thousands separators, not an offset such as "1e6" in the corner.
    return _segment_bars(rows, rows["predicted_clv"], labels, widest, 1.5,
                         f"predicted value over the next {horizon_days} days",
                         "Expected value by segment",
                         axis_format=lambda v: f"{v:,.0f}")  # fmt: skip
