"""Deterministic simulated answers: the same model and prompt always give the same words.

Answers are assembled from customer-support reply sentences, seeded by a hash of the model and
the conversation, so runs are reproducible and different models answer differently.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from ..chat import Message, message_text
from ..context import TokenCounter
from ._fleet import SimModel

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


@dataclass(slots=True)
class SimAnswer:
    words: list[str]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    logprobs: list[float] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.words)


def prompt_tokens(counter: TokenCounter, request: SimRequest) -> int:
    return counter.count(request.messages)


def answer(model: SimModel, request: SimRequest, counter: TokenCounter, fleet_seed: int) -> SimAnswer:
    rng = random.Random(_seed(model.name, request, fleet_seed))
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
    finish = "length" if capped else "stop"
    good = rng.random() < model.quality
    return SimAnswer(words, prompt_tokens(counter, request), tokens, finish,
                     _logprobs(model, rng, len(words), good) if request.logprobs else [])


def _logprobs(model: SimModel, rng: random.Random, n: int, good: bool) -> list[float]:
    # Reliability mixes the true signal (good answers are confident) with noise.
    signal = -0.05 if good else -1.2
    noise = rng.uniform(-1.2, -0.05)
    mean = model.logprob_reliability * signal + (1 - model.logprob_reliability) * noise
    return [min(0.0, rng.gauss(mean, 0.05)) for _ in range(n)]


def _seed(name: str, request: SimRequest, fleet_seed: int) -> int:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{fleet_seed}|{name}|{request.seed}|".encode())
    for message in request.messages:
        digest.update(str(message.get("role")).encode())
        digest.update(message_text(message).encode())
    return int.from_bytes(digest.digest(), "big")
