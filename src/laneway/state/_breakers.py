"""Breaker cooldowns shared by replicas: an opening is published as a key that lives as long as the
cooldown, and every replica holds its own breaker open while such a key exists."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..breaker import CircuitBreaker

if TYPE_CHECKING:
    from redis.asyncio import Redis


def breaker_key(model: str) -> str:
    return f"laneway:breaker:{model}"


class BreakerBoard:
    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._seen: dict[str, tuple[int, int]] = {}  # model → (id of its breaker, openings already published)

    async def sync(self, client: Redis, breakers: Mapping[str, CircuitBreaker], now: float) -> None:
        """Publish the openings since the last sync, then adopt every running cooldown (`now`: loop time)."""
        pipe = client.pipeline(transaction=False)
        asked: list[tuple[str, CircuitBreaker, int, int]] = []  # model, breaker, openings, index of its PTTL
        for name, breaker in breakers.items():
            left_ms = int((breaker.open_until - now) * 1000)
            if breaker.opened > self._published(name, breaker) and left_ms > 0:
                pipe.set(breaker_key(name), self.replica, px=left_ms)
            pipe.pttl(breaker_key(name))
            asked.append((name, breaker, breaker.opened, len(pipe) - 1))
        replies = await pipe.execute()
        for name, breaker, opened, at in asked:
            left = int(replies[at])
            self._seen[name] = (id(breaker), opened)
            if left > 0:
                breaker.hold_open(now + left / 1000)

    def _published(self, name: str, breaker: CircuitBreaker) -> int:
        seen = self._seen.get(name)
        # A reload builds new breakers: their openings are counted from zero.
        return seen[1] if seen is not None and seen[0] == id(breaker) else 0
