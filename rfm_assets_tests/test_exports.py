"""CSV exports cannot inject spreadsheet formulas; Parquet keeps the raw values."""

import csv

import pandas as pd

from rfm_assets.cli import main
from rfm_assets.exports import neutralise_formulas, write_table

RISKY = ["=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\rx"]


def test_text_cells_that_start_a_formula_get_a_leading_quote(tmp_path):
    frame = pd.DataFrame(
        {
            "customer_id": pd.array([*RISKY, "plain", None], dtype="str"),
            "segment": pd.Categorical(["=HYPERLINK(1)"] * 4 + ["Lost"] * 4),
            "monetary": [-3.5, 1, 2, 3, 4, 5, 6, 7],
        }
    )
    path = tmp_path / "t.csv"
    write_table(frame, path, "csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["customer_id"] for r in rows[:6]] == ["'" + v for v in RISKY]
    assert rows[6]["customer_id"] == "plain"
    assert rows[0]["segment"] == "'=HYPERLINK(1)" and rows[7]["segment"] == "Lost"
    assert rows[0]["monetary"] == "-3.5"  # numbers are not text and stay as they are
    assert '"\'=1+1"' in path.read_text()  # every text field is quoted
    raw = tmp_path / "t.parquet"
    write_table(frame, raw, "parquet")
    assert pd.read_parquet(raw)["customer_id"].tolist()[:6] == RISKY


def test_the_input_frame_is_not_changed():
    frame = pd.DataFrame({"customer_id": pd.array(["=1"], dtype="str")})
    neutralise_formulas(frame)
    assert frame.loc[0, "customer_id"] == "=1"


def test_cli_csv_output_neutralises_hostile_customer_ids(tmp_path):
    source = tmp_path / "tx.csv"
    source.write_text(
        "customer_id,transaction_date,amount\n"
        '"=HYPERLINK(""http://x"",""y"")",2024-01-01,5\n'
        "-12,2024-01-02,7\n"
    )
    for file_format in ("csv", "parquet"):
        assert (
            main(
                ["analyze", "--input", str(source), "--output", str(tmp_path / file_format),
                 "--format", file_format]
            )
            == 0
        )  # fmt: skip
    with open(tmp_path / "csv" / "customer_segments.csv", newline="") as handle:
        ids = sorted(r["customer_id"] for r in csv.DictReader(handle))
    assert ids == ["'-12", '\'=HYPERLINK("http://x","y")']
    raw = pd.read_parquet(tmp_path / "parquet" / "customer_segments.parquet")
    assert sorted(raw["customer_id"]) == ["-12", '=HYPERLINK("http://x","y")']
