"""Customer lists analysts ask for, as plain functions on the customer table.

`identify_high_value_customers` is the public API; the `high_value_customers` asset and the
CLI's `--high-value` call the engines' versions of the same rule.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rfm_assets.errors import RFMConfigError

HIGH_VALUE_MEASURES = ("monetary", "RFM_score", "predicted_clv")


def check_high_value_arguments(top_percentage: float, by: str) -> None:
    if not 0 < top_percentage <= 1:
        raise RFMConfigError(
            f"high_value_share: must be a share in (0, 1], such as 0.2 for the top 20%; "
            f"got {top_percentage!r}"
        )
    if by not in HIGH_VALUE_MEASURES:
        raise RFMConfigError(
            f"high_value_by: {by!r} is not one of {', '.join(HIGH_VALUE_MEASURES)}"
        )


def identify_high_value_customers(
    df: pd.DataFrame, top_percentage: float = 0.2, by: str = "monetary"
) -> pd.DataFrame:
    """The top `top_percentage` of customers by `by` (monetary, or the weighted RFM_score).

    Tie-safe: a customer is in when fewer than `top_percentage * n` customers have a strictly
    greater value, so customers tied at the cut are all in (the list can be a little longer
    than the share, never shorter, and never depends on row order). Returns the rows with
    `high_value_rank` (1 + customers with a strictly greater value), highest first.
    """
    check_high_value_arguments(top_percentage, by)
    # A null value (predicted_clv of a customer without a purchase day) ranks last.
    values = np.nan_to_num(df[by].to_numpy(dtype=np.float64), nan=-np.inf)
    ordered = np.sort(values)
    greater = len(values) - np.searchsorted(ordered, values, side="right")
    chosen = df.loc[greater < top_percentage * len(values)].copy()
    chosen["high_value_rank"] = (greater[greater < top_percentage * len(values)] + 1).astype(
        np.int64
    )
    return chosen.sort_values(["high_value_rank", "customer_id"], ignore_index=True)


def segment_strategies(analytics: pd.DataFrame, segments) -> list[dict]:
    """The campaign strategy of each segment with customers, in priority order, from the
    catalog (`segments`: the rule set's SegmentEntry list) and the run's segment_analytics:
    goal, channel, campaign, recommendation, customers, revenue and the budget share.

    budget_share = budget_weight x customers / the sum of that over the segments, so the
    shares add up to 1 (all 0 when every weight is 0); a segment nobody is in gets none.
    """
    customers = dict(zip(analytics["segment"].astype(str), analytics["customers"].astype(int)))
    revenue = dict(zip(analytics["segment"].astype(str), analytics["revenue"].astype(float)))
    shown = [e for e in sorted(segments, key=lambda e: e.priority) if customers.get(e.name)]
    weighted = {e.name: e.budget_weight * customers[e.name] for e in shown}
    total = sum(weighted.values())
    return [
        {
            "segment": entry.name,
            "segment_id": entry.segment_id,
            "priority": entry.priority,
            "customers": customers[entry.name],
            "revenue": revenue[entry.name],
            "goal": entry.goal,
            "channel": entry.channel,
            "campaign": entry.campaign,
            "recommendation": entry.recommendation,
            "example_actions": list(entry.example_actions),
            "budget_weight": entry.budget_weight,
            "budget_share": weighted[entry.name] / total if total else 0.0,
        }
        for entry in shown
    ]
