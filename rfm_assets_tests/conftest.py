import datetime as dt
import functools
import math
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from rfm_assets.io_manager import RFMStore

# The lifetime-value tests fit on CDNOW's 23,570 customers, where PyTensor's compiling of the
# models' C code (about 30 s per process on a fresh machine, each xdist worker paying it)
# costs far more than the fits. FAST_COMPILE leaves most of that out and evaluates the same
# expressions (the tests check the results against the closed forms to 1e-6); the product keeps
# PyTensor's default, which fits 1M customers several times faster (benchmarks/clv_cost.py).
os.environ.setdefault("PYTENSOR_FLAGS", "mode=FAST_COMPILE")

DATA_DIR = Path(__file__).parent / "data"
CDNOW = DATA_DIR / "cdnow_master.parquet"
FIXED_TIME = pd.Timestamp("2024-01-01", tz="UTC")


def pytest_collection_modifyitems(items):
    """Tests marked `heavy` (a half-minute or more of subprocesses or a cluster) go first:
    the two xdist workers take them one each at the start, instead of one worker finishing
    the suite alone with a heavy test drawn last."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


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


@functools.cache
def bundled_oracle() -> tuple[dict, dict]:
    """The oracle on the bundled Online Retail sample under the default cleaning (quantity *
    unit price, orders by InvoiceNo): (customers, excluded), computed once per test process.
    Callers must not change what it returns."""
    from rfm_assets.packaged import BUNDLED_DATASET
    from rfm_assets_tests.oracle import oracle

    rows = parquet_rows(
        BUNDLED_DATASET,
        {"customer_id": "CustomerID", "date": "InvoiceDate", "order_id": "InvoiceNo"},
        amount_from=("Quantity", "UnitPrice"),
    )
    return oracle(rows)


def bundled_oracle_customers() -> int:
    """How many customers the bundled sample has under the default cleaning, by the oracle."""
    return len(bundled_oracle()[0])


def bundled_slice(path: Path, customers: int = 300, with_orders: bool = False,
                  lines_without_id: int = 0) -> Path:  # fmt: skip
    """The lines of the first `customers` customers of the bundled sample (about 75,000 for
    300, with cancelled orders and non-positive amounts among them), and its first
    `lines_without_id` lines without a customer id, written to `path` with the canonical
    column names, so a run needs no column mapping but `order_id`'s when `with_orders`."""
    from rfm_assets.packaged import BUNDLED_DATASET

    rows = pd.read_parquet(BUNDLED_DATASET)
    ids = rows["CustomerID"]
    without_id = ids.isna() & (ids.isna().cumsum() <= lines_without_id)
    rows = rows[ids.isin(ids.dropna().unique()[:customers]) | without_id]
    frame = pd.DataFrame(
        {
            "customer_id": rows["CustomerID"],
            "transaction_date": rows["InvoiceDate"],
            "amount": rows["Quantity"] * rows["UnitPrice"],
        }
    )
    if with_orders:
        frame["order_id"] = rows["InvoiceNo"]
    frame.to_parquet(path, index=False)
    return path


def bundled_slice_settings(folder: Path, lines_without_id: int = 0) -> dict:
    """Run settings for the slice of 300 customers with their orders, written in `folder`."""
    path = bundled_slice(folder / "slice.parquet", with_orders=True,
                         lines_without_id=lines_without_id)  # fmt: skip
    return {"input_path": str(path), "columns": {"order_id": "order_id"}}


# Amounts on exactly half a micro-unit: j / 128 with j odd is j * 7812.5 micro-units, and
# 2.5e-06, 2.0000025, 1.5e-06 and 5e-07 are doubles whose product with 1e6 is exactly .5 too
# (half_micro_expectations checks each). Where the whole part is even, half to even rounds
# down and half up rounds up; the customer 5 rows have odd whole parts (both round up), and
# customer 6's one line is 0.5 micro-units: 0 (not positive, excluded) to even, 1 half up.
HALF_MICRO_ROWS = [
    (1, 1 / 128),  # 7812.5
    (2, 5 / 128),  # 39062.5, three lines
    (2, 5 / 128),
    (2, 5 / 128),
    (3, 1 + 1 / 128),  # 1007812.5
    (3, 3 / 128),  # 23437.5: odd, up either way
    (4, 2.5e-06),  # 2.5
    (4, 2.0000025),  # 2000002.5
    (5, 1.5e-06),  # 1.5: odd, up either way
    (5, 3 / 128),
    (6, 5e-07),  # 0.5
]


def half_micro_frame() -> pd.DataFrame:
    """HALF_MICRO_ROWS as a canonical frame, every line on 2024-03-01."""
    when = dt.datetime(2024, 3, 1)
    return frame_of([{"customer_id": c, "date": when, "amount": a} for c, a in HALF_MICRO_ROWS])


def half_micro_expectations() -> tuple[dict, dict]:
    """customer -> monetary with every line rounded half to even at the micro-unit (the
    contract), and the same rounded half up; customers whose total is not positive left out."""
    to_even, half_up = {}, {}
    for customer, amount in HALF_MICRO_ROWS:
        scaled = amount * 1_000_000
        assert scaled - math.floor(scaled) == 0.5, (amount, scaled)  # exactly on the half
        to_even[customer] = to_even.get(customer, 0) + round(scaled)  # Python: half to even
        half_up[customer] = half_up.get(customer, 0) + math.floor(scaled + 0.5)
    return (
        {c: micro / 1_000_000 for c, micro in to_even.items() if micro > 0},
        {c: micro / 1_000_000 for c, micro in half_up.items() if micro > 0},
    )


def assert_rounded_half_to_even(monetary: dict, account) -> None:
    """The graph's monetary per customer (and its row account) on half_micro_frame are those
    of rounding half to even at the micro-unit, not those of rounding half up."""
    to_even, half_up = half_micro_expectations()
    differ = sorted(c for c in to_even if to_even[c] != half_up.get(c))
    assert differ == [1, 2, 3, 4]  # the data does tell the two roundings apart
    assert 6 in half_up and 6 not in to_even
    assert monetary == to_even, f"got {monetary}, half to even is {to_even}, half up {half_up}"
    assert account.rows_excluded["non_positive_amount"] == 1  # customer 6's 0.5 micro-units
    assert account.rows_kept == len(HALF_MICRO_ROWS) - 1


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
