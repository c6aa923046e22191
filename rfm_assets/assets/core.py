"""The core chain: transactions -> rfm_metrics -> rfm_scores -> customer_segments ->
segment_analytics. Each body reads its settings, calls one engine step, judges the result
(rfm_assets.assets.checks) and hands the value on with its run context."""

import dataclasses
import datetime as dt
from typing import Optional

import dagster as dg
import pandas as pd

from rfm_assets import pictures
from rfm_assets.assets import checks
from rfm_assets.assets.graph import (
    RFMGraph,
    WeekContext,
    context_of,
    in_range,
    judged,
    needed,
    output,
    pictured,
    rule_set_of,
    small_to_pandas,
    week_by_week,
)
from rfm_assets.assets.markdown import segment_table_markdown, segment_trends
from rfm_assets.contract import CUSTOMER_FILTERS, exclusion_reasons
from rfm_assets.engines.dispatch import CLUSTER_PICTURE_CUSTOMERS
from rfm_assets.errors import RFMInputError, naming_memory_failures

# A run tag that pins customer_segments' segmented_at (rfm_assets.run), so that two runs
# can be compared column for column.
SEGMENTED_AT_TAG = "rfm/segmented_at"
# Weeks shown in the share_trend picture (this one and the stored ones before it).
TREND_WEEKS = 12


def read_source(graph: RFMGraph, context, source_table) -> tuple:
    """(the source rows, their file listing, what the source is), read once per run: a range
    of weeks prepares every week from the same rows (on Spark, cached for the range)."""
    settings, engine = graph.settings_of(context), graph.engine_of(context)
    spec = settings.run_spec()
    if source_table is None:
        raw, listing = engine.read(spec)
        source = settings.source_path
    else:
        source = f"asset {'/'.join(graph.source_asset)}"
        # (a Spark DataFrame an in-memory run hands on comes with its run context: unwrapped)
        raw, listing = engine.read_table(engine.load(source_table), spec, source)
    if in_range(graph, context):
        raw = engine.cached(raw)
    return raw, listing, source


def every_earlier_week(graph: RFMGraph) -> int:
    """How far back rfm_metrics of a week looks for the weeks that keep its window's rows:
    every earlier week. Partitions with an end need no more weeks than they hold; open-ended
    ones reach as many years after the first week as it is after 1970 (Dagster's time
    windows cannot start before 1970). Dagster walks the offset week by week each time it
    maps the input, so a shorter reach is a cheaper run plan."""
    first = graph.partitions.start.date()
    if graph.partitions.end is not None:
        return -((graph.partitions.end.date() - first).days // 7)
    return -((first - dt.date(1970, 1, 5)).days // 7)


def keeps_weekly_history(graph: RFMGraph, settings) -> bool:
    """Whether each week's transactions keeps only rows the weeks before it do not (weekly
    partitions of transaction lines); customer-level input is a whole snapshot each week."""
    return graph.partitions is not None and settings.input_level == "transactions"


def cleaning_of(settings, engine, source: str) -> dict:
    """What decides which rows a week keeps, and how they are stored: a week builds on the
    week before it only when these are the same."""
    spec = settings.run_spec()
    return {
        "source": source,
        "columns": dataclasses.asdict(spec.columns),
        "table_columns": dataclasses.asdict(spec.table_columns),
        "valid_dates": [day.isoformat() for day in spec.valid_dates],
        "returns_policy": spec.returns_policy,
        "cancelled_order_prefix": spec.cancelled_order_prefix,
        "engine": engine.name,
    }


def week_history(graph: RFMGraph, context, settings, engine, source: str,
                 earlier: Optional[dict]) -> dict:  # fmt: skip
    """Where this week's kept rows begin (`kept_from`), and from what day its history holds
    rows (`history_from`, None: all of it).

    A week builds on the week before it when that week is stored with the same cleaning and
    its history reaches back to this week's window start: then it keeps its own days only.
    Otherwise (the first week, a gap, changed settings, a longer window) it keeps its whole
    window, as a run from scratch does.
    """
    week = context.partition_time_window
    days = settings.analysis_period_days
    window_start = week.end.date() - dt.timedelta(days=days) if days else None
    cleaning = cleaning_of(settings, engine, source)
    before = graph.partitions.get_prev_partition_window(week.start)
    previous = (earlier or {}).get(before.start.strftime("%Y-%m-%d")) if before else None
    reason = None
    if previous is None:
        reason = "the week before it is not stored"
    else:
        stored = context_of(previous)
        held_from = stored.get("history_from", "no history")
        if stored.get("cleaning") != cleaning:
            reason = "the week before it was kept with other settings"
        elif held_from is not None and (
            window_start is None or held_from > window_start.isoformat()
        ):
            reason = "the week before it holds too short a history for this window"
    if reason is None:
        return {"kept_from": week.start.date(), "history_from": held_from, "cleaning": cleaning}
    context.log.info(f"transactions keeps this week's whole window: {reason}")
    return {"kept_from": None,
            "history_from": window_start.isoformat() if window_start else None,
            "cleaning": cleaning}  # fmt: skip


def transactions_step(graph: RFMGraph, context, read: tuple, earlier: Optional[dict] = None):
    """Source transaction lines mapped to `customer_id, transaction_date, amount[, order_id]`
    (with `input_level: customers`, one row per customer: `customer_id, recency,
    last_purchase_date[, first_purchase_date], frequency, monetary`).

    Cleaned by explicit rules; every excluded row is counted by reason in the metadata
    (`rows_excluded`). On weekly partitions the reference date is the end of the week.
    """
    settings, engine = graph.settings_of(context), graph.engine_of(context)
    if settings.pictures:
        pictures.warm_up()
    spec = settings.run_spec()
    week_end = context.partition_time_window.end.date() if graph.partitions else None
    raw, listing, source = read
    # Nothing row-level is cached: on Spark the kept rows are a plan over the source. A run
    # of one week is done with the source rows as they are kept: let them go as it goes (a
    # range of weeks keeps them for the next week).
    alone = not isinstance(context, WeekContext)
    history = {}
    if keeps_weekly_history(graph, settings):
        history = week_history(graph, context, settings, engine, source, earlier)
    kept_from = history.get("kept_from")
    kept, account = engine.prepare(
        raw, spec, listing, reference_date=week_end, consume=alone, kept_from=kept_from,
        net_by_window=bool(history),
    )  # fmt: skip
    del raw
    rows_kept, excluded = engine.kept_rows(kept, account), sum(account.rows_excluded.values())
    if alone:
        context.log.info(
            f"{account.rows_read:,} rows read from {account.files_read:,} files "
            f"({account.files_skipped:,} skipped: names starting with _ or .), "
            f"{account.rows_kept:,} kept, {excluded:,} excluded: {account.rows_excluded}"
        )
    else:  # one line for the range (each line is a stored event), the counts in each week's
        context.log.info(  # metadata
            f"{account.rows_read:,} rows read from {account.files_read:,} files for each week "
            "of this range; each week's rows kept and excluded, by reason, are in its "
            "metadata (rows_kept, rows_excluded)"
        )
    verdict = checks.rows_accounted_for(account.rows_read, rows_kept, excluded)
    yield from judged(graph, "transactions", {"rows_accounted_for": verdict})
    summary = account.as_metadata()
    table_context = {
        **{k: summary[k] for k in ("reference_date", "window_start", "files_read",
                                   "files_skipped", "rows_read", "rows_kept", "rows_excluded")},
        "partition_key": context.partition_key if graph.partitions else None,
        "source": source,
        "engine": engine.name,
        "customers": account.customers,
        "input_level": settings.input_level,
        **(history and {**history, "kept_from": kept_from and kept_from.isoformat()}),
    }  # fmt: skip
    rules = exclusion_reasons(settings.input_level).items()
    yield output(
        engine,
        kept,
        table_context,
        {
            **{k: v for k, v in summary.items() if v is not None and k != "rows_excluded"},
            "rows_excluded": dg.MetadataValue.json(summary["rows_excluded"]),
            "input_level": settings.input_level,
            "exclusion_rules": dg.MetadataValue.md(
                "\n".join(f"- `{reason}`: {rule}" for reason, rule in rules)
            ),
            "source": source,
        },
        rows=rows_kept,
    )


def rfm_metrics_step(graph: RFMGraph, context, transactions, read_weeks: Optional[dict] = None):
    """One row per customer: recency (days to the reference date), frequency, monetary.

    Also first and last purchase dates, tenure in days and average order value.
    """
    settings, engine = graph.settings_of(context), graph.engine_of(context)
    loaded, upstream = rows_of_window(graph, context, transactions, "rfm_metrics", read_weeks)
    if "window_weeks" in upstream:  # a week's window of a weekly history
        own_rows = (  # the window is this week's stored rows, all of them (a week from scratch)
            upstream["window_weeks"][0] == context.partition_key
            and engine.row_count(loaded) == upstream["rows_kept"]
        )
        # Counted here, as the transactions step counts a run's kept rows. A window of the
        # week's own rows has the count that step took of them (0.5 s at 10M rows).
        if not own_rows:
            upstream["customers"] = engine.customers_of(loaded)
        if not upstream["customers"]:
            raise RFMInputError(
                f"rfm_metrics: no transactions in the window of week "
                f"{context.partition_key} ({upstream.get('window_rows_excluded')})"
            )
    reference_date = dt.date.fromisoformat(upstream["reference_date"])
    input_level = upstream.get("input_level", "transactions")
    # Not cached on Spark: the metrics are a projection of cached per-customer totals.
    metrics = engine.metrics(loaded, reference_date, input_level)
    metrics, held_out = engine.filter_customers(metrics, settings.run_spec())
    # Customers of the kept transactions as the transactions step counted them (a second
    # pass over every row costs more than all the scoring), less those held out.
    customers = int(needed(upstream, "customers", "transactions")) - sum(held_out.values())
    tally = engine.tally(metrics, distinct_of="customer_id")
    verdict = checks.one_metric_row_per_customer(tally.rows, tally.distinct, customers)
    yield from judged(graph, "rfm_metrics", {"one_row_per_customer": verdict})
    yield output(
        engine,
        metrics,
        {**upstream, "customers_held_out": held_out},
        {
            "reference_date": reference_date.isoformat(),
            "customers_held_out": dg.MetadataValue.json(held_out),
            **(
                {"window_rows_excluded": dg.MetadataValue.json(upstream["window_rows_excluded"])}
                if "window_rows_excluded" in upstream
                else {}
            ),
            **pictured(
                graph,
                context,
                "distributions",
                "Recency, frequency and monetary distributions",
                lambda: pictures.distributions(engine.histograms(metrics)),
            ),
            "customer_filters": dg.MetadataValue.md(
                "\n".join(f"- `{reason}`: {rule}" for reason, rule in CUSTOMER_FILTERS.items())
            ),
        },
        rows=tally.rows,  # counted for the check above (a Spark job saved)
    )


def rows_of_window(graph: RFMGraph, context, transactions, step: str,
                   read_weeks: Optional[dict] = None) -> tuple:  # fmt: skip
    """(the kept rows of the week's window, the context of its transactions with what
    loading them excluded and the window's weeks). Unpartitioned, the rows of
    `transactions`; on weekly partitions (`transactions` is {week: table}), the rows the
    window's stored weeks keep, read once a range when `read_weeks` is given (see
    window_weeks)."""
    engine = graph.engine_of(context)
    if graph.partitions is not None:  # {week: table}: this week and the weeks before it
        weeks = transactions
        transactions = weeks.get(context.partition_key)
        if transactions is None:
            raise dg.Failure(f"{step}: transactions of week {context.partition_key} is "
                             "not stored: materialize it first")  # fmt: skip
    upstream = context_of(transactions)
    needed(upstream, "reference_date", "transactions")
    if "history_from" not in upstream:
        return engine.load(transactions), upstream
    window = window_weeks(graph, context, weeks, upstream, step)
    start = upstream.get("window_start")
    loaded = engine.window_rows(window, start and dt.date.fromisoformat(start), read_weeks)
    if upstream["cleaning"]["returns_policy"] == "net":
        loaded, not_positive = engine.net_positive(loaded)
        upstream["window_rows_excluded"] = {"customer_monetary_not_positive": not_positive}
    upstream["window_weeks"] = [min(context_of(w)["partition_key"] for w in window),
                                context.partition_key]  # fmt: skip
    return loaded, upstream


def window_weeks(graph: RFMGraph, context, weeks: dict, upstream: dict,
                 step: str = "rfm_metrics") -> list:  # fmt: skip
    """The stored weeks of transactions whose rows make this week's window: this week, and
    the weeks before it back to the one that keeps the window's start (see week_history)."""
    keys = graph.partitions.get_partition_keys()
    at = keys.index(context.partition_key)
    window_start = upstream.get("window_start")
    chain, part = [weeks[context.partition_key]], upstream
    while part.get("kept_from") and (window_start is None or part["kept_from"] > window_start):
        at -= 1
        earlier = weeks.get(keys[at]) if at >= 0 else None
        if earlier is None or context_of(earlier).get("cleaning") != upstream["cleaning"]:
            why = "is not stored" if earlier is None else "was kept with other settings since"
            raise dg.Failure(
                f"{step}: the window of week {context.partition_key} needs the rows that "
                f"transactions of week {keys[max(at, 0)]} keeps, and that week {why}: "
                f"materialize weeks {keys[max(at, 0)]} to {context.partition_key} again, in one "
                f"run: --select '*' --partition-range {keys[max(at, 0)]}...{context.partition_key}"
            )
        chain.append(earlier)
        part = context_of(earlier)
    return chain


def rfm_scores_step(graph: RFMGraph, context, rfm_metrics):
    """Customer metrics with R, F and M scores (1 worst .. k best), FM_score, RFM_score,
    rfm_cell.

    Quantile scores are tie-safe (`1 + floor(k * b / n)`); the cut points they imply are
    published in the metadata so a later run can pin them (`thresholds_from_week` or
    `scoring_method: fixed`).
    """
    settings, engine = graph.settings_of(context), graph.engine_of(context)
    cut_points, source_of_cuts = None, settings.scoring_method
    if settings.thresholds_from_week:
        cut_points = week_thresholds(graph, context, settings.thresholds_from_week)
        source_of_cuts = f"thresholds of week {settings.thresholds_from_week}"
    scores, thresholds = engine.scores(engine.load(rfm_metrics), settings.run_spec(), cut_points)
    scale = len(thresholds["recency"]) + 1
    tally = engine.tally(scores, off_scale=scale)
    verdict = checks.scores_on_scale(tally.off_scale, scale)
    yield from judged(graph, "rfm_scores", {"scores_on_scale": verdict})
    table_context = {
        **context_of(rfm_metrics),
        "scale": scale,
        "scoring_method": source_of_cuts,
        "weights": settings.effective_weights.model_dump(),
        "thresholds": thresholds,
        # Counted on this table for the check above; customer_segments checks against it.
        "customers_scored": tally.rows,
    }
    yield output(
        engine,
        scores,
        table_context,
        {"scoring_method": source_of_cuts, "thresholds": dg.MetadataValue.json(thresholds)},
        rows=tally.rows,
    )


def week_thresholds(graph: RFMGraph, context, week: str) -> dict[str, list[float]]:
    """The cut points that the stored rfm_scores of `week` published.

    The one read of storage outside an input: the week is a setting, and Dagster maps an
    asset onto its own earlier partitions only by a fixed offset, not onto a named week.
    """
    store = getattr(context.resources, graph.io_manager_key)
    stored = store.stored(graph.key("rfm_scores"), week) if hasattr(store, "stored") else None
    if stored is None or "thresholds" not in stored.context:
        raise dg.Failure(
            f"thresholds_from_week: no rfm_scores with thresholds is stored for week {week}: "
            f"materialize rfm_scores for {week} first"
        )
    return stored.context["thresholds"]


def scored_rows(engine, scores_context: dict, scores) -> int:
    """Customers of rfm_scores, as its step counted them on its table (or counted now, for
    a table stored without the count)."""
    if "customers_scored" in scores_context:
        return int(scores_context["customers_scored"])
    return engine.row_count(scores)


def customer_segments_step(graph: RFMGraph, context, rfm_scores):
    """Every customer with scores, one of the named segments, its recommendation, value tier
    and engagement level. Filter on the published columns, e.g.
    `df[df["segment"] == "Champions"]`.
    """
    settings, engine = graph.settings_of(context), graph.engine_of(context)
    upstream = context_of(rfm_scores)
    rule_set = rule_set_of(upstream, settings, "rfm_scores")
    scores = engine.load(rfm_scores)
    pinned = context.run.tags.get(SEGMENTED_AT_TAG)  # rfm_assets.run(segmented_at=...)
    segmented_at = (
        dt.datetime.fromisoformat(pinned) if pinned else dt.datetime.now(dt.UTC)
    ).replace(microsecond=0)
    clustering, extra = {}, {}
    if settings.clustered:
        thresholds = needed(upstream, "thresholds", "rfm_scores")
        fitted = {"reference_date": upstream.get("reference_date")}
        segmented, summary, model = engine.clusters(
            scores, rule_set, thresholds, settings.run_spec(), segmented_at, fitted
        )
        # The model that named the clusters, for cluster_model; the summary for the report.
        extra = {"cluster_model": model.document(), "clustering": summary}
        sample = lambda: engine.cluster_sample(  # noqa: E731
            segmented, CLUSTER_PICTURE_CUSTOMERS, settings.cluster_seed
        )
        clustering = {
            "clustering": dg.MetadataValue.json(summary),
            **pictured(graph, context, "clusters", "k-means clusters",
                       lambda: pictures.clusters(sample(), summary)),
        }  # fmt: skip
    else:
        segmented = engine.segments(scores, rule_set, segmented_at)
    if not settings.include_recommendations:
        segmented = engine.without(segmented, "recommendation")
    # Rows, ids and the exact revenue of the segmented customers in one pass: the revenue is
    # what segment_analytics' revenues must add up to.
    tally = engine.tally(segmented, distinct_of="customer_id", money_of="monetary")
    rows = tally.rows
    counts = engine.segment_counts(segmented)
    names = {entry.name for entry in rule_set.segments}
    unknown = sorted(str(name) for name in counts if name not in names)[:5]
    counts = {name: n for name, n in counts.items() if name is not None}
    yield from judged(
        graph,
        "customer_segments",
        {
            "one_row_per_customer": checks.one_segment_row_per_customer(
                rows, tally.distinct, scored_rows(engine, upstream, scores)
            ),
            "segments_in_catalog": checks.segments_in_catalog(unknown),
            "dominant_segment": checks.dominant_segment(counts, rows, settings.max_segment_share),
        },
    )
    table_context = {
        **upstream,
        "rule_set": rule_set.name,
        "display_names": dict(settings.segment_display_names),
        "segmented_at": str(segmented_at),
        "customers_segmented": rows,
        "monetary_micro_sum": str(tally.micro_sum),  # an exact integer: JSON as text
        **extra,
    }
    metadata = {
        "segmentation_method": settings.segmentation_method,
        "segment_counts": dg.MetadataValue.json(counts),
        **clustering,
    }
    if settings.output_table:  # the gold table, once the blocking checks above have passed
        from rfm_assets.exports import write_delta_table

        week = context.partition_key if graph.partitions else None
        version = write_delta_table(segmented, settings.output_table, week)
        metadata["output_table"] = dg.MetadataValue.json(
            {"uri": settings.output_table, "delta_version": version, "week": week}
        )
    yield output(engine, segmented, table_context, metadata, rows=rows)


def segment_analytics_step(graph: RFMGraph, context, customer_segments, earlier_weeks,
                           customer_lifetime_value=None):  # fmt: skip
    """Per segment: customers, revenue, their shares, average R/F/M, average order value and
    the recommendation, in priority order, with the score thresholds the run used. With
    `clv: true`, also the segment's total and mean predicted value and mean probability of
    being alive (customer_lifetime_value; null when the models could not be fitted).
    """
    settings, engine = graph.settings_of(context), graph.engine_of(context)
    if settings.clv and not graph.lifetime_value:
        raise dg.Failure(
            "clv: true, but this graph was built without customer_lifetime_value: build it "
            "from these settings (build_rfm_definitions, RFMSegmentation) or with "
            "RFMGraph(lifetime_value=True)"
        )
    upstream = context_of(customer_segments)
    rule_set = rule_set_of(upstream, settings, "customer_segments")
    segmented = engine.load(customer_segments)
    analytics = engine.analytics(
        segmented, rule_set, needed(upstream, "thresholds", "customer_segments")
    )
    if not settings.include_recommendations:
        analytics = engine.without(analytics, "recommendation")
    if customer_lifetime_value is not None:
        lifetime = needed(context_of(customer_lifetime_value), "lifetime_value",
                          "customer_lifetime_value")  # fmt: skip
        analytics = engine.with_segment_values(analytics, lifetime["value_by_segment"])
    shown = small_to_pandas(analytics)  # a dozen rows at most
    if "monetary_micro_sum" in upstream:  # counted on this table when it was made
        customers, micro_sum = upstream["customers_segmented"], int(upstream["monetary_micro_sum"])
    else:  # stored by an earlier version
        tally = engine.tally(segmented, money_of="monetary")
        customers, micro_sum = tally.rows, tally.micro_sum
    earlier = {week: table.to_pandas(columns=["segment", "customer_share"])
               for week, table in sorted((earlier_weeks or {}).items())}  # fmt: skip
    yield from judged(
        graph,
        "segment_analytics",
        {
            "revenue_matches_customers": checks.revenue_matches_customers(
                list(shown["revenue"]),
                int(shown["customers"].sum()),
                micro_sum,
                customers,
            ),
            "share_change_from_previous_week": checks.share_change(
                share_moves(shown, earlier), settings.max_weekly_share_change
            ),
        },
    )
    metadata = {
        "segment_distribution": dg.MetadataValue.md(segment_table_markdown(shown)),
        **pictured(graph, context, "segment_sizes", "Segment sizes",
                   lambda: pictures.segment_sizes(shown)),
        **pictured(graph, context, "score_heatmaps", "Customers and average monetary by R x FM",
                   lambda: pictures.score_heatmaps(engine.score_grid(segmented), rule_set.scale)),
        **share_trend(graph, context, shown, earlier),
        **segment_trends(shown),
    }  # fmt: skip
    yield output(engine, analytics, upstream, metadata)


def share_moves(analytics: pd.DataFrame, earlier: dict[str, pd.DataFrame]) -> list:
    """(segment, share now - share the week before) per segment; [] without a week before."""
    if not earlier:
        return []
    before = earlier[max(earlier)]
    shares = dict(zip(before["segment"], before["customer_share"]))
    return [
        (row.segment, float(row.customer_share) - float(shares.get(row.segment, 0.0)))
        for row in analytics.itertuples(index=False)
    ]


def share_trend(graph: RFMGraph, context, analytics: pd.DataFrame, earlier: dict) -> dict:
    """The share_trend picture over the stored weeks up to this one (weekly only)."""
    if not earlier:
        return {}

    def draw() -> bytes:
        frames = [analytics.assign(week=context.partition_key)]
        frames += [frame.assign(week=week) for week, frame in earlier.items()]
        return pictures.share_trend(pd.concat(frames)[["week", "segment", "customer_share"]])

    return pictured(graph, context, "share_trend", "Segment shares by week", draw)


def build_core(graph: RFMGraph) -> list[dg.AssetsDefinition]:
    """transactions, rfm_metrics, rfm_scores, customer_segments and segment_analytics of one
    graph instance."""
    earlier_in = {}
    if graph.partitions is not None:
        # The week before this one: a week keeps only its own rows when that one is stored.
        earlier_in["earlier"] = graph.weeks_in("transactions", -1, -1)

    def transactions_by_week(context, read: tuple, earlier: dict):
        if not earlier:
            yield from week_by_week(graph, context, transactions_step, read=read)
            return
        yield from week_by_week(graph, context, transactions_step, read=read, own="earlier",
                                spanning={"earlier": (earlier["earlier"], -1, -1)})  # fmt: skip

    if graph.source_asset:
        # On Spark the source is read as a Spark DataFrame whatever the store's `load_as`
        # (the Parquet store reads this input's metadata): the engine takes no pandas frame.
        load_as = {"load_as": "spark"} if graph.engine == "spark" else {}
        source_in = {"source_table": dg.AssetIn(key=dg.AssetKey(list(graph.source_asset)),
                                                metadata=load_as),
                     **earlier_in}  # fmt: skip

        @dg.asset(ins=source_in, description=transactions_step.__doc__,
                  **graph.table_asset("transactions"))  # fmt: skip
        @naming_memory_failures
        def transactions(context: dg.AssetExecutionContext, source_table, **earlier):
            read = read_source(graph, context, source_table)
            yield from transactions_by_week(context, read, earlier)

    else:

        @dg.asset(ins=earlier_in, description=transactions_step.__doc__,
                  **graph.table_asset("transactions"))  # fmt: skip
        @naming_memory_failures
        def transactions(context: dg.AssetExecutionContext, **earlier):
            read = read_source(graph, context, None)
            yield from transactions_by_week(context, read, earlier)

    if graph.partitions is not None:
        # This week and every week before it: the weeks that keep the window's rows.
        reach = every_earlier_week(graph)
        metrics_ins = {"transactions": graph.weeks_in("transactions", reach, 0)}
    else:
        metrics_ins = graph.ins("transactions")

    @dg.asset(ins=metrics_ins, description=rfm_metrics_step.__doc__,
              **graph.table_asset("rfm_metrics"))  # fmt: skip
    @naming_memory_failures
    def rfm_metrics(context: dg.AssetExecutionContext, transactions):
        if graph.partitions is None:
            yield from rfm_metrics_step(graph, context, transactions)
            return
        # A range of weeks reads each stored week of transactions once, not once a window,
        # and aggregates every week in one DuckDB database.
        with graph.engine_of(context).one_session():
            yield from week_by_week(graph, context, rfm_metrics_step, spanning={
                "transactions": (transactions, reach, 0)}, read_weeks={})  # fmt: skip

    @dg.asset(ins=graph.ins("rfm_metrics"), description=rfm_scores_step.__doc__,
              **graph.table_asset("rfm_scores"))  # fmt: skip
    @naming_memory_failures
    def rfm_scores(context: dg.AssetExecutionContext, rfm_metrics):
        yield from week_by_week(graph, context, rfm_scores_step,
                                weekly={"rfm_metrics": rfm_metrics})  # fmt: skip

    @dg.asset(ins=graph.ins("rfm_scores"), description=customer_segments_step.__doc__,
              **graph.table_asset("customer_segments"))  # fmt: skip
    @naming_memory_failures
    def customer_segments(context: dg.AssetExecutionContext, rfm_scores):
        yield from week_by_week(graph, context, customer_segments_step,
                                weekly={"rfm_scores": rfm_scores})  # fmt: skip

    analytics_ins = graph.ins("customer_segments")
    # The value per segment, when the graph has it: customer_lifetime_value always hands on
    # a table (null predictions when it could not fit), so this step never waits in vain.
    if graph.lifetime_value:
        analytics_ins |= graph.ins("customer_lifetime_value")
    if graph.partitions is not None:
        # The weeks before this one, for the share change and the share trend.
        analytics_ins["earlier_weeks"] = graph.weeks_in("segment_analytics", 1 - TREND_WEEKS, -1)

        @dg.asset(ins=analytics_ins, description=segment_analytics_step.__doc__,
                  **graph.table_asset("segment_analytics"))  # fmt: skip
        @naming_memory_failures
        def segment_analytics(context: dg.AssetExecutionContext, customer_segments,
                              earlier_weeks, **lifetime):  # fmt: skip
            yield from week_by_week(
                graph,
                context,
                segment_analytics_step,
                weekly={"customer_segments": customer_segments, **lifetime},
                spanning={"earlier_weeks": (earlier_weeks, 1 - TREND_WEEKS, -1)},
                own="earlier_weeks",
            )

    else:

        @dg.asset(ins=analytics_ins, description=segment_analytics_step.__doc__,
                  **graph.table_asset("segment_analytics"))  # fmt: skip
        @naming_memory_failures
        def segment_analytics(context: dg.AssetExecutionContext, customer_segments,
                              **lifetime):  # fmt: skip
            yield from segment_analytics_step(graph, context, customer_segments, None,
                                              **lifetime)  # fmt: skip

    return [transactions, rfm_metrics, rfm_scores, customer_segments, segment_analytics]
