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


def test_split_by_segment_writes_one_safe_csv_per_segment(tmp_path, capsys):
    import csv

    from rfm_assets.cli import main

    output = tmp_path / "out"
    assert main(["analyze", "--output", str(output), "--split-by-segment"]) == 0
    segments = pd.read_parquet(output / "customer_segments.parquet")
    files = sorted(p.stem for p in (output / "campaigns").iterdir())
    assert files == sorted(segments["segment_id"].astype(str).unique())
    total = 0
    for segment_id in files:
        listed = pd.read_csv(output / "campaigns" / f"{segment_id}.csv")
        assert list(listed.columns) == [
            "customer_id", "segment", "recommendation", "R_score", "F_score", "M_score",
            "recency", "frequency", "monetary",
        ]  # fmt: skip
        mine = segments[segments["segment_id"] == segment_id]
        assert list(listed["customer_id"]) == list(mine["customer_id"])  # same order
        assert list(listed["monetary"]) == list(mine["monetary"])
        total += len(listed)
        with open(output / "campaigns" / f"{segment_id}.csv", newline="") as handle:
            for row in csv.reader(handle):
                assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row)
    assert total == len(segments)
    # A chosen few, by id or name, with chosen columns; a typo fails before any run.
    chosen = [
        "--campaign-segments",
        "At Risk,champions",
        "--campaign-columns",
        "customer_id,monetary",
    ]
    assert main(["analyze", "--output", str(output), *chosen]) == 0
    assert sorted(p.name for p in (output / "campaigns").iterdir()) == [
        "at_risk.csv",
        "champions.csv",
    ]
    assert list(pd.read_csv(output / "campaigns" / "at_risk.csv").columns) == [
        "customer_id",
        "monetary",
    ]
    capsys.readouterr()
    assert main(["analyze", "--output", str(output), "--campaign-segments", "vip"]) == 1
    error = capsys.readouterr().err
    assert "--campaign-segments: no segment 'vip'; the segments are: champions," in error


def test_campaign_lists_keep_formula_text_inert(tmp_path):
    from rfm_assets.exports import campaign_lists, write_table

    segments = pd.DataFrame(
        {"customer_id": ["=HYPERLINK(1)", "+2"], "segment_id": ["vip", "vip"],
         "segment": ["VIP", "VIP"], "monetary": [1.0, 2.0]}
    )  # fmt: skip
    lists = campaign_lists(segments, {"vip": "VIP", "other": "Other"}, (), ("customer_id",))
    assert list(lists) == ["vip", "other"] and lists["other"].empty
    write_table(lists["vip"], tmp_path / "vip.csv", "csv")
    assert (tmp_path / "vip.csv").read_text().splitlines()[1:] == ['"\'=HYPERLINK(1)"', '"\'+2"']


def test_a_pandas_table_is_written_in_the_types_spark_writes(tmp_path):
    """Categories as text, whole nullable integers as int64, day timestamps in microseconds,
    text as Arrow string: what a Spark-written table holds, read back as the same dtypes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rfm_assets.exports import write_parquet

    frame = pd.DataFrame(
        {
            "customer_id": pd.array([3, 1], dtype="Int64"),
            "order_id": pd.array([7, None], dtype="Int64"),  # a missing value stays nullable
            "segment": pd.Categorical(["Lost", "Champions"]),
            "rfm_cell": pd.array(["111", "555"], dtype="str"),
            "first_purchase_date": pd.to_datetime(["2024-01-02", "2024-02-03"]).as_unit("ms"),
            "segmented_at": pd.Timestamp("2024-03-04 05:06:07", tz="UTC").as_unit("ns"),
        }
    )
    write_parquet(frame, tmp_path / "t.parquet")
    schema = pq.read_schema(tmp_path / "t.parquet")
    assert [schema.field(n).type for n in schema.names] == [
        pa.int64(), pa.int64(), pa.string(), pa.string(), pa.timestamp("us"),
        pa.timestamp("us", tz="UTC"),
    ]  # fmt: skip
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert str(back["customer_id"].dtype) == "int64" and str(back["order_id"].dtype) == "Int64"
    assert back["segment"].tolist() == ["Lost", "Champions"]
    assert not isinstance(back["segment"].dtype, pd.CategoricalDtype)
    assert str(back["first_purchase_date"].dtype) == "datetime64[us]"
    assert (back["first_purchase_date"] == frame["first_purchase_date"]).all()
