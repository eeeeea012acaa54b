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


# One `exchanges` table row as the stores bind it: a plain tuple, in `LOG_COLUMNS` order. The SQL
# turns the stand-ins back into NULL and booleans (see `insert_sql`): binding `None` or a `bool`
# costs the sqlite3 module an adaptation lookup per value, several times an `int`, `float` or `str`.
LogRecord = tuple[Any, ...]
NO_NUMBER = -1  # stands for NULL in the nullable number columns (never a real value: they are >= 0)
NO_TEXT = ""  # stands for NULL in the nullable identifier columns

LOG_COLUMNS = (
    "request_id", "started_at", "path", "conversation_id", "route", "lane", "model", "stream", "status",
    "outcome", "error", "latency_ms", "ttft_ms", "upstream_ms", "overhead_ms", "prompt_tokens",
    "completion_tokens", "cost_usd", "escalation", "fallbacks", "simulated", "attempts", "signals", "api_key",
    "prompt_body", "answer_body", "cascade_confidence", "retrieval_hits", "retrieval_ms",
)
NULLABLE_NUMBERS = frozenset({"ttft_ms", "cascade_confidence", "retrieval_hits", "retrieval_ms"})
NULLABLE_IDS = frozenset({"conversation_id", "route", "model", "api_key"})
FLAGS = frozenset({"stream", "escalation", "simulated"})  # 0/1 in a record, BOOLEAN in PostgreSQL
ROW_COLUMNS = ExchangeRow._fields


# Attempts that are part of a plan rather than a hand-over after a failure.
PLANNED_LANES = ("verifier", "cascade")


def fallbacks_of(exchange: Exchange) -> int:
    """Hand-overs from one model to the next: every attempt after the first, but a cascade's grader
    and escalation."""
    attempts = exchange.attempts
    if len(attempts) < 2:
        return 0
    return sum(attempt.lane not in PLANNED_LANES for attempt in attempts[1:])


def log_record_of(
    e: Exchange, fallbacks: int, simulated: bool, bodies: tuple[str, str] | None, body_cap_bytes: int
) -> LogRecord:
    """The exchange's log row. Runs once per exchange, so it reads each field once, builds a plain
    tuple and serializes the two JSON columns with orjson, nothing more."""
    prompt, answer = (
        (_capped(bodies[0], body_cap_bytes), _capped(bodies[1], body_cap_bytes)) if bodies else (None, None)
    )
    ttft, confidence, hits, retrieval_ms = e.ttft_ms, e.cascade_confidence, e.retrieval_hits, e.retrieval_ms
    return (
        e.request_id,
        e.started_at,
        e.path,
        e.conversation_id or NO_TEXT,
        e.route or NO_TEXT,
        e.lane,
        e.model or NO_TEXT,
        1 if e.stream else 0,
        e.status,
        e.outcome,
        e.error,
        e.latency_ms,
        NO_NUMBER if ttft is None else ttft,
        e.upstream_ms,
        e.overhead_ms,
        e.prompt_tokens,
        e.completion_tokens,
        e.cost_usd,
        1 if e.signals.get("escalation") is True else 0,
        fallbacks,
        1 if simulated else 0,
        orjson.dumps(e.attempts).decode(),  # every `Attempt` field, by name
        signals_json(e.signals).decode(),
        e.api_key or NO_TEXT,
        prompt,
        answer,
        NO_NUMBER if confidence is None else confidence,
        NO_NUMBER if hits is None else hits,
        NO_NUMBER if retrieval_ms is None else retrieval_ms,
    )


def signals_json(signals: Mapping[str, Any]) -> bytes:
    """The signals as the log stores them: any key or value JSON has no type for becomes a string."""
    return orjson.dumps(signals, default=str, option=orjson.OPT_NON_STR_KEYS)


def _capped(body: str, cap_bytes: int) -> str:
    data = body.encode("utf-8")
    if len(data) <= cap_bytes:
        return body
    # Cutting bytes may split a character; the partial tail is dropped rather than stored mangled.
    return data[:cap_bytes].decode("utf-8", errors="ignore")
