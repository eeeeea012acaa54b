"""Driving an endpoint: closed loop (N clients, each sends again as soon as it is answered) or open
loop (Poisson arrivals at a fixed rate, answered or not, so a slow server shows as queueing).

In the open loop a request's latency runs from the moment it was due, not from when a connection
became free: time spent waiting behind earlier requests counts, as it would for a real caller.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp
import orjson

from ._arrivals import poisson_arrivals
from ._call import send
from ._payloads import Payload
from ._tally import Tally

Progress = Callable[[Tally, float], None]


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to send, how hard, and for how long; at least one of `duration_s` and `requests` is set."""

    url: str
    concurrency: int = 1
    rate: float | None = None  # arrivals per second: open loop when set
    duration_s: float | None = None
    requests: int | None = None
    stream: bool = False
    timeout_s: float = 30.0
    headers: tuple[tuple[str, str], ...] = ()
    max_inflight: int = 4096  # open loop: connection pool size, and how many may wait for one
    seed: int | None = None


async def run_load(plan: LoadPlan, payloads: list[Payload], progress: Progress | None = None) -> Tally:
    """Send `payloads` (cycled) as the plan says and return what was measured."""
    if plan.duration_s is None and plan.requests is None:
        raise ValueError("a load plan needs `duration_s` or `requests`")
    bodies = [_encode(p, plan.stream) for p in payloads]
    tally = Tally()
    limit = plan.max_inflight if plan.rate else plan.concurrency
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60)
    headers = {"content-type": "application/json", **dict(plan.headers)}
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=None),
                                     skip_auto_headers=("User-Agent",)) as session:
        run = _Run(plan, session, itertools.cycle(bodies), tally)
        watcher = asyncio.create_task(run.watch(progress)) if progress else None
        cpu = time.process_time()
        if plan.rate:
            await run.open_loop(plan.rate)
        else:
            await run.closed_loop()
        tally.wall_s = time.perf_counter() - run.began
        tally.client_cpu_s = time.process_time() - cpu
        if watcher is not None:
            watcher.cancel()
            progress(tally, 1.0)  # type: ignore[misc]
    return tally


def _encode(payload: Payload, stream: bool) -> bytes:
    return orjson.dumps({**payload.body, "stream": True} if stream else payload.body)


class _Run:
    def __init__(self, plan: LoadPlan, session: aiohttp.ClientSession, bodies: Iterator[bytes],
                 tally: Tally) -> None:
        self.plan = plan
        self.session = session
        self.bodies = bodies
        self.tally = tally
        self.issued = 0
        self.began = time.perf_counter()
        self.ends = self.began + plan.duration_s if plan.duration_s else float("inf")

    def _more(self, now: float) -> bool:
        return now < self.ends and (self.plan.requests is None or self.issued < self.plan.requests)

    async def _one(self, due: float) -> None:
        plan = self.plan
        outcome = await send(self.session, plan.url, next(self.bodies), plan.stream, due,
                             plan.timeout_s)
        self.tally.add(outcome, time.perf_counter() - self.began)

    async def closed_loop(self) -> None:
        async def client() -> None:
            while self._more(now := time.perf_counter()):
                self.issued += 1
                await self._one(now)

        self.began = time.perf_counter()
        self.ends = self.began + self.plan.duration_s if self.plan.duration_s else float("inf")
        await asyncio.gather(*(client() for _ in range(self.plan.concurrency)))

    async def open_loop(self, rate: float) -> None:
        pending: set[asyncio.Task[None]] = set()
        self.began = time.perf_counter()
        self.ends = self.began + self.plan.duration_s if self.plan.duration_s else float("inf")
        for offset in poisson_arrivals(rate, self.plan.seed):
            due = self.began + offset
            if not self._more(due):
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self.issued += 1
            task = asyncio.create_task(self._one(due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

    async def watch(self, progress: Progress) -> None:
        total = self.plan.duration_s
        while True:
            await asyncio.sleep(0.25)
            elapsed = time.perf_counter() - self.began
            self.tally.wall_s = elapsed
            by_time = elapsed / total if total else 0.0
            by_count = self.tally.all.requests / self.plan.requests if self.plan.requests else 0.0
            progress(self.tally, min(1.0, max(by_time, by_count)))
