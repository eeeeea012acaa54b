"""The matcher language: evaluation and compile-time errors (message and column)."""

from __future__ import annotations

import pytest

from laneway.config import MatcherError, compile_matcher
from laneway.signals import Signals


def signals(n_user: int = 1, n_assistant: int = 0, **values: object) -> Signals:
    messages = [{"role": "user", "content": "hi"}] * n_user + [{"role": "assistant", "content": "yo"}] * n_assistant
    metadata = values.pop("metadata", None)
    return Signals(messages, metadata=metadata, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("source", "kwargs", "expected"), [
    ("convo_length <= 8 && priority == normal", {"n_user": 2, "n_assistant": 1}, True),
    ("convo_length <= 8 && priority == normal", {"n_user": 2, "priority": "high"}, False),
    ("convo_length > 8 || escalation == true", {"n_user": 5, "n_assistant": 4}, True),
    ("convo_length > 8 || escalation == true", {"escalation": True}, True),
    ("convo_length > 8 || escalation == true", {}, False),
    ("priority in [high, urgent]", {"priority": "urgent"}, True),
    ("priority not in [high, urgent]", {"priority": "urgent"}, False),
    ("!(channel == email)", {"channel": "chat"}, True),
    ("escalation", {"escalation": True}, True),
    ("!escalation && turns >= 1", {}, True),
    ("8 >= convo_length", {"n_user": 3}, True),
    ("tier == 'gold'", {"tier": "gold"}, True),
    ('tier == "gold"', {"tier": "silver"}, False),
    ("metadata.plan == enterprise", {"metadata": {"plan": "enterprise"}}, True),
    ("metadata.seats >= 50", {"metadata": {"seats": "120"}}, True),
    ("metadata.seats >= 50", {"metadata": {"seats": "many"}}, False),
    ("metadata.vip == true", {"metadata": {"vip": True}}, True),
    ("metadata.missing != x", {}, True),
])
def test_matcher_evaluates(source: str, kwargs: dict[str, object], expected: bool) -> None:
    assert compile_matcher(source)(signals(**kwargs)) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("source", "message", "column"), [
    ("priority == banana", "unknown value `banana` for `priority`; expected one of low, normal, high, urgent", 13),
    ("convo_length <= eight", "`convo_length` is a number; compare it with a number, not `eight`", 17),
    ("convo_length = 8", "unexpected character '='", 14),
    ("convo_length <= 8 &&", "expected a signal or a value, found the end of the matcher", 21),
    ("(convo_length <= 8", "expected `)`, found the end", 19),
    ("priority > normal", "`priority` is not a number; `>` needs a numeric signal", 12),
    ("escalation == yes", "`escalation` is true or false, not `yes`", 15),
    ("colour == red", "`colour` is not a signal", 1),
    ("convo_lenght > 8", "`convo_lenght` is not a signal; did you mean `convo_length`?", 1),
    ("convo_length", "`convo_length` is not a condition", 1),
    ("", "empty matcher", 1),
    ("priority in [high, 3]", "`priority` is text", 20),
    ("convo_length <= 8 priority", "unexpected `priority`; expected `&&`, `||` or the end", 19),
    ("convo_length & 8", "use `==` to compare, `&&`/`||` to combine", 14),
    ("escalaton && priority == high", "`escalaton` is not a signal; did you mean `escalation`?", 1),
    ("tokens > 1e3", "`1e3` is not a number the matcher reads; write digits", 10),
    ("tokens > 1_000", "`1_000` is not a number", 10),
    ("intent_confidence > .5", "`.5` is not a number", 21),
    ("metadata.tier == gold", "`metadata.tier` is read as the signal `tier`: write `tier == ...`", 1),
    ("metadata.plan == pro || metadata.intent == refund", "the signal `intent`", 25),
])
def test_matcher_errors_name_the_column(source: str, message: str, column: int) -> None:
    with pytest.raises(MatcherError) as caught:
        compile_matcher(source)
    assert message in caught.value.message
    assert caught.value.column == column


def test_matcher_reads_only_what_it_needs() -> None:
    matcher = compile_matcher("priority == high || metadata.plan == pro")
    assert matcher.signals == frozenset({"priority", "metadata.plan"})


def test_intent_is_not_classified_unless_read() -> None:
    calls: list[str] = []

    def classify(text: str) -> tuple[str, float]:
        calls.append(text)
        return "billing", 0.9

    s = Signals([{"role": "user", "content": "refund me"}], intent_fn=classify)
    assert compile_matcher("convo_length == 1")(s)
    assert calls == []
    assert compile_matcher("intent == billing && intent_confidence > 0.5")(s)
    assert calls == ["refund me"]


def test_client_set_intent_skips_the_classifier() -> None:
    def classify(text: str) -> tuple[str, float]:
        raise AssertionError("the classifier ran although the client set the intent")

    s = Signals([{"role": "user", "content": "hello"}], intent="billing_dispute", intent_fn=classify)
    assert compile_matcher("intent == billing_dispute && intent_confidence == 1")(s)
    assert s.computed()["intent"] == "billing_dispute"
