"""The connection to the shared store, and what happens when it goes away.

Every Redis call goes through `Link.run`. A call that fails marks the link down, logs one warning
and counts one `state_unavailable` event; while it is down, calls fail fast with `Unreachable`
(their callers fall back to this replica's own state) except the periodic probe, whose first
success brings the link back. The probe writes: a store that answers reads but refuses writes stays
down.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from ..errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("laneway")
T = TypeVar("T")
TIMEOUT_S = 0.5  # connect and per-command: a slow store must not stall requests


class EventSink(Protocol):
    def count(self, event: str, model: str, n: int = 1) -> None: ...


class Unreachable(Exception):
    """The shared store cannot answer now; use this replica's own state instead."""


class Link:
    def __init__(self, url: str, sink: EventSink | None = None) -> None:
        try:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as Disconnected
        except ImportError as exc:
            raise ConfigError([ConfigIssue("state", "sharing state through Redis needs the `redis` package; "
                                                     "install it with `pip install 'redis>=5,<9'`")]) from exc
        self.where = _without_credentials(url)
        self.sink = sink
        self.up = True
        # One immediate retry, on a new connection, for a pooled connection the server closed (it
        # restarted); a store that is down or slow is the caller's fallback, not worth waiting for.
        self.client: Redis = Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                                            retry=Retry(NoBackoff(), 1, supported_errors=(Disconnected,)))
        self._errors: tuple[type[BaseException], ...] = (_redis_error(), OSError)

    async def run(self, op: Callable[[Redis], Awaitable[T]], *, probe: bool = False) -> T:
        """Run one operation; raise `Unreachable` when the store is down (without trying, unless `probe`)."""
        if not self.up and not probe:
            raise Unreachable(self.where)
        try:
            result = await op(self.client)
        except self._errors as exc:
            await self._lost(exc)
            raise Unreachable(self.where) from exc
        if not self.up:
            self.up = True
            log.info("laneway: shared state at `%s` answers again; limits, cooldowns and cache are shared "
                     "again", self.where)
        return result

    async def _lost(self, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        with contextlib.suppress(*self._errors):  # idle connections are to a server that is gone
            await self.client.connection_pool.disconnect(inuse_connections=False)
        log.warning("laneway: shared state at `%s` is unreachable or refuses writes (%s: %s); this replica "
                    "keeps to its own limits meanwhile", self.where, type(exc).__name__, exc)
        if self.sink is not None:
            self.sink.count("state_unavailable", "")

    async def aclose(self) -> None:
        with contextlib.suppress(*self._errors):  # a store that is gone has nothing left to close
            await self.client.aclose()


def _redis_error() -> type[BaseException]:
    from redis.exceptions import RedisError

    return RedisError


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.hostname is None:
        return f"{parts.scheme}://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


async def quietly(link: Link, op: Callable[[Redis], Awaitable[Any]]) -> None:
    """An operation whose failure changes nothing for the caller (a refund, a release)."""
    with contextlib.suppress(Unreachable):
        await link.run(op)
