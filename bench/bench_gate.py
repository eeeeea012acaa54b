"""The throttled gate under a 3x burst, on the simulated fleet: with no gate every request queues
at the heavy model; with the gate, escalations keep their SLA while chat and triage are degraded.

    .venv/bin/python bench/bench_gate.py [--rate 6] [--seconds 20] [--sla-ms 3000] [--seed 7]

Both configurations send all traffic to heavy-foundation (the incident's single-model set-up);
they run at the same time, each on its own simulated fleet process, with the same arrivals.
Every figure is SIMULATED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from laneway.config import parse_config
from laneway.gateway import Gateway
from laneway.replay import load_trace, schedule
from laneway.replay._driver import Phase, replay
from laneway.replay._figures import Record, percentile
from laneway.replay._fleet import fleet_processes

ROUTES = """
models:
  heavy:
    provider: openai
    base_url: sim:///heavy-foundation/v1
    model: heavy-foundation
    context_window: 32768
    price: {{input_per_mtok: 6.0, output_per_mtok: 18.0}}
    deadline_ms: 5000
    cooldown: {{failures: 1000000}}
{gate}
routes:
- name: all
  target: heavy
telemetry: {{metrics: false, exchange_log: null}}
"""
GATE = """    gate:
      max_concurrency: 9
      queue_timeout_ms: {escalation: 3000, chat: 400, triage: 150}
      degrade_to: gpt-5-mini
      adaptive: {target_p95_ms: 2000, min_concurrency: 4, window: 30}"""


async def run(name: str, sim_url: str, args: argparse.Namespace) -> list[Record]:
    config = parse_config(ROUTES.format(gate=GATE if name == "gate" else ""), f"<{name}>")
    gateway = await Gateway.start(config, sim_url=sim_url)
    phases = [Phase("normal", args.rate, args.seconds), Phase("burst", args.rate * 3, args.seconds)]
    try:
        return await replay(gateway, schedule(load_trace(), args.seed), phases, args.seed)
    finally:
        await gateway.aclose()


def figures(records: list[Record], sla_ms: float) -> dict[str, object]:
    burst = [r for r in records if r.phase == "burst"]
    escalations = [r.latency_ms for r in burst if r.escalation]
    others = [r for r in burst if not r.escalation]
    return {
        "burst_requests": len(burst),
        "escalation_p95_ms": round(percentile(escalations, 95)),
        "escalation_ok": sum(r.outcome == "ok" for r in burst if r.escalation),
        "escalations": len(escalations),
        "escalation_within_sla": sum(v <= sla_ms for v in escalations),
        "other_p95_ms": round(percentile([r.latency_ms for r in others], 95)),
        "other_degraded": sum(r.lane == "degraded" for r in others),
        "other_shed": sum(r.outcome == "rate_limited" for r in others),
        "other_failed": sum(r.outcome not in ("ok", "rate_limited") for r in others),
        "heavy_share": round(sum(r.model == "heavy" for r in burst) / max(1, len(burst)), 3),
    }


async def main(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    with fleet_processes(args.seed, 2) as urls:
        none, gated = await asyncio.gather(run("none", urls[0], args), run("gate", urls[1], args))
    return {"no_gate": figures(none, args.sla_ms), "gate": figures(gated, args.sla_ms)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=6.0, help="normal requests per second (burst is 3x)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--sla-ms", type=float, default=3000.0, help="escalation latency SLA")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    result = asyncio.run(main(arguments))
    text = json.dumps(result, indent=2)
    print("SIMULATED fleet; burst phase only:\n" + text)
    if arguments.json:
        arguments.json.write_text(text)
    sys.exit(0)
