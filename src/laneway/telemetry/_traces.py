"""Optional OpenTelemetry traces: a span per exchange and a child span per attempt, exported over
OTLP/HTTP to `telemetry.traces` (e.g. `http://collector:4318/v1/traces`).

Off by default, and then nothing of OpenTelemetry is imported. Spans are built in the telemetry
background task from finished exchanges, never on the request path. Attempts ran one after
another, so each attempt's span starts where the previous one ended (the exchange records
durations, not start times).
"""

from __future__ import annotations

import threading
from typing import Any

from laneway.errors import ConfigError, ConfigIssue
from laneway.exchange import CLIENT_DISCONNECTED, OK, Exchange
from laneway.telemetry._records import NOT_FAILED

# A collector that is slow or gone must not hold the gateway: one export, and the flush at shutdown, give up
# after this (the SDK's defaults, 10 s an export with retries and 30 s to shut down, pushed a stop past the
# 30 s an orchestrator grants).
EXPORT_TIMEOUT_S = 2.0


class ExchangeTracer:
    def __init__(self, endpoint: str, simulated: bool) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import Status, StatusCode
        except ImportError:
            raise ConfigError([ConfigIssue("telemetry.traces", "OpenTelemetry is not installed; "
                                           "`pip install 'laneway[traces]'`")]) from None
        resource = Resource.create({"service.name": "laneway", "laneway.simulated": simulated})
        self._provider = TracerProvider(resource=resource)
        self._exporter = OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S)
        self._provider.add_span_processor(BatchSpanProcessor(self._exporter,
                                                             export_timeout_millis=EXPORT_TIMEOUT_S * 1000))
        self._tracer = self._provider.get_tracer("laneway")
        self._context_with = trace.set_span_in_context
        self._status, self._error = Status, StatusCode.ERROR

    def export(self, exchange: Exchange) -> None:
        start = int(exchange.started_at * 1e9)
        span = self._tracer.start_span("laneway.exchange", start_time=start, attributes=_exchange_attributes(exchange))
        context = self._context_with(span)
        at = start
        for attempt in exchange.attempts:
            end = at + int(attempt.latency_ms * 1e6)
            child = self._tracer.start_span(f"laneway.attempt {attempt.model}", context=context, start_time=at,
                                            attributes=_attempt_attributes(attempt))
            if attempt.outcome not in NOT_FAILED:  # as trace backends find errors
                child.set_status(self._status(self._error, attempt.error or attempt.outcome))
            child.end(end_time=end)
            at = end
        # a 5xx, or a stream broken off after its 200
        if exchange.status >= 500 or (exchange.outcome not in (OK, CLIENT_DISCONNECTED) and exchange.status < 400):
            span.set_status(self._status(self._error, exchange.error or exchange.outcome))
        span.end(end_time=start + int(exchange.latency_ms * 1e6))

    def shutdown(self) -> None:
        """Export what is buffered for at most `EXPORT_TIMEOUT_S`, then stop. The SDK's own flush gives each
        batch of 512 spans the exporter's whole timeout, one after another (10 s for 5,000 exchanges to a
        collector that never answers): past the time, the exporter is shut, and the batches left fail at once."""
        cut = threading.Timer(EXPORT_TIMEOUT_S, self._exporter.shutdown)
        cut.daemon = True
        cut.start()
        try:
            self._provider.shutdown()
        finally:
            cut.cancel()


def _exchange_attributes(exchange: Exchange) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "laneway.request_id": exchange.request_id, "laneway.route": exchange.route or "",
        "laneway.lane": exchange.lane, "laneway.model": exchange.model or "", "laneway.outcome": exchange.outcome,
        "http.response.status_code": exchange.status, "laneway.stream": exchange.stream,
        "laneway.cost_usd": exchange.cost_usd, "gen_ai.usage.input_tokens": exchange.prompt_tokens,
        "gen_ai.usage.output_tokens": exchange.completion_tokens,
    }
    if exchange.conversation_id:
        attributes["laneway.conversation_id"] = exchange.conversation_id
    if exchange.outcome != OK:
        attributes["error.type"] = exchange.outcome
    return attributes


def _attempt_attributes(attempt: Any) -> dict[str, Any]:
    attributes = {"laneway.model": attempt.model, "laneway.lane": attempt.lane, "laneway.outcome": attempt.outcome,
                  "laneway.cost_usd": attempt.cost_usd, "gen_ai.usage.input_tokens": attempt.prompt_tokens,
                  "gen_ai.usage.output_tokens": attempt.completion_tokens}
    if attempt.outcome != OK:
        attributes["error.type"] = attempt.outcome
        if attempt.error:  # why it failed, or why it was passed over (a breaker open, a gate full)
            attributes["laneway.error"] = attempt.error
    if attempt.upstream_status is not None:
        attributes["laneway.upstream_status"] = attempt.upstream_status
    return attributes
