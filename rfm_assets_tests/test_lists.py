"""Customer lists: the tie-safe high-value list against a plain count, the asset, the CLI."""

import numpy as np
import pandas as pd
import pytest

from rfm_assets import identify_high_value_customers
from rfm_assets.cli import main
from rfm_assets.errors import RFMConfigError


def plain_top(values: dict, share: float) -> dict:
    """customer -> rank, for customers with fewer than share * n strictly greater values."""
    n = len(values)
    chosen = {}
    for customer, value in values.items():
        greater = sum(1 for other in values.values() if other > value)
        if greater < share * n:
            chosen[customer] = greater + 1
    return chosen


def test_ties_at_the_cut_are_all_in():
    df = pd.DataFrame({"customer_id": [1, 2, 3, 4, 5, 6],
                       "monetary": [9.0, 10.0, 9.0, 9.0, 5.0, 1.0]})  # fmt: skip
    top = identify_high_value_customers(df, top_percentage=0.2)
    # 20% of 6 is 1.2: the 10 and all three 9s (one customer above them) are in.
    assert list(top["customer_id"]) == [2, 1, 3, 4]
    assert list(top["high_value_rank"]) == [1, 2, 2, 2]
    shuffled = df.sample(frac=1, random_state=3)
    pd.testing.assert_frame_equal(identify_high_value_customers(shuffled, 0.2), top)


@pytest.mark.parametrize("share, by", [(0.2, "monetary"), (0.05, "RFM_score"), (1.0, "monetary")])
def test_high_value_list_equals_a_plain_count(share, by):
    rng = np.random.default_rng(4)
    df = pd.DataFrame(
        {
            "customer_id": np.arange(500),
            "monetary": rng.integers(1, 60, 500).astype(float),  # many ties
            "RFM_score": rng.integers(3, 16, 500) / 3,
        }
    )
    top = identify_high_value_customers(df, top_percentage=share, by=by)
    expected = plain_top(dict(zip(df["customer_id"], df[by])), share)
    assert dict(zip(top["customer_id"], top["high_value_rank"])) == expected
    assert len(top) >= int(share * len(df))


def test_bad_arguments_name_the_setting():
    df = pd.DataFrame({"customer_id": [1], "monetary": [1.0]})
    with pytest.raises(RFMConfigError, match="high_value_share: must be a share in"):
        identify_high_value_customers(df, top_percentage=20)
    with pytest.raises(RFMConfigError, match="high_value_by: 'frequency' is not one of"):
        identify_high_value_customers(df, by="frequency")


def test_cli_writes_the_list_only_when_asked(tmp_path, capsys):
    plain = tmp_path / "plain"
    assert main(["analyze", "--output", str(plain)]) == 0
    assert not (plain / "high_value_customers.parquet").exists()
    assert "high_value_customers" not in capsys.readouterr().out
    output = tmp_path / "out"
    assert main(["analyze", "--output", str(output), "--high-value", "0.1",
                 "--high-value-by", "RFM_score"]) == 0  # fmt: skip
    wrote = capsys.readouterr().out.strip().splitlines()[-1]
    assert wrote.startswith("wrote ") and "high_value_customers.parquet" in wrote
    written = pd.read_parquet(output / "high_value_customers.parquet")
    segments = pd.read_parquet(output / "customer_segments.parquet")
    expected = plain_top(dict(zip(segments["customer_id"], segments["RFM_score"])), 0.1)
    assert dict(zip(written["customer_id"], written["high_value_rank"])) == expected
    assert 0.1 * len(segments) <= len(written) < 0.2 * len(segments)


def test_analyze_writes_each_segments_strategy_and_budget_share(tmp_path):
    """segment_strategies.json: the catalog's goal, channel and campaign per segment, and
    budget shares recomputed here from the written segment_analytics and the weights."""
    import json

    from rfm_assets.cli import main as cli_main
    from rfm_assets.segments import default_catalog

    output = tmp_path / "out"
    assert cli_main(["analyze", "--strategies", "--output", str(output)]) == 0
    strategies = json.loads((output / "segment_strategies.json").read_text())
    analytics = pd.read_parquet(output / "segment_analytics.parquet")
    catalog = default_catalog()
    sizes = dict(zip(analytics["segment"], analytics["customers"]))
    weighted = {name: catalog[name].budget_weight * n for name, n in sizes.items() if n}
    assert [s["segment"] for s in strategies] == sorted(
        weighted, key=lambda name: catalog[name].priority
    )
    for strategy in strategies:
        entry = catalog[strategy["segment"]]
        assert (strategy["goal"], strategy["channel"], strategy["campaign"]) == (
            entry.goal, entry.channel, entry.campaign,
        )  # fmt: skip
        assert strategy["goal"] and strategy["channel"] and strategy["campaign"]
        assert strategy["customers"] == sizes[strategy["segment"]]
        expected = weighted[strategy["segment"]] / sum(weighted.values())
        assert strategy["budget_share"] == pytest.approx(expected, rel=1e-12)
    assert sum(s["budget_share"] for s in strategies) == pytest.approx(1.0)
    champions, lost = (next(s for s in strategies if s["segment"] == n)
                       for n in ("Champions", "Lost"))  # fmt: skip
    # per customer, a champion weighs 20 times a lost customer
    per_customer = [s["budget_share"] / s["customers"] for s in (champions, lost)]
    assert per_customer[0] / per_customer[1] == pytest.approx(20.0)
