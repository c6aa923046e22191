"""The shareable HTML report: self-contained, its numbers equal the tables, and it renders
in a real browser (headless Chromium)."""

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from rfm_assets import pictures
from rfm_assets.cli import main
from rfm_assets_tests.conftest import materialize_bundled_week
from rfm_assets_tests.test_pictures import png_size

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> Path:
    """Two CLI runs a week apart into one output, so the report has movement to show."""
    output = tmp_path_factory.mktemp("report") / "out"
    for day in ("2011-11-28", "2011-12-05"):
        assert main(["analyze", "--reference-date", day, "--output", str(output)]) == 0
    return output


@pytest.fixture(scope="module")
def page(result) -> str:
    target = result.parent / "report.html"
    assert main(["report", "--input", str(result), "--output", str(target)]) == 0
    return target.read_text(encoding="utf-8")


def test_the_report_is_one_self_contained_file(page):
    assert page.startswith("<!doctype html>")
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4  # sizes, heatmaps, distributions, movement
    import base64

    for encoded in images:
        assert png_size(base64.b64decode(encoded)) == (pictures.WIDTH, pictures.HEIGHT)


def test_the_numbers_in_the_report_equal_the_tables(result, page):
    analytics = pd.read_parquet(result / "segment_analytics.parquet")
    summary = json.loads((result / "run_summary.json").read_text())
    text = html.unescape(re.sub(r"<[^>]+>", "|", page))
    for row in analytics.itertuples(index=False):
        assert (
            f"|{row.segment}||{row.customers:,}||{row.customer_share:.1%}||{row.revenue:,.2f}|"
            in text
        )
        assert row.recommendation in text
    assert f"|rows read||{summary['rows_read']:,}|" in text
    assert f"|rows kept||{summary['rows_kept']:,}|" in text
    for reason, count in summary["rows_excluded"].items():
        if count:
            assert f"|excluded: {reason}||{count:,}|" in text
    migration = pd.read_parquet(result / "segment_migration.parquet")
    moved = migration[
        (migration["from_segment"] != migration["to_segment"])
        & (migration["from_segment"] != "(new)")
        & (migration["to_segment"] != "(lapsed)")
    ]
    largest = moved.sort_values("customers", ascending=False).iloc[0]
    assert f"|{largest.from_segment}||{largest.to_segment}||{largest.customers:,}|" in text
    assert f"{int(moved['customers'].sum()):,} customers changed segment" in text
    cuts = ", ".join(f"{c:,.2f}" for c in analytics["monetary_thresholds"].iloc[0])
    assert f"|monetary||{cuts}|" in text


def test_the_report_renders_in_headless_chromium(result, page, tmp_path):
    """The only browser test: skipped where Chromium is missing, except under CI (the `CI`
    environment variable set, as .ci/run and CI services set it), where that is a failure."""
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("no Chromium under CI: .ci/run installs Debian's, and must have")
        pytest.skip("no Chromium here (.ci/run installs Debian's; under CI this fails)")
    from PIL import Image

    report = result.parent / "report.html"
    shot = tmp_path / "report.png"
    completed = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1200,2600", f"--screenshot={shot}", report.as_uri()],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert png_size(shot.read_bytes()) == (1200, 2600)
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1_000_000)
    assert len(colours) > 150  # text, tables and pictures, not a blank or error page
    # The embedded pictures were decoded and drawn: their bar colour is on the screen.
    bar = tuple(int(pictures.BAR[i : i + 2], 16) for i in (1, 3, 5))
    assert sum(count for count, colour in colours if colour == bar) > 20_000


def test_the_weekly_graph_writes_the_report_as_an_asset(tmp_path):
    for week in ("2011-11-21", "2011-11-28"):
        run = materialize_bundled_week(tmp_path / "store", week)
    metadata = run.asset_materializations_for_node("rfm_report")[0].metadata
    path = Path(metadata["path"].value)
    assert path == tmp_path / "store" / "rfm_report" / "2011-11-28" / "report.html"
    page = path.read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "|", page))
    assert "Compared with week 2011-11-21" in text
    assert page.count('src="data:image/png;base64,') == 4
    assert "|rows read||" in text and "|excluded: missing_customer_id||" in text


def test_a_kmeans_report_shows_the_clusters_and_the_methods_compared(page, tmp_path):
    assert "Clusters (segmentation_method kmeans or auto)" not in page  # no such part in a grid run
    output = tmp_path / "kmeans"
    assert main(["analyze", "--segmentation", "kmeans", "--output", str(output)]) == 0
    target = tmp_path / "kmeans.html"
    assert main(["report", "--input", str(output), "--output", str(target)]) == 0
    shown = target.read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "|", shown))
    summary = json.loads((output / "run_summary.json").read_text())["clustering"]
    assert f"k = {summary['k']}, fitted now on 4,338 customers; k-means." in text
    assert "Clusters (segmentation_method kmeans or auto)" in text
    for entry in summary["clusters"]:
        assert f"|{entry['name']}||{entry['segment']}||{entry['customers']:,}|" in text
    for method, scores in summary["methods_compared"].items():
        assert f"|{method.replace('_', ' ')}||{scores['silhouette']:.3f}|" in text
    # The four pictures of every report, and the clusters picture.
    images = re.findall(r'alt="([^"]+)" src="data:image/png;base64,', shown)
    assert "k-means clusters" in images and len(images) == 4
    # With auto on the seven features, the page names the method kept and the features.
    chosen = tmp_path / "auto"
    features = "recency,frequency,monetary,tenure_days"
    assert main(["analyze", "--segmentation", "auto", "--clusters", "3", "--cluster-features",
                 features, "--output", str(chosen)]) == 0  # fmt: skip
    assert main(["report", "--input", str(chosen), "--output", str(tmp_path / "auto.html")]) == 0
    text = html.unescape(re.sub(r"<[^>]+>", "|", (tmp_path / "auto.html").read_text()))
    method = json.loads((chosen / "run_summary.json").read_text())["clustering"]["method"]
    name = {"kmeans": "k-means", "gaussian_mixture": "a Gaussian mixture",
            "agglomerative_ward": "Ward's clustering"}[method]  # fmt: skip
    assert (f"{name}, the best silhouette of the methods compared below, on recency, "
            "frequency, monetary, tenure_days.") in text  # fmt: skip


# --- hostile values: every value reaches the page as text, never as markup --------------------

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(1)> $\\frac{$ [x](javascript:1)|'
# The tags and attributes the page itself writes; anything else came from a value.
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "table",
             "tr", "th", "td", "ul", "li", "img"}  # fmt: skip
PAGE_ATTRIBUTES = {"lang", "charset", "class", "alt", "src", "width"}


class Tags(HTMLParser):
    """Every tag and attribute of a page, and its text as a reader sees it."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def assert_only_the_pages_own_markup(page: str) -> str:
    """The page parses into its own tags only; returns its text ('|' between elements)."""
    lowered = page.lower()
    assert "<script" not in lowered and "<img src=x" not in lowered
    parsed = Tags(page)
    for tag, attrs in parsed.tags:
        assert tag in PAGE_TAGS, (tag, attrs)
        assert set(attrs) <= PAGE_ATTRIBUTES, (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs["src"][:80]
    return "|".join(parsed.text)


def poisoned(value):
    """`value` with the hostile text in every leaf, one more hostile entry in every object
    and list, and the same shape otherwise (so the report still reads every field)."""
    if isinstance(value, dict):
        return {**{k: poisoned(v) for k, v in value.items()}, HOSTILE: HOSTILE}
    if isinstance(value, list):
        return [*map(poisoned, value), HOSTILE]
    return HOSTILE


# What run_summary.json holds under `clustering` on a kmeans run (the fixture is a grid run).
CLUSTERING = {
    "k": 3, "model": "stored",
    "fitted": {"reference_date": "2011-12-10", "engine": "pandas", "customers": 4338},
    "silhouette": 0.33, "davies_bouldin": 1.04, "calinski_harabasz": 3647.6,
    "silhouette_by_k": {"3": 0.33, "4": 0.33}, "inertia_by_k": {"3": 2200.0, "4": 1796.4},
    "methods_compared": {"kmeans": {"silhouette": 0.33, "davies_bouldin": 1.04,
                                    "calinski_harabasz": 3647.6}},
    "clusters": [{"cluster": 0, "name": "Hibernating", "segment": "Hibernating",
                  "customers": 1811, "recency": 123.8, "frequency": 1.3, "monetary": 254.4}],
}  # fmt: skip


@pytest.fixture(scope="module")
def hostile_result(result, tmp_path_factory) -> Path:
    """A copy of `result` whose tables hold the hostile text in every text field, and in
    the numbers the report only shows (not those it draws pictures from)."""
    directory = tmp_path_factory.mktemp("hostile") / "out"
    shutil.copytree(result, directory, ignore=shutil.ignore_patterns(".rfm"))  # links followed
    analytics = pd.read_parquet(directory / "segment_analytics.parquet")
    names = {name: f"{HOSTILE}{i}" for i, name in enumerate(analytics["segment"])}
    analytics["segment"] = analytics["segment"].map(names)
    for column in ["segment_id", "recommendation", "customer_share", "revenue", "avg_recency",
                   "avg_frequency", "avg_monetary", "avg_order_value"]:  # fmt: skip
        analytics[column] = HOSTILE
    analytics["recency_thresholds"] = HOSTILE  # not even JSON
    analytics["frequency_thresholds"] = json.dumps([1.0, HOSTILE])  # JSON text, as from CSV
    analytics["monetary_thresholds"] = [[HOSTILE, HOSTILE]] * len(analytics)
    analytics.to_parquet(directory / "segment_analytics.parquet")
    segments = pd.read_parquet(directory / "customer_segments.parquet")
    for column in ["segment", "segment_id", "recommendation", "rfm_cell", "value_tier",
                   "engagement_level"]:  # fmt: skip
        segments[column] = HOSTILE
    segments.to_parquet(directory / "customer_segments.parquet")
    migration = pd.read_parquet(directory / "segment_migration.parquet")
    for column in ("from_segment", "to_segment"):
        migration[column] = migration[column].map(lambda name: names.get(name, name))
    migration["revenue"] = HOSTILE
    migration.to_parquet(directory / "segment_migration.parquet")
    return directory


def test_every_value_from_files_tables_and_settings_is_escaped(result, hostile_result, tmp_path):
    from rfm_assets.cli import read_table, report_inputs
    from rfm_assets.report import report_html

    summary = json.loads((result / "run_summary.json").read_text())
    assert {"input", "rows_excluded", "weights", "clustering", "thresholds"} <= set(summary)
    # 1. The command on the damaged result: every field of run_summary.json keeps its shape
    # but holds the hostile text (scale stays a number: the command needs it to read the grid).
    (hostile_result / "run_summary.json").write_text(
        json.dumps({**poisoned({**summary, "clustering": CLUSTERING}), "scale": 5})
    )
    target = tmp_path / "report.html"
    assert main(["report", "--input", str(hostile_result), "--output", str(target)]) == 0
    text = assert_only_the_pages_own_markup(target.read_text(encoding="utf-8"))
    shown = [
        *(f"{name}|{HOSTILE}" for name in ("input", "engine", "reference date", "customers")),
        *(f"{label}: {HOSTILE}|{HOSTILE}" for label in ("excluded", "customers held out")),
        f"{HOSTILE} (5-point)", f"weights R/F/M|{HOSTILE}/{HOSTILE}/{HOSTILE}",
        f"{HOSTILE}0|", f"|{HOSTILE}|{HOSTILE}|",  # a segment name, its share and revenue
        f"k = {HOSTILE}, a stored model applied (fitted on {HOSTILE} customers",
        f"|{HOSTILE}|{HOSTILE}|{HOSTILE}|{HOSTILE}|{HOSTILE}|{HOSTILE}|",  # a cluster
        f"recency|{HOSTILE}|", f"frequency|1.00, {HOSTILE}|", f"monetary|{HOSTILE}, {HOSTILE}|",
    ]  # fmt: skip
    for part in shown:
        assert part in text, part  # shown as text: the test cannot pass by hiding a value
    # 2. Every field of run_summary.json replaced by the hostile text, scale included.
    flat = {key: HOSTILE for key in summary}
    inputs = report_inputs(hostile_result, read_table(hostile_result, "segment_analytics"),
                           {"scale": 5})  # fmt: skip
    inputs.summary, inputs.clustering = flat, flat["clustering"]
    text = assert_only_the_pages_own_markup(report_html(inputs))
    assert text.count(HOSTILE) >= len(summary) - 5  # the fields the page shows, as text
    # 3. Through the command, a scale that is no number is refused or shown as text.
    (hostile_result / "run_summary.json").write_text(json.dumps(flat))
    target.unlink()
    if main(["report", "--input", str(hostile_result), "--output", str(target)]) == 0:
        assert_only_the_pages_own_markup(target.read_text(encoding="utf-8"))
    else:
        assert not target.exists()


def test_the_markdown_report_shows_hostile_values_as_text(result, hostile_result, tmp_path):
    summary = json.loads((result / "run_summary.json").read_text())
    (hostile_result / "run_summary.json").write_text(json.dumps(poisoned(summary)))
    target = tmp_path / "report.md"
    assert main(["report", "--input", str(hostile_result), "--output", str(target)]) == 0
    report = target.read_text(encoding="utf-8")
    lines = report.splitlines()
    assert lines[-1] == "![segment sizes](segment_sizes.png)"  # the one image, and no other
    body = "\n".join(lines[:-1])
    assert "<" not in body and not re.search(r"(?<!\\)\[", body)  # no HTML, link or image
    table = [line for line in lines if line.startswith("| ")][2:]
    assert table and all(len(re.findall(r"(?<!\\)\|", line)) == 11 for line in table)
    markdown_it = pytest.importorskip("markdown_it")
    rendered = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table")
    parsed = Tags(rendered.render(report))
    allowed = {"h1", "ul", "li", "p", "table", "thead", "tbody", "tr", "th", "td", "img"}
    assert {tag for tag, _ in parsed.tags} <= allowed
    assert [attrs["src"] for tag, attrs in parsed.tags if tag == "img"] == ["segment_sizes.png"]
    assert f"input: {HOSTILE}" in parsed.text and f"{HOSTILE}0" in parsed.text  # as text


def test_what_a_picture_is_drawn_from_must_be_numbers(result, hostile_result, tmp_path, capsys):
    from rfm_assets.errors import RFMError
    from rfm_assets.report import cluster_picture_input

    shutil.copy(result / "run_summary.json", hostile_result / "run_summary.json")
    for table, column in (("segment_analytics", "customers"), ("segment_migration", "customers")):
        path = hostile_result / f"{table}.parquet"
        original = pd.read_parquet(path)
        original.assign(**{column: HOSTILE}).to_parquet(path)
        capsys.readouterr()
        target = tmp_path / "refused.html"
        assert main(["report", "--input", str(hostile_result), "--output", str(target)]) == 1
        original.to_parquet(path)
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"{table}: column {column} is " in error, error
        assert not target.exists()
    # The Markdown report draws the segment sizes too; a scale is 4 or 5.
    path = hostile_result / "segment_analytics.parquet"
    original = pd.read_parquet(path)
    original.assign(customers=HOSTILE).to_parquet(path)
    target = tmp_path / "refused.md"
    assert main(["report", "--input", str(hostile_result), "--output", str(target)]) == 1
    original.to_parquet(path)
    assert "segment_analytics: column customers is " in capsys.readouterr().err
    summary = json.loads((hostile_result / "run_summary.json").read_text())
    (hostile_result / "run_summary.json").write_text(json.dumps({**summary, "scale": HOSTILE}))
    assert (
        main(["report", "--input", str(hostile_result), "--output", str(tmp_path / "s.html")]) == 1
    )
    shutil.copy(result / "run_summary.json", hostile_result / "run_summary.json")
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "run_summary.json: scale is " in error, error
    for field in ("k", "clusters", "silhouette_by_k", "inertia_by_k"):
        with pytest.raises(RFMError, match=f"clustering.{field} is not the numbers"):
            cluster_picture_input({**CLUSTERING, field: HOSTILE})


def test_pictures_draw_hostile_labels_as_text():
    names = [f"$\\frac{{${i} {HOSTILE}" for i in range(3)]
    summary = {**CLUSTERING, "clusters": [{**CLUSTERING["clusters"][0], "cluster": i, "name": n}
                                          for i, n in enumerate(names)]}  # fmt: skip
    sample = pd.DataFrame({"recency": [1, 20, 300] * 5, "frequency": [1, 2, 9] * 5,
                           "monetary": [10, 200, 900] * 5, "cluster_name": names * 5})  # fmt: skip
    history = pd.DataFrame({"week": ["a", "a", "b"], "segment": [names[0], names[1], names[0]],
                            "customer_share": [0.4, 0.6, 1.0]})  # fmt: skip
    for png in (pictures.clusters(sample, summary), pictures.share_trend(history)):
        assert png_size(png) == (pictures.WIDTH, pictures.HEIGHT)
    alt = pictures.html_image(b"", HOSTILE)
    assert_only_the_pages_own_markup(alt)
    assert Tags(alt).tags[0][1]["alt"] == HOSTILE
