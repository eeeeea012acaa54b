"""How long `/admin/stats` holds up the event loop: `stats()` on the loop against `stats_off_loop()`.

Run: PYTHONPATH=src .venv/bin/python bench/stats_stall.py [--rows 10000] [--calls 5]

A task sleeps 1 ms at a time on the loop and records the gap between its wake-ups while the window
of `--rows` exchanges is summarized `--calls` times; the longest gap is what a request arriving
meanwhile would wait.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench_telemetry import exchange

from laneway.telemetry import Telemetry, TelemetrySettings


async def ticker(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def main(rows: int, calls: int) -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None, stats_window=rows))
    for i in range(rows):
        telemetry.record(exchange(i))
    telemetry.stats()
    for way in ("stats", "stats_off_loop") * 2:
        gaps: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(gaps, stop))
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        for _ in range(calls):
            if way == "stats":
                telemetry.stats()
            else:
                await telemetry.stats_off_loop()
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        gaps.sort()
        print(f"{way:15s} {calls} calls in {elapsed * 1e3:.0f} ms; longest stall {gaps[-1] * 1e3:.1f} ms, "
              f"p99 gap {gaps[int(0.99 * len(gaps))] * 1e3:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.calls))
