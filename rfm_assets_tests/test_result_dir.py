"""The CLI's result directory switches whole: killed at any step, or raced, a reader sees one
run's complete result, and what dead runs left is removed by the next run."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from rfm_assets.cli import main
from rfm_assets.synthetic import generate_transactions

# Imports once, then forks a child per run, so each of many runs costs a fork, not an import.
# `kill`: runs N = 1, 2, ... each SIGKILLing itself at its N-th file-system change inside the
# output directory, checking the visible result after each, until one run finishes; prints
# the input of the visible result after each run. `race K`: K children run at once; prints
# their exit codes.
DRIVER = textwrap.dedent(
    """
    import json, os, shutil, signal, sys
    from pathlib import Path
    from rfm_assets.cli import main
    from rfm_assets_tests.test_result_dir import one_whole_result
    import dagster  # noqa: F401  (imported before forking)

    mode, count, output, inputs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

    def killing_at(step):
        calls = [0]
        def wrap(function):
            def wrapper(*args, **kwargs):
                if any(str(a).startswith(output) for a in args):
                    calls[0] += 1
                    if calls[0] == step:
                        os.kill(os.getpid(), signal.SIGKILL)
                return function(*args, **kwargs)
            return wrapper
        for name in ("replace", "rename", "symlink", "unlink", "mkdir", "rmdir"):
            setattr(os, name, wrap(getattr(os, name)))
        shutil.rmtree = wrap(shutil.rmtree)

    def child(step, source):
        if step:
            killing_at(step)
        sys.stdout = sys.stderr = open(os.devnull, "w")
        os._exit(main(["analyze", "--input", source, "--output", output]))

    codes = []
    if mode == "kill":
        seen = []
        for step in range(1, count + 1):
            pid = os.fork()
            if pid == 0:
                child(step, inputs[0])
            code = os.waitpid(pid, 0)[1]
            seen.append(one_whole_result(Path(output)))
            if code == 0:
                break
            assert os.WIFSIGNALED(code), code
        print(json.dumps({"killed": step - 1, "seen": seen}))
        sys.exit(0)
    else:
        pids = []
        for i in range(count):
            pid = os.fork()
            if pid == 0:
                child(0, inputs[i % len(inputs)])
            pids.append(pid)
        codes = [os.waitpid(pid, 0)[1] for pid in pids]
    print(" ".join(str(c) for c in codes))
    """
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    """Small inputs with different numbers of customers, so a mixed result shows."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = []
    for customers in (30, 40, 50, 60):
        path = folder / f"tx_{customers}.parquet"
        generate_transactions(customers * 4, customers=customers, seed=customers).to_parquet(path)
        paths.append(str(path))
    return paths


def drive(tmp_path: Path, mode: str, count: int, output: Path, inputs: list[str]) -> str:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = subprocess.run(
        [sys.executable, str(script), mode, str(count), str(output), *inputs],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def one_whole_result(output: Path) -> str:
    """The input of the visible result, after checking all three files are of that run."""
    summary = json.loads((output / "run_summary.json").read_text())
    segments = pd.read_parquet(output / "customer_segments.parquet")
    analytics = pd.read_parquet(output / "segment_analytics.parquet")
    assert summary["customers"] == len(segments) == analytics["customers"].sum()
    assert segments["customer_id"].nunique() == len(segments)
    return summary["input"]


def leftovers(output: Path) -> list[str]:
    """Entries of dead runs: anything beyond the current and previous results."""
    runs = output / ".rfm" / "runs"
    kept = {os.readlink(output / ".rfm" / p).split("/")[-1] for p in ("current", "previous")
            if (output / ".rfm" / p).is_symlink()}  # fmt: skip
    stray = [p.name for p in runs.iterdir() if p.name not in kept]
    stray += [p.name for p in output.rglob("*.tmp")]
    stray += [p.name for p in output.iterdir() if p.name.startswith(".rfm_")]
    return stray


@pytest.mark.heavy
def test_a_run_killed_at_any_step_leaves_one_whole_result(tmp_path, inputs):
    output = tmp_path / "out"
    first, second = inputs[0], inputs[1]
    assert main(["analyze", "--input", first, "--output", str(output)]) == 0
    outcome = json.loads(drive(tmp_path, "kill", 80, output, [second]))
    assert 8 < outcome["killed"] < 80  # every step of the switch was interrupted once
    assert set(outcome["seen"]) == {first, second}
    assert outcome["seen"][-1] == one_whole_result(output) == second
    assert leftovers(output) == []  # what the killed runs left was removed


@pytest.mark.heavy
def test_racing_runs_leave_one_whole_result(tmp_path, inputs):
    output = tmp_path / "out"
    for _ in range(5):
        codes = drive(tmp_path, "race", 4, output, inputs).split()
        assert codes == ["0", "0", "0", "0"]
        assert one_whole_result(output) in inputs
    assert leftovers(output) == []


def test_a_live_run_is_never_swept(tmp_path, inputs):
    """A run's folder survives another run's sweep while its lock is held."""
    from rfm_assets.result_dir import ResultDirectory

    output = tmp_path / "out"
    with ResultDirectory(output) as live:
        (live.files / "partial.parquet").write_text("being written")
        live.work.mkdir()
        assert main(["analyze", "--input", inputs[0], "--output", str(output)]) == 0
        assert (live.files / "partial.parquet").exists() and live.work.exists()
    assert not live.files.exists() and not live.work.exists()  # unpublished: removed on exit


def test_switching_format_hides_the_other_formats_files(tmp_path, inputs):
    output = tmp_path / "out"
    assert main(["analyze", "--input", inputs[0], "--output", str(output)]) == 0
    assert main(["analyze", "--input", inputs[0], "--output", str(output), "--format", "csv"]) == 0
    visible = sorted(p.name for p in output.iterdir() if not p.name.startswith("."))
    assert visible == [
        "customer_segments.csv",
        "run_summary.json",
        "segment_analytics.csv",
        "segment_migration.csv",  # against the Parquet result it replaced
        "slipping_customers.csv",
    ]


def test_leftovers_of_the_earlier_layout_are_removed(tmp_path, inputs):
    output = tmp_path / "out"
    for leftover in (".rfm_staging_1a2b3c4d", ".rfm_work_1a2b3c4d"):
        (output / leftover / "customer_segments.parquet").mkdir(parents=True)
    assert main(["analyze", "--input", inputs[0], "--output", str(output)]) == 0
    assert leftovers(output) == []


# --- a run removes only what it wrote ----------------------------------------------------


def listing(output: Path) -> dict[str, object]:
    """Every entry under `output`, with its contents: links by target, files by bytes."""
    seen: dict[str, object] = {}
    for root, dirs, files in os.walk(output):
        for name in dirs + files:
            path = Path(root) / name
            relative = str(path.relative_to(output))
            if path.is_symlink():
                seen[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[relative] = ("dir",)
            else:
                seen[relative] = ("file", path.read_bytes())
    return seen


def refusal(output: Path, name: str) -> str:
    return (
        f"rfm-assets: error: --output: {output / name} exists and was not written by "
        "rfm-assets; move it or choose another --output\n"
    )


def own_campaigns(output: Path) -> None:
    (output / "campaigns").mkdir(parents=True)
    (output / "campaigns" / "notes.txt").write_text("call Ann back\n")


def own_segments_file(output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "customer_segments.parquet").write_bytes(b"my own table")


def own_analytics_folder(output: Path) -> None:
    (output / "segment_analytics.parquet").mkdir(parents=True)
    (output / "segment_analytics.parquet" / "part-0.parquet").write_bytes(b"mine")


def own_link(output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "notes.txt").write_text("mine\n")
    (output / "campaigns").symlink_to("notes.txt")


@pytest.mark.parametrize(
    "make, name, extra",
    [
        (own_campaigns, "campaigns", ["--split-by-segment"]),
        (own_segments_file, "customer_segments.parquet", []),
        (own_analytics_folder, "segment_analytics.parquet", []),
        (own_link, "campaigns", ["--split-by-segment"]),
    ],
)
@pytest.mark.parametrize("earlier_run", [False, True], ids=["fresh", "after_a_run"])
def test_a_name_taken_by_your_own_entry_is_refused_untouched(
    tmp_path, inputs, capsys, make, name, extra, earlier_run
):
    output = tmp_path / "out"
    if earlier_run:
        assert main(["analyze", "--input", inputs[0], "--output", str(output)]) == 0
        (output / name).unlink(missing_ok=True)  # our link; the user's entry takes the name
    make(output)
    before = listing(output)
    capsys.readouterr()
    assert main(["analyze", "--input", inputs[1], "--output", str(output), *extra]) == 1
    assert capsys.readouterr().err == refusal(output, name)
    assert listing(output) == before  # nothing in DIR changed, the user's entry byte for byte


def test_your_own_entries_that_look_like_ours_survive_the_sweep(tmp_path, inputs):
    output = tmp_path / "out"
    output.mkdir()
    (output / "my.link.tmp").symlink_to("elsewhere")
    (output / ".x.20260101T000000-1a2b3c4d.tmp").symlink_to("elsewhere")  # not our target
    (output / ".rfm_staging_notes").mkdir()
    (output / ".rfm_staging_notes" / "a.txt").write_text("mine\n")
    (output / ".rfm_work_1a2b3c4d").symlink_to(".rfm_staging_notes")  # a link, not a folder
    before = listing(output)
    for source in inputs[:2]:
        assert main(["analyze", "--input", source, "--output", str(output)]) == 0
    after = listing(output)
    assert {k: v for k, v in after.items() if k in before} == before


def test_a_dead_runs_temporary_links_are_still_swept(tmp_path, inputs):
    """Links named and aimed exactly as an (older version's) killed run left them."""
    output = tmp_path / "out"
    assert main(["analyze", "--input", inputs[0], "--output", str(output)]) == 0
    dead = "20260101T000000-1a2b3c4d"
    (output / f".customer_segments.parquet.{dead}.tmp").symlink_to(
        ".rfm/current/customer_segments.parquet"
    )
    (output / ".rfm" / f".current.{dead}.tmp").symlink_to(f"runs/{dead}")
    (output / ".rfm" / f".visible.{dead}.tmp").write_text("half a manifest")
    assert main(["analyze", "--input", inputs[1], "--output", str(output)]) == 0
    assert leftovers(output) == []


def test_our_own_results_are_replaced_and_hidden(tmp_path, inputs):
    output = tmp_path / "out"
    split = ["--split-by-segment"]
    assert main(["analyze", "--input", inputs[0], "--output", str(output), *split]) == 0
    first = os.path.realpath(output / "campaigns")
    assert main(["analyze", "--input", inputs[1], "--output", str(output), *split]) == 0
    second = os.path.realpath(output / "campaigns")
    assert second != first and os.path.realpath(output / ".rfm" / "current") in second
    assert one_whole_result(output) == inputs[1]
    assert main(["analyze", "--input", inputs[0], "--output", str(output)]) == 0
    assert not os.path.lexists(output / "campaigns")  # ours, in the manifest: hidden
    visible = sorted(p.name for p in output.iterdir() if not p.name.startswith("."))
    assert (output / ".rfm" / "visible").read_text().split() == visible
    assert leftovers(output) == []


def test_a_result_directory_without_a_manifest_keeps_its_links(tmp_path, inputs):
    """Written by the version before `.rfm/visible`: its `X -> .rfm/current/X` links are ours."""
    output = tmp_path / "out"
    split = ["--split-by-segment"]
    assert main(["analyze", "--input", inputs[0], "--output", str(output), *split]) == 0
    (output / ".rfm" / "visible").unlink()
    assert main(["analyze", "--input", inputs[1], "--output", str(output)]) == 0
    assert one_whole_result(output) == inputs[1]
    assert not os.path.lexists(output / "campaigns")


def test_a_name_taken_during_the_run_is_refused_at_the_switch(tmp_path, inputs):
    from rfm_assets.errors import RFMError
    from rfm_assets.result_dir import ResultDirectory

    output = tmp_path / "out"
    assert main(["analyze", "--input", inputs[0], "--output", str(output)]) == 0
    current = os.readlink(output / ".rfm" / "current")
    with ResultDirectory(output, ["run_summary.json"]) as run:
        (run.files / "run_summary.json").write_text("{}")
        (run.files / "campaigns").mkdir()
        own_campaigns(output)  # after the run began
        before = listing(output)
        with pytest.raises(RFMError) as raised:
            run.publish()
    assert str(raised.value) == refusal(output, "campaigns").split("error: ", 1)[1].rstrip()
    assert os.readlink(output / ".rfm" / "current") == current
    assert {k: v for k, v in listing(output).items() if not k.startswith(".rfm/runs")} == {
        k: v for k, v in before.items() if not k.startswith(".rfm/runs")
    }
