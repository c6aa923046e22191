"""One week of a large source in Dagster, against the command line plus what Dagster stores.

    .venv/bin/python benchmarks/dagster_large.py --rows 10000000 --customers 1000000 --runs 2

The source is `large.py`'s file (made once in --data-dir; its dates run 2023-01-01 to
2024-12-30). A code location built with `build_rfm_definitions` reads it (order and amount
columns mapped, the package's defaults otherwise), with weeks from 2024-12-16; its last week,
2024-12-23, ends on 2024-12-30, the reference date of the command line's run. Runs, as whole
processes and in turn:

- `dagster`: `dagster asset materialize -f <location> --select '*' --partition 2024-12-23`
  on a fresh DAGSTER_HOME (a week from scratch: its `transactions` keeps the whole window);
- `cli`: `rfm-assets analyze --input <file> --reference-date 2024-12-30 ...`.

The first Dagster run is also split into its parts, from the run's own events in its
`DAGSTER_HOME` (`parts_s`): the process until the run starts (imports, the code location),
each step from its start to its success, and the process after the run ends.

Then **what Dagster stores costs on its own**: every table the first Dagster run stored (the
current Parquet file of each asset), read into memory and written again with pyarrow's
Parquet writer, timed in this process (median of --runs). The target says a Dagster run is
no slower than the CLI plus that (`dagster / (cli + storing)` at most 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from dagster_week import BIN, fresh_home, timed
from large import data_file

WEEKS_START, WEEK, REFERENCE_DATE = "2024-12-16", "2024-12-23", "2024-12-30"


def location(folder: Path, source: Path) -> Path:
    module = folder / "large_location.py"
    module.write_text(
        "from rfm_assets.component import build_rfm_definitions\n"
        "from rfm_assets.settings import RFMSettings\n"
        f"defs = build_rfm_definitions(RFMSettings(input_path={str(source)!r}, "
        "columns={'order_id': 'order_id', 'amount': 'amount'}), "
        f"weeks_start={WEEKS_START!r}, weeks_end={REFERENCE_DATE!r}, "
        "schedule_running=False)\n"
    )
    return module


def stored_tables(home: Path) -> list[Path]:
    """The current Parquet file of every asset the run stored under `home`."""
    files = []
    for current in sorted(home.glob("storage/**/CURRENT")):
        files.append(current.parent / current.read_text().strip())
    return files


def run_parts(home: Path, started: float, ended: float) -> dict[str, float]:
    """Seconds of each part of the one run stored under `home`, from its events; `started`
    and `ended` are the process's wall-clock start and end."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        (run,) = instance.get_runs()
        events = [e for e in instance.all_logs(run.run_id) if e.is_dagster_event]
    finally:
        instance.dispose()
    # The run's own start and end are stored under their older names, PIPELINE_*.
    kinds = {"PIPELINE_START": "RUN_START", "PIPELINE_SUCCESS": "RUN_SUCCESS",
             "STEP_START": "STEP_START", "STEP_SUCCESS": "STEP_SUCCESS"}  # fmt: skip
    at = {(kinds[e.dagster_event.event_type_value], e.step_key): e.timestamp for e in events
          if e.dagster_event.event_type_value in kinds}  # fmt: skip
    parts = {"process until the run starts": at[("RUN_START", None)] - started}
    for (kind, step), start in sorted(at.items(), key=lambda item: item[1]):
        if kind == "STEP_START":
            parts[step] = at[("STEP_SUCCESS", step)] - start
    parts["process after the run"] = ended - at[("RUN_SUCCESS", None)]
    return {part: round(seconds, 2) for part, seconds in parts.items()}


def storing_seconds(files: list[Path], folder: Path) -> float:
    import pyarrow.parquet as pq

    tables = [pq.read_table(file) for file in files]
    started = time.perf_counter()
    for number, table in enumerate(tables):
        pq.write_table(table, folder / f"rewritten_{number}.parquet")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "rfm-large"))
    parser.add_argument("--json", default="benchmarks/results/dagster_large.json")
    args = parser.parse_args()
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    source = data_file(args.rows, args.customers, Path(args.data_dir))
    walls: dict[str, list[float]] = {"dagster": [], "cli": [], "storing": []}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        module = location(folder, source)
        runs = {
            "dagster": [str(BIN / "dagster"), "asset", "materialize", "-f", str(module),
                        "--select", "*", "--partition", WEEK],
            "cli": [str(BIN / "rfm-assets"), "analyze", "--input", str(source),
                    "--reference-date", REFERENCE_DATE, "--order-id", "order_id",
                    "--amount", "amount", "--output", str(folder / "cli_output")],
        }  # fmt: skip
        stored: list[Path] = []
        parts: dict[str, float] = {}
        for _ in range(args.runs):
            for name, command in runs.items():
                env = fresh_home(folder)
                started = time.time()
                walls[name].append(timed(command, env))
                if name == "dagster" and not stored:
                    stored = stored_tables(Path(env["DAGSTER_HOME"]))
                    parts = run_parts(Path(env["DAGSTER_HOME"]), started, time.time())
            walls["storing"].append(storing_seconds(stored, folder))
        sizes = {file.parts[-3]: file.stat().st_size for file in stored}
    median = {name: round(statistics.median(w), 3) for name, w in walls.items()}
    result = {
        "rows": args.rows,
        "customers": args.customers,
        "week": WEEK,
        "cli_reference_date": REFERENCE_DATE,
        "runs": args.runs,
        "median_wall_s": median,
        "dagster_vs_cli_plus_storing": round(
            median["dagster"] / (median["cli"] + median["storing"]), 3
        ),
        "dagster_vs_cli": round(median["dagster"] / median["cli"], 3),
        "stored_mib": {name: round(size / 2**20, 1) for name, size in sizes.items()},
        "parts_s": parts,
        "walls_s": {name: [round(x, 3) for x in w] for name, w in walls.items()},
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
    }
    print(json.dumps({k: result[k] for k in list(result)[:10]}, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
