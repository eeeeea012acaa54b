"""Retrieval on the request path: search a route's knowledge base with the customer's latest
message and put the passages where the model will read them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .chat import KnowledgeMessage, Message
from .config import Retrieval

if TYPE_CHECKING:
    from .retrieval import KnowledgeBase, Passage


@dataclass(frozen=True, slots=True)
class Grounding:
    messages: list[Message]
    hits: int
    latency_ms: float
    # On a miss sent to `on_miss` (which gets `messages`, the conversation as it came): the messages with the
    # block that says nothing matched, for the route's other models should `on_miss` fail.
    missed: list[Message] | None = None


def ground(knowledge: KnowledgeBase, retrieval: Retrieval, messages: list[Message], query: str) -> Grounding:
    """Return the messages with the passages injected (style `system`: a system message after the
    existing ones; style `user`: a user message just before the customer's latest message)."""
    started = time.perf_counter()
    passages = knowledge.search(query, retrieval.top_k, retrieval.min_score) if query else []
    if not passages and retrieval.on_miss is not None:  # the caller sends the request to `on_miss` instead
        return Grounding(messages, 0, (time.perf_counter() - started) * 1000, _inject(messages, [], retrieval.style))
    grounded = _inject(messages, passages, retrieval.style)
    return Grounding(grounded, len(passages), (time.perf_counter() - started) * 1000)  # search and injection


def _inject(messages: list[Message], passages: list[Passage], style: str) -> list[Message]:
    from .retrieval import render_passages

    block = KnowledgeMessage(role="system" if style == "system" else "user",
                             content=render_passages(passages, style=style))
    if style == "system":
        at = next((i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")), len(messages))
        return [*messages[:at], block, *messages[at:]]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
    return [*messages[:last_user], block, *messages[last_user:]]
