"""Flat records derived from an `Exchange`: what the summaries read and what the log stores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from itertools import pairwise
from operator import attrgetter
from typing import Any, NamedTuple

import orjson

from laneway.exchange import (
    CLIENT_DISCONNECTED,
    GATED,
    OK,
    SKIPPED,
    Attempt,
    Exchange,
    billed_apart,
    refused_for_the_client,
)

SHADOW_LANE = "shadow"
CACHE_LANE = "cache"  # an answer from the response cache: no model was called


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
    failed_models: tuple[str, ...] = ()  # the model of each attempt that failed, a fallback's answer or not
    # What attempts at other models than `model` billed (a cascade's first answer, a verifier's grade), model
    # by model, as (model, cost, tokens in, tokens out): part of `cost_usd`, but billed by those models, and
    # tokens on top of `tokens_in` and `tokens_out`, which are those of the answer.
    other_costs: tuple[tuple[str, float, int, int], ...] = ()


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
    # Attempts at this model that failed, on this route. Rows with no requests carry only these and
    # the cost of attempts at this model in exchanges another model answered (a cascade's first answer).
    failed_attempts: int = 0
    retrievals: int = 0  # requests of a route with `retrieval:`
    retrieval_hits: int = 0  # of them, those that got passages


# One exchange as the stores receive it: its start time, and its `LOG_COLUMNS` values as one JSON
# array. Binding is most of what an insert costs the writer: the sqlite3 module adapts every bound
# value while it holds the GIL. Two values per row instead of 29 cut the SQLite insert from 8.9-10.8
# to 2.1-2.9 µs per row (`bench/bench_telemetry.py --log-rows 150000`), and telemetry's CPU in the
# gateway by 8.5 µs per request (docs/benchmarks.md). SQLite stores the array as it is, behind a
# view; PostgreSQL unpacks it into columns on the server.
LogRecord = tuple[float, str]

LOG_COLUMNS = (
    "request_id", "started_at", "path", "conversation_id", "route", "lane", "model", "stream", "status",
    "outcome", "error", "latency_ms", "ttft_ms", "upstream_ms", "overhead_ms", "prompt_tokens",
    "completion_tokens", "cost_usd", "escalation", "fallbacks", "simulated", "attempts", "signals", "api_key",
    "prompt_body", "answer_body", "cascade_confidence", "retrieval_hits", "retrieval_ms",
)
ROW_COLUMNS = ExchangeRow._fields
# A log record holds each attempt as the array of its values in this order (the stores show them as
# objects). orjson writes a slots dataclass field by field, by name: an attempt took 1.14 µs to
# encode that way, against 0.65 µs as a tuple (`timeit`, best of 15), and a record was 28 % longer.
ATTEMPT_FIELDS = tuple(field.name for field in fields(Attempt))
_attempt_values = attrgetter(*ATTEMPT_FIELDS)
_RECORD_OPTIONS = orjson.OPT_NON_STR_KEYS


# Attempts that are part of a plan rather than a hand-over after a failure.
PLANNED_LANES = ("verifier", "cascade")


# Attempt outcomes that are not a model's failure: answered, never sent, or the client hung up.
NOT_FAILED = (OK, SKIPPED, GATED, CLIENT_DISCONNECTED)
FAILED_SEPARATOR = "\x1f"  # between the models of `failed_models` as the log reads them back


def failed_models(exchange: Exchange) -> tuple[str, ...] | None:
    """The models of the exchange's failed attempts; None when there is none to look for (one attempt,
    answered), which is almost every exchange."""
    attempts = exchange.attempts
    if len(attempts) < 2 and exchange.outcome == OK:
        return None
    return tuple(a.model for a in attempts if a.outcome not in NOT_FAILED) or None


def other_costs(exchange: Exchange) -> tuple[tuple[str, float, int, int], ...] | None:
    """What the exchange's attempts at models other than the one that answered billed: (model, cost, tokens
    in, tokens out) each; None when there is none (one attempt, which is almost every exchange)."""
    attempts = exchange.attempts
    if len(attempts) < 2:
        return None
    model = exchange.model
    return tuple((a.model, a.cost_usd, a.prompt_tokens, a.completion_tokens) for a in attempts
                 if billed_apart(a, model)) or None


def fallbacks_of(exchange: Exchange) -> int:
    """Hand-overs from one model to the next: every attempt at another model than the attempt before,
    but a cascade's grader and escalation. A retry of the same model is no hand-over (it shows in
    `laneway_attempts_total`), nor is a request refused as the client's fault before any model was sent it
    (each model of the plan passed over: tools none carries, a prompt too long for all)."""
    attempts = exchange.attempts
    if len(attempts) < 2:
        return 0
    if refused_for_the_client(exchange):
        return 0
    return sum(attempt.lane not in PLANNED_LANES and attempt.model != before.model
               for before, attempt in pairwise(attempts))


def log_record_of(
    e: Exchange, fallbacks: int, simulated: bool, store_bodies: bool, body_cap_bytes: int
) -> LogRecord:
    """The exchange's log record: one orjson call over a tuple in `LOG_COLUMNS` order. Each attempt
    is the array of its `ATTEMPT_FIELDS` values; signals are as `signals_json` writes them."""
    prompt, answer = (
        (_capped(e.prompt_body, body_cap_bytes), _capped(e.answer_body, body_cap_bytes)) if store_bodies
        else (None, None)
    )
    started_at = e.started_at
    values = (
        e.request_id, started_at, e.path, e.conversation_id or None, e.route or None, e.lane, e.model or None,
        e.stream, e.status, e.outcome, e.error, e.latency_ms, e.ttft_ms, e.upstream_ms, e.overhead_ms,
        e.prompt_tokens, e.completion_tokens, e.cost_usd, e.signals.get("escalation") is True, fallbacks,
        simulated, list(map(_attempt_values, e.attempts)), e.signals, e.api_key or None, prompt, answer,
        e.cascade_confidence, e.retrieval_hits, e.retrieval_ms,
    )
    try:
        return started_at, orjson.dumps(values, default=str, option=_RECORD_OPTIONS).decode()
    except orjson.JSONEncodeError as error:  # signals no JSON encoder takes (nested past its limit): the rest is kept
        unrecorded = {"unrecorded": f"the signals could not be encoded: {error}"}
        kept = (*values[:_SIGNALS], unrecorded, *values[_SIGNALS + 1:])
        return started_at, orjson.dumps(kept, default=str, option=_RECORD_OPTIONS).decode()


_SIGNALS = LOG_COLUMNS.index("signals")


def signals_json(signals: Mapping[str, Any]) -> bytes:
    """The signals as the log stores them: any key or value JSON has no type for becomes a string."""
    return orjson.dumps(signals, default=str, option=_RECORD_OPTIONS)


def _capped(body: str | None, cap_bytes: int) -> str | None:
    if body is None:
        return None
    data = body.encode("utf-8")
    if len(data) <= cap_bytes:
        return body
    # Cutting bytes may split a character; the partial tail is dropped rather than stored mangled.
    return data[:cap_bytes].decode("utf-8", errors="ignore")
