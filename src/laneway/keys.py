"""Client API keys: stored as SHA-256 hashes, each with optional allowed routes, a request and a
token rate per minute, and a USD budget per period. Checks are pure functions of the key's
policy and its running counters.

Key material never lives in config files: `laneway keys new NAME` prints a fresh key (give it to
the client) and the line to paste into `keys:` (its hash).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from .errors import Forbidden, RateLimited, Unauthorized
from .gate import Budget

PERIODS = {"day": 86_400, "month": 30 * 86_400, "total": 0}


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


@dataclass(slots=True)
class _Usage:
    requests: Budget | None
    tokens: Budget | None
    spent: float = 0.0
    held: float = 0.0  # estimated cost of the key's requests under way
    period_start: float = field(default_factory=time.time)


class KeyRing:
    """The configured keys and what each has used, for one gateway process."""

    def __init__(self, policies: tuple[KeyPolicy, ...]) -> None:
        self.by_digest = {p.digest: p for p in policies}
        self._usage: dict[str, _Usage] = {}

    def update(self, policies: tuple[KeyPolicy, ...]) -> None:
        """Take a reloaded key list. What each surviving key has spent is kept; a rate it now has another
        limit for starts again, full, at the new limit."""
        self.by_digest = {p.digest: p for p in policies}
        for digest, usage in self._usage.items():
            policy = self.by_digest.get(digest)
            if policy is None:
                continue
            if _limit(usage.requests) != policy.requests_per_minute:
                usage.requests = _bucket(policy.requests_per_minute)
            if _limit(usage.tokens) != policy.tokens_per_minute:
                usage.tokens = _bucket(policy.tokens_per_minute)

    def settle(self, name: str, tokens_held: int, tokens_used: int, usd_held: float, usd_spent: float) -> None:
        """Key `name`'s request ended: what was held at admission (`admit`) is let go, and what it used is
        charged. Tokens beyond what it used go back to its rate; its spend counts against its budget."""
        for policy in self.by_digest.values():
            if policy.name == name:
                usage = self._usage_of(policy)
                if usage.tokens is not None and tokens_held > tokens_used:
                    usage.tokens.refund(tokens_held - tokens_used)
                usage.held = max(0.0, usage.held - usd_held)
                usage.spent += usd_spent
                return

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

    def admit(self, policy: KeyPolicy, route: str | None, tokens: int, usd: float = 0.0) -> None:
        """Raise if `policy` may not send this request now; otherwise count it, and hold `usd` (its estimated
        cost) against the key's budget until `settle`."""
        if policy.routes is not None and route not in policy.routes:
            allowed = ", ".join(sorted(policy.routes)) or "none"
            if route is None:  # the request named a model: no route to check against the key's list
                raise Forbidden(f"key `{policy.name}` may use only routes ({allowed}), not a model named directly: "
                                "send the route table's name as `model`")
            raise Forbidden(f"key `{policy.name}` may not use route `{route}`; allowed: {allowed}")
        usage = self._usage_of(policy)
        now = time.monotonic()
        self._roll_period(policy, usage)
        if policy.usd_budget is not None and usage.spent + usage.held + usd > policy.usd_budget and (
                usage.spent >= policy.usd_budget or usage.held > 0):  # a first request alone may overshoot
            raise RateLimited(f"key `{policy.name}` has spent its {policy.budget_period} budget of "
                              f"${policy.usd_budget:g}", retry_after_s=self._period_left(policy, usage))
        if usage.requests is not None and (wait := usage.requests.take(1, now)) > 0:
            raise RateLimited(f"key `{policy.name}` is over {policy.requests_per_minute} requests per minute",
                              retry_after_s=wait)
        if usage.tokens is not None and (wait := usage.tokens.take(tokens, now)) > 0:
            raise RateLimited(f"key `{policy.name}` is over {policy.tokens_per_minute} tokens per minute",
                              retry_after_s=wait)
        usage.held += usd

    def spent(self, policy: KeyPolicy) -> float:
        return self._usage_of(policy).spent

    def _usage_of(self, policy: KeyPolicy) -> _Usage:
        usage = self._usage.get(policy.digest)
        if usage is None:
            usage = _Usage(_bucket(policy.requests_per_minute), _bucket(policy.tokens_per_minute))
            self._usage[policy.digest] = usage
        return usage

    def _roll_period(self, policy: KeyPolicy, usage: _Usage) -> None:
        length = PERIODS[policy.budget_period]
        if length and time.time() - usage.period_start >= length:
            usage.spent, usage.period_start = 0.0, time.time()

    def _period_left(self, policy: KeyPolicy, usage: _Usage) -> float:
        length = PERIODS[policy.budget_period]
        return max(1.0, usage.period_start + length - time.time()) if length else 3600.0


def _bucket(per_minute: int | None) -> Budget | None:
    return Budget(per_minute) if per_minute else None


def _limit(bucket: Budget | None) -> float | None:
    return None if bucket is None else bucket.per_minute
