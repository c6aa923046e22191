"""Customer-level input (input_level: customers): engine against the oracle, and against the
transaction run it can be derived from."""

import csv
import datetime as dt
import random
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from rfm_assets import run
from rfm_assets.assets import RFM_ASSETS
from rfm_assets.contract import CUSTOMER_ROW_EXCLUSIONS
from rfm_assets.errors import RFMError
from rfm_assets.settings import RFMSettings
from rfm_assets_tests.conftest import assert_matches_oracle, rfm_resources, stored_frame
from rfm_assets_tests.oracle import customer_oracle

REFERENCE = dt.date(2024, 6, 10)
RULES_OVER_F_AND_M = Path(__file__).parent / "data" / "rules_f_and_m.yaml"


def messy_customer_rows(count: int, seed: int, by_date: bool, with_first: bool) -> list[dict]:
    """Customer rows with heavy ties and every kind of bad value, as Python values."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        recency = rng.choice(
            [0, 1, 3, 7, 7, 14, 30, 30, 60, 90, 180, 365, 400, rng.randint(0, 700)]
        )
        last = REFERENCE - dt.timedelta(days=recency)
        row = {
            "customer_id": rng.choice([f"C{i:05d}"] * 40 + [f" C{i:05d} ", None, ""]),
            "frequency": rng.choice([1, 1, 1, 2, 2, 3, 5, 8, rng.randint(1, 40)] + [0, 1.5, None]),
            "monetary": rng.choice(
                [19.99, 19.99, 50.0, 120.5, round(rng.uniform(1, 5000), 2)] * 3
                + [0.0, -12.0, None, float("nan"), float("inf")]
            ),
        }
        if by_date:
            row["last_purchase_date"] = rng.choice([last] * 30 + [None, dt.date(9999, 12, 31)])
        else:
            row["recency"] = rng.choice([recency] * 30 + [None, -3, 2.5, 99999, float("nan")])
        if with_first:
            first = last - dt.timedelta(days=rng.choice([0, 0, 10, 45, 200, rng.randint(0, 900)]))
            row["first_purchase_date"] = rng.choice(
                [first] * 30 + [None, last + dt.timedelta(days=1), dt.date(1800, 1, 1)]
            )
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


CASES = {
    "recency, quintiles": dict(by_date=False, with_first=False, settings={}),
    "recency and first dates, quartiles, weights, filters": dict(
        by_date=False,
        with_first=True,
        settings={
            "scoring_method": "quartiles",
            "weights": {"recency": 3, "frequency": 1, "monetary": 1},
            "min_frequency": 2,
            "exclude_recent_days": 60,
        },
    ),
    "last purchase dates, rules over F and M": dict(
        by_date=True,
        with_first=True,
        settings={"segment_rules": str(RULES_OVER_F_AND_M)},
    ),
    "last purchase dates, window, explicit reference date": dict(
        by_date=True,
        with_first=False,
        settings={"analysis_period_days": 120, "reference_date": "2024-06-01"},
    ),
}


def customer_settings(path: Path, by_date: bool, with_first: bool, extra: dict) -> dict:
    columns = {}
    if by_date:
        columns["last_purchase_date"] = "last_purchase_date"
    if with_first:
        columns["first_purchase_date"] = "first_purchase_date"
    settings = {"input_path": str(path), "input_level": "customers", "columns": columns, **extra}
    if not by_date:
        settings.setdefault("reference_date", REFERENCE.isoformat())
    return settings


def oracle_arguments(settings: RFMSettings) -> dict:
    rules = None
    if settings.rule_set_source.endswith(".yaml"):
        rules = yaml.safe_load(Path(settings.rule_set_source).read_text())["rules"]
    return dict(
        reference_date=settings.parsed_reference_date,
        analysis_period_days=settings.analysis_period_days,
        scale=settings.scale,
        weights=settings.weight_tuple(),
        rules=rules,
        min_frequency=settings.min_frequency,
        exclude_recent_days=settings.exclude_recent_days,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_messy_customer_rows_match_the_oracle(name, tmp_path):
    case = CASES[name]
    rows = messy_customer_rows(3_000, seed=len(name), by_date=case["by_date"],
                               with_first=case["with_first"])  # fmt: skip
    path = write_csv(rows, tmp_path / "customers.csv")
    settings = RFMSettings(**customer_settings(path, case["by_date"], case["with_first"],
                                               case["settings"]))  # fmt: skip
    result = run(settings)
    expected, excluded = customer_oracle(rows, **oracle_arguments(settings))
    assert_matches_oracle(result.customer_segments, expected)
    account = result.account
    assert list(account.rows_excluded) == list(CUSTOMER_ROW_EXCLUSIONS)
    assert {k: v for k, v in account.rows_excluded.items() if v} == {
        k: v for k, v in excluded.items() if not k.startswith("customers:")
    }
    assert account.rows_read == len(rows) == account.rows_kept + sum(account.rows_excluded.values())
    held_out = {k.split(":")[1]: v for k, v in excluded.items() if k.startswith("customers:")}
    assert {k: v for k, v in result.customers_held_out.items() if v} == held_out
    # The messy values really were there, and some customers of every kind survived.
    assert sum(account.rows_excluded.values()) > 300
    assert len(expected) > 300


@pytest.mark.parametrize("by", ["recency", "last_purchase_date"])
def test_customer_table_of_a_transaction_run_scores_the_same(tmp_path, by):
    """The bundled transactions, summarised to one row per customer, score and segment
    exactly as the transaction run does."""
    from_transactions = run(RFMSettings())
    segments = from_transactions.customer_segments
    table = segments[["customer_id", by, "first_purchase_date", "frequency", "monetary"]]
    path = tmp_path / "customers.parquet"
    table.to_parquet(path)
    columns = {"first_purchase_date": "first_purchase_date"}
    if by == "last_purchase_date":
        columns["last_purchase_date"] = "last_purchase_date"
    from_customers = run(
        RFMSettings(
            input_path=str(path),
            input_level="customers",
            columns=columns,
            reference_date=from_transactions.account.reference_date.isoformat(),
        )
    )
    assert sum(from_customers.account.rows_excluded.values()) == 0
    got = from_customers.customer_segments.drop(columns="segmented_at")
    want = segments.drop(columns="segmented_at")
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert from_customers.thresholds == from_transactions.thresholds


def test_customer_level_graph_in_dagster(tmp_path):
    rows = messy_customer_rows(500, seed=3, by_date=False, with_first=True)
    path = write_csv(rows, tmp_path / "customers.csv")
    settings = RFMSettings(**customer_settings(path, False, True, {}))
    base = tmp_path / "store"
    result = dg.materialize(
        RFM_ASSETS, resources=rfm_resources(settings, base),
        instance=dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    assert result.success
    metadata = result.asset_materializations_for_node("transactions")[0].metadata
    assert metadata["input_level"].value == "customers"
    assert set(metadata["rows_excluded"].value) == set(CUSTOMER_ROW_EXCLUSIONS)
    assert "invalid_recency" in metadata["exclusion_rules"].value
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks if c.severity == dg.AssetCheckSeverity.ERROR)
    stored = stored_frame(base, "customer_segments").drop(columns="segmented_at")
    direct = run(settings).customer_segments.drop(columns="segmented_at")
    pd.testing.assert_frame_equal(stored, direct, check_dtype=False, check_categorical=False)


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"columns": {"amount": "spend"}},
            r"columns.amount: not used with input_level 'customers'",
        ),
        (
            {"columns": {"recency": "r", "last_purchase_date": "d"}},
            r"columns: map either recency or last_purchase_date, not both",
        ),
        (
            {"exclude_recent_days": 30},
            r"exclude_recent_days: customer-level input needs a first purchase date",
        ),
    ],
)
def test_customer_level_settings_refused_with_the_field(settings, message, tmp_path):
    with pytest.raises(Exception, match=message):
        RFMSettings(input_path=str(tmp_path / "x.csv"), input_level="customers", **settings)


def test_customer_level_without_input_path_names_it():
    with pytest.raises(RFMError, match=r"^input_path: required with input_level 'customers'"):
        run(RFMSettings(input_level="customers", reference_date="2024-01-01"))


def test_transaction_settings_refuse_customer_columns():
    with pytest.raises(Exception, match=r"columns.frequency: not used with input_level"):
        RFMSettings(columns={"frequency": "orders"})


def test_weekly_partitions_count_recency_to_the_week_end(tmp_path):
    from rfm_assets.component import build_rfm_definitions
    from rfm_assets.io_manager import RFMParquetIOManager

    rows = messy_customer_rows(400, seed=9, by_date=True, with_first=False)
    path = write_csv(rows, tmp_path / "customers.csv")
    settings = RFMSettings(**customer_settings(path, True, False, {}))
    definitions = build_rfm_definitions(settings, weeks_start="2024-05-06", weeks_end="2024-06-17")
    resources = dict(definitions.resources)
    resources["io_manager"] = RFMParquetIOManager(base_dir=str(tmp_path / "store"))
    result = dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        partition_key="2024-05-27",
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    metadata = result.asset_materializations_for_node("transactions")[0].metadata
    assert metadata["reference_date"].value == "2024-06-03"  # the week's exclusive end
    expected, excluded = customer_oracle(rows, reference_date=dt.date(2024, 6, 3))
    assert excluded["on_or_after_reference_date"] > 0
    wanted = {reason: excluded.get(reason, 0) for reason in CUSTOMER_ROW_EXCLUSIONS}
    assert metadata["rows_excluded"].value == wanted
    segments = stored_frame(tmp_path / "store" / "customer_segments", "2024-05-27")
    assert_matches_oracle(segments, expected)
    assert segments["last_purchase_date"].max() < pd.Timestamp("2024-06-03")
    assert segments["recency"].min() >= 1


def test_cli_scores_a_crm_export(tmp_path, capsys):
    import json

    from rfm_assets.cli import main

    export = tmp_path / "crm_export.csv"
    export.write_text(
        "id,days_since_last_order,orders,spend\n"
        "a,3,5,500\nb,40,1,20\nc,,2,30\nd,200,2,80\ne,10,0,15\n"
    )
    code = main(["analyze", "--input-level", "customers", "--input", str(export),
                 "--reference-date", "2024-06-10", "--customer-id", "id",
                 "--recency", "days_since_last_order", "--frequency", "orders",
                 "--monetary", "spend", "--output", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith("5 customer rows read, 3 kept, 2 excluded; 3 customers")
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["input_level"] == "customers"
    assert summary["rows_excluded"]["invalid_recency"] == 1
    assert summary["rows_excluded"]["invalid_frequency"] == 1
    segments = pd.read_parquet(tmp_path / "out" / "customer_segments.parquet")
    assert sorted(segments["customer_id"]) == ["a", "b", "d"]
    assert segments.set_index("customer_id").loc["a", "recency"] == 3
