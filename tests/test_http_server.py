"""Laneway's HTTP/1.1 server (`laneway.server._http11`) on real loopback sockets, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from laneway.server._http11 import MAX_HEAD_BYTES, Connection, HttpServer


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the method, path, query and whole body; `/stream` streams, `/boom` fails,
    `/slow` waits `?s` seconds (or until the client leaves, and then remembers it)."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("boom")
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for piece in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/half":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("failed mid-answer")
    if path == "/slow":
        seconds = float(scope["query_string"].decode().removeprefix("s="))
        waiter = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait([waiter], timeout=seconds)
        if done:
            EVENTS.append(waiter.result()["type"])
            return
        waiter.cancel()
    answer = b"%s %s %s %s" % (scope["method"].encode(), path.encode(), scope["query_string"], body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


EVENTS: list[str] = []


@contextlib.asynccontextmanager
async def running(app: Any = echo_app, **options: Any) -> AsyncIterator[HttpServer]:
    server = HttpServer(app, "127.0.0.1", 0, handle_signals=False, **options)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.005)
        if task.done():
            task.result()
    try:
        yield server
    finally:
        server.exit()
        await asyncio.wait_for(task, 10)


async def connect(server: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.bound_ports[0])


async def only_answer(server: HttpServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends `data` on a new connection: the one answer, after which the connection must end."""
    reader, writer = await connect(server)
    writer.write(data)
    answer = await read_response(reader)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    return answer


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-cased names) and body, by length or chunked."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    headers = {name.lower(): value for name, value in headers.items()}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            body += await reader.readexactly(size + 2)
            body = body[:-2]
            if size == 0:
                break
    else:
        body = b""
    return status, headers, body


def said(body: bytes, code: str | None = None) -> bytes:
    """The message of an error the server answers on its own, in OpenAI's error shape (its `code` checked)."""
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code", "param"} and (code is None or error["code"] == code), error
    return str(error["message"]).encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_keep_alive_answers_many_requests_on_one_connection_with_length_and_date() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        for i in range(3):
            writer.write(post(f"/echo?i={i}", b"hello %d" % i))
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, b"POST /echo i=%d hello %d" % (i, i))
            assert headers["content-length"] == str(len(body))
            assert "transfer-encoding" not in headers and "connection" not in headers
            assert headers["date"].endswith(" GMT")
        writer.close()


async def test_a_stream_is_chunked_and_each_piece_leaves_as_it_is_sent() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(post("/stream", b""))
        status, headers, body = await read_response(reader)
        assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"one two three")
        writer.write(post("/echo", b"after"))  # the connection is still usable
        assert (await read_response(reader))[2] == b"POST /echo  after"
        writer.close()


async def test_a_streams_head_leaves_with_its_first_piece_or_at_the_end_of_the_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    write = Connection.write

    def recorded(conn: Connection, data: bytes) -> None:
        writes.append(data)
        write(conn, data)

    async def late_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await asyncio.sleep(0.5)  # the head must not wait for the body
            await send({"type": "http.response.body", "body": b"late"})

    monkeypatch.setattr(Connection, "write", recorded)
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(post("/stream", b""))
        assert (await read_response(reader))[2] == b"one two three"
        writer.close()
        assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n4\r\none \r\n")
    async with running(late_app) as server:
        reader, writer = await connect(server)
        writer.write(post("/", b""))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.4)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked\r\n" in head
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"4\r\nlate\r\n0\r\n\r\n"
        writer.close()


async def test_a_chunked_request_body_is_read_whole() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        assert (await read_response(reader))[2] == b"POST /echo  hello world"
        writer.close()


async def test_a_large_body_arrives_whole_through_the_read_pause() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, past the point where the server stops reading
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(post("/echo", payload))
        status, _, body = await read_response(reader)
        assert status == 200 and body == b"POST /echo  " + payload
        writer.close()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(post("/slow?s=0.05", b"first") + post("/echo", b"second") + post("/echo", b"third"))
        bodies = [(await read_response(reader))[2] for _ in range(3)]
        assert bodies == [b"POST /slow s=0.05 first", b"POST /echo  second", b"POST /echo  third"]
        writer.close()


async def test_a_client_that_pipelines_without_reading_gets_no_more_answers_until_it_reads() -> None:
    answered: list[str] = []

    async def large(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        answered.append(scope["path"])
        body = scope["path"].encode().ljust(1 << 20, b".")  # 1 MiB
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async with running(large) as server:
        reader, writer = await asyncio.open_connection(sock=await _small_window(server))
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(40)))
        await asyncio.sleep(0.5)
        # The kernel's buffers and the transport's hold a few answers; the rest wait, unmade, for the client.
        assert len(answered) <= 4, len(answered)
        for i in range(40):
            status, _, body = await read_response(reader)
            assert status == 200 and body.startswith(b"/%d." % i) and len(body) == 1 << 20
        assert answered == [f"/{i}" for i in range(40)]
        writer.close()

    answered.clear()
    async with running(large, keep_alive_s=0.3) as server:  # one that never reads is let go after a while
        reader, writer = await asyncio.open_connection(sock=await _small_window(server))
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % i for i in range(40)))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not server.state.connections:
                break
        assert not server.state.connections and len(answered) <= 4
        writer.close()


async def test_a_stream_its_client_stops_reading_is_let_go_after_a_while() -> None:
    """The answer waited for the client to read on, for ever: a stream's upstream call and its gate slot were
    held as long as the client kept the connection open without reading (100 s and more)."""
    ended: list[str] = []

    async def endless(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Sends until it hears its client leave (`http.disconnect`), as the gateway's streams do."""
        if scope["type"] != "http":
            return
        await receive()  # the request (no body)
        left = asyncio.ensure_future(receive())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        while not left.done():
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            await asyncio.sleep(0)
        ended.append(left.result()["type"])

    async with running(endless, keep_alive_s=0.3) as server:
        sock = await _small_window(server)
        sock.send(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        for _ in range(60):
            await asyncio.sleep(0.05)
            if not server.state.connections:
                break
        assert not server.state.connections  # let go: the client read nothing for a whole keep-alive period
        for _ in range(40):
            await asyncio.sleep(0.05)
            if ended:
                break
        sock.close()
    assert ended == ["http.disconnect"]  # and the stream heard it (the gateway's: its upstream call, gate slot)


async def _small_window(server: HttpServer) -> socket.socket:
    """A connected client socket that takes in little before its reader reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.bound_ports[0]))
    return sock


async def test_expect_continue_gets_its_interim_answer_before_the_body_is_sent() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"body")
        assert (await read_response(reader))[2] == b"POST /echo  body"
        writer.close()


@pytest.mark.parametrize("request_bytes", [
    post("/echo", b"x", "connection: close\r\n"),
    b"POST /echo HTTP/1.0\r\ncontent-length: 1\r\n\r\nx",
])
async def test_connection_close_and_http_1_0_end_the_connection_after_the_answer(request_bytes: bytes) -> None:
    async with running() as server:
        status, headers, body = await only_answer(server, request_bytes)
        assert (status, headers["connection"], body) == (200, "close", b"POST /echo  x")


async def test_a_malformed_request_gets_a_400_that_says_why_and_the_connection_closes() -> None:
    async with running() as server:
        status, headers, body = await only_answer(server, b"NOT HTTP AT ALL\r\n\r\n")
        assert status == 400 and headers["connection"] == "close"
        assert said(body, "bad_http_request").startswith(b"malformed HTTP request")


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [
    (b"FOO /healthz HTTP/1.1\r\nhost: x\r\n\r\n", 501, b"unknown request method; methods are upper-case"),
    (b"get /healthz HTTP/1.1\r\nhost: x\r\n\r\n", 501, b"unknown request method"),
    (b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n", 405,
     b"CONNECT is not served: Laneway is not a forward proxy"),
    (b"GET http://h:99999/x HTTP/1.1\r\nhost: x\r\n\r\n", 400, b"invalid request target `http://h:99999/x`"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, b"HTTP/2 is not spoken here: send HTTP/1.1"),
    (b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501,
     b"transfer coding `gzip, chunked` is not supported: send the body uncompressed"),
])
async def test_a_request_line_or_framing_not_served_gets_an_answer_that_says_so(
        request_bytes: bytes, status: int, reason: bytes) -> None:
    async with running() as server:
        got, headers, body = await only_answer(server, request_bytes)
        assert (got, headers["connection"]) == (status, "close") and said(body).startswith(reason), body


async def test_an_oversized_head_gets_a_431() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\nx-big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 431 and str(MAX_HEAD_BYTES).encode() in said(body, "headers_too_large")
        writer.close()


async def test_an_app_failure_before_the_answer_is_a_500_and_after_it_cuts_the_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="laneway.http")
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(post("/boom", b""))
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"], said(body, "internal_error")) == (
            500, "close", b"internal error; see the gateway log")
        writer.close()
        reader, writer = await connect(server)
        writer.write(post("/half", b""))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"transfer-encoding: chunked" in head
        rest = await asyncio.wait_for(reader.read(), 5)  # the connection closes without the last chunk
        assert rest == b"7\r\npartial\r\n"
        writer.close()


async def test_a_header_with_a_line_break_is_never_sent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="laneway.http")

    async def splitting(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"x-echo", b"a\r\nset-cookie: stolen=1"), (b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    async with running(splitting) as server:
        reader, writer = await connect(server)
        writer.write(post("/", b""))
        status, headers, body = await read_response(reader)
        assert (status, said(body, "internal_error")) == (500, b"internal error; see the gateway log")
        assert "set-cookie" not in headers
        writer.close()


async def test_the_app_hears_the_client_leave() -> None:
    EVENTS.clear()
    async with running() as server:
        _, writer = await connect(server)
        writer.write(post("/slow?s=5", b""))
        await asyncio.sleep(0.1)
        writer.close()
        for _ in range(100):
            if EVENTS:
                break
            await asyncio.sleep(0.02)
        assert EVENTS == ["http.disconnect"]


async def test_every_listener_hears_the_client_leave() -> None:
    heard: list[str] = []

    async def two_listeners(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()  # the (empty) body
        results = await asyncio.gather(receive(), receive())
        heard.extend(message["type"] for message in results)

    async with running(two_listeners) as server:
        _, writer = await connect(server)
        writer.write(post("/", b""))
        await asyncio.sleep(0.1)
        writer.close()
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard == ["http.disconnect", "http.disconnect"]


async def test_head_answers_without_a_body() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"HEAD /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 12" in head  # "HEAD /echo  "
        writer.write(post("/echo", b"next"))  # nothing but the head came before this answer
        assert (await read_response(reader))[2] == b"POST /echo  next"
        writer.close()


async def test_an_idle_connection_is_closed_after_the_keep_alive_time() -> None:
    async with running(keep_alive_s=0.2) as server:
        reader, writer = await connect(server)
        writer.write(post("/echo", b"x"))
        await read_response(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_a_stop_lets_requests_in_flight_finish_and_closes_idle_connections() -> None:
    server = HttpServer(echo_app, "127.0.0.1", 0, handle_signals=False, grace_s=5)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.005)
    port = server.bound_ports[0]
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_writer.write(post("/echo", b"x"))
    await read_response(idle_reader)
    busy_writer.write(post("/slow?s=0.3", b"late"))
    await asyncio.sleep(0.05)
    server.exit()
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle: closed at once
    status, headers, body = await read_response(busy_reader)  # in flight: answered, then closed
    assert (status, headers["connection"], body) == (200, "close", b"POST /slow s=0.3 late")
    await asyncio.wait_for(task, 5)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # no longer listening
    busy_writer.close()
    idle_writer.close()


async def test_a_request_still_running_after_the_grace_period_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def endless(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server = HttpServer(endless, "127.0.0.1", 0, handle_signals=False, grace_s=0.2)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.005)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_ports[0])
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await asyncio.sleep(0.05)
    server.exit()
    await asyncio.wait_for(task, 5)
    assert cancelled.is_set()
    status, headers, body = await read_response(reader)  # told, so that it can retry elsewhere
    assert (status, headers["connection"], said(body, "shutting_down")) == (
        503, "close", b"the server stopped before the answer")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_the_lifespan_runs_around_the_server() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                seen.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return

    async with running(app):
        assert seen == ["lifespan.startup"]
    assert seen == ["lifespan.startup", "lifespan.shutdown"]


async def answer_unread(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers at once without reading the body, as a gateway refusing a request does (401, 413)."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/listen":  # a stream that then listens for the client, body unread
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        listening = asyncio.ensure_future(receive())
        await asyncio.sleep(0.05)
        listening.cancel()
        await send({"type": "http.response.body", "body": b"last"})
        return
    if scope["path"] == "/framing":
        status = int(scope["query_string"].decode())
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"short"})
        return
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-length", b"6")]})
    await send({"type": "http.response.body", "body": b"nokey\n"})


@pytest.mark.parametrize("upgrade", ["h2c", "websocket"])
async def test_an_upgrade_request_is_answered_as_a_plain_one_and_the_connection_ends(upgrade: str) -> None:
    async with running() as server:
        status, headers, body = await only_answer(server, (
            f"GET /echo HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: {upgrade}\r\n"
            "http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n").encode())
        assert (status, headers["connection"], body) == (200, "close", b"GET /echo  ")


async def test_an_upgrade_requests_body_reaches_the_app_whole() -> None:
    """`curl --http2` on an `http://` URL sends `Upgrade: h2c` with its POST: the body, in the same read as
    the head or after it, in pieces, is the request's."""
    head = (b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
            b"http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\ncontent-length: 300000\r\n\r\n")
    body = b"".join(b"%06d" % i for i in range(50000))
    async with running() as server:
        status, headers, answer = await only_answer(server, head + body + b"GET /next HTTP/1.1\r\n\r\n")
        assert (status, headers["connection"], answer) == (200, "close", b"POST /echo  " + body)
        reader, writer = await connect(server)
        writer.write(head + body[:10])
        for start in range(10, len(body), 70000):
            await asyncio.sleep(0.01)
            writer.write(body[start:start + 70000])
        status, headers, answer = await read_response(reader)
        assert (status, answer) == (200, b"POST /echo  " + body)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_an_upgrade_request_with_a_chunked_body_is_refused_with_what_to_do() -> None:
    async with running() as server:
        status, _, answer = await only_answer(server, (
            b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
            b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
        assert status == 400 and b"must send its body with a `content-length`" in answer, answer


async def test_bytes_after_a_closing_request_do_not_cost_it_its_answer() -> None:
    async with running() as server:
        status, headers, body = await only_answer(
            server, post("/slow?s=0.05", b"a", "connection: close\r\n") + post("/echo", b"b"))
        assert (status, headers["connection"], body) == (200, "close", b"POST /slow s=0.05 a")


async def test_bad_bytes_behind_a_good_request_get_a_400_after_its_answer() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(post("/slow?s=0.05", b"good") + b"BOGUS\r\n\r\n")
        first = await read_response(reader)
        second = await read_response(reader)
        assert (first[0], first[2]) == (200, b"POST /slow s=0.05 good")
        assert second[0] == 400 and second[1]["connection"] == "close" and second[1]["date"].endswith(" GMT")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_an_answer_before_the_body_is_read_reaches_the_client_whole() -> None:
    body = b"x" * (8 * 1024 * 1024)
    async with running(answer_unread) as server:
        reader, writer = await connect(server)
        writer.write(post("/v1/completions", body))
        sending = asyncio.ensure_future(writer.drain())
        status, headers, answer = await read_response(reader)
        assert (status, headers["connection"], answer) == (401, "close", b"nokey\n")
        await asyncio.wait_for(sending, 10)  # the rest of the body was read (and dropped), not refused
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


async def test_an_http_1_0_client_gets_a_stream_ended_by_the_close_and_no_chunks() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"POST /stream HTTP/1.0\r\ncontent-length: 0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head and b"connection: close" in head
        assert body == b"one two three"
        writer.close()


async def test_an_http_1_0_keep_alive_is_kept_and_said_when_the_length_is_known() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        for _ in range(2):
            writer.write(b"POST /echo HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\nx")
            status, headers, body = await read_response(reader)
            assert (status, headers["connection"], body) == (200, "keep-alive", b"POST /echo  x")
        writer.close()


async def test_no_interim_continue_lands_inside_a_response_already_begun() -> None:
    async with running(answer_unread) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /listen HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"firstlast")
        writer.close()


async def test_a_header_line_that_never_ends_is_refused_before_it_fills_the_memory() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\nx-big: ")
        with contextlib.suppress(ConnectionError):  # the server stops reading, and closes
            for _ in range(64):  # 64 x 16 KiB, well past the limit, and no line end
                writer.write(b"a" * 16384)
                await asyncio.wait_for(writer.drain(), 5)
        with contextlib.suppress(ConnectionError):
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
        writer.close()


async def test_a_head_trickled_a_byte_at_a_time_is_closed_after_the_keep_alive_time() -> None:
    async with running(keep_alive_s=0.3) as server:
        reader, writer = await connect(server)
        started = asyncio.get_running_loop().time()
        for byte in b"GET / HTTP/1.1\r\nx-slow: " + b"a" * 40:
            if reader.at_eof():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert asyncio.get_running_loop().time() - started < 1.0
        writer.close()


async def test_a_body_that_stops_arriving_gets_a_408_after_the_keep_alive_time() -> None:
    """The request hears its client leave, and what the app sends then goes nowhere."""
    heard: list[tuple[str, int]] = []

    async def reader_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            heard.append((message["type"], len(message.get("body", b""))))
            if message["type"] == "http.disconnect":
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async with running(reader_app, keep_alive_s=0.3) as server:
        reader, writer = await connect(server)
        started = asyncio.get_running_loop().time()
        writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        for _ in range(10):  # bytes keep coming for longer than the keep-alive time: not stalled
            await asyncio.sleep(0.05)
            writer.write(b"x")
        status, headers, body = await read_response(reader)
        assert status == 408 and headers["connection"] == "close"
        assert said(body, "request_timeout") == b"the request's body stopped arriving for 0.3 s"
        assert 0.75 < asyncio.get_running_loop().time() - started < 2.0
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and nothing after it
        writer.close()
    assert heard[-1] == ("http.disconnect", 0) and sum(n for _, n in heard) == 20


async def test_a_body_trickled_past_the_request_deadline_gets_a_408() -> None:
    """Bytes every 0.05 s never leave the connection idle for `keep_alive_s`; the request must still arrive
    whole within `request_deadline_s` of its first byte. The bytes stop just before the deadline (one
    written after the answer would reset the connection under it), and the idle time would end the
    request 0.3 s later, with another message."""
    loop = asyncio.get_running_loop()
    async with running(echo_app, keep_alive_s=0.3, request_deadline_s=0.6) as server:
        reader, writer = await connect(server)
        started = loop.time()
        writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
        while loop.time() - started < 0.5:
            await asyncio.sleep(0.05)
            writer.write(b"x")
        status, headers, body = await read_response(reader)
        assert status == 408 and headers["connection"] == "close"
        assert said(body, "request_timeout") == b"the request did not arrive whole within 0.6 s of its first byte"
        assert 0.55 < loop.time() - started < 0.8
        writer.close()


@pytest.mark.parametrize("status", [200, 204])
async def test_a_body_that_breaks_the_framing_is_not_sent(status: int, caplog: pytest.LogCaptureFixture) -> None:
    """A body shorter than its `content-length` would swallow the next answer: the connection closes
    instead. A 204 carries no body whatever the app sends."""
    caplog.set_level(logging.CRITICAL, logger="laneway.http")
    async with running(answer_unread) as server:
        reader, writer = await connect(server)
        writer.write(f"GET /framing?{status} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        if status == 200:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the head waited for the body, which was wrong
        else:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 204")
            writer.write(post("/framing", b""))  # the next answer starts right after the head
            assert (await asyncio.wait_for(reader.read(12), 5)).startswith(b"HTTP/1.1 ")
        writer.close()


async def test_an_absolute_target_without_a_path_is_the_root() -> None:
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"GET http://example.com HTTP/1.1\r\nhost: example.com\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"GET /  ")
        writer.close()


STOPPABLE = """
import asyncio, sys
from laneway.server._http11 import HttpServer

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                print("lifespan shutdown", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
            await send({"type": "lifespan.startup.complete"})
    await asyncio.sleep(3600)  # a request that never ends

async def main():
    server = HttpServer(app, "127.0.0.1", 0, grace_s=60)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print(server.bound_ports[0], flush=True)
    await task

asyncio.run(main())
"""


def test_a_second_ctrl_c_cuts_the_grace_period_short_and_the_stop_stays_graceful() -> None:
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-c", STOPPABLE], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            time.sleep(0.3)
            assert process.poll() is None  # the first waits for the request in flight
            started = time.monotonic()
            process.send_signal(signal.SIGINT)
            assert process.wait(10) == 0
            assert time.monotonic() - started < 5
        assert "lifespan shutdown" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


WORKER_STOP = """
import asyncio, os, signal
from laneway.server._http11 import HttpServer

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].replace("lifespan.", "")
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return

async def main():
    server = HttpServer(app, "127.0.0.1", 0, second_sigint_forces=False)  # as a worker's
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)  # the stop
    await task
    os.kill(os.getpid(), signal.SIGINT)  # the same signal again, while what was recorded is written
    await asyncio.sleep(0.2)
    print("written", flush=True)

asyncio.run(main())
"""


def test_a_workers_signal_that_comes_again_after_its_server_stopped_does_not_cut_what_follows() -> None:
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WORKER_STOP], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert (done.returncode, done.stdout, done.stderr) == (0, "written\n", "")


async def test_a_line_break_in_a_path_forges_no_line_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise RuntimeError("boom")

    caplog.set_level(logging.ERROR, logger="laneway.http")
    async with running(failing) as server:
        status, _, _ = await only_answer(server, b"GET /x%0Alaneway:%20forged HTTP/1.1\r\nhost: x\r\n"
                                                 b"connection: close\r\n\r\n")
    assert status == 500
    [record] = [r for r in caplog.records if "the app failed" in r.getMessage()]
    assert "\n" not in record.getMessage() and "forged" in record.getMessage()
