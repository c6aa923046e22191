"""The gold table: customer_segments as a Delta table users query, replaced atomically.

Read back with deltalake's own reader and compared with the Parquet file the same run wrote.
"""

import importlib.util

import pandas as pd
import pytest
from deltalake import DeltaTable

from rfm_assets.cli import main
from rfm_assets.settings import RFMSettings
from rfm_assets_tests.conftest import materialize_bundled_week


def test_analyze_writes_the_segments_as_a_delta_table_and_replaces_it_whole(tmp_path):
    table = tmp_path / "gold" / "customer_segments"
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["analyze", "--output", str(first), "--output-table", str(table)]) == 0
    written = pd.read_parquet(first / "customer_segments.parquet")
    gold = DeltaTable(str(table))
    pd.testing.assert_frame_equal(gold.to_pandas(), written)
    assert main(["analyze", "--output", str(second), "--output-table", str(table),
                 "--weights", "3,1,1"]) == 0  # fmt: skip
    replaced = DeltaTable(str(table))
    assert replaced.version() == gold.version() + 1  # one commit: readers see old or new
    pd.testing.assert_frame_equal(
        replaced.to_pandas(), pd.read_parquet(second / "customer_segments.parquet")
    )
    # The version before stays readable as it was (time travel), untouched by the rewrite.
    pd.testing.assert_frame_equal(DeltaTable(str(table), version=0).to_pandas(), written)
    scores = [t.sort_values("customer_id")["RFM_score"].to_numpy()
              for t in (replaced.to_pandas(), written)]  # fmt: skip
    assert (scores[0] != scores[1]).any()  # the recency weight moved the weighted score


def test_a_weekly_run_replaces_only_its_own_week(tmp_path):
    table = str(tmp_path / "gold")
    settings = RFMSettings(output_table=table)
    for week in ("2011-11-21", "2011-11-28"):
        materialize_bundled_week(tmp_path / "store", week, settings=settings)
    gold = DeltaTable(table).to_pandas()
    assert sorted(gold["week"].unique()) == ["2011-11-21", "2011-11-28"]
    later = gold[gold["week"] == "2011-11-28"]
    # The week again, with other weights: its rows change, the other week's stay.
    materialize_bundled_week(
        tmp_path / "store", "2011-11-21",
        settings=RFMSettings(output_table=table, weights={"recency": 5, "frequency": 1,
                                                           "monetary": 1}),
    )  # fmt: skip
    again = DeltaTable(table).to_pandas()
    key = ["week", "customer_id"]
    kept = again[again["week"] == "2011-11-28"].sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(kept, later.sort_values(key, ignore_index=True))
    week = again[again["week"] == "2011-11-21"]
    before = gold[gold["week"] == "2011-11-21"]
    assert len(week) == len(before)
    assert (
        not week.sort_values("customer_id")["RFM_score"]
        .reset_index(drop=True)
        .equals(before.sort_values("customer_id")["RFM_score"].reset_index(drop=True))
    )


def test_without_deltalake_the_setting_is_refused_in_one_line(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deltalake" else real(name, *a),
    )
    code = main(["analyze", "--output", str(tmp_path / "o"), "--output-table", str(tmp_path / "t")])
    assert code != 0
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert error.endswith('output_table: needs the deltalake package; pip install '
                          '"rfm_assets[delta]"')  # fmt: skip
    assert not (tmp_path / "o").exists()  # refused before anything ran
    with pytest.raises(Exception, match="output_table: needs the deltalake package"):
        RFMSettings(output_table=str(tmp_path / "t"))
