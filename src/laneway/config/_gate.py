"""The `gate:` block of a model and the top-level `priorities:` section."""

from __future__ import annotations

from dataclasses import dataclass

from ..gate import PRIORITY_CLASSES, Adaptive, GatePolicy
from ..signals import Signals
from ._matcher import Matcher, MatcherError, compile_matcher
from ._reader import Section

DEFAULT_QUEUE_MS = GatePolicy().queue_timeout_ms
QUEUE_MAX_MS = 3_600_000  # an hour: a longer wait in a gate's queue is a mistake in the file, as a longer deadline


@dataclass(frozen=True, slots=True)
class Priorities:
    """Which requests queue first at a gate: `escalation` (class 0), then chat, then `triage` (class 2)."""

    escalation: Matcher
    triage: Matcher

    def of(self, signals: Signals) -> int:
        if self.escalation(signals):
            return 0
        return 2 if self.triage(signals) else 1


DEFAULT_ESCALATION = "escalation == true || priority in [high, urgent]"
DEFAULT_TRIAGE = "channel == email || priority == low"


def default_priorities() -> Priorities:
    return Priorities(compile_matcher(DEFAULT_ESCALATION), compile_matcher(DEFAULT_TRIAGE))


def parse_gate(s: Section) -> GatePolicy:
    timeouts = _queue_timeouts(s)
    adaptive = None
    if s.has("adaptive"):
        a = s.section("adaptive")
        target = a.number("target_p95_ms", None, minimum=1, required=True)
        adaptive = Adaptive(float(target or 1), a.whole("min_concurrency", 1, minimum=1),
                            a.number("decrease", 0.7, minimum=0.1) or 0.7, a.whole("window", 50, minimum=5))
        a.done()
    tpm = s.number("tokens_per_minute", None, minimum=1, integer=True)
    policy = GatePolicy(
        max_concurrency=int(v) if (v := s.number("max_concurrency", None, minimum=1, integer=True)) else None,
        tokens_per_minute=int(tpm) if tpm else None,
        usd_per_minute=s.number("usd_per_minute", None, minimum=0),
        queue_timeout_ms=timeouts,
        degrade_to=s.text("degrade_to"),
        adaptive=adaptive,
    )
    if adaptive is not None and policy.max_concurrency is None:
        s.issues.add(s.where("adaptive"), "adaptive concurrency needs `max_concurrency` as its ceiling")
    s.done()
    return policy


def _queue_timeouts(s: Section) -> tuple[int, int, int]:
    raw = s.value("queue_timeout_ms")
    if raw is None:
        return DEFAULT_QUEUE_MS
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= QUEUE_MAX_MS:
        return (raw, raw, raw)
    if isinstance(raw, dict):
        per = s.section("queue_timeout_ms")
        values = tuple(per.whole(name, DEFAULT_QUEUE_MS[i], minimum=0, maximum=QUEUE_MAX_MS)
                       for i, name in enumerate(PRIORITY_CLASSES))
        per.done()
        return values[0], values[1], values[2]
    s.issues.add(s.where("queue_timeout_ms"), f"expected milliseconds (0 to {QUEUE_MAX_MS}), or a mapping per class: "
                                              "{escalation: 2000, chat: 1000, triage: 250}")
    return DEFAULT_QUEUE_MS


def parse_priorities(s: Section) -> Priorities:
    matchers = []
    for key, default in (("escalation", DEFAULT_ESCALATION), ("triage", DEFAULT_TRIAGE)):
        source = s.text(key, default) or default
        try:
            matchers.append(compile_matcher(source))
        except MatcherError as exc:
            s.issues.add(s.where(key), f"{exc.message} (at column {exc.column} of the matcher)",
                         column_offset=exc.column - 1)
            matchers.append(compile_matcher(default))
    s.done()
    return Priorities(matchers[0], matchers[1])
