"""The malformed-input corpus: every case gives its expected one-line error or counts."""

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rfm_assets.contract import EXCLUSION_REASONS
from rfm_assets.errors import RFMError
from rfm_assets.pipeline import run_pandas
from rfm_assets.settings import RFMSettings

CASES = yaml.safe_load((Path(__file__).parent / "corpus" / "malformed.yaml").read_text())


def write_input(case: dict, folder: Path) -> Path:
    """Materialise the case's input in `folder` and return its path."""
    if "csv" in case:
        path = folder / "input.csv"
        path.write_text(case["csv"])
    elif "bytes_hex" in case:
        path = folder / ("input.parquet" if case.get("parquet_file") else "input.csv")
        path.write_bytes(bytes.fromhex(case["bytes_hex"]))
    elif "parquet" in case:
        path = folder / "input.parquet"
        arrays = {}
        for name, column in case["parquet"].items():
            kind = column["type"]
            if kind.startswith("timestamp"):
                unit, _, zone = kind[len("timestamp[") : -1].partition(", tz=")
                # Zoned values are written with their offset; naive ones without.
                parsed = pa.array(column["values"]).cast(
                    pa.timestamp(unit, tz="UTC" if zone else None)
                )
                arrays[name] = parsed.cast(pa.timestamp(unit, tz=zone)) if zone else parsed
            else:
                arrays[name] = pa.array(column["values"], type=pa.type_for_alias(kind))
        pq.write_table(pa.table(arrays), path)
    elif case.get("empty_dir"):
        path = folder / "empty"
        path.mkdir()
    elif case.get("missing"):
        path = folder / "nothing.parquet"
    else:
        raise ValueError(f"corpus case {case['name']!r} has no input")
    return path


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_case(case, tmp_path):
    settings = RFMSettings(input_path=str(write_input(case, tmp_path)), **case.get("settings", {}))
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(RFMError) as error:
            run_pandas(settings)
        message = str(error.value)
        assert re.search(expect["error"], message), message
        assert "\n" not in message
        return
    result = run_pandas(settings)
    account = result.account
    assert account.rows_read == account.rows_kept + sum(account.rows_excluded.values())
    assert set(account.rows_excluded) == set(EXCLUSION_REASONS)
    if "rows_kept" in expect:
        assert account.rows_kept == expect["rows_kept"]
    wanted = {reason: expect.get("excluded", {}).get(reason, 0) for reason in EXCLUSION_REASONS}
    assert account.rows_excluded == wanted
    segments = result.customer_segments
    assert segments["customer_id"].is_unique
    assert len(segments) == result.transactions["customer_id"].nunique()
    if "customers" in expect:
        assert len(segments) == expect["customers"]
    by_id = {str(row["customer_id"]): row for row in segments.to_dict("records")}
    for customer, columns in expect.get("values", {}).items():
        for column, value in columns.items():
            assert by_id[str(customer)][column] == value, (customer, column)
