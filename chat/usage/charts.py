"""A stacked bar chart of daily tokens per model, as inline SVG: no JavaScript, no external assets."""

from dataclasses import dataclass
from datetime import date, timedelta
from html import escape

# Distinguishable colours, in order of first use; models past the list reuse them.
PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"]
WIDTH, HEIGHT, MARGIN_LEFT, MARGIN_BOTTOM, LEGEND_ROW = 900, 260, 60, 30, 18


@dataclass(frozen=True)
class DayModelTokens:
    day: date
    model: str
    tokens: int


def points_from(day_model_groups: list[dict]) -> list[DayModelTokens]:
    """The points of `selectors.usage_overview()`'s day-and-model groups."""
    return [DayModelTokens(day=g["day"], model=g["model"], tokens=g["total_tokens"]) for g in day_model_groups]


def daily_tokens_svg(points: list[DayModelTokens], *, day_from: date, day_to: date) -> str:
    """One bar per day from `day_from` to `day_to`, stacked by model, with a legend."""
    days = [day_from + timedelta(days=n) for n in range((day_to - day_from).days + 1)]
    models = sorted({point.model for point in points})
    colour = {model: PALETTE[i % len(PALETTE)] for i, model in enumerate(models)}
    by_day: dict[date, list[DayModelTokens]] = {day: [] for day in days}
    for point in points:
        by_day.setdefault(point.day, []).append(point)
    peak = max((sum(p.tokens for p in by_day[day]) for day in days), default=0) or 1
    plot_height = HEIGHT - MARGIN_BOTTOM
    slot = (WIDTH - MARGIN_LEFT) / max(len(days), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT + LEGEND_ROW * (len(models) + 1)}" width="100%">',
        f'<title>Tokens per day and model, {day_from} to {day_to}</title>',
        f'<text x="0" y="12" font-size="11">{peak:,}</text>',
        f'<line x1="{MARGIN_LEFT}" y1="{plot_height}" x2="{WIDTH}" y2="{plot_height}" stroke="#999"/>',
    ]
    for index, day in enumerate(days):
        x = MARGIN_LEFT + index * slot
        top = plot_height
        for point in sorted(by_day[day], key=lambda p: p.model):
            height = point.tokens / peak * (plot_height - 16)
            top -= height
            parts.append(
                f'<rect class="bar" x="{x + 1:.1f}" y="{top:.1f}" width="{max(slot - 2, 1):.1f}" '
                f'height="{height:.1f}" fill="{colour[point.model]}">'
                f"<title>{day}: {escape(point.model)}, {point.tokens:,} tokens</title></rect>"
            )
        # A label every week and on the last day, unless the two would overlap.
        last = len(days) - 1
        if index == last or (index % 7 == 0 and last - index >= 3):
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 10}" font-size="10">{day:%m-%d}</text>')
    for row, model in enumerate(models):
        y = HEIGHT + LEGEND_ROW * (row + 1)
        parts.append(f'<rect x="{MARGIN_LEFT}" y="{y - 10}" width="10" height="10" fill="{colour[model]}"/>')
        parts.append(f'<text x="{MARGIN_LEFT + 16}" y="{y}" font-size="11">{escape(model)}</text>')
    parts.append("</svg>")
    return "".join(parts)
