"""Client API keys: stored as SHA-256 hashes, each with optional allowed routes, a request and a
token rate per minute, and a USD budget per period. Checks are pure functions of the key's
policy and its running counters.

Key material never lives in config files: `laneway keys new NAME` prints a fresh key (give it to
the client) and the line to paste into `keys:` (its hash).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from .errors import Forbidden, RateLimited, Unauthorized
from .gate import Budget

PERIODS = ("day", "month", "total")  # a key's `budget_period`: the UTC day, the UTC month, or all time


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "lw-" + secrets.token_urlsafe(32)


def name_problem(name: str) -> str | None:
    """What is wrong with `name` as a key's name (it shows in logs, metrics and error messages), or None."""
    if not name:
        return "is empty"
    if not name.strip():
        return "is blank"
    if not name.isprintable():
        return "holds a line break, tab or other control character"
    return None


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    name: str
    digest: str  # "sha256:<hex>"
    routes: frozenset[str] | None = None  # None: every route
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    usd_budget: float | None = None
    budget_period: str = "month"  # day | month | total
    where: str = field(default="", compare=False)  # its YAML path, in the routing file or the keys file


class SharedKeyCounts(Protocol):
    """Client keys' counts shared by every replica (`state:`): rate buckets, and what each key has spent per
    budget period. Each call answers None (or does nothing) while the shared store is unreachable."""

    async def key_take(self, name: str, unit: str, amount: float, per_minute: float) -> float | None: ...

    def key_refund(self, name: str, unit: str, amount: float, per_minute: float) -> None: ...

    async def key_spent(self, name: str, period: str) -> float | None: ...

    def key_spend(self, name: str, period: str, usd: float, ttl_s: int | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Period:
    """The budget period that holds a moment: the UTC day, the UTC month, or all time (`total`)."""

    id: str  # "2026-11-28", "2026-11" or "total"
    ends_at: float  # unix seconds; inf for `total`

    @classmethod
    def of(cls, kind: str, now: float) -> Period:
        moment = datetime.fromtimestamp(now, UTC)
        if kind == "day":
            start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            return cls(start.strftime("%Y-%m-%d"), (start + timedelta(days=1)).timestamp())
        if kind == "month":
            start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            return cls(start.strftime("%Y-%m"), (start + timedelta(days=32)).replace(day=1).timestamp())
        return cls("total", math.inf)

    def seconds_left(self, now: float) -> float:
        """Until a spent budget is whole again: the period's end, or, for `total`, an hour (a raised budget)."""
        return 3600.0 if math.isinf(self.ends_at) else max(1.0, self.ends_at - now)

    def ttl_s(self, now: float) -> int | None:
        """How long a shared count of this period is worth keeping: a day past its end, or for good."""
        return None if math.isinf(self.ends_at) else int(self.ends_at - now) + 86_400


@dataclass(slots=True)
class _Usage:
    requests: Budget | None
    tokens: Budget | None
    spent: float = 0.0  # in `period`, by this process
    held: float = 0.0  # estimated cost of the key's requests under way in this process
    period: str = ""
    # With shared counts: what every replica had spent in `period` when the store last said, and what this
    # process has spent since. While the store is unreachable, their sum is the key's spend, not `spent` alone.
    shared_spent: float = 0.0
    spent_since_shared: float = 0.0


FILL = 1e18  # a refund that fills a shared bucket whatever its level (the store caps it at the limit)


class KeyRing:
    """The configured keys and what each has used: in this process, or, with `shared` counts (`state:`),
    in every replica; while the shared store is unreachable, in this process alone."""

    def __init__(self, policies: tuple[KeyPolicy, ...]) -> None:
        self.by_digest = {p.digest: p for p in policies}
        self._by_name = {p.name: p for p in policies}
        # By key name, as the shared store counts them: a key whose secret is replaced (same name, new hash)
        # keeps what it spent. By hash, a rotated key started its budget again, without `state:` only.
        self._usage: dict[str, _Usage] = {}
        self.shared: SharedKeyCounts | None = None

    def update(self, policies: tuple[KeyPolicy, ...]) -> None:
        """Take a reloaded key list. What each surviving key has spent is kept; a rate it now has another
        limit for starts again, full, at the new limit (in the shared store too)."""
        self.by_digest = {p.digest: p for p in policies}
        self._by_name = {p.name: p for p in policies}
        for name, usage in self._usage.items():
            policy = self._by_name.get(name)
            if policy is None:
                continue
            if _limit(usage.requests) != policy.requests_per_minute:
                usage.requests = _bucket(policy.requests_per_minute)
                self._refill_shared(policy.name, "requests", policy.requests_per_minute)
            if _limit(usage.tokens) != policy.tokens_per_minute:
                usage.tokens = _bucket(policy.tokens_per_minute)
                self._refill_shared(policy.name, "tokens", policy.tokens_per_minute)

    def _refill_shared(self, name: str, unit: str, per_minute: int | None) -> None:
        if self.shared is not None and per_minute:
            self.shared.key_refund(name, unit, FILL, per_minute)  # capped at the new limit: full

    def settle(self, name: str, tokens_held: int, tokens_used: int, usd_held: float, usd_spent: float) -> None:
        """Key `name`'s request ended: what was held at admission (`admit`) is let go, and what it used is
        charged. Tokens beyond what it used go back to its rate; its spend counts against its budget."""
        usage = self._usage.get(name)
        if usage is None:  # a key admitted before is always counted: nothing to settle
            return
        if usage.tokens is not None and tokens_held != tokens_used:
            # What it did not use goes back; what it used beyond the estimate (an answer longer than
            # the 256 tokens assumed without `max_tokens`) is taken, the bucket going into debt if need be.
            if tokens_held > tokens_used:
                usage.tokens.refund(tokens_held - tokens_used)
            else:
                usage.tokens.charge(tokens_used - tokens_held, time.monotonic())
            if self.shared is not None:
                self.shared.key_refund(name, "tokens", tokens_held - tokens_used, usage.tokens.per_minute)
        usage.held = max(0.0, usage.held - usd_held)  # also for a key a reload renamed meanwhile
        policy = self._by_name.get(name)
        if policy is not None and policy.usd_budget is not None:
            now = time.time()
            period = self._roll_period(policy, usage, now)
            if self.shared is not None and usd_spent:
                self.shared.key_spend(name, period.id, usd_spent, period.ttl_s(now))
        usage.spent += usd_spent
        usage.spent_since_shared += usd_spent

    @property
    def enabled(self) -> bool:
        return bool(self.by_digest)

    def authenticate(self, authorization: str | None) -> KeyPolicy:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        digest = hash_key(authorization[7:].strip())
        for known, policy in self.by_digest.items():
            if hmac.compare_digest(known, digest):
                return policy
        raise Unauthorized("invalid API key")

    async def admit(self, policy: KeyPolicy, route: str | None, tokens: int, usd: float = 0.0) -> None:
        """Raise if `policy` may not send this request now; otherwise count it, and hold `usd` (its estimated
        cost) against the key's budget until `settle`."""
        if policy.routes is not None and route not in policy.routes:
            allowed = ", ".join(sorted(policy.routes)) or "none"
            if route is None:  # the request named a model: no route to check against the key's list
                raise Forbidden(f"key `{policy.name}` may use only routes ({allowed}), not a model named directly: "
                                "send the route table's name as `model`")
            raise Forbidden(f"key `{policy.name}` may not use route `{route}`; allowed: {allowed}")
        usage = self._usage_of(policy)
        if policy.usd_budget is not None:
            now = time.time()
            period = self._roll_period(policy, usage, now)
            spent = usage.spent
            if self.shared is not None:  # every replica's, this one's included
                shared = await self.shared.key_spent(policy.name, period.id)
                if shared is not None:
                    usage.shared_spent, usage.spent_since_shared = shared, 0.0
                # Unreachable: what it said last, and what this process spent since (an exhausted key stays so).
                spent = max(spent, usage.shared_spent + usage.spent_since_shared)
            if spent + usage.held + usd > policy.usd_budget and (
                    spent >= policy.usd_budget or usage.held > 0):  # a first request alone may overshoot
                raise RateLimited(f"key `{policy.name}` has spent its {policy.budget_period} budget of "
                                  f"${policy.usd_budget:g}", retry_after_s=period.seconds_left(now))
        # Held at once, before the rate limits' round trips to the shared store: held after them, every request
        # that came meanwhile passed the budget check too (40 at once spent $0.60 of a $0.10 budget).
        usage.held += usd
        try:
            await self._count_rate(policy, usage, tokens)
        except BaseException:  # refused, or the client left meanwhile: nothing is held for it
            usage.held = max(0.0, usage.held - usd)
            raise

    async def _count_rate(self, policy: KeyPolicy, usage: _Usage, tokens: int) -> None:
        taken: Budget | None = None  # where the request was counted, when it was (None: the shared store)
        for bucket, unit, amount, limit in ((usage.requests, "requests", 1, policy.requests_per_minute),
                                            (usage.tokens, "tokens", tokens, policy.tokens_per_minute)):
            if bucket is None:
                continue
            wait = None if self.shared is None else await self.shared.key_take(policy.name, unit, amount, limit or 0)
            counted = bucket if wait is None else None
            if wait is None:  # no shared counts, or none reachable: this process's
                wait = bucket.take(amount, time.monotonic())
            if wait > 0:
                if unit == "tokens" and usage.requests is not None:  # the request counted above is not sent
                    self._give_back_request(policy, taken)
                raise RateLimited(f"key `{policy.name}` is over {limit} {unit} per minute", retry_after_s=wait)
            taken = counted

    def _give_back_request(self, policy: KeyPolicy, counted: Budget | None) -> None:
        if counted is not None:
            counted.refund(1)
        elif self.shared is not None:
            self.shared.key_refund(policy.name, "requests", 1, policy.requests_per_minute or 0)

    def spent(self, policy: KeyPolicy) -> float:
        return self._usage_of(policy).spent

    def _usage_of(self, policy: KeyPolicy) -> _Usage:
        usage = self._usage.get(policy.name)
        if usage is None:
            usage = _Usage(_bucket(policy.requests_per_minute), _bucket(policy.tokens_per_minute))
            self._usage[policy.name] = usage
        return usage

    @staticmethod
    def _roll_period(policy: KeyPolicy, usage: _Usage, now: float) -> Period:
        period = Period.of(policy.budget_period, now)
        if period.id != usage.period:
            usage.spent, usage.period = 0.0, period.id
            usage.shared_spent = usage.spent_since_shared = 0.0
        return period


def _bucket(per_minute: int | None) -> Budget | None:
    return Budget(per_minute) if per_minute else None


def _limit(bucket: Budget | None) -> float | None:
    return None if bucket is None else bucket.per_minute
