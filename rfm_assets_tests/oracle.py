"""An independent, deliberately plain RFM computation: Python loops over rows, no numpy.

It follows docs/contract.md, not the package's code, so the tests compare two readings of the
contract. The segment grids below are typed in from docs/contract.md, not loaded from config/.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict

GRID_5 = {  # R -> segments for FM 1..5, as in docs/contract.md
    5: ["New Customers", "Potential Loyalists", "Potential Loyalists", "Champions", "Champions"],
    4: ["Promising", "Potential Loyalists", "Potential Loyalists", "Loyal Customers", "Champions"],
    3: ["About to Sleep", "About to Sleep", "Need Attention", "Loyal Customers", "Loyal Customers"],
    2: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Cannot Lose Them"],
    1: ["Lost", "Hibernating", "At Risk", "Cannot Lose Them", "Cannot Lose Them"],
}
GRID_4 = {
    4: ["New Customers", "Potential Loyalists", "Champions", "Champions"],
    3: ["Promising", "Potential Loyalists", "Loyal Customers", "Loyal Customers"],
    2: ["About to Sleep", "Need Attention", "At Risk", "Cannot Lose Them"],
    1: ["Lost", "Hibernating", "At Risk", "Cannot Lose Them"],
}


def as_date(value) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return value.to_pydatetime().date()  # pandas Timestamp


def oracle(
    rows: list[dict],
    reference_date: dt.date | None = None,
    analysis_period_days: int | None = None,
    returns_policy: str = "exclude",
    cancelled_order_prefix: str = "C",
    scale: int = 5,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    fixed: dict[str, list[float]] | None = None,
    rules: list[dict] | None = None,
    min_frequency: int | None = None,
    exclude_recent_days: int | None = None,
) -> tuple[dict, dict]:
    """rows: dicts with customer_id (None = missing), date, amount, and optionally order_id.

    Returns (customers, excluded): customer id -> values, and reason -> row count.
    """
    if reference_date is None:
        reference_date = max(as_date(r["date"]) for r in rows) + dt.timedelta(days=1)
    window_start = (
        reference_date - dt.timedelta(days=analysis_period_days) if analysis_period_days else None
    )
    excluded = defaultdict(int)
    kept = []
    for row in rows:
        day = as_date(row["date"])
        amount = row["amount"]
        order = row.get("order_id")
        cancelled = (
            order is not None
            and bool(cancelled_order_prefix)
            and str(order).startswith(cancelled_order_prefix)
        )
        customer = row["customer_id"]
        if isinstance(customer, str):
            customer = customer.strip()  # documented: surrounding whitespace is not part of an id
        if customer is None or customer == "":
            excluded["missing_customer_id"] += 1
        elif amount is None or math.isnan(amount) or math.isinf(amount):
            excluded["invalid_amount"] += 1
        elif day >= reference_date:
            excluded["on_or_after_reference_date"] += 1
        elif window_start is not None and day < window_start:
            excluded["before_analysis_window"] += 1
        elif returns_policy == "exclude" and cancelled:
            excluded["cancelled_order"] += 1
        elif returns_policy == "exclude" and round(amount * 1_000_000) <= 0:
            excluded["non_positive_amount"] += 1  # money in micro-units: 4e-7 is 0
        else:
            is_return = cancelled or round(amount * 1_000_000) <= 0
            kept.append((customer, day, -abs(amount) if is_return else amount, is_return, order))

    has_orders = any("order_id" in r for r in rows[:1])
    per_customer = defaultdict(
        lambda: {"micro": 0, "days": [], "orders": set(), "rows": 0, "kept": 0, "order_days": {}}
    )
    for line, (customer, day, amount, is_return, order) in enumerate(kept):
        entry = per_customer[customer]
        entry["kept"] += 1
        entry["micro"] += round(amount * 1_000_000)  # Python's round: half to even
        if not is_return:
            entry["days"].append(day)
            entry["orders"].add(order)
            entry["rows"] += 1
            # Each order's day (its first purchase line's); without orders, each line's.
            key = order if has_orders else line
            entry["order_days"][key] = min(entry["order_days"].get(key, day), day)
    customers = {}
    for customer, entry in per_customer.items():
        if returns_policy == "net" and entry["micro"] <= 0:
            excluded["customer_monetary_not_positive"] += entry["kept"]
            continue
        last, first = max(entry["days"]), min(entry["days"])
        customers[customer] = {
            "recency": (reference_date - last).days,
            "frequency": len(entry["orders"]) if has_orders else entry["rows"],
            "monetary": entry["micro"] / 1_000_000,
            "first_purchase_date": first,
            "last_purchase_date": last,
            "tenure_days": (reference_date - first).days,
            "customer_lifetime_days": (last - first).days + 1,
        }
        c = customers[customer]
        c["purchase_frequency_per_month"] = c["frequency"] * 30.44 / max(c["tenure_days"], 30.44)
        # The mean of the gaps between consecutive orders' days; one order: the days since it.
        days = sorted(entry["order_days"].values())
        gaps = [(later - earlier).days for earlier, later in zip(days, days[1:])]
        c["days_between_purchases"] = sum(gaps) / len(gaps) if gaps else c["tenure_days"]
    hold_out(customers, excluded, min_frequency, exclude_recent_days)
    score(customers, scale, weights, fixed, rules)
    return customers, dict(excluded)


def hold_out(customers: dict, excluded: dict, min_frequency, exclude_recent_days) -> None:
    """Remove the customers the filters hold out before scoring, first reason first."""
    for customer in list(customers):
        c = customers[customer]
        if min_frequency is not None and c["frequency"] < min_frequency:
            excluded["customers:below_min_frequency"] += 1
            del customers[customer]
        elif exclude_recent_days is not None and c["tenure_days"] <= exclude_recent_days:
            excluded["customers:first_purchase_too_recent"] += 1
            del customers[customer]


def rule_segment(rules: list[dict], r: int, f: int, m: int, fm: int, rfm: float):
    """The first rule (as written in a rule file) whose every condition holds."""
    for rule in rules:
        if rule.get("default"):
            return rule["segment"]
        holds = True
        for key, value in (("R", r), ("F", f), ("M", m), ("FM", fm)):
            if key in rule:
                bounds = rule[key] if isinstance(rule[key], list) else [rule[key], rule[key]]
                holds = holds and bounds[0] <= value <= bounds[1]
        if "RFM" in rule:
            holds = holds and rule["RFM"][0] <= rfm <= rule["RFM"][1]
        if "codes" in rule:
            holds = holds and f"{r}{f}{m}" in {str(code) for code in rule["codes"]}
        if holds:
            return rule["segment"]
    return None


def score(customers: dict, scale: int, weights, fixed, rules=None) -> None:
    n = len(customers)
    for dimension, letter in (("recency", "R"), ("frequency", "F"), ("monetary", "M")):
        values = [c[dimension] for c in customers.values()]
        if fixed is None:
            count_of = defaultdict(int)
            for v in values:
                count_of[v] += 1
            # worse[v] = customers with a strictly worse value than v
            worse, running = {}, 0
            ordered = sorted(count_of, reverse=(dimension == "recency"))
            for v in ordered:  # from worst to best
                worse[v] = running
                running += count_of[v]
            for c in customers.values():
                c[f"{letter}_score"] = 1 + (scale * worse[c[dimension]]) // n
        else:
            cuts = fixed[dimension]
            for c in customers.values():
                v = c[dimension]
                if dimension == "recency":
                    c[f"{letter}_score"] = scale - sum(1 for t in cuts if t < v)
                else:
                    c[f"{letter}_score"] = 1 + sum(1 for t in cuts if t <= v)
    w_r, w_f, w_m = weights
    grid = GRID_5 if scale == 5 else GRID_4
    for c in customers.values():
        r, f, m = c["R_score"], c["F_score"], c["M_score"]
        c["FM_score"] = math.floor((w_f * f + w_m * m) / (w_f + w_m) + 0.5)
        c["RFM_score"] = (w_r * r + w_f * f + w_m * m) / (w_r + w_f + w_m)
        c["rfm_cell"] = f"{r}{f}{m}"
        if rules is None:
            c["segment"] = grid[r][c["FM_score"] - 1]
        else:
            c["segment"] = rule_segment(rules, r, f, m, c["FM_score"], c["RFM_score"])


def customer_oracle(
    rows: list[dict],
    reference_date: dt.date | None = None,
    analysis_period_days: int | None = None,
    valid_dates: tuple[dt.date, dt.date] = (dt.date(1900, 1, 1), dt.date(2999, 12, 31)),
    scale: int = 5,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    rules: list[dict] | None = None,
    min_frequency: int | None = None,
    exclude_recent_days: int | None = None,
) -> tuple[dict, dict]:
    """Customer-level input, read from docs/contract.md: rows are dicts with customer_id,
    frequency, monetary, and recency or last_purchase_date (optionally first_purchase_date);
    None is a missing value. Dates are compared as day ordinals, so placeholder recencies
    (99999 days) need no date arithmetic. Returns (customers, excluded) as `oracle` does."""
    by_date = "last_purchase_date" in rows[0]
    has_first = "first_purchase_date" in rows[0]
    low, high = (d.toordinal() for d in valid_dates)

    def missing(value) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    if reference_date is None:  # the day after the latest valid last purchase date
        days = [as_date(r["last_purchase_date"]).toordinal() for r in rows
                if not missing(r["last_purchase_date"])]  # fmt: skip
        reference_date = dt.date.fromordinal(max(d for d in days if low <= d <= high) + 1)
    ref = reference_date.toordinal()
    window_start = max(ref - analysis_period_days, low) if analysis_period_days else None
    excluded = defaultdict(int)
    customers = {}
    for row in rows:
        customer = row["customer_id"]
        if isinstance(customer, str):
            customer = customer.strip()
        recency, frequency, monetary = row.get("recency"), row["frequency"], row["monetary"]
        if by_date:
            last = (
                None
                if missing(row["last_purchase_date"])
                else as_date(row["last_purchase_date"]).toordinal()
            )
        else:
            valid = (
                not missing(recency)
                and not math.isinf(recency)
                and recency >= 0
                and recency == int(recency)
            )
            last = ref - int(recency) if valid else None
        first = None
        if has_first and not missing(row["first_purchase_date"]):
            first = as_date(row["first_purchase_date"]).toordinal()
        if customer is None or customer == "":
            excluded["missing_customer_id"] += 1
        elif last is None:
            excluded["invalid_recency"] += 1
        elif (
            missing(frequency)
            or math.isinf(frequency)
            or frequency < 1
            or frequency != int(frequency)
        ):
            excluded["invalid_frequency"] += 1
        elif missing(monetary) or math.isinf(monetary):
            excluded["invalid_monetary"] += 1
        elif not low <= last <= high:
            excluded["date_out_of_range"] += 1
        elif by_date and last >= ref:
            excluded["on_or_after_reference_date"] += 1
        elif window_start is not None and last < window_start:
            excluded["before_analysis_window"] += 1
        elif has_first and (first is None or not low <= first <= high or first > last):
            excluded["invalid_first_purchase_date"] += 1
        elif round(monetary * 1_000_000) <= 0:
            excluded["customer_monetary_not_positive"] += 1
        else:
            c = {
                "recency": ref - last,
                "frequency": int(frequency),
                "monetary": round(monetary * 1_000_000) / 1_000_000,
                "last_purchase_date": dt.date.fromordinal(last),
                "first_purchase_date": None,
                "tenure_days": None,
                "customer_lifetime_days": None,
                "purchase_frequency_per_month": None,
            }
            if has_first:
                c["first_purchase_date"] = dt.date.fromordinal(first)
                c["tenure_days"] = ref - first
                c["customer_lifetime_days"] = last - first + 1
                c["purchase_frequency_per_month"] = (
                    c["frequency"] * 30.44 / max(c["tenure_days"], 30.44)
                )
            customers[customer] = c
    hold_out(customers, excluded, min_frequency, exclude_recent_days)
    score(customers, scale, weights, None, rules)
    return customers, dict(excluded)
