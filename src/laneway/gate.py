"""The throttled gate in front of an expensive model: admission control with a priority queue.

A gate bounds a model's concurrent calls, tokens per minute and USD per minute. A request that
cannot be admitted waits in a priority queue (escalations and urgent/high first, normal chat
next, email triage last) for at most its class's queue timeout and never past its own deadline;
then it is rejected, and the caller degrades it to `degrade_to` or answers 429 with Retry-After.

With `adaptive`, the concurrency limit follows the model's observed p95 (AIMD): it is cut by
`decrease` when p95 is over `target_p95_ms` and grows by one when p95 is comfortably under it
and the gate is busy. Decisions are pure functions (`next_limit`, `Budget.take`) so they test
without a clock or a network.

With `shared` limits (several replicas, `laneway.state`), every admission also holds a lease on
the model's replica-wide concurrency and charges the replica-wide budgets. The priority queue
stays per replica: its head retries for a lease whenever a local call ends, and on a short poll
for slots freed by other replicas. While the shared store is unreachable the gate keeps to its
own limits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

PRIORITY_CLASSES = ("escalation", "chat", "triage")
LOCAL_ONLY = ""  # the lease of a call admitted on this replica's limits alone (shared store unreachable)
LEASE_POLL_S = 0.02  # how often a queue head looks for a slot another replica freed


class SharedLimits(Protocol):
    """Concurrency leases and budgets shared by every replica of the gateway."""

    async def lease(self, model: str, limit: int) -> str | None:
        """A lease id while under `limit` calls hold one, None when full, `LOCAL_ONLY` when unreachable."""
        ...

    async def unlease(self, model: str, lease: str) -> None: ...

    async def take(self, model: str, unit: str, amount: float, per_minute: float) -> float | None:
        """Like `Budget.take` on the shared bucket; None when the shared store is unreachable."""
        ...

    def refund(self, model: str, unit: str, amount: float, per_minute: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Adaptive:
    target_p95_ms: float
    min_concurrency: int = 1
    decrease: float = 0.7  # multiplicative cut when p95 is over target
    window: int = 50  # completed calls per adjustment


@dataclass(frozen=True, slots=True)
class GatePolicy:
    max_concurrency: int | None = None
    tokens_per_minute: int | None = None
    usd_per_minute: float | None = None
    queue_timeout_ms: tuple[int, int, int] = (2000, 1000, 250)  # per priority class
    degrade_to: str | None = None
    adaptive: Adaptive | None = None


class GateRejected(Exception):
    """`out_of_time`: the wait ended at the caller's limit (the request's deadline, or its share of it),
    before the queue's own timeout: waiting less long would not have helped, nor will a retry soon."""

    def __init__(self, reason: str, retry_after_s: float, out_of_time: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.out_of_time = out_of_time


def next_limit(limit: int, p95_ms: float, busy: bool, policy: Adaptive, ceiling: int) -> int:
    """One AIMD step for the concurrency limit."""
    if p95_ms > policy.target_p95_ms:
        return max(policy.min_concurrency, int(limit * policy.decrease))
    if p95_ms < 0.8 * policy.target_p95_ms and busy:
        return min(ceiling, limit + 1)
    return limit


@dataclass(slots=True)
class Budget:
    """A token bucket refilled continuously at `per_minute`; holds at most one minute's worth. A single
    request larger than a minute's worth waits for a full bucket and goes alone, leaving the bucket in
    debt: the requests after it wait until the debt is paid off."""

    per_minute: float
    level: float | None = None  # None: never taken from (full)
    stamp: float = 0.0

    def take(self, amount: float, now: float) -> float:
        """Take `amount` if available and return 0; else return the seconds until it will be."""
        per_minute = self.per_minute
        level = per_minute if self.level is None else min(per_minute,
                                                          self.level + (now - self.stamp) * per_minute / 60)
        self.stamp = now
        need = min(amount, per_minute)
        if need <= level:
            self.level = level - amount
            return 0.0
        self.level = level
        return (need - level) * 60 / per_minute

    def refund(self, amount: float) -> None:
        if self.level is not None:
            self.level = min(self.per_minute, self.level + amount)

    def charge(self, amount: float, now: float) -> None:
        """Take `amount` whatever is left (a request that used more than it was admitted for): the bucket may
        go into debt, which the requests after it wait for."""
        per_minute = self.per_minute
        level = per_minute if self.level is None else min(per_minute,
                                                          self.level + (now - self.stamp) * per_minute / 60)
        self.level, self.stamp = level - amount, now


def _resized(budget: Budget | None, per_minute: float | None) -> Budget | None:
    """`budget` at a new rate, in place, holding no more than a minute of it: what it had spent stays spent."""
    if not per_minute:
        return None
    if budget is None:
        return Budget(per_minute)
    budget.per_minute = per_minute
    if budget.level is not None:
        budget.level = min(per_minute, budget.level)
    return budget


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class Gate:
    def __init__(self, model: str, policy: GatePolicy, shared: SharedLimits | None = None) -> None:
        self.model = model
        self.policy = policy
        self.shared = shared
        self.ceiling = policy.max_concurrency or 1_000_000
        self.limit = self.ceiling
        self.in_flight = 0
        self.tokens = Budget(policy.tokens_per_minute) if policy.tokens_per_minute else None
        self.dollars = Budget(policy.usd_per_minute) if policy.usd_per_minute else None
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self._latencies: list[float] = []
        self._leases: list[str] = []  # held by this replica's admitted calls; interchangeable
        self._freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump: asyncio.Task[None] | None = None
        self.admitted = 0
        self.rejected = 0

    @property
    def queued(self) -> int:
        """Requests waiting in the queue (a waiter whose request gave up may linger until its turn)."""
        return sum(not waiter.future.done() for waiter in self._queue)

    @property
    def leasing(self) -> bool:
        return self.shared is not None and self.policy.max_concurrency is not None

    async def admit(self, priority: int, tokens: int, usd: float, deadline: float) -> float:
        """Wait for a slot and budget; return the seconds waited, or raise `GateRejected`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue_limit = started + self.policy.queue_timeout_ms[priority] / 1000
        limit_at = min(deadline, queue_limit)
        if not (self.in_flight < self.limit and not self._queue and await self._enter()):
            # returns holding the slot handed over
            await self._wait_for_slot(priority, limit_at, out_of_time=deadline < queue_limit)
        try:
            await self._spend(tokens, usd, limit_at)
        except BaseException:  # turned away, or the request abandoned while it waited for the budget
            self.release(None)
            raise
        self.admitted += 1
        return loop.time() - started

    async def _enter(self) -> bool:
        """Take a free local slot, and a replica-wide lease when leasing; False when the lease is refused."""
        self.in_flight += 1
        if not self.leasing:
            return True
        try:
            lease = await self._lease()
        except BaseException:  # the request was abandoned while asking
            self.in_flight -= 1
            raise
        if lease is None:
            self.in_flight -= 1
            return False
        self._leases.append(lease)
        return True

    async def _lease(self) -> str | None:
        assert self.shared is not None
        return await self.shared.lease(self.model, self.limit)

    async def _wait_for_slot(self, priority: int, limit_at: float, out_of_time: bool) -> None:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(priority, next(self._seq), loop.create_future())
        heapq.heappush(self._queue, waiter)
        if self.leasing and (self._pump is None or self._pump.done()):
            self._pump = self._track(self._hand_leases_over())
        try:
            async with asyncio.timeout_at(limit_at):
                await waiter.future
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                return  # the slot was handed over just as the wait ran out: take it
            if waiter in self._queue:  # `release` may have popped it, already cancelled, meanwhile
                self._queue.remove(waiter)
                heapq.heapify(self._queue)
            self.rejected += 1
            timeout_ms = self.policy.queue_timeout_ms[priority]
            reason = f"`{self.model}` is at its concurrency limit ({self.limit}); " + (
                "the request's time for it ran out in its queue" if out_of_time else
                f"queue wait timed out (`queue_timeout_ms` for this priority: {timeout_ms})")
            raise GateRejected(reason, self._retry_after(priority), out_of_time) from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(None)  # handed a slot, but the request was abandoned: pass it on
            raise

    async def _hand_leases_over(self) -> None:
        """While someone waits: lease a slot for the queue's head when this replica has one free."""
        while self._live_head() is not None:
            self._freed.clear()
            if self.in_flight < self.limit:
                self.in_flight += 1  # reserved while the lease is asked for
                lease = await self._lease()
                if lease is not None:
                    self._hand_over(lease)
                    continue
                self.in_flight -= 1
            try:
                async with asyncio.timeout(LEASE_POLL_S):
                    await self._freed.wait()
            except TimeoutError:
                pass

    def _live_head(self) -> _Waiter | None:
        while self._queue and self._queue[0].future.done():
            heapq.heappop(self._queue)
        return self._queue[0] if self._queue else None

    def _hand_over(self, lease: str) -> None:
        waiter = self._live_head()
        if waiter is None:  # the waiter gave up while the lease was asked for
            self.in_flight -= 1
            self._give_back(lease)
            return
        heapq.heappop(self._queue)
        self._leases.append(lease)
        waiter.future.set_result(None)  # it wakes up already holding the slot and the lease

    async def _spend(self, tokens: int, usd: float, limit_at: float) -> None:
        loop = asyncio.get_running_loop()
        for budget, amount, unit in ((self.tokens, tokens, "tokens"), (self.dollars, usd, "USD")):
            if budget is None:
                continue
            while (wait := await self._take(budget, unit, amount)) > 0:
                if loop.time() + wait > limit_at:
                    self.rejected += 1
                    raise GateRejected(f"`{self.model}` is over its {unit} per minute budget", wait)
                await asyncio.sleep(wait)

    async def _take(self, budget: Budget, unit: str, amount: float) -> float:
        if self.shared is not None:
            wait = await self.shared.take(self.model, unit, amount, budget.per_minute)
            if wait is not None:
                return wait
        return budget.take(amount, time.monotonic())

    def release(self, latency_ms: float | None, tokens_over: int = 0, usd_over: float = 0.0) -> None:
        """A call ended; correct the budgets by what it really used, and let the next waiter in."""
        self.in_flight -= 1
        self.correct(tokens_over, usd_over)
        if latency_ms is not None and self.policy.adaptive is not None:
            self._observe(latency_ms, self.policy.adaptive)
        if self._leases or self.leasing:  # a lease taken under a policy a reload has since changed goes back too
            self._give_back(self._leases.pop(self._local_first()) if self._leases else LOCAL_ONLY)
            if self.leasing:
                return
        self._let_waiters_in()

    def _let_waiters_in(self) -> None:
        while self._queue and self.in_flight < self.limit:
            waiter = heapq.heappop(self._queue)
            if not waiter.future.done():
                self.in_flight += 1  # handed over: the waiter wakes up already holding it
                waiter.future.set_result(None)

    def correct(self, tokens_over: float, usd_over: float) -> None:
        """Charge the budgets what a call used beyond what they were charged (a refund when negative)."""
        for budget, over, unit in ((self.tokens, tokens_over, "tokens"), (self.dollars, usd_over, "USD")):
            if budget is not None and over:
                self._refund(budget, unit, -over)

    def _local_first(self) -> int:
        # Dropping an unshared admission before a real lease errs towards fewer calls, never more.
        return self._leases.index(LOCAL_ONLY) if LOCAL_ONLY in self._leases else -1

    def _refund(self, budget: Budget, unit: str, amount: float) -> None:
        if self.shared is not None:
            self.shared.refund(self.model, unit, amount, budget.per_minute)
        else:
            budget.refund(amount)

    def _give_back(self, lease: str) -> None:
        async def give_back() -> None:
            if lease != LOCAL_ONLY and self.shared is not None:
                await self.shared.unlease(self.model, lease)
            self._freed.set()  # only now is the slot free for this replica's queue head too

        self._track(give_back())

    def _track(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _observe(self, latency_ms: float, adaptive: Adaptive) -> None:
        self._latencies.append(latency_ms)
        if len(self._latencies) < adaptive.window:
            return
        ordered = sorted(self._latencies)
        p95 = ordered[int(0.95 * (len(ordered) - 1))]
        self._latencies.clear()
        self.limit = next_limit(self.limit, p95, self.in_flight >= self.limit - 1, adaptive, self.ceiling)

    def adopt(self, policy: GatePolicy) -> None:
        """A reload's policy, applied in place: the calls in flight stay counted against the new limit, and
        what the budgets spent stays spent. A fresh gate let a whole limit's worth of calls more through to
        a throttled upstream, and started its budgets full. Runs on the event loop."""
        if policy == self.policy:
            return
        at_ceiling = self.limit >= self.ceiling
        self.policy = policy
        self.ceiling = policy.max_concurrency or 1_000_000
        adaptive = policy.adaptive
        if adaptive is None or at_ceiling:  # a fixed gate, or an adaptive one that had not needed to come down
            self.limit = self.ceiling
        else:  # an adaptive one keeps where it got to, within the new bounds
            self.limit = min(self.ceiling, max(adaptive.min_concurrency, self.limit))
        self._latencies.clear()
        # Resized in place: a request waiting for the budget holds the bucket it waits on.
        self.tokens = _resized(self.tokens, policy.tokens_per_minute)
        self.dollars = _resized(self.dollars, policy.usd_per_minute)
        if self.leasing:
            self._freed.set()
            return
        self._let_waiters_in()  # a higher limit lets those waiting in now

    def _retry_after(self, priority: int) -> float:
        """As long as the refused request's class may wait in the queue: a retry sooner finds it as full."""
        return max(1.0, self.policy.queue_timeout_ms[priority] / 1000)
