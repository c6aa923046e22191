"""Excel workbooks as input: read by the cells' own types, cleaned and counted as any source.

The oracle reads the workbook with openpyxl, a reader independent of the one the package uses
(python-calamine), and computes the customers with the plain loop of oracle.py.
"""

import datetime as dt
import re

import openpyxl
import pandas as pd
import pyarrow as pa
import pytest
from pydantic import ValidationError

from rfm_assets import run
from rfm_assets.cli import main
from rfm_assets.engines.excel import read_sheet
from rfm_assets.errors import RFMInputError
from rfm_assets.packaged import BUNDLED_COLUMNS, BUNDLED_DATASET
from rfm_assets.settings import RFMSettings
from rfm_assets_tests.conftest import assert_matches_oracle
from rfm_assets_tests.oracle import oracle

# The bundled sample's mapping: these tests give it explicitly, as a user with the file does.
COLUMNS = BUNDLED_COLUMNS
ROWS = 12_000


def online_retail_workbook(path, first_sheet=None):
    """The first ROWS lines of the bundled sample as the UCI file ships them: invoice numbers
    are number cells except cancellations ("C536379"), customer ids are numbers with blank
    cells, dates are date cells. A few lines are made messy the way exports are."""
    frame = pd.read_parquet(BUNDLED_DATASET).head(ROWS)
    invoice = frame["InvoiceNo"].astype(object)
    numeric = invoice.str.isdigit()
    invoice[numeric] = invoice[numeric].astype(int)
    frame["InvoiceNo"] = invoice
    frame = frame.astype({"UnitPrice": object, "InvoiceDate": object})
    frame.loc[3, "UnitPrice"] = "2.55"  # a number typed as text: the column becomes text
    frame.loc[7, "InvoiceDate"] = "2010-12-01 08:26:00"  # a date typed as text
    frame.loc[11, "Quantity"] = float("nan")  # an empty cell: no amount, counted
    with pd.ExcelWriter(path) as writer:
        if first_sheet is not None:
            first_sheet.to_excel(writer, sheet_name="Notes", index=False)
        frame.to_excel(writer, sheet_name="Online Retail", index=False)
    return path


def oracle_rows(path, sheet: str) -> list[dict]:
    """Rows as openpyxl reads the cells: the independent reading of the workbook."""
    book = openpyxl.load_workbook(path, read_only=True)
    cells = book[sheet].iter_rows(values_only=True)
    header = list(next(cells))
    rows = []
    for values in cells:
        line = dict(zip(header, values))
        quantity, price = line["Quantity"], line["UnitPrice"]
        amount = float("nan") if quantity is None else float(quantity) * float(price)
        date = line["InvoiceDate"]
        rows.append(
            {
                "customer_id": line["CustomerID"],
                "date": dt.datetime.fromisoformat(date) if isinstance(date, str) else date,
                "amount": amount,
                "order_id": str(line["InvoiceNo"]),
            }
        )
    return rows


@pytest.fixture(scope="module")
def workbook(tmp_path_factory):
    notes = pd.DataFrame({"Note": ["exported from the shop", "see the next sheet"]})
    return online_retail_workbook(tmp_path_factory.mktemp("excel") / "Online Retail.xlsx", notes)


def test_a_sheet_equals_the_oracle_on_the_same_cells(workbook):
    expected, excluded = oracle(oracle_rows(workbook, "Online Retail"))
    result = run(RFMSettings(input_path=str(workbook), sheet="Online Retail", columns=COLUMNS))
    assert_matches_oracle(result.customer_segments, expected)
    account = result.account
    assert account.rows_read == ROWS
    assert {k: v for k, v in account.rows_excluded.items() if v} == excluded
    # the cleaning had work to do: blank ids, cancellations, the empty quantity
    assert excluded["missing_customer_id"] > 100 and excluded["cancelled_order"] > 10
    assert excluded["invalid_amount"] == 1


def test_the_first_sheet_is_read_unless_one_is_named(workbook):
    with pytest.raises(RFMInputError) as error:
        run(RFMSettings(input_path=str(workbook), columns=COLUMNS))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("columns.customer_id='CustomerID'")
    assert "not found in sheet 'Notes' of" in message and "its columns are: Note" in message
    with pytest.raises(RFMInputError, match=r"^sheet: 'Orders' is not a sheet of .*; its "
                       r"sheets are: Notes, Online Retail$"):  # fmt: skip
        run(RFMSettings(input_path=str(workbook), sheet="Orders", columns=COLUMNS))
    with pytest.raises(ValidationError, match="sheet: applies to an Excel workbook"):
        RFMSettings(input_path=str(BUNDLED_DATASET), sheet="Online Retail")


def test_each_column_takes_one_type_from_its_cells(tmp_path):
    path = tmp_path / "kinds.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["whole", "fraction", "mixed", "when", "flag", "text", None])
    sheet.append([1, 1.5, 536365, dt.datetime(2024, 1, 2, 3, 4), True, "a", None])
    sheet.append([None, 2, "C536379", dt.date(2024, 1, 3), False, "b", None])
    sheet.append([3, None, 2.25, None, None, None, None])
    book.save(path)
    name, header, table = read_sheet(
        str(path), None, ["whole", "fraction", "mixed", "when", "flag", "text"]
    )
    assert (name, header) == ("Sheet", ["whole", "fraction", "mixed", "when", "flag", "text"])
    assert table.schema == pa.schema(
        [("whole", pa.int64()), ("fraction", pa.float64()), ("mixed", pa.string()),
         ("when", pa.timestamp("us")), ("flag", pa.bool_()), ("text", pa.string())]
    )  # fmt: skip
    assert table.to_pydict() == {
        "whole": [1, None, 3],
        "fraction": [1.5, 2.0, None],
        "mixed": ["536365", "C536379", "2.25"],  # whole numbers without ".0"
        "when": [dt.datetime(2024, 1, 2, 3, 4), dt.datetime(2024, 1, 3), None],
        "flag": [True, False, None],
        "text": ["a", "b", None],
    }


def test_bad_workbooks_are_one_line_each(tmp_path):
    def settings(path, **columns):
        return RFMSettings(
            input_path=str(path),
            columns={"customer_id": "id", "transaction_date": "day", "amount": "amount"} | columns,
        )

    def workbook_of(name, *rows):
        book = openpyxl.Workbook()
        for row in rows:
            book.active.append(row)
        book.save(tmp_path / name)
        return tmp_path / name

    cases = {
        "a word among the amounts": (
            workbook_of(
                "words.xlsx",
                ["id", "day", "amount"],
                [1, dt.date(2024, 1, 2), 5],
                [2, dt.date(2024, 1, 3), "n/a"],
            ),  # fmt: skip
            r"^column 'amount': 1 values are not numbers, e.g. \['n/a'\]$",
        ),
        "the same name twice": (
            workbook_of("twice.xlsx", ["id", "day", "amount", "day"], [1, 2, 3, 4]),
            r"^input_path: the header of sheet 'Sheet' of .* repeats day$",
        ),
        "no cells": (workbook_of("empty.xlsx"), r"^input_path: sheet 'Sheet' of .* is empty$"),
        "ticks as dates": (
            workbook_of("flags.xlsx", ["id", "day", "amount"], [1, True, 5]),
            r"^column 'day': type bool is not a date",
        ),
        "not a workbook": (tmp_path / "text.xlsx", r"^input_path: cannot read .*text\.xlsx: "),
    }
    (tmp_path / "text.xlsx").write_text("id,day,amount\n1,2024-01-02,5\n")
    for case, (path, pattern) in cases.items():
        with pytest.raises(RFMInputError) as error:
            run(settings(path))
        assert "\n" not in str(error.value), case
        assert re.search(pattern, str(error.value)), (case, error.value)


def test_analyze_reads_a_named_sheet(workbook, tmp_path, capsys):
    output = tmp_path / "out"
    flags = ["--customer-id", "CustomerID", "--transaction-date", "InvoiceDate", "--quantity",
             "Quantity", "--unit-price", "UnitPrice", "--order-id", "InvoiceNo"]  # fmt: skip
    code = main(["analyze", "--input", str(workbook), "--sheet", "Online Retail",
                 "--output", str(output), *flags])  # fmt: skip
    assert code == 0
    expected, _ = oracle(oracle_rows(workbook, "Online Retail"))
    assert len(pd.read_parquet(output / "customer_segments.parquet")) == len(expected)
    code = main(["analyze", "--input", str(workbook), "--sheet", "Orders",
                 "--output", str(output), *flags])  # fmt: skip
    assert code != 0
    assert capsys.readouterr().err.strip().endswith("its sheets are: Notes, Online Retail")
    code = main(["analyze", "--sheet", "Online Retail", "--output", str(output)])
    assert code != 0  # the bundled Parquet sample has no sheets
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "sheet: applies to an Excel workbook" in error
