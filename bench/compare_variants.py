"""Laneway variants side by side: each a source tree and a config, measured in interleaved rounds.

For trying a change before it lands: copy the tree (`cp -r src /tmp/variant-a/`), edit the copy,
and compare it with the working tree. Per variant and round: wrk at one connection (p50, p99,
max); with `--cpu`, process CPU per request at an offered 1,000 requests/s (as
`profile_gateway.py` measures it); with `--stream`, streaming time to first byte on a bare
socket (`stream_probe.py`). Contenders are pinned as in `overhead.py`.

    .venv/bin/python bench/compare_variants.py main=. a=/tmp/variant-a bare=.:laneway-bare.yaml \
        [--rounds 3] [--seconds 6] [--cpu] [--stream]

A variant is NAME=TREE[:CONFIG]: TREE holds `src/laneway`; CONFIG is a file in bench/configs or a
path (default laneway-full.yaml). Each variant's exchange log goes to its own file. At the end,
each variant's exchange-log health from `/admin/stats` shows that the log kept up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders
from contenders import LANEWAY_SERVE, ROOT, VENV_PYTHON, WORK, Contender, Fleet
from measure import probe_run, wrk_run
from profile_gateway import paced_cpu, paced_cpu_together

FIRST_PORT = 9010


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", metavar="NAME=TREE[:CONFIG]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--cpu", action="store_true", help="also CPU per request at 1,000 requests/s")
    parser.add_argument("--together", action="store_true",
                        help="with --cpu: load every variant at once in each round, so that all see the "
                             "machine's drift alike (each variant still gets 1,000 requests/s)")
    parser.add_argument("--stream", action="store_true",
                        help="also streaming time to first byte, read off a bare socket (stream_probe.py)")
    args = parser.parse_args()
    chosen = [_variant(spec, FIRST_PORT + i) for i, spec in enumerate(args.variants)]
    latency: dict[str, list[dict[str, Any]]] = {c.name: [] for c in chosen}
    cpu: dict[str, list[float]] = {c.name: [] for c in chosen}
    sampled: dict[str, list[float]] = {c.name: [] for c in chosen}
    ttfb: dict[str, list[float]] = {c.name: [] for c in chosen}
    with Fleet(chosen) as fleet:
        if fleet.failed:
            raise SystemExit(f"could not start: {fleet.failed}")
        for round_no in range(args.rounds):
            for contender in chosen if round_no % 2 == 0 else chosen[::-1]:
                latency[contender.name].append(wrk_run(contender.url, 1, args.seconds))
                if args.stream:
                    first_event = probe_run(contender.url, args.seconds)["first_event_p50_ms"]
                    if first_event is None:
                        raise SystemExit(f"{contender.name}: the stream probe failed (see above)")
                    ttfb[contender.name].append(first_event)
                if args.cpu and not args.together:
                    figures = paced_cpu(contender, 1000.0, args.seconds)
                    cpu[contender.name].append(figures["cpu_us_per_request"])
                    sampled[contender.name].append(figures["sampled_cpu_us_per_request"])
            if args.cpu and args.together:
                # The order alternates, as for wrk: the variant loaded first measured 3-4 µs per request more
                # than the same code loaded second (docs/benchmarks.md, eighteenth round).
                order = chosen if round_no % 2 == 0 else chosen[::-1]
                for name, figures in paced_cpu_together(order, 1000.0, args.seconds).items():
                    cpu[name].append(figures["cpu_us_per_request"])
                    sampled[name].append(figures["sampled_cpu_us_per_request"])
        health = {c.name: _log_health(c) for c in chosen}
    for contender in chosen:
        runs = latency[contender.name]
        rounds = ", ".join(f"{r['p99_ms']:.2f}" for r in runs)
        line = (f"{contender.name:12} p50 {_median(runs, 'p50_ms'):.3f} ms  p99 {_median(runs, 'p99_ms'):.3f} ms "
                f"(rounds: {rounds})  max {_median(runs, 'max_ms'):.2f} ms")
        if args.cpu:
            per_round = ", ".join(f"{us:.0f}" for us in cpu[contender.name])
            line += (f"  CPU {statistics.median(cpu[contender.name]):.0f} us/request (rounds: {per_round}; "
                     f"tick-sampled median {statistics.median(sampled[contender.name]):.0f})")
        if args.stream:
            line += (f"  stream TTFB {statistics.median(ttfb[contender.name]):.3f} ms "
                     f"(rounds: {', '.join(f'{ms:.3f}' for ms in ttfb[contender.name])})")
        print(f"{line}  log: {health[contender.name]}")
    if args.cpu and len(chosen) > 1:
        baseline = chosen[-1].name
        for contender in chosen[:-1]:
            paired = sorted(a - b for a, b in zip(cpu[contender.name], cpu[baseline], strict=True))
            print(f"CPU {contender.name} - {baseline}, per round: median {statistics.median(paired):.1f} us/request "
                  f"= {statistics.median(paired) / statistics.median(cpu[contender.name]) * 100:.1f} % "
                  f"(sorted: {', '.join(f'{d:.0f}' for d in paired)})")
    return 0


def _variant(spec: str, port: int) -> Contender:
    name, _, rest = spec.partition("=")
    tree, _, config = rest.partition(":")
    source = Path(config) if "/" in config else ROOT / "bench" / "configs" / (config or "laneway-full.yaml")
    database = WORK / f"variant-{name}.sqlite3"
    for stale in WORK.glob(f"variant-{name}.sqlite3*"):
        stale.unlink()
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"variant-{name}.yaml"
    path.write_text(source.read_text().replace("sqlite:///var/bench/exchanges.sqlite3", f"sqlite:///{database}"))
    src = Path(tree).resolve() / "src"
    contenders._COMMANDS[name] = lambda c: ["env", f"PYTHONPATH={src}", VENV_PYTHON, "-c", LANEWAY_SERVE,
                                            str(path), str(c.port)]
    return Contender(name, port)


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _log_health(contender: Contender) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{contender.port}/admin/stats", timeout=10) as answer:
            log = json.load(answer)["log"]
    except OSError as error:
        return f"n/a ({error})"
    return f"written {log['written']}, backlog {log['backlog']}, dropped {log['dropped']}" if log["enabled"] else "off"


if __name__ == "__main__":
    raise SystemExit(main())
