"""The response cache in Redis, shared by every replica; unreachable means a miss."""

from __future__ import annotations

import contextlib

from ._link import Link, Unreachable


class RedisStore:
    def __init__(self, link: Link) -> None:
        self.link = link

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.link.run(lambda client: client.get(key))
        except Unreachable:
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        with contextlib.suppress(Unreachable):
            await self.link.run(lambda client: client.set(key, value, px=max(1, int(ttl_s * 1000))))
