"""Driving an endpoint: closed loop (N clients, each sends again as soon as it is answered) or open
loop (Poisson arrivals at a fixed rate, answered or not, so a slow server shows as queueing).

In the open loop a request's latency runs from the moment it was due, not from when a connection
became free: time spent waiting behind earlier requests counts, as it would for a real caller.
A run ends when its duration or request count is reached and every request in flight has been
answered or timed out, or early when its `stop` event is set (then in-flight requests get
`DRAIN_S` to finish and the rest are cancelled, uncounted).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ._arrivals import poisson_arrivals
from ._call import send
from ._payloads import Payload
from ._tally import Tally

Progress = Callable[[Tally, float, str], None]  # (tally, share done 0..1, what the run is waiting for)
DRAIN_S = 2.0
# Open loop: requests due but not yet sent (waiting for one of `max_inflight` connections, or for the load
# generator itself) at most; past it, the schedule waits. Unbounded, an open loop faster than the client
# could send held hundreds of thousands of requests (1.9 GB) and noticed Ctrl-C 20 s late.
WAITING_MAX = 10_000


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to send, how hard, and for how long; at least one of `duration_s` and `requests` is set."""

    url: str
    concurrency: int = 1
    rate: float | None = None  # arrivals per second: open loop when set
    duration_s: float | None = None
    requests: int | None = None
    stream: bool = False  # every request streams; otherwise each body's own `stream` decides
    timeout_s: float = 30.0
    headers: tuple[tuple[str, str], ...] = ()
    max_inflight: int = 4096  # open loop: connection pool size, and how many may wait for one
    seed: int | None = None

    @property
    def clients(self) -> int:
        """Closed loop: the clients to run, no more than the requests when those bound the run (a
        client with no request left to send would only cost its start-up, counted in the others' latency)."""
        return min(self.concurrency, self.requests) if self.requests else self.concurrency


@dataclass(frozen=True, slots=True)
class _Request:
    body: bytes
    stream: bool


def open_session(plan: LoadPlan) -> aiohttp.ClientSession:
    """The client a plan's requests go through: its connection pool is as large as the plan's load."""
    limit = plan.max_inflight if plan.rate else plan.clients
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60)
    headers = {"content-type": "application/json", **dict(plan.headers)}
    return aiohttp.ClientSession(connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=None),
                                 skip_auto_headers=("User-Agent",))


async def run_load(plan: LoadPlan, payloads: list[Payload], progress: Progress | None = None,
                   stop: asyncio.Event | None = None, session: aiohttp.ClientSession | None = None) -> Tally:
    """Send `payloads` (cycled) as the plan says and return what was measured; setting `stop` ends
    the run early and marks the tally interrupted. Given a `session` (a warm-up's), its open
    connections carry the run; else the run opens its own."""
    if plan.duration_s is None and plan.requests is None:
        raise ValueError("a load plan needs `duration_s` or `requests`")
    if session is None:
        async with open_session(plan) as own:
            return await run_load(plan, payloads, progress, stop, own)
    requests = [_encode(p, plan.stream) for p in payloads]
    tally = Tally()
    run = _Run(plan, session, itertools.cycle(requests), tally, stop or asyncio.Event())
    watcher = asyncio.create_task(run.watch(progress)) if progress else None
    cpu = time.process_time()
    await run.drive()
    tally.wall_s = time.perf_counter() - run.began
    tally.client_cpu_s = time.process_time() - cpu
    if watcher is not None and progress is not None:
        watcher.cancel()
        progress(tally, run.share_done(), "")
    return tally


def _encode(payload: Payload, stream: bool) -> _Request:
    if stream:
        return _Request(orjson.dumps({**payload.body, "stream": True}), True)
    return _Request(orjson.dumps(payload.body), payload.body.get("stream") is True)


class _Run:
    def __init__(self, plan: LoadPlan, session: aiohttp.ClientSession, requests: Iterator[_Request],
                 tally: Tally, stop: asyncio.Event) -> None:
        self.plan = plan
        self.session = session
        self.requests = requests
        self.tally = tally
        self.stop = stop
        self.issued = 0
        self.busy: set[asyncio.Task[None]] = set()  # open loop: requests; closed loop: clients
        self.began = time.perf_counter()
        self.ends = float("inf")
        # Open loop: a request is sent once it holds one of `max_inflight` slots, so that the time it waits
        # for a connection is the load generator's (its start lag), not the endpoint's, and its timeout
        # counts from then.
        self.slots = asyncio.Semaphore(plan.max_inflight)
        self.room = asyncio.Event()  # set when a request ends while the schedule waits for room

    def _more(self, now: float) -> bool:
        return (now < self.ends and not self.stop.is_set()
                and (self.plan.requests is None or self.issued < self.plan.requests))

    @property
    def in_flight(self) -> int:
        return self.issued - self.tally.all.requests

    async def drive(self) -> None:
        self.began = time.perf_counter()
        self.ends = self.began + self.plan.duration_s if self.plan.duration_s else float("inf")
        stopped = asyncio.create_task(self._note_interrupt())
        try:
            sending = asyncio.create_task(self._open_loop(self.plan.rate) if self.plan.rate else self._clients())
            await asyncio.wait((sending, stopped), return_when=asyncio.FIRST_COMPLETED)
            sending.cancel()
            await asyncio.wait((sending,))
            if not sending.cancelled():
                sending.result()
            await self._settle(stopped)
        finally:
            stopped.cancel()

    async def _note_interrupt(self) -> None:
        await self.stop.wait()
        self.tally.interrupted_s = time.perf_counter() - self.began

    async def _settle(self, stopped: asyncio.Task[None]) -> None:
        """Wait for what is in flight; once stopped, at most `DRAIN_S` more, then cancel the rest."""
        busy = list(self.busy)
        everything = asyncio.gather(*busy, return_exceptions=True)
        await asyncio.wait((everything, stopped), return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            await asyncio.wait((everything,), timeout=DRAIN_S)
            for task in busy:
                task.cancel()
        results = await everything
        self.tally.cancelled = self.in_flight
        for result in results:
            if isinstance(result, Exception):
                raise result

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.busy.add(task)
        task.add_done_callback(self.busy.discard)

    async def _one(self, due: float) -> None:
        request = next(self.requests)
        outcome = await send(self.session, self.plan.url, request.body, request.stream, due, self.plan.timeout_s)
        self.tally.add(outcome, time.perf_counter() - self.began)

    async def _arrival(self, due: float) -> None:
        """One open-loop request: sent once it holds a slot, timed from `due` all the same."""
        try:
            async with self.slots:
                self.tally.started(time.perf_counter() - due, time.perf_counter() - self.began)
                await self._one(due)
        finally:
            self.room.set()

    async def _client(self) -> None:
        while self._more(now := time.perf_counter()):
            self.issued += 1
            await self._one(now)

    async def _clients(self) -> None:
        for _ in range(self.plan.clients):
            self._start(self._client())

    async def _open_loop(self, rate: float) -> None:
        """Requests at Poisson arrivals; the tally's `sending_s` is how long they were sent for: the
        duration when the run reached it, else until the last one (or the stop)."""
        due = self.began
        try:
            for offset in poisson_arrivals(rate, self.plan.seed):
                due = self.began + offset
                if not self._more(due):
                    break
                # uvloop's timers round to the millisecond and may fire early: a request sent before its
                # due time would be timed from it and report less than the server took.
                slept = False
                while (delay := due - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                    slept = True
                if not slept:  # behind the schedule: let the requests, and a Ctrl-C, run between two arrivals
                    await asyncio.sleep(0)
                while self.in_flight >= self.plan.max_inflight + WAITING_MAX:  # a stop cancels this task
                    self.tally.schedule_held = True
                    self.room.clear()
                    await self.room.wait()
                self.issued += 1
                self.tally.last_due_s = offset
                self._start(self._arrival(due))
        finally:
            now = time.perf_counter()
            # The next arrival fell past the end: the run sent for its whole duration.
            whole = now < self.ends <= due and not self.stop.is_set()
            self.tally.sending_s = (self.ends if whole else now) - self.began

    def share_done(self) -> float:
        elapsed = time.perf_counter() - self.began
        by_time = elapsed / self.plan.duration_s if self.plan.duration_s else 0.0
        by_count = self.tally.all.requests / self.plan.requests if self.plan.requests else 0.0
        return min(1.0, max(by_time, by_count))

    def waiting_for(self) -> str:
        """What the run waits for once it has stopped sending; empty while it sends."""
        if self._more(time.perf_counter()) or not self.in_flight:
            return ""
        limit = DRAIN_S if self.stop.is_set() else self.plan.timeout_s
        noun = "request" if self.in_flight == 1 else "requests"
        return f"waiting for {self.in_flight} {noun} in flight (timeout {limit:g} s)"

    async def watch(self, progress: Progress) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.tally.wall_s = time.perf_counter() - self.began
            progress(self.tally, self.share_done(), self.waiting_for())
