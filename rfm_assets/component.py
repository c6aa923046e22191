"""`RFMSegmentation`: the RFM graph as a Dagster component a deployment declares in YAML.

    # defs/rfm_eu/defs.yaml
    type: rfm_assets.RFMSegmentation
    attributes:
      key_prefix: [eu]
      source: "{{ env.RFM_EU_TRANSACTIONS }}"
      weeks_start: "2024-01-01"
      settings:
        columns: {customer_id: customer, transaction_date: ts, amount: total, order_id: order}
        analysis_period_days: 365

Each instance gets its own asset keys (under `key_prefix`), checks, settings resource
(`rfm_settings_<prefix>`), weekly partitions, job and Monday schedule; instances share the
`spark` and `io_manager` resources of the code location.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

import dagster as dg
from pydantic import Field

from rfm_assets.assets import GROUP, RFMGraph, build_rfm_assets, build_rfm_checks
from rfm_assets.errors import RFMConfigError


def _io_manager(spark, base_dir: Optional[str]):
    """One shared object for the default storage: instances merge only with identical ones."""
    from rfm_assets.io_manager import RFMParquetIOManager

    if base_dir is None:
        global _DEFAULT_IO_MANAGER
        if _DEFAULT_IO_MANAGER is None:
            _DEFAULT_IO_MANAGER = RFMParquetIOManager(spark=spark)
        return _DEFAULT_IO_MANAGER
    return RFMParquetIOManager(spark=spark, base_dir=base_dir)


_DEFAULT_IO_MANAGER = None


def build_rfm_definitions(
    settings,
    key_prefix: tuple[str, ...] = (),
    weeks_start: Optional[str] = None,
    weeks_end: Optional[str] = None,
    schedule_hour: Optional[int] = 6,
    schedule_running: bool = True,
    storage: Optional[str] = None,
    source_asset: Optional[str] = None,
    bundled_sample: bool = False,
) -> dg.Definitions:
    """Assets, checks, job, schedule and resources of one RFM graph instance.

    `source_asset` ("raw/orders") starts the graph from the table another asset produces,
    loaded by that asset's IO manager, instead of `settings.input_path`. One of the two is
    required: only the package's own demo (`bundled_sample=True`) and the command line's
    default read the bundled sample, so a deployment whose source went missing fails when it
    loads instead of segmenting the sample.
    """
    from rfm_assets.spark_resource import spark

    if settings.input_path and source_asset:
        raise RFMConfigError(
            f"source_asset: {source_asset!r} and input_path {settings.input_path!r} both give "
            "the transactions; keep one"
        )
    if not (settings.input_path or source_asset or bundled_sample):
        raise RFMConfigError(
            "input_path: unset, and no source_asset; set the transactions to segment (the "
            "bundled sample is read only by rfm_assets' own demo and the command line)"
        )

    name = "_".join(key_prefix)
    partitions = None
    if weeks_start:
        # Weeks start on Monday; a week's reference date is the Monday after it (its end).
        partitions = dg.WeeklyPartitionsDefinition(
            start_date=weeks_start, end_date=weeks_end, day_offset=1
        )
    graph = RFMGraph(
        key_prefix=tuple(key_prefix),
        settings_key=f"rfm_settings_{name}" if name else "rfm_settings",
        # Its own storage needs its own key; the default storage is shared.
        io_manager_key=f"rfm_io_manager_{name}" if storage and name else "io_manager",
        partitions=partitions,
        engine=settings.engine,
        group=f"{GROUP}_{name}" if name else GROUP,
        source_asset=tuple(source_asset.split("/")) if source_asset else None,
    )
    assets = build_rfm_assets(graph)
    job = dg.define_asset_job(
        f"rfm_{name}_job" if name else "rfm_job",
        selection=dg.AssetSelection.assets(*assets),  # partitions come from the assets
        description="Materialize the whole RFM graph: transactions to segment analytics"
        + (" for one week (its reference date is the Monday after it)." if partitions else "."),
        # On Spark every step runs in the run's own process and so shares one Spark
        # application: a process per step would start a JVM per step (31-49 s each on the
        # bundled data). See "One Spark application per run" in the README.
        executor_def=dg.in_process_executor if settings.engine == "spark" else None,
    )
    schedules = []
    if schedule_hour is not None:
        status = (
            dg.DefaultScheduleStatus.RUNNING
            if schedule_running
            else (dg.DefaultScheduleStatus.STOPPED)
        )
        schedule_name = f"rfm_{name}_weekly" if name else "rfm_weekly"
        description = (
            f"Segment the week that just ended, every Monday at {schedule_hour:02d}:00 UTC."
        )
        if partitions:
            schedules.append(
                dg.build_schedule_from_partitioned_job(
                    job,
                    name=schedule_name,
                    hour_of_day=schedule_hour,
                    default_status=status,
                    description=description,
                )
            )
        else:
            schedules.append(
                dg.ScheduleDefinition(
                    name=schedule_name,
                    job=job,
                    cron_schedule=f"0 {schedule_hour} * * 1",
                    execution_timezone="UTC",
                    default_status=status,
                    description=description,
                )
            )
    return dg.Definitions(
        assets=assets,
        asset_checks=build_rfm_checks(assets),
        jobs=[job],
        schedules=schedules,
        resources={
            graph.settings_key: settings,
            "spark": spark,
            graph.io_manager_key: _io_manager(spark, storage),
        },
    )


class RFMSegmentation(dg.Component, dg.Resolvable, dg.Model):
    """RFM segmentation of one transaction table: five weekly-partitioned assets with their
    checks, a job and a Monday schedule for the week that just ended."""

    key_prefix: list[str] = Field(
        default_factory=list,
        description="Asset key prefix of this instance, e.g. [eu]; also names its group, job, "
        "schedule and settings resource. Empty: the unprefixed keys.",
    )
    source: Annotated[
        Optional[str],
        dg.Resolver(
            lambda context, raw: _resolve_source(context, raw),
            model_field_type=Optional[str],
            inject_before_resolve=False,
            description="Transactions: a .parquet or .csv file, a folder of Parquet files, or "
            "a URI Spark reads. Use {{ env.NAME }} to take it from the environment (an unset "
            "variable fails the load, naming it). Give this or source_asset.",
        ),
    ] = None
    source_asset: Optional[str] = Field(
        default=None,
        description="Instead of source: the key (e.g. raw/orders) of an asset of this code "
        "location whose value is the transaction table, a pandas DataFrame (pandas engine) "
        "or a Spark DataFrame (Spark engine).",
    )
    settings: dict = Field(
        default_factory=dict,
        description="Any RFM setting (columns, weights, analysis_period_days, scoring_method, "
        "returns_policy, segment_grid_file, thresholds_from_week, engine, ...), validated "
        "when the code location loads. The launchpad can still override them per run.",
    )
    weeks_start: Optional[str] = Field(
        default=None,
        description="First week (a Monday, YYYY-MM-DD) of the weekly partitions. Unset: no "
        "partitions, one table replaced by each run.",
    )
    weeks_end: Optional[str] = Field(
        default=None, description="Exclusive end of the weekly partitions. Unset: open-ended."
    )
    schedule_hour: Optional[int] = Field(
        default=6,
        description="UTC hour on Mondays at which the schedule runs the week that just ended; "
        "null for no schedule.",
    )
    schedule_status: Literal["running", "stopped"] = Field(
        default="running", description="Whether the schedule runs as soon as it is deployed."
    )
    storage: Optional[str] = Field(
        default=None,
        description="Asset storage (local path or URI) of the code location's io_manager.",
    )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from rfm_assets.settings import build_settings

        where = f"RFMSegmentation in {context.path / 'defs.yaml'}"
        given = [
            name
            for name, value in (
                ("source", self.source),
                ("source_asset", self.source_asset),
                ("settings.input_path", self.settings.get("input_path")),
            )
            if value
        ]
        if len(given) > 1:
            raise RFMConfigError(
                f"{where}: {' and '.join(given)} both give the transactions; keep one"
            )
        if not given:
            raise RFMConfigError(
                f"{where}: no source; set source (a path or URI, e.g. "
                '"{{ env.MY_TRANSACTIONS }}") or source_asset'
            )
        try:
            settings = build_settings(
                {**self.settings, "input_path": self.source or self.settings.get("input_path")}
            )
        except RFMConfigError as error:
            raise RFMConfigError(f"{where}: settings: {error}") from None
        return build_rfm_definitions(
            settings,
            key_prefix=tuple(self.key_prefix),
            weeks_start=self.weeks_start,
            weeks_end=self.weeks_end,
            schedule_hour=self.schedule_hour,
            schedule_running=self.schedule_status == "running",
            storage=self.storage,
            source_asset=self.source_asset,
        )


# `{{ env.NAME }}`, `{{ env('NAME') }}`, `{{ env("NAME", ...) }}`
_ENV_REFERENCE = re.compile(r"""env(?:\.(\w+)|\(\s*['"](\w+)['"])""")


def _resolve_source(context: dg.ResolutionContext, raw: Optional[str]) -> Optional[str]:
    """The source with its template filled in; a template that comes out empty (an unset
    environment variable) fails the load naming the variable and the file, where Dagster
    would hand on None and the graph would have nothing to read."""
    from dagster.components.resolved.context import ResolutionException

    if raw is None:
        return None
    value = context.resolve_value(raw)
    if value not in (None, ""):
        return str(value)
    names = [a or b for a, b in _ENV_REFERENCE.findall(raw)]
    why = f"the environment variable {', '.join(names)} is not set" if names else "it is empty"
    raise ResolutionException(f"{_position(context)}source {raw!r} gives no path: {why}")


def _position(context: dg.ResolutionContext) -> str:
    """`file:line: ` of the value being resolved, where Dagster knows it."""
    try:
        position, _ = context.source_position_tree.lookup_closest_and_path(context.path, trace=None)
        return f"{position.filename}:{position.start.line}: "
    except Exception:  # no source positions (built in code): the message stands without
        return ""
