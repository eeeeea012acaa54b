"""`laneway report`: per-model and per-route figures over the exchange log, as tables, JSON or HTML."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from laneway.telemetry._html_report import report_html
from laneway.telemetry._records import ExchangeRow, HourlyRow
from laneway.telemetry._settings import DEFAULT_EXCHANGE_LOG
from laneway.telemetry._store import ExchangeLogUnavailable, open_store
from laneway.telemetry._summary import summarize

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
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
    """Register `laneway report` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "report",
        help="latency, error, traffic and cost figures per model and route from the exchange log",
        description="Times are ISO 8601 (UTC unless they carry an offset); --last takes a duration: 1h.",
    )
    parser.add_argument(
        "--db", default=DEFAULT_EXCHANGE_LOG, help="exchange log URL (sqlite:///... or postgresql://...)"
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--since", type=instant, help="first instant included (ISO 8601)")
    start.add_argument("--last", type=duration, help="only the last DURATION, e.g. 15m, 1h, 7d")
    parser.add_argument("--until", type=instant, help="first instant excluded (ISO 8601)")
    parser.add_argument("--compare-since", type=instant, help="start of a baseline window to compare with")
    parser.add_argument("--compare-until", type=instant, help="end of the baseline window")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--html", type=Path, metavar="PATH", help="also write a self-contained HTML report to PATH"
    )
    parser.set_defaults(func=run_report)


def instant(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"`{text}` is not an ISO 8601 time such as 2025-06-01T12:00"
        ) from error
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"`{text}` is not a duration; use a number and s, m, h, d or w, e.g. 1h"
        )
    return float(match[1]) * _UNIT_S[match[2]]


def run_report(args: argparse.Namespace) -> int:
    since = time.time() - args.last if args.last is not None else args.since
    windows = [(since, args.until)]
    if args.compare_since is not None or args.compare_until is not None:
        windows.append((args.compare_since, args.compare_until))
    if args.db.startswith("sqlite:///") and not Path(args.db.removeprefix("sqlite:///")).is_file():
        print(
            f"laneway report: no exchange log at `{args.db}`; pass the gateway's log with `--db`",
            file=sys.stderr,
        )
        return 1
    try:
        fetched = asyncio.run(_fetch(args.db, windows))
    except ExchangeLogUnavailable as error:
        print(f"laneway report: {error}", file=sys.stderr)
        return 1
    summaries = [
        summarize(rows, hourly, start, end)
        for (rows, hourly), (start, end) in zip(fetched, windows, strict=True)
    ]
    current = summaries[0]
    if len(summaries) > 1:
        current["compare"] = summaries[1]
    if args.html is not None:
        args.html.write_text(report_html(current, *fetched[0]), encoding="utf-8")
    print(json.dumps(current, indent=2) if args.json else terminal_report(current))
    return 0


async def _fetch(
    url: str, windows: list[tuple[float | None, float | None]]
) -> list[tuple[list[ExchangeRow], list[HourlyRow]]]:
    store = open_store(url)
    try:
        return [await store.fetch(start, end) for start, end in windows]
    finally:
        await store.aclose()


def terminal_report(summary: dict[str, Any]) -> str:
    parts = [_headline(summary)]
    for section in ("models", "routes"):
        parts.append(_table(section[:-1], summary[section]))
    baseline = summary.get("compare")
    if baseline is not None:
        parts.append(f"baseline: {_headline(baseline)}")
        parts.append(_changes(summary["models"], baseline["models"]))
    return "\n\n".join(parts)


def _headline(summary: dict[str, Any]) -> str:
    total, window = summary["total"], summary["window"]
    line = (
        f"{_when(window['since'])} .. {_when(window['until'])}: {total['requests']} requests, "
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


def _when(moment: float | None) -> str:
    return "-" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
