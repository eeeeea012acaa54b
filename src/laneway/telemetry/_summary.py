"""Pure summaries of exchanges: grouping, percentiles, rates and costs.

`stats()` (over exchanges held in memory) and `laneway report` (over the exchange log) both call
`summarize`, so for the same exchanges and window they return the same numbers. Shadow exchanges
answered nobody: they stay out of the totals, shares and costs, and are summed apart under `shadow`.
Answers from the response cache are figures of the model `(cache)`, not of the model that once gave
them, so that a model's latency percentiles are those of its calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from laneway.errors import UpstreamTimeout
from laneway.exchange import CLIENT_DISCONNECTED, OK
from laneway.telemetry._records import CACHE_LANE, SHADOW_LANE, ExchangeRow, HourlyRow

TIMEOUT_OUTCOME = UpstreamTimeout.code
NO_MODEL = "(none)"
NO_ROUTE = "(none)"  # refused before it was routed
DIRECT = "(direct)"  # the requests that named a model rather than the route table
CACHED = "(cache)"  # the answers from the response cache: no model was called, so none's figures count them


def model_label(model: str | None, lane: str) -> str:
    """Whom an exchange's figures belong to: its model, or the response cache that answered instead."""
    return CACHED if lane == CACHE_LANE else model or NO_MODEL


def route_label(route: str | None, lane: str) -> str:
    """Without a route, an exchange with a lane named a model (`direct`, or `degraded` behind a full gate);
    one without was refused before it was routed."""
    return route or (DIRECT if lane else NO_ROUTE)


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); `ordered` must be sorted."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(slots=True)
class _Group:
    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    escalated_ok: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    fallbacks: int = 0
    failed_attempts: int = 0  # attempts at this model (or of this route's requests) that failed
    retrievals: int = 0  # requests of a route with `retrieval:`
    retrieval_hits: int = 0  # of them, those that got passages
    retrieval_ms: list[float] = field(default_factory=list)
    simulated: int = 0
    anonymous_conversations: int = 0  # requests without a conversation id count as their own
    conversations: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)

    def add_row(self, row: ExchangeRow) -> None:
        self.requests += 1
        ok = row.outcome == OK
        self.errors += not ok and row.outcome != CLIENT_DISCONNECTED
        self.timeouts += row.outcome == TIMEOUT_OUTCOME
        self.escalated_ok += ok and row.escalation
        self.tokens_in += row.tokens_in
        self.tokens_out += row.tokens_out
        self.cost_usd += row.cost_usd
        self.fallbacks += row.fallbacks
        self.simulated += row.simulated
        if row.conversation_id is None:
            self.anonymous_conversations += 1
        else:
            self.conversations.add(row.conversation_id)
        if row.retrieval_hits is not None:
            self.retrievals += 1
            self.retrieval_hits += row.retrieval_hits > 0
            if row.retrieval_ms is not None:
                self.retrieval_ms.append(row.retrieval_ms)
        self.latencies.append(row.latency_ms)
        if row.ttft_ms is not None:
            self.ttfts.append(row.ttft_ms)

    def add_hourly(self, hour: HourlyRow) -> None:
        self.requests += hour.requests
        self.errors += hour.errors
        self.timeouts += hour.timeouts
        self.escalated_ok += hour.escalated_ok
        self.tokens_in += hour.tokens_in
        self.tokens_out += hour.tokens_out
        self.cost_usd += hour.cost_usd
        self.fallbacks += hour.fallbacks
        self.simulated += hour.simulated
        self.anonymous_conversations += hour.conversations
        self.failed_attempts += hour.failed_attempts
        self.retrievals += hour.retrievals
        self.retrieval_hits += hour.retrieval_hits

    def finish(self, total_requests: int, minutes: float) -> dict[str, Any]:
        self.latencies.sort()
        self.ttfts.sort()
        self.retrieval_ms.sort()  # `percentile` reads sorted values
        conversations = len(self.conversations) + self.anonymous_conversations
        tokens = self.tokens_in + self.tokens_out
        return {
            "requests": self.requests,
            "requests_per_min": round(self.requests / minutes, 4),
            "errors": self.errors,
            "timeouts": self.timeouts,
            "error_rate": _ratio(self.errors, self.requests, 4),
            "timeout_rate": _ratio(self.timeouts, self.requests, 4),
            "share": _ratio(self.requests, total_requests, 4),
            "p50_ms": _ms(percentile(self.latencies, 0.50)),
            "p95_ms": _ms(percentile(self.latencies, 0.95)),
            "p99_ms": _ms(percentile(self.latencies, 0.99)),
            "ttft_p50_ms": _ms(percentile(self.ttfts, 0.50)),
            "ttft_p95_ms": _ms(percentile(self.ttfts, 0.95)),
            "ttft_p99_ms": _ms(percentile(self.ttfts, 0.99)),
            "latency_samples": len(self.latencies),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": round(self.cost_usd, 6),
            "conversations": conversations,
            "cost_per_conversation_usd": _ratio(self.cost_usd, conversations, 6),
            "cost_per_1k_tokens_usd": _ratio(self.cost_usd * 1000, tokens, 6),
            "fallbacks": self.fallbacks,
            "failed_attempts": self.failed_attempts,
            "retrievals": self.retrievals,
            "retrieval_hit_rate": _ratio(self.retrieval_hits, self.retrievals, 4),
            "retrieval_p95_ms": _ms(percentile(self.retrieval_ms, 0.95)),
            "escalated_ok": self.escalated_ok,
            "escalated_ok_per_min": round(self.escalated_ok / minutes, 4),
            "simulated_requests": self.simulated,
        }


def summarize(
    rows: Iterable[ExchangeRow],
    hourly: Iterable[HourlyRow] = (),
    since: float | None = None,
    until: float | None = None,
) -> dict[str, Any]:
    """Totals and per-model, per-route figures for the exchanges in `[since, until)`, shadows apart.

    An hour of `hourly` (raw rows past retention, rolled up) counts whole when it starts in the window;
    `window.rolled_up_requests` says how many requests came from such hours (they have no percentiles)."""
    total, models, routes = _Group(), dict[str, _Group](), dict[str, _Group]()
    shadow, shadow_models = _Group(), dict[str, _Group]()
    first, last = math.inf, -math.inf
    for row in rows:
        if (since is not None and row.started_at < since) or (until is not None and row.started_at >= until):
            continue
        first, last = min(first, row.started_at), max(last, row.started_at)
        groups: tuple[_Group, ...]
        if row.lane == SHADOW_LANE:
            groups = (shadow, _group(shadow_models, row.model or NO_MODEL))
        else:
            groups = (total, _group(models, model_label(row.model, row.lane)),
                      _group(routes, route_label(row.route, row.lane)))
            for model in row.failed_models:  # a model hidden behind its fallbacks still shows its failures
                _group(models, model).failed_attempts += 1
            for model, cost, tokens_in, tokens_out in row.other_costs:  # each model's spend is what it billed:
                other = _group(models, model)  # a cascade's first answer, a verifier's grade
                other.cost_usd += cost
                groups[1].cost_usd -= cost
                for group in (other, groups[0], groups[2]):  # the row's tokens are its answer's alone
                    group.tokens_in += tokens_in
                    group.tokens_out += tokens_out
            groups[0].failed_attempts += len(row.failed_models)
            groups[2].failed_attempts += len(row.failed_models)
        for group in groups:
            group.add_row(row)
    rolled_up = 0
    for hour in hourly:
        # An hour rolled up counts whole, in the window that holds its start.
        if (since is not None and hour.hour < since) or (until is not None and hour.hour >= until):
            continue
        first, last = min(first, hour.hour), max(last, hour.hour + 3600.0)
        if hour.lane == SHADOW_LANE:
            groups = (shadow, _group(shadow_models, hour.model or NO_MODEL))
        else:
            groups = (total, _group(models, model_label(hour.model, hour.lane)),
                      _group(routes, route_label(hour.route, hour.lane)))
            rolled_up += hour.requests
        for group in groups:
            group.add_hourly(hour)
    start = since if since is not None else (first if total.requests else None)
    end = until if until is not None else (last if total.requests else None)
    minutes = max(1.0, (end - start) / 60.0) if start is not None and end is not None else 1.0
    n = total.requests
    return {
        # `truncated`: whether the rows began after `since` (an in-memory window that let older ones go).
        "window": {"since": start, "until": end, "minutes": round(minutes, 4), "rolled_up_requests": rolled_up,
                   "truncated": False},
        "simulated": total.simulated > 0,
        "total": total.finish(n, minutes),
        "models": {name: group.finish(n, minutes) for name, group in sorted(models.items())},
        "routes": {name: group.finish(n, minutes) for name, group in sorted(routes.items())},
        "shadow": {
            **_spend(shadow),
            "models": {name: _spend(group) for name, group in sorted(shadow_models.items())},
        },
    }


def _spend(group: _Group) -> dict[str, Any]:
    """What shadow calls cost: never part of the primary's cost."""
    return {
        "requests": group.requests,
        "errors": group.errors,
        "tokens_in": group.tokens_in,
        "tokens_out": group.tokens_out,
        "cost_usd": round(group.cost_usd, 6),
    }


def _group(groups: dict[str, _Group], name: str) -> _Group:
    group = groups.get(name)
    if group is None:
        group = groups[name] = _Group()
    return group


def _ratio(part: float, whole: float, digits: int) -> float | None:
    return round(part / whole, digits) if whole else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
