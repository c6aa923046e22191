"""One week of the bundled sample in Dagster, against the command line for the same week.

    .venv/bin/python benchmarks/dagster_week.py --runs 5

Runs, as whole processes and in turn (so a shared machine's noise falls on all of them):
- `dagster`: the README's command, `dagster asset materialize -m rfm_assets --select '*'
  --partition 2011-11-28`, on a fresh DAGSTER_HOME with an empty dagster.yaml (Dagster's
  defaults: SQLite storage, the package's in-process executor), pictures on (the default);
- `dagster_no_pictures`: the same with `pictures: false` in the run config;
- `cli`: `rfm-assets analyze --reference-date 2011-12-05` (that week's reference date).

Prints and writes (`--json`) each one's median wall seconds and its ratio to `cli`, pair by
pair. One warm-up round is not counted.

    .venv/bin/python benchmarks/dagster_week.py --all-weeks --runs 1

times instead every bundled week as one range run (`--partition-range 2010-11-29...2011-12-05`,
54 weeks, pictures on and off) against one `rfm-assets analyze` over the whole sample.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
WEEK, REFERENCE_DATE = "2011-11-28", "2011-12-05"
ALL_WEEKS = "2010-11-29...2011-12-05"


def commands(folder: Path, all_weeks: bool) -> dict[str, list[str]]:
    no_pictures = folder / "no_pictures.yaml"
    no_pictures.write_text("resources:\n  rfm_settings:\n    config:\n      pictures: false\n")
    weeks = ["--partition-range", ALL_WEEKS] if all_weeks else ["--partition", WEEK]
    materialize = [str(BIN / "dagster"), "asset", "materialize", "-m", "rfm_assets",
                   "--select", "*", *weeks]  # fmt: skip
    as_of = [] if all_weeks else ["--reference-date", REFERENCE_DATE]
    return {
        "dagster": materialize,
        "dagster_no_pictures": [*materialize, "-c", str(no_pictures)],
        "cli": [str(BIN / "rfm-assets"), "analyze", *as_of, "--output", str(folder / "cli_output")],
    }


def fresh_home(folder: Path) -> dict:
    """The environment of a run on a new, empty DAGSTER_HOME (Dagster's defaults): every
    run stores its weeks from scratch, as a first run on a new machine does."""
    home = Path(tempfile.mkdtemp(dir=folder, prefix="dagster_home_"))
    (home / "dagster.yaml").touch()
    return {**os.environ, "DAGSTER_HOME": str(home)}


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--all-weeks", action="store_true", help="the 54 weeks as one range run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    name = "dagster_all_weeks" if args.all_weeks else "dagster_week"
    args.json = args.json or f"benchmarks/results/{name}.json"
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        runs = commands(folder, args.all_weeks)
        walls: dict[str, list[float]] = {name: [] for name in runs}
        for round_number in range(args.runs + 1):
            for name, command in runs.items():
                wall = timed(command, fresh_home(folder))
                if round_number:  # the first round warms the caches
                    walls[name].append(wall)
    result = {
        "weeks": ALL_WEEKS if args.all_weeks else WEEK,
        "cli_reference_date": None if args.all_weeks else REFERENCE_DATE,
        "runs": args.runs,
        "median_wall_s": {name: round(statistics.median(w), 3) for name, w in walls.items()},
        "median_ratio_to_cli": {
            name: round(statistics.median(a / b for a, b in zip(w, walls["cli"])), 3)
            for name, w in walls.items()
            if name != "cli"
        },
        "walls_s": {name: [round(x, 3) for x in w] for name, w in walls.items()},
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
    }
    print(json.dumps({k: result[k] for k in ("median_wall_s", "median_ratio_to_cli")}, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
