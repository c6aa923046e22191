"""A bar chart of the segment distribution as SVG: no plotting library, opens anywhere."""

from html import escape

import pandas as pd

BAR_COLOUR = "#2f6f9f"


def segment_chart_svg(analytics: pd.DataFrame, title: str = "Customers by segment") -> str:
    """Horizontal bars of customers per segment, in priority order, labelled with the
    segment's share of customers and of revenue."""
    rows = analytics.sort_values("priority")
    row_height, label_width, bar_width, top = 26, 170, 330, 40
    height = top + row_height * len(rows) + 30
    widest = max(int(rows["customers"].max()), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + bar_width + 330}" '
        f'height="{height}" font-family="Helvetica, Arial, sans-serif" font-size="13">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="24" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    for index, row in enumerate(rows.itertuples(index=False)):
        y = top + index * row_height
        width = bar_width * row.customers / widest
        parts += [
            f'<text x="{label_width - 8}" y="{y + 17}" text-anchor="end">'
            f"{escape(str(row.segment))}</text>",
            f'<rect x="{label_width}" y="{y + 4}" width="{width:.1f}" height="{row_height - 8}" '
            f'fill="{BAR_COLOUR}"/>',
            f'<text x="{label_width + width + 6:.1f}" y="{y + 17}">{row.customers:,} '
            f"({row.customer_share:.1%} of customers, {row.revenue_share:.1%} of revenue)</text>",
        ]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
