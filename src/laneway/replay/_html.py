"""The demo's HTML report: the table, and latency distributions drawn as inline SVG.

Self-contained: no script, no stylesheet or font fetched from anywhere.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

from ._figures import percentile
from ._run import DemoResult
from ._table import render_table

COLOURS = {"before": "#c0392b", "after": "#1f6fb2"}
_W, _H, _PAD = 640, 300, 48
_LOW_MS, _HIGH_MS = 50.0, 10_000.0
_MAX_POINTS = 400


def render_html(result: DemoResult) -> str:
    charts = "\n".join(_phase_section(result, phase.name) for phase in result.settings.phases)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>laneway demo (SIMULATED)</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1100px; }}
pre {{ background: #f6f6f6; padding: 1rem; overflow-x: auto; font-size: 12px; }}
.banner {{ background: #fff3cd; border: 1px solid #e0c36a; padding: .6rem 1rem; font-weight: 600; }}
</style></head><body>
<h1>laneway demo: before / after</h1>
<p class="banner">SIMULATED. Every figure on this page comes from Laneway's simulated fleet replaying real
support conversations; none was measured on a real provider.</p>
<h2>Figures</h2>
<pre>{html.escape(render_table(result))}</pre>
<h2>Latency distribution (SIMULATED)</h2>
<p>Empirical cumulative distribution of request latency, log scale; the dashed lines mark each
architecture's p95. Timed-out requests count at the latency their client saw.</p>
{charts}
</body></html>
"""


def _phase_section(result: DemoResult, phase: str) -> str:
    series = {name: [r.latency_ms for r in run.records if r.phase == phase]
              for name, run in result.runs.items()}
    return f"<h3>{html.escape(phase)} traffic</h3>\n{cdf_svg(series, f'{phase} traffic (SIMULATED)')}"


def cdf_svg(series: Mapping[str, Sequence[float]], title: str) -> str:
    """An SVG chart with one step line per series: the share of requests answered within x ms."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{_W / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    parts += _axes()
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS.get(name, "#555")
        parts.append(f'<path d="{_cdf_path(values)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        p95 = percentile(values, 95)
        x = _x(p95)
        parts.append(f'<line x1="{x:.1f}" y1="{_PAD / 2}" x2="{x:.1f}" y2="{_H - _PAD}" stroke="{colour}" '
                     f'stroke-dasharray="4 3"/>')
        legend_y = _H - _PAD - 40 + 16 * i
        parts.append(f'<text x="{_W - _PAD - 150}" y="{legend_y}" font-size="12" fill="{colour}">'
                     f'{html.escape(name)}: p95 {p95:.0f} ms</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _axes() -> list[str]:
    bottom, left = _H - _PAD, _PAD
    out = [f'<line x1="{left}" y1="{bottom}" x2="{_W - _PAD}" y2="{bottom}" stroke="#888"/>',
           f'<line x1="{left}" y1="{_PAD / 2}" x2="{left}" y2="{bottom}" stroke="#888"/>']
    for ms in (50, 100, 200, 500, 1000, 2000, 5000, 10_000):
        x = _x(ms)
        label = f"{ms} ms" if ms < 1000 else f"{ms // 1000} s"
        out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11">{label}</text>')
    for share in (0.0, 0.5, 0.95, 1.0):
        y = _y(share)
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{share:g}</text>')
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{_W - _PAD}" y2="{y:.1f}" stroke="#eee"/>')
    return out


def _cdf_path(values: Sequence[float]) -> str:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return ""
    step = max(1, n // _MAX_POINTS)
    points = [(ordered[i], (i + 1) / n) for i in range(0, n, step)]
    if points[-1][1] < 1.0:
        points.append((ordered[-1], 1.0))
    commands = [f"M{_x(points[0][0]):.1f},{_y(0.0):.1f}"]
    previous = 0.0
    for value, share in points:
        commands.append(f"L{_x(value):.1f},{_y(previous):.1f}L{_x(value):.1f},{_y(share):.1f}")
        previous = share
    return "".join(commands)


def _x(ms: float) -> float:
    clamped = min(max(ms, _LOW_MS), _HIGH_MS)
    span = math.log10(_HIGH_MS) - math.log10(_LOW_MS)
    return _PAD + (math.log10(clamped) - math.log10(_LOW_MS)) / span * (_W - 2 * _PAD)


def _y(share: float) -> float:
    return _H - _PAD - share * (_H - 1.5 * _PAD)

