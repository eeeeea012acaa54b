"""The replay driver: open-loop Poisson arrivals through the gateway core, one record per request.

Arrivals do not wait for answers (open loop): a slow model makes requests pile up, as live
traffic does. Requests go to `Gateway.complete` in-process; no HTTP to the gateway itself.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import LanewayError
from ..exchange import SKIPPED, Exchange
from ..gateway import Gateway
from ..request import ClientRequest
from ..sim import SimModel, is_good, load_fleet
from ._figures import Record
from ._traces import TraceRequest

PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    rate: float  # requests per second
    duration_s: float


@dataclass(slots=True)
class Progress:
    phase: str = ""
    sent: int = 0
    done: int = 0


def arrivals(phases: Sequence[Phase], seed: int) -> list[tuple[float, str]]:
    """Arrival times (seconds from the start) and the phase each falls in; phases run back to back.

    Each phase is a Poisson process conditioned on its expected count (`rate * duration`,
    rounded): given the count, Poisson arrival instants are independent and uniform over the
    phase. Every seed thus offers exactly the same load, and only when requests come varies.
    """
    rng = random.Random(seed)
    out: list[tuple[float, str]] = []
    start = 0.0
    for phase in phases:
        count = round(phase.rate * phase.duration_s)
        out += sorted((start + rng.uniform(0, phase.duration_s), phase.name) for _ in range(count))
        start += phase.duration_s
    return out


async def replay(gateway: Gateway, requests: Iterator[TraceRequest], phases: Sequence[Phase], seed: int,
                 on_progress: Callable[[Progress], None] | None = None) -> list[Record]:
    """Send one request per arrival; return every request's record once all have finished."""
    loop = asyncio.get_running_loop()
    progress = Progress()
    tasks: list[asyncio.Task[Record]] = []
    ids = itertools.count()

    def finished(_task: asyncio.Task[Record]) -> None:
        progress.done += 1
        if on_progress is not None:
            on_progress(progress)

    start = loop.time()
    for at, phase in arrivals(phases, seed):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(gateway, next(requests), phase, at, next(ids)))
        task.add_done_callback(finished)
        tasks.append(task)
        progress.phase, progress.sent = phase, progress.sent + 1
        if on_progress is not None:
            on_progress(progress)
    return list(await asyncio.gather(*tasks))


async def send(gateway: Gateway, request: TraceRequest, phase: str, arrival_s: float, serial: int) -> Record:
    client = ClientRequest(model=gateway.config.server.table, messages=list(request.messages), params={},
                           stream=False, include_usage=False, user="", metadata=dict(request.metadata))
    exchange = Exchange(request_id=f"replay-{serial:06d}", started_at=time.time())
    started = time.perf_counter()
    good = False
    try:
        completion = await gateway.complete(client, {}, PATH, exchange)
        good = rated_good(exchange.model, completion.text)
    except LanewayError as error:
        exchange.outcome, exchange.status, exchange.error = error.code, error.status, error.message
    gateway.finish(exchange, started)
    if not exchange.prompt_tokens:  # a failed attempt reports no usage; count what was sent
        exchange.prompt_tokens = gateway.counter.count(client.messages)
    return Record(phase, arrival_s, request.conversation_id, request.kind, request.escalation,
                  exchange.latency_ms, exchange.model or _last_tried(exchange), exchange.lane, exchange.route,
                  exchange.outcome, exchange.cost_usd, exchange.prompt_tokens, exchange.error, good)


@functools.cache
def _fleet() -> dict[str, SimModel]:
    return load_fleet()


def rated_good(model: str | None, text: str) -> bool:
    """Whether the built-in fleet's `model` gave a good answer (`sim.is_good`: its `quality` against the
    answer's latent quality); an answer of a model not in the fleet is not rated good."""
    sim = _fleet().get(model or "")
    return sim is not None and is_good(sim, text)


def _last_tried(exchange: Exchange) -> str | None:
    tried = [a.model for a in exchange.attempts if a.outcome != SKIPPED]
    return tried[-1] if tried else None
