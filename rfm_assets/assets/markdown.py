"""Metadata the Dagster UI shows as text: Markdown tables and the numbers it plots by week."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from rfm_assets.exports import markdown_cell


def segment_table_markdown(analytics: pd.DataFrame) -> str:
    """The segment distribution as a Markdown table with a bar per segment."""
    widest = max(int(analytics["customers"].max()), 1)
    lines = [
        "| segment | customers | share | revenue share | |",
        "|---|---:|---:|---:|---|",
    ]
    for row in analytics.itertuples(index=False):
        bar = "█" * round(30 * row.customers / widest)
        lines.append(
            f"| {markdown_cell(row.segment)} | {row.customers:,} | {row.customer_share:.1%} "
            f"| {row.revenue_share:.1%} | `{bar}` |"
        )
    return "\n".join(lines)


def value_by_segment_markdown(values: pd.DataFrame) -> str:
    """The predicted value per segment (rfm_assets.assets.lifetime.segment_values) as a
    Markdown table."""
    lines = [
        "| segment | predicted value | per customer | probability alive |",
        "|---|---:|---:|---:|",
    ]
    for row in values.itertuples(index=False):
        lines.append(
            f"| {markdown_cell(row.segment)} | {row.predicted_clv:,.2f} "
            f"| {row.avg_predicted_clv:,.2f} | {row.avg_probability_alive:.1%} |"
        )
    return "\n".join(lines)


def migration_markdown(moved: pd.DataFrame, shown: int = 12) -> str:
    """The largest moves between two segments, by customers, as a Markdown table."""
    if moved.empty:
        return "No customer moved between segments."
    lines = ["| from | to | customers | revenue |", "|---|---|---:|---:|"]
    for row in moved.sort_values("customers", ascending=False).head(shown).itertuples():
        lines.append(
            f"| {markdown_cell(row.from_segment)} | {markdown_cell(row.to_segment)} "
            f"| {row.customers:,} | {row.revenue:,.2f} |"
        )
    return "\n".join(lines)


def segment_trends(analytics: pd.DataFrame) -> dict:
    """Numeric metadata with stable keys, which the UI plots week over week."""
    trends = {}
    for row in analytics.itertuples(index=False):
        trends[f"customers/{row.segment_id}"] = dg.MetadataValue.int(int(row.customers))
        trends[f"customer_share/{row.segment_id}"] = dg.MetadataValue.float(
            float(row.customer_share)
        )
        revenue_share = 0.0 if pd.isna(row.revenue_share) else float(row.revenue_share)
        trends[f"revenue_share/{row.segment_id}"] = dg.MetadataValue.float(revenue_share)
    return trends
