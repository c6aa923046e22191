"""Week over week: who moved between segments (segment_migration) and who slipped into a
win-back segment (slipping_customers). Both read customer_segments of this week and the one
before as one mapped input (`RFMGraph.weeks_in`), so the lineage shows the edge."""

import dagster as dg

from rfm_assets import pictures
from rfm_assets.assets import checks
from rfm_assets.assets.graph import (
    RFMGraph,
    context_of,
    judged,
    output,
    pictured,
    rule_set_of,
    small_to_pandas,
    split_weeks,
    week_by_week,
)
from rfm_assets.assets.markdown import migration_markdown
from rfm_assets.engines.shared import (
    LAPSED_CUSTOMERS,
    NEW_CUSTOMERS,
    movement_counts,
    moves_between_segments,
)
from rfm_assets.errors import naming_memory_failures


def compared_weeks(graph: RFMGraph, context, weeks):
    """(engine, rule_set, this week's segments, last week's or an empty table, whether there was
    one, what it was, this week's run context)."""
    engine = graph.engine_of(context)
    current_table, previous_table, label = split_weeks(graph, weeks, context, "customer_segments")
    upstream = context_of(current_table)
    rule_set = rule_set_of(upstream, graph.settings_of(context), "customer_segments")
    current = engine.load(current_table)
    found = previous_table is not None
    previous = engine.load(previous_table) if found else engine.empty(current)
    return engine, rule_set, current, previous, found, label, upstream


def segment_migration_step(graph: RFMGraph, context, weeks):
    """Who moved between segments since the previous week: customers and revenue from
    each segment to each segment, with (new) for customers absent the week before and
    (lapsed) for those absent now. The first week has no previous one and an empty table.
    """
    engine, rule_set, current, previous, found, label, upstream = compared_weeks(
        graph, context, weeks
    )
    if not found:  # nothing to compare with: an empty table, not everyone as (new)
        current = engine.empty(current)
    migration = engine.migration(previous, current, rule_set)
    table = small_to_pandas(migration)  # at most (segments + 1) ** 2 rows
    into = table[table["to_segment"] != LAPSED_CUSTOMERS]
    out_of = table[table["from_segment"] != NEW_CUSTOMERS]
    verdict = checks.margins_match_both_weeks(
        {str(k): int(v) for k, v in out_of.groupby("from_segment")["customers"].sum().items()},
        engine.segment_counts(previous),
        {str(k): int(v) for k, v in into.groupby("to_segment")["customers"].sum().items()},
        engine.segment_counts(current),
        list(into["revenue"]),
        engine.monetary_micro_sum(current, "monetary"),
        label,
    )
    yield from judged(graph, "segment_migration", {"margins_match_both_weeks": verdict})
    segments = [entry.name for entry in rule_set.segments]
    metadata = {
        "previous": label,
        **movement_counts(table),
        "largest_moves": dg.MetadataValue.md(migration_markdown(moves_between_segments(table))),
        **pictured(graph, context, "movement", "Segment movement",
                   lambda: pictures.migration_heatmap(table, segments)),
    }  # fmt: skip
    yield output(engine, migration, {**upstream, "previous": label}, metadata)


def slipping_customers_step(graph: RFMGraph, context, weeks):
    """Customers who moved since the previous week from an engaged segment into a slipping
    one (At Risk, Cannot Lose Them: the catalog's `standing`), most valuable first: the
    win-back list of the week. Empty in the first week.
    """
    engine, rule_set, current, previous, _, label, upstream = compared_weeks(graph, context, weeks)
    slipping = engine.cached(engine.slipping(previous, current, rule_set))
    return output(
        engine,
        slipping,
        {**upstream, "previous": label},
        {
            "previous": label,
            "slipping_into": dg.MetadataValue.json(rule_set.segment_ids_by_standing("slipping")),
            "revenue_at_stake": engine.monetary_micro_sum(slipping, "monetary") / 1e6,
        },
    )


def build_weekly(graph: RFMGraph) -> list[dg.AssetsDefinition]:
    """segment_migration and slipping_customers of one graph instance."""
    weeks = {"weeks": graph.weeks_in("customer_segments", -1)}

    @dg.asset(ins=weeks, description=segment_migration_step.__doc__,
              **graph.table_asset("segment_migration"))  # fmt: skip
    @naming_memory_failures
    def segment_migration(context: dg.AssetExecutionContext, weeks):
        yield from week_by_week(graph, context, segment_migration_step,
                                spanning={"weeks": (weeks, -1, 0)})  # fmt: skip

    @dg.asset(ins=weeks, description=slipping_customers_step.__doc__,
              **graph.table_asset("slipping_customers"))  # fmt: skip
    @naming_memory_failures
    def slipping_customers(context: dg.AssetExecutionContext, weeks):
        yield from week_by_week(graph, context, slipping_customers_step,
                                spanning={"weeks": (weeks, -1, 0)})  # fmt: skip

    return [segment_migration, slipping_customers]
