"""The self-contained HTML report: tables plus inline SVG plots, nothing fetched from a network."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from html import escape
from typing import Any

from laneway.telemetry._log_args import CHANGES, changes, figure, headline
from laneway.telemetry._records import ExchangeRow, HourlyRow
from laneway.telemetry._store import HOUR_S
from laneway.telemetry._summary import NO_MODEL, model_label

PALETTE = ("#4a7bd0", "#d0694a", "#3e9e6b", "#9a5bc4", "#c49a2a", "#3a9fb0", "#b0457a", "#6b6b6b")
WIDTH, HEIGHT, PAD = 640, 200, 40
LATENCY_BINS = 24
TIME_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 21_600.0, 86_400.0)
MARKED_SLOTS = 40  # up to this many time buckets, each point of the cost plot is also drawn as a dot
# (heading, field, style of `figure`)
_FIELDS = (
    ("share", "share", "pct"),
    ("requests", "requests", "int"),
    ("p50 ms", "p50_ms", "ms"),
    ("p95 ms", "p95_ms", "ms"),
    ("p99 ms", "p99_ms", "ms"),
    ("TTFT p50 ms", "ttft_p50_ms", "ms"),
    ("TTFT p95 ms", "ttft_p95_ms", "ms"),
    ("error rate", "error_rate", "pct"),
    ("timeout rate", "timeout_rate", "pct"),
    ("failed attempts", "failed_attempts", "int"),
    ("tokens in", "tokens_in", "int"),
    ("tokens out", "tokens_out", "int"),
    ("cost USD", "cost_usd", "usd"),
    ("USD / conversation", "cost_per_conversation_usd", "usd"),
    ("USD / 1k tokens", "cost_per_1k_tokens_usd", "usd"),
    ("escalated OK / min", "escalated_ok_per_min", "rate"),
)


def report_html(summary: dict[str, Any], rows: Sequence[ExchangeRow], hourly: Sequence[HourlyRow]) -> str:
    total = summary["total"]
    notice = ""
    if total["simulated_requests"]:
        notice = (
            f'<p class="sim">Simulated: {total["simulated_requests"]} of {total["requests"]} exchanges '
            "come from the simulated fleet; these numbers were not measured on real providers.</p>"
        )
    parts = [
        f"<h1>Laneway report</h1>{notice}",
        f"<p>{escape(headline(summary))}</p>",
        "<h2>Models</h2>",
        _table(summary["models"]),
        "<h2>Routes</h2>",
        _table(summary["routes"]),
        *comparison(summary),
        "<h2>Latency distribution per model</h2>",
        latency_plots(rows),
        "<h2>Cost over time</h2>",
        cost_plot(rows, hourly),
    ]
    style = (
        "body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2733}"
        "table{border-collapse:collapse}"
        "th,td{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:right}"
        "th:first-child,td:first-child{text-align:left}.sim{background:#fff4ce;padding:.5rem}"
        "svg{background:#fafbfc;border:1px solid #e4e7eb;margin:.3rem 0}"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Laneway report</title>'
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def _table(groups: dict[str, dict[str, Any]]) -> str:
    cells = {name: [figure(figures[field], style) for _, field, style in _FIELDS] for name, figures in groups.items()}
    return _grid("name", [title for title, _, _ in _FIELDS], cells)


def comparison(summary: dict[str, Any]) -> list[str]:
    """The baseline's window and totals, and each model's change from it; nothing without a baseline."""
    baseline = summary.get("compare")
    if baseline is None:
        return []
    cells = changes(summary["models"], baseline["models"])
    return [
        "<h2>Baseline</h2>",
        f"<p>{escape(headline(baseline))}</p>",
        "<h3>Change vs baseline (baseline -&gt; current)</h3>",
        _grid("model", [title.replace("$", "USD") for title, _, _ in CHANGES], cells),
    ]


def _grid(corner: str, titles: list[str], cells: dict[str, list[str]]) -> str:
    """A table with one row per name: `corner` heads the names' column, `titles` the others."""
    head = "".join(f"<th>{escape(title)}</th>" for title in [corner, *titles])
    body = "".join(
        f"<tr><td>{escape(name)}</td>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>"
        for name, row in cells.items()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def latency_plots(rows: Sequence[ExchangeRow]) -> str:
    """One histogram per model over shared log-spaced latency bins."""
    by_model: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        by_model[model_label(row.model, row.lane)].append(max(row.latency_ms, 0.001))
    if not by_model:
        return "<p>No raw exchanges in this window.</p>"
    low = math.log10(min(min(v) for v in by_model.values()))
    high = max(math.log10(max(max(v) for v in by_model.values())), low + 1e-9)
    return "".join(
        _histogram(model, values, low, high, PALETTE[i % len(PALETTE)])
        for i, (model, values) in enumerate(sorted(by_model.items()))
    )


def _histogram(model: str, values: list[float], low: float, high: float, colour: str) -> str:
    counts = [0] * LATENCY_BINS
    for value in values:
        index = int((math.log10(value) - low) / (high - low) * LATENCY_BINS)
        counts[min(max(index, 0), LATENCY_BINS - 1)] += 1
    peak, bar_w = max(counts), (WIDTH - 2 * PAD) / LATENCY_BINS
    bars = "".join(
        f'<rect x="{PAD + i * bar_w:.1f}" y="{HEIGHT - PAD - c / peak * (HEIGHT - 2 * PAD):.1f}" '
        f'width="{bar_w - 1:.1f}" height="{c / peak * (HEIGHT - 2 * PAD):.1f}" fill="{colour}"/>'
        for i, c in enumerate(counts)
        if c
    )
    axis = (
        f'<text x="{PAD}" y="{HEIGHT - 12}">{10**low:.0f} ms</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 12}" text-anchor="end">{10**high:.0f} ms (log scale)</text>'
        f'<text x="{PAD}" y="20">{escape(model)}: {len(values)} requests</text>'
    )
    return _svg(bars + axis, f"latency distribution of {model}")


def cost_plot(rows: Sequence[ExchangeRow], hourly: Sequence[HourlyRow]) -> str:
    """Cost per time bucket, one line per model; rolled-up hours count at their hour. Each model's line is
    what it billed, as in the tables: a cascade's first answer is its own model's cost."""
    points = [(r.started_at, r.model or NO_MODEL, r.cost_usd - sum(o[1] for o in r.other_costs)) for r in rows]
    points += [(r.started_at, model, cost) for r in rows for model, cost, _, _ in r.other_costs]
    points += [(h.hour, h.model or NO_MODEL, h.cost_usd) for h in hourly]
    if not points:
        return "<p>No cost in this window.</p>"
    start, end = min(p[0] for p in points), max(p[0] for p in points)
    # A rolled-up hour is one hour's spend: in a bucket of a minute it read as that minute's, a spike.
    shortest = HOUR_S if hourly else 0.0
    bucket = next((b for b in TIME_BUCKETS if b >= shortest and (end - start) / b <= 120), TIME_BUCKETS[-1])
    start = start // bucket * bucket  # buckets from a boundary: an hour's raw rows share its rolled-up hour's
    slots = int((end - start) // bucket) + 1
    series: dict[str, list[float]] = defaultdict(lambda: [0.0] * slots)
    for moment, model, cost in points:
        series[model][int((moment - start) // bucket)] += cost
    peak = max(max(costs) for costs in series.values()) or 1.0
    step = (WIDTH - 2 * PAD) / max(slots - 1, 1)
    lines, legend = [], []
    for i, (model, costs) in enumerate(sorted(series.items())):
        colour = PALETTE[i % len(PALETTE)]
        xy = [(PAD + j * step, HEIGHT - PAD - c / peak * (HEIGHT - 2 * PAD)) for j, c in enumerate(costs)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>')
        if slots <= MARKED_SLOTS:  # a line of one point shows nothing: few points get a dot each
            lines += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in xy]
        legend.append(
            f'<text x="{WIDTH - PAD}" y="{16 + 14 * i}" text-anchor="end" fill="{colour}">'
            f"{escape(model)}</text>"
        )
    axis = f'<text x="{PAD}" y="{HEIGHT - 12}">USD per {bucket / 60:g} min; peak {figure(peak, "usd")} USD</text>'
    return _svg("".join(lines + legend) + axis, "cost over time per model")


def _svg(content: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-size="11">'
        f"<title>{escape(title)}</title>{content}</svg>"
    )
