"""`laneway report`: per-model and per-route figures over the exchange log, as tables, JSON or HTML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from laneway.outputs import NOT_WRITTEN, check_outputs, output_path, write_outputs
from laneway.telemetry._cascade_savings import Priced, cascade_savings
from laneway.telemetry._html_report import report_html
from laneway.telemetry._lanes_cli import add_lane_commands
from laneway.telemetry._log_args import (
    CHANGES,
    Fetched,
    OptionError,
    Window,
    add_log_arguments,
    change_figures,
    changes,
    check_db,
    check_window,
    dump,
    figure,
    headline,
    instant,
    read_log,
    start_option,
    when,
    window_of,
)
from laneway.telemetry._records import SHADOW_LANE, ExchangeRow, HourlyRow
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
    ("failed att.", "failed_attempts", "int"),
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
        description="Times are ISO 8601 (UTC unless they carry an offset); --last takes a duration: 1h. "
        "A comparison needs --compare-since; without --compare-until the baseline ends where the current "
        "window starts, so `--since T --compare-since S` compares S..T (before) with T..now (after). "
        "The two windows may not overlap.",
    )
    add_log_arguments(parser)
    parser.add_argument(
        "--compare-since", type=instant, help="start of a baseline window to compare with (ISO 8601)"
    )
    parser.add_argument(
        "--compare-until", type=instant,
        help="first instant excluded from the baseline (default: the start of the current window)",
    )
    parser.add_argument(
        "--html", type=output_path, metavar="PATH", help="also write a self-contained HTML report to PATH"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="routing file: prices the cascade's always-heavy baseline"
    )
    parser.set_defaults(func=run_report)
    add_lane_commands(subparsers)


def run_report(args: argparse.Namespace) -> int:
    try:
        windows = report_windows(args)
        check_db(args.db)
        db = args.db.removeprefix("sqlite:///") if args.db.startswith("sqlite:///") else None
        problem = check_outputs([("--html", args.html)], [("--db", db), ("--config", args.config)])
        if problem:
            raise OptionError(problem)
    except OptionError as error:
        print(f"laneway report: {error}", file=sys.stderr)
        return 2
    cascades = _cascades(args.config)
    fetched = read_log("report", args.db, windows)
    if fetched is None:
        return 1
    current = _summary(fetched, windows, cascades)
    rows, hourly = fetched[0]
    written = args.html is None or _write_html(args.html, current, rows, hourly)
    print(dump(current) if args.json else terminal_report(current))
    return 0 if written else NOT_WRITTEN


def report_windows(args: argparse.Namespace) -> list[Window]:
    """The current window, then the baseline's if one is asked for; `OptionError` if either is unusable."""
    current = check_window(window_of(args), start_option(args), "`--until`")
    baseline = baseline_window(args, current)
    return [current] if baseline is None else [current, baseline]


def baseline_window(args: argparse.Namespace, current: Window) -> Window | None:
    """`--compare-since` .. `--compare-until`, by default ending where `current` starts; never overlapping it."""
    if args.compare_since is None:
        if args.compare_until is not None:
            raise OptionError("`--compare-until` needs `--compare-since`: pass the start of the baseline too")
        return None
    if args.compare_until is None and current[0] is None:
        raise OptionError("`--compare-since` without `--compare-until` needs `--since` or `--last`, where "
                          "the baseline then ends; or pass `--compare-until`")
    end, end_option = (
        (args.compare_until, "`--compare-until`") if args.compare_until is not None
        else (current[0], f"the baseline's end ({start_option(args)})")
    )
    baseline = check_window((args.compare_since, end), "`--compare-since`", end_option)
    if _overlap(baseline, current):
        raise OptionError(f"the baseline {_span(baseline)} overlaps the current window {_span(current)}: "
                          "move `--compare-since`/`--compare-until` outside it")
    return baseline


def _overlap(a: Window, b: Window) -> bool:
    return _starts_before(a[0], b[1]) and _starts_before(b[0], a[1])


def _starts_before(start: float | None, end: float | None) -> bool:
    """Whether a window starting at `start` begins before another one ends at `end` (None: unbounded)."""
    return start is None or end is None or start < end


def _span(window: Window) -> str:
    start, end = window
    return f"{'the start of the log' if start is None else when(start)} .. {'now' if end is None else when(end)}"


def _summary(fetched: list[Fetched], windows: list[Window], cascades: _Cascades) -> dict[str, Any]:
    """The current window's figures with its cascade savings, and the baseline's under `compare`."""
    summaries = [
        summarize(rows, hourly, start, end) for (rows, hourly), (start, end) in zip(fetched, windows, strict=True)
    ]
    current = summaries[0]
    start, end = windows[0]
    current["cascade"] = cascade_savings(_within(fetched[0][0], start, end), *cascades)
    if len(summaries) > 1:
        current["compare"] = summaries[1]
        current["changes"] = change_figures(current["models"], summaries[1]["models"])
    return current


def _write_html(path: Path, summary: dict[str, Any], rows: list[ExchangeRow], hourly: list[HourlyRow]) -> bool:
    # Shadow spend is kept apart, as in the tables: raw rows and, once rolled up, their hours alike.
    answered = [row for row in rows if row.lane != SHADOW_LANE]
    hours = [hour for hour in hourly if hour.lane != SHADOW_LANE]
    return write_outputs("report", [("--html", path, lambda: path.write_text(report_html(summary, answered, hours),
                                                                              encoding="utf-8"))])


_Cascades = tuple[dict[str, str] | None, dict[str, Priced] | None, dict[str, float] | None]


def _cascades(path: Path | None) -> _Cascades:
    """From the routing file: each cascaded route's escalation model, every model's prices, and each
    cascaded route's confidence threshold."""
    if path is None:
        return None, None, None
    from laneway.config import load_config

    config = load_config(path)
    cascaded = [r for r in config.routes if r.cascade is not None]
    return ({r.name: r.cascade.escalate_to for r in cascaded if r.cascade is not None},
            {name: spec.price for name, spec in config.models.items()},
            {r.name: r.cascade.confidence for r in cascaded if r.cascade is not None})


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
    total = summary["total"]
    line = headline(summary)
    rolled_up = summary["window"].get("rolled_up_requests", 0)
    if rolled_up:
        line += (f"\n{rolled_up} of these requests are from hours rolled up past `retention_days`: each such hour "
                 "counts whole in the window that holds its start, and has no latency percentiles.")
    if total["simulated_requests"]:
        line += (
            f"\nSIMULATED: {total['simulated_requests']} of {total['requests']} exchanges come from the "
            "simulated fleet; these numbers were not measured on real providers."
        )
    return line


def _table(kind: str, groups: dict[str, dict[str, Any]]) -> str:
    header = [kind] + [heading for heading, _, _ in COLUMNS]
    body = [
        [name] + [figure(figures[field], style) for _, field, style in COLUMNS]
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
    headings = ", ".join(heading for heading, _, _ in CHANGES)
    lines = [f"change vs baseline (model: {headings})"]
    lines += [f"  {name}: " + ", ".join(cells) for name, cells in changes(current, baseline).items()]
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def cascade_text(cascade: dict[str, Any]) -> str:
    if not cascade["routes"]:
        return "cascade: no cascaded route in this window"
    lines = ["cascade (escalation rate; cost saved against sending every exchange to the escalation model)"]
    for name, r in cascade["routes"].items():
        low, high = r["escalation_rate_ci95"] or [0.0, 0.0]
        line = (f"  {name}: {r['escalated']} of {r['exchanges']} escalated to {r['escalate_to'] or '-'} "
                f"({figure(r['escalation_rate'], 'pct')}, 95 % CI {low * 100:.1f}-{high * 100:.1f} %)")
        if r["escalations_failed"]:
            failed = r["escalations_failed"]
            line += f"; {failed} more {'escalation' if failed == 1 else 'escalations'} failed or were skipped, " \
                    "and kept the first answer"
        if r["saved_usd"] is not None:
            saved, share = r["saved_usd"], r["saved_pct"]
            verdict = (f"saved ${saved:.6f} ({_percent(share)})" if saved >= 0 else
                       f"cost ${-saved:.6f} more ({_percent(None if share is None else -share)} more)")
            if r["escalations_failed"] and r["saved_by_failed_usd"]:
                verdict += (f", ${r['saved_by_failed_usd']:.6f} of it from the first answers sent when their "
                            "escalation failed, which is no saving")
            line += f"; cost ${r['cost_usd']:.6f} vs always-heavy ${r['always_heavy_cost_usd']:.6f}: {verdict}"
        lines.append(line + (f" [{r['note']}]" if r["note"] else ""))
    if cascade["note"]:
        lines.append(f"  cost saved: {cascade['note']}")
    return "\n".join(lines)
