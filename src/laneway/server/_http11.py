"""Laneway's HTTP/1.1 server: an asyncio protocol around httptools' parser that runs an ASGI 3 app.

`laneway serve` used uvicorn. This does the part of uvicorn that a gateway uses, with less work per
request: the scope is built once from the parser's callbacks, a response whose length is known
leaves in one write, and nothing is logged per request (docs/benchmarks.md, "Twelfth round: an
HTTP server of its own"). Any ASGI server can still run `App`; the tests run it under both.

What it does (docs/deployment.md, "The HTTP server"): keep-alive, pipelined requests answered in
order, `Expect: 100-continue`, request bodies by length or chunked, back-pressure both ways, a
`http.disconnect` when the client leaves, a `date` header, idle connections closed after
`keep_alive_s` (and a request whose body stops arriving for as long, or has not arrived whole
`request_deadline_s` after its first byte, with a 408), bad bytes
answered with a 400 or 431 after the requests before them, and a graceful stop: listening stops,
idle connections close, requests in flight get `grace_s` to finish and are then cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast
from urllib.parse import unquote

import httptools
import orjson

from ._asgi import Message, Receive, Scope, Send

log = logging.getLogger("laneway.http")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; past this the answer is a 431
# Bytes read while a head is unfinished: a header line without its end is held by the parser, and
# counted here; one read that began in the previous request's body may be counted too.
HEAD_READ_LIMIT = MAX_HEAD_BYTES + 256 * 1024
# An answer given before its request's body arrived: the rest is read and dropped, up to these, so
# that closing the connection does not reset it under the client before it has read the answer.
DISCARD_LIMIT = 64 * 1024 * 1024
DISCARD_S = 5.0
BODY_HIGH_WATER = 256 * 1024  # unread request body past which the socket stops being read
_REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved Permanently",
    302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 499: "Client Closed Request", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}
_STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, reason.encode()) for status, reason in _REASONS.items()}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REQUEST_LINE = re.compile(rb"^([A-Za-z]+) \S+ HTTP/1\.[01]\r?$", re.MULTILINE)
_CHUNKED = b"transfer-encoding: chunked\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_ASGI_HTTP = {"version": "3.0", "spec_version": "2.3"}  # the same for every request's scope


# What the server says on its own behalf (no request it could hand on), in OpenAI's error shape as every
# other error: (`type`, `code`) by status.
_OWN_ERRORS = {400: ("invalid_request_error", "bad_http_request"), 405: ("invalid_request_error", "method_not_allowed"),
               408: ("invalid_request_error", "request_timeout"),
               431: ("invalid_request_error", "headers_too_large"), 501: ("invalid_request_error", "not_implemented"),
               503: ("server_error", "shutting_down")}


def _plain(status: int, text: str, date: bytes) -> bytes:
    """A whole JSON error answer that ends the connection: what the server says on its own behalf."""
    kind, code = _OWN_ERRORS.get(status, ("server_error", "internal_error"))
    body = orjson.dumps({"error": {"message": text, "type": kind, "code": code, "param": None}}) + b"\n"
    return (_STATUS_LINES[status] + date + _CLOSE + b"content-type: application/json\r\n"
            + b"content-length: %d\r\n\r\n" % len(body) + body)


class _Clock:
    """The `date` header, formatted once a second."""

    __slots__ = ("_header", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._header = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._header


class ServerState:
    """What every connection of one server shares: the app, the open connections, the clock."""

    def __init__(self, app: ASGIApp, keep_alive_s: float, request_deadline_s: float = 300.0) -> None:
        self.app = app
        self.keep_alive_s = keep_alive_s
        # A request must arrive whole within this of its first byte: a body trickled a byte every few seconds
        # is never idle for `keep_alive_s`, and held its connection and request for as long as it went on.
        self.request_deadline_s = request_deadline_s
        self.connections: set[Connection] = set()
        self.clock = _Clock()
        self.stopping = False
        self.drained = asyncio.Event()  # set, once stopping, when no connection has a request left

    def check_drained(self) -> None:
        if self.stopping and all(conn.idle() for conn in self.connections):
            self.drained.set()


class Connection(asyncio.Protocol):
    """One client connection; its requests are answered one at a time, in order."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        # Bytes after a `Connection: close` request are ignored, not an error that costs it its answer.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport | None = None
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.cycle: Cycle | None = None  # the request being answered
        self._held: Cycle | None = None  # answered while the client was not reading: the next waits for it
        self._upgrade_body_left = 0  # bytes still to read of an upgrade request's body
        self._why_refused: tuple[int, str] | None = None  # a callback's reason to refuse the request (status, why)
        self.pipeline: deque[Cycle] = deque()  # requests that arrived behind it
        self.parsing: Cycle | None = None  # the request whose bytes the parser is reading
        self.closed = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.reading_paused = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._expect_continue = False
        self._in_head = False  # between the first byte of a request and the end of its headers
        self._head_began = 0.0
        self._head_read = 0
        self._last: Cycle | None = None  # the request parsed last
        self._refusal: bytes | None = None  # the answer to bad bytes, sent after those to the requests before
        self._discarded = 0
        self._active_at = 0.0  # loop time of the last bytes in or of the last answer out
        self._paused_at = 0.0  # loop time the transport last asked to stop writing (its buffer full)
        self._idle: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.state.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        self._active_at = self.loop.time()
        self._idle = self.loop.call_later(self.state.keep_alive_s, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        for cycle in (self.cycle, self.parsing, *self.pipeline):
            if cycle is not None:
                cycle.client_left()
        self.writable.set()
        self.state.check_drained()

    def data_received(self, data: bytes) -> None:
        self._active_at = self.loop.time()
        if self._upgrade_body_left:
            self._upgrade_body(data)
            return
        if self._refusal is not None:
            return  # the bytes after bad ones are not read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_refused(data[upgrade.args[0]:] if upgrade.args else b"")
            return
        except httptools.HttpParserError as error:  # what a callback raises arrives wrapped in one
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"the request's line and headers exceed {MAX_HEAD_BYTES} bytes")
            elif self._why_refused is not None:
                self._refuse(*self._why_refused)
            elif isinstance(error, httptools.HttpParserInvalidMethodError) and _unknown_method(data):
                self._refuse(501, "unknown request method; methods are upper-case, e.g. `POST` or `GET`")
            elif "PRI" in str(error):
                self._refuse(400, "HTTP/2 is not spoken here: send HTTP/1.1 (h2c with prior knowledge is not "
                                  "supported)")
            else:
                self._refuse(400, f"malformed HTTP request: {error}")
            return
        if self._in_head:
            self._head_read += len(data)
            if self._head_read > HEAD_READ_LIMIT:
                self._refuse(431, f"the request's line and headers exceed {MAX_HEAD_BYTES} bytes")

    def eof_received(self) -> bool | None:
        # Close: a request in flight hears its client leave, and stops (a gateway's upstream call costs
        # money). A client that only half-closes after its request is taken for one that left.
        return None

    def pause_writing(self) -> None:
        self.writable.clear()
        self._paused_at = self.loop.time()

    def resume_writing(self) -> None:
        self.writable.set()
        self._active_at = self.loop.time()  # the client reads
        held, self._held = self._held, None
        if held is not None and self.cycle is None:
            self.cycle_done(held)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._expect_continue = False
        self._in_head = True
        self._head_began = self.loop.time()
        self._head_read = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        self._count_head(len(name) + len(value))
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        elif name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            coding = value.decode("latin-1")
            self._why_refused = (501, f"transfer coding `{coding}` is not supported: send the body uncompressed, "
                                      "with a `content-length` or `transfer-encoding: chunked`")
            raise ValueError(coding)

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        method = parser.get_method()
        if method == b"CONNECT":
            self._why_refused = (405, "CONNECT is not served: Laneway is not a forward proxy (is a client's "
                                      "HTTPS_PROXY pointing at it?)")
            raise ValueError("CONNECT")
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            target = self._url.decode("latin-1")[:200]
            self._why_refused = (400, f"invalid request target `{target}`: send a path such as `/v1/chat/completions`")
            raise
        raw_path = url.path or b"/"  # an absolute-form target without a path: http://host
        path = raw_path.decode("ascii", "surrogateescape")
        if "%" in path:
            path = unquote(path)
        version = parser.get_http_version()
        scope = {
            "type": "http", "asgi": _ASGI_HTTP, "http_version": version,
            "method": method.decode("ascii"), "scheme": "http",
            "path": path, "raw_path": raw_path,
            "query_string": url.query or b"", "root_path": "", "headers": self._headers,
            "client": self.client, "server": self.server,
        }
        keep_alive = parser.should_keep_alive() and not self.state.stopping
        cycle = Cycle(self, scope, keep_alive, self._expect_continue and version != "1.0")
        self.parsing = self._last = cycle
        if self.cycle is None:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            self._pause_reading()  # one request in waiting is enough; the socket holds the rest

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None:
            return
        if cycle.response_complete:  # answered already: dropped, within bounds
            self._discarded += len(body)
            if self._discarded > DISCARD_LIMIT:
                self.close()
            return
        cycle.body.append(body)
        cycle.body_size += len(body)
        if cycle.body_size > BODY_HIGH_WATER:
            self._pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        if cycle is None:
            return
        cycle.more_body = False
        cycle.wake()
        self.parsing = None
        if cycle.response_complete:  # the rest of an answered request's body is in: the connection ends
            self.close()

    # the connection's life

    def _start(self, cycle: Cycle) -> None:
        self.cycle = cycle
        cycle.task = self.loop.create_task(cycle.run())

    def cycle_done(self, cycle: Cycle) -> None:
        """`cycle` has answered: close, or go on with the next request, or wait for one. A client that has
        not read the answers already sent (the transport's buffer is over its high-water mark) gets no
        further one until it does (`resume_writing`): pipelining without reading held every answer in
        memory, 1.5 GB in 8 s."""
        self.cycle = None
        if self.closed:
            return
        if (not self.writable.is_set() and cycle.keep_alive and not cycle.more_body and self._refusal is None
                and not self.state.stopping):
            self._held = cycle
            self._pause_reading()
            return
        if self.pipeline and cycle.keep_alive and not self.state.stopping:
            self._start(self.pipeline.popleft())
        elif self._refusal is not None:
            self.write(self._refusal)  # after the answers to the requests before the bad bytes
            self.close()
        elif cycle.more_body and not self.state.stopping:
            self._discard_rest()
        elif not cycle.keep_alive or self.state.stopping:
            self.close()
            self.state.check_drained()
            return
        self.resume_body()
        self._active_at = self.loop.time()

    def idle(self) -> bool:
        return self.cycle is None and self.parsing is None and not self.pipeline

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _refuse(self, status: int, reason: str) -> None:
        """Bytes that are not a request: say why, and close (nothing after them can be trusted). The
        requests read whole before them are answered first, in order."""
        log.debug("laneway: refused a request from %s: %s", self.client, reason)
        self._pause_reading()
        self._refusal = _plain(status, reason, self.state.clock.date())
        broken, self.parsing = self.parsing, None
        if broken is not None and broken in self.pipeline:
            self.pipeline.remove(broken)
        elif broken is not None and broken is self.cycle:  # its body is what could not be read
            if broken.task is not None:
                broken.task.cancel()
            if broken.response_started:  # an answer under way is cut; the client must not read it as whole
                self.close()
                return
            self.cycle = None
        if self.cycle is None:
            self.write(self._refusal)
            self.close()

    def _upgrade_refused(self, rest: bytes) -> None:
        """`Upgrade` (h2c, WebSocket) is not spoken: the request is answered as a plain one, as RFC 9110
        allows, and the connection ends after it. The parser takes an upgrade's request to end with its
        head, so a body (`curl --http2` on an `http://` URL sends one) is read here, `rest` first."""
        last = self._last
        if last is None or self.parsing is not None:
            self._refuse(400, "protocol upgrades are not supported")
            return
        last.keep_alive = False
        self._pause_reading()
        self._refusal = b""  # nothing to add after the answer: the bytes past the upgrade are not read
        length, chunked = _declared_body(last.scope["headers"])
        if chunked:
            self._refusal, self.parsing = None, last  # its body cannot be read: refused as a broken one
            self._refuse(400, "a request with `Upgrade` must send its body with a `content-length`, not chunked; "
                              "or send it without `Upgrade` (curl: without `--http2` for an `http://` URL)")
        elif length:
            last.more_body, self.parsing, self._upgrade_body_left = True, last, length
            self._upgrade_body(rest)
            self._resume_reading()

    def _upgrade_body(self, data: bytes) -> None:
        """Bytes of an upgrade request's body (`_upgrade_refused`), read by its `content-length`."""
        piece = data[:self._upgrade_body_left]
        self._upgrade_body_left -= len(piece)
        if piece:
            self.on_body(piece)
        if not self._upgrade_body_left:
            self._pause_reading()  # what follows it is not read
            self.on_message_complete()

    def _discard_rest(self) -> None:
        """Answered before the request's body was in: read the rest and drop it (`on_body`), then close."""
        self._discarded = 0
        self._resume_reading()
        self.loop.call_later(DISCARD_S, self.close)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise ValueError("request head too large")

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def resume_body(self) -> None:
        """Reads on, unless a request waits behind the one answered or bad bytes were refused."""
        if (not self.pipeline and self._refusal is None) or self._upgrade_body_left:
            self._resume_reading()

    def _check_idle(self) -> None:
        """Closes a connection silent for `keep_alive_s` with no request being answered (one whose
        request head never ended, too), or whose request's body stopped arriving for as long. One
        timer per connection, not one per request."""
        if self.closed:
            return
        now = self.loop.time()
        # The request whose body the client is sending; not one the server stopped reading (the app has
        # not read what came, or a request waits behind the one answered).
        sending = None if self._in_head or self.reading_paused else self.parsing
        if sending is not None and now >= self._active_at + self.state.keep_alive_s:
            self._body_timed_out(sending, f"the request's body stopped arriving for {self.state.keep_alive_s:g} s")
            return
        deadline_s = self.state.request_deadline_s
        if sending is not None and now >= self._head_began + deadline_s:
            self._body_timed_out(sending, f"the request did not arrive whole within {deadline_s:g} s of its first byte")
            return
        if self._held is not None and now >= self._active_at + self.state.keep_alive_s:
            # A whole period without reading the answers sent: the client is stuck or gone. Closing would
            # wait for them to be read first.
            if self.transport is not None:
                self.transport.abort()
            return
        unread = self.cycle is not None and not self.writable.is_set()
        if unread and now >= self._paused_at + self.state.keep_alive_s:
            # A whole period without reading the answer being sent (a stream): it would hold the request, and
            # a gateway's upstream call and gate slot, for as long as the client keeps the connection open.
            log.debug("laneway: %s: the answer went unread for %g s", self.client, self.state.keep_alive_s)
            if self.transport is not None:
                self.transport.abort()
            return
        if self.cycle is not None or self.pipeline:  # busy: look again a period after the last bytes, or now
            if unread:
                due = self._paused_at + self.state.keep_alive_s
            elif sending is None:
                due = now + self.state.keep_alive_s
            else:
                due = min(self._active_at + self.state.keep_alive_s, self._head_began + self.state.request_deadline_s)
        else:
            # A head trickled in a byte at a time keeps the connection active, not alive.
            since = self._head_began if self._in_head else self._active_at
            due = since + self.state.keep_alive_s
            if now >= due:
                self.close()
                return
        self._idle = self.loop.call_at(due, self._check_idle)

    def _body_timed_out(self, cycle: Cycle, why: str) -> None:
        """A `408` saying `why` if the request's answer has not begun, and close: the request hears its client
        leave."""
        log.debug("laneway: %s: %s", self.client, why)
        if not cycle.response_started:
            self.write(_plain(408, why, self.state.clock.date()))
        cycle.client_left()  # nothing the app sends now reaches the client
        self.close()


class Cycle:
    """One request and its response: the ASGI `receive` and `send` of one app call."""

    __slots__ = ("body", "body_read", "body_size", "chunked", "conn", "disconnected", "expect_continue", "head_held",
                 "keep_alive", "length_left", "more_body", "no_body", "response_complete", "response_started", "scope",
                 "task", "waiters")

    def __init__(self, conn: Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.no_body = scope["method"] == "HEAD"  # and, once the status is known, 1xx, 204 and 304
        self.length_left: int | None = None  # of the declared `content-length`
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_read = False  # the last `http.request` message was handed to the app
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        self.head_held: bytes | None = None  # the response's head, until it leaves with the body
        self.waiters: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            await self.conn.state.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            if self.conn.state.stopping and not self.response_started and not self.disconnected:
                # Cut at the end of the grace period: a client told so can retry on another server.
                self.conn.write(_plain(503, "the server stopped before the answer", self.conn.state.clock.date()))
            if not self.response_complete:
                self.conn.close()
            raise
        except Exception:
            log.exception("laneway: the app failed on %s %r", self.scope["method"], self.scope["path"])
            if not self.response_started:
                await self._internal_error()
            else:
                self.conn.close()  # a response cut short: the client must not read it as whole
        else:
            if not self.response_started and not self.disconnected:
                log.error("laneway: the app returned without a response to %s %s", self.scope["method"],
                          self.scope["path"])
                await self._internal_error()
            elif not self.response_complete and not self.disconnected:
                log.error("laneway: the app left the response to %s %r unfinished", self.scope["method"],
                          self.scope["path"])
                self.conn.close()
        finally:
            self.task = None
            if self.response_complete or self.conn.closed:
                self.conn.cycle_done(self)

    def wake(self) -> None:
        """Wakes every `receive()` waiting (an app may listen for the client leaving while it reads)."""
        waiters = self.waiters
        if waiters:
            self.waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def client_left(self) -> None:
        self.disconnected = True
        self.wake()

    async def receive(self) -> Message:
        if self.expect_continue and not self.disconnected:
            self.expect_continue = False
            self.conn.write(_CONTINUE)
        if not self.body_read:
            while not self.disconnected and not self.response_complete and not self.body and self.more_body:
                await self._wait()
        else:  # the whole body was handed over: what is left to hear is the client leaving
            while not self.disconnected and not self.response_complete:
                await self._wait()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.body_size = 0
        self.body_read = not self.more_body
        self.conn.resume_body()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def _wait(self) -> None:
        waiter = self.conn.loop.create_future()
        self.waiters.append(waiter)
        await waiter

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.response_started or self.response_complete:
                raise RuntimeError(f"unexpected ASGI message {kind!r} before `http.response.start` or after "
                                   "the response's end")
            if self.disconnected:
                return
            body = message.get("body", b"")
            more = message.get("more_body", False)
            conn = self.conn
            if self.no_body:
                body = b""
            elif self.length_left is not None:
                self.length_left -= len(body)
                if self.length_left < 0 or (not more and self.length_left):
                    raise RuntimeError("the response's body does not match its `content-length`")
            if self.chunked:
                data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
                if not more:
                    data += _LAST_CHUNK
            else:
                data = body
            if self.head_held is not None:
                data = self.head_held + data
                self.head_held = None
            if data:
                conn.write(data)
            if not more:
                self.response_complete = True
                self.wake()
                if self.task is None:  # sent from outside the app's task: nothing else will finish the cycle
                    conn.cycle_done(self)
            elif not conn.writable.is_set():
                await conn.writable.wait()
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("`http.response.start` sent twice")
            self.expect_continue = False  # an interim answer after this would land inside the response
            if not self.disconnected:
                self._start_response(message["status"], message.get("headers", ()))
            self.response_started = True
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _start_response(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """ASGI has the app send header names lower-cased; each name and value is copied as it is, and a
        line break in any of them (a response split in two) is refused. A body of unknown length is
        chunked, or for an HTTP/1.0 client ended by closing the connection."""
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "").encode())
        parts = [line, self.conn.state.clock.date()]
        lines = 2
        length: int | None = None
        for name, value in headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                if value.lower() == b"close":
                    self.keep_alive = False
                continue
            elif name == b"transfer-encoding":
                continue
            parts += (name, b": ", value, b"\r\n")
            lines += 1
        if status < 200 or status in (204, 304):
            self.no_body = True
        http_1_0 = self.scope["http_version"] == "1.0"
        if self.more_body or self.conn.state.stopping or (http_1_0 and length is None and not self.no_body):
            # The app answered before reading the whole body (the rest is not read), the server is
            # stopping, or an HTTP/1.0 client reads the body to the connection's end.
            self.keep_alive = False
        if length is None and not self.no_body and not http_1_0:
            self.chunked = True
            parts.append(_CHUNKED)
            lines += 1
        if not self.keep_alive:
            parts.append(_CLOSE)
            lines += 1
        elif http_1_0:
            parts.append(_KEEP_ALIVE)
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        if head.count(b"\n") != lines + 1 or head.count(b"\r") != lines + 1:
            raise RuntimeError("a response header holds a line break: the response is not sent")
        if length is not None and not self.no_body:
            self.length_left = length
        # Held, to leave in one write with the body. A stream's head leaves with the first piece of its
        # body if the app sends it in this turn of the loop, as the gateway does, else at the turn's end:
        # one write less before the first byte, and the client reads both at once.
        self.head_held = head
        if length is None and not self.no_body:
            self.conn.loop.call_soon(self._send_held_head)

    def _send_held_head(self) -> None:
        head, self.head_held = self.head_held, None
        if head is not None and not self.disconnected:
            self.conn.write(head)

    async def _internal_error(self) -> None:
        body = orjson.dumps({"error": {"message": "internal error; see the gateway log", "type": "server_error",
                                       "code": "internal_error", "param": None}}) + b"\n"
        self.keep_alive = False
        await self.send({"type": "http.response.start", "status": 500,
                         "headers": [(b"content-type", b"application/json"),
                                     (b"content-length", b"%d" % len(body))]})
        await self.send({"type": "http.response.body", "body": body})


def http_url(host: str, port: int) -> str:
    """The URL of a server listening on `host:port` (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


class HttpServer:
    """Serves `app` on `host:port` (or on `sockets`, already bound) until `exit()` (called on the server's
    loop: `loop.call_soon_threadsafe(server.exit)` from another thread), or SIGINT or SIGTERM when
    `handle_signals`; runs the app's lifespan around it. A stop is graceful (`shutdown`), and `serve`
    then returns."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *,
                 sockets: list[socket.socket] | None = None, keep_alive_s: float = 30.0,
                 request_deadline_s: float = 300.0, grace_s: float | Callable[[], float] = 25.0, backlog: int = 4096,
                 handle_signals: bool = True,
                 second_sigint_forces: bool = True, force_signals: tuple[int, ...] = (),
                 on_started: Callable[[HttpServer], None] | None = None) -> None:
        """`grace_s` may be a function, read when the stop begins (a reloaded config's). `force_signals`
        cut a stop's grace period short, as a second SIGINT does unless `second_sigint_forces` is False
        (a worker's supervisor owns Ctrl-C, which reaches the worker twice, and says when to force).
        `on_started` is called once the server listens (`bound_ports` then says where)."""
        self.app = app
        self.host = host
        self.port = port
        self.sockets = sockets
        self.grace_s = grace_s
        self.backlog = backlog
        self.handle_signals = handle_signals
        self.second_sigint_forces = second_sigint_forces
        self.force_signals = force_signals
        self.on_started = on_started
        self.state = ServerState(app, keep_alive_s, request_deadline_s)
        self.servers: list[asyncio.base_events.Server] = []
        self.started = False
        self._exit = asyncio.Event()
        self._lifespan: _Lifespan | None = None

    @property
    def bound_ports(self) -> list[int]:
        return [sock.getsockname()[1] for server in self.servers for sock in server.sockets]

    def exit(self) -> None:
        self._exit.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._lifespan = _Lifespan(self.app)
        await self._lifespan.startup()

        def factory() -> Connection:
            return Connection(self.state)

        if self.sockets:
            for sock in self.sockets:
                self.servers.append(await loop.create_server(factory, sock=sock, backlog=self.backlog))
        else:
            self.servers.append(await loop.create_server(factory, self.host, self.port, backlog=self.backlog,
                                                         reuse_address=True))
        self.started = True
        if self.on_started is not None:
            self.on_started(self)
        with self._signals(loop):  # also while stopping: a second Ctrl-C cuts the grace period short
            await self._exit.wait()
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop listening, close idle connections, give requests in flight `grace_s`, then cancel them."""
        self.state.stopping = True
        for server in self.servers:
            server.close()
        for conn in list(self.state.connections):
            if conn.idle():
                conn.close()
        self.state.check_drained()
        grace_s = self.grace_s() if callable(self.grace_s) else self.grace_s
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.state.drained.wait(), grace_s)
        tasks = [conn.cycle.task for conn in self.state.connections
                 if conn.cycle is not None and conn.cycle.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self.state.connections):
            conn.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._lifespan is not None:
            await self._lifespan.shutdown()

    @contextlib.contextmanager
    def _signals(self, loop: asyncio.AbstractEventLoop) -> Any:
        if not self.handle_signals:
            yield
            return
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM, *self.force_signals):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
        try:
            yield
        finally:
            # A worker's stay until its loop ends: a signal that reaches it again while it writes what it
            # recorded (after the server has stopped) must not cut that short, as Python's default
            # SIGINT handler would. A single server gives a later Ctrl-C back to Python: it forces.
            if self.second_sigint_forces:
                for sig in installed:
                    loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        stopping = self._exit.is_set()
        if sig in self.force_signals or (stopping and sig == signal.SIGINT and self.second_sigint_forces):
            self.state.drained.set()  # the grace period ends now
        self.exit()


class _Lifespan:
    """ASGI lifespan: `startup` before the first connection, `shutdown` after the last."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.failed: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self.task = asyncio.create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        await self.started.wait()
        if self.failed:
            raise RuntimeError(f"the app failed to start: {self.failed}")

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.stopped.wait()

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await self.app(scope, self.inbox.get, self._send)
        except BaseException as exc:
            if not self.started.is_set():
                self.failed = repr(exc)
            log.exception("laneway: the app's lifespan failed")
        finally:
            self.started.set()
            self.stopped.set()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.started.set()
        elif kind == "lifespan.startup.failed":
            self.failed = str(message.get("message", "startup failed"))
            self.started.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            self.stopped.set()


def _declared_body(headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    """The body a request's head declares: its `content-length` (0 without one), and whether it is chunked."""
    length, chunked = 0, False
    for name, value in headers:
        if name == b"content-length" and value.strip().isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


def _unknown_method(data: bytes) -> bool:
    """Whether `data` holds a well-formed request line with a method HTTP does not define (a 501, not a 400)."""
    return any(line.group(1) not in _METHODS for line in _REQUEST_LINE.finditer(data))


_METHODS = frozenset(b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH".split())
