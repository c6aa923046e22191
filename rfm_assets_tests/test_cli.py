"""`rfm-assets`: the real datasets against the oracle, outputs, report, one-line errors."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from rfm_assets.cli import main
from rfm_assets_tests.conftest import (
    CDNOW,
    assert_matches_oracle,
    bundled_oracle,
    bundled_oracle_customers,
    parquet_rows,
)
from rfm_assets_tests.oracle import oracle


def analyze(tmp_path, *flags, name="out"):
    output = tmp_path / name
    assert main(["analyze", "--output", str(output), *flags]) == 0
    return output


def test_online_retail_matches_the_oracle_customer_for_customer(tmp_path, capsys):
    output = analyze(tmp_path)  # the bundled default: Online Retail, quantity * unit price
    expected, excluded = bundled_oracle()
    segments = pd.read_parquet(output / "customer_segments.parquet")
    assert_matches_oracle(segments, expected)
    summary = json.loads((output / "run_summary.json").read_text())
    assert {k: v for k, v in summary["rows_excluded"].items() if v} == excluded
    # The dataset README's figures for the common cleaning.
    assert summary["rows_read"] == 541_909
    assert summary["rows_kept"] == 397_884
    assert summary["customers"] == bundled_oracle_customers()  # the oracle's, not a literal
    assert summary["reference_date"] == "2011-12-10"
    assert round(segments["monetary"].sum(), 3) == 8_911_407.904
    printed = capsys.readouterr().out
    assert "Champions" in printed and "541,909 rows read" in printed


def test_cdnow_matches_the_oracle_customer_for_customer(tmp_path):
    output = analyze(
        tmp_path,
        "--input", str(CDNOW), "--customer-id", "customer_id", "--transaction-date", "date",
        "--amount", "dollar_value", "--scoring", "quartiles",
    )  # fmt: skip
    rows = parquet_rows(
        CDNOW, {"customer_id": "customer_id", "date": "date", "amount": "dollar_value"}
    )
    expected, excluded = oracle(rows, scale=4)
    assert_matches_oracle(pd.read_parquet(output / "customer_segments.parquet"), expected)
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["rows_read"] == 69_659
    assert summary["rows_excluded"]["non_positive_amount"] == 80 == excluded["non_positive_amount"]
    assert summary["reference_date"] == "1998-07-01"
    assert len(summary["thresholds"]["monetary"]) == 3


def test_csv_output_and_report(tmp_path, capsys):
    output = analyze(tmp_path, "--format", "csv", "--weights", "2,1,1", "--returns", "net")
    segments = pd.read_csv(output / "customer_segments.csv")
    analytics = pd.read_csv(output / "segment_analytics.csv")
    assert len(segments) == segments["customer_id"].nunique()
    assert analytics["customers"].sum() == len(segments)
    assert json.loads(analytics.loc[0, "recency_thresholds"])  # lists are JSON in CSV
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["weights"] == {"recency": 2.0, "frequency": 1.0, "monetary": 1.0}
    assert summary["rows_read"] == summary["rows_kept"] + sum(summary["rows_excluded"].values())
    capsys.readouterr()
    assert main(["report", "--input", str(output)]) == 0
    report = (output / "segment_report.md").read_text()
    assert report == capsys.readouterr().out.rsplit("wrote ", 1)[0]
    for row in analytics.itertuples():
        assert f"| {row.segment} | {row.customers:,} |" in report
    png = (output / "segment_sizes.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "![segment sizes](segment_sizes.png)" in report


def test_csv_input_with_text_ids_keeps_leading_zeros(tmp_path):
    source = tmp_path / "tx.csv"
    source.write_text(
        "cust,when,qty,price,invoice\n"
        "007,2024-01-01,2,5.0,A1\n"
        "007,2024-01-05,1,5.0,A2\n"
        " 42 ,2024-01-03,1,100.0,A3\n"
        "42,2024-01-04,1,1.0,A4\n"
    )
    output = analyze(
        tmp_path,
        "--input", str(source), "--customer-id", "cust", "--transaction-date", "when",
        "--quantity", "qty", "--unit-price", "price", "--order-id", "invoice",
    )  # fmt: skip
    segments = pd.read_parquet(output / "customer_segments.parquet").set_index("customer_id")
    assert sorted(segments.index) == ["007", "42"]  # whitespace trimmed, zeros kept
    assert segments.loc["007", "monetary"] == 15.0 and segments.loc["007", "frequency"] == 2
    assert segments.loc["42", "monetary"] == 101.0


def test_config_file_and_flags_combine(tmp_path):
    output = analyze(tmp_path, "--config", "b2b", "--analysis-period-days", "100")
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["scoring_method"] == "quartiles" and summary["returns_policy"] == "net"
    assert summary["window_start"] == "2011-09-01"  # the flag beats the preset's 730 days


ERROR_CASES = [
    (["--input", "/no/such/file.parquet"], "input_path: /no/such/file.parquet does not exist"),
    (["--customer-id", "Customer"], "columns.customer_id='Customer' not found"),
    (["--weights", "1,0,0"], "weights: frequency and monetary may not both be 0"),
    (["--weights", "1,2"], "--weights: expected three numbers"),
    (["--analysis-period-days", "0"], "analysis_period_days"),
    (["--reference-date", "2001-01-01"], "reference_date: 2001-01-01 is on or before all data"),
    (["--config", "nonexistent_preset"], "presets: b2b, balanced_ecommerce"),
]

# `python -m rfm_assets analyze ...` once per case, all in one fresh process (one import of
# the world, not one per case): each case runs the package's __main__ as `-m` does, between
# marker lines on both streams, so each case's stdout, stderr and exit code are its own.
# Output the imports make is outside every case, and must be empty too.
ERROR_DRIVER = """
import json, runpy, sys
for number, argv in enumerate(json.loads(sys.argv[1])):
    for stream in (sys.stdout, sys.stderr):
        print(f"@@case {number}", file=stream, flush=True)
    sys.argv = ["rfm-assets", *argv]
    try:
        runpy.run_module("rfm_assets", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code
    for stream in (sys.stdout, sys.stderr):
        print(f"@@exit {code}", file=stream, flush=True)
"""


def test_errors_are_one_line_without_traceback(tmp_path):
    argvs = [["analyze", "--output", str(tmp_path / f"o{i}"), *flags]
             for i, (flags, _) in enumerate(ERROR_CASES)]  # fmt: skip
    completed = subprocess.run(
        [sys.executable, "-c", ERROR_DRIVER, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    streams = {}
    for name, text in (("stdout", completed.stdout), ("stderr", completed.stderr)):
        before, *cases = re.split(r"^@@case \d+\n", text, flags=re.MULTILINE)
        assert before == "", f"{name} before any case: {before[-2000:]}"
        assert len(cases) == len(ERROR_CASES), text[-3000:]
        streams[name] = [re.fullmatch(r"(.*)@@exit (\S+)\n", c, flags=re.DOTALL).groups()
                         for c in cases]  # fmt: skip
    failures = []
    for (flags, message), (out, code), (err, _) in zip(ERROR_CASES, streams["stdout"],
                                                      streams["stderr"]):  # fmt: skip
        if not (
            code == "1"
            and err.count("\n") == 1
            and err.startswith("rfm-assets: error: ")
            and message in err
            and "Traceback" not in err + out
        ):
            failures.append(f"{flags}: exit {code}, stderr {err!r}, stdout {out[-500:]!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "config_text, message",
    [
        ("resources: [\n", "is not valid YAML at line 2"),
        (
            "resources:\n  rfm_settings:\n    config:\n      wieghts: {recency: 2}\n",
            "unknown settings: wieghts; known settings: input_path,",
        ),
        ("columns: {custid: x}\n", "unknown settings: columns.custid"),
        ("scoring_method: deciles\n", "Input should be 'quintiles', 'quartiles' or 'fixed'"),
        ("resources: {other: 1}\n", "has resources: but no resources.rfm_settings.config"),
    ],
)
def test_config_file_errors_are_one_line(tmp_path, capsys, config_text, message):
    config = tmp_path / "run.yaml"
    config.write_text(config_text)
    assert main(["analyze", "--output", str(tmp_path / "o"), "--config", str(config)]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_usage_errors_are_one_line_and_name_the_allowed_values(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["analyze", "--output", "o", "--scoring", "deciles"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "invalid choice: 'deciles' (choose from 'quintiles', 'quartiles')" in error


def test_report_on_a_missing_result_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--input", str(tmp_path)]) == 1
    assert "has no segment_analytics.parquet or segment_analytics.csv" in capsys.readouterr().err


def test_generate_writes_seeded_data(tmp_path):
    target = tmp_path / "gen.parquet"
    assert main(["generate", "--rows", "5000", "--seed", "4", "--output", str(target)]) == 0
    again = tmp_path / "again.parquet"
    assert main(["generate", "--rows", "5000", "--seed", "4", "--output", str(again)]) == 0
    first, second = pd.read_parquet(target), pd.read_parquet(again)
    assert len(first) == 5000
    pd.testing.assert_frame_equal(first, second)


def test_an_output_that_is_a_dangling_link_is_named(tmp_path, capsys):
    output = tmp_path / "out"
    output.symlink_to(tmp_path / "gone")
    assert main(["analyze", "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert f"--output: {output} is a link to {tmp_path / 'gone'}, which is missing" in error
    assert error.count("\n") == 1


def test_an_output_that_cannot_be_written_is_named(tmp_path, capsys, monkeypatch):
    # Root ignores file modes, so the refusal a read-only directory gives is simulated.
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["analyze", "--output", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert f"--output: cannot write {tmp_path / 'out'}: Permission denied" in error
    assert error.count("\n") == 1


def test_a_config_file_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"weights: {recency: 2}\n# caf\xe9\n")
    assert main(["analyze", "--output", str(tmp_path / "o"), "--config", str(config)]) == 1
    error = capsys.readouterr().err
    assert f"--config: {config} is not UTF-8 text" in error and error.count("\n") == 1


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"run_summary.json": b"{not json"}, "cannot read .*run_summary.json: Expecting"),
        ({"run_summary.json": b"[1, 2]"}, "run_summary.json is not a run summary"),
        ({"segment_analytics.parquet": b"PAR1 broken"}, "cannot read .*segment_analytics.parquet"),
        ({"segment_analytics.csv": b"a,b\n1,2\n"}, "segment_analytics.csv is not a segment_analy"),
        # Never read until memory runs out, never waited on.
        ({"run_summary.json": "/dev/zero"}, "run_summary.json is not a regular file"),
        ({"segment_analytics.csv": "fifo"}, "segment_analytics.csv is not a regular file"),
    ],
)
def test_report_on_a_damaged_result_names_the_file(tmp_path, capsys, damage, message):
    def damaged(path, content):
        if content == "fifo":
            os.mkfifo(path)
        elif isinstance(content, str):
            path.symlink_to(content)
        else:
            path.write_bytes(content)

    for name, content in damage.items():
        damaged(tmp_path / name, content)
    if "segment_analytics.parquet" not in damage and "segment_analytics.csv" not in damage:
        assert main(["analyze", "--output", str(tmp_path / "r")]) == 0
        (tmp_path / "r" / "run_summary.json").unlink()
        damaged(tmp_path / "r" / "run_summary.json", damage["run_summary.json"])
        tmp_path = tmp_path / "r"
    capsys.readouterr()
    assert main(["report", "--input", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert error.count("\n") == 1


def test_report_escapes_html_and_pipes_in_segment_names(tmp_path):
    from rfm_assets.cli import report_markdown

    analytics = pd.DataFrame(
        {
            "segment": ["<img src=x onerror=alert(1)>|VIP"],
            "customers": [3],
            "customer_share": [1.0],
            "revenue": [10.0],
            "revenue_share": [1.0],
            "avg_recency": [1.0],
            "avg_frequency": [1.0],
            "avg_monetary": [1.0],
            "avg_order_value": [1.0],
            "recommendation": ["call | now\nplease"],
        }
    )
    text = report_markdown(analytics, {"input": "a|b", "rows_read": None})
    row = text.splitlines()[-1]
    assert "&lt;img src=x onerror=alert(1)&gt;\\|VIP" in row and "<img" not in text
    assert len(re.findall(r"(?<!\\)\|", row)) == 11 and "call \\| now please" in row
    assert "input: a\\|b" in text and "rows read unknown" in text


def test_usual_cli_shapes_quartiles_shorthand_debug_anywhere_and_report_by_suffix(tmp_path):
    output = tmp_path / "out"
    assert main(["analyze", "--output", str(output), "--quartiles", "--debug"]) == 0
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["scoring_method"] == "quartiles" and summary["scale"] == 4
    assert main(["--debug", "report", "--input", str(output), "--output",
                 str(tmp_path / "r.csv")]) == 0  # fmt: skip
    table = pd.read_csv(tmp_path / "r.csv")
    analytics = pd.read_parquet(output / "segment_analytics.parquet")
    assert list(table["segment"]) == list(analytics["segment"])
    assert list(table["customers"]) == list(analytics["customers"])
    assert main(["report", "--input", str(output), "--output", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html>") and 'src="data:image/png;base64,' in page
    for row in analytics.itertuples():
        assert f'<td class="n">{row.customers:,}</td>' in page
    assert main(["report", "--input", str(output), "--output", str(tmp_path / "r.pdf")]) == 1


def test_scoring_and_its_shorthands_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--output", "o", "--quartiles", "--scoring", "quintiles"])
    assert "not allowed with argument" in capsys.readouterr().err


# Spark's own words when memory runs out (the first from a 10M-row local[2] run with default
# memory; the others as the JVM and Py4J print them).
HEAP_SPACE = (
    "An error occurred while calling o278.count.\n: java.lang.OutOfMemoryError: Java heap "
    "space\n\tat java.base/java.util.Arrays.copyOf(Arrays.java:3537)\n"
)
GC_OVERHEAD = "Job aborted.\nCaused by: java.lang.OutOfMemoryError: GC overhead limit exceeded\n"
SMALL_HEAP = (
    "java.lang.IllegalArgumentException: System memory 259522560 must be at least 471859200. "
    "Please increase heap size using the --driver-memory option"
)
JVM_GONE = "py4j.protocol.Py4JError: Answer from Java side is empty"


@pytest.mark.parametrize(
    "text, expected",
    [
        (HEAP_SPACE, "Spark ran out of memory (java.lang.OutOfMemoryError: Java heap space)"),
        (GC_OVERHEAD, "(java.lang.OutOfMemoryError: GC overhead limit exceeded)"),
        (SMALL_HEAP, "its JVM has 247 MiB of heap and needs at least 450 MiB"),
        (JVM_GONE, "Spark's JVM stopped in the middle of the step, usually out of memory"),
    ],
)
def test_spark_memory_failures_name_the_setting_to_raise(text, expected):
    from rfm_assets.errors import memory_failure

    message = memory_failure(text)
    assert expected in message and "spark.driver.memory" in message
    assert "spark.executor.memory" in message and "\n" not in message


def test_other_spark_failures_are_not_called_memory():
    from rfm_assets.errors import memory_failure

    unrelated = "AnalysisException: [UNRESOLVED_COLUMN] `amount` cannot be resolved"
    assert memory_failure(unrelated) is None


def test_held_values_are_let_go_once_their_last_reader_has_finished():
    """The command line's in-process run keeps every step's output to the end (Dagster
    holds them too): a frame no later step and not the command line reads is emptied once
    its last reader has finished, after that reader got it whole."""
    import dagster as dg

    from rfm_assets.io_manager import HeldIOManager

    @dg.asset
    def rows() -> pd.DataFrame:
        return pd.DataFrame({"customer_id": ["a", "b", "a"], "amount": [1.0, 2.0, 3.0]})

    @dg.asset
    def totals(rows: pd.DataFrame) -> pd.DataFrame:
        return rows.groupby("customer_id", as_index=False)["amount"].sum()

    @dg.asset
    def largest(totals: pd.DataFrame) -> pd.DataFrame:
        return totals.nlargest(1, "amount")

    @dg.asset
    def named(largest: pd.DataFrame) -> pd.DataFrame:
        return largest.assign(label="top")

    held = HeldIOManager({dg.AssetKey("rows"): 1, dg.AssetKey("totals"): 1})
    result = dg.materialize([rows, totals, largest, named], resources={"io_manager": held})
    assert result.success
    assert result.output_for_node("named").to_dict("records") == [
        {"customer_id": "a", "amount": 4.0, "label": "top"}
    ]
    assert result.output_for_node("rows").shape == (3, 0)  # let go once `totals` finished
    assert result.output_for_node("totals").shape == (2, 0)  # once `largest` finished
    assert result.output_for_node("largest").shape == (1, 2)  # not named: kept
    assert len(held.values) == 2  # largest and named


# Nine values, nine times nine, ...: 9**9 (387 million) values from a few hundred bytes.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "where, content, message",
    [
        ("rules", ALIAS_BOMB + "rules: [{segment: Lost, default: true, note: *i}]\n",
         "expands to more than 100,000 values"),
        ("config", ALIAS_BOMB, "expands to more than 100,000 values"),
        ("rules", "rules: &r [{segment: Lost, default: true, note: *r}]\n", "contains itself"),
        ("config", "reference_date: '" + "9" * (1 << 20) + "'\n", "larger than 1 MiB"),
    ],
)  # fmt: skip
def test_every_yaml_file_is_read_bounded(tmp_path, capsys, where, content, message):
    import time

    path = tmp_path / "file.yaml"
    path.write_text(content)
    started = time.monotonic()
    if where == "rules":
        code = main(["rules", str(path)])
        problem = capsys.readouterr().out
    else:
        code = main(["analyze", "--config", str(path), "--output", str(tmp_path / "out")])
        problem = capsys.readouterr().err
    assert code == 1 and message in problem
    assert time.monotonic() - started < 5  # refused at once, not after building the values
    # The same file as the setting segment_rules, as Dagster's resource would get it.
    if where == "rules":
        from rfm_assets.errors import RFMConfigError
        from rfm_assets.settings import build_settings

        with pytest.raises(RFMConfigError, match=message):
            build_settings({"segment_rules": str(path)})


def test_a_yaml_path_that_is_not_a_regular_file_is_refused_without_reading(tmp_path, capsys):
    import os

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    for argv in (
        ["analyze", "--config", str(fifo), "--output", str(tmp_path / "out")],
        ["analyze", "--config", "/dev/zero", "--output", str(tmp_path / "out")],
        ["rules", str(fifo)],
    ):
        assert main(argv) == 1
        said = capsys.readouterr()
        assert "is not a regular file (a pipe or device?)" in said.out + said.err


def test_a_report_of_a_customer_table_file_counts_what_the_folder_records(tmp_path, capsys):
    """`report --input <folder>/customer_segments.parquet`: the segments counted from the
    table, with the rule set and thresholds of the run_summary.json beside it, equal the
    folder's segment_analytics; the CSV report writes thresholds as JSON numbers."""
    output = analyze(tmp_path, "--segment-rules", "score_codes")
    from_folder, from_file = tmp_path / "folder.csv", tmp_path / "file.csv"
    assert main(["report", "--input", str(output), "--output", str(from_folder)]) == 0
    table = output / "customer_segments.parquet"
    assert main(["report", "--input", str(table), "--output", str(from_file)]) == 0
    assert from_file.read_text() == from_folder.read_text()
    report = pd.read_csv(from_file)
    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["rule_set"] == "score_codes"
    for dimension in ("recency", "frequency", "monetary"):
        cuts = report[f"{dimension}_thresholds"].iloc[0]
        assert cuts.startswith("[") and " " not in cuts  # as Spark's to_json writes it
        assert json.loads(cuts) == summary["thresholds"][dimension]
    segments = pd.read_parquet(table)
    counted = segments["segment"].astype(str).value_counts()
    for row in report.itertuples():
        assert row.customers == counted.get(row.segment, 0)
    # A table alone (no run summary beside it) is counted with the default rule set; the
    # HTML report of it draws from the table too.
    alone = tmp_path / "alone" / "q4.parquet"
    alone.parent.mkdir()
    segments.to_parquet(alone)
    assert main(["report", "--input", str(alone), "--output", str(tmp_path / "a.html")]) == 0
    assert "<h2>Segments</h2>" in (tmp_path / "a.html").read_text()
    # A segment the rule set does not name is refused, not dropped; so is a foreign file.
    segments.assign(segment="VIP").to_parquet(alone)
    capsys.readouterr()
    assert main(["report", "--input", str(alone), "--output", str(tmp_path / "b.csv")]) == 1
    err = capsys.readouterr().err
    assert "holds segments that rule set rfm_grid does not name (VIP)" in err
    assert err.count("\n") == 1
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["report", "--input", str(tmp_path / "notes.txt")]) == 1
    assert "must be a .parquet or .csv table, or a result folder" in capsys.readouterr().err


def test_kmeans_and_predict_print_their_clusters_and_the_help_lists_what_is_accepted(
    tmp_path, capsys
):
    output = analyze(tmp_path, "--segmentation", "kmeans", "--clusters", "4")
    printed = capsys.readouterr().out
    clustering = json.loads((output / "run_summary.json").read_text())["clustering"]
    assert f"k-means: k = 4 (k as given), silhouette {clustering['silhouette']:.3f}" in printed
    segments = pd.read_parquet(output / "customer_segments.parquet")
    for cluster in clustering["clusters"]:  # one line each, its customers counted here
        customers = int((segments["cluster"] == cluster["cluster"]).sum())
        assert f"{cluster['name']:<22} {cluster['segment']:<20} {customers:>9,}" in printed
    assert "Cannot Lose Them             0" not in printed  # no empty grid rows
    assert main(["predict", "--model", str(output), "--output", str(tmp_path / "p")]) == 0
    assert "k-means: k = 4 (the stored model's k)" in capsys.readouterr().out
    # predict --help lists only what predict accepts; every option of generate and rules
    # says what it is; --version names the installed version.
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    predict_help = capsys.readouterr().out
    assert "--segmentation" not in predict_help and "--clusters" not in predict_help
    with pytest.raises(SystemExit) as refused:
        main(["predict", "--model", str(output), "--output", "x", "--clusters", "4"])
    assert refused.value.code == 2
    assert "unrecognized arguments: --clusters 4" in capsys.readouterr().err
    from rfm_assets.cli import parser

    commands = next(a for a in parser()._actions if a.dest == "command").choices
    for command in ("generate", "rules"):
        for action in commands[command]._actions:
            assert action.help, f"{command} {action.option_strings or action.dest}: no help"
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"rfm-assets {version('rfm_assets')}\n"
