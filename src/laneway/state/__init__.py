"""Shared state for several gateway replicas: gate leases and budgets, breaker cooldowns and the
response cache in Redis (`state: redis://HOST:PORT/DB`), with a fall-back to each replica's own
state while Redis is unreachable."""

from ._breakers import BreakerBoard, breaker_key
from ._cache import RedisStore
from ._link import Link, Unreachable
from ._shared import LEASE_TTL_S, SharedState, budget_key, lease_key

__all__ = ["LEASE_TTL_S", "BreakerBoard", "Link", "RedisStore", "SharedState", "Unreachable", "breaker_key",
           "budget_key", "lease_key"]
