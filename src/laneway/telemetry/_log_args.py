"""What every command reading the exchange log shares: the `--db` and window options, the read, and
how times and figures are printed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sqlite3
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from laneway.errors import without_password
from laneway.telemetry._records import ExchangeRow, HourlyRow
from laneway.telemetry._settings import DEFAULT_EXCHANGE_LOG
from laneway.telemetry._store import ExchangeLogUnavailable, open_store

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
Window = tuple[float | None, float | None]
Fetched = tuple[list[ExchangeRow], list[HourlyRow]]
# how each style prints a figure, and a difference of two (`pct` in percentage points)
_FIGURES = {"pct": "{:.1f}%", "ms": "{:.1f}", "usd": "{:.6f}", "rate": "{:.2f}"}
_DIFFERENCES = {"pct": "{:+z.1f} pp", "ms": "{:+z.1f}", "usd": "{:+z.6f}", "rate": "{:+z.2f}"}
# (heading, field, style) of the per-model change against a baseline: traffic as a rate, since the
# two windows need not be as long; the cost per conversation and per 1k tokens, which say whether
# a model got dearer where its total cost may only follow its traffic.
CHANGES = (("requests/min", "requests_per_min", "rate"), ("p95 ms", "p95_ms", "ms"),
           ("error rate", "error_rate", "pct"), ("$/conversation", "cost_per_conversation_usd", "usd"),
           ("$/1k tokens", "cost_per_1k_tokens_usd", "usd"), ("cost $", "cost_usd", "usd"))


class OptionError(ValueError):
    """An option value a command cannot use; the message names the option, its value and the fix."""


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """`--db`, `--since`/`--last`, `--until` and `--json`."""
    parser.add_argument(
        "--db", default=DEFAULT_EXCHANGE_LOG, help="exchange log URL (sqlite:///... or postgresql://...)"
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--since", type=instant, help="first instant included (ISO 8601)")
    start.add_argument("--last", type=duration, help="only the last DURATION, e.g. 15m, 1h, 7d")
    parser.add_argument("--until", type=instant, help="first instant excluded (ISO 8601)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def instant(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"`{text}` is not an ISO 8601 time such as 2025-06-01T12:00"
        ) from error
    seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    try:
        when(seconds)  # an offset can carry a time past year 9999 or before year 1, which cannot be printed
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"`{text}` is outside the years 1 to 9999 in UTC; give a time within them"
        ) from None
    return seconds


def duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"`{text}` is not a duration; use a number and s, m, h, d or w, e.g. 1h"
        )
    seconds = float(match[1]) * _UNIT_S[match[2]]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"`{text}` is an empty window; give a positive duration, e.g. 1h")
    return seconds


def window_of(args: argparse.Namespace) -> Window:
    """`--since`/`--until`; `--since T` alone is T up to now, and `--last D` the D up to now (or up to
    `--until`), rates counted over all of it. A D reaching back before the epoch, when no exchange was
    logged, starts at the log's beginning. With neither, the window is the whole log."""
    if args.last is None:
        return args.since, (time.time() if args.until is None and args.since is not None else args.until)
    end = time.time() if args.until is None else args.until
    start = end - args.last
    return (start if start >= 0 else None), end


def start_option(args: argparse.Namespace) -> str:
    """How an error names the start of the options' window."""
    return "`--since`" if args.last is None else "the start of `--last`"


def check_window(window: Window, start_option: str, end_option: str) -> Window:
    """`window` if it starts before it ends, else an `OptionError` naming both ends."""
    start, end = window
    if start is not None and end is not None and start >= end:
        raise OptionError(f"{start_option} {when(start)} is not before {end_option} {when(end)}: "
                          "a window must start before it ends; pass an earlier start or a later end")
    return window


def check_db(url: str) -> None:
    """`OptionError` if `--db` is no exchange log URL (a misused option, exit code 2, as the others)."""
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        hint = f"; for that file, `--db sqlite:///{url}`" if Path(url).is_file() else ""
        raise OptionError(f"--db `{without_password(url)}` is not an exchange log URL: use `sqlite:///PATH` "
                          f"(`sqlite:////PATH` for an absolute path) or `postgresql://...`{hint}")


def read_log(command: str, url: str, windows: list[Window]) -> list[Fetched] | None:
    """Rows and hourly roll-ups per window; None (after saying why on stderr) if the log can't be read. `url` is
    one `check_db` took."""
    if url.startswith("sqlite:///"):
        problem = _not_a_sqlite_log(Path(url.removeprefix("sqlite:///")))
        if problem:
            print(f"laneway {command}: `{url}` {problem}; pass the gateway's log with `--db`", file=sys.stderr)
            return None
    try:
        return asyncio.run(_fetch(url, windows))
    except ExchangeLogUnavailable as error:
        print(f"laneway {command}: {error}", file=sys.stderr)
        return None


def _not_a_sqlite_log(path: Path) -> str | None:
    """Why the file at `path` is not an exchange log to read, or None. Looked at read-only: reading a
    report must not turn some other database into a log."""
    if path.is_dir():
        return f"is a directory; name the log file in it (`sqlite:///{path}/exchanges.sqlite3`)"
    if not path.is_file():
        absolute = Path("/") / path
        if not path.is_absolute() and absolute.is_file():  # `sqlite:///` + a path meant from the root
            return (f"does not exist (`sqlite:///{path}` is relative to the current directory; for "
                    f"`{absolute}`, `sqlite:///{absolute}`)")
        return f"does not exist (looked for `{path.resolve()}`)"
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            found = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'exchanges'").fetchone()
    except sqlite3.DatabaseError as error:
        return f"cannot be read as SQLite ({error})"
    return None if found else "is not a Laneway exchange log (it has no `exchanges` table)"


async def _fetch(url: str, windows: list[Window]) -> list[Fetched]:
    store = open_store(url, reading=True)
    try:
        return [await store.fetch(start, end) for start, end in windows]
    finally:
        await store.aclose()


def when(moment: float | None) -> str:
    return "-" if moment is None else datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def headline(summary: dict[str, Any]) -> str:
    """The window, requests and cost of a summary, in one line."""
    total, window = summary["total"], summary["window"]
    return (f"{when(window['since'])} .. {when(window['until'])}: {total['requests']} requests, "
            f"${total['cost_usd']:.4f}, ${figure(total['cost_per_conversation_usd'], 'usd')} per conversation")


def figure(value: float | None, style: str) -> str:
    """`pct` a share or rate, `int` a count, `ms`, `usd` or `rate` (per minute); `-` if there is none."""
    if value is None:
        return "-"
    if style == "int":
        return f"{value:d}" if isinstance(value, int) else f"{value:g}"
    return _FIGURES[style].format(value * 100 if style == "pct" else value)


def change(then: float | None, now: float | None, style: str) -> str:
    """`then -> now (difference)`, all three in `style`."""
    text = f"{figure(then, style)} -> {figure(now, style)}"
    if then is None or now is None:
        return text
    return f"{text} ({_DIFFERENCES[style].format((now - then) * (100 if style == 'pct' else 1))})"


# Figures that add up: a model with no traffic in a window had none of them (0), where its percentiles and
# rates have no value.
ADDITIVE = frozenset({"requests_per_min", "cost_usd"})


def changes(current: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Per model of either window, its `CHANGES` from the baseline to the current window, as text."""
    return {name: [change(fields[f]["before"], fields[f]["after"], style) for _, f, style in CHANGES]
            for name, fields in change_figures(current, baseline).items()}


def change_figures(current: dict[str, dict[str, Any]],
                   baseline: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per model of either window, each of its `CHANGES` fields `before`, `after` and the `change` (None
    where either has no value): the `changes` of `laneway report --json`."""
    figures: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in sorted(set(current) | set(baseline)):
        fields = {}
        for _, f, _ in CHANGES:
            then, now = _figure_of(baseline, name, f), _figure_of(current, name, f)
            fields[f] = {"before": then, "after": now, "change": None if then is None or now is None else now - then}
        figures[name] = fields
    return figures


def _figure_of(groups: dict[str, dict[str, Any]], name: str, field: str) -> float | None:
    if name not in groups:
        return 0.0 if field in ADDITIVE else None
    value = groups[name].get(field)
    return None if value is None else float(value)


def simulated_notice(simulated: bool) -> str:
    return ("SIMULATED: these exchanges come from the simulated fleet; the numbers were not measured on real "
            "providers.\n" if simulated else "")


def dump(figures: dict[str, Any]) -> str:
    import json

    return json.dumps(figures, indent=2)
