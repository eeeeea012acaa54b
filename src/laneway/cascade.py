"""The confidence cascade: the efficient model answers first; an answer whose confidence is under
the route's threshold is escalated, synchronously and within the same deadline.

Confidence sources:
- `logprobs`: exp(mean token log-probability) of the answer (OpenAI, Gemini);
- `self_report`: the model is asked to end its answer with `[confidence: X]`; Laneway strips it;
- `verifier`: a second model grades the answer with a number from 0 to 1.
A source that yields nothing (no logprobs, no parseable number) counts as confidence 0, so an
answer is never accepted without evidence.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from typing import Any

from .chat import ChatRequest, Completion, GatewayMessage, Message, message_text
from .config import Cascade
from .context import upper_bound
from .dispatch import COOLING_DOWN, Dispatcher, Plan, Ticket, admission_estimate, counted, estimate_usage
from .errors import LanewayError, UpstreamError
from .exchange import GATED, OK, SKIPPED, Attempt, Exchange
from .gate import GateRejected

log = logging.getLogger("laneway")

SELF_REPORT_INSTRUCTION = (
    "After your answer, on a new line, write [confidence: X] where X is a number from 0 to 1: how sure "
    "you are that the answer is correct and complete."
)
VERIFIER_INSTRUCTION = (
    "You grade customer-support answers. Reply with only a number from 0 to 1: the probability that "
    "the answer is correct, complete and safe to send."
)
# The share of what is left of the deadline a verifier's grade may take: the escalation gets the rest.
VERIFIER_SHARE = 0.5
_SUFFIX = re.compile(r"\s*\[confidence:\s*([01](?:\.\d+)?)\]\s*$", re.IGNORECASE)
_NUMBER = re.compile(r"\b(0(?:\.\d+)?|1(?:\.0+)?)\b")


def ask_for_self_report(messages: list[Message]) -> list[Message]:
    """The messages with the request for a confidence last: the gateway's own, so that a profile that replaces
    the client's system prompt keeps it (without it, no answer says its confidence, and all escalate)."""
    return [*messages, GatewayMessage(role="system", content=SELF_REPORT_INSTRUCTION)]


def ask_for_logprobs(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "logprobs": True}


def from_logprobs(completion: Completion) -> float:
    """The geometric mean of the answer's token probabilities; 0 when the upstream gave none that is a log
    probability (a number, at most 0)."""
    values: list[float] = []
    for token in completion.logprobs or ():
        value = token.get("logprob")
        if not isinstance(value, int | float) or isinstance(value, bool) or not value <= 0:  # NaN is not either
            return 0.0
        values.append(value)
    return math.exp(sum(values) / len(values)) if values else 0.0


def take_self_report(completion: Completion) -> float:
    """Strip the `[confidence: X]` suffix from the answer and return X (0 when absent)."""
    match = _SUFFIX.search(completion.text)
    if match is None:
        return 0.0
    completion.text = completion.text[: match.start()]
    return float(match.group(1))


def verifier_request(model: str, messages: list[Message], answer: str) -> ChatRequest:
    conversation = "\n".join(f"{m.get('role')}: {message_text(m)}" for m in messages if m.get("role") != "system")
    prompt = f"Conversation:\n{conversation}\n\nProposed answer:\n{answer}\n\nProbability (0 to 1):"
    return ChatRequest(model, [{"role": "system", "content": VERIFIER_INSTRUCTION},
                               {"role": "user", "content": prompt}], {"temperature": 0, "max_tokens": 8})


def from_verifier(completion: Completion) -> float:
    match = _NUMBER.search(completion.text)
    return float(match.group(1)) if match else 0.0


async def complete_with_cascade(dispatcher: Dispatcher, cascade: Cascade, plan: Plan, messages: list[Message],
                                params: dict[str, Any], exchange: Exchange) -> Completion:
    """The efficient model's answer if confident enough, else the escalation model's (within the deadline).
    A failed escalation keeps the first answer: a cheaper answer beats none."""
    asked, asked_params = messages, params
    if cascade.source == "self_report":
        asked = ask_for_self_report(messages)
    elif cascade.source == "logprobs":
        asked_params = ask_for_logprobs(params)
    completion = await dispatcher.complete(plan, asked, asked_params, exchange)
    if exchange.lane not in ("primary", "canary"):
        return completion  # a fallback answered: nothing cheaper to second-guess
    score = await _confidence(dispatcher, cascade, messages, completion, plan, exchange)
    exchange.cascade_confidence = score
    if score >= cascade.confidence:
        return completion
    escalation = Plan(plan.route, [("cascade", cascade.escalate_to)], plan.deadline, plan.priority, plan.budget_ms)
    try:
        return await dispatcher.complete(escalation, messages, params, exchange)
    except LanewayError as error:
        log.warning("laneway: cascade escalation to `%s` failed (%s); keeping the first answer",
                    cascade.escalate_to, error.code)
        return completion


async def _confidence(dispatcher: Dispatcher, cascade: Cascade, messages: list[Message], completion: Completion,
                      plan: Plan, exchange: Exchange) -> float:
    if cascade.source == "logprobs":
        return from_logprobs(completion)
    if cascade.source == "self_report":
        return take_self_report(completion)
    assert cascade.verifier is not None
    return await _verified(dispatcher, cascade.verifier, messages, completion, plan, exchange)


async def _verified(dispatcher: Dispatcher, verifier: str, messages: list[Message], completion: Completion,
                    plan: Plan, exchange: Exchange) -> float:
    """The verifier's grade (0 when it gives none). Its call keeps to the verifier's breaker, to its gate (a
    slot and the budgets, waited for within its time; a gate that turns it away gives no grade), to its own
    `deadline_ms` and to `VERIFIER_SHARE` of what is left of the deadline, so that a verifier that hangs
    still leaves the escalation time to answer, and one that keeps failing is not waited for."""
    runtime = dispatcher.runtime
    spec = runtime.config.models[verifier]
    attempt = Attempt(verifier, OK, lane="verifier")
    exchange.attempts.append(attempt)
    breaker = runtime.breakers[verifier]
    loop = asyncio.get_running_loop()
    now = loop.time()
    if not breaker.allows(now):
        attempt.outcome, attempt.error = SKIPPED, COOLING_DOWN
        return 0.0
    limit = min(plan.deadline, now + VERIFIER_SHARE * max(0.0, plan.deadline - now))
    if spec.deadline_ms is not None:
        limit = min(limit, now + spec.deadline_ms / 1000)
    request = verifier_request(spec.model, messages, completion.text)
    started = time.perf_counter()  # again once admitted: a wait in the gate's queue is no latency of the model's
    ticket = Ticket(runtime.gates.get(verifier))
    sink = dispatcher.sink
    try:
        if ticket.gate is not None:
            prompt = await counted(upper_bound(request.messages), dispatcher.counter.count, request.messages,
                                   spec.tokenizer)
            ticket.estimate = admission_estimate(spec, request, prompt)
            try:
                waited = await ticket.gate.admit(plan.priority, *ticket.estimate, limit)
            except GateRejected:  # the attempt's latency is its wait, in vain, as the dispatcher's are
                if sink is not None:
                    sink.count("gate_rejected", verifier)
                    sink.observe_queue_wait(verifier, time.perf_counter() - started)
                raise
            ticket.admitted = True
            exchange.upstream_ms += waited * 1000
            if sink is not None:
                sink.observe_queue_wait(verifier, waited)
            started = time.perf_counter()
        graded = await runtime.providers[verifier].complete(request, limit)
        if not graded.usage.total_tokens:  # none reported: counted, as for any answer, so it is not free
            graded.usage = await estimate_usage(dispatcher.counter, spec, request, [graded.text])
        usage = graded.usage
        cost = spec.price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                               usage.cache_write_tokens)
        ticket.used = (usage.total_tokens, cost, (time.perf_counter() - started) * 1000)  # the gate's budgets
    except GateRejected as refused:  # real traffic holds the verifier's slots or budget: no grade
        attempt.outcome, attempt.error = GATED, refused.reason
        breaker.release()
        return 0.0
    except UpstreamError as error:
        attempt.outcome, attempt.error = error.code, error.message
        dispatcher.judge(verifier, error)
        return 0.0
    except LanewayError as error:
        attempt.outcome, attempt.error = error.code, error.message
        breaker.release()
        return 0.0
    except BaseException:  # the client left, or a bug: no verdict on the verifier
        breaker.release()
        raise
    finally:
        attempt.latency_ms = (time.perf_counter() - started) * 1000
        exchange.upstream_ms += attempt.latency_ms
        ticket.release()
    breaker.success()
    attempt.prompt_tokens, attempt.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    attempt.cached_tokens = usage.cached_tokens
    attempt.cost_usd = cost
    exchange.cost_usd += cost
    return from_verifier(graded)
