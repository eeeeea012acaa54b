"""Gateway overhead, side by side in one run: each contender in front of the same fake upstream.

Contenders: the upstream itself (direct), nginx, a bare Python passthrough, the LiteLLM proxy (its
own venv), and Laneway with a ten-route config (metrics and exchange log on, then off). Every
contender runs pinned to core 0; the upstream and the load generators share core 1. Repetitions
are interleaved (each round runs every contender once) and the report shows medians.

Each phase starts once the contender is idle again (`settle`): the one-connection and streaming
phases follow a saturating one, and would otherwise measure what is left of its work (Laneway's
telemetry drain and exchange-log writes). `--no-settle` runs the phases back to back.

Run (as root, from the repository root):
    .venv/bin/python bench/overhead.py [--rounds 3] [--seconds 8] [--json var/bench/overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import CONTENDERS, Contender, Fleet, ensure_tools
from measure import probe_run, stream_run, wrk_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per wrk measurement")
    parser.add_argument("--stream-seconds", type=float, default=5.0)
    parser.add_argument("--only", nargs="*", help="contender names to run (default: all)")
    parser.add_argument("--json", default="var/bench/overhead.json")
    parser.add_argument("--no-settle", dest="settle", action="store_false",
                        help="start each phase right after the previous one, busy or not")
    args = parser.parse_args()
    ensure_tools()
    names = args.only or [c.name for c in CONTENDERS]
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    notes: dict[str, str] = {}
    began = time.time()
    with Fleet([c for c in CONTENDERS if c.name in names]) as fleet:
        notes.update(fleet.failed)
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for name in order:
                if name in fleet.failed:
                    continue
                print(f"round {round_no + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                results[name].append(measure(fleet.get(name), args))
        rss = {name: fleet.get(name).peak_rss_mb for name in names if name not in fleet.failed}
    report = summarize(results, rss, notes, args, began)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    return 0


def measure(contender: Contender, args: argparse.Namespace) -> dict[str, Any]:
    url = contender.url
    wrk_run(url, 32, 2.0)  # warm-up, not counted
    cpu_before = contender.cpu_seconds()
    busy = wrk_run(url, 32, args.seconds, on_tick=contender.sample_rss)
    cpu_used = contender.cpu_seconds() - cpu_before
    settled = [settle(contender) if args.settle else 0.0]
    single = wrk_run(url, 1, args.seconds, on_tick=contender.sample_rss)
    settled.append(settle(contender) if args.settle else 0.0)
    stream = stream_run(url, args.stream_seconds)
    probed = probe_run(url, args.stream_seconds)
    contender.sample_rss()
    return {"rps_32": busy["rps"], "p50_32_ms": busy["p50_ms"], "p99_32_ms": busy["p99_ms"],
            "errors_32": busy["errors"],
            "cpu_us_per_request": cpu_used / busy["requests"] * 1e6 if busy["requests"] else None,
            "p50_1_ms": single["p50_ms"], "p99_1_ms": single["p99_ms"], "rps_1": single["rps"],
            "ttfb_p50_ms": stream["ttft_p50_ms"], "ttfb_p99_ms": stream["ttft_p99_ms"],
            "chunk_gap_p50_ms": stream["chunk_gap_p50_ms"], "stream_errors": stream["errors"],
            "socket_ttfb_p50_ms": probed["first_event_p50_ms"], "settle_s": settled}


SETTLE_WINDOW_S = 0.25
SETTLE_BUSY_SHARE = 0.05  # of one core
SETTLE_MAX_S = 15.0


def settle(contender: Contender) -> float:
    """Wait until the contender's processes use under `SETTLE_BUSY_SHARE` of a core over
    `SETTLE_WINDOW_S` (at most `SETTLE_MAX_S`); the seconds waited."""
    began = time.monotonic()
    before = contender.cpu_seconds()
    while time.monotonic() - began < SETTLE_MAX_S:
        time.sleep(SETTLE_WINDOW_S)
        now = contender.cpu_seconds()
        if now - before < SETTLE_WINDOW_S * SETTLE_BUSY_SHARE:
            break
        before = now
    return time.monotonic() - began


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(results: dict[str, list[dict[str, Any]]], rss: dict[str, float], notes: dict[str, str],
              args: argparse.Namespace, began: float) -> dict[str, Any]:
    keys = ("rps_32", "p50_32_ms", "p99_32_ms", "errors_32", "cpu_us_per_request", "p50_1_ms", "p99_1_ms",
            "ttfb_p50_ms", "ttfb_p99_ms", "chunk_gap_p50_ms", "stream_errors", "socket_ttfb_p50_ms")
    medians = {name: {k: _median(runs, k) for k in keys} for name, runs in results.items() if runs}
    direct = medians.get("direct", {})
    floor = medians.get("passthrough", {}).get("rps_32")
    _per_round_ratios(results, medians)
    for figures in medians.values():
        figures["added_p50_1_ms"] = _minus(figures["p50_1_ms"], direct.get("p50_1_ms"))
        figures["added_p99_1_ms"] = _minus(figures["p99_1_ms"], direct.get("p99_1_ms"))
        figures["added_ttfb_p50_ms"] = _minus(figures["ttfb_p50_ms"], direct.get("ttfb_p50_ms"))
        figures["added_socket_ttfb_p50_ms"] = _minus(figures["socket_ttfb_p50_ms"], direct.get("socket_ttfb_p50_ms"))
        figures["rps_32_vs_passthrough"] = figures["rps_32"] / floor if floor and figures["rps_32"] else None
    return {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(began)),
            "rounds": args.rounds, "seconds": args.seconds, "medians": medians, "runs": results,
            "peak_rss_mb": rss, "notes": notes, "load_average_after": os.getloadavg()}


def _per_round_ratios(results: dict[str, list[dict[str, Any]]], medians: dict[str, dict[str, Any]]) -> None:
    """Throughput over the passthrough's in the same round, then the median: robust to drifting load."""
    floor = results.get("passthrough", [])
    for name, runs in results.items():
        ratios = [run["rps_32"] / base["rps_32"] for run, base in zip(runs, floor, strict=False)
                  if base["rps_32"]]
        if name in medians:
            medians[name]["rps_32_vs_passthrough_by_round"] = statistics.median(ratios) if ratios else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    return {"cpu": model, "cores": os.cpu_count(), "kernel": os.uname().release,
            "python": sys.version.split()[0]}


def render(report: dict[str, Any]) -> str:
    head = (f"{'contender':14} {'req/s@32':>9} {'vs floor':>8} {'cpu us/req':>10} {'p50@1':>7} {'+p50':>7} "
            f"{'p99@1':>7} {'+p99':>7} {'ttfb p50':>8} {'+ttfb':>7} {'sock ttfb':>9} {'+sock':>7} {'gap p50':>7} "
            f"{'rss MB':>7}")
    lines = [head]
    for name, m in report["medians"].items():
        lines.append(f"{name:14} {_f(m['rps_32'], 0):>9} {_f(m['rps_32_vs_passthrough'], 2):>8} "
                     f"{_f(m['cpu_us_per_request'], 0):>10} {_f(m['p50_1_ms'], 3):>7} "
                     f"{_f(m['added_p50_1_ms'], 3):>7} {_f(m['p99_1_ms'], 3):>7} "
                     f"{_f(m['added_p99_1_ms'], 3):>7} {_f(m['ttfb_p50_ms'], 3):>8} "
                     f"{_f(m['added_ttfb_p50_ms'], 3):>7} {_f(m['socket_ttfb_p50_ms'], 3):>9} "
                     f"{_f(m['added_socket_ttfb_p50_ms'], 3):>7} {_f(m['chunk_gap_p50_ms'], 2):>7} "
                     f"{_f(report['peak_rss_mb'].get(name), 1):>7}")
    settles = {name: [round(statistics.median(r["settle_s"][k] for r in runs), 2) for k in range(2)]
               for name, runs in report["runs"].items() if runs}
    lines.append("seconds waited for the contender to go idle before the 1-connection and streaming phases "
                 "(medians): " + ", ".join(f"{name} {a:g}/{b:g}" for name, (a, b) in settles.items()))
    lines += [f"{name}: not run: {why}" for name, why in report["notes"].items()]
    return "\n".join(lines)


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
