"""Names and rules that every engine shares: columns, exclusion reasons, money units."""

# Amounts are summed as integers of micro-units (amount * 10**6, rounded half to even) so that
# no engine's summation order can move a customer across a score boundary.
MICRO_UNITS = 10**6

# Why a transaction row is not used, in the order the rules are applied: a row is counted
# under the first reason that applies to it.
EXCLUSION_REASONS = {
    "duplicate_row": "every column equal to an earlier line's: an exact duplicate of a source "
    "line (drop_duplicate_rows)",
    "missing_customer_id": "customer id is null or blank",
    "invalid_amount": "amount is NaN or infinite",
    "date_out_of_range": "dated before earliest_valid_date or after latest_valid_date "
    "(placeholders such as 9999-12-31 or 1900-01-01)",
    "on_or_after_reference_date": "dated on or after the reference date",
    "before_analysis_window": "dated before reference_date - analysis_period_days",
    "kept_by_earlier_weeks": "dated before this week, whose rows the weeks before it keep "
    '(weekly partitions: see docs/contract.md, "A week\'s rows")',
    "cancelled_order": "order id starts with the cancellation prefix (returns_policy exclude)",
    "non_positive_amount": "amount <= 0 (returns_policy exclude)",
    "customer_monetary_not_positive": "the customer's netted monetary is <= 0 (returns_policy net)",
}

# Why a row of customer-level input (input_level: customers, one row per customer) is not
# used, in the order the rules are applied; counted like EXCLUSION_REASONS.
CUSTOMER_ROW_EXCLUSIONS = {
    "missing_customer_id": "customer id is null or blank",
    "invalid_recency": "recency is missing, negative or not a whole number of days (or the "
    "last purchase date is missing)",
    "invalid_frequency": "frequency is missing or not a whole number of orders of at least 1",
    "invalid_monetary": "monetary is missing, NaN or infinite",
    "date_out_of_range": "the last purchase date (reference_date - recency) is before "
    "earliest_valid_date or after latest_valid_date",
    "on_or_after_reference_date": "the last purchase date is on or after the reference date",
    "before_analysis_window": "the last purchase is before reference_date - analysis_period_days",
    "invalid_first_purchase_date": "the first purchase date is missing, outside the valid "
    "dates, or after the last purchase date",
    "customer_monetary_not_positive": "monetary <= 0",
}


def exclusion_reasons(input_level: str) -> dict[str, str]:
    """The counted exclusion reasons of an input level, in the order they apply."""
    return CUSTOMER_ROW_EXCLUSIONS if input_level == "customers" else EXCLUSION_REASONS


# Why a customer is held out before scoring (settings min_frequency, exclude_recent_days), in
# the order the filters apply; counted in customers, not rows.
CUSTOMER_FILTERS = {
    "below_min_frequency": "fewer orders than min_frequency",
    "first_purchase_too_recent": "first purchase within exclude_recent_days of the reference date",
}

TRANSACTION_COLUMNS = ["customer_id", "transaction_date", "amount", "is_return", "order_id"]
METRIC_COLUMNS = [
    "customer_id",
    "recency",
    "frequency",
    "monetary",
    "first_purchase_date",
    "last_purchase_date",
    "tenure_days",
    "avg_order_value",
    "customer_lifetime_days",
    "purchase_frequency_per_month",
]
SCORE_COLUMNS = ["R_score", "F_score", "M_score", "FM_score", "RFM_score", "rfm_cell"]
SEGMENT_COLUMNS = [
    "segment",
    "segment_id",
    "recommendation",
    "value_tier",
    "engagement_level",
    "segmented_at",
]
ANALYTICS_COLUMNS = [
    "segment",
    "segment_id",
    "priority",
    "customers",
    "customer_share",
    "revenue",
    "revenue_share",
    "avg_recency",
    "avg_frequency",
    "avg_monetary",
    "avg_order_value",
    "recommendation",
    "recency_thresholds",
    "frequency_thresholds",
    "monetary_thresholds",
]

MIGRATION_COLUMNS = ["from_segment", "to_segment", "customers", "revenue"]
SLIPPING_COLUMNS = [
    "customer_id",
    "previous_segment",
    "segment",
    "segment_id",
    "recommendation",
    "R_score",
    "F_score",
    "M_score",
    "RFM_score",
    "recency",
    "frequency",
    "monetary",
]

# Declared types of the columns, shown in the Dagster catalog before the first run (the
# stored schema then gives the engine's exact types).
COLUMN_TYPES = {
    "customer_id": "int64 or string",
    "transaction_date": "timestamp",
    "amount": "float64",
    "is_return": "bool",
    "order_id": "int64 or string",
    "recency": "int64",
    "frequency": "int64",
    "monetary": "float64",
    "first_purchase_date": "timestamp",
    "last_purchase_date": "timestamp",
    "tenure_days": "int64",
    "avg_order_value": "float64",
    "customer_lifetime_days": "int64",
    "purchase_frequency_per_month": "float64",
    "R_score": "int64",
    "F_score": "int64",
    "M_score": "int64",
    "FM_score": "int64",
    "RFM_score": "float64",
    "rfm_cell": "string",
    "segment": "category",
    "segment_id": "category",
    "recommendation": "category",
    "value_tier": "category",
    "engagement_level": "category",
    "segmented_at": "timestamp (UTC)",
    "high_value_rank": "int64",
    "priority": "int64",
    "customers": "int64",
    "customer_share": "float64",
    "revenue": "float64",
    "revenue_share": "float64",
    "avg_recency": "float64",
    "avg_frequency": "float64",
    "avg_monetary": "float64",
    "from_segment": "string",
    "to_segment": "string",
    "previous_segment": "string",
    "recency_thresholds": "list<float64>",
    "frequency_thresholds": "list<float64>",
    "monetary_thresholds": "list<float64>",
    "probability_alive": "float64",
    "expected_purchases": "float64",
    "expected_average_value": "float64",
    "predicted_clv": "float64",
    "avg_predicted_clv": "float64",
    "avg_probability_alive": "float64",
}

# Shown in the Dagster UI as the column schema of each asset.
COLUMN_DESCRIPTIONS = {
    "customer_id": "Customer id as in the source (integer-valued floats become integers).",
    "transaction_date": "Transaction timestamp as in the source; its calendar date is used.",
    "amount": "Line amount (mapped, or quantity * unit_price); negative for netted returns.",
    "is_return": "True for a return or cancellation kept under returns_policy net.",
    "order_id": "Order (invoice) id; present only when an order column is mapped.",
    "recency": "Days from the last purchase date to the reference date (>= 1; customer-level "
    "input may give 0).",
    "frequency": "Distinct orders (or purchase rows when no order column is mapped).",
    "monetary": "Sum of amounts, exact to 10^-6; returns subtracted under net.",
    "first_purchase_date": "Calendar date of the first purchase in the window.",
    "last_purchase_date": "Calendar date of the last purchase in the window.",
    "tenure_days": "Days from the first purchase date to the reference date.",
    "avg_order_value": "Average order value: monetary / frequency per customer; "
    "revenue / orders per segment.",
    "customer_lifetime_days": "Days from the first to the last purchase, both counted (1 for a "
    "customer who bought on one day).",
    "purchase_frequency_per_month": "Orders per 30.44 days of tenure; a tenure under one month "
    "counts as one month.",
    "R_score": "Recency score, 1 (longest ago) to k (most recent).",
    "F_score": "Frequency score, 1 (fewest) to k (most).",
    "M_score": "Monetary score, 1 (least) to k (most).",
    "FM_score": "floor((wF*F + wM*M) / (wF + wM) + 0.5).",
    "RFM_score": "(wR*R + wF*F + wM*M) / (wR + wF + wM).",
    "rfm_cell": "The string R, F, M scores, e.g. '545'.",
    "segment": "Segment name from the (R_score, FM_score) grid.",
    "segment_id": "Slug of the segment name, e.g. cannot_lose_them.",
    "recommendation": "Marketing recommendation of the segment.",
    "value_tier": "Low / Medium / High by FM_score.",
    "engagement_level": "Lapsed / Lapsing / Cooling / Active by R_score.",
    "segmented_at": "UTC time the segments were computed.",
    "high_value_rank": "1 + customers with a strictly greater value of the ranking measure.",
    "priority": "Marketing priority of the segment (1 = act first).",
    "customers": "Customers in the segment (segment_migration: who moved from -> to).",
    "customer_share": "customers / all customers.",
    "revenue": "Sum of monetary of the segment's customers (segment_migration: this week's "
    "monetary of the movers, last week's for lapsed ones).",
    "revenue_share": "revenue / all revenue.",
    "avg_recency": "Mean recency of the segment's customers.",
    "avg_frequency": "Mean frequency of the segment's customers.",
    "avg_monetary": "Mean monetary of the segment's customers.",
    "cluster": "segmentation_method kmeans or auto: the customer's cluster (0..k-1).",
    "cluster_name": "kmeans / auto: the cluster's segment, numbered when clusters share one.",
    "cluster_distance": "kmeans / auto: distance to the cluster's centroid in scaled features.",
    "from_segment": "Segment the week before; (new) for customers absent then.",
    "to_segment": "Segment this week; (lapsed) for customers absent now.",
    "previous_segment": "The customer's segment the week before.",
    "recency_thresholds": "Recency cut points this run used (see fixed_thresholds).",
    "frequency_thresholds": "Frequency cut points this run used.",
    "monetary_thresholds": "Monetary cut points this run used.",
    "probability_alive": "clv: BG/NBD probability that the customer has not churned at the "
    "reference date; null without a purchase day or a fit.",
    "expected_purchases": "clv: expected purchase days over the next clv_horizon_days.",
    "expected_average_value": "clv: Gamma-Gamma expected spend of a purchase day.",
    "predicted_clv": "clv: expected_average_value x the expected purchases of each 30-day "
    "period of clv_horizon_days, discounted at clv_discount_rate; segment_analytics: the "
    "segment's total.",
    "avg_predicted_clv": "clv: mean predicted_clv of the segment's customers with one.",
    "avg_probability_alive": "clv: mean probability_alive of the segment's customers with one.",
}


# What segment_analytics gains with clv: true, after its own columns.
SEGMENT_VALUE_COLUMNS = ["predicted_clv", "avg_predicted_clv", "avg_probability_alive"]

# The columns of every table of the graph, in order.
COLUMNS_OF = {
    "transactions": TRANSACTION_COLUMNS,
    "rfm_metrics": METRIC_COLUMNS,
    "rfm_scores": METRIC_COLUMNS + SCORE_COLUMNS,
    "customer_segments": METRIC_COLUMNS + SCORE_COLUMNS + SEGMENT_COLUMNS,
    "segment_analytics": ANALYTICS_COLUMNS,
    "high_value_customers": METRIC_COLUMNS + SCORE_COLUMNS + SEGMENT_COLUMNS + ["high_value_rank"],
    "segment_migration": MIGRATION_COLUMNS,
    "slipping_customers": SLIPPING_COLUMNS,
    "customer_lifetime_value": [
        "customer_id",
        "segment",
        "probability_alive",
        "expected_purchases",
        "expected_average_value",
        "predicted_clv",
    ],
}


# Columns a table gains with a setting, after its own: (setting, columns).
COLUMNS_WITH = {
    "segment_analytics": ("clv: true", SEGMENT_VALUE_COLUMNS),
    "high_value_customers": ("high_value_by: predicted_clv", ["predicted_clv"]),
}


def columns_markdown() -> str:
    """The columns of every table, for docs/contract.md (kept current by a test)."""
    lines = []
    for table, columns in COLUMNS_OF.items():
        lines += [f"### `{table}`", "", "| column | type | meaning |", "|---|---|---|"]
        setting, added = COLUMNS_WITH.get(table, ("", []))
        for column in [*columns, *added]:
            meaning = COLUMN_DESCRIPTIONS.get(column, "").replace("|", "\\|")
            kind = COLUMN_TYPES[column] + (f" (with {setting})" if column in added else "")
            lines.append(f"| `{column}` | {kind} | {meaning} |")
        lines.append("")
    return "\n".join(lines)
