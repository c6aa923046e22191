"""The shareable HTML report: self-contained, its numbers equal the tables, and it renders
in a real browser (headless Chromium)."""

import html
import json
import re
import shutil
import subprocess
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


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs Debian's)")
def test_the_report_renders_in_headless_chromium(result, page, tmp_path):
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
    assert "Clusters (segmentation_method kmeans)" not in page  # a grid run has no such part
    output = tmp_path / "kmeans"
    assert main(["analyze", "--segmentation", "kmeans", "--output", str(output)]) == 0
    target = tmp_path / "kmeans.html"
    assert main(["report", "--input", str(output), "--output", str(target)]) == 0
    shown = target.read_text(encoding="utf-8")
    text = html.unescape(re.sub(r"<[^>]+>", "|", shown))
    summary = json.loads((output / "run_summary.json").read_text())["clustering"]
    assert f"k = {summary['k']}, fitted now on 4,338 customers" in text
    for entry in summary["clusters"]:
        assert f"|{entry['name']}||{entry['segment']}||{entry['customers']:,}|" in text
    for method, scores in summary["methods_compared"].items():
        assert f"|{method.replace('_', ' ')}||{scores['silhouette']:.3f}|" in text
    # The four pictures of every report, and the clusters picture.
    images = re.findall(r'alt="([^"]+)" src="data:image/png;base64,', shown)
    assert "k-means clusters" in images and len(images) == 4
