"""The RFM asset graph (group `rfm`): thin Dagster wiring around `rfm_assets.engines`.

`build_rfm_assets` makes one instance of the graph: its key prefix, its settings resource,
its weekly partitions (or none) and the engine kind it shows. The families live in their
own modules: the core chain (`core`), week over week (`weekly`), and what the week hands on
(`outputs`); `graph` holds what they share and `checks` what each check guards and how it
is judged. Each asset reads the settings, asks the engine for one step, judges the value
*before* returning it, and attaches metadata: a blocking check that fails stops the step,
so the failed value never becomes what readers load.

Every stored table carries the run context it was computed in (reference date, scale, rule
set, thresholds, engine), and a step takes what it needs from the tables it loads, never
from the event log or from today's settings: any subset of the graph can run on its own.
What a step compares with (the week before, the weeks of the share trend, the week whose
thresholds it applies) is a mapped input, so the lineage shows every edge.
"""

import warnings
from typing import Optional

import dagster as dg

from rfm_assets.assets.core import build_core
from rfm_assets.assets.graph import GROUP, RFM_TABLE, RFMGraph, context_of
from rfm_assets.assets.lifetime import build_lifetime_value
from rfm_assets.assets.outputs import build_outputs
from rfm_assets.assets.weekly import build_weekly
from rfm_assets.contract import COLUMNS_OF

__all__ = ["COLUMNS_OF", "GROUP", "RFM_ASSETS", "RFM_TABLE", "RFMGraph", "build_rfm_assets",
           "build_rfm_checks", "context_of"]  # fmt: skip


def build_rfm_assets(graph: Optional[RFMGraph] = None) -> list[dg.AssetsDefinition]:
    """The ten assets of one graph instance (default: the unprefixed, unpartitioned one),
    with their checks; eleven with customer_lifetime_value (`RFMGraph.lifetime_value`)."""
    graph = graph or RFMGraph()
    if graph.lifetime_value:
        from rfm_assets.engines.clv import require_models

        require_models()  # refused when the definitions load, not at the week's end
    # `backfill_policy` (a range of weeks in one run) is a beta parameter: Dagster's notice,
    # not the user's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        core = build_core(graph)
        high_value, cluster_model, report = build_outputs(graph)
        migration, slipping = build_weekly(graph)
        lifetime = [build_lifetime_value(graph)] if graph.lifetime_value else []
    # The order the UI and `materialize` list them in.
    return [*core[:4], cluster_model, *lifetime, core[4], high_value, migration, slipping,
            report]  # fmt: skip


def build_rfm_checks(assets: list[dg.AssetsDefinition]) -> list:
    """Dagster's column-schema-change checks on every table of the graph."""
    with warnings.catch_warnings():  # a beta API: its notice is Dagster's, not the user's
        warnings.simplefilter("ignore", dg.BetaWarning)
        # the tables, which declare their columns (not the HTML report)
        tables = [a for a in assets if "dagster/column_schema" in a.metadata_by_key[a.key]]
        return list(dg.build_column_schema_change_checks(assets=tables))


RFM_ASSETS = build_rfm_assets()
