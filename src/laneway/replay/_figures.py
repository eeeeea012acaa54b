"""Figures of a replay, computed by pure functions from the per-request records.

Latency percentiles count every request at the latency its client saw, failures included (a
timed-out request waited until its deadline). Traffic share is by the model that answered, or
for a failed request the last model tried.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UpstreamTimeout
from ..exchange import OK

TIMEOUT = UpstreamTimeout.code


@dataclass(frozen=True, slots=True)
class Record:
    """One replayed request, as the gateway's exchange told it."""

    phase: str
    arrival_s: float
    conversation_id: str
    kind: str
    escalation: bool
    latency_ms: float
    model: str | None
    lane: str
    route: str | None
    outcome: str
    cost_usd: float
    prompt_tokens: int = 0
    error: str = ""
    good: bool = False  # answered, and the simulated fleet rates the answer good (`sim.is_good`)


@dataclass(frozen=True, slots=True)
class EscalationThroughput:
    offered: int
    ok: int
    minutes: float

    @property
    def ok_per_min(self) -> float:
        return self.ok / self.minutes if self.minutes > 0 else 0.0

    @property
    def offered_per_min(self) -> float:
        return self.offered / self.minutes if self.minutes > 0 else 0.0

    @property
    def ok_ratio(self) -> float | None:
        """Completed OK over offered: 1.0 when every escalation got its answer; None when none was offered."""
        return self.ok / self.offered if self.offered else None

    def to_json(self) -> dict[str, float | None]:
        ratio = self.ok_ratio
        return {"offered": self.offered, "ok": self.ok, "ok_per_min": round(self.ok_per_min, 2),
                "offered_per_min": round(self.offered_per_min, 2),
                "ok_ratio": None if ratio is None else round(ratio, 4)}


@dataclass(frozen=True, slots=True)
class Figures:
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    timeouts: int
    errors: int
    escalation: EscalationThroughput
    traffic_share: dict[str, float]
    cost_usd: float
    conversations: int
    outcomes: dict[str, int] = field(default_factory=dict)
    good: int = 0  # answers the simulated fleet rates good; a failed request has none

    @property
    def good_share(self) -> float:
        """Good answers over requests: the simulation's stand-in for accuracy."""
        return self.good / self.requests if self.requests else 0.0

    @property
    def cost_per_conversation_usd(self) -> float:
        return self.cost_usd / self.conversations if self.conversations else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "p50_ms": round(self.p50_ms, 1), "p95_ms": round(self.p95_ms, 1),
            "p99_ms": round(self.p99_ms, 1), "timeouts": self.timeouts, "errors": self.errors,
            "escalation_throughput": self.escalation.to_json(),
            "traffic_share": {m: round(s, 4) for m, s in self.traffic_share.items()},
            "cost_usd": round(self.cost_usd, 6), "conversations": self.conversations,
            "cost_per_conversation_usd": round(self.cost_per_conversation_usd, 6),
            "outcomes": dict(self.outcomes), "good_answers": self.good,
            "good_answer_share": round(self.good_share, 4),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return 0.0
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def traffic_share(records: Iterable[Record]) -> dict[str, float]:
    """Fraction of requests per model, largest first; requests no model saw count as `none`."""
    counts = Counter(r.model or "none" for r in records)
    total = sum(counts.values())
    return {model: n / total for model, n in counts.most_common()} if total else {}


def cost_per_conversation(records: Iterable[Record]) -> float:
    """Total cost over the number of distinct conversations the records touch."""
    cost = 0.0
    conversations: set[str] = set()
    for record in records:
        cost += record.cost_usd
        conversations.add(record.conversation_id)
    return cost / len(conversations) if conversations else 0.0


def escalation_throughput(records: Iterable[Record], duration_s: float) -> EscalationThroughput:
    escalated = [r for r in records if r.escalation]
    return EscalationThroughput(len(escalated), sum(r.outcome == OK for r in escalated), duration_s / 60)


def timeouts(records: Iterable[Record]) -> int:
    return sum(r.outcome == TIMEOUT for r in records)


def share_of(shares: dict[str, float], models: Iterable[str]) -> float:
    return sum(shares.get(m, 0.0) for m in models)


def figures(records: Sequence[Record], duration_s: float) -> Figures:
    latencies = [r.latency_ms for r in records]
    outcomes = Counter(r.outcome for r in records)
    return Figures(
        requests=len(records),
        p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95), p99_ms=percentile(latencies, 99),
        timeouts=timeouts(records), errors=len(records) - outcomes.get(OK, 0),
        escalation=escalation_throughput(records, duration_s),
        traffic_share=traffic_share(records),
        cost_usd=sum(r.cost_usd for r in records),
        conversations=len({r.conversation_id for r in records}),
        outcomes=dict(outcomes.most_common()),
        good=sum(r.good for r in records),
    )
