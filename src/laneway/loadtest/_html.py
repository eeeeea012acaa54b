"""A self-contained HTML report of a run: the figures and inline SVG plots, no script, no CDN."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from ._report import csv_rows, render_text

_W, _H, _PAD = 640, 260, 48
_STYLE = ("body{font:14px system-ui,sans-serif;margin:2em;max-width:60em;color:#222}"
          "table{border-collapse:collapse}"
          "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
          "pre{background:#f6f6f6;padding:1em}svg{background:#fff;border:1px solid #ccc}"
          ".latency{stroke:#1f6fb2}.ttft{stroke:#d2691e}.p99{stroke:#b22222}")


def render_html(summary: dict[str, Any], title: str = "laneway loadtest") -> str:
    spectrum = summary.get("spectrum", [])
    curves = {"latency": [(_nines(p["q"]), p["latency_ms"]) for p in spectrum]}
    if spectrum and spectrum[0]["ttft_ms"] is not None:
        curves["ttft"] = [(_nines(p["q"]), p["ttft_ms"]) for p in spectrum]
    timeline = summary.get("timeline", [])
    answered = [s for s in timeline if s["p50_ms"] is not None]
    over_time = {"latency": [(float(s["second"]), s["p50_ms"]) for s in answered],
                 "p99": [(float(s["second"]), s["p99_ms"]) for s in answered]}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<pre>{html.escape(render_text(summary))}</pre>",
             "<h2>Latency by percentile (latency blue, TTFT orange)</h2>" if "ttft" in curves else
             "<h2>Latency by percentile</h2>",
             _plot(curves, "percentile (log scale: 90, 99, 99.9 ...)", "ms", _nines_label),
             "<h2>Latency over time (p50 blue, p99 red)</h2>",
             _plot(over_time, "second of the run", "ms", lambda x: f"{x:g}"),
             "<h2>Per model and lane</h2>", _table(csv_rows(summary)), "</body></html>"]
    return "\n".join(parts)


def write_html(summary: dict[str, Any], path: str | Path, title: str = "laneway loadtest") -> None:
    Path(path).write_text(render_html(summary, title), encoding="utf-8")


def _nines(q: float) -> float:
    return -math.log10(max(1e-6, 1 - q))


def _nines_label(x: float) -> str:
    return f"{(1 - 10 ** -x) * 100:.4g}"


def _plot(curves: dict[str, list[tuple[float, float]]], x_label: str, y_label: str, x_text: Any) -> str:
    points = [p for curve in curves.values() for p in curve]
    if not points:
        return "<p>(no successful requests)</p>"
    x_max = max(x for x, _ in points) or 1.0
    y_max = max(y for _, y in points) * 1.05 or 1.0

    def at(x: float, y: float) -> str:
        return f"{_PAD + x / x_max * (_W - 2 * _PAD):.1f},{_H - _PAD - y / y_max * (_H - 2 * _PAD):.1f}"

    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W}' height='{_H}' viewBox='0 0 {_W} {_H}'>",
           f"<line x1='{_PAD}' y1='{_H - _PAD}' x2='{_W - _PAD}' y2='{_H - _PAD}' stroke='#444'/>",
           f"<line x1='{_PAD}' y1='{_PAD}' x2='{_PAD}' y2='{_H - _PAD}' stroke='#444'/>"]
    for i in range(5):
        x, y = x_max * i / 4, y_max * i / 4
        svg.append(f"<text x='{at(x, 0).split(',')[0]}' y='{_H - _PAD + 16}' font-size='11' "
                   f"text-anchor='middle'>{html.escape(x_text(x))}</text>")
        svg.append(f"<text x='{_PAD - 4}' y='{at(0, y).split(',')[1]}' font-size='11' "
                   f"text-anchor='end'>{y:.3g}</text>")
    for name, curve in curves.items():
        path = " ".join(at(x, y) for x, y in curve)
        svg.append(f"<polyline class='{name}' fill='none' stroke-width='2' points='{path}'/>")
    svg.append(f"<text x='{_W / 2}' y='{_H - 8}' font-size='12' text-anchor='middle'>"
               f"{html.escape(x_label)}</text>")
    svg.append(f"<text x='12' y='{_PAD - 12}' font-size='12'>{html.escape(y_label)}</text></svg>")
    return "".join(svg)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
