"""The simulated fleet's prompt cache: a prompt that begins with a long prefix sent recently is billed,
in part, as tokens read from the cache.

- The OpenAI and Gemini wires cache on their own, as OpenAI's automatic caching and Gemini's implicit
  caching do: every prompt is kept, and a later prompt that starts with the same messages (the next
  turn of the conversation, a retry) reads the longest such prefix, counted in steps of `STEP` tokens.
- The Anthropic wire caches only what the request marks with `cache_control` (its system prompt), and
  bills the first sight of it as tokens written to the cache.

A prefix under `MIN_TOKENS` is never read from the cache; an entry lives `TTL_S` after its last use.
Latency does not change with the cache: the latency laws were calibrated without it.
"""

from __future__ import annotations

import hashlib

from ..chat import message_text
from ..context import TokenCounter
from ._answers import SimAnswer, SimRequest

MIN_TOKENS = 1024
STEP = 128
TTL_S = 300.0
_PRUNE_AT = 50_000  # entries; past this, expired ones are dropped


class PromptCache:
    def __init__(self) -> None:
        self._expiry: dict[bytes, float] = {}

    def bill(self, model: str, request: SimRequest, reply: SimAnswer, counter: TokenCounter, now: float) -> None:
        """Set `reply`'s cached (or, for a marked prefix, written) tokens, and remember its prefixes."""
        prefix = request.messages[:request.cache_prefix]
        if not prefix:
            return
        digest = hashlib.blake2b(model.encode(), digest_size=16)
        keys: list[bytes] = []
        for message in prefix:  # one key per message boundary: the prompt's prefixes, shortest first
            digest.update(f"\x00{message.get('role')}\x00{message_text(message)}".encode())
            keys.append(digest.copy().digest())
        longest = next((i for i in range(len(keys), 0, -1) if self._expiry.get(keys[i - 1], 0.0) > now), 0)
        if len(self._expiry) >= _PRUNE_AT:
            self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        for key in keys:
            self._expiry[key] = now + TTL_S
        tokens = counter.count(prefix[:longest] if longest else prefix)
        if tokens < MIN_TOKENS:
            return
        if longest:
            reply.cached_tokens = tokens if request.cache_marked else tokens // STEP * STEP
        elif request.cache_marked:
            reply.cache_write_tokens = tokens
