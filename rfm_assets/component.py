"""`RFMSegmentation`: the RFM graph as a Dagster component a deployment declares in YAML.

    # defs/rfm_eu/defs.yaml
    type: rfm_assets.component.RFMSegmentation
    attributes:
      key_prefix: [eu]
      source: "{{ env.RFM_EU_TRANSACTIONS }}"
      weeks_start: "2024-01-01"
      settings:
        columns: {customer_id: customer, transaction_date: ts, amount: total, order_id: order}
        analysis_period_days: 365
    post_processing:          # Dagster's own, for any component: owners, tags, automation
      assets:
        - target: "*"
          attributes: {owners: [team:crm], tags: {region: eu}}

    # defs/resources.py: the resources all instances share, bound once per code location
    import dagster as dg
    from rfm_assets.component import shared_resources

    @dg.definitions
    def resources() -> dg.Definitions:
        return dg.Definitions(resources=shared_resources())

Each instance gets its own asset keys (under `key_prefix`), checks, settings resource
(`rfm_settings_<prefix>`), weekly partitions, job and Monday schedule; it uses the `spark` and
`io_manager` resources of the code location, which `shared_resources()` gives (an instance with
its own `storage:` binds its own IO manager, `rfm_io_manager_<prefix>`). `settings` is typed by
RFMSettings' fields (`rfm_assets.settings.RFMSettingsModel`), so the component's JSON schema,
which editors and `dg check yaml` use, lists each setting with its description.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

import dagster as dg
from pydantic import BaseModel, Field

from rfm_assets.assets import GROUP, RFMGraph, build_rfm_assets, build_rfm_checks
from rfm_assets.contract import COLUMNS_OF
from rfm_assets.errors import RFMConfigError
from rfm_assets.settings import RFMSettingsModel


def shared_resources(base_dir: Optional[str] = None) -> dict[str, Any]:
    """The resources every RFM graph of a code location uses: `spark` (a session started only
    when a Spark step asks for one) and `io_manager`, the asset storage (under `base_dir`, a
    local path or URI; default: see "Reading results downstream" in the README).

    Bind them once per code location, e.g. in `defs/resources.py` of a project whose
    RFMSegmentation instances come from defs.yaml files:

        @dg.definitions
        def resources() -> dg.Definitions:
            return dg.Definitions(resources=shared_resources())
    """
    from rfm_assets.io_manager import RFMParquetIOManager
    from rfm_assets.spark_resource import spark

    return {"spark": spark, "io_manager": RFMParquetIOManager(spark=spark, base_dir=base_dir)}


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
    bind_shared_resources: bool = True,
    segments_asset_name: Optional[str] = None,
) -> dg.Definitions:
    """Assets, checks, job, schedule and resources of one RFM graph instance.

    Built from code (the default), the definitions are complete on their own: they bind the
    shared resources (`spark`, and `io_manager` on `storage` or the default storage) besides
    the instance's settings. With `bind_shared_resources=False`, as RFMSegmentation builds
    them, they bind only what is the instance's own (its settings, and an IO manager under its
    own key when it has its own `storage`), and the code location binds `shared_resources()`
    once for all its instances.

    `source_asset` ("raw/orders") starts the graph from the table another asset produces,
    loaded by that asset's IO manager, instead of `settings.input_path`. One of the two is
    required: only the package's own demo (`bundled_sample=True`) and the command line's
    default read the bundled sample, so a deployment whose source went missing fails when it
    loads instead of segmenting the sample.

    `segments_asset_name` names the `customer_segments` asset (its key under `key_prefix`);
    the other assets keep their names.
    """
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
        # Its own storage needs its own key, unless built alone; the default storage is shared.
        io_manager_key="_".join(("rfm_io_manager", *key_prefix))
        if storage and (name or not bind_shared_resources)
        else "io_manager",
        partitions=partitions,
        engine=settings.engine,
        group=f"{GROUP}_{name}" if name else GROUP,
        source_asset=tuple(source_asset.split("/")) if source_asset else None,
        lifetime_value=settings.clv,
        clv_holdout_days=settings.clv_holdout_days,
        renamed=(("customer_segments", segments_asset_name),) if segments_asset_name else (),
    )
    assets = build_rfm_assets(graph)
    job = dg.define_asset_job(
        f"rfm_{name}_job" if name else "rfm_job",
        selection=dg.AssetSelection.assets(*assets),  # partitions come from the assets
        description="Materialize the whole RFM graph: transactions to segment analytics"
        + (" for one week (its reference date is the Monday after it)." if partitions else "."),
        # Every run executes its steps in the run's own process. A process per step imports
        # Dagster, pandas and the package again for each step: a week of the bundled sample
        # took 24.7 s that way against 10.3 s in one process (`dagster asset materialize -m
        # rfm_assets.definitions --select '*' --partition 2011-11-28`), and the steps of a
        # week mostly wait on each other anyway. On Spark, one process is also one Spark
        # application per run (a process per step would start a JVM per step).
        executor_def=dg.in_process_executor,
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
    resources: dict[str, Any] = {graph.settings_key: settings}
    shared = shared_resources(base_dir=storage)  # an io_manager on its own storage, if any
    if bind_shared_resources:
        resources |= {"spark": shared["spark"], graph.io_manager_key: shared["io_manager"]}
    elif storage:
        resources[graph.io_manager_key] = shared["io_manager"]
    return dg.Definitions(
        assets=assets,
        asset_checks=build_rfm_checks(assets),
        jobs=[job],
        schedules=schedules,
        resources=resources,
        # Also the runs Dagster builds itself (`dagster asset materialize`, the UI's
        # Materialize button, backfills), for the reason above.
        executor=dg.in_process_executor,
    )


def _described(description: str) -> dg.Resolver:
    """An attribute's description as the component's schema shows it (Dagster's schema keeps
    a description given here; a pydantic Field's is dropped when the field has a default)."""
    return dg.Resolver.default(description=description)


class RFMSegmentation(dg.Component, dg.Resolvable, dg.Model):
    """RFM segmentation of one transaction table: the RFM graph's weekly-partitioned assets
    with their checks, a job and a Monday schedule for the week that just ended."""

    key_prefix: Annotated[
        list[str],
        _described(
            "Asset key prefix of this instance, e.g. [eu]; also names its group, job, schedule "
            "and settings resource. Empty: the unprefixed keys."
        ),
    ] = Field(default_factory=list)
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
    source_asset: Annotated[
        Optional[str],
        _described(
            "Instead of source: the key (e.g. raw/orders) of an asset of this code location "
            "whose value is the transaction table, a pandas DataFrame (pandas engine) or a "
            "Spark DataFrame (Spark engine)."
        ),
    ] = None
    settings: Annotated[
        RFMSettingsModel,
        dg.Resolver(
            lambda context, settings: _resolve_settings(context, settings),
            model_field_type=RFMSettingsModel,
            description="RFM settings (those of RFMSettings: columns, weights, "
            "analysis_period_days, scoring_method, engine, ...); a value may be a template "
            "such as {{ env.NAME }}. Validated when the code location loads, an unknown key "
            "named; the launchpad can still override them per run.",
        ),
    ] = Field(default_factory=RFMSettingsModel)
    weeks_start: Annotated[
        Optional[str],
        _described(
            "First week (a Monday, YYYY-MM-DD) of the weekly partitions. Unset: no partitions, "
            "one table replaced by each run."
        ),
    ] = None
    weeks_end: Annotated[
        Optional[str],
        _described("Exclusive end of the weekly partitions. Unset: open-ended."),
    ] = None
    schedule_hour: Annotated[
        Optional[int],
        _described(
            "UTC hour on Mondays at which the schedule runs the week that just ended; null for "
            "no schedule."
        ),
    ] = 6
    schedule_status: Annotated[
        Literal["running", "stopped"],
        _described("Whether the schedule runs as soon as it is deployed."),
    ] = "running"
    storage: Annotated[
        Optional[str],
        _described(
            "This instance's own asset storage (local path or URI), under its own IO manager "
            "(rfm_io_manager_<prefix>). Unset: the code location's io_manager "
            "(shared_resources())."
        ),
    ] = None

    # The attributes of the Dagster seed's RFM component, at the top level as it wrote them.
    asset_name: Annotated[
        Optional[str],
        _described(
            "Name of the segments asset (customer_segments by default), under key_prefix; the "
            "other assets keep their names."
        ),
    ] = None
    analysis_period_days: Annotated[
        Optional[int], _described("As settings.analysis_period_days; give it in one place.")
    ] = None
    use_predefined_segments: Annotated[
        Optional[bool],
        _described(
            "true: the predefined segments (settings.segmentation_method grid, the rule set "
            "of settings.segment_rules); false: segments found in the data by k-means "
            "(segmentation_method kmeans)."
        ),
    ] = None
    include_recommendations: Annotated[
        Optional[bool],
        _described("As settings.include_recommendations; false drops the recommendation columns."),
    ] = None
    recency_weight: Annotated[
        Optional[float], _described("As settings.weights.recency; give it in one place.")
    ] = None
    frequency_weight: Annotated[
        Optional[float], _described("As settings.weights.frequency; give it in one place.")
    ] = None
    monetary_weight: Annotated[
        Optional[float], _described("As settings.weights.monetary; give it in one place.")
    ] = None

    def _top_level_settings(self, where: str, settings: dict) -> dict:
        """The settings the top-level attributes give, refused where `settings` gives the
        same one too (two places for one value is one too many)."""
        given = {
            name: getattr(self, name)
            for name in (
                "analysis_period_days",
                "include_recommendations",
                "recency_weight",
                "frequency_weight",
                "monetary_weight",
            )  # fmt: skip
            if getattr(self, name) is not None
        }
        if self.use_predefined_segments is not None:
            given["segmentation_method"] = "grid" if self.use_predefined_segments else "kmeans"
        weights = {f"{w}_weight" for w in settings.get("weights") or {}}
        both = sorted(n for n in given if n in settings or n in weights)
        if both:
            top = "use_predefined_segments" if both == ["segmentation_method"] else both[0]
            raise RFMConfigError(
                f"{where}: {top} is given at the top level and under settings ({both[0]}); keep one"
            )
        return given

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from rfm_assets.settings import build_settings

        where = f"RFMSegmentation in {context.path / 'defs.yaml'}"
        given = [
            name
            for name, value in (
                ("source", self.source),
                ("source_asset", self.source_asset),
                ("settings.input_path", self.settings.input_path),
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
        if self.asset_name is not None and not re.fullmatch(r"[A-Za-z0-9_]+", self.asset_name):
            raise RFMConfigError(
                f"{where}: asset_name: {self.asset_name!r} is not an asset name (letters, "
                "digits and _)"
            )
        taken = (set(COLUMNS_OF) | {"cluster_model", "rfm_report"}) - {"customer_segments"}
        if self.asset_name in taken:
            raise RFMConfigError(
                f"{where}: asset_name: {self.asset_name!r} is the name of another asset of "
                "the graph; choose another"
            )
        given = self.settings.model_dump(exclude_unset=True)
        try:
            settings = build_settings(
                {
                    **given,
                    **self._top_level_settings(where, given),
                    "input_path": self.source or self.settings.input_path,
                }
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
            # The code location binds shared_resources() once for all its instances.
            bind_shared_resources=False,
            segments_asset_name=self.asset_name,
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


def _resolve_settings(context: dg.ResolutionContext, settings: Any) -> RFMSettingsModel:
    """The settings given, with their templates filled in; build_defs validates them."""
    given = settings.model_dump(exclude_unset=True) if isinstance(settings, BaseModel) else settings
    return RFMSettingsModel.model_validate(context.resolve_value(given))


def _position(context: dg.ResolutionContext) -> str:
    """`file:line: ` of the value being resolved, where Dagster knows it."""
    try:
        position, _ = context.source_position_tree.lookup_closest_and_path(context.path, trace=None)
        return f"{position.filename}:{position.start.line}: "
    except Exception:  # no source positions (built in code): the message stands without
        return ""
