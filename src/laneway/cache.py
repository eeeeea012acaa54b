"""The exact response cache: a hash of the normalised request → the answer, with a TTL.

Keyed by route (or directly addressed model), messages (role, text, tool calls) and the generation
parameters that change an answer. Off by default; per route `cache: {mode, ttl_s,
allow_temperature}`. Only answers at temperature 0 are read and written (an unset temperature is the
API's default, 1), unless `allow_temperature` says so. The store is in-memory (bounded LRU) by
default, Redis when the config has `state:`; a store that fails is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

import orjson

from .chat import Completion, Message, Usage, media_parts, message_text
from .config import CacheSettings, ModelSpec

log = logging.getLogger("laneway")

# Parameters that do not change the answer's content stay out of the key: who asks (`user`,
# `safety_identifier`, set per end user), how it is delivered, how the provider caches the prompt.
_NOT_IN_KEY = frozenset({"user", "safety_identifier", "stream", "stream_options", "service_tier",
                         "prompt_cache_key", "prompt_cache_retention"})


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...


class MemoryStore:
    """A bounded LRU with per-entry expiry."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def cache_key(scope: str, messages: list[Message], params: dict[str, Any]) -> str:
    normal = [(m.get("role"), m.get("name"), message_text(m).strip(), m.get("tool_calls"), m.get("tool_call_id"),
               media_parts(m)) for m in messages]
    kept = {_SAME.get(k, k): float(v) if type(v) is int and k in _NUMBERS else v
            for k, v in params.items() if k not in _NOT_IN_KEY}
    payload = orjson.dumps([scope, normal, kept], option=orjson.OPT_SORT_KEYS)
    return "laneway:cache:" + hashlib.blake2b(payload, digest_size=16).hexdigest()


# Spellings of one setting: `temperature: 0` is `0.0`, `max_completion_tokens` is `max_tokens`.
_NUMBERS = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})
_SAME = {"max_completion_tokens": "max_tokens"}


def model_scope(spec: ModelSpec) -> str:
    """What of a model shapes its answers (its upstream, model id, profile, reasoning): a reload that changes
    any of them starts its cache afresh. Stable across processes, which share entries through Redis."""
    shaping = (spec.provider, spec.base_url, spec.model, spec.profile, spec.reasoning)
    return f"{spec.name}|{hashlib.blake2b(orjson.dumps(shaping), digest_size=6).hexdigest()}"


def cacheable(settings: CacheSettings, temperature: float | None) -> bool:
    """Only answers at temperature 0, unless sampled ones are allowed. No temperature (in the request
    or the model's profile) is the API's default, 1 for OpenAI, Anthropic and Gemini: sampled."""
    return settings.allow_temperature or temperature == 0


async def lookup(store: CacheStore, key: str) -> Completion | None:
    try:
        raw = await store.get(key)
    except Exception as exc:  # noqa: BLE001 - a failing cache is a miss, never an error
        log.warning("laneway: cache read failed (%s); treating as a miss", type(exc).__name__)
        return None
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        usage = Usage(int(data["prompt_tokens"]), int(data["completion_tokens"]))
        logprobs, fingerprint = data.get("logprobs"), data.get("system_fingerprint")
        annotations = data.get("annotations")
        completion = Completion(str(data["text"]), str(data["finish_reason"]), usage, str(data["model"]),
                                tool_calls=data.get("tool_calls"), refusal=data.get("refusal"),
                                logprobs=logprobs if isinstance(logprobs, list) else None,
                                system_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
                                annotations=annotations if isinstance(annotations, list) else None)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:  # another writer's entry
        log.warning("laneway: a cache entry is not one this release reads (%s); treating it as a miss",
                    type(exc).__name__)
        return None
    return completion


async def remember(store: CacheStore, key: str, completion: Completion, model: str, ttl_s: float) -> None:
    value = orjson.dumps({"text": completion.text, "finish_reason": completion.finish_reason, "model": model,
                          "prompt_tokens": completion.usage.prompt_tokens,
                          "completion_tokens": completion.usage.completion_tokens,
                          "tool_calls": completion.tool_calls, "refusal": completion.refusal,
                          "logprobs": completion.logprobs, "system_fingerprint": completion.system_fingerprint,
                          "annotations": completion.annotations})
    try:
        await store.set(key, value, ttl_s)
    except Exception as exc:  # noqa: BLE001 - a failing cache must not fail the answer it would have kept
        log.warning("laneway: cache write failed (%s)", type(exc).__name__)
