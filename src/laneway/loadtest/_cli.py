"""`laneway loadtest`: drive any OpenAI-compatible endpoint and report latency, TTFT, errors and cost."""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import resource
import signal
import sys
from functools import partial
from typing import Any

from ..flags import SEED_MAX, seed
from ..outputs import NOT_WRITTEN, check_outputs, write_outputs
from ._checks import endpoint_url, header, unreachable
from ._drive import LoadPlan, Progress, open_session, run_load
from ._html import write_html
from ._payloads import Payload, load_payloads
from ._report import render_text, summarize, write_csv, write_json
from ._tally import Tally

DEFAULT_URL = "http://127.0.0.1:8080/v1/chat/completions"
# Files a run holds open besides its connections: the interpreter's, the outputs, the loop's own.
FILES_BESIDES = 64
STOPPED_BY_SIGNAL = 128  # plus the signal's number, as a shell reports it: 130 after Ctrl-C, 143 after SIGTERM
_BAR = 30
_OUTPUTS = ("json", "csv", "html")
_STOPS = (signal.SIGINT, signal.SIGTERM)
LONG_RUN_S = 300.0  # an open loop expected to take longer, bounded by a count alone, is warned about


def add_commands(subparsers: Any) -> None:
    """Register `laneway loadtest` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "loadtest", help="drive an OpenAI-compatible endpoint and report latency, TTFT, errors and cost",
        description="Closed loop with --concurrency N, or open loop (Poisson arrivals) with --rate R. "
                    "Runs for --duration S or --requests N (default: 10 seconds). The first Ctrl-C "
                    "(or SIGTERM) stops sending and reports what ran.")
    parser.add_argument("--url", type=endpoint_url, default=DEFAULT_URL,
                        help="chat-completions endpoint (default: %(default)s)")
    parser.add_argument("--payloads", metavar="FILE",
                        help="JSONL of request bodies, or of conversations to replay turn by turn "
                             "(see docs/benchmarks.md); default: one short support question")
    parser.add_argument("--model", default="laneway", help="`model` of bodies that name none")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_positive_int, default=1,
                      help="closed loop: N clients (no more than --requests, when that is given)")
    load.add_argument("--rate", type=_positive_float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--duration", type=_positive_float, metavar="S", help="seconds to run")
    parser.add_argument("--requests", type=_positive_int, metavar="N", help="requests to send")
    parser.add_argument("--warmup", type=_seconds, default=0.0, metavar="S", help="uncounted load first")
    parser.add_argument("--stream", action="store_true",
                        help="stream every request and measure TTFT (otherwise each body's `stream` decides)")
    parser.add_argument("--timeout", type=_positive_float, default=30.0, metavar="S", help="per request")
    parser.add_argument("--header", type=header, action="append", default=[], metavar="'NAME: VALUE'",
                        help="extra request header, repeatable")
    parser.add_argument("--max-inflight", type=_positive_int, default=4096, help="open loop: connection cap")
    parser.add_argument("--seed", type=seed, help="seed of the arrival schedule")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--csv", metavar="PATH", help="write one CSV row overall and one per model and lane")
    parser.add_argument("--html", metavar="PATH", help="write a self-contained HTML report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--max-error-rate", type=_share, default=0.0, metavar="R",
                        help="exit 1 when more than this share of the requests failed (default: %(default)s, "
                             "any failure); 1 never fails the run")
    parser.set_defaults(func=run_loadtest)


def run_loadtest(args: argparse.Namespace) -> int:
    import uvloop

    payloads = load_payloads(args.payloads, args.model) if args.payloads else [_default_payload(args.model)]
    problem = check_outputs([(f"--{option}", getattr(args, option)) for option in _OUTPUTS],
                            [("--payloads", args.payloads)]) or unreachable(args.url)
    if problem:
        print(f"laneway: {problem}", file=sys.stderr)
        return 2
    plan, warmup = _plans(args)
    for warning in (long_open_loop(plan), room_for_connections(plan)):
        if warning:
            print(f"laneway loadtest: {warning}", file=sys.stderr)
    show = None if args.quiet or not sys.stderr.isatty() else progress_bar
    stopped_by: list[int] = []  # the signal that stopped the run early, if one did
    tally = uvloop.run(_measure(plan, warmup, payloads, show, stopped_by))
    if show:
        sys.stderr.write("\n")
    written = _report(tally, plan, args)
    if tally.interrupted_s is not None:
        return STOPPED_BY_SIGNAL + (stopped_by[0] if stopped_by else signal.SIGINT)
    verdict = _verdict(tally, args.max_error_rate)
    return verdict if written else NOT_WRITTEN


def _verdict(tally: Tally, max_error_rate: float) -> int:
    """0 when the run answered, within `max_error_rate`; else 1, and a line on stderr saying why."""
    requests, errors = tally.all.requests, tally.all.errors
    if not requests:
        print("laneway loadtest: no request finished", file=sys.stderr)
        return 1
    if errors / requests > max_error_rate:
        print(f"laneway loadtest: {errors} of {requests} requests failed ({errors / requests:.1%}), more than "
              f"`--max-error-rate` {max_error_rate:g}", file=sys.stderr)
        return 1
    return 0


def long_open_loop(plan: LoadPlan) -> str | None:
    """A warning for an open loop bounded by a count alone whose arrivals would take long: at a low
    `--rate`, the run would otherwise look stuck."""
    if not plan.rate or plan.requests is None or plan.duration_s is not None:
        return None
    expected = plan.requests / plan.rate
    if expected <= LONG_RUN_S:
        return None
    return (f"at --rate {plan.rate:g}, {plan.requests} requests take about {expected:,.0f} s on average (Poisson "
            "arrivals); add --duration S to bound the run")


def room_for_connections(plan: LoadPlan) -> str | None:
    """Raise the limit of open files to what the plan's connections need, as far as the hard limit lets; a
    warning when that is not enough. Connections past it failed as the endpoint's `connect` errors, though
    the endpoint never saw them (the usual soft limit, 1,024, is under the default `--max-inflight`)."""
    connections = plan.max_inflight if plan.rate else plan.clients
    needed = connections + FILES_BESIDES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    room = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (room, hard))
    except (ValueError, OSError):
        room = soft
    if room >= needed:
        return None
    option = "--max-inflight" if plan.rate else "--concurrency"
    return (f"this process may open {room} files (`ulimit -n`), and {connections} connections at once need about "
            f"{needed}: requests past that would fail as `connect` errors of this client's own, not the endpoint's; "
            f"lower {option}, or raise the hard limit")


def _plans(args: argparse.Namespace) -> tuple[LoadPlan, LoadPlan | None]:
    """The measured run's plan, and the warm-up's if one was asked for. An open loop without `--seed` draws
    one, so that the settings it reports can run the same arrivals again."""
    drawn = random.SystemRandom().randrange(SEED_MAX + 1) if args.seed is None and args.rate else args.seed
    plan = LoadPlan(url=args.url, concurrency=args.concurrency, rate=args.rate,
                    duration_s=args.duration if args.duration or args.requests else 10.0,
                    requests=args.requests, stream=args.stream, timeout_s=args.timeout,
                    headers=tuple(args.header), max_inflight=args.max_inflight, seed=drawn)
    if not args.warmup:
        return plan, None
    return plan, LoadPlan(url=plan.url, concurrency=plan.clients, rate=plan.rate, duration_s=args.warmup,
                          stream=plan.stream, timeout_s=plan.timeout_s, headers=plan.headers,
                          max_inflight=plan.max_inflight)


def _report(tally: Tally, plan: LoadPlan, args: argparse.Namespace) -> bool:
    """The files first: a terminal that went away (`| head`) must not cost them. A file that cannot be
    written costs neither the others nor the text. False when one could not be written."""
    summary = summarize(tally, _settings(plan, args))
    writes = [(f"--{option}", path, partial(write, summary, path))
              for option, write in (("json", write_json), ("csv", write_csv)) if (path := getattr(args, option))]
    if args.html:
        writes.append(("--html", args.html, partial(write_html, summary, args.html, f"laneway loadtest: {plan.url}")))
    written = write_outputs("loadtest", writes)
    print(render_text(summary))
    return written


async def _measure(plan: LoadPlan, warmup: LoadPlan | None, payloads: list[Payload],
                   show: Progress | None, stopped_by: list[int]) -> Tally:
    """The warm-up, then the measured run. The first Ctrl-C or SIGTERM (a `timeout`, a CI job cancelled)
    stops both, noted in `stopped_by`; a second one aborts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOPS:
        loop.add_signal_handler(sig, _interrupt, loop, stop, sig, stopped_by)
    try:
        # One session for both: the measured run starts on the warm-up's open connections.
        async with open_session(plan) as session:
            if warmup:
                warmed = await run_load(warmup, payloads, stop=stop, session=session)
            if stop.is_set():
                return _nothing_measured(warmed.interrupted_s if warmup else None)
            return await run_load(plan, payloads, show, stop, session)
    finally:
        for sig in _STOPS:
            loop.remove_signal_handler(sig)


def _nothing_measured(warmed_s: float | None) -> Tally:
    """The tally of a run interrupted before its measured part began, `warmed_s` into its warm-up."""
    tally = Tally()
    tally.interrupted_s, tally.warmup_interrupted_s = 0.0, warmed_s
    return tally


def _interrupt(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, sig: int, stopped_by: list[int]) -> None:
    """The first Ctrl-C or SIGTERM stops the run; the default handler takes the next one, which aborts."""
    stopped_by.append(sig)
    stop.set()
    for each in _STOPS:
        loop.remove_signal_handler(each)


def progress_bar(tally: Tally, done: float, waiting_for: str) -> None:
    """One status line, rewritten in place (the caller ends it once the run is over): the bar while
    requests go out, then what the run still waits for."""
    filled = round(done * _BAR)
    status = waiting_for or f"[{'#' * filled}{'.' * (_BAR - filled)}] {done * 100:3.0f}%"
    sys.stderr.write(f"\r{status}  {tally.all.requests} req  {tally.throughput:.0f} req/s  "
                     f"{tally.all.errors} errors\x1b[K")
    sys.stderr.flush()


def _settings(plan: LoadPlan, args: argparse.Namespace) -> dict[str, Any]:
    """Enough to run the same load again (header values are left out: they may hold keys)."""
    return {"url": plan.url, "payloads": args.payloads, "model": args.model, "mode": "open" if plan.rate else "closed",
            "concurrency": None if plan.rate else plan.clients, "rate": plan.rate,
            "duration_s": plan.duration_s, "requests": plan.requests, "stream": plan.stream,
            "warmup_s": args.warmup, "timeout_s": plan.timeout_s, "max_inflight": plan.max_inflight,
            "seed": plan.seed, "headers": [name for name, _ in plan.headers]}


def _default_payload(model: str) -> Payload:
    return Payload({"model": model, "messages": [{"role": "user", "content": "Where is my refund?"}],
                    "max_tokens": 64})


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _seconds(text: str) -> float:
    value = _float(text, "0 or a positive number of seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number of seconds, got {text}")
    return value


def _share(text: str) -> float:
    value = _float(text, "a share from 0 to 1")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text}")
    return value


def _float(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
    return value
