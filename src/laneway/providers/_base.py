"""The provider protocol, and the HTTP plumbing every wire format shares.

`Upstream` owns one pooled aiohttp session per model, with explicit connect timeout and pool
limit, and translates every foreign exception into Laneway's `UpstreamError` family. Deadlines
are absolute event-loop times shared by the whole exchange.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson

from ..chat import ChatRequest, Chunk, Completion
from ..errors import (
    UpstreamBadResponse,
    UpstreamContextOverflow,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    from ..config import ModelSpec

log = logging.getLogger("laneway")

class Provider(Protocol):
    spec: ModelSpec

    async def complete(self, request: ChatRequest, deadline: float) -> Completion: ...

    def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]: ...

    async def warm(self) -> None: ...

    async def aclose(self) -> None: ...


OverflowTest = Callable[[int, str], bool]


class Upstream:
    """One upstream's connection pool and request primitives."""

    def __init__(self, spec: ModelSpec, base_url: str, headers: dict[str, str]) -> None:
        self.spec = spec
        self.base_url = base_url.rstrip("/")
        self.headers = {"content-type": "application/json", **headers}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.spec.max_concurrency, keepalive_timeout=60,
                                             enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self.headers, json_serialize=lambda o: orjson.dumps(o).decode(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.spec.connect_timeout_ms / 1000),
                auto_decompress=True, skip_auto_headers=("User-Agent",),
            )
        return self._session

    def api_key(self) -> str:
        if not self.spec.api_key_env:
            return ""
        return os.environ.get(self.spec.api_key_env, "")

    async def post_json(self, url: str, body: dict[str, Any], deadline: float,
                        overflow: OverflowTest) -> dict[str, Any]:
        """POST and return the decoded JSON answer, or raise the translated error."""
        try:
            async with asyncio.timeout_at(deadline):
                async with self.session.post(url, data=orjson.dumps(body)) as response:
                    payload = await self._read_body(response)
                    if response.status >= 400:
                        raise self.status_error(response.status, response.headers, payload, overflow)
                    _require_json(response, self.spec.name)
        except TimeoutError:
            raise self.timeout() from None
        except aiohttp.ClientError as exc:
            raise self.transport_error(exc) from None
        try:
            decoded = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse("upstream answered malformed JSON", model=self.spec.name,
                                      upstream_status=200) from None
        if not isinstance(decoded, dict):
            raise UpstreamBadResponse("upstream answered JSON that is not an object", model=self.spec.name)
        return decoded

    async def open_stream(self, url: str, body: dict[str, Any], deadline: float,
                          overflow: OverflowTest) -> aiohttp.ClientResponse:
        """POST a streaming request and return the response once its headers say it succeeded."""
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.session.post(url, data=orjson.dumps(body))
                if response.status >= 400:
                    try:
                        payload = await self._read_body(response)
                    finally:
                        response.release()
                    raise self.status_error(response.status, response.headers, payload, overflow)
        except TimeoutError:
            raise self.timeout() from None
        except aiohttp.ClientError as exc:
            raise self.transport_error(exc) from None
        ctype = response.headers.get("content-type", "")
        if "text/event-stream" not in ctype:
            response.release()
            raise UpstreamBadResponse(f"expected an event stream, got content-type `{ctype or 'none'}`",
                                      model=self.spec.name, upstream_status=response.status)
        return response

    async def sse(self, response: aiohttp.ClientResponse, deadline: float,
                  first: bool = True) -> AsyncIterator[tuple[str, bytes]]:
        """Yield (event, data) pairs of a server-sent event stream, bounded by deadline then idleness."""
        loop = asyncio.get_running_loop()
        event = ""
        data: list[bytes] = []
        waiting_first = first
        idle = self.spec.stream_idle_ms / 1000
        try:
            while True:
                limit = deadline if waiting_first else loop.time() + idle
                try:
                    async with asyncio.timeout_at(limit):
                        line = await response.content.readline()
                except TimeoutError:
                    if waiting_first:
                        raise self.timeout() from None
                    raise UpstreamTimeout(f"stream stalled: no data for {idle:g}s (`stream_idle_ms`)",
                                          model=self.spec.name) from None
                if not line:
                    return
                line = line.rstrip(b"\r\n")
                if not line:
                    if data:
                        waiting_first = False
                        yield event, b"\n".join(data)
                    event, data = "", []
                elif line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode()
        except aiohttp.ClientError as exc:
            raise self.transport_error(exc) from None
        finally:
            response.release()

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.spec.max_response_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise UpstreamBadResponse(f"response of {declared} bytes exceeds `max_response_bytes` ({limit})",
                                      model=self.spec.name, upstream_status=response.status)
        parts: list[bytes] = []
        size = 0
        async for piece in response.content.iter_chunked(65536):
            size += len(piece)
            if size > limit:
                raise UpstreamBadResponse(f"response exceeds `max_response_bytes` ({limit})",
                                          model=self.spec.name, upstream_status=response.status)
            parts.append(piece)
        return b"".join(parts)

    def status_error(self, status: int, headers: Any, payload: bytes, overflow: OverflowTest) -> UpstreamError:
        text = payload[:2000].decode("utf-8", "replace")
        name = self.spec.name
        detail = self.redact(_error_message(text))
        if status == 429:
            return UpstreamRateLimited(f"upstream rate limited: {detail}", model=name,
                                       retry_after_s=retry_after(headers.get("retry-after")))
        if overflow(status, text):
            return UpstreamContextOverflow(f"upstream refused the prompt's length: {detail}", model=name,
                                           upstream_status=status)
        if status >= 500 or status in (408, 409):
            return UpstreamUnavailable(f"upstream answered {status}: {detail}", model=name, upstream_status=status)
        return UpstreamRejected(f"upstream answered {status}: {detail}", model=name, upstream_status=status)

    def redact(self, text: str) -> str:
        """Upstreams sometimes echo the credential they rejected: never pass it on."""
        key = self.api_key()
        return text.replace(key, "[redacted]") if key else text

    def timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout("deadline reached before the upstream answered", model=self.spec.name)

    def transport_error(self, exc: aiohttp.ClientError) -> UpstreamError:
        name = self.spec.name
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamUnavailable(f"cannot connect to `{self.base_url}`: {exc.os_error.strerror or exc}",
                                       model=name)
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return UpstreamUnavailable(f"connect timeout to `{self.base_url}`", model=name)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return UpstreamBadResponse(f"response cut short: {exc}", model=name)
        return UpstreamUnavailable(f"connection to upstream failed: {type(exc).__name__}: {exc}", model=name)

    async def warm(self) -> None:
        """Open a pooled connection now, so the first request does not pay for TCP and TLS set-up."""
        try:
            async with asyncio.timeout(self.spec.connect_timeout_ms / 1000 + 1):
                async with self.session.get(self.base_url) as response:
                    await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("laneway: could not pre-connect to `%s` (%s): %s", self.spec.name, self.base_url,
                        type(exc).__name__)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def decode_event(data: bytes, model: str) -> dict[str, Any]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse(f"malformed event in stream: {data[:80]!r}", model=model) from None
    if not isinstance(event, dict):
        raise UpstreamBadResponse("stream event is not a JSON object", model=model)
    return event


def _require_json(response: aiohttp.ClientResponse, model: str) -> None:
    ctype = response.headers.get("content-type", "")
    if "json" not in ctype:
        raise UpstreamBadResponse(f"expected JSON, got content-type `{ctype or 'none'}`", model=model,
                                  upstream_status=response.status)


def _error_message(text: str) -> str:
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text[:200] or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
    return text[:200]
