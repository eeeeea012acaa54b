"""Flat records derived from an `Exchange`: what the summaries read and what the log stores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from laneway.exchange import Exchange

SHADOW_LANE = "shadow"


class ExchangeRow(NamedTuple):
    """The columns every summary needs, read back identically from memory or from the log."""

    started_at: float
    model: str | None
    route: str | None
    lane: str
    outcome: str
    latency_ms: float
    ttft_ms: float | None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    conversation_id: str | None
    escalation: bool
    fallbacks: int
    simulated: bool
    entry_lane: str = "primary"  # the first attempt's lane: where the route sent it before any failover
    entry_model: str | None = None  # the first attempt's model (the canary's, for a canary that failed over)
    cascade_confidence: float | None = None
    retrieval_hits: int | None = None
    retrieval_ms: float | None = None
    signals: Mapping[str, Any] | None = None  # kept for shadow rows only: the pairing and the comparison


class HourlyRow(NamedTuple):
    """One hour of rolled-up exchanges for one model, route and lane (raw rows are gone)."""

    hour: float
    model: str
    route: str
    lane: str
    requests: int
    errors: int
    timeouts: int
    escalated_ok: int
    tokens_in: int
    tokens_out: int
    cost_usd: float
    conversations: int
    fallbacks: int
    simulated: int


class LogRecord(NamedTuple):
    """One `exchanges` table row, in column order (see `LOG_COLUMNS`)."""

    request_id: str
    started_at: float
    path: str
    conversation_id: str | None
    route: str | None
    lane: str
    model: str | None
    stream: bool
    status: int
    outcome: str
    error: str
    latency_ms: float
    ttft_ms: float | None
    upstream_ms: float
    overhead_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    escalation: bool
    fallbacks: int
    simulated: bool
    attempts: str
    signals: str
    api_key: str | None
    prompt_body: str | None
    answer_body: str | None
    cascade_confidence: float | None
    retrieval_hits: int | None
    retrieval_ms: float | None


LOG_COLUMNS = LogRecord._fields
ROW_COLUMNS = ExchangeRow._fields


# Attempts that are part of a plan rather than a hand-over after a failure.
PLANNED_LANES = ("verifier", "cascade")


def fallbacks_of(exchange: Exchange) -> int:
    """Hand-overs from one model to the next: every attempt after the first, but a cascade's grader
    and escalation."""
    return sum(attempt.lane not in PLANNED_LANES for attempt in exchange.attempts[1:])


def row_of(exchange: Exchange, simulated: bool) -> ExchangeRow:
    entry = exchange.attempts[0] if exchange.attempts else None
    return ExchangeRow(
        exchange.started_at,
        exchange.model,
        exchange.route,
        exchange.lane,
        exchange.outcome,
        exchange.latency_ms,
        exchange.ttft_ms,
        exchange.prompt_tokens,
        exchange.completion_tokens,
        exchange.cost_usd,
        exchange.conversation_id,
        exchange.signals.get("escalation") is True,
        fallbacks_of(exchange),
        simulated,
        entry.lane if entry is not None else exchange.lane,
        entry.model if entry is not None else exchange.model,
        exchange.cascade_confidence,
        exchange.retrieval_hits,
        exchange.retrieval_ms,
        exchange.signals if exchange.lane == SHADOW_LANE else None,
    )


def log_record_of(
    exchange: Exchange, row: ExchangeRow, bodies: tuple[str, str] | None, body_cap_bytes: int
) -> LogRecord:
    prompt, answer = (
        (_capped(bodies[0], body_cap_bytes), _capped(bodies[1], body_cap_bytes)) if bodies else (None, None)
    )
    return LogRecord(
        exchange.request_id,
        row.started_at,
        exchange.path,
        row.conversation_id,
        row.route,
        row.lane,
        row.model,
        exchange.stream,
        exchange.status,
        row.outcome,
        exchange.error,
        row.latency_ms,
        row.ttft_ms,
        exchange.upstream_ms,
        exchange.overhead_ms,
        row.tokens_in,
        row.tokens_out,
        row.cost_usd,
        row.escalation,
        row.fallbacks,
        row.simulated,
        orjson.dumps(exchange.attempts).decode(),  # every `Attempt` field, by name
        orjson.dumps(exchange.signals, default=str, option=orjson.OPT_NON_STR_KEYS).decode(),
        exchange.api_key,
        prompt,
        answer,
        row.cascade_confidence,
        row.retrieval_hits,
        row.retrieval_ms,
    )


def _capped(body: str, cap_bytes: int) -> str:
    data = body.encode("utf-8")
    if len(data) <= cap_bytes:
        return body
    # Cutting bytes may split a character; the partial tail is dropped rather than stored mangled.
    return data[:cap_bytes].decode("utf-8", errors="ignore")
