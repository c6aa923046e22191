"""drop_duplicate_rows: a line equal to an earlier line in every column is excluded, counted.

The oracle finds the duplicates with a set of whole lines read by pyarrow (every column, not
only the mapped ones) and computes the customers of the other lines with oracle.py's loop.
"""

import json
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from rfm_assets import run
from rfm_assets.cli import main
from rfm_assets.packaged import BUNDLED_DATASET
from rfm_assets.settings import RFMSettings
from rfm_assets_tests.conftest import assert_matches_oracle, bundled_oracle
from rfm_assets_tests.oracle import oracle


def line_key(values: tuple) -> tuple:
    """A line as a set member: a missing value equals a missing one, NaN equals NaN."""
    return tuple("<NaN>" if isinstance(v, float) and math.isnan(v) else v for v in values)


def first_lines(columns: dict[str, list]) -> list[bool]:
    """Whether each line is the first of the lines equal to it in every column."""
    seen, first = set(), []
    for values in zip(*columns.values()):
        key = line_key(values)
        first.append(key not in seen)
        seen.add(key)
    return first


def test_the_bundled_data_without_its_duplicate_lines_equals_the_oracle():
    table = pq.read_table(BUNDLED_DATASET).to_pydict()
    first = first_lines(table)
    rows = [
        {
            "customer_id": table["CustomerID"][i],
            "date": table["InvoiceDate"][i],
            "amount": table["Quantity"][i] * table["UnitPrice"][i],
            "order_id": table["InvoiceNo"][i],
        }
        for i in range(len(first))
        if first[i]
    ]
    expected, excluded = oracle(rows)
    result = run(RFMSettings(drop_duplicate_rows=True))
    assert_matches_oracle(result.customer_segments, expected)
    duplicates = first.count(False)
    assert duplicates > 5_000  # the export repeats lines
    assert result.account.rows_excluded["duplicate_row"] == duplicates
    assert {k: v for k, v in result.account.rows_excluded.items() if v} == {
        "duplicate_row": duplicates,
        **excluded,
    }
    # Off by default: the duplicates count as purchases, and change customers' spend.
    everyone, _ = bundled_oracle()
    changed = {c for c in expected if everyone[c]["monetary"] != expected[c]["monetary"]}
    default = run(RFMSettings())
    assert default.account.rows_excluded["duplicate_row"] == 0
    spend = default.customer_segments.set_index("customer_id")["monetary"]
    deduplicated = result.customer_segments.set_index("customer_id")["monetary"]
    assert set(spend.index[spend != deduplicated.reindex(spend.index)]) == changed
    assert len(changed) > 900


def write_lines(path, header: str, lines: list[str]):
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


# Duplicates are whole lines as written: an unmapped column tells two lines apart, CSV text is
# compared as written ("5" is not "5.0"), and blank fields equal blank fields.
LINES = [
    "c1,2024-01-02,5,o1,gift",
    "c1,2024-01-02,5,o1,gift",  # duplicate
    "c1,2024-01-02,5,o1,other",  # the note differs
    "c1,2024-01-02,5.0,o1,gift",  # the text of the amount differs
    ",2024-01-03,7,o2,",
    ",2024-01-03,7,o2,",  # duplicate, and no customer: counted as a duplicate first
    "c2,2024-01-04,9,C9,",
    "c2,2024-01-04,9,C9,",  # duplicate of a cancellation
    "c2,2024-01-05,3,o3,",
]


def test_only_lines_equal_in_every_column_are_duplicates(tmp_path):
    path = write_lines(tmp_path / "tx.csv", "customer,day,total,order,note", LINES)
    columns = {"customer_id": "customer", "transaction_date": "day", "amount": "total",
               "order_id": "order"}  # fmt: skip
    result = run(RFMSettings(input_path=str(path), columns=columns, drop_duplicate_rows=True))
    excluded = {k: v for k, v in result.account.rows_excluded.items() if v}
    assert excluded == {"duplicate_row": 3, "missing_customer_id": 1, "cancelled_order": 1}
    segments = result.customer_segments.set_index("customer_id")
    assert segments.loc["c1", "monetary"] == 15 and segments.loc["c1", "frequency"] == 1
    assert segments.loc["c2", "monetary"] == 3


def test_the_setting_and_the_flag(tmp_path, capsys):
    with pytest.raises(ValidationError, match="drop_duplicate_rows: applies to transaction"):
        RFMSettings(drop_duplicate_rows=True, input_level="customers", input_path="x.csv")
    output = tmp_path / "out"
    assert main(["analyze", "--drop-duplicate-rows", "--output", str(output)]) == 0
    summary = json.loads((output / "run_summary.json").read_text())
    first = first_lines(pq.read_table(BUNDLED_DATASET).to_pydict())
    assert summary["rows_excluded"]["duplicate_row"] == first.count(False)
    assert summary["rows_read"] == summary["rows_kept"] + sum(summary["rows_excluded"].values())
    kept = f"{summary['rows_kept']:,} kept"
    assert kept in capsys.readouterr().out


def test_a_directory_without_a_column_in_one_file_is_refused_when_lines_are_compared(tmp_path):
    folder = tmp_path / "tx"
    folder.mkdir()
    rows = {"customer_id": ["a"], "transaction_date": pd.to_datetime(["2024-01-02"]),
            "amount": [5.0]}  # fmt: skip
    pd.DataFrame(rows).to_parquet(folder / "part-0.parquet")
    pd.DataFrame(rows | {"note": ["x"]}).to_parquet(folder / "part-1.parquet")
    assert run(RFMSettings(input_path=str(folder))).account.rows_kept == 2
    with pytest.raises(Exception, match=r"^input_path: part-0.parquet in .* has no column "
                       r"'note'; every file needs every column, to compare whole lines "
                       r"\(drop_duplicate_rows\)$"):  # fmt: skip
        run(RFMSettings(input_path=str(folder), drop_duplicate_rows=True))
