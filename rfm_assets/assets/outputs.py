"""What the week hands to people and to later runs: the high-value list, the k-means model
and the HTML report. Each is an ordinary output of its asset, stored by the IO manager."""

import dagster as dg

from rfm_assets.assets import checks
from rfm_assets.assets.graph import (
    RFMGraph,
    context_of,
    judged,
    needed,
    output,
    pictures_left_out,
    small_to_pandas,
    week_by_week,
)
from rfm_assets.engines.dispatch import CLUSTER_PICTURE_CUSTOMERS
from rfm_assets.errors import naming_memory_failures
from rfm_assets.report import ReportInputs, report_html

CLUSTER_MODEL_DESCRIPTION = (
    "The clustering model of segmentation_method kmeans or auto, as a small JSON document: "
    "the features and their scaling (log1p, median, IQR), the centroids (or, when auto chose "
    "a Gaussian mixture or Ward, its clusters' means), each cluster's name and segment, the "
    "silhouette and inertia of every k tried (the elbow curve), and where it was fitted. Give "
    "it to `cluster_model_path` or `rfm-assets predict --model` to assign new customers to these "
    "clusters without refitting. Grid runs do not materialize it."
)
# What the report's summary takes from the stored tables' context.
REPORT_FACTS = (
    "input_level", "engine", "reference_date", "window_start", "scoring_method", "scale",
    "weights", "rows_read", "rows_kept", "rows_excluded", "customers_held_out",
    "window_weeks", "window_rows_excluded",
)  # fmt: skip


def high_value_customers_step(graph: RFMGraph, context, customer_segments,
                              customer_lifetime_value=None):  # fmt: skip
    """The top share of customers (high_value_share, default 20%) by monetary, by the
    weighted RFM_score or by predicted_clv (high_value_by), highest first, for a campaign
    list. Tie-safe: customers tied at the cut are all on the list.
    """
    settings, engine = graph.settings_of(context), graph.engine_of(context)
    segmented = engine.load(customer_segments)
    if settings.high_value_by == "predicted_clv":
        if customer_lifetime_value is None:
            raise dg.Failure("high_value_by: predicted_clv needs customer_lifetime_value in "
                             "the graph (clv: true)")  # fmt: skip
        lifetime = needed(context_of(customer_lifetime_value), "lifetime_value",
                          "customer_lifetime_value")  # fmt: skip
        if not lifetime["fitted"]:
            raise dg.Failure(f"high_value_by: predicted_clv, but customer_lifetime_value was "
                             f"not fitted: {lifetime['refused']}")  # fmt: skip
        segmented = engine.with_predicted_value(segmented, engine.load(customer_lifetime_value))
    chosen = engine.high_value(segmented, settings.run_spec())
    chosen_by = {"high_value_share": settings.high_value_share,
                 "high_value_by": settings.high_value_by}  # fmt: skip
    return output(engine, chosen, {**context_of(customer_segments), **chosen_by}, chosen_by)


def cluster_model_step(graph: RFMGraph, context, customer_segments):
    document = context_of(customer_segments).get("cluster_model")
    if document is None:
        context.log.info("cluster_model: segmentation_method is grid; no model to store")
        return
    from rfm_assets.engines.clustering import ClusterModel

    engine = graph.engine_of(context)
    model = ClusterModel.from_document(document, "customer_segments")
    mismatched = engine.cluster_mismatches(engine.load(customer_segments), model)
    yield from judged(
        graph,
        "cluster_model",
        {"model_reproduces_clusters": checks.model_reproduces_clusters(mismatched)},
    )
    clusters = [{"cluster": c, "name": n, "segment": s}
                for c, (n, s) in enumerate(zip(model.names, model.segments))]  # fmt: skip
    yield dg.Output(
        document,
        output_name="cluster_model",
        metadata={
            "k": model.k,
            "clusters": dg.MetadataValue.json(clusters),
            "inertia_by_k": dg.MetadataValue.json(document["inertia_by_k"]),
            "fitted": dg.MetadataValue.json(document["fitted"]),
        },
    )


def rfm_report_step(graph: RFMGraph, context, customer_segments, segment_analytics,
                    segment_migration, slipping_customers,
                    customer_lifetime_value=None) -> dg.Output:  # fmt: skip
    """The shareable HTML report of the week: run summary and row accounting, segments
    with recommendations and example actions, every picture, movement and thresholds, in
    one self-contained file beside the stored tables (its path is in the metadata)."""
    engine = graph.engine_of(context)
    upstream = context_of(customer_segments)
    segments = engine.load(customer_segments)
    summary = {
        **{k: upstream.get(k) for k in REPORT_FACTS},
        "input": upstream.get("source"),
        "customers": engine.row_count(segments),
    }
    clustered = upstream.get("clustering")
    seed = graph.settings_of(context).cluster_seed
    left_out = pictures_left_out(graph, context)  # the page draws them whatever `pictures` says
    page = report_html(
        ReportInputs(
            analytics=small_to_pandas(engine.load(segment_analytics)),
            score_grid=engine.score_grid(segments),
            histograms=engine.histograms(segments),
            scale=int(needed(upstream, "scale", "customer_segments")),
            summary=summary,
            migration=small_to_pandas(engine.load(segment_migration)),
            previous=context_of(segment_migration).get("previous"),
            slipping=engine.row_count(engine.load(slipping_customers)),
            clustering=clustered,
            cluster_sample=engine.cluster_sample(segments, CLUSTER_PICTURE_CUSTOMERS, seed)
            if clustered and left_out is None
            else None,
            pictures_left_out=left_out,
            lifetime_value=context_of(customer_lifetime_value).get("lifetime_value")
            if customer_lifetime_value is not None
            else None,
        )
    )
    metadata = {"bytes": len(page.encode("utf-8")), "reference_date": summary["reference_date"],
                **({"pictures": left_out} if left_out else {})}  # fmt: skip
    return dg.Output(page, metadata=metadata)


def build_outputs(graph: RFMGraph) -> list[dg.AssetsDefinition]:
    """high_value_customers, cluster_model and rfm_report of one graph instance."""

    # The lifetime value, when the graph has it, for high_value_by: predicted_clv.
    lifetime_in = ("customer_lifetime_value",) if graph.lifetime_value else ()

    @dg.asset(ins=graph.ins("customer_segments", *lifetime_in),
              description=high_value_customers_step.__doc__,
              **graph.table_asset("high_value_customers"))  # fmt: skip
    @naming_memory_failures
    def high_value_customers(context: dg.AssetExecutionContext, customer_segments,
                             **lifetime):  # fmt: skip
        weekly = {"customer_segments": customer_segments, **lifetime}
        yield from week_by_week(graph, context, high_value_customers_step, weekly=weekly)

    # A multi-asset only so that its output and its check may be absent (can_subset): grid
    # runs have no model to store or check.
    @dg.multi_asset(
        name=graph.key("cluster_model").to_python_identifier(),  # one op per graph instance
        outs={
            "cluster_model": dg.AssetOut(
                key=graph.key("cluster_model"),
                group_name=graph.group,
                kinds={"json"},
                io_manager_key=graph.io_manager_key,
                is_required=False,
                description=CLUSTER_MODEL_DESCRIPTION,
            )
        },
        ins=graph.ins("customer_segments"),
        partitions_def=graph.partitions,
        backfill_policy=graph.backfill_policy,
        required_resource_keys=graph.resource_keys,
        can_subset=True,
        check_specs=graph.check_specs("cluster_model", graph.checks_of("cluster_model")),
    )
    @naming_memory_failures
    def cluster_model(context: dg.AssetExecutionContext, customer_segments):
        yield from week_by_week(graph, context, cluster_model_step,
                                weekly={"customer_segments": customer_segments})  # fmt: skip

    @dg.asset(
        key=graph.key("rfm_report"),
        ins=graph.ins("customer_segments", "segment_analytics", "segment_migration",
                      "slipping_customers", *lifetime_in),
        description=rfm_report_step.__doc__,
        group_name=graph.group,
        kinds={"html"},
        partitions_def=graph.partitions,
        backfill_policy=graph.backfill_policy,
        required_resource_keys=graph.resource_keys,
        io_manager_key=graph.io_manager_key,
    )  # fmt: skip
    @naming_memory_failures
    def rfm_report(context: dg.AssetExecutionContext, customer_segments, segment_analytics,
                   segment_migration, slipping_customers, **lifetime):  # fmt: skip
        weekly = {"customer_segments": customer_segments, "segment_analytics": segment_analytics,
                  "segment_migration": segment_migration,
                  "slipping_customers": slipping_customers, **lifetime}  # fmt: skip
        yield from week_by_week(graph, context, rfm_report_step, weekly=weekly)

    return [high_value_customers, cluster_model, rfm_report]
