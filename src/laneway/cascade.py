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

import math
import re
from typing import Any

from .chat import ChatRequest, Completion, Message, message_text

SELF_REPORT_INSTRUCTION = (
    "After your answer, on a new line, write [confidence: X] where X is a number from 0 to 1: how sure "
    "you are that the answer is correct and complete."
)
VERIFIER_INSTRUCTION = (
    "You grade customer-support answers. Reply with only a number from 0 to 1: the probability that "
    "the answer is correct, complete and safe to send."
)
_SUFFIX = re.compile(r"\s*\[confidence:\s*([01](?:\.\d+)?)\]\s*$", re.IGNORECASE)
_NUMBER = re.compile(r"\b(0(?:\.\d+)?|1(?:\.0+)?)\b")


def ask_for_self_report(messages: list[Message]) -> list[Message]:
    return [*messages, {"role": "system", "content": SELF_REPORT_INSTRUCTION}]


def ask_for_logprobs(params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "logprobs": True}


def from_logprobs(completion: Completion) -> float:
    values = completion.logprobs
    if not values:
        return 0.0
    return math.exp(sum(values) / len(values))


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
