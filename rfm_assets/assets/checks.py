"""The asset checks: what each one guards (the table `CHECKS`) and how each is judged (pure
functions of counts the step took, returning a `Verdict`). No Dagster here: the assets turn
verdicts into check results (rfm_assets.assets.graph.judged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rfm_assets.contract import MICRO_UNITS
from rfm_assets.engines.shared import amounts_add_up


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    blocking: bool = True


@dataclass(frozen=True)
class Verdict:
    """A check's outcome: whether it passed, what is wrong when it did not (`problem`), what
    to say when it did (`note`, warnings only) and the numbers behind it."""

    passed: bool
    problem: str
    metadata: dict = field(default_factory=dict)
    note: Optional[str] = None

    def description(self, blocking: bool) -> Optional[str]:
        return self.problem if not self.passed else self.note


CHECKS: dict[str, tuple[Check, ...]] = {
    "transactions": (
        Check(
            "rows_accounted_for",
            "Rows read (counted on the table as read) == rows kept (counted on the kept "
            "table) + rows excluded by reason: nothing disappears without a number.",
        ),
    ),
    "rfm_metrics": (
        Check(
            "one_row_per_customer",
            "Exactly one row per distinct customer id of the kept transactions: the rows "
            "and distinct ids of the loaded metrics against the transactions step's own "
            "count of customers, not the code that built the metrics.",
        ),
    ),
    "rfm_scores": (
        Check(
            "scores_on_scale",
            "Every R, F, M and FM score is a whole number in 1..k and never null, and "
            "RFM_score lies in 1..k.",
        ),
    ),
    "customer_segments": (
        Check("one_row_per_customer", "As many rows as scored customers, each customer id once."),
        Check(
            "segments_in_catalog",
            "Every customer has a segment, and every segment is a named entry of the "
            "catalog of the rule set in use.",
        ),
        Check(
            "dominant_segment",
            "Warns when one segment holds more than max_segment_share of the customers "
            "(default 50%). Usual causes: most customers bought once (F and FM pile up at "
            "the bottom, so Hibernating/Lost or New Customers dominate), a window too "
            "short or too long for the purchase cycle, fixed thresholds that no longer "
            "fit the data, or a rule set whose first rules are too wide.",
            blocking=False,
        ),
    ),
    "cluster_model": (
        Check(
            "model_reproduces_clusters",
            "Applying the stored document to every customer of customer_segments gives "
            "the cluster each one was given, so `rfm-assets predict` and later weeks "
            "(cluster_model_path) assign as this run did.",
        ),
    ),
    "segment_analytics": (
        Check(
            "revenue_matches_customers",
            "Total revenue equals the exact sum of monetary over customer_segments, and "
            "the customers add up to its rows.",
        ),
        Check(
            "share_change_from_previous_week",
            "Warns when a segment's share of customers moves more than "
            "max_weekly_share_change (default 10 points) from the previous week's stored "
            "value: a change in the source, the settings or the business worth a look.",
            blocking=False,
        ),
    ),
    "customer_lifetime_value": (
        Check(
            "one_row_per_customer",
            "As many rows as customer_segments has customers, each customer id once.",
        ),
        Check(
            "lifetime_value_fitted",
            "Warns when the models could not be fitted (too few repeat customers, a fit "
            "that did not converge): the predictions are then null, and the rest of the "
            "graph publishes as without clv.",
            blocking=False,
        ),
        Check(
            "predictions_match_holdout",
            "With clv_holdout_days N: the purchase model fitted on the data before "
            "reference_date - N predicts the purchase days of the N days that followed "
            "within 20% in total (metadata: Spearman rank correlation and the expected-vs-"
            "actual chart by calibration purchases).",
            blocking=False,
        ),
    ),
    "segment_migration": (
        Check(
            "margins_match_both_weeks",
            "The customers moving out of each segment add up to its size the week before, "
            "those moving into it to its size this week, and the revenue moving into "
            "this week's segments to this week's total monetary.",
        ),
    ),
}


def rows_accounted_for(rows_read: int, rows_kept: int, excluded: int) -> Verdict:
    return Verdict(
        rows_read == rows_kept + excluded,
        f"{rows_read:,} rows read but {rows_kept:,} kept + {excluded:,} excluded = "
        f"{rows_kept + excluded:,}",
        {"rows_read": rows_read, "rows_kept": rows_kept, "rows_excluded": excluded},
    )


def one_metric_row_per_customer(rows: int, distinct: int, customers: int) -> Verdict:
    return Verdict(
        rows == distinct == customers,
        f"{rows:,} rows for {distinct:,} distinct ids; the kept transactions have "
        f"{customers:,} customers after the filters",
        {"rows": rows, "distinct_ids": distinct, "customers": customers},
    )


def scores_on_scale(off_scale: int, scale: int) -> Verdict:
    return Verdict(
        off_scale == 0,
        f"{off_scale:,} customers have a score that is null or off the 1..{scale} scale",
        {"customers_off_scale": off_scale, "scale": scale},
    )


def one_segment_row_per_customer(rows: int, distinct: int, scored: int) -> Verdict:
    return Verdict(
        rows == distinct == scored,
        f"{rows:,} rows for {distinct:,} distinct ids; {scored:,} customers were scored",
        {"rows": rows, "distinct_ids": distinct, "scored": scored},
    )


def segments_in_catalog(unknown: list[str]) -> Verdict:
    return Verdict(
        not unknown, f"segments not in the catalog: {unknown}", {"unknown_segments": unknown}
    )


def dominant_segment(counts: dict[str, int], rows: int, max_share: float) -> Verdict:
    largest = max(counts, key=counts.get) if counts else None
    share = counts[largest] / rows if largest else 0.0
    return Verdict(
        share <= max_share,
        f"{largest} holds {share:.1%} of the customers, more than max_segment_share "
        f"{max_share:.0%}",
        {"largest_segment": str(largest), "share": float(share)},
    )


def model_reproduces_clusters(mismatched: int) -> Verdict:
    return Verdict(
        mismatched == 0,
        f"the stored model assigns {mismatched:,} customers to another cluster than "
        "customer_segments holds",
        {"mismatched_customers": mismatched},
    )


def revenue_matches_customers(revenues, customers_shown: int, exact_micro: int,
                              customers: int) -> Verdict:  # fmt: skip
    """The published revenues add up to the customers' exact micro-unit total, at any size."""
    import math

    revenue = math.fsum(revenues)
    return Verdict(
        amounts_add_up(revenues, exact_micro) and customers_shown == customers,
        f"revenue {revenue:,.2f} over {customers_shown:,} customers, but customer_segments "
        f"sums to {exact_micro / MICRO_UNITS:,.2f} over {customers:,}",
        {"revenue": revenue, "monetary_of_customers": exact_micro / MICRO_UNITS},
    )


def share_change(moves: list[tuple[str, float]], max_change: float) -> Verdict:
    """`moves`: (segment, share now - share the week before); [] without a previous week."""
    worst = max(moves, key=lambda m: abs(m[1]), default=None)
    moved = worst is not None and abs(worst[1]) > max_change
    said = (
        "no previous week stored"
        if worst is None
        else f"{worst[0]} moved {worst[1]:+.1%} from the previous week"
    )
    return Verdict(
        not moved,
        said,
        {"moves": {name: round(d, 6) for name, d in moves}},
        note=said,
    )


def margins_match_both_weeks(out_sizes: dict, sizes_before: dict, into_sizes: dict,
                             sizes_now: dict, revenues_in, revenue_now_micro: int,
                             previous: Optional[str]) -> Verdict:  # fmt: skip
    import math

    return Verdict(
        out_sizes == sizes_before
        and into_sizes == sizes_now
        and amounts_add_up(revenues_in, revenue_now_micro),
        f"moves out of segments {out_sizes} vs sizes the week before {sizes_before}; moves "
        f"in {into_sizes} vs sizes now {sizes_now}; revenue in {math.fsum(revenues_in):,.2f} "
        f"vs {revenue_now_micro / MICRO_UNITS:,.2f}",
        {"previous": previous},
    )


def one_lifetime_row_per_customer(rows: int, distinct: int, segmented: int) -> Verdict:
    return Verdict(
        rows == distinct == segmented,
        f"{rows:,} rows for {distinct:,} distinct ids; customer_segments has {segmented:,} "
        "customers",
        {"rows": rows, "distinct_ids": distinct, "customers_segmented": segmented},
    )


def lifetime_value_fitted(refused: Optional[str]) -> Verdict:
    return Verdict(refused is None, f"not fitted, predictions are null: {refused}",
                   {"fitted": refused is None})  # fmt: skip


# How far the predicted total of the holdout may be from what happened.
HOLDOUT_TOLERANCE = 0.20


def predictions_match_holdout(predicted: float, actual: int, spearman: float,
                              customers: int) -> Verdict:  # fmt: skip
    ratio = predicted / actual if actual else float("nan")
    said = (
        f"predicted {predicted:,.0f} purchase days in the holdout, {actual:,} happened "
        f"(ratio {ratio:.3f}; Spearman {spearman:.3f} over {customers:,} customers)"
    )
    return Verdict(
        abs(ratio - 1) <= HOLDOUT_TOLERANCE,
        f"{said}: more than {HOLDOUT_TOLERANCE:.0%} off",
        {"predicted": predicted, "actual": actual, "ratio": ratio, "spearman": spearman,
         "customers": customers},
        note=said,
    )  # fmt: skip


def holdout_not_fitted(why: str) -> Verdict:
    return Verdict(False, f"the holdout check could not run: {why}", {})
