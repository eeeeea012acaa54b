"""State shared by every replica through Redis: concurrency leases, budgets, breaker cooldowns, cache.

`SharedState` is what a gate sees as its `SharedLimits`. A background loop renews this replica's
leases (so those of a replica that died expire), syncs the breakers, and probes the store while
it is unreachable so the replica rejoins as soon as it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from ..breaker import CircuitBreaker
from ..gate import LOCAL_ONLY
from . import _scripts
from ._breakers import BreakerBoard
from ._cache import RedisStore
from ._link import EventSink, Link, Unreachable, quietly

LEASE_TTL_S = 15.0  # a dead replica's slots come back after at most this long
# How long the store remembers a client key's charge was made: far longer than a stalled command takes to run
# once the store catches up, and than a replica takes to send it again once the store answers.
CHARGE_MARK_TTL_S = 120
TICK_S = 0.25  # breaker sync and reconnection probe period
# What the reconnection probe writes: a store that answers reads but refuses writes (a replica during a
# failover, a full `noeviction` store) is still down, so the link does not flap between the two states.
PROBE_KEY = "laneway:probe"
PROBE_TTL_MS = 10_000

Breakers = Callable[[], Mapping[str, CircuitBreaker]]


def lease_key(model: str) -> str:
    return f"laneway:gate:{model}:leases"


def budget_key(model: str, unit: str) -> str:
    return f"laneway:budget:{model}:{unit.lower()}"


def client_key(name: str, what: str) -> str:
    """Where a client key's shared counts live: its `requests` and `tokens` buckets, its `spent:<period>`."""
    return f"laneway:key:{name}:{what}"


class SharedState:
    def __init__(self, url: str, sink: EventSink | None = None, breakers: Breakers | None = None,
                 lease_ttl_s: float = LEASE_TTL_S) -> None:
        self.link = Link(url, sink)
        self.replica = uuid.uuid4().hex[:12]
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.cache = RedisStore(self.link)
        self._breakers = breakers
        self._board = BreakerBoard(self.replica)
        self._held: dict[str, set[str]] = {}
        # Leases asked for by a command that timed out: the store may still run it once it catches up (a
        # pause of a second), and a lease nobody holds would take a slot for a whole TTL. They are removed
        # when the store answers again, and at each renewal for a TTL after (loop time each was asked at).
        self._doubtful: dict[tuple[str, str], float] = {}
        self._ids = itertools.count()
        client = self.link.client
        self._acquire = client.register_script(_scripts.ACQUIRE)
        self._renew = client.register_script(_scripts.RENEW)
        self._take = client.register_script(_scripts.TAKE)
        self._refund = client.register_script(_scripts.REFUND)
        self._charge_once = client.register_script(_scripts.CHARGE)
        self._tasks: set[asyncio.Task[None]] = set()
        # Client keys' spend the store did not take, by where it goes: (charge id, USD, ttl, never sent). Charges
        # made while the store was known down are summed under one id; one whose command failed (it may have
        # run all the same) keeps its own, so that sending it again cannot charge it twice.
        self._unsent_spend: dict[str, list[tuple[str, float, int | None, bool]]] = {}
        self._loop: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, sink: EventSink | None = None,
                   breakers: Breakers | None = None) -> SharedState:
        """Connect and start syncing. An unreachable store is not an error: the replica starts on its own."""
        state = cls(url, sink, breakers)
        await state.tick()
        state._loop = asyncio.create_task(state._run())
        return state

    @property
    def up(self) -> bool:
        return self.link.up

    async def lease(self, model: str, limit: int) -> str | None:
        lease = f"{self.replica}:{next(self._ids)}"
        try:
            granted = await self.link.run(lambda _: self._acquire(keys=[lease_key(model)],
                                                                   args=[limit, lease, self.lease_ttl_ms]))
        except Unreachable:
            self._doubtful[(model, lease)] = asyncio.get_running_loop().time()
            return LOCAL_ONLY
        if not granted:
            return None
        self._held.setdefault(model, set()).add(lease)
        return lease

    async def unlease(self, model: str, lease: str) -> None:
        self._held.get(model, set()).discard(lease)
        await quietly(self.link, lambda client: client.zrem(lease_key(model), lease))

    async def take(self, model: str, unit: str, amount: float, per_minute: float) -> float | None:
        return await self._take_from(budget_key(model, unit), amount, per_minute)

    def refund(self, model: str, unit: str, amount: float, per_minute: float) -> None:
        self._refund_to(budget_key(model, unit), amount, per_minute)

    async def key_take(self, name: str, unit: str, amount: float, per_minute: float) -> float | None:
        """Like `take`, on client key `name`'s bucket for `unit` (`requests`, `tokens`)."""
        return await self._take_from(client_key(name, unit), amount, per_minute)

    def key_refund(self, name: str, unit: str, amount: float, per_minute: float) -> None:
        self._refund_to(client_key(name, unit), amount, per_minute)

    async def _take_from(self, bucket: str, amount: float, per_minute: float) -> float | None:
        try:
            wait = await self.link.run(lambda _: self._take(keys=[bucket], args=[per_minute, amount]))
        except Unreachable:
            return None
        return float(wait)

    def _refund_to(self, bucket: str, amount: float, per_minute: float) -> None:
        self._spawn(quietly(self.link, lambda _: self._refund(keys=[bucket], args=[per_minute, amount])))

    async def key_spent(self, name: str, period: str) -> float | None:
        """What every replica has charged client key `name` in `period` (`Period.id`); None when unreachable."""
        try:
            spent = await self.link.run(lambda client: client.get(client_key(name, f"spent:{period}")))
        except Unreachable:
            return None
        return float(spent or 0.0)

    def key_spend(self, name: str, period: str, usd: float, ttl_s: int | None) -> None:
        """Charge client key `name` `usd` in `period`; the count goes once the period is over (`ttl_s`). A
        charge the store cannot take now is kept, and made when it answers again (`tick`), once."""
        self._spawn(self._charge(client_key(name, f"spent:{period}"), self._charge_id(), usd, ttl_s))

    def _charge_id(self) -> str:
        return f"{self.replica}-{next(self._ids)}"

    async def _charge(self, where: str, charge_id: str, usd: float, ttl_s: int | None, unsent: bool = True) -> None:
        """`unsent`: no command for this charge has reached the store yet (False for one sent before that may
        have run): only such charges may be summed, since a sum under one id is dropped whole if that id ran."""
        unsent = unsent and not self.link.up
        try:
            await self.link.run(lambda _: self._charge_once(keys=[where, f"{where}:charge:{charge_id}"],
                                                            args=[usd, ttl_s or 0, CHARGE_MARK_TTL_S]))
        except Unreachable:  # spent all the same: the other replicas must learn of it
            kept = self._unsent_spend.setdefault(where, [])
            if unsent and kept and kept[-1][3]:  # never sent, as the last one kept: summed with it
                summed_id, summed, _, _ = kept[-1]
                kept[-1] = (summed_id, summed + usd, ttl_s, True)
            else:
                kept.append((charge_id, usd, ttl_s, unsent))

    async def _send_unsent_spend(self) -> None:
        unsent, self._unsent_spend = self._unsent_spend, {}
        for where, charges in unsent.items():
            for charge_id, usd, ttl_s, never_sent in charges:
                await self._charge(where, charge_id, usd, ttl_s, never_sent)

    async def tick(self) -> None:
        """Sync the breakers (this is also the reconnection probe); after an outage, renew the leases."""
        was_up = self.link.up
        try:
            await self.link.run(self._upkeep, probe=True)
        except Unreachable:
            return
        if not was_up:
            await self.renew()  # a restarted store lost them: count them again
            await self._send_unsent_spend()

    async def renew(self) -> None:
        """Extend (or re-add) every lease this replica holds: its calls are still running. Leases asked for
        by commands that timed out are removed."""
        await quietly(self.link, self._renew_all)

    async def _upkeep(self, client: Any) -> None:
        if not self.link.up:
            await client.set(PROBE_KEY, self.replica, px=PROBE_TTL_MS)
        if self._breakers is not None:
            await self._board.sync(client, self._breakers(), asyncio.get_running_loop().time())
        else:
            await client.ping()

    async def _renew_all(self, client: Any) -> None:
        for model, leases in list(self._held.items()):
            if leases:
                await self._renew(keys=[lease_key(model)], args=[self.lease_ttl_ms, *leases])
        if self._doubtful:
            for model, lease in list(self._doubtful):
                await client.zrem(lease_key(model), lease)
            expired = asyncio.get_running_loop().time() - self.lease_ttl_ms / 1000
            self._doubtful = {key: at for key, at in self._doubtful.items() if at > expired}

    async def _run(self) -> None:
        ticks_per_renewal = max(1, int(self.lease_ttl_ms / 1000 / 3 / TICK_S))
        for n in itertools.count(1):
            await asyncio.sleep(TICK_S)
            await self.tick()
            if n % ticks_per_renewal == 0:
                await self.renew()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Give back the leases still held (their calls were drained before) and disconnect."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await quietly(self.link, self._unlease_all)
        await self.link.aclose()

    async def _unlease_all(self, client: Any) -> None:
        for model, leases in self._held.items():
            if leases:
                await client.zrem(lease_key(model), *leases)
        self._held.clear()
