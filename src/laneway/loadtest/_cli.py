"""`laneway loadtest`: drive any OpenAI-compatible endpoint and report latency, TTFT, errors and cost."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError, ConfigIssue
from ._drive import LoadPlan, run_load
from ._html import write_html
from ._payloads import Payload, load_payloads
from ._report import render_text, summarize, write_csv, write_json
from ._tally import Tally

DEFAULT_URL = "http://127.0.0.1:8080/v1/chat/completions"
_BAR = 30


def add_commands(subparsers: Any) -> None:
    """Register `laneway loadtest` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "loadtest", help="drive an OpenAI-compatible endpoint and report latency, TTFT, errors and cost",
        description="Closed loop with --concurrency N, or open loop (Poisson arrivals) with --rate R. "
                    "Runs for --duration S or --requests N (default: 10 seconds).")
    parser.add_argument("--url", default=DEFAULT_URL, help="chat-completions endpoint (default: %(default)s)")
    parser.add_argument("--payloads", metavar="FILE",
                        help="JSONL of request bodies, or of conversations to replay turn by turn "
                             "(see docs/benchmarks.md); default: one short support question")
    parser.add_argument("--model", default="laneway", help="`model` of bodies that name none")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_positive_int, default=1, help="closed loop: N clients")
    load.add_argument("--rate", type=_positive_float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--duration", type=_positive_float, metavar="S", help="seconds to run")
    parser.add_argument("--requests", type=_positive_int, metavar="N", help="requests to send")
    parser.add_argument("--warmup", type=float, default=0.0, metavar="S", help="uncounted load first")
    parser.add_argument("--stream", action="store_true", help="ask for SSE streams and measure TTFT")
    parser.add_argument("--timeout", type=_positive_float, default=30.0, metavar="S", help="per request")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="extra request header, repeatable")
    parser.add_argument("--max-inflight", type=_positive_int, default=4096, help="open loop: connection cap")
    parser.add_argument("--seed", type=int, help="seed of the arrival schedule")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--csv", metavar="PATH", help="write one CSV row overall and one per model and lane")
    parser.add_argument("--html", metavar="PATH", help="write a self-contained HTML report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_loadtest)


def run_loadtest(args: argparse.Namespace) -> int:
    import uvloop

    payloads = load_payloads(args.payloads, args.model) if args.payloads else [_default_payload(args.model)]
    plan = LoadPlan(url=args.url, concurrency=args.concurrency, rate=args.rate,
                    duration_s=args.duration if args.duration or args.requests else 10.0,
                    requests=args.requests, stream=args.stream, timeout_s=args.timeout,
                    headers=tuple(_header(h) for h in args.header), max_inflight=args.max_inflight,
                    seed=args.seed)
    if args.warmup > 0:
        warm = LoadPlan(url=plan.url, concurrency=plan.concurrency, rate=plan.rate, duration_s=args.warmup,
                        stream=plan.stream, timeout_s=plan.timeout_s, headers=plan.headers,
                        max_inflight=plan.max_inflight)
        uvloop.run(run_load(warm, payloads))
    show = None if args.quiet or not sys.stderr.isatty() else progress_bar
    tally = uvloop.run(run_load(plan, payloads, show))
    summary = summarize(tally, _settings(plan, args))
    print(render_text(summary))
    if args.json:
        write_json(summary, args.json)
    if args.csv:
        write_csv(summary, args.csv)
    if args.html:
        write_html(summary, args.html, f"laneway loadtest: {plan.url}")
    return 0 if tally.all.requests > tally.all.errors else 1


def progress_bar(tally: Tally, done: float) -> None:
    filled = round(done * _BAR)
    rate = tally.all.requests / tally.wall_s if tally.wall_s else 0.0
    bar = "#" * filled + "." * (_BAR - filled)
    sys.stderr.write(f"\r[{bar}] {done * 100:3.0f}%  {tally.all.requests} req  {rate:.0f} req/s  "
                     f"{tally.all.errors} errors ")
    if done >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _settings(plan: LoadPlan, args: argparse.Namespace) -> dict[str, Any]:
    return {"url": plan.url, "payloads": args.payloads, "mode": "open" if plan.rate else "closed",
            "concurrency": None if plan.rate else plan.concurrency, "rate": plan.rate,
            "duration_s": plan.duration_s, "requests": plan.requests, "stream": plan.stream}


def _default_payload(model: str) -> Payload:
    return Payload({"model": model, "messages": [{"role": "user", "content": "Where is my refund?"}],
                    "max_tokens": 64})


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ConfigError([ConfigIssue("--header", f"`{text}` is not `NAME: VALUE`; e.g. "
                                                   "--header 'x-laneway-priority: high'")])
    return name.strip(), value.strip()


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


