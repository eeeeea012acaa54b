"""The upstream HTTP client against small loopback servers whose every byte the test chooses."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme

from laneway.chat import ChatRequest
from laneway.config import ModelSpec
from laneway.errors import UpstreamBadResponse, UpstreamRejected, UpstreamTimeout, UpstreamUnavailable
from laneway.providers import _http
from laneway.providers._base import Upstream
from laneway.providers._http import HIGH_WATER, Disconnected, Pool, Response, request_head
from laneway.providers.openai import OpenAIProvider

JSON = b'{"ok": true}'
Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


@dataclass
class Server:
    """Counts connections and requests; `handler` answers one request and says whether to keep the connection."""

    handler: Handler
    connections: int = 0
    requests: int = 0
    open_now: int = 0
    most_open: int = 0
    port: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self.writers.append(writer)
        served = 0
        try:
            while await read_request(reader):
                self.requests += 1
                served += 1
                if not await self.handler(self, reader, writer, served):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


def answer(body: bytes = JSON, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


async def keep_alive(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
    writer.write(answer())
    await writer.drain()
    return True


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[tuple[asyncio.Server, Server]] = []

    async def start(handler: Handler, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(handler)
        listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=tls)
        server.port = listener.sockets[0].getsockname()[1]
        servers.append((listener, server))
        return server

    yield start
    for listener, server in servers:
        server.stopping.set()
        for writer in server.writers:
            writer.close()
        listener.close()
    await asyncio.sleep(0.05)  # let every connection handler see its end


def pool_for(server: Server, limit: int = 8, keepalive: float = 60.0, tls: ssl.SSLContext | None = None,
             host: str = "127.0.0.1") -> Pool:
    return Pool(host, server.port, tls, limit, connect_timeout=1.0, keepalive=keepalive)


async def get(pool: Pool, body: bytes = b"", until: float | None = None) -> tuple[Response, bytes]:
    loop = asyncio.get_running_loop()
    until = loop.time() + 5 if until is None else until
    head = request_head("POST", "/v1/chat", pool.host, "content-type: application/json\r\n")
    response = await pool.request(head + b"content-length: %d\r\n\r\n" % len(body), body, until)
    parts = []
    try:
        while chunk := await response.next_chunk(until):
            parts.append(chunk)
    finally:
        response.release()
    return response, b"".join(parts)


async def test_keep_alive_connection_is_reused(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve(keep_alive)
    pool = pool_for(server)
    for _ in range(5):
        response, body = await get(pool, b"{}")
        assert (response.status, body) == (200, JSON)
        assert response.headers.get("Content-Type") == "application/json"
    assert (server.connections, server.requests, pool.opened, pool.held) == (1, 5, 1, 0)
    await pool.aclose()


async def test_chunked_body_is_joined_in_order(serve: Callable[..., Awaitable[Server]]) -> None:
    pieces = [b"alpha ", b"beta ", b"gamma"]

    async def chunked(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        return True

    server = await serve(chunked)
    pool = pool_for(server)
    for _ in range(2):
        response, body = await get(pool)
        assert body == b"".join(pieces) and response.content_length is None
    assert server.connections == 1  # a chunked body read to its end leaves the connection reusable
    await pool.aclose()


async def test_connection_close_is_never_reused(serve: Callable[..., Awaitable[Server]]) -> None:
    async def closing(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answer(extra=b"connection: close\r\n"))
        await writer.drain()
        return True  # the server would go on; the client must not

    server = await serve(closing)
    pool = pool_for(server)
    for _ in range(3):
        assert (await get(pool))[1] == JSON
    assert (server.connections, pool.opened, pool.held) == (3, 3, 0)
    await pool.aclose()


async def test_pool_limit_bounds_open_connections(serve: Callable[..., Awaitable[Server]]) -> None:
    async def slow(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.05)
        return await keep_alive(server, reader, writer, n)

    server = await serve(slow)
    pool = pool_for(server, limit=2)
    results = await asyncio.gather(*(get(pool) for _ in range(8)))
    assert [body for _, body in results] == [JSON] * 8
    assert (server.most_open, server.connections, server.requests, pool.held) == (2, 2, 8, 0)
    await pool.aclose()


async def test_waiter_gives_up_at_its_deadline(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve(keep_alive)
    pool = pool_for(server, limit=1)
    loop = asyncio.get_running_loop()
    head = request_head("GET", "/", pool.host, "") + b"content-length: 0\r\n\r\n"
    held = await pool.request(head, b"", loop.time() + 5)
    with pytest.raises(TimeoutError):
        await pool.request(head, b"", loop.time() + 0.05)
    assert pool.held == 1
    while await held.next_chunk(loop.time() + 5):
        pass
    held.release()
    assert pool.held == 0
    assert (await get(pool))[1] == JSON and server.connections == 1  # the queue did not keep a dead waiter
    await pool.aclose()


async def test_a_queued_request_handed_a_connection_that_closed_meanwhile_takes_a_fresh_one(
        serve: Callable[..., Awaitable[Server]]) -> None:
    """An upstream that answers as if it kept the connection, then closes it: the request waiting for that
    connection got it closed, and failed unsent (a 502 and a breaker failure on a healthy model, when the pool
    is full, the gateway at its busiest). A connection never written to may be replaced."""
    async def answers_then_closes(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                  n: int) -> bool:
        await keep_alive(server, reader, writer, n)
        return False

    server = await serve(answers_then_closes)
    pool = pool_for(server, limit=1)
    results = await asyncio.gather(*(get(pool) for _ in range(4)))
    assert [body for _, body in results] == [JSON] * 4
    assert (server.requests, pool.held) == (4, 0)  # each sent once
    await pool.aclose()


async def test_a_reused_connection_dropped_after_the_request_is_written_does_not_send_it_again(
        serve: Callable[..., Awaitable[Server]]) -> None:
    """It was sent again on a fresh connection: an upstream that had taken the request (and billed it) before the
    connection ended got it twice, and neither the exchange log nor the attempts said so. The caller's retry is
    an attempt it records."""
    async def drops_second(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           n: int) -> bool:
        if n == 2:  # read whole, then the connection ends without an answer
            writer.transport.abort()
            return False
        return await keep_alive(server, reader, writer, n)

    server = await serve(drops_second)
    pool = pool_for(server)
    assert (await get(pool))[1] == JSON
    with pytest.raises(Disconnected):
        await get(pool)
    assert (server.connections, server.requests, pool.held) == (1, 2, 0)
    assert (await get(pool))[1] == JSON  # the next request opens a fresh connection
    assert (server.connections, server.requests, pool.held) == (2, 3, 0)
    await pool.aclose()


async def test_fresh_connection_dropped_before_headers_is_not_retried(
        serve: Callable[..., Awaitable[Server]]) -> None:
    async def drops(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.transport.abort()
        return False

    server = await serve(drops)
    pool = pool_for(server)
    with pytest.raises(Disconnected):
        await get(pool)
    assert (server.connections, server.requests, pool.held) == (1, 1, 0)
    await pool.aclose()


async def test_idle_connection_closes_after_keepalive(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve(keep_alive)
    pool = pool_for(server, keepalive=0.05)
    await get(pool)
    await asyncio.sleep(0.2)
    assert server.open_now == 0  # the pool closed it, the server saw the end
    await get(pool)
    assert server.connections == 2
    await pool.aclose()


async def test_slow_consumer_pauses_reading(serve: Callable[..., Awaitable[Server]]) -> None:
    size = 8 * 1024 * 1024

    async def big(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        return True

    server = await serve(big)
    pool = pool_for(server)
    loop = asyncio.get_running_loop()
    head = request_head("GET", "/", pool.host, "") + b"content-length: 0\r\n\r\n"
    response = await pool.request(head, b"", loop.time() + 5)
    await asyncio.sleep(0.3)
    waiting = response._buffered
    assert HIGH_WATER <= waiting < size // 4  # stopped reading instead of buffering the whole body
    total = 0
    while chunk := await response.next_chunk(loop.time() + 5):
        total += len(chunk)
    response.release()
    assert total == size and server.connections == 1
    await pool.aclose()


async def test_tls_with_sni_against_a_self_signed_server(serve: Callable[..., Awaitable[Server]]) -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    seen: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: seen.append(name)
    server = await serve(keep_alive, tls=server_tls)

    untrusted = pool_for(server, tls=ssl.create_default_context(), host="localhost")
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        await get(untrusted)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)
    pool = pool_for(server, tls=client_tls, host="localhost")
    for _ in range(2):
        assert (await get(pool))[1] == JSON
    assert seen[-1] == "localhost" and server.requests == 2 and pool.opened == 1
    await pool.aclose()
    await untrusted.aclose()


def spec(port: int, **overrides: int) -> ModelSpec:
    return ModelSpec(name="m", provider="openai", base_url=f"http://127.0.0.1:{port}/v1", model="m",
                     **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_body_is_refused_and_connection_dropped(serve: Callable[..., Awaitable[Server]],
                                                                chunked: bool) -> None:
    body = b'{"pad": "' + b"x" * 200_000 + b'"}'

    async def oversized(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        n: int) -> bool:
        if server.requests > 1:
            return await keep_alive(server, reader, writer, n)
        if not chunked:
            writer.write(answer(body))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            for start in range(0, len(body), 8192):
                piece = body[start:start + 8192]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    server = await serve(oversized)
    upstream = Upstream(spec(server.port, max_response_bytes=65536), f"http://127.0.0.1:{server.port}/v1", {})
    deadline = asyncio.get_running_loop().time() + 5
    with pytest.raises(UpstreamBadResponse, match="max_response_bytes"):
        await upstream.post_json(f"{upstream.base_url}/chat/completions", {}, deadline, lambda s, t: False)
    assert upstream.held_connections() == 0
    assert await upstream.post_json(f"{upstream.base_url}/chat/completions", {}, deadline,
                                    lambda s, t: False) == {"ok": True}
    assert server.connections == 2  # the half-read connection was not reused
    await upstream.aclose()


async def test_upstream_translates_refused_and_silent(serve: Callable[..., Awaitable[Server]]) -> None:
    async def silent(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await server.stopping.wait()
        return False

    server = await serve(silent)
    upstream = Upstream(spec(server.port), f"http://127.0.0.1:{server.port}/v1", {"authorization": "Bearer k"})
    loop = asyncio.get_running_loop()
    with pytest.raises(UpstreamTimeout):
        await upstream.post_json(f"{upstream.base_url}/x", {}, loop.time() + 0.1, lambda s, t: False)
    assert upstream.held_connections() == 0
    await upstream.aclose()
    refused = Upstream(spec(1), "http://127.0.0.1:1/v1", {})
    with pytest.raises(UpstreamUnavailable, match="cannot connect"):
        await refused.post_json(f"{refused.base_url}/x", {}, loop.time() + 1, lambda s, t: False)


async def test_sse_reassembles_events_split_across_chunks(serve: Callable[..., Awaitable[Server]]) -> None:
    stream = b"event: a\r\ndata: one\r\n\r\ndata: two\ndata: lines\n\n"

    async def sse(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(0, len(stream), 5):  # cut mid-line and mid-terminator
            writer.write(b"%x\r\n%s\r\n" % (len(stream[i:i + 5]), stream[i:i + 5]))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    server = await serve(sse)
    upstream = Upstream(spec(server.port), f"http://127.0.0.1:{server.port}/v1", {})
    deadline = asyncio.get_running_loop().time() + 5
    response = await upstream.open_stream(f"{upstream.base_url}/s", {}, deadline, lambda s, t: False)
    events = [pair async for pair in upstream.sse(response, deadline)]
    assert events == [("a", b"one"), ("", b"two\nlines")]
    assert upstream.held_connections() == 0
    await upstream.aclose()


@pytest.mark.parametrize("last_chunk_after_s", [0.2, None])
async def test_a_stream_read_to_done_keeps_its_connection_while_its_last_chunk_comes_late(
        serve: Callable[..., Awaitable[Server]], monkeypatch: pytest.MonkeyPatch,
        last_chunk_after_s: float | None) -> None:
    """A server that writes the chunked body's end on its own, after `[DONE]` (as ASGI servers do): the
    stream ends at `[DONE]`, and the connection is reused once the end arrives, or closed if it never does."""
    monkeypatch.setattr(_http, "TAIL_S", 0.5)
    events = b"".join(b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % word
                      for word in (b"one", b"two")) + b"data: [DONE]\n\n"

    async def done_then_end(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"%x\r\n%s\r\n" % (len(events), events))
        await writer.drain()
        if last_chunk_after_s is None:
            await server.stopping.wait()
            return False
        await asyncio.sleep(last_chunk_after_s)
        writer.write(b"0\r\n\r\n")
        return True

    server = await serve(done_then_end)
    provider = OpenAIProvider(spec(server.port), f"http://127.0.0.1:{server.port}/v1")
    loop = asyncio.get_running_loop()
    request = ChatRequest("m", [{"role": "user", "content": "hi"}], {})
    for _ in range(2):
        began = loop.time()
        texts = [chunk.text async for chunk in provider.stream(request, loop.time() + 5)]
        assert texts == ["one", "two"]
        assert loop.time() - began < 0.15  # the answer did not wait for the body's end
        await asyncio.sleep(0.6)  # past the end, or past `TAIL_S`
        assert provider.upstream.held_connections() == 0
    assert server.connections == (1 if last_chunk_after_s is not None else 2)
    await provider.aclose()


@pytest.mark.parametrize("interim", [b"HTTP/1.1 100 Continue\r\n\r\n",
                                     b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"])
async def test_an_interim_answer_is_skipped_and_each_request_gets_its_own_answer(
        serve: Callable[..., Awaitable[Server]], interim: bytes) -> None:
    """The 1xx was taken for the answer, and the real one, still coming, was read by the next request sent on
    that connection: one caller got another's answer."""
    async def echo_late(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        n: int) -> bool:
        writer.write(interim)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(answer(b'{"n": %d}' % server.requests))
        await writer.drain()
        return True

    server = await serve(echo_late)
    upstream = Upstream(spec(server.port), f"http://127.0.0.1:{server.port}/v1", {})
    deadline = asyncio.get_running_loop().time() + 5
    got = [await upstream.post_json(f"{upstream.base_url}/chat", {}, deadline, lambda s, t: False) for _ in range(3)]
    assert got == [{"n": 1}, {"n": 2}, {"n": 3}] and server.connections == 1
    await upstream.aclose()


async def test_a_response_head_past_its_bound_is_refused_without_reading_it_all(
        serve: Callable[..., Awaitable[Server]]) -> None:
    async def huge_head(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-big: ")
        for _ in range(64):
            writer.write(b"a" * 65536)  # 4 MiB of one header, never ended
            await writer.drain()
        await server.stopping.wait()
        return False

    server = await serve(huge_head)
    upstream = Upstream(spec(server.port), f"http://127.0.0.1:{server.port}/v1", {})
    deadline = asyncio.get_running_loop().time() + 5
    with pytest.raises(UpstreamUnavailable, match="head is over 64 KiB"):
        await upstream.post_json(f"{upstream.base_url}/chat", {}, deadline, lambda s, t: False)
    await upstream.aclose()


@pytest.mark.parametrize(("head", "words"), [
    (b"HTTP/1.1 302 Found\r\nlocation: https://api.example.com/v1/chat\r\ncontent-length: 0\r\n\r\n",
     "answered 302, a redirect to `https://api.example.com/v1/chat`: point the model's `base_url`"),
    (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: 2\r\n\r\n{}",
     "answered `Content-Encoding: gzip`, though asked for none"),
])
async def test_a_redirect_or_an_encoded_answer_says_so(serve: Callable[..., Awaitable[Server]], head: bytes,
                                                       words: str) -> None:
    async def odd(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(head)
        await writer.drain()
        return True

    server = await serve(odd)
    upstream = Upstream(spec(server.port), f"http://127.0.0.1:{server.port}/v1", {})
    deadline = asyncio.get_running_loop().time() + 5
    with pytest.raises((UpstreamBadResponse, UpstreamRejected)) as caught:
        await upstream.post_json(f"{upstream.base_url}/chat", {}, deadline, lambda s, t: False)
    assert words in caught.value.message
    assert isinstance(caught.value, UpstreamRejected) == head.startswith(b"HTTP/1.1 3")  # no retry follows it
    assert "accept-encoding: identity" in upstream._header_block  # what every request asks for
    await upstream.aclose()


def _sse_server(body: bytes, then: Callable[[Server], Awaitable[None]] | None = None) -> Handler:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 7):
            writer.write(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]))
        await writer.drain()
        if then is not None:
            await then(server)
            return False
        writer.write(b"0\r\n\r\n")
        return True

    return handler


async def test_sse_reads_lines_ended_by_cr_alone_and_an_event_name_that_is_not_utf8(
        serve: Callable[..., Awaitable[Server]]) -> None:
    stream = b"event: \xff\xfe\rdata: one\r\rdata: two\r\ndata: lines\r\n\r\n"
    server = await serve(_sse_server(stream))
    upstream = Upstream(spec(server.port), f"http://127.0.0.1:{server.port}/v1", {})
    deadline = asyncio.get_running_loop().time() + 5
    response = await upstream.open_stream(f"{upstream.base_url}/s", {}, deadline, lambda s, t: False)
    events = [pair async for pair in upstream.sse(response, deadline)]
    assert events == [("\ufffd\ufffd", b"one"), ("", b"two\nlines")]
    await upstream.aclose()


async def test_a_stream_that_only_pings_after_its_first_event_stalls_after_stream_idle_ms(
        serve: Callable[..., Awaitable[Server]]) -> None:
    async def ping_forever(server: Server) -> None:
        writer = server.writers[-1]
        while not server.stopping.is_set():
            writer.write(b"%x\r\n%s\r\n" % (len(b": ping\n\n"), b": ping\n\n"))
            await writer.drain()
            await asyncio.sleep(0.05)

    server = await serve(_sse_server(b"data: one\n\n", ping_forever))
    upstream = Upstream(spec(server.port, stream_idle_ms=300), f"http://127.0.0.1:{server.port}/v1", {})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    response = await upstream.open_stream(f"{upstream.base_url}/s", {}, deadline, lambda s, t: False)
    events, began = [], loop.time()
    with pytest.raises(UpstreamTimeout, match=r"no event for 0\.3s"):
        async for pair in upstream.sse(response, deadline):
            events.append(pair)
    assert events == [("", b"one")] and loop.time() - began < 1.0
    await upstream.aclose()


async def test_a_consumer_slower_than_stream_idle_ms_is_no_stall_of_the_upstream(
        serve: Callable[..., Awaitable[Server]]) -> None:
    """Events waiting in the buffers while the consumer (a client slow to read) holds the one before are
    not an upstream gone silent: a stream so read was cut as stalled, and the model blamed."""
    server = await serve(_sse_server(b"".join(b"data: %d\n\n" % i for i in range(5))))
    upstream = Upstream(spec(server.port, stream_idle_ms=200), f"http://127.0.0.1:{server.port}/v1", {})
    deadline = asyncio.get_running_loop().time() + 5
    response = await upstream.open_stream(f"{upstream.base_url}/s", {}, deadline, lambda s, t: False)
    events = []
    async for pair in upstream.sse(response, deadline):
        events.append(pair)
        await asyncio.sleep(0.3)
    assert events == [("", b"%d" % i) for i in range(5)]
    await upstream.aclose()


async def test_an_endless_stream_line_is_refused_at_max_response_bytes(serve: Callable[..., Awaitable[Server]]) -> None:
    async def endless(server: Server) -> None:
        writer = server.writers[-1]
        piece = b"x" * 65536
        while not server.stopping.is_set() and not writer.is_closing():
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()

    server = await serve(_sse_server(b"data: ", endless))
    upstream = Upstream(spec(server.port, max_response_bytes=1 << 20), f"http://127.0.0.1:{server.port}/v1", {})
    deadline = asyncio.get_running_loop().time() + 5
    response = await upstream.open_stream(f"{upstream.base_url}/s", {}, deadline, lambda s, t: False)
    with pytest.raises(UpstreamBadResponse, match="stream line over `max_response_bytes`"):
        async for _ in upstream.sse(response, deadline):
            pass
    await upstream.aclose()


ANTHROPIC_EVENTS = (
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}'
    b'\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":2}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')
GEMINI_EVENTS = (b'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},"finishReason":"STOP"}],'
                 b'"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":2}}\n\n')


@pytest.mark.parametrize(("provider", "events"), [("anthropic", ANTHROPIC_EVENTS), ("gemini", GEMINI_EVENTS)])
async def test_a_stream_whose_last_event_came_ends_there_though_the_body_stays_open(
        serve: Callable[..., Awaitable[Server]], provider: str, events: bytes) -> None:
    """It waited for the body's end, and after `stream_idle_ms` turned a whole answer into an error."""
    from laneway.providers.anthropic import AnthropicProvider
    from laneway.providers.gemini import GeminiProvider

    async def hold(server: Server) -> None:
        await server.stopping.wait()

    server = await serve(_sse_server(events, hold))
    model = ModelSpec(name="m", provider=provider, base_url=f"http://127.0.0.1:{server.port}", model="m",
                      stream_idle_ms=2000)
    adapter = (AnthropicProvider if provider == "anthropic" else GeminiProvider)(model, model.base_url)
    loop = asyncio.get_running_loop()
    began = loop.time()
    chunks = [chunk async for chunk in adapter.stream(ChatRequest("m", [{"role": "user", "content": "hi"}], {}),
                                                      loop.time() + 5)]
    assert "".join(c.text for c in chunks) == "Hi" and chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    assert loop.time() - began < 1.0
    await adapter.aclose()
