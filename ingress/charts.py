"""Charts drawn on the server as inline SVG: the dashboard runs no script (its CSP has no script-src),
and an inline `<svg>` element needs none. Each bar carries a `<title>` (the browser's tooltip and what a
screen reader says)."""
from __future__ import annotations

import math
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 1080, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 40, 52
SERIES = (("enrollments", "Enrollments", "#4a6fd1"), ("completions", "Completions", "#2f9e5b"))


def _nice_step(top: int, ticks: int = 5) -> int:
    """A step of 1, 2 or 5 × 10ⁿ giving at most `ticks` intervals up to `top`."""
    raw = max(top, 1) / ticks
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    for factor in (1, 2, 5, 10):
        if factor * power >= raw:
            return max(int(factor * power), 1)
    return int(10 * power)


def weekly_bars(activity: list[dict[str, Any]]) -> Markup:
    """Grouped bars of enrollments and completions per week (`reports.activity_by_week`), with axes,
    gridlines, week labels and a legend."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = max([max(w["enrollments"], w["completions"]) for w in activity] + [1])
    step = _nice_step(top)
    y_max = step * math.ceil(top / step)

    def y(value: int) -> float:
        return TOP + plot_h - value / y_max * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" id="activity-chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="100%" font-family="system-ui, sans-serif" font-size="12" '
             f'aria-label="Enrollments and completions per week">']
    # legend
    x = LEFT
    for _, label, colour in SERIES:
        parts.append(f'<rect x="{x}" y="12" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{x + 17}" y="22.5" fill="#1d2330">{label}</text>')
        x += 120
    # gridlines and the y axis
    for value in range(0, y_max + 1, step):
        yy = y(value)
        parts.append(f'<line x1="{LEFT}" y1="{yy:.1f}" x2="{WIDTH - RIGHT}" y2="{yy:.1f}" stroke="#e3e6ec"/>'
                     f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#4a5468">{value}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#4a5468"/>'
                 f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#4a5468"/>')
    # bars
    n = max(len(activity), 1)
    group = plot_w / n
    bar = min(group * 0.36, 28)
    every = math.ceil(n / 13)  # at most 13 week labels
    for i, week in enumerate(activity):
        left = LEFT + i * group + (group - 2 * bar) / 2
        day = week["week"]
        for j, (key, label, colour) in enumerate(SERIES):
            value = week[key]
            bx, by = left + j * bar, y(value)
            tip = escape(f"week of {day:%Y-%m-%d}: {value} {label.lower()}")
            parts.append(f'<rect class="bar {key}" data-week="{day:%Y-%m-%d}" data-value="{value}" x="{bx:.1f}" '
                         f'y="{by:.1f}" width="{bar - 1:.1f}" height="{TOP + plot_h - by:.1f}" fill="{colour}">'
                         f'<title>{tip}</title></rect>')
            if value:
                parts.append(f'<text x="{bx + bar / 2:.1f}" y="{by - 3:.1f}" text-anchor="middle" font-size="10" '
                             f'fill="#1d2330">{value}</text>')
        if i % every == 0:
            parts.append(f'<text x="{LEFT + i * group + group / 2:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" '
                         f'fill="#4a5468">{day:%b} {day.day}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" fill="#4a5468">'
                 f'week starting (Monday, UTC)</text>'
                 f'<text transform="translate(16 {TOP + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'fill="#4a5468">count per week</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
