"""The malformed-input corpus: every case gives its expected one-line error or counts."""

import decimal
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rfm_assets import run
from rfm_assets.contract import exclusion_reasons
from rfm_assets.errors import RFMError
from rfm_assets.settings import RFMSettings

CASES = yaml.safe_load((Path(__file__).parent / "corpus" / "malformed.yaml").read_text())


def arrow_table(columns: dict) -> pa.Table:
    """A table from the corpus's `{column: {type, values}}` form."""
    arrays = {}
    for name, column in columns.items():
        kind = column["type"]
        if kind.startswith("timestamp"):
            unit, _, zone = kind[len("timestamp[") : -1].partition(", tz=")
            # Zoned values are written with their offset; naive ones without.
            parsed = pa.array(column["values"]).cast(pa.timestamp(unit, tz="UTC" if zone else None))
            arrays[name] = parsed.cast(pa.timestamp(unit, tz=zone)) if zone else parsed
        elif kind == "date32":
            arrays[name] = pa.array(column["values"]).cast(pa.timestamp("s")).cast(pa.date32())
        elif kind.startswith("decimal128("):  # values as text, exact
            precision, scale = (int(n) for n in kind[len("decimal128(") : -1].split(","))
            values = [None if v is None else decimal.Decimal(v) for v in column["values"]]
            arrays[name] = pa.array(values, type=pa.decimal128(precision, scale))
        elif kind == "infer":  # nested values (structs, lists) as pyarrow infers them
            arrays[name] = pa.array(column["values"])
        else:
            arrays[name] = pa.array(column["values"], type=pa.type_for_alias(kind))
    return pa.table(arrays)


def write_parquet(columns: dict, path: Path, int96: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(arrow_table(columns), path, use_deprecated_int96_timestamps=int96)


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
        write_parquet(case["parquet"], path, case.get("int96", False))
    elif "files" in case:  # a directory: Parquet files by relative path, other files as text
        path = folder / "input_dir"
        for relative, content in case["files"].items():
            target = path / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                target.write_text(content)
            else:
                write_parquet(content, target, case.get("int96", False))
    elif case.get("empty_dir"):
        path = folder / "empty"
        path.mkdir()
    elif case.get("missing"):
        path = folder / "nothing.parquet"
    elif case.get("fifo"):
        path = folder / "input.csv"
        os.mkfifo(path)
    elif "path" in case:
        path = Path(case["path"])
    else:
        raise ValueError(f"corpus case {case['name']!r} has no input")
    return path


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_corpus_case(case, tmp_path):
    settings = RFMSettings(input_path=str(write_input(case, tmp_path)), **case.get("settings", {}))
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(RFMError) as error:
            run(settings)
        message = str(error.value)
        assert re.search(expect["error"], message), message
        assert "\n" not in message
        return
    result = run(settings)
    account = result.account
    assert account.rows_read == account.rows_kept + sum(account.rows_excluded.values())
    reasons = exclusion_reasons(settings.input_level)
    assert list(account.rows_excluded) == list(reasons)
    for key in ("files_read", "files_skipped"):
        if key in expect:
            assert getattr(account, key) == expect[key], key
    if "reference_date" in expect:
        assert account.reference_date.isoformat() == expect["reference_date"]
    if "rows_kept" in expect:
        assert account.rows_kept == expect["rows_kept"]
    wanted = {reason: expect.get("excluded", {}).get(reason, 0) for reason in reasons}
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


def test_a_pipe_inside_a_folder_is_refused_not_waited_on(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(pa.table({"customer_id": [1], "transaction_date": ["2024-01-01"],
                             "amount": [1.0]}), folder / "a.parquet")  # fmt: skip
    os.mkfifo(folder / "b.parquet")
    with pytest.raises(RFMError, match=r"input_path: b.parquet in .*data is not a regular file"):
        run(RFMSettings(input_path=str(folder)))
