"""Optional OpenTelemetry traces: a span per exchange and a child span per attempt, exported over
OTLP/HTTP to `telemetry.traces` (e.g. `http://collector:4318/v1/traces`).

Off by default, and then nothing of OpenTelemetry is imported. Spans are built in the telemetry
background task from finished exchanges, never on the request path. Attempts ran one after
another, so each attempt's span starts where the previous one ended (the exchange records
durations, not start times).
"""

from __future__ import annotations

from typing import Any

from laneway.errors import ConfigError, ConfigIssue
from laneway.exchange import Exchange


class ExchangeTracer:
    def __init__(self, endpoint: str, simulated: bool) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ConfigError([ConfigIssue("telemetry.traces", "OpenTelemetry is not installed; "
                                           "`pip install 'laneway[traces]'`")]) from None
        resource = Resource.create({"service.name": "laneway", "laneway.simulated": simulated})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        self._tracer = self._provider.get_tracer("laneway")
        self._context_with = trace.set_span_in_context

    def export(self, exchange: Exchange) -> None:
        start = int(exchange.started_at * 1e9)
        span = self._tracer.start_span("laneway.exchange", start_time=start, attributes=_exchange_attributes(exchange))
        context = self._context_with(span)
        at = start
        for attempt in exchange.attempts:
            end = at + int(attempt.latency_ms * 1e6)
            child = self._tracer.start_span(f"laneway.attempt {attempt.model}", context=context, start_time=at,
                                            attributes=_attempt_attributes(attempt))
            child.end(end_time=end)
            at = end
        span.end(end_time=start + int(exchange.latency_ms * 1e6))

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""
        self._provider.shutdown()


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
    return attributes


def _attempt_attributes(attempt: Any) -> dict[str, Any]:
    return {"laneway.model": attempt.model, "laneway.lane": attempt.lane, "laneway.outcome": attempt.outcome,
            "laneway.cost_usd": attempt.cost_usd, "gen_ai.usage.input_tokens": attempt.prompt_tokens,
            "gen_ai.usage.output_tokens": attempt.completion_tokens}
