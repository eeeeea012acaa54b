"""`laneway shadow report` and `laneway canary report`: lane comparisons over the exchange log."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any

from laneway.telemetry._canary_comparison import canary_comparison
from laneway.telemetry._log_args import (
    OptionError,
    Window,
    add_log_arguments,
    check_db,
    check_window,
    dump,
    read_log,
    simulated_notice,
    start_option,
    window_of,
)
from laneway.telemetry._shadow_comparison import shadow_comparison

DROPS_NOT_LOGGED = ("jobs dropped before they ran are not in the exchange log: see `GET /admin/shadow` or "
                    "`laneway_model_events_total{event=~\"shadow_dropped_.*\"}`")
# (heading, field, style) of a shadow group's row
SHADOW_COLUMNS = (
    ("pairs", "pairs", "int"), ("agree", "agreement", "pct"), ("sim", "mean_similarity", "num"),
    ("exact", "exact_rate", "pct"), ("p50 d ms", "p50_delta_ms", "ms"), ("p95 d ms", "p95_delta_ms", "ms"),
    ("p95 d %", "p95_delta_pct", "rel"), ("p95 d 95% CI", "p95_delta_ci95", "ci"),
    ("ttft p95 d", "ttft_p95_delta_ms", "ms"), ("cost d $/req", "cost_delta_usd", "usd"),
    ("cost d %", "cost_delta_pct", "rel"), ("errors", "error_rate", "pct"), ("", "note", "text"),
)
CANARY_COLUMNS = (
    ("requests", "requests", "int"), ("p50 ms", "p50_ms", "ms"), ("p95 ms", "p95_ms", "ms"),
    ("$/req", "cost_per_request_usd", "usd"), ("errors", "error_rate", "pct"),
    ("fallbacks", "fallback_rate", "pct"),
)


def add_lane_commands(subparsers: Any) -> None:
    for lane, text, run in (
        ("shadow", "shadow candidates against their primaries: agreement, latency, cost", run_shadow),
        ("canary", "canary lanes against their route's primary: latency, cost, errors", run_canary),
    ):
        parser = subparsers.add_parser(lane, help=f"{lane} lane reports")
        commands = parser.add_subparsers(metavar="COMMAND")
        report = commands.add_parser("report", help=text, description=text + ", with 95 % intervals.")
        add_log_arguments(report)
        report.set_defaults(func=run)
        parser.set_defaults(func=lambda _args, parser=parser: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_shadow(args: argparse.Namespace) -> int:
    window = _checked_window("shadow report", args)
    if window is None:
        return 2
    fetched = read_log("shadow report", args.db, [window])
    if fetched is None:
        return 1
    figures = shadow_comparison(fetched[0][0])
    figures["window"] = {"since": window[0], "until": window[1]}
    figures["dropped_note"] = DROPS_NOT_LOGGED
    print(dump(figures) if args.json else shadow_text(figures))
    return 0


def run_canary(args: argparse.Namespace) -> int:
    window = _checked_window("canary report", args)
    if window is None:
        return 2
    fetched = read_log("canary report", args.db, [window])
    if fetched is None:
        return 1
    figures = canary_comparison(fetched[0][0])
    print(dump(figures) if args.json else canary_text(figures))
    return 0


def _checked_window(command: str, args: argparse.Namespace) -> Window | None:
    """The options' window, or None after saying on stderr why it (or `--db`) cannot be used."""
    try:
        check_db(args.db)
        return check_window(window_of(args), start_option(args), "`--until`")
    except OptionError as error:
        print(f"laneway {command}: {error}", file=sys.stderr)
        return None


def shadow_text(figures: Mapping[str, Any]) -> str:
    if not figures["candidates"]:
        return "no shadow pairs in this window"
    parts = [simulated_notice(figures["simulated"]) + "\n".join(figures["summary"])]
    for name, candidate in figures["candidates"].items():
        rows = [("all", candidate)]
        rows += [(f"route {r}", g) for r, g in candidate["routes"].items()]
        rows += [(f"{dim} {v}", g) for dim, groups in candidate["buckets"].items() for v, g in groups.items()]
        parts.append(f"{name} (d = candidate - primary)\n" + table(SHADOW_COLUMNS, rows))
    parts.append(f"dropped: {figures.get('dropped_note', '')}" if "dropped_note" in figures else "")
    return "\n\n".join(p for p in parts if p)


def canary_text(figures: Mapping[str, Any]) -> str:
    if not figures["routes"]:
        return "no canary traffic in this window"
    parts = [simulated_notice(figures["simulated"]) + "\n".join(figures["summary"])]
    for name, route in figures["routes"].items():
        rows = [("primary", route["primary"]), *((f"canary {m}", c) for m, c in route["canaries"].items())]
        parts.append(f"route {name}\n" + table(CANARY_COLUMNS, rows))
    return "\n\n".join(parts)


def table(columns: tuple[tuple[str, str, str], ...], rows: list[tuple[str, Mapping[str, Any]]]) -> str:
    header = ["", *(heading for heading, _, _ in columns)]
    body = [[label, *(cell(group.get(field), style) for _, field, style in columns)] for label, group in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join(_line(line, widths) for line in [header, *body]).rstrip()


def _line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()


_STYLES: dict[str, Callable[[Any], str]] = {
    "pct": lambda v: f"{v * 100:.1f}%",
    "rel": lambda v: f"{v:+.1f}%",
    "ms": lambda v: f"{v:.0f}",
    "usd": lambda v: f"{v:.6f}",
    "ci": lambda v: f"[{v[0]:.0f}, {v[1]:.0f}]",
    "num": lambda v: f"{v:.2f}",
    "int": str,
    "text": str,
}


def cell(value: Any, style: str) -> str:
    if value is None:
        return "" if style == "text" else "-"
    return _STYLES[style](value)
