"""A client that hangs up mid-stream: the gateway stops the upstream stream at once (no tokens
generated for nobody), and logs the exchange as `client_disconnected` with what it cost so far.
A client that gives up waiting for a whole answer: the gateway drops the upstream call (and its
gate slot) and logs the same."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from laneway.telemetry._summary import summarize
from laneway.telemetry._window import rows_of

PIECES = 100
GAP_S = 0.05  # the whole answer takes 5 s


class SlowStream(ThreadingHTTPServer):
    """An OpenAI-compatible upstream that streams `PIECES` pieces, `GAP_S` apart; it notes how many
    it wrote before its reader went away."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.written: list[int] = []
        self.ended = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SlowStream

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if not request.get("stream"):
            self._answer_slowly()
            return
        if request["messages"][-1]["content"] == "slow start":  # the first piece after the whole 5 s
            began = time.monotonic()
            if self._hung_up_within(PIECES * GAP_S):
                self.server.written.append(round((time.monotonic() - began) * 1000))
                self.server.ended.set()
                return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        written = 0
        try:
            for i in range(PIECES):
                chunk = {"choices": [{"index": 0, "delta": {"content": f" word{i}"}, "finish_reason": None}]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
                written += 1
                time.sleep(GAP_S)
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:
            pass  # the gateway closed the connection
        finally:
            self.server.written.append(written)
            self.server.ended.set()

    def _hung_up_within(self, seconds: float) -> bool:
        """Wait `seconds`; True as soon as the gateway closes the connection."""
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                return True
        return False

    def _answer_slowly(self) -> None:
        """The whole answer after `PIECES * GAP_S` seconds, unless the gateway hangs up first."""
        began = time.monotonic()
        try:
            if self._hung_up_within(PIECES * GAP_S):
                return
            answer = {"id": "x", "object": "chat.completion", "model": "slow",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "late"},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass
        finally:
            self.server.written.append(round((time.monotonic() - began) * 1000))
            self.server.ended.set()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def live() -> Iterator[tuple[LiveGateway, RecordingSink, SlowStream]]:
    upstream = SlowStream()
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    config = f"""
models:
  slow:
    provider: openai
    base_url: {upstream.url}
    model: slow
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
    stream_idle_ms: 10000
    gate: {{max_concurrency: 1, queue_timeout_ms: 10000}}
routes:
- target: slow
  deadline_ms: 30000
"""
    sink = RecordingSink()
    try:
        with live_gateway(config, None, telemetry=sink) as gateway:
            yield gateway, sink, upstream
    finally:
        upstream.shutdown()
        upstream.server_close()


def test_a_client_that_hangs_up_mid_stream_stops_the_upstream_and_is_logged(
        live: tuple[LiveGateway, RecordingSink, SlowStream]) -> None:
    gateway, sink, upstream = live
    connection = http.client.HTTPConnection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]), timeout=10)
    body = json.dumps({"model": "laneway", "stream": True, "messages": [{"role": "user", "content": "tell me"}]})
    connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    response = connection.getresponse()
    request_id = response.getheader("x-request-id")
    assert response.status == 200
    got = b""
    while got.count(b"data: {") < 3:
        got += response.read1(4096)
    started = time.monotonic()
    connection.sock.close()  # the client goes away after three pieces
    connection.close()

    assert upstream.ended.wait(3), "the upstream kept streaming to nobody"
    assert upstream.written[0] < PIECES / 2
    deadline = time.monotonic() + 3
    while not [e for e in sink.exchanges if e.request_id == request_id]:
        assert time.monotonic() < deadline, "the exchange was never recorded"
        time.sleep(0.02)
    exchange = sink.by_id(request_id)
    assert exchange.outcome == "client_disconnected" and exchange.status == 499
    assert exchange.latency_ms < 1000 * (time.monotonic() - started + 1.5)
    attempt = exchange.attempts[0]
    assert attempt.outcome == "client_disconnected" and "disconnected after" in attempt.error
    assert attempt.completion_tokens >= 3 and exchange.cost_usd > 0  # what was generated is billed
    figures = summarize(rows_of([exchange], simulated=False), (), None, None)["models"]["slow"]
    assert figures["requests"] == 1 and figures["errors"] == 0  # the client's doing, not the model's


@pytest.mark.parametrize("stream", [False, True], ids=["whole answer", "stream before its first piece"])
def test_a_client_that_gives_up_waiting_stops_the_upstream_and_is_logged(
        live: tuple[LiveGateway, RecordingSink, SlowStream], stream: bool) -> None:
    gateway, sink, upstream = live
    connection = socket.create_connection(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])), timeout=10)
    body = json.dumps({"model": "laneway", "stream": stream,
                       "messages": [{"role": "user", "content": "slow start"}]}).encode()
    connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: laneway\r\ncontent-type: application/json\r\n"
                       b"x-request-id: gave-up\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(0.5)
    connection.close()  # the client's own timeout, long before the answer starts at 5 s

    assert gateway.gateway is not None
    gate = gateway.gateway.runtime.gates["slow"]
    assert gate.in_flight == 1
    assert upstream.ended.wait(4), "the gateway kept waiting for an answer nobody would read"
    assert upstream.written[0] < 1000 * PIECES * GAP_S * 0.6  # hung up on within about WATCH_AFTER_S
    assert gate.in_flight == 0  # the slot is free for a client that is still there
    deadline = time.monotonic() + 3
    while not [e for e in sink.exchanges if e.request_id == "gave-up"]:
        assert time.monotonic() < deadline, "the exchange was never recorded"
        time.sleep(0.02)
    exchange = sink.by_id("gave-up")
    assert exchange.outcome == "client_disconnected" and exchange.status == 499
    assert "before the answer" in (exchange.error or "")
    [attempt] = exchange.attempts
    assert attempt.outcome == "client_disconnected" and 900 < attempt.latency_ms < 2500
    # the wait for the upstream is not the gateway's own time
    assert exchange.upstream_ms >= attempt.latency_ms and exchange.overhead_ms < 100
    figures = summarize(rows_of([exchange], simulated=False), (), None, None)["models"]["slow"]
    assert figures["requests"] == 1 and figures["errors"] == 0  # the client's doing, not the model's


def send_slow_start(port: int, request_id: str) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "slow start"}]}).encode()
    connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: laneway\r\ncontent-type: application/json\r\n"
                       b"x-request-id: " + request_id.encode() + b"\r\ncontent-length: " + str(len(body)).encode()
                       + b"\r\n\r\n" + body)
    return connection


def test_a_client_that_gives_up_in_the_gate_queue_leaves_it(
        live: tuple[LiveGateway, RecordingSink, SlowStream]) -> None:
    gateway, sink, upstream = live
    assert gateway.gateway is not None
    gate = gateway.gateway.runtime.gates["slow"]
    port = int(gateway.url.rsplit(":", 1)[1])
    holder = send_slow_start(port, "holds-the-slot")  # the upstream answers it after 5 s
    deadline = time.monotonic() + 3
    while gate.in_flight < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    queued = send_slow_start(port, "queued")
    while len(gate._queue) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    queued.close()  # gives up while waiting for the slot
    while not [e for e in sink.exchanges if e.request_id == "queued"]:
        assert time.monotonic() < deadline + 2, "the queued request was never recorded"
        time.sleep(0.02)
    exchange = sink.by_id("queued")
    assert exchange.outcome == "client_disconnected" and exchange.status == 499
    assert exchange.attempts == []  # never admitted, never sent
    assert gate.in_flight == 1  # the holder keeps its slot
    holder.close()
    assert upstream.ended.wait(4)
    while gate.in_flight:
        assert time.monotonic() < deadline + 6, "the abandoned waiter took the freed slot"
        time.sleep(0.02)
    assert len(upstream.written) == 1  # the upstream only ever saw the holder's request
