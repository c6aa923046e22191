"""customer_lifetime_value: what each customer is worth from here on, beside the segments.

In the graph when the settings ask for it (`clv: true`, built into `RFMGraph.lifetime_value`).
It reads the rows of the week's window as rfm_metrics does, fits the models on the driver
(rfm_assets.engines.clv) and hands on one row per customer of customer_segments. A data set
the models cannot be fitted on (too few repeat customers, a fit that does not converge) is
one line in the log and a failed warning check, with null predictions: segment_analytics
and the report, which read the value per segment, publish as they would without it.
"""

import datetime as dt
from typing import Optional

import dagster as dg
import pandas as pd

from rfm_assets import pictures
from rfm_assets.assets import checks
from rfm_assets.assets.core import every_earlier_week, rows_of_window
from rfm_assets.assets.graph import (
    RFMGraph,
    context_of,
    judged,
    needed,
    output,
    pictured,
    rule_set_of,
    week_by_week,
)
from rfm_assets.assets.markdown import value_by_segment_markdown
from rfm_assets.engines import clv
from rfm_assets.errors import RFMInputError, naming_memory_failures


def customer_lifetime_value_step(graph: RFMGraph, context, transactions, customer_segments,
                                 read_weeks: Optional[dict] = None):  # fmt: skip
    """One row per customer of customer_segments: `customer_id, segment, probability_alive,
    expected_purchases, expected_average_value, predicted_clv` over `clv_horizon_days`.

    BG/NBD (purchases) and Gamma-Gamma (spend of a purchase), fitted by MAP on the purchase
    days of the rows the week's metrics aggregate; the parameters, the fit's diagnostics and
    the horizon are in the metadata. A customer without a purchase day in the window (only
    returns) has null predictions, counted.
    """
    settings, engine = graph.settings_of(context), graph.engine_of(context)
    loaded, upstream = rows_of_window(graph, context, transactions, "customer_lifetime_value",
                                      read_weeks)  # fmt: skip
    end = dt.date.fromisoformat(upstream["reference_date"])
    segments_context = context_of(customer_segments)
    customers = int(needed(segments_context, "customers_segmented", "customer_segments"))
    inputs, calibration = engine.lifetime_inputs(
        loaded, end, engine.load(customer_segments), graph.clv_holdout_days
    )
    del loaded
    verdicts, holdout = {}, {}
    if calibration is not None:
        verdicts["predictions_match_holdout"], holdout = holdout_check(
            graph, context, calibration, end
        )
    bought = inputs[inputs["frequency"].notna()]
    try:
        fitted, refused = clv.fit(bought), None
    except RFMInputError as error:
        fitted, refused = None, str(error)
        context.log.error(f"customer_lifetime_value: {refused}")
    horizon, rate = settings.clv_horizon_days, settings.clv_discount_rate
    table = clv.lifetime_table(inputs, fitted, horizon, rate)
    by_segment = clv.value_by_segment(table)
    verdicts["one_row_per_customer"] = checks.one_lifetime_row_per_customer(
        len(table), int(table["customer_id"].nunique()), customers
    )
    verdicts["lifetime_value_fitted"] = checks.lifetime_value_fitted(refused)
    yield from judged(graph, "customer_lifetime_value", verdicts)
    facts = {
        "fitted": refused is None,
        "refused": refused,
        "horizon_days": horizon,
        "discount_rate": rate,
        "parameters": fitted.parameters if fitted else {},
        "diagnostics": fitted.diagnostics if fitted else {},
        "customers_without_purchase_day": len(inputs) - len(bought),
        "value_by_segment": by_segment,
        **({"holdout": holdout} if holdout else {}),
    }
    rule_set = rule_set_of(segments_context, settings, "customer_segments")
    shown = clv.segment_value_table(by_segment, {e.name: e.priority for e in rule_set.segments})
    metadata = {
        "fitted": facts["fitted"],
        **({"refused": refused} if refused else {}),
        "horizon_days": horizon,
        "discount_rate": rate,
        "parameters": dg.MetadataValue.json(facts["parameters"]),
        "diagnostics": dg.MetadataValue.json(facts["diagnostics"]),
        "customers_without_purchase_day": facts["customers_without_purchase_day"],
        **(
            {
                "value_by_segment": dg.MetadataValue.md(value_by_segment_markdown(shown)),
                **pictured(
                    graph,
                    context,
                    "expected_value_by_segment",
                    "Expected value by segment",
                    lambda: pictures.value_by_segment(shown, horizon),
                ),
            }  # fmt: skip
            if not shown.empty
            else {}
        ),
        **(holdout_metadata(graph, context, holdout) if holdout else {}),
    }
    # What segment_analytics, high_value_customers and the report read of this table.
    table_context = {**segments_context, "lifetime_value": facts}
    table_context.pop("cluster_model", None)  # the model's document is cluster_model's
    yield output(engine, engine.from_driver(table), table_context, metadata, rows=len(table))


def holdout_check(graph: RFMGraph, context, calibration: pd.DataFrame, end: dt.date) -> tuple:
    """(the verdict of predictions_match_holdout, what the check found, for the context)."""
    try:
        found = clv.validate_summary(calibration, end, graph.clv_holdout_days)
    except RFMInputError as error:
        context.log.error(f"customer_lifetime_value: holdout check: {error}")
        return checks.holdout_not_fitted(str(error)), {"refused": str(error)}
    verdict = checks.predictions_match_holdout(
        found.predicted_total, found.actual_total, found.spearman, found.customers
    )
    return verdict, {
        "cutoff": found.cutoff.isoformat(),
        "end": found.end.isoformat(),
        "holdout_days": graph.clv_holdout_days,
        "customers": found.customers,
        "predicted_total": found.predicted_total,
        "actual_total": found.actual_total,
        "ratio": found.ratio,
        "spearman": found.spearman,
        "parameters": found.parameters,
        "by_calibration_purchases": found.by_calibration_purchases.to_dict("records"),
    }


def holdout_metadata(graph: RFMGraph, context, holdout: dict) -> dict:
    if "refused" in holdout:
        return {"holdout": holdout["refused"]}
    chart = pd.DataFrame(holdout["by_calibration_purchases"])
    return {
        "holdout": dg.MetadataValue.json({k: v for k, v in holdout.items()
                                          if k != "by_calibration_purchases"}),
        **pictured(graph, context, "holdout_chart", "Predicted and actual purchases",
                   lambda: pictures.clv_holdout(chart, holdout["cutoff"], holdout["end"])),
    }  # fmt: skip


def build_lifetime_value(graph: RFMGraph) -> dg.AssetsDefinition:
    """customer_lifetime_value of one graph instance."""
    if graph.partitions is not None:
        reach = every_earlier_week(graph)
        ins = {"transactions": graph.weeks_in("transactions", reach, 0),
               **graph.ins("customer_segments")}  # fmt: skip
    else:
        ins = graph.ins("transactions", "customer_segments")

    @dg.asset(ins=ins, description=customer_lifetime_value_step.__doc__,
              **graph.table_asset("customer_lifetime_value"))  # fmt: skip
    @naming_memory_failures
    def customer_lifetime_value(context: dg.AssetExecutionContext, transactions,
                                customer_segments):  # fmt: skip
        if graph.partitions is None:
            yield from customer_lifetime_value_step(graph, context, transactions,
                                                    customer_segments)  # fmt: skip
            return
        with graph.engine_of(context).one_session():
            yield from week_by_week(graph, context, customer_lifetime_value_step,
                                    weekly={"customer_segments": customer_segments},
                                    spanning={"transactions": (transactions, reach, 0)},
                                    read_weeks={})  # fmt: skip

    return customer_lifetime_value
