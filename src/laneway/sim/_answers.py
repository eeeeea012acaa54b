"""Deterministic simulated answers: the same model and prompt always give the same words.

Answers are assembled from customer-support reply sentences, seeded by a hash of the model and
the conversation, so runs are reproducible and different models answer differently.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..chat import Message, message_text
from ..context import TokenCounter
from ._cassettes import Cassette, Recording, normalise
from ._fleet import SimModel
from ._structured import instance
from ._tools import SimCall, SimTool, tool_call

# Laneway's own cascade prompts, which the fleet recognises (see laneway/cascade.py).
SELF_REPORT_CUE = "write [confidence: X]"
VERIFIER_CUE = "You grade customer-support answers."
# What the fleet bills for one image, document or audio clip in a prompt: Gemini's figure for an image
# of up to 384 pixels a side.
MEDIA_TOKENS = 258
THINKING_BASE_TOKENS = 200

_SENTENCES = (
    "Thanks for reaching out, I can help with that.",
    "I have pulled up your account and can see the order you mentioned.",
    "I understand how frustrating this must be.",
    "Let me check the details of your last payment.",
    "The refund was issued to your original payment method.",
    "It usually takes three to five business days to show on your statement.",
    "I can see a duplicate charge on the invoice, and I have flagged it for reversal.",
    "Could you confirm the email address on the account?",
    "Your subscription renews on the first day of each month.",
    "I have updated the shipping address for the pending order.",
    "The package left our warehouse yesterday and is on its way.",
    "If the item arrived damaged, I can arrange a replacement at no cost.",
    "I have escalated this to our billing specialists, who will follow up by email.",
    "You can change your plan at any time from the account settings page.",
    "For security, I cannot share card details in this chat.",
    "I have applied a courtesy credit to your next invoice.",
    "Is there anything else I can help you with today?",
    "The promo code expired at the end of last month, but I can offer an alternative.",
    "I reset the password link; it is valid for the next thirty minutes.",
    "Your dispute has been recorded, and the case number is in your inbox.",
)


@dataclass(slots=True)
class SimRequest:
    """A wire-neutral view of what a simulated model was asked."""

    model_id: str  # the upstream model id as sent, fault suffix included
    messages: list[Message]
    max_tokens: int = 1024
    stream: bool = False
    logprobs: bool = False
    seed: int | None = None
    json_schema: dict[str, Any] | None = None  # the schema of a structured output asked for (`ANY_OBJECT` for any)
    media: int = 0  # images, documents and audio clips in the prompt, each `MEDIA_TOKENS` prompt tokens
    cache_prefix: int = 0  # leading messages the prompt cache may keep (`_prompt_cache`)
    cache_marked: bool = False  # the request marked them for the cache (Anthropic's `cache_control`)
    thinking_budget: int = 0  # tokens the model may think before it answers (-1: as many as it likes)
    tools: tuple[SimTool, ...] = ()  # the functions it may call (`_tools`)
    tool_choice: str | None = None  # `auto`, `required`, `none` or a function's name; None is `auto`
    tool_answered: bool = False  # a tool's result is the conversation's last turn


@dataclass(slots=True)
class SimAnswer:
    words: list[str]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    logprobs: list[float] = field(default_factory=list)
    cached_tokens: int = 0  # of `prompt_tokens`, read from the prompt cache
    cache_write_tokens: int = 0  # of `prompt_tokens`, written to it
    thinking_tokens: int = 0  # thought before answering: billed as output, not part of `completion_tokens`
    calls: list[SimCall] = field(default_factory=list)  # the answer is these calls (finish reason `tool_calls`)

    @property
    def text(self) -> str:
        return "".join(self.words)


def prompt_tokens(counter: TokenCounter, request: SimRequest) -> int:
    return counter.count(request.messages) + MEDIA_TOKENS * request.media


def thinking_tokens(request: SimRequest, prompt: int) -> int:
    """What a thinking model spends: a base plus a quarter of the prompt, within its budget."""
    if request.thinking_budget == 0:
        return 0
    wanted = THINKING_BASE_TOKENS + prompt // 4
    return wanted if request.thinking_budget < 0 else min(request.thinking_budget, wanted)


def answer(model: SimModel, request: SimRequest, counter: TokenCounter, fleet_seed: int,
           cassette: Cassette | None = None) -> SimAnswer:
    reply = _answer(model, request, counter, fleet_seed, cassette)
    reply.thinking_tokens = thinking_tokens(request, reply.prompt_tokens)
    return reply


def _answer(model: SimModel, request: SimRequest, counter: TokenCounter, fleet_seed: int,
            cassette: Cassette | None) -> SimAnswer:
    rng = random.Random(_seed(model.name, request, fleet_seed))
    if _asked(request, VERIFIER_CUE):
        return _grade(model, request, counter, rng)
    users = [m for m in request.messages if m.get("role") == "user"]
    call = tool_call(request.tools, request.tool_choice, request.tool_answered,
                     message_text(users[-1]) if users else "", rng, _SENTENCES)
    if call is not None:
        made = call.name + orjson.dumps(call.arguments).decode()
        return SimAnswer([], prompt_tokens(counter, request), counter.text_tokens(made), "tool_calls", calls=[call])
    if request.json_schema is not None:
        return _structured(model, request, counter, rng)
    recording = _recorded(model, request, cassette)
    if recording is not None:
        return _replayed(model, request, counter, rng, recording)
    target, capped = model.output_tokens(rng, max(1, request.max_tokens))
    words: list[str] = []
    tokens = 0
    while tokens < target:
        sentence = rng.choice(_SENTENCES)
        for word in sentence.split(" "):
            piece = word if not words else " " + word
            cost = counter.text_tokens(piece)
            if tokens + cost > target and words:
                tokens = target
                break
            words.append(piece)
            tokens += cost
    seen = _observed_confidence(model, latent_quality("".join(words)), rng)
    if _asked(request, SELF_REPORT_CUE):
        words.append(f"\n[confidence: {seen:.2f}]")
    logprobs = [min(0.0, rng.gauss(math.log(seen), 0.05)) for _ in words] if request.logprobs else []
    return SimAnswer(words, prompt_tokens(counter, request), tokens, "length" if capped else "stop", logprobs)


def _recorded(model: SimModel, request: SimRequest, cassette: Cassette | None) -> Recording | None:
    if cassette is None or model.cassette is None:
        return None
    users = [m for m in request.messages if m.get("role") == "user"]
    known = cassette.get(normalise(message_text(users[-1]))) if users else None
    return known.get(model.cassette) if known else None


def _replayed(model: SimModel, request: SimRequest, counter: TokenCounter, rng: random.Random,
              recording: Recording) -> SimAnswer:
    """The recorded real answer (cut at max_tokens); its correctness is the answer's latent quality."""
    words, tokens, capped = _cut(recording.text, request.max_tokens, counter)
    truth = 0.9 + 0.1 * rng.random() if recording.correct else 0.1 * rng.random()
    seen = _observed_confidence(model, truth, rng)
    if _asked(request, SELF_REPORT_CUE):
        words.append(f"\n[confidence: {seen:.2f}]")
    logprobs = [min(0.0, rng.gauss(math.log(seen), 0.05)) for _ in words] if request.logprobs else []
    return SimAnswer(words, prompt_tokens(counter, request), tokens, "length" if capped else "stop", logprobs)


def _structured(model: SimModel, request: SimRequest, counter: TokenCounter, rng: random.Random) -> SimAnswer:
    """A JSON answer that follows the requested schema, cut at `max_tokens` like any other (and then no
    longer valid JSON, as a real model's would not be). No self-reported confidence: under a schema a
    model has nowhere to write it."""
    assert request.json_schema is not None
    text = orjson.dumps(instance(request.json_schema, rng, _SENTENCES)).decode()
    words, tokens, capped = _cut(text, request.max_tokens, counter)
    seen = _observed_confidence(model, latent_quality("".join(words)), rng)
    logprobs = [min(0.0, rng.gauss(math.log(seen), 0.05)) for _ in words] if request.logprobs else []
    return SimAnswer(words, prompt_tokens(counter, request), tokens, "length" if capped else "stop", logprobs)


def _cut(text: str, max_tokens: int, counter: TokenCounter) -> tuple[list[str], int, bool]:
    """`text` as words (each but the first with its leading space), up to `max_tokens`; their tokens;
    whether it was cut."""
    words: list[str] = []
    tokens = 0
    for i, word in enumerate(text.split(" ")):
        piece = word if i == 0 else " " + word
        cost = counter.text_tokens(piece)
        if tokens + cost > max_tokens:
            return words, tokens, True
        words.append(piece)
        tokens += cost
    return words, tokens, False


def latent_quality(text: str) -> float:
    """The simulated truth about an answer, in [0, 1): higher is better. A model of quality q gives
    a good answer when its latent quality is at least 1 - q."""
    digest = hashlib.blake2b(b"quality|" + text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_good(model: SimModel, text: str) -> bool:
    return latent_quality(text) >= 1 - model.quality


def _observed_confidence(model: SimModel, truth: float, rng: random.Random) -> float:
    # `logprob_reliability` mixes the truth with noise; 1 is a perfectly calibrated signal, 0 pure noise.
    seen = model.logprob_reliability * truth + (1 - model.logprob_reliability) * rng.random()
    return min(0.999, max(0.02, seen))


def _grade(model: SimModel, request: SimRequest, counter: TokenCounter, rng: random.Random) -> SimAnswer:
    prompt = message_text(request.messages[-1])
    proposed = prompt.split("Proposed answer:\n", 1)[-1].rsplit("\n\nProbability", 1)[0]
    grade = _observed_confidence(model, latent_quality(proposed), rng)
    text = f"{grade:.2f}"
    return SimAnswer([text], prompt_tokens(counter, request), counter.text_tokens(text), "stop")


def _asked(request: SimRequest, cue: str) -> bool:
    return any(m.get("role") == "system" and cue in message_text(m) for m in request.messages)


def _seed(name: str, request: SimRequest, fleet_seed: int) -> int:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{fleet_seed}|{name}|{request.seed}|".encode())
    for message in request.messages:
        digest.update(str(message.get("role")).encode())
        digest.update(message_text(message).encode())
    return int.from_bytes(digest.digest(), "big")
