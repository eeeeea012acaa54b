"""What a shadow lane costs the primary answer: the same open-loop traffic through a route without
and with `shadow: [{target: gemini-2.5-flash-lite, sample: 1.0}]`, interleaved rounds, medians.

    .venv/bin/python bench/bench_shadow.py [--rounds 3] [--requests 200] [--rate 20]

Both gateways run in this process against one simulated fleet process (SIMULATED figures); the
primary is gpt-5-mini. Reported: the primary's p50/p95 latency per configuration, and how many
shadow results were recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

from laneway.config import parse_config
from laneway.exchange import Exchange
from laneway.gateway import Gateway
from laneway.replay._figures import percentile
from laneway.replay._fleet import fleet_processes
from laneway.request import ClientRequest

PLAIN = "routes:\n- name: chat\n  target: gpt-5-mini\ntelemetry: {metrics: false, exchange_log: null}\n"
SHADOWED = PLAIN.replace("  target: gpt-5-mini\n",
                         "  target: gpt-5-mini\n  shadow: [{target: gemini-2.5-flash-lite, sample: 1.0}]\n")


class Counting:
    def __init__(self) -> None:
        self.shadows = 0

    def record(self, exchange: Exchange) -> None:
        self.shadows += exchange.lane == "shadow"

    def count(self, event: str, model: str, n: int = 1) -> None:
        pass

    def observe_queue_wait(self, model: str, seconds: float) -> None:
        pass


async def one_round(sim_url: str, text: str, requests: int, rate: float, seed: int) -> tuple[list[float], int]:
    sink = Counting()
    gateway = await Gateway.start(parse_config(text), sim_url=sim_url, telemetry=sink)
    rng = random.Random(seed)
    latencies: list[float] = []

    async def send(i: int) -> None:
        request = ClientRequest("laneway", [{"role": "user", "content": f"question {seed}-{i} about my order"}],
                                {}, False, False, "", {})
        exchange = Exchange(f"r{seed}-{i}", time.time())
        started = time.perf_counter()
        await gateway.complete(request, {}, "/v1/chat/completions", exchange)
        latencies.append((time.perf_counter() - started) * 1000)

    tasks = []
    for i in range(requests):
        await asyncio.sleep(rng.expovariate(rate))
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    await gateway.aclose()  # drains the shadow queue
    return latencies, sink.shadows


async def main(args: argparse.Namespace) -> dict[str, object]:
    rows: dict[str, list[dict[str, float]]] = {"plain": [], "shadowed": []}
    with fleet_processes(args.seed, 1) as urls:
        for r in range(args.rounds):
            for name, text in (("plain", PLAIN), ("shadowed", SHADOWED)):
                latencies, shadows = await one_round(urls[0], text, args.requests, args.rate, args.seed + r)
                rows[name].append({"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                                   "shadows": shadows})
    summary = {name: {k: round(statistics.median(row[k] for row in values), 1) for k in ("p50", "p95", "shadows")}
               for name, values in rows.items()}
    summary["delta_ms"] = {k: round(summary["shadowed"][k] - summary["plain"][k], 1) for k in ("p50", "p95")}
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7)
    print("SIMULATED fleet, medians of interleaved rounds:\n" + json.dumps(asyncio.run(main(parser.parse_args())),
                                                                        indent=2))
