"""`laneway report`: per-model and per-route figures over the exchange log, as tables, JSON or HTML."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from laneway.telemetry._cascade_savings import Priced, cascade_savings
from laneway.telemetry._html_report import report_html
from laneway.telemetry._lanes_cli import add_lane_commands
from laneway.telemetry._log_args import add_log_arguments, dump, instant, read_log, when, window_of
from laneway.telemetry._records import SHADOW_LANE, ExchangeRow
from laneway.telemetry._summary import summarize

# (heading, field, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("share", "share", "pct"),
    ("requests", "requests", "int"),
    ("p50 ms", "p50_ms", "ms"),
    ("p95 ms", "p95_ms", "ms"),
    ("p99 ms", "p99_ms", "ms"),
    ("ttft p95", "ttft_p95_ms", "ms"),
    ("errors", "error_rate", "pct"),
    ("timeouts", "timeout_rate", "pct"),
    ("tok in", "tokens_in", "int"),
    ("tok out", "tokens_out", "int"),
    ("cost $", "cost_usd", "usd"),
    ("$/conv", "cost_per_conversation_usd", "usd"),
    ("$/1k tok", "cost_per_1k_tokens_usd", "usd"),
    ("esc ok/min", "escalated_ok_per_min", "rate"),
)


def add_commands(subparsers: Any) -> None:
    """Register `laneway report`, `laneway shadow report` and `laneway canary report`."""
    parser = subparsers.add_parser(
        "report",
        help="latency, error, traffic and cost figures per model and route from the exchange log",
        description="Times are ISO 8601 (UTC unless they carry an offset); --last takes a duration: 1h.",
    )
    add_log_arguments(parser)
    parser.add_argument("--compare-since", type=instant, help="start of a baseline window to compare with")
    parser.add_argument("--compare-until", type=instant, help="end of the baseline window")
    parser.add_argument(
        "--html", type=Path, metavar="PATH", help="also write a self-contained HTML report to PATH"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="routing file: prices the cascade's always-heavy baseline"
    )
    parser.set_defaults(func=run_report)
    add_lane_commands(subparsers)


def run_report(args: argparse.Namespace) -> int:
    escalate_to, prices = _cascade_prices(args.config)
    windows = [window_of(args)]
    if args.compare_since is not None or args.compare_until is not None:
        windows.append((args.compare_since, args.compare_until))
    fetched = read_log("report", args.db, windows)
    if fetched is None:
        return 1
    summaries = [
        summarize(rows, hourly, start, end)
        for (rows, hourly), (start, end) in zip(fetched, windows, strict=True)
    ]
    current = summaries[0]
    rows, hourly = fetched[0]
    start, end = windows[0]
    current["cascade"] = cascade_savings(_within(rows, start, end), escalate_to, prices)
    if len(summaries) > 1:
        current["compare"] = summaries[1]
    if args.html is not None:
        answered = [row for row in rows if row.lane != SHADOW_LANE]
        args.html.write_text(report_html(current, answered, hourly), encoding="utf-8")
    print(dump(current) if args.json else terminal_report(current))
    return 0


def _cascade_prices(path: Path | None) -> tuple[dict[str, str] | None, dict[str, Priced] | None]:
    """Each cascaded route's escalation model, and every model's prices, from the routing file."""
    if path is None:
        return None, None
    from laneway.config import load_config

    config = load_config(path)
    escalate_to = {r.name: r.cascade.escalate_to for r in config.routes if r.cascade is not None}
    return escalate_to, {name: spec.price for name, spec in config.models.items()}


def _within(rows: list[ExchangeRow], start: float | None, end: float | None) -> list[ExchangeRow]:
    return [r for r in rows
            if (start is None or r.started_at >= start) and (end is None or r.started_at < end)]


def terminal_report(summary: dict[str, Any]) -> str:
    parts = [_headline(summary)]
    for section in ("models", "routes"):
        parts.append(_table(section[:-1], summary[section]))
    shadow = summary.get("shadow", {})
    if shadow.get("requests"):
        spend = ", ".join(f"{name} ${m['cost_usd']:.6f} ({m['requests']} calls)"
                          for name, m in shadow["models"].items())
        parts.append(f"shadow calls (not in the totals above): ${shadow['cost_usd']:.6f} - {spend}")
    if "cascade" in summary:
        parts.append(cascade_text(summary["cascade"]))
    baseline = summary.get("compare")
    if baseline is not None:
        parts.append(f"baseline: {_headline(baseline)}")
        parts.append(_changes(summary["models"], baseline["models"]))
    return "\n\n".join(parts)


def _headline(summary: dict[str, Any]) -> str:
    total, window = summary["total"], summary["window"]
    line = (
        f"{when(window['since'])} .. {when(window['until'])}: {total['requests']} requests, "
        f"${total['cost_usd']:.4f}, ${_num(total['cost_per_conversation_usd'], 'usd')} per conversation"
    )
    if total["simulated_requests"]:
        line += (
            f"\nSIMULATED: {total['simulated_requests']} of {total['requests']} exchanges come from the "
            "simulated fleet; these numbers were not measured on real providers."
        )
    return line


def _table(kind: str, groups: dict[str, dict[str, Any]]) -> str:
    header = [kind] + [heading for heading, _, _ in COLUMNS]
    body = [
        [name] + [_num(figures[field], style) for _, field, style in COLUMNS]
        for name, figures in groups.items()
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _changes(current: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]]) -> str:
    lines = ["change vs baseline (model: p95 ms, error rate, cost $)"]
    for name in sorted(set(current) | set(baseline)):
        now, then = current.get(name, {}), baseline.get(name, {})
        deltas = [_delta(now.get(f), then.get(f)) for f in ("p95_ms", "error_rate", "cost_usd")]
        lines.append(f"  {name}: " + ", ".join(deltas))
    return "\n".join(lines)


def _delta(now: float | None, then: float | None) -> str:
    if now is None or then is None:
        return f"{_num(then, 'rate')} -> {_num(now, 'rate')}"
    return f"{then:g} -> {now:g} ({now - then:+.4g})"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def _num(value: float | None, style: str) -> str:
    if value is None:
        return "-"
    formats = {
        "pct": f"{value * 100:.1f}%",
        "int": f"{value:d}" if isinstance(value, int) else f"{value:g}",
        "ms": f"{value:.1f}",
        "usd": f"{value:.6f}",
        "rate": f"{value:.2f}",
    }
    return formats[style]


def cascade_text(cascade: dict[str, Any]) -> str:
    if not cascade["routes"]:
        return "cascade: no cascaded route in this window"
    lines = ["cascade (escalation rate; cost saved against sending every exchange to the escalation model)"]
    for name, r in cascade["routes"].items():
        low, high = r["escalation_rate_ci95"] or [0.0, 0.0]
        line = (f"  {name}: {r['escalated']} of {r['exchanges']} escalated to {r['escalate_to'] or '-'} "
                f"({_num(r['escalation_rate'], 'pct')}, 95 % CI {low * 100:.1f}-{high * 100:.1f} %)")
        if r["saved_usd"] is not None:
            line += (f"; cost ${r['cost_usd']:.6f} vs always-heavy ${r['always_heavy_cost_usd']:.6f}: "
                     f"saved ${r['saved_usd']:.6f} ({_percent(r['saved_pct'])})")
        lines.append(line + (f" [{r['note']}]" if r["note"] else ""))
    if cascade["note"]:
        lines.append(f"  cost saved: {cascade['note']}")
    return "\n".join(lines)
