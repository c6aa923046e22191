"""What a run of the graph on a tiny input costs, in this checkout and in others: what the
tests pay, run after run.

    .venv/bin/python benchmarks/small_runs.py [--runs 8] [--repeats 3] [--tree DIR ...]

Each repeat starts, for this checkout and for each `--tree` (another checkout of the
repository, such as a `git worktree` at an earlier commit), a process that imports the
package from it, runs the graph once to warm up (imports, Dagster's first run, DuckDB's
first database) and then `--runs` times on five transactions of four customers (a CSV
file), with `rfm_assets.run` and the default settings. The processes of a repeat run one
after another and the repeats interleave, so a shared machine's noise falls on every
checkout. Prints each checkout's median run over all repeats, and its ratio to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run in a process of its own with the checkout first on the path: prints a JSON list of the
# timed runs' seconds.
RUNS = """
import json, sys, time
from rfm_assets import run
from rfm_assets.settings import RFMSettings
settings = RFMSettings(input_path=sys.argv[1])
run(settings)
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    run(settings)
    times.append(time.perf_counter() - started)
print(json.dumps(times))
"""

FIVE_ROWS = """customer_id,transaction_date,amount
C1,2024-01-01,10.00
C2,2024-01-02,20.00
C3,2024-01-03,5.50
C1,2024-01-05,7.25
C4,2024-01-04,3.00
"""


def timed_runs(tree: Path, source: Path, runs: int) -> list[float]:
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", RUNS, str(source), str(runs)],
        env=environment,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], type=Path,
                        help="another checkout to time (repeatable)")  # fmt: skip
    args = parser.parse_args()
    trees = [REPO, *[tree.resolve() for tree in args.tree]]
    times: dict[Path, list[float]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "five.csv"
        source.write_text(FIVE_ROWS)
        for repeat in range(1, args.repeats + 1):
            for tree in trees:
                times[tree] += timed_runs(tree, source, args.runs)
                print(f"repeat {repeat}, {tree}: median so far "
                      f"{statistics.median(times[tree]):.3f} s", flush=True)  # fmt: skip
    first = statistics.median(times[REPO])
    for tree in trees:
        median = statistics.median(times[tree])
        print(f"{tree}: median {median:.3f} s a run over {len(times[tree])} runs "
              f"({median / first:.2f}x this checkout)")  # fmt: skip


if __name__ == "__main__":
    main()
