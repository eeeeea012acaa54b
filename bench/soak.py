"""Soak: a real `laneway serve` process at a fixed open-loop rate for a bounded time, sampling its
resident memory; memory must stay flat once warm.

    .venv/bin/python bench/soak.py --minutes 10 --rate 100 [--stream-share 0.3] [--json PATH]

The gateway runs the embedded default on the simulated fleet (so figures are SIMULATED); the
load is `laneway loadtest`'s open loop, mixing chat and email payloads, streamed and not.
`tests/test_soak.py` runs a 20-second version of the same function in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from laneway.loadtest import LoadPlan, Payload, run_load

MESSAGES = [
    "Where is my refund? I returned the item two weeks ago.",
    "I was charged twice for my subscription this month.",
    "How do I change the shipping address on my order?",
    "My promo code does not work at checkout.",
]


@dataclass(frozen=True, slots=True)
class SoakResult:
    requests: int
    errors: int
    rss_mb: list[tuple[float, float]]  # (seconds since start, RSS in MB)

    def growth_mb(self, warmup_s: float) -> float:
        """RSS at the end minus the lowest RSS seen after warm-up."""
        warm = [mb for t, mb in self.rss_mb if t >= warmup_s]
        return warm[-1] - min(warm) if warm else 0.0


def payloads(stream_share: float) -> list[Payload]:
    out = []
    for i in range(20):
        body = {"model": "laneway", "max_tokens": 64,
                "messages": [{"role": "user", "content": MESSAGES[i % len(MESSAGES)] + f" (ticket {i})"}],
                "metadata": {"channel": "email" if i % 5 == 0 else "chat", "conversation_id": f"soak-{i}"}}
        if i < stream_share * 20:
            body["stream"] = True
        out.append(Payload(body))
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _sample(pid: int, every_s: float, into: list[tuple[float, float]], stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        into.append((time.monotonic() - started, rss_mb(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def _start_gateway(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = workdir / "soak.yaml"
    config.write_text(f'telemetry: {{exchange_log: "sqlite:///{workdir}/soak.sqlite3"}}\n'
                      "routes:\n- name: chat\n  matcher: \"channel == chat\"\n  target: gemini-2.5-flash-lite\n"
                      "- name: email\n  target: gpt-5-mini\n")
    process = subprocess.Popen([sys.executable, "-m", "laneway", "serve", "--config", str(config),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the gateway did not become ready")
        time.sleep(0.1)


async def _drive(pid: int, url: str, seconds: float, rate: float, stream_share: float) -> SoakResult:
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(pid, 1.0, samples, stop))
    plan = LoadPlan(url + "/v1/chat/completions", rate=rate, duration_s=seconds, seed=1)
    tally = await run_load(plan, payloads(stream_share))
    stop.set()
    await sampler
    return SoakResult(tally.all.requests, tally.all.errors, samples)


def soak(seconds: float, rate: float, stream_share: float, workdir: Path) -> SoakResult:
    process, url = _start_gateway(workdir)
    try:
        return asyncio.run(_drive(process.pid, url, seconds, rate, stream_share))
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--stream-share", type=float, default=0.3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"laneway-soak-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    result = soak(args.minutes * 60, args.rate, args.stream_share, work)
    report = {"requests": result.requests, "errors": result.errors,
              "rss_mb_first": round(result.rss_mb[0][1], 1), "rss_mb_last": round(result.rss_mb[-1][1], 1),
              "growth_after_warmup_mb": round(result.growth_mb(60.0), 1),
              "rss_mb_per_minute": [round(mb, 1) for t, mb in result.rss_mb if int(t) % 60 == 0]}
    text = json.dumps(report, indent=2)
    print("SIMULATED fleet\n" + text)
    if args.json:
        args.json.write_text(text)
