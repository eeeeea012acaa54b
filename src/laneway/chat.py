"""Laneway's internal, OpenAI-shaped form of a chat exchange with one model.

Every provider translates from `ChatRequest` to its wire format and back to `Completion` (or a
stream of `Chunk`s). The gateway never sees a provider's own shapes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson

Message = dict[str, Any]


class GatewayMessage(dict[str, Any]):
    """A message the gateway put in the prompt, not the client: a model profile's `system_mode: replace`
    replaces the client's system prompt, not this (runtime.prepare), and trimming keeps it (context.py)."""


class KnowledgeMessage(GatewayMessage):
    """The passages a route's retrieval put in the prompt, as a message (grounding.py)."""


# One token of an answer as OpenAI's `logprobs.content` has it: `token`, `logprob`, `bytes`, `top_logprobs`.
TokenLogprob = dict[str, Any]

FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls")
# OpenAI's `reasoning_effort` values: an `openai` model takes them as they are, and an Anthropic or
# Gemini model's `reasoning:` may translate them.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


# Far above any model's window: a usage figure past it comes from a broken upstream, and would overflow the
# 64-bit counts of the metrics and the exchange log.
MAX_REPORTED_TOKENS = 1 << 40


def token_count(value: Any) -> int:
    """A usage figure as an upstream reported it: a whole number of tokens (as a number or digits). Anything else
    (absent, a fraction, negative, past `MAX_REPORTED_TOKENS`) counts as not reported: 0."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPORTED_TOKENS:
        return 0
    return value


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0  # every prompt token, those read from or written to the prompt cache included
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the provider's prompt cache
    cache_write_tokens: int = 0  # prompt tokens written to it (Anthropic bills them apart)
    reasoning_tokens: int = 0  # of `completion_tokens`, those the model thought (where the provider says)
    # Of `completion_tokens`, a `prediction`'s tokens the answer used and those it did not (billed all the same)
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ChatRequest:
    """What one attempt sends to one model.

    `messages` are OpenAI chat messages whose content is text (a string, or a list of text
    parts). `params` holds the generation parameters in OpenAI's names (`temperature`,
    `top_p`, `max_tokens`, `stop`, `presence_penalty`, `frequency_penalty`, `seed`,
    `logprobs`, `top_logprobs`, `response_format`, ...); each provider maps what its wire
    format supports.
    """

    model: str
    messages: list[Message]
    params: dict[str, Any] = field(default_factory=dict)

    def max_tokens(self, default: int) -> int:
        value = self.params.get("max_tokens", self.params.get("max_completion_tokens"))
        return int(value) if value is not None else default


def answer_schema(params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema a `response_format: {"type": "json_schema"}` request asks the answer to follow."""
    fmt = params.get("response_format")
    if not fmt or fmt.get("type") != "json_schema":
        return None
    schema = fmt["json_schema"].get("schema")
    return schema if isinstance(schema, dict) else None


def wants_json(params: dict[str, Any]) -> bool:
    """Whether the request asks for a JSON answer (`json_object`, or `json_schema` with or without a schema)."""
    fmt = params.get("response_format")
    return fmt is not None and fmt.get("type") in ("json_object", "json_schema")


@dataclass(slots=True)
class Completion:
    """A whole answer from one model."""

    text: str
    finish_reason: str
    usage: Usage
    model: str
    logprobs: list[TokenLogprob] | None = None
    upstream_id: str = ""
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI `message.tool_calls`, as the model made them
    refusal: str | None = None  # OpenAI `message.refusal`: the model declined, and said why (no `text` then)
    # An OpenAI-compatible upstream's `system_fingerprint` and `service_tier`, passed on to the client
    system_fingerprint: str | None = None
    service_tier: str | None = None
    annotations: list[Any] | None = None  # OpenAI `message.annotations`: a web search's URL citations


def tool_call_text(calls: list[dict[str, Any]]) -> list[str]:
    """The generated text of tool calls or their pieces (names and arguments), to count when there is no usage."""
    texts: list[str] = []
    for call in calls:
        function = call.get("function")
        if isinstance(function, dict):
            texts.extend(str(function.get(key) or "") for key in ("name", "arguments"))
    return texts


def said(text: str, tool_calls: list[dict[str, Any]] | None) -> str:
    """An answer as text: its text, then each tool call it made as `name(arguments)` on a line of its own
    (arguments as compact JSON with sorted keys, when they are JSON). `tool_calls` are whole calls, or a
    stream's pieces (each with its `index`), in the order they came. What the shadow comparison reads (two
    answers that call different tools differ; text alone, they were both empty and equal) and the exchange
    log keeps of an answer (`store_bodies`), whole or streamed alike."""
    if not tool_calls:
        return text
    names: dict[Any, str] = {}
    arguments: dict[Any, list[str]] = {}
    for position, call in enumerate(tool_calls):
        key = call.get("index", position)
        function = call.get("function")
        if not isinstance(function, dict):
            continue
        if function.get("name"):
            names[key] = str(function["name"])
        arguments.setdefault(key, []).append(str(function.get("arguments") or ""))
        names.setdefault(key, "")
    lines = [text] if text else []
    for key, name in names.items():
        raw = "".join(arguments.get(key, ()))
        with contextlib.suppress(orjson.JSONDecodeError):
            raw = orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS).decode()
        lines.append(f"{name}({raw})")
    return "\n".join(lines)


@dataclass(slots=True)
class Chunk:
    """One piece of a streamed answer: text or tool-call pieces, and at the end a finish reason and
    the usage. A piece before the end may carry the usage so far (Anthropic's and Gemini's prompt counts
    come at once): the last one a stream gives is its usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI `delta.tool_calls` pieces, each with its `index`
    refusal: str = ""  # a piece of OpenAI's `delta.refusal`
    system_fingerprint: str | None = None  # an OpenAI-compatible upstream's, on the chunks that carry it
    service_tier: str | None = None
    annotations: list[Any] | None = None  # OpenAI `delta.annotations`


# Content part types that are text (an assistant's `refusal` part included); others are media.
TEXT_PARTS = frozenset({"text", "input_text", "refusal"})


def part_text(part: dict[str, Any]) -> str:
    """The text of a text part (`text`), or of an assistant's `refusal` part."""
    return str(part.get("text") or part.get("refusal") or "")


def media_parts(message: Message) -> list[dict[str, Any]] | None:
    """A message's non-text content parts (images, files, audio), or None when it has none."""
    content = message.get("content")
    if not isinstance(content, list):
        return None
    parts = [p for p in content if isinstance(p, dict) and p.get("type", "text") not in TEXT_PARTS]
    return parts or None


def message_text(message: Message) -> str:
    """The text of a message whose content is a string or a list of text parts, one part a line: parts
    joined end to end ran one's last word into the next one's first ("charged" + "twice for" read as
    "chargedtwice"), for the classifier, retrieval and the system prompt of an Anthropic or Gemini model."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(text for part in content if isinstance(part, dict) and (text := part_text(part)))
    return ""
