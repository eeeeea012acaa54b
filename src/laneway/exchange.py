"""The record of one client request: its decision, every attempt, and what it cost.

An `Exchange` is built on the hot path and handed, finished, to the telemetry sinks, which do
their work in the background.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Lanes a request can take, shown in `x-laneway-lane`, metrics and the exchange log: primary,
# fallback, canary, cascade, degraded, cache, direct; shadow copies are recorded as lane shadow.

# Outcomes of an attempt.
OK = "ok"
SKIPPED = "skipped"  # never sent: breaker open, context window too small
GATED = "gated"  # never sent: the model's gate turned the request away (full, over budget)
CLIENT_DISCONNECTED = "client_disconnected"  # the client hung up mid-stream: not an error of the model
NOT_SENT = (SKIPPED, GATED)
CANCELLED = "cancelled"  # the gateway stopped before the answer was whole (past `server.shutdown_grace_ms`)
INTERNAL_ERROR = "internal_error"  # a bug in the gateway (the request's 500, logged with its traceback)


@dataclass(slots=True)
class Attempt:
    """One call (or one decision not to call) to one model."""

    model: str
    outcome: str  # "ok", "skipped", or an error code such as "upstream_unavailable"
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str = ""
    upstream_status: int | None = None
    lane: str = "primary"
    cached_tokens: int = 0  # of `prompt_tokens`, those the provider read from its prompt cache
    trimmed_messages: int = 0  # the oldest messages left out so the conversation fits the model (`trim: oldest`)


def billed_apart(attempt: Attempt, model: str | None) -> bool:
    """Whether `attempt` billed another model than `model`, the one that answered (a cascade's first answer, a
    verifier's grade): sent, with a cost or tokens. A skipped attempt may carry the prompt's count (why it
    was skipped), which nobody billed."""
    return attempt.model != model and attempt.outcome not in NOT_SENT and bool(
        attempt.cost_usd or attempt.prompt_tokens or attempt.completion_tokens)


@dataclass(slots=True)
class Exchange:
    """The full story of one client request."""

    request_id: str
    started_at: float  # unix time, seconds
    path: str = "/v1/chat/completions"
    conversation_id: str | None = None
    route: str | None = None
    lane: str = "primary"
    model: str | None = None  # the model whose answer the client got
    stream: bool = False
    status: int = 200
    outcome: str = OK  # "ok" or the error code the client got
    error: str = ""
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    upstream_ms: float = 0.0  # time spent waiting on upstreams, for the gateway's own overhead
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    signals: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None  # the client key's name, never the key
    key_tokens: int = 0  # tokens taken from the client key's `tokens_per_minute` at admission, an estimate
    key_usd: float = 0.0  # USD held against the client key's `usd_budget` at admission, an estimate
    retrieval_hits: int | None = None  # passages injected, when the route retrieves
    retrieval_ms: float | None = None
    cascade_confidence: float | None = None  # the first answer's confidence, when the route cascades
    trimmed_messages: int = 0  # the answering attempt's `trimmed_messages`
    # With `telemetry.store_bodies`: the messages the route sent (after retrieval) as JSON, and the answer.
    prompt_body: str | None = None
    answer_body: str | None = None

    @property
    def overhead_ms(self) -> float:
        return max(0.0, self.latency_ms - self.upstream_ms)


def refused_for_the_client(exchange: Exchange) -> bool:
    """The request ended in a 4xx of the client's own making (not a timeout nor a rate limit) before any model
    was sent it (a prompt too long for all, tools none carries): no model's error, and no hand-over."""
    return (400 <= exchange.status < 500 and exchange.status not in (408, 429)
            and all(attempt.outcome == SKIPPED for attempt in exchange.attempts))
