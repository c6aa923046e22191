"""Pictures: valid PNGs of the documented size, drawn from numbers that equal the tables."""

import base64
import re
import struct

import numpy as np
import pandas as pd
import pytest

from rfm_assets import pictures, run
from rfm_assets.engines.dispatch import PandasEngine
from rfm_assets.settings import RFMSettings
from rfm_assets_tests.conftest import materialize_bundled_week

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (after checking the signature)."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def image_of(markdown: str) -> bytes:
    match = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    return base64.b64decode(match.group(1))


@pytest.fixture(scope="module")
def bundled():
    return run(RFMSettings(reference_date="2011-12-05"))


def test_every_picture_is_a_png_of_the_documented_size(bundled):
    engine = PandasEngine()
    grid = RFMSettings().rule_set()
    previous = run(RFMSettings(reference_date="2011-11-28"))
    migration = engine.migration(previous.customer_segments, bundled.customer_segments, grid)
    history = pd.concat(
        [r.segment_analytics.assign(week=w) for w, r in (("a", previous), ("b", bundled))]
    )
    drawn = [
        pictures.segment_sizes(bundled.segment_analytics),
        pictures.score_heatmaps(engine.score_grid(bundled.customer_segments), 5),
        pictures.distributions(engine.histograms(bundled.rfm_metrics)),
        pictures.migration_heatmap(migration, [e.name for e in grid.segments]),
        pictures.migration_heatmap(migration.iloc[:0], [e.name for e in grid.segments]),
        pictures.share_trend(history[["week", "segment", "customer_share"]]),
    ]
    for png in drawn:
        assert png_size(png) == (pictures.WIDTH, pictures.HEIGHT)
        assert 5_000 < len(png) < 200_000  # small enough for asset metadata
        assert image_of(pictures.markdown_image(png, "x")) == png


def test_the_numbers_behind_the_pictures_equal_the_tables(bundled):
    engine = PandasEngine()
    segments = bundled.customer_segments
    grid = engine.score_grid(segments)
    assert grid["customers"].sum() == len(segments)
    for row in grid.itertuples(index=False):
        cell = segments[
            (segments["R_score"] == row.R_score) & (segments["FM_score"] == row.FM_score)
        ]
        assert row.customers == len(cell)
        assert row.revenue == pytest.approx(cell["monetary"].sum(), rel=1e-12)
    for name, (counts, edges) in engine.histograms(bundled.rfm_metrics).items():
        values = bundled.rfm_metrics[name].to_numpy(dtype=float)
        assert counts.sum() == len(values)
        assert edges[0] == values.min() or name != "recency"
        assert np.all(np.diff(edges) > 0)


def test_the_weekly_graph_shows_its_pictures_in_the_metadata(tmp_path):
    for week in ("2011-11-21", "2011-11-28"):
        result = materialize_bundled_week(tmp_path / "store", week)
    shown = {
        "rfm_metrics": ["distributions"],
        "segment_analytics": ["segment_sizes", "score_heatmaps", "share_trend"],
        "segment_migration": ["movement"],
    }
    for asset, keys in shown.items():
        metadata = result.asset_materializations_for_node(asset)[0].metadata
        for key in keys:
            png = image_of(metadata[key].value)
            assert png_size(png) == (pictures.WIDTH, pictures.HEIGHT), (asset, key)


def test_pictures_off_draws_none_and_changes_nothing_else(tmp_path):
    """`pictures: false` (what the command line runs) leaves out exactly the pictures: every
    other metadata entry and every stored table stay as they are."""
    plain_settings = RFMSettings(pictures=False)
    for week in ("2011-11-21", "2011-11-28"):
        drawn = materialize_bundled_week(tmp_path / "drawn", week)
        plain = materialize_bundled_week(tmp_path / "plain", week, settings=plain_settings)
    for asset in ("rfm_metrics", "rfm_scores", "customer_segments", "segment_analytics",
                  "segment_migration", "slipping_customers"):  # fmt: skip
        with_pictures = drawn.asset_materializations_for_node(asset)[0].metadata
        without = plain.asset_materializations_for_node(asset)[0].metadata
        picture_keys = {k for k, v in with_pictures.items() if "data:image/png" in str(v.value)}
        assert set(without) == set(with_pictures) - picture_keys, asset
        assert not any("data:image/png" in str(v.value) for v in without.values()), asset
        if asset in ("rfm_metrics", "segment_analytics", "segment_migration"):
            assert picture_keys, asset
    for table in ("customer_segments", "segment_analytics", "segment_migration"):
        for week in ("2011-11-21", "2011-11-28"):
            # The version a week's CURRENT names (file names differ from store to store).
            drawn_table, plain_table = (
                pd.read_parquet(folder / (folder / "CURRENT").read_text().strip())
                for folder in (tmp_path / s / table / week for s in ("drawn", "plain"))
            )
            pd.testing.assert_frame_equal(
                drawn_table.drop(columns="segmented_at", errors="ignore"),
                plain_table.drop(columns="segmented_at", errors="ignore"),
            )


def test_run_draws_pictures_only_when_asked_and_keeps_every_other_setting(tmp_path):
    """`rfm_assets.run` (the command line) draws no pictures unless asked, whatever the
    settings say, and runs with the rest of the settings as given."""
    source = tmp_path / "tx.csv"
    pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "a", "d"],
            "transaction_date": ["2024-01-01", "2024-01-05", "2024-02-01", "2024-02-03",
                                 "2023-12-12"],
            "amount": [10.0, 20, 30, 5, 7],
        }
    ).to_csv(source, index=False)  # fmt: skip
    settings = RFMSettings(
        input_path=str(source), weights={"recency": 2}, scoring_method="quartiles"
    )
    assert settings.pictures  # the settings' default: draw them
    for asked in (False, True):
        result = run(settings, pictures=asked)
        drawn = {key for meta in result.metadata.values() for key, value in meta.items()
                 if "data:image/png" in str(value)}  # fmt: skip
        assert bool(drawn) == asked, drawn
        assert result.metadata["rfm_scores"]["rfm/context"]["weights"]["recency"] == 2.0
        assert len(result.thresholds["recency"]) == 3  # quartiles: 4 scores, 3 cut points


def test_a_picture_is_drawn_once_per_set_of_numbers(bundled, monkeypatch):
    """The report reuses the PNG the UI showed for the same numbers, and different numbers
    draw a different picture."""
    calls = []
    original = pictures._segment_sizes
    monkeypatch.setattr(pictures, "_DRAWN", {})
    monkeypatch.setattr(pictures, "_segment_sizes", lambda a: calls.append(1) or original(a))
    analytics = bundled.segment_analytics
    first = pictures.segment_sizes(analytics)
    again = pictures.segment_sizes(analytics.sample(frac=1.0, random_state=1))
    assert again == first and len(calls) == 1
    changed = analytics.assign(customers=analytics["customers"] + 1)
    assert pictures.segment_sizes(changed) != first and len(calls) == 2
