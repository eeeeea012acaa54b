"""A lean asyncio HTTP/1.1 client for the upstream hot path: one keep-alive pool per upstream.

`Pool.request` sends one request and returns a `Response` once its headers arrived; the body is
read chunk by chunk with `Response.next_chunk`, and `Response.release` hands the connection back
(reused only if the whole message was read and the upstream allows keep-alive). Every wait is
bounded by an absolute event-loop time and raises `TimeoutError` when it passes. Transport faults
raise `HttpError` subclasses, which `Upstream` translates into Laneway's `UpstreamError` family.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, TypeVar, cast

import httptools

T = TypeVar("T")
# Reading pauses while this many body bytes wait for a slow consumer, and resumes below the low mark.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# A body released after its protocol's last event (`[DONE]`) but before its own end (a chunked body's
# last chunk often comes in a write of its own) has this long to end, so that its connection is reused.
TAIL_S = 1.0
# A response head past this is refused: nothing an API answers needs it, and parsing it holds the event loop.
MAX_HEAD_BYTES = 64 * 1024


class HttpError(Exception):
    """A transport-level failure of one request."""


class ConnectFailed(HttpError):
    """No connection could be opened (refused, unreachable, unknown host, TLS handshake)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectTimeout(HttpError):
    """Opening the connection took longer than the pool's connect timeout."""


class Disconnected(HttpError):
    """The connection ended, or answered unparseable HTTP, before the response's headers."""


class BodyCutShort(HttpError):
    """The connection ended, or the body stopped parsing, before the response's last byte."""


class Headers(dict[str, str]):
    """Response headers under lower-case names; `get` takes a name in any case."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


class Response:
    """One response: status and headers at once, the body as it arrives."""

    def __init__(self, connection: Connection) -> None:
        self.status = 0
        self.headers = Headers()
        self.complete = False
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: HttpError | None = None
        self._released = False
        self._tail: asyncio.TimerHandle | None = None

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def next_chunk(self, until: float) -> bytes:
        """The next piece of the body, or b"" at its end; `TimeoutError` if none arrives before `until`."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            await self._wait(until)
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < LOW_WATER:
            self._connection.resume()
        return chunk

    def release(self, ending: bool = False) -> None:
        """Give the connection back: to the pool if the message was read whole, else closed. `ending`:
        the caller read all it wanted (the stream's last event); a body not yet at its end is read on,
        and dropped, for up to `TAIL_S`, then judged."""
        if self._released:
            return
        self._released = True
        self._chunks.clear()
        self._buffered = 0
        if ending and not self.complete and self._error is None:
            self._connection.resume()  # in case a slow reader had paused it
            self._tail = self._connection.loop.call_later(TAIL_S, self._give_back)
        else:
            self._give_back()

    def _give_back(self) -> None:
        if self._tail is not None:
            self._tail.cancel()
            self._tail = None
        self._connection.finish(self.complete and self._error is None)

    async def _wait(self, until: float) -> None:
        loop = self._connection.loop
        self._waiter = loop.create_future()
        try:
            await wait_until(loop, self._waiter, until)
        finally:
            self._waiter = None

    def feed(self, chunk: bytes) -> None:
        if self._released:  # read on to the end, for nobody
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._connection.pause()
        self._wake()

    def end(self, error: HttpError | None = None) -> None:
        if error is None:
            self.complete = True
        elif not self.complete:
            self._error = error
        if self._tail is not None:
            self._give_back()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection: parses the responses to the requests written on it, one at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Pool) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.headers_ready: asyncio.Future[Response] | None = None
        self.reusable = True
        self.idle_since = 0.0
        self._paused = False
        self._interim = False  # the message being parsed is a 1xx, not the response
        self._head_bytes = 0  # of the head being parsed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def usable(self) -> bool:
        return self.reusable and self.transport is not None and not self.transport.is_closing()

    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self.response = Response(self)
        self._head_bytes = 0
        self.headers_ready = self.loop.create_future()
        self.transport.write(data)
        return self.headers_ready

    def finish(self, whole: bool) -> None:
        self.response = None
        self.headers_ready = None
        if not whole:
            self.close()
        self.pool.give_back(self)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for: this connection cannot be trusted again
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"malformed HTTP response: {exc}")
            self.close()
            return
        ready = self.headers_ready
        if ready is not None and not ready.done():  # every byte so far belongs to the head
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(f"the response's head is over {MAX_HEAD_BYTES // 1024} KiB")
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        response = self.response
        if response is not None and self._reads_to_close(response) and exc is None:
            response.end()
        else:
            self._fail("connection closed by the upstream" if exc is None else f"connection lost: {exc}")
        self.pool.forget_idle(self)

    def _fail(self, reason: str) -> None:
        ready = self.headers_ready
        if ready is not None and not ready.done():
            ready.set_exception(Disconnected(reason))
        elif self.response is not None:
            self.response.end(BodyCutShort(reason))

    def _reads_to_close(self, response: Response) -> bool:
        """A body with neither length nor chunking ends when the connection does."""
        headers = response.headers
        return (self.headers_ready is not None and self.headers_ready.done() and not response.complete
                and "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", ""))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.response.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None and self.headers_ready is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the final one follows
            self._interim = True
            response.headers.clear()
            return
        response.status = status
        if not self.parser.should_keep_alive():
            self.reusable = False
        if not self.headers_ready.done():
            self.headers_ready.set_result(response)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self.response is not None:
            self.response.end()


class Pool:
    """Keep-alive connections to one (host, port, TLS) upstream: at most `limit` open, reused last-in first-out."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, limit: int,
                 connect_timeout: float, keepalive: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.limit = max(1, limit)
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.opened = 0  # connections ever opened
        self._open = 0  # open or being opened, idle ones included
        self._idle: list[Connection] = []
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def held(self) -> int:
        """Connections acquired by a request and not yet given back."""
        return self._open - len(self._idle)

    async def request(self, head: bytes, body: bytes, until: float) -> Response:
        """Send `head` + `body`; the response once its headers arrived. A request written to a connection that
        then ends is not sent again here, reused connection or not: the upstream may have taken it (and billed
        it), and the caller's retry is an attempt it records. A connection found closed before it is written to
        is never used: one that closed while it was handed over is replaced in its slot."""
        connection = await self._acquire(until)
        if not connection.usable():  # handed over usable, closed before this request's turn came: unsent
            connection.close()
            connection = await self._connect(until)  # in the same slot (passed on if this fails)
        try:
            return await wait_until(connection.loop, connection.send(head + body), until)
        except BaseException:
            connection.finish(False)
            raise

    async def _acquire(self, until: float) -> Connection:
        if self._closed:
            raise Disconnected("the connection pool is closed")
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            self._open -= 1
        if self._open < self.limit and not self._waiters:
            self._open += 1
            return await self._connect(until)
        return await self._queue(until)

    async def _queue(self, until: float) -> Connection:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            connection = await wait_until(loop, waiter, until)
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._hand_over(waiter.result())  # handed over just as this wait ended: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        if connection is None:  # a slot was freed: open a connection in it
            return await self._connect(until)
        return connection

    async def _connect(self, until: float) -> Connection:
        """A new connection in a slot already counted in `_open`; the slot is passed on if this fails."""
        loop = asyncio.get_running_loop()
        limit = min(until, loop.time() + self.connect_timeout)
        try:
            async with asyncio.timeout_at(limit):
                _, protocol = await loop.create_connection(
                    lambda: Connection(loop, self), self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None)
        except TimeoutError:
            self._hand_over(None)
            if limit < until:
                raise ConnectTimeout(f"no connection within {self.connect_timeout:g}s") from None
            raise
        except (OSError, ssl.SSLError) as exc:
            self._hand_over(None)
            raise ConnectFailed(exc.strerror or str(exc) or type(exc).__name__) from None
        except BaseException:
            self._hand_over(None)
            raise
        self.opened += 1
        return protocol

    def give_back(self, connection: Connection) -> None:
        """A request is done with `connection`: hand it to the next waiter, keep it idle, or free its slot."""
        if connection.usable() and not self._closed:
            self._hand_over(connection)
        else:
            connection.close()
            self._hand_over(None)

    def forget_idle(self, connection: Connection) -> None:
        if connection in self._idle:
            self._idle.remove(connection)
            self._hand_over(None)

    def _hand_over(self, connection: Connection | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if connection is None:
            self._open -= 1
            return
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = connection.loop.call_at(connection.idle_since + self.keepalive, self._close_expired)

    def _close_expired(self) -> None:
        self._sweep = None
        if not self._idle:
            return
        loop = self._idle[0].loop
        expired = loop.time() - self.keepalive
        while self._idle and self._idle[0].idle_since <= expired:
            self._open -= 1
            self._idle.pop(0).close()
        if self._idle:
            self._sweep = loop.call_at(self._idle[0].idle_since + self.keepalive, self._close_expired)

    async def aclose(self) -> None:
        """Close the idle connections now; busy ones close as their requests give them back."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        for connection in idle:
            connection.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks


async def wait_until(loop: asyncio.AbstractEventLoop, future: asyncio.Future[T], until: float) -> T:
    """Await `future`, failing it with `TimeoutError` at loop time `until`; one timer, only if it must wait."""
    if future.done():
        return future.result()
    timer = loop.call_at(until, _expire, future)
    try:
        return await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def request_head(method: str, target: str, host: str, headers: str) -> bytes:
    """The request line and the fixed header lines of `render_headers`, open for `content-length` and the end."""
    return f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n{headers}".encode("latin-1")


def render_headers(headers: dict[str, str]) -> str:
    """The fixed headers as lines, refusing a name or value that would split the request."""
    lines = []
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"header `{name}` holds a line break or colon: fix the key or header it comes from")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)
