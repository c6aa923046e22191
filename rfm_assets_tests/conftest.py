import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from rfm_assets.io_manager import RFMStore

DATA_DIR = Path(__file__).parent / "data"
CDNOW = DATA_DIR / "cdnow_master.parquet"
FIXED_TIME = pd.Timestamp("2024-01-01", tz="UTC")


def run_on_frame(
    frame: pd.DataFrame,
    reference_date=None,
    analysis_period_days=None,
    returns_policy="exclude",
    cancelled_order_prefix="C",
    scale=5,
    weights=(1.0, 1.0, 1.0),
    fixed=None,
    rule_set="rfm_grid",
    min_frequency=None,
    exclude_recent_days=None,
):
    """A canonical frame through the graph (rfm_assets.run), settings as the arguments say:
    (customer_segments, the row account)."""
    from rfm_assets import run
    from rfm_assets.settings import RFMSettings

    settings = RFMSettings(
        columns={"order_id": "order_id"} if "order_id" in frame else {},
        reference_date=reference_date.isoformat() if reference_date else None,
        analysis_period_days=analysis_period_days,
        returns_policy=returns_policy,
        cancelled_order_prefix=cancelled_order_prefix,
        scoring_method="fixed" if fixed else {5: "quintiles", 4: "quartiles"}[scale],
        fixed_thresholds=fixed,
        weights=dict(zip(("recency", "frequency", "monetary"), weights)),
        segment_rules=rule_set,
        min_frequency=min_frequency,
        exclude_recent_days=exclude_recent_days,
    )
    result = run(settings, source=frame, segmented_at=FIXED_TIME.to_pydatetime())
    return result.customer_segments, result.account


def frame_of(rows: list[dict]) -> pd.DataFrame:
    """A canonical frame from oracle-style rows (customer_id, date, amount[, order_id])."""
    frame = pd.DataFrame(
        {
            "customer_id": [r["customer_id"] for r in rows],
            "transaction_date": pd.to_datetime([r["date"] for r in rows]),
            "amount": [r["amount"] for r in rows],
        }
    )
    if rows and "order_id" in rows[0]:
        frame["order_id"] = pd.array([r["order_id"] for r in rows], dtype="str")
    if frame["customer_id"].map(lambda v: isinstance(v, str)).any():
        frame["customer_id"] = frame["customer_id"].astype("str")
    else:
        frame["customer_id"] = frame["customer_id"].astype("Int64")
    return frame


ORACLE_COLUMNS = [
    "recency",
    "frequency",
    "monetary",
    "tenure_days",
    "customer_lifetime_days",
    "purchase_frequency_per_month",
    "R_score",
    "F_score",
    "M_score",
    "FM_score",
    "RFM_score",
    "rfm_cell",
    "segment",
]


def assert_matches_oracle(result: pd.DataFrame, expected: dict) -> None:
    """Customer for customer, every oracle value equals the engine's (floats exactly)."""
    assert result["customer_id"].is_unique
    got = {row["customer_id"]: row for row in result.to_dict("records")}
    assert set(got) == set(expected), (
        f"customers differ: only engine {sorted(set(got) - set(expected))[:5]}, "
        f"only oracle {sorted(set(expected) - set(got))[:5]}"
    )
    mismatches = []
    for customer, want in expected.items():
        have = got[customer]
        for column in ORACLE_COLUMNS:
            if want[column] is None:  # the oracle has no value: the engine's must be null
                same = pd.isna(have[column])
            else:
                same = not pd.isna(have[column]) and have[column] == want[column]
            if not same:
                mismatches.append((customer, column, have[column], want[column]))
        for column in ("first_purchase_date", "last_purchase_date"):
            value = None if pd.isna(have[column]) else have[column].date()
            if value != want[column]:
                mismatches.append((customer, column, have[column], want[column]))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"


def parquet_rows(path, columns: dict[str, str], amount_from=None) -> list[dict]:
    """Oracle rows straight from a Parquet file with pyarrow, no pandas in between."""
    table = pq.read_table(path).to_pydict()
    n = len(next(iter(table.values())))
    rows = []
    for i in range(n):
        row = {key: table[source][i] for key, source in columns.items()}
        if amount_from:
            row["amount"] = table[amount_from[0]][i] * table[amount_from[1]][i]
        rows.append(row)
    return rows


@pytest.fixture(autouse=True)
def tmp_dagster_home(tmp_path, monkeypatch):
    """Every test gets its own DAGSTER_HOME, so no test reads or writes the user's storage."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("RFM_ASSETS_BASE_DIR", raising=False)
    return home


def rfm_resources(settings, base_dir) -> dict:
    """The code location's resources for a test run: settings, lazy Spark, storage."""
    from rfm_assets.definitions import spark
    from rfm_assets.io_manager import RFMParquetIOManager

    return {
        "rfm_settings": settings,
        "spark": spark,
        "io_manager": RFMParquetIOManager(base_dir=str(base_dir), spark=spark),
    }


def stored_frame(base, asset: str) -> pd.DataFrame:
    """The current stored value of `asset` under the IO manager's `base`."""
    from upath import UPath

    return pd.read_parquet(RFMStore.current_version(UPath(str(base)) / asset).path)


def stored_snapshot(base) -> dict[str, bytes]:
    """asset -> its pointer and the bytes of its current version (pandas versions are files)."""
    snapshot = {}
    for location in Path(base).iterdir():
        if not (location / "CURRENT").exists():  # the HTML report: a file, not a table
            continue
        current = (location / "CURRENT").read_text().strip()
        snapshot[location.name] = current.encode() + (location / current).read_bytes()
    return snapshot


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def materialize_bundled_week(store, week: str, raise_on_error: bool = True, settings=None):
    """One week of the bundled sample through the weekly graph (weeks 2011-10-31 to
    2011-12-12), stored under `store`, as a deployment runs it (default settings unless
    `settings` is given)."""
    import dagster as dg

    from rfm_assets.component import build_rfm_definitions
    from rfm_assets.io_manager import RFMParquetIOManager
    from rfm_assets.settings import RFMSettings

    definitions = build_rfm_definitions(
        settings or RFMSettings(),
        weeks_start="2011-10-31",
        weeks_end="2011-12-12",
        bundled_sample=True,
    )
    resources = dict(definitions.resources)
    resources["io_manager"] = RFMParquetIOManager(base_dir=str(store))
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        partition_key=week,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )
