"""Segment movement between weeks: segment_migration and slipping_customers, against a plain
loop, in the weekly Dagster graph and on the command line."""

import datetime as dt
from collections import defaultdict

import dagster as dg
import pandas as pd
import pytest

from rfm_assets import run
from rfm_assets.cli import main
from rfm_assets.engines.dispatch import PandasEngine
from rfm_assets.settings import RFMSettings
from rfm_assets.synthetic import generate_transactions
from rfm_assets_tests.conftest import materialize_bundled_week

SLIPPING = {"At Risk", "Cannot Lose Them"}
LAPSED = {"Hibernating", "Lost"}


def plain_migration(previous: pd.DataFrame, current: pd.DataFrame) -> dict:
    """(from, to) -> [customers, revenue micro-units], by a loop over customers."""
    before = {row.customer_id: row for row in previous.itertuples(index=False)}
    now = {row.customer_id: row for row in current.itertuples(index=False)}
    table = defaultdict(lambda: [0, 0])
    for customer in set(before) | set(now):
        source = before[customer].segment if customer in before else "(new)"
        target = now[customer].segment if customer in now else "(lapsed)"
        value = now[customer].monetary if customer in now else before[customer].monetary
        table[(str(source), str(target))][0] += 1
        table[(str(source), str(target))][1] += round(value * 1_000_000)
    return dict(table)


def plain_slipping(previous: pd.DataFrame, current: pd.DataFrame) -> dict:
    """customer -> previous segment, for those who moved from an engaged segment (neither
    slipping nor lapsed) into a slipping one."""
    before = {row.customer_id: str(row.segment) for row in previous.itertuples(index=False)}
    return {
        row.customer_id: before[row.customer_id]
        for row in current.itertuples(index=False)
        if str(row.segment) in SLIPPING
        and row.customer_id in before
        and before[row.customer_id] not in SLIPPING | LAPSED
    }


def as_dict(migration: pd.DataFrame) -> dict:
    return {
        (row.from_segment, row.to_segment): [row.customers, round(row.revenue * 1_000_000)]
        for row in migration.itertuples(index=False)
    }


@pytest.fixture(scope="module")
def two_weeks(tmp_path_factory):
    """Two runs a week apart with a 120-day window, so customers both arrive and lapse."""
    path = tmp_path_factory.mktemp("movement") / "tx.parquet"
    generate_transactions(20_000, customers=2_000, seed=4).to_parquet(path)
    runs = [
        run(
            RFMSettings(
                input_path=str(path),
                columns={"order_id": "order_id"},
                reference_date=day,
                analysis_period_days=120,
            )
        ).customer_segments
        for day in ("2024-11-04", "2024-11-11")
    ]
    return runs


def test_migration_matches_the_loop_and_its_margins_are_both_weeks(two_weeks):
    previous, current = two_weeks
    grid = RFMSettings().rule_set()
    migration = PandasEngine().migration(previous, current, grid)
    assert as_dict(migration) == plain_migration(previous, current)
    assert list(migration.columns) == ["from_segment", "to_segment", "customers", "revenue"]
    out_of = migration[migration["from_segment"] != "(new)"].groupby("from_segment")["customers"]
    into = migration[migration["to_segment"] != "(lapsed)"].groupby("to_segment")["customers"]
    assert out_of.sum().to_dict() == previous["segment"].astype(str).value_counts().to_dict()
    assert into.sum().to_dict() == current["segment"].astype(str).value_counts().to_dict()
    # The window makes customers arrive and leave; several segments trade customers.
    assert (migration["from_segment"] == "(new)").any()
    assert (migration["to_segment"] == "(lapsed)").any()
    assert (migration["from_segment"] != migration["to_segment"]).sum() > 10
    # Ordered by segment priority, (new) and (lapsed) last.
    order = [entry.name for entry in grid.segments] + ["(new)"]
    ranks = [order.index(name) for name in migration["from_segment"]]
    assert ranks == sorted(ranks)


def test_slipping_customers_match_the_loop_and_come_most_valuable_first(two_weeks):
    previous, current = two_weeks
    grid = RFMSettings().rule_set()
    slipping = PandasEngine().slipping(previous, current, grid)
    want = plain_slipping(previous, current)
    assert len(want) > 0
    assert dict(zip(slipping["customer_id"], slipping["previous_segment"])) == want
    assert slipping["monetary"].is_monotonic_decreasing
    assert set(slipping["segment"].astype(str)) <= SLIPPING


def test_weeks_with_different_id_types_still_match_by_id(two_weeks):
    previous, current = two_weeks
    as_text = previous.assign(customer_id=previous["customer_id"].astype("str"))
    grid = RFMSettings().rule_set()
    engine = PandasEngine()
    assert as_dict(engine.migration(as_text, current, grid)) == as_dict(
        engine.migration(previous, current, grid)
    )


def test_migration_revenue_is_exact_beyond_the_int64_range():
    """Each customer's monetary fits int64 micro-units; a segment's total may not."""
    big = 9_000_000_000_000.25  # 9e18 micro-units: two of them pass 2**63
    previous = pd.DataFrame(
        {"customer_id": ["a", "b", "c"], "segment": ["Champions"] * 3, "monetary": [big, big, 1.5]}
    )
    current = pd.DataFrame(
        {"customer_id": ["a", "b", "d"], "segment": ["Champions"] * 3, "monetary": [big, big, 2.0]}
    )
    migration = PandasEngine().migration(previous, current, RFMSettings().rule_set())
    want = plain_migration(previous, current)
    assert want[("Champions", "Champions")][1] > 2**63  # an int64 sum would wrap around
    got = migration.set_index(["from_segment", "to_segment"])
    assert {pair: int(got.loc[pair, "customers"]) for pair in want} == {
        pair: customers for pair, (customers, _) in want.items()
    }
    assert {pair: float(got.loc[pair, "revenue"]) for pair in want} == {
        pair: micro / 1_000_000 for pair, (_, micro) in want.items()
    }


WEEKS = ("2011-10-31", "2011-12-12")  # the weeks of conftest.materialize_bundled_week
materialize_week = materialize_bundled_week


def stored(store, asset: str, week: str) -> pd.DataFrame:
    location = store / asset / week
    return pd.read_parquet(location / (location / "CURRENT").read_text().strip())


def test_bundled_data_two_weeks_apart_in_the_weekly_graph(tmp_path):
    store = tmp_path / "store"
    first = materialize_week(store, "2011-11-21")
    metadata = first.asset_materializations_for_node("segment_migration")[0].metadata
    assert metadata["previous"].value.startswith("no previous week")
    assert stored(store, "segment_migration", "2011-11-21").empty
    assert stored(store, "slipping_customers", "2011-11-21").empty

    second = materialize_week(store, "2011-12-05")  # two weeks later: 11-28 was never run
    metadata = second.asset_materializations_for_node("segment_migration")[0].metadata
    assert metadata["previous"].value.startswith("no previous week: customer_segments of week")
    third = materialize_week(store, "2011-11-28")
    metadata = third.asset_materializations_for_node("segment_migration")[0].metadata
    assert metadata["previous"].value == "week 2011-11-21"
    checks = {c.check_name: c for c in third.get_asset_check_evaluations()}
    assert checks["margins_match_both_weeks"].passed

    before = stored(store, "customer_segments", "2011-11-21")
    after = stored(store, "customer_segments", "2011-11-28")
    migration = stored(store, "segment_migration", "2011-11-28")
    assert as_dict(migration) == plain_migration(before, after)
    out_of = migration[migration["from_segment"] != "(new)"].groupby("from_segment")["customers"]
    into = migration[migration["to_segment"] != "(lapsed)"].groupby("to_segment")["customers"]
    assert out_of.sum().to_dict() == before["segment"].value_counts().to_dict()
    assert into.sum().to_dict() == after["segment"].value_counts().to_dict()
    assert metadata["customers_new"].value == len(
        set(after["customer_id"]) - set(before["customer_id"])
    )
    slipping = stored(store, "slipping_customers", "2011-11-28")
    assert dict(zip(slipping["customer_id"], slipping["previous_segment"])) == plain_slipping(
        before, after
    )


def test_a_broken_margin_fails_the_blocking_check(tmp_path, monkeypatch):
    store = tmp_path / "store"
    materialize_week(store, "2011-11-21")
    original = PandasEngine.migration

    def drop_a_row(self, previous, current, grid):
        return original(self, previous, current, grid).iloc[1:]

    monkeypatch.setattr(PandasEngine, "migration", drop_a_row)
    result = materialize_bundled_week(store, "2011-11-28", raise_on_error=False)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["margins_match_both_weeks"].passed
    assert not (store / "segment_migration" / "2011-11-28" / "CURRENT").exists()


def test_a_second_cli_run_into_the_same_output_writes_the_movement(tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["analyze", "--reference-date", "2011-11-28", "--output", str(output)]) == 0
    assert "no previous result" in capsys.readouterr().out
    assert not (output / "segment_migration.parquet").exists()
    assert main(["analyze", "--reference-date", "2011-12-05", "--output", str(output),
                 "--format", "csv"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "since the previous result:" in printed
    migration = pd.read_csv(output / "segment_migration.csv")
    before = run(RFMSettings(reference_date="2011-11-28")).customer_segments
    after = run(RFMSettings(reference_date="2011-12-05")).customer_segments
    assert as_dict(migration) == plain_migration(before, after)
    slipping = pd.read_csv(output / "slipping_customers.csv")
    assert set(slipping["customer_id"]) == set(plain_slipping(before, after))
    assert f"{len(slipping):,} slipped" in printed


def test_the_first_week_of_the_partitions_says_so(tmp_path):
    result = materialize_week(tmp_path / "store", WEEKS[0])
    metadata = result.asset_materializations_for_node("segment_migration")[0].metadata
    assert (
        metadata["previous"].value == "no previous week: this is the first week of the partitions"
    )
    assert metadata["customers_moved"].value == 0


def test_unpartitioned_graph_compares_with_the_value_it_replaced(tmp_path):
    from rfm_assets.assets import RFM_ASSETS
    from rfm_assets_tests.conftest import rfm_resources, stored_frame

    store = tmp_path / "store"
    runs = []
    for day in ("2011-11-28", "2011-12-05"):
        result = dg.materialize(
            RFM_ASSETS,
            resources=rfm_resources(RFMSettings(reference_date=day), store),
            instance=dg.DagsterInstance.ephemeral(),
        )
        runs.append(result.asset_materializations_for_node("segment_migration")[0].metadata)
        if day == "2011-11-28":
            before = stored_frame(store, "customer_segments")
    assert runs[0]["previous"].value.startswith("no previous customer_segments")
    assert runs[1]["previous"].value == "the customer_segments this run replaced"
    after = stored_frame(store, "customer_segments")
    assert as_dict(stored_frame(store, "segment_migration")) == plain_migration(before, after)
    assert dt.date.fromisoformat("2011-12-05")  # both runs were on the bundled data
