"""The `demo` command: replay the incident on the simulated fleet and print the before/after table."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from ..flags import seed
from ..outputs import NOT_WRITTEN, check_outputs, output_path, write_outputs
from ._driver import Progress
from ._fleet import fleet_processes
from ._html import render_html
from ._progress import ProgressBar
from ._run import ARCHITECTURES, DEFAULT_RATE, DEFAULT_SEED, DemoResult, DemoSettings, run_demo
from ._table import render_table, result_json
from ._traces import Trace, default_trace_path, load_trace

# Each request of a phase is scheduled up front: a rate of 10^9 per second took gigabytes before the first.
MAX_RATE = 1000.0
QUICK = {"normal_s": 5.0, "burst_s": 10.0}
FULL = {"normal_s": 20.0, "burst_s": 20.0}


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `demo`; its handler is `args.func(args) -> int`."""
    demo = subparsers.add_parser(
        "demo", help="replay the incident on the simulated fleet: heavy model only vs routed (SIMULATED)",
        description="Replay real support conversations through the gateway core, at normal traffic then a "
                    "3x burst, once with the single heavy model (before) and once with the routing "
                    "architecture (after), and print the SIMULATED before/after figures.")
    demo.add_argument("--quick", action="store_true", help="a short run (about 25 s) instead of the full one")
    demo.add_argument("--json", type=output_path, metavar="PATH", help='write {"before": ..., "after": ...} figures')
    demo.add_argument("--html", type=output_path, metavar="PATH", default=Path("laneway-demo.html"),
                      help="HTML report with latency plots (default: laneway-demo.html)")
    demo.add_argument("--rate", type=_positive, default=DEFAULT_RATE,
                      help=f"normal traffic, requests per second; the burst is 3x (default {DEFAULT_RATE:g})")
    demo.add_argument("--seed", type=seed, default=DEFAULT_SEED, help="seed of arrivals, conversations, fleet")
    demo.add_argument("--traces", type=Path, metavar="PATH",
                      help="trace file (default: data/traces/support.json)")
    demo.set_defaults(func=demo_command)


def settings_for(args: argparse.Namespace) -> DemoSettings:
    durations = QUICK if args.quick else FULL
    return DemoSettings(rate=args.rate, seed=args.seed, **durations)


def demo_command(args: argparse.Namespace) -> int:
    traces = args.traces or default_trace_path()  # the default is an input too: never to be overwritten
    problem = check_outputs([("--html", args.html), ("--json", args.json)], [("--traces", traces)])
    if problem:
        print(f"laneway: {problem}", file=sys.stderr)
        return 2
    settings = settings_for(args)
    for phase in settings.phases:
        if round(phase.rate * phase.duration_s) == 0:
            print(f"laneway: `--rate {args.rate:g}` offers no request in the {phase.name} phase "
                  f"({phase.duration_s:g} s); give more than {0.5 / phase.duration_s:g} requests per second",
                  file=sys.stderr)
            return 2
    trace = load_trace(traces)
    result = run(trace, settings)
    print(render_table(result))
    outputs: list[tuple[str, Path, str, str]] = []  # option, path, text, what it holds
    if args.html is not None:
        outputs.append(("--html", args.html, render_html(result), "HTML report"))
    if args.json is not None:
        outputs.append(("--json", args.json, json.dumps(result_json(result, args.quick), indent=2) + "\n",
                        "JSON figures"))
    written = True
    for option, path, text, holds in outputs:
        if write_outputs("demo", [(option, path, partial(path.write_text, text, encoding="utf-8"))]):
            print(f"{holds} (SIMULATED): {path}")
        else:
            written = False
    return 0 if written else NOT_WRITTEN


def run(trace: Trace, settings: DemoSettings) -> DemoResult:
    import uvloop

    names = tuple(name for name, _ in ARCHITECTURES)
    expected = sum(p.rate * p.duration_s for p in settings.phases)
    bar = ProgressBar(sys.stderr, expected, names)

    def report(name: str, progress: Progress) -> None:
        bar.update(name, progress)

    with fleet_processes(settings.seed, len(names)) as urls:
        result = uvloop.run(run_demo(trace, settings, dict(zip(names, urls, strict=True)), report))
    bar.close()
    return result


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}` is not a number; give requests per second, e.g. 6") \
            from None
    if not 0 < value <= MAX_RATE:  # `nan` fails it too
        raise argparse.ArgumentTypeError(f"`{text}` must be above 0 and at most {MAX_RATE:g} requests per second "
                                         "(the burst is 3x that, on the simulated fleet of this one machine)")
    return value
