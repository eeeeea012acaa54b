"""The provider protocol, and the HTTP plumbing every wire format shares.

`Upstream` owns one keep-alive connection pool per model (`_http.Pool`), with explicit connect
timeout and pool limit, and translates every transport failure into Laneway's `UpstreamError` family. Deadlines
are absolute event-loop times shared by the whole exchange.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

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
from ._http import (
    BodyCutShort,
    ConnectFailed,
    ConnectTimeout,
    HttpError,
    Pool,
    Response,
    render_headers,
    request_head,
)

if TYPE_CHECKING:
    from ..config import ModelSpec

log = logging.getLogger("laneway")
# Idle keep-alive connections are closed after this long, under the usual server-side timeouts.
KEEPALIVE_S = 60.0


class Refusal(NamedTuple):
    """Why an adapter cannot carry a request: `param` is the request field it cannot translate."""

    param: str
    reason: str


class Provider(Protocol):
    spec: ModelSpec
    # The output the adapter asks for when a request names no `max_tokens` (an API that requires one), else 0:
    # room the model's window must keep for it.
    default_max_tokens: int

    def refusal(self, params: dict[str, Any]) -> Refusal | None:
        """Why this adapter cannot carry a request with these parameters (dispatch then skips the model
        unsent), or None. Called for every lane of every request: cheap."""
        ...

    async def complete(self, request: ChatRequest, deadline: float) -> Completion: ...

    def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]: ...

    async def warm(self) -> None: ...

    async def aclose(self) -> None: ...


OverflowTest = Callable[[int, str], bool]


def api_key(spec: ModelSpec) -> str:
    """The model's provider key, read from the variable `api_key_env` names (empty without one)."""
    return os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""


def redact(spec: ModelSpec, text: str) -> str:
    """Upstreams sometimes echo the credential they rejected: never pass it on."""
    key = api_key(spec)
    return text.replace(key, "[redacted]") if key else text


class Answered:
    """Counted by a stream's adapter: the chunks it has yielded for the client (`Upstream.sse`)."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks = 0


class Upstream:
    """One upstream's connection pool and request primitives."""

    def __init__(self, spec: ModelSpec, base_url: str, headers: dict[str, str]) -> None:
        self.spec = spec
        self.base_url = base_url.rstrip("/")
        # `identity`: without it a server may compress its answers (a CDN in front of a model server does)
        self.headers = {"content-type": "application/json", "accept-encoding": "identity", **headers}
        self._pool: Pool | None = None
        self._header_block = ""
        self._heads: dict[tuple[str, str], bytes] = {}

    @property
    def pool(self) -> Pool:
        """Built on first use, so adapters can still add their credential headers after `__init__`."""
        if self._pool is None:
            parts = urlsplit(self.base_url)
            tls = ssl.create_default_context() if parts.scheme == "https" else None
            port = parts.port or (443 if tls is not None else 80)
            self._pool = Pool(parts.hostname or "localhost", port, tls, self.spec.max_concurrency,
                              self.spec.connect_timeout_ms / 1000, keepalive=KEEPALIVE_S)
            self._header_block = render_headers({k: v for k, v in self.headers.items() if k != "host"})
        return self._pool

    def held_connections(self) -> int:
        """Connections taken by requests and not yet given back (0 when nothing is in flight)."""
        return 0 if self._pool is None else self._pool.held

    def api_key(self) -> str:
        return api_key(self.spec)

    async def send(self, method: str, url: str, body: bytes, deadline: float) -> Response:
        """Send one request; the response once its headers arrived. Foreign errors are left to the caller."""
        pool = self.pool
        head = self._heads.get((method, url))
        if head is None:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = request_head(method, target, parts.netloc.rpartition("@")[2], self._header_block)
            self._heads[method, url] = head
        return await pool.request(head + b"content-length: %d\r\n\r\n" % len(body), body, deadline)

    async def post_json(self, url: str, body: dict[str, Any], deadline: float,
                        overflow: OverflowTest) -> dict[str, Any]:
        """POST and return the decoded JSON answer, or raise the translated error."""
        try:
            response = await self.send("POST", url, orjson.dumps(body), deadline)
            try:
                payload = await self._read_body(response, deadline)
            finally:
                response.release()
        except TimeoutError:
            raise self.timeout() from None
        except HttpError as exc:
            raise self.transport_error(exc) from None
        if response.status >= 400:
            raise self.status_error(response.status, response.headers, payload, overflow)
        self.check_answer(response)
        _require_json(response, self.spec.name)
        try:
            decoded = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamBadResponse("upstream answered malformed JSON", model=self.spec.name,
                                      upstream_status=200) from None
        if not isinstance(decoded, dict):
            raise UpstreamBadResponse("upstream answered JSON that is not an object", model=self.spec.name)
        return decoded

    async def open_stream(self, url: str, body: dict[str, Any], deadline: float,
                          overflow: OverflowTest) -> Response:
        """POST a streaming request and return the response once its headers say it succeeded."""
        try:
            response = await self.send("POST", url, orjson.dumps(body), deadline)
            if response.status >= 400:
                try:
                    payload = await self._read_body(response, deadline)
                finally:
                    response.release()
                raise self.status_error(response.status, response.headers, payload, overflow)
        except TimeoutError:
            raise self.timeout() from None
        except HttpError as exc:
            raise self.transport_error(exc) from None
        try:
            self.check_answer(response)
        except UpstreamError:
            response.release()
            raise
        ctype = response.headers.get("content-type", "")
        if "text/event-stream" not in ctype:
            response.release()
            raise UpstreamBadResponse(f"expected an event stream, got content-type `{ctype or 'none'}`",
                                      model=self.spec.name, upstream_status=response.status)
        return response

    async def sse(self, response: Response, deadline: float,
                  answered: Answered | None = None) -> AsyncGenerator[tuple[str, bytes], None]:
        """Yield (event, data) pairs of a server-sent event stream, bounded by deadline then idleness.

        Until the stream has answered the deadline bounds the wait, then `stream_idle_ms` since the last
        progress: bytes that are no event (`: ping` comments) are none, and the time the consumer holds an event
        (a client slow to read what the gateway forwards) is not the upstream's. Without `answered`, every event
        is progress. With it, only an event after which the consumer has yielded a chunk for the client: events
        that hold nothing for it (OpenAI's role chunk or empty deltas, Anthropic's `message_start` and `ping`)
        neither start the idle clock, or a model slow to its first token was cut as stalled long before the
        deadline, nor keep a stalled stream alive. A line may end in LF, CRLF or CR; a line past
        `max_response_bytes` fails the stream."""
        loop = asyncio.get_running_loop()
        event = ""
        data: list[bytes] = []
        idle = self.spec.stream_idle_ms / 1000
        first = True  # no progress yet: the deadline bounds the wait
        until = deadline
        pending = bytearray()  # the start of a line whose end has not come yet
        seen = 0  # `answered.chunks` at the last progress
        after_cr = False  # the last chunk ended in CR: a LF at the start of the next one ends no line
        try:
            while True:
                try:
                    chunk = await response.next_chunk(until)
                    if loop.time() > until:  # chunks were waiting all along: the time ran out all the same
                        raise TimeoutError
                except TimeoutError:
                    if not first:
                        nothing = "no event" if answered is None else "nothing for the client"
                        raise UpstreamTimeout(f"stream stalled: {nothing} for {idle:g}s (`stream_idle_ms`)",
                                              model=self.spec.name) from None
                    raise self.timeout() from None
                if not chunk:
                    return
                if after_cr and chunk[:1] == b"\n":
                    chunk = chunk[1:]
                after_cr = chunk[-1:] == b"\r"
                if b"\n" not in chunk and b"\r" not in chunk:  # a line still growing: kept, not split again
                    pending += chunk
                    if len(pending) > self.spec.max_response_bytes:
                        raise UpstreamBadResponse(f"stream line over `max_response_bytes` "
                                                  f"({self.spec.max_response_bytes})", model=self.spec.name)
                    continue
                text = bytes(pending) + chunk if pending else chunk
                lines = text.split(b"\n") if b"\r" not in text else _LINE_ENDS.split(text)
                pending[:] = lines.pop()
                for line in lines:
                    if not line:
                        if data:
                            yield event, b"\n".join(data)
                            if answered is None or answered.chunks != seen:  # progress
                                seen = 0 if answered is None else answered.chunks
                                first, until = False, loop.time() + idle
                        event, data = "", []
                    elif line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" "))
                    elif line.startswith(b"event:"):
                        event = line[6:].strip().decode("utf-8", "replace")
        except HttpError as exc:
            raise self.transport_error(exc) from None
        finally:
            response.release()

    async def _read_body(self, response: Response, deadline: float) -> bytes:
        limit = self.spec.max_response_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise UpstreamBadResponse(f"response of {declared} bytes exceeds `max_response_bytes` ({limit})",
                                      model=self.spec.name, upstream_status=response.status)
        parts: list[bytes] = []
        size = 0
        while piece := await response.next_chunk(deadline):
            size += len(piece)
            if size > limit:
                raise UpstreamBadResponse(f"response exceeds `max_response_bytes` ({limit})",
                                          model=self.spec.name, upstream_status=response.status)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def status_error(self, status: int, headers: Any, payload: bytes, overflow: OverflowTest) -> UpstreamError:
        text = redact(self.spec, payload[:8000].decode("utf-8", "replace"))  # before the message is cut short
        name = self.spec.name
        detail = _error_message(text)
        if status == 429:
            wait = retry_after_ms(headers.get("retry-after-ms"))
            if wait is None:
                wait = retry_after(headers.get("retry-after"))
            return UpstreamRateLimited(f"upstream rate limited: {detail}", model=name,
                                       retry_after_s=wait if wait is not None else _retry_delay(text))
        if overflow(status, text):
            return UpstreamContextOverflow(f"upstream refused the prompt's length: {detail}", model=name,
                                           upstream_status=status)
        if status >= 500 or status in (408, 409):
            return UpstreamUnavailable(f"upstream answered {status}: {detail}", model=name, upstream_status=status)
        return UpstreamRejected(f"upstream answered {status}: {detail}", model=name, upstream_status=status,
                                param=_error_param(text))

    def check_answer(self, response: Response) -> None:
        """Raise for an answer under 400 that is no answer: a redirect, which no retry follows (the model's
        `base_url` is to fix, as for a 404), or a body encoded in a way the gateway did not ask for."""
        status, headers = response.status, response.headers
        if 300 <= status < 400:
            where = headers.get("location")
            raise UpstreamRejected(f"upstream answered {status}, a redirect{f' to `{where}`' if where else ''}: "
                                   "point the model's `base_url` at where the API is", model=self.spec.name,
                                   upstream_status=status)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", ""):
            raise UpstreamBadResponse(f"upstream answered `Content-Encoding: {encoding}`, though asked for none "
                                      "(`Accept-Encoding: identity`)", model=self.spec.name, upstream_status=status)

    def timeout(self) -> UpstreamTimeout:
        return UpstreamTimeout("deadline reached before the upstream answered", model=self.spec.name)

    def transport_error(self, exc: HttpError) -> UpstreamError:
        name = self.spec.name
        if isinstance(exc, ConnectFailed):
            return UpstreamUnavailable(f"cannot connect to `{self.base_url}`: {exc.reason}", model=name)
        if isinstance(exc, ConnectTimeout):
            return UpstreamUnavailable(f"connect timeout to `{self.base_url}`", model=name)
        if isinstance(exc, BodyCutShort):
            return UpstreamBadResponse(f"response cut short: {exc}", model=name)
        return UpstreamUnavailable(f"connection to upstream failed: {type(exc).__name__}: {exc}", model=name)

    async def warm(self) -> None:
        """Open a pooled connection now, so the first request does not pay for TCP and TLS set-up."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.spec.connect_timeout_ms / 1000 + 1
        try:
            response = await self.send("GET", self.base_url, b"", until)
            try:
                while await response.next_chunk(until):
                    pass
            finally:
                response.release()
        except (TimeoutError, HttpError) as exc:
            log.warning("laneway: could not pre-connect to `%s` (%s): %s", self.spec.name, self.base_url,
                        type(exc).__name__)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


MAX_RETRY_AFTER_S = 3600.0  # an upstream's wait past an hour (or `inf`) is passed on as an hour


def waited(seconds: float) -> float | None:
    """An upstream's wait, in `[0, MAX_RETRY_AFTER_S]`; None when it is no number (`nan`)."""
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def retry_after_ms(value: str | None) -> float | None:
    """Seconds from a `Retry-After-Ms` header (Azure OpenAI's; OpenAI's SDK reads it before `Retry-After`)."""
    if not value:
        return None
    try:
        return waited(float(value) / 1000.0)
    except ValueError:
        return None


def retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return waited(float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return waited((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


def decode_event(data: bytes, model: str) -> dict[str, Any]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamBadResponse(f"malformed event in stream: {data[:80]!r}", model=model) from None
    if not isinstance(event, dict):
        raise UpstreamBadResponse("stream event is not a JSON object", model=model)
    return event


def _require_json(response: Response, model: str) -> None:
    ctype = response.headers.get("content-type", "")
    if "json" not in ctype:
        raise UpstreamBadResponse(f"expected JSON, got content-type `{ctype or 'none'}`", model=model,
                                  upstream_status=response.status)


_RETRY_DELAY = re.compile(r'"retryDelay"\s*:\s*"(\d+(?:\.\d+)?)s"')


def _retry_delay(text: str) -> float | None:
    """Gemini's wait, in the body's `RetryInfo` rather than a header: `"retryDelay": "40s"`."""
    found = _RETRY_DELAY.search(text)
    return waited(float(found[1])) if found else None


def _error_param(text: str) -> str | None:
    """The request field an OpenAI-shaped error names (`error.param`), if any."""
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) and param else None


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
