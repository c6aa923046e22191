"""Seeded synthetic transactions of any size, shaped like real retail data.

Orders are drawn first (a skewed customer, a date inside the customer's active span), then
expanded into 1..n lines, so most customers buy once and a few buy often, as in real logs.
A share of orders are cancellations (order id prefixed `C`, negative amounts) and a share of
lines have no customer id, so the cleaning rules have work to do.

`one_time_share` gives the shape of large retail logs instead: every customer buys, that share
of them exactly once, and the other orders go to the rest by a heavy-tailed weight.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

START = np.datetime64("2023-01-01", "s")
SPAN_DAYS = 730


def generate_transactions(
    rows: int,
    customers: int | None = None,
    seed: int = 0,
    cancelled_share: float = 0.02,
    missing_customer_share: float = 0.01,
    string_ids: bool = False,
    one_time_share: float | None = None,
) -> pd.DataFrame:
    """`rows` transaction lines: customer_id, transaction_date, amount, order_id."""
    rng = np.random.default_rng(seed)
    customers = customers or max(rows // 25, 1)
    lines_per_order = 1 + rng.poisson(2.0, size=rows)
    order_count = int(np.searchsorted(np.cumsum(lines_per_order), rows) + 1)
    lines_per_order = lines_per_order[:order_count]
    lines_per_order[-1] -= int(lines_per_order.sum()) - rows

    # Customer activity: a heavy-tailed weight, a first day and an active span.
    weight = rng.pareto(1.5, size=customers) + 0.05
    first_day = rng.integers(0, SPAN_DAYS, size=customers)
    active_days = (rng.random(customers) * (SPAN_DAYS - first_day)).astype(np.int64) + 1
    if one_time_share is None:
        order_customer = rng.choice(customers, size=order_count, p=weight / weight.sum())
    else:
        order_customer = _orders_with_one_time_buyers(
            rng, customers, order_count, one_time_share, weight
        )
    order_day = first_day[order_customer] + (
        rng.random(order_count) * active_days[order_customer]
    ).astype(np.int64)
    order_seconds = order_day * 86_400 + rng.integers(8 * 3600, 20 * 3600, size=order_count)
    cancelled = rng.random(order_count) < cancelled_share

    line_order = np.repeat(np.arange(order_count), lines_per_order)
    amount = np.round(rng.lognormal(2.5, 1.0, size=rows), 2)
    amount = np.where(cancelled[line_order], -amount, amount)
    order_number = (100_000 + line_order).astype(str)
    order_id = np.where(cancelled[line_order], np.char.add("C", order_number), order_number)
    missing = rng.random(rows) < missing_customer_share
    customer_number = 10_000 + order_customer[line_order]
    if string_ids:
        # Zero-padded text ids, as many CRM exports have them.
        text = np.char.add("C", np.char.zfill(customer_number.astype(str), 7)).astype(object)
        text[missing] = None
        customer_id = pd.array(text, dtype="str")
    else:
        customer_id = pd.array(np.where(missing, 0, customer_number), dtype="Int64")
        customer_id[missing] = pd.NA
    return pd.DataFrame(
        {
            "customer_id": customer_id,
            "transaction_date": START + order_seconds[line_order].astype("timedelta64[s]"),
            "amount": amount,
            "order_id": pd.array(order_id, dtype="str"),
        }
    )


def _orders_with_one_time_buyers(
    rng: np.random.Generator, customers: int, orders: int, one_time_share: float, weight
) -> np.ndarray:
    """The customer of each order: one order for everyone, a second for each repeat buyer,
    the rest to repeat buyers by `weight`; shuffled, so the file is not sorted by customer."""
    repeat = np.arange(round(customers * one_time_share), customers)
    extra = orders - customers - len(repeat)
    if extra < 0:
        raise ValueError(
            f"{orders} orders cannot give {customers} customers one order each and "
            f"{len(repeat)} of them a second; use more rows or a larger one_time_share"
        )
    chosen = rng.choice(repeat, size=extra, p=weight[repeat] / weight[repeat].sum())
    return rng.permutation(np.concatenate([np.arange(customers), repeat, chosen]))
