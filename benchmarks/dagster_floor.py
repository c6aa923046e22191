"""What Dagster's own bookkeeping costs for the shape of our graph, with no work in it.

    .venv/bin/python benchmarks/dagster_floor.py --runs 3

Builds a code location with the same asset keys, weekly partitions, edges (with their
partition mappings), backfill policy and asset checks as `rfm_assets`, whose bodies do
nothing: each yields its checks as passed and a materialization without a value (no IO
manager, no inputs loaded). Then times, as whole processes on a fresh DAGSTER_HOME each and
in turn with the product (a shared machine's noise falls on all of them):

- `floor_week` / `dagster_week`: `dagster asset materialize --select '*' --partition 2011-11-28`
  of the empty shape and of `rfm_assets`;
- `floor_all_weeks` / `dagster_all_weeks`: the same for the 54 bundled weeks as one range;
- `floor_one_step_week`, `floor_one_step_all_weeks`: the empty shape as one multi-asset step
  (all ten assets and their checks), to see what fewer steps would save;
- `floor_imports_week`, `floor_imports_all_weeks`: the empty shape in a module that also
  imports what every run of the product imports (`rfm_assets.definitions`, pandas, pyarrow's
  Parquet, DuckDB; not matplotlib, which only pictures need): the least any design of the graph
  can cost in Dagster before it computes or stores anything;
- `cli_imports`: a process that imports what `rfm-assets analyze` imports and exits, so
  `cli_week - cli_imports` is what the command line spends working;
- `cli_week`, `cli_all_weeks`: `rfm-assets analyze` for that week's reference date and over
  the whole sample: the peers the weekly targets are set against.

So the floor says how much of a Dagster run is Dagster's per-run, per-step, per-event and
per-materialization cost for ten weekly assets and their checks, whatever the steps do.
Prints and writes (`--json`) the medians and each run's ratio to its CLI peer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The same weeks, and one way to time a run, for both benchmarks.
from dagster_week import ALL_WEEKS, BIN, REFERENCE_DATE, WEEK, fresh_home, timed


def shape_of_rfm_assets() -> dict:
    """The keys, partitions, edges (with their partition mappings), backfill policy and
    checks of rfm_assets' graph, as JSON: the empty shape is built from it without
    importing the package (its imports are the product's cost, not Dagster's)."""
    from rfm_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        weeks = node.partitions_def
        assets[key.path[-1]] = {
            "partitions": {
                "start": weeks.start.isoformat(),
                "end": weeks.end.isoformat(),
                "cron_schedule": weeks.cron_schedule,
                "fmt": weeks.fmt,
                "timezone": weeks.timezone,
            },  # fmt: skip
            "single_run": node.backfill_policy is not None
            and node.backfill_policy.max_partitions_per_run is None,
            "parents": {
                parent.path[-1]: [mapping.start_offset, mapping.end_offset]
                if (mapping := node.partition_mappings.get(parent)) is not None
                else None
                for parent in node.parent_keys
            },
            "checks": {
                check.name: graph.get_check_spec(check).blocking
                for check in node.check_keys
                if check.name != "column_schema_change"  # added as rfm_assets adds them
            },
        }
    return assets


def empty_shape(shape: dict):
    """Definitions of `shape` (see shape_of_rfm_assets) whose bodies do nothing."""
    import warnings

    import dagster as dg

    warnings.simplefilter("ignore", dg.BetaWarning)
    assets = []
    for name, asset in shape.items():
        policy = dg.BackfillPolicy.single_run() if asset["single_run"] else None
        assets.append(_empty_asset(dg, name, _deps(dg, asset), _partitions(dg, asset),
                                   _checks(dg, name, asset), policy))  # fmt: skip
    tables = [a for a in assets if a.key.path[-1] != "rfm_report"]
    return dg.Definitions(
        assets=assets,
        asset_checks=list(dg.build_column_schema_change_checks(assets=tables)),
        executor=dg.in_process_executor,
    )


def empty_shape_in_one_step(shape: dict):
    """The same assets and checks as one subsettable multi-asset step (as dagster-dbt builds a
    project): what fewer steps would save."""
    import warnings

    import dagster as dg

    warnings.simplefilter("ignore", dg.BetaWarning)
    partitions = _partitions(dg, next(iter(shape.values())))
    specs, checks = [], []
    for name in ONE_STEP_ORDER:  # a multi-asset yields its assets in the order of the edges
        asset = shape[name]
        # An asset's own earlier weeks are no edge: one step holds them anyway.
        deps = [dep for dep in _deps(dg, asset) if dep.asset_key.path[-1] != name]
        specs.append(dg.AssetSpec(name, deps=deps, partitions_def=partitions))
        checks += _checks(dg, name, asset)

    @dg.multi_asset(specs=specs, check_specs=checks, partitions_def=partitions,
                    backfill_policy=dg.BackfillPolicy.single_run(), can_subset=True)  # fmt: skip
    def rfm():
        for spec in specs:
            yield dg.MaterializeResult(asset_key=spec.key)
            for check in checks:
                if check.asset_key == spec.key:
                    yield dg.AssetCheckResult(asset_key=check.asset_key, check_name=check.name,
                                              passed=True)  # fmt: skip

    return dg.Definitions(
        assets=[rfm],
        asset_checks=list(dg.build_column_schema_change_checks(assets=[rfm])),
        executor=dg.in_process_executor,
    )


def _partitions(dg, asset: dict):
    import datetime as dt

    weeks = asset["partitions"]
    return dg.TimeWindowPartitionsDefinition(
        start=dt.datetime.fromisoformat(weeks["start"]),
        end=dt.datetime.fromisoformat(weeks["end"]),
        cron_schedule=weeks["cron_schedule"],
        fmt=weeks["fmt"],
        timezone=weeks["timezone"],
    )


def _deps(dg, asset: dict) -> list:
    return [
        dg.AssetDep(parent, partition_mapping=None if offsets is None else
                    dg.TimeWindowPartitionMapping(start_offset=offsets[0], end_offset=offsets[1],
                                                  allow_nonexistent_upstream_partitions=True))
        for parent, offsets in asset["parents"].items()
    ]  # fmt: skip


def _checks(dg, name: str, asset: dict) -> list:
    return [dg.AssetCheckSpec(check, asset=name, blocking=blocking)
            for check, blocking in asset["checks"].items()]  # fmt: skip


ONE_STEP_ORDER = ("transactions", "rfm_metrics", "rfm_scores", "customer_segments",
                  "cluster_model", "segment_analytics", "high_value_customers",
                  "segment_migration", "slipping_customers", "rfm_report")  # fmt: skip


def _empty_asset(dg, name, deps, partitions, checks, policy):
    @dg.multi_asset(
        name=name,
        specs=[dg.AssetSpec(name, deps=deps, partitions_def=partitions)],
        check_specs=checks,
        backfill_policy=policy,
    )
    def _nothing():
        for check in checks:
            yield dg.AssetCheckResult(asset_key=check.asset_key, check_name=check.name,
                                      passed=True)  # fmt: skip
        yield dg.MaterializeResult(asset_key=name)

    return _nothing


# What every run of the product imports, whatever it computes (pictures aside), and what the
# command line imports besides.
PRODUCT_IMPORTS = "import rfm_assets.definitions, pandas, pyarrow.parquet, duckdb\n"
CLI_IMPORTS = "import rfm_assets.cli, rfm_assets.runner\n"


def commands(folder: Path) -> dict[str, tuple[list[str], str]]:
    """name: (command, the CLI peer it is compared with)."""
    (folder / "shape.json").write_text(json.dumps(shape_of_rfm_assets()))
    shape, one_step = folder / "empty_shape.py", folder / "empty_shape_in_one_step.py"
    with_imports = folder / "empty_shape_with_imports.py"
    for module, builder, imports in (
        (shape, "empty_shape", ""),
        (one_step, "empty_shape_in_one_step", ""),
        (with_imports, "empty_shape", PRODUCT_IMPORTS),
    ):
        module.write_text(
            f"import json, sys\n{imports}"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"from dagster_floor import {builder}\n"
            f"defs = {builder}(json.load(open({str(folder / 'shape.json')!r})))\n"
        )
    week, weeks = ["--partition", WEEK], ["--partition-range", ALL_WEEKS]
    materialize = [str(BIN / "dagster"), "asset", "materialize", "--select", "*"]
    analyze = [str(BIN / "rfm-assets"), "analyze", "--output", str(folder / "cli_output")]
    return {
        "floor_week": ([*materialize, "-f", str(shape), *week], "cli_week"),
        "floor_one_step_week": ([*materialize, "-f", str(one_step), *week], "cli_week"),
        "floor_imports_week": ([*materialize, "-f", str(with_imports), *week], "cli_week"),
        "dagster_week": ([*materialize, "-m", "rfm_assets", *week], "cli_week"),
        "cli_week": ([*analyze, "--reference-date", REFERENCE_DATE], "cli_week"),
        "cli_imports": ([sys.executable, "-c", f"{CLI_IMPORTS}{PRODUCT_IMPORTS}"], "cli_week"),
        "floor_all_weeks": ([*materialize, "-f", str(shape), *weeks], "cli_all_weeks"),
        "floor_one_step_all_weeks": (
            [*materialize, "-f", str(one_step), *weeks],
            "cli_all_weeks",
        ),  # fmt: skip
        "floor_imports_all_weeks": (
            [*materialize, "-f", str(with_imports), *weeks],
            "cli_all_weeks",
        ),  # fmt: skip
        "dagster_all_weeks": ([*materialize, "-m", "rfm_assets", *weeks], "cli_all_weeks"),
        "cli_all_weeks": (analyze, "cli_all_weeks"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/dagster_floor.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        runs = commands(folder)
        walls: dict[str, list[float]] = {name: [] for name in runs}
        for round_number in range(args.runs + 1):
            for name, (command, _) in runs.items():
                wall = timed(command, fresh_home(folder))
                if round_number:  # the first round warms the caches
                    walls[name].append(wall)
    result = {
        "week": WEEK,
        "cli_reference_date": REFERENCE_DATE,
        "all_weeks": ALL_WEEKS,
        "runs": args.runs,
        "median_wall_s": {name: round(statistics.median(w), 3) for name, w in walls.items()},
        "median_ratio_to_cli": {
            name: round(statistics.median(a / b for a, b in zip(w, walls[peer])), 3)
            for name, (_, peer) in runs.items()
            if name != peer
            for w in [walls[name]]
        },
        # The least a run of the product in Dagster could cost, round by round: the empty
        # shape with the product's imports, plus the work the command line does once its
        # imports are done (one week's for a week; the whole sample's, once, for the range).
        "least_possible": {
            name: {
                "median_wall_s": round(statistics.median(least), 3),
                "median_ratio_to_cli": round(
                    statistics.median(x / c for x, c in zip(least, walls[peer])), 3
                ),
            }
            for name, floor, peer in (
                ("week", "floor_imports_week", "cli_week"),
                ("all_weeks", "floor_imports_all_weeks", "cli_all_weeks"),
            )
            for least in [
                [f + c - i for f, c, i in zip(walls[floor], walls[peer], walls["cli_imports"])]
            ]  # fmt: skip
        },
        "walls_s": {name: [round(x, 3) for x in w] for name, w in walls.items()},
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
    }
    shown = ("median_wall_s", "median_ratio_to_cli", "least_possible")
    print(json.dumps({k: result[k] for k in shown}, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
