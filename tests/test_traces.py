"""OpenTelemetry traces: off costs nothing; on, every exchange arrives at an OTLP/HTTP receiver as a
span with one child span per attempt."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from laneway.exchange import Attempt, Exchange
from laneway.telemetry import Telemetry, TelemetrySettings, parse_telemetry

SPANS: list[Any] = []


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                SPANS.extend(scope.spans)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[str]:
    SPANS.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1/traces"
    server.shutdown()


def exchange(i: int) -> Exchange:
    record = Exchange(f"req-{i}", time.time(), route="chat", model="gpt-5-mini", lane="fallback", latency_ms=120.0,
                      prompt_tokens=30, completion_tokens=12, cost_usd=0.0001)
    record.attempts = [Attempt("gpt-5", "upstream_unavailable", latency_ms=40.0),
                       Attempt("gpt-5-mini", "ok", latency_ms=70.0, lane="fallback")]
    return record


async def test_each_exchange_becomes_a_span_with_its_attempts(receiver: str) -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None, traces=receiver))
    await telemetry.start()
    for i in range(3):
        telemetry.record(exchange(i))
    await telemetry.aclose()
    exchanges = [s for s in SPANS if s.name == "laneway.exchange"]
    attempts = [s for s in SPANS if s.name.startswith("laneway.attempt")]
    assert len(exchanges) == 3 and len(attempts) == 6
    parent = exchanges[0]
    children = [s for s in attempts if s.parent_span_id == parent.span_id]
    assert [s.name for s in children] == ["laneway.attempt gpt-5", "laneway.attempt gpt-5-mini"]
    attributes = {a.key: a.value for a in parent.attributes}
    assert attributes["laneway.route"].string_value == "chat"
    assert attributes["laneway.lane"].string_value == "fallback"
    assert parent.end_time_unix_nano - parent.start_time_unix_nano == 120_000_000


async def test_failed_exchanges_and_attempts_are_errors_to_a_trace_backend(receiver: str) -> None:
    """Every span was left UNSET: a search for errors in the trace backend found none."""
    telemetry = Telemetry(TelemetrySettings(exchange_log=None, traces=receiver))
    await telemetry.start()
    failed = exchange(1)
    failed.status, failed.outcome, failed.error = 502, "upstream_unavailable", "all 2 attempt(s) failed"
    failed.attempts[1] = Attempt("gpt-5-mini", "upstream_unavailable", latency_ms=70.0, lane="fallback",
                                 error="upstream 503", upstream_status=503)
    for record in (exchange(0), failed):
        telemetry.record(record)
    await telemetry.aclose()
    by_id = {s.span_id: s for s in SPANS}
    errors = {(s.name, by_id[s.parent_span_id].name if s.parent_span_id in by_id else None, s.status.message)
              for s in SPANS if s.status.code == 2}  # STATUS_CODE_ERROR
    assert errors == {("laneway.exchange", None, "all 2 attempt(s) failed"),
                      ("laneway.attempt gpt-5", "laneway.exchange", "upstream_unavailable"),
                      ("laneway.attempt gpt-5-mini", "laneway.exchange", "upstream 503")}
    attempt = next(s for s in SPANS if s.name == "laneway.attempt gpt-5-mini" and s.status.code == 2)
    attributes = {a.key: a.value for a in attempt.attributes}
    assert attributes["laneway.upstream_status"].int_value == 503
    assert attributes["error.type"].string_value == "upstream_unavailable"


async def test_a_collector_that_never_answers_holds_neither_the_stop_nor_the_log(tmp_path: Any) -> None:
    """The SDK's defaults held a stop for 30 s, and the exchange log, closed after the traces, found its time
    gone and dropped what it had not written."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts, never reads nor answers
    try:
        url = f"sqlite:///{tmp_path}/log.sqlite3"
        telemetry = Telemetry(TelemetrySettings(exchange_log=url, close_timeout_ms=3000,
                                                traces=f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces"))
        await telemetry.start()
        for i in range(2000):  # 6,000 spans: a dozen of the SDK's batches, each given the whole export timeout
            telemetry.record(exchange(i))
        began = time.monotonic()
        await telemetry.aclose()
        took = time.monotonic() - began
    finally:
        silent.close()
    assert telemetry.health.written == 2000 and telemetry.health.dropped == 0
    assert took < 6


async def test_tracing_off_imports_nothing() -> None:
    for name in [m for m in sys.modules if m.startswith("opentelemetry.sdk")]:
        del sys.modules[name]
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))
    await telemetry.start()
    telemetry.record(exchange(0))
    await telemetry.aclose()
    assert not any(m.startswith("opentelemetry.sdk") for m in sys.modules)


def test_traces_setting_must_be_an_endpoint() -> None:
    from laneway.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_telemetry({"traces": "collector:4318"})
    assert "telemetry.traces" in str(caught.value) and "4318/v1/traces" in str(caught.value)
