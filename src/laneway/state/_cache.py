"""The response cache in Redis, shared by every replica. While Redis is unreachable, each replica caches
in its own memory (`local`), as its gates and breakers fall back to their own; that cache is dropped
when Redis answers again."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from ..cache import MemoryStore
from ._link import Link, Unreachable

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("laneway")


class RedisStore:
    def __init__(self, link: Link, local: MemoryStore | None = None) -> None:
        self.link = link
        self.local = local if local is not None else MemoryStore()
        self._local_in_use = False

    async def get(self, key: str) -> bytes | None:
        if not self.link.up:
            return await self._local_get(key)
        try:
            value = await self.link.run(lambda client: client.get(key))
        except Unreachable:
            return await self._local_get(key)
        self._back_from_local()
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if not self.link.up:
            self._local_in_use = True
            await self.local.set(key, value, ttl_s)
            return
        async def write(client: Redis) -> None:
            try:
                await client.set(key, value, px=max(1, int(ttl_s * 1000)))
            except ResponseError as error:
                # A store that refuses one large entry (over its `maxmemory`) is not down: the shared limits
                # must not fall back to local for it.
                log.warning("laneway: the shared cache did not keep an answer (%s: %s)", type(error).__name__, error)

        with contextlib.suppress(Unreachable):
            await self.link.run(write)

    async def _local_get(self, key: str) -> bytes | None:
        self._local_in_use = True
        return await self.local.get(key)

    def _back_from_local(self) -> None:
        if self._local_in_use:  # what was kept meanwhile may be stale against the shared entries
            self.local = MemoryStore(self.local.max_entries)
            self._local_in_use = False
