"""The Anthropic Messages API wire format, as the simulated fleet speaks it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from ..chat import Message
from ._answers import SimAnswer, SimRequest
from ._tools import NONE, REQUIRED, SimTool

CONTENT_TYPE = "application/json"
# The Messages API answers 529, not 503, when it is overloaded.
OVERLOADED_STATUS = 529

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_CHOICES = {"auto": None, "any": REQUIRED, "none": NONE}
MIN_THINKING_BUDGET = 1024
MIN_THINKING_TOP_P = 0.95
THOUGHT = "The customer asks about their account; check the policy before answering."
_MEDIA_BLOCKS = ("image", "document")
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    529: "overloaded_error",
}


def parse(body: dict[str, Any], path_model: str | None) -> SimRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: field required, a non-empty list")
    if not isinstance(body.get("max_tokens"), int):
        raise ValueError("max_tokens: field required, an integer")
    # The API caches only what `cache_control` marks: the system prompt up to the last marked block.
    system: Any = body.get("system")
    marked_at = _marked(system)
    if marked_at is None:
        cached, rest = "", _text(system)
    else:
        cached, rest = _text(system[:marked_at + 1]), _text(system[marked_at + 1:])
    chat: list[Message] = [{"role": "system", "content": text} for text in (cached, rest) if text]
    chat += [{"role": str(m.get("role")), "content": _text(m.get("content"))} for m in messages]
    marked = bool(cached)
    output = (body.get("output_config") or {}).get("format") or {}
    if output and (output.get("type") != "json_schema" or not isinstance(output.get("schema"), dict)):
        raise ValueError("output_config.format: must be {\"type\": \"json_schema\", \"schema\": {...}}")
    budget = _thinking(body)
    return SimRequest(model_id=str(body.get("model") or path_model or ""), messages=chat,
                      max_tokens=int(body["max_tokens"]) - budget, stream=bool(body.get("stream")),
                      json_schema=output.get("schema"), media=sum(_media(m.get("content")) for m in messages),
                      cache_prefix=int(marked), cache_marked=marked, thinking_budget=budget,
                      tools=_tools(body.get("tools")), tool_choice=_choice(body.get("tool_choice")),
                      tool_answered=_blocks(messages[-1], "tool_result") > 0)


def _tools(tools: Any) -> tuple[SimTool, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                              and isinstance(t.get("input_schema"), dict) for t in tools):
        raise ValueError("tools: each tool needs a `name` and an `input_schema` object")
    return tuple(SimTool(t["name"], str(t.get("description") or ""), t["input_schema"]) for t in tools)


def _choice(choice: Any) -> str | None:
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    if kind not in _CHOICES:
        raise ValueError("tool_choice.type: must be one of auto, any, tool, none")
    return _CHOICES[kind]


def _blocks(message: Any, kind: str) -> int:
    content = message.get("content") if isinstance(message, dict) else None
    return sum(isinstance(b, dict) and b.get("type") == kind for b in content) if isinstance(content, list) else 0


def _thinking(body: dict[str, Any]) -> int:
    """Extended thinking's budget, checked as the API checks it (0 without thinking)."""
    thinking = body.get("thinking")
    if thinking is None:
        return 0
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        raise ValueError("thinking: must be {\"type\": \"enabled\", \"budget_tokens\": N}")
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < MIN_THINKING_BUDGET:
        raise ValueError(f"thinking.budget_tokens: must be an integer of at least {MIN_THINKING_BUDGET}")
    if budget >= body["max_tokens"]:
        raise ValueError("max_tokens must be greater than thinking.budget_tokens")
    if body.get("temperature", 1) != 1:
        raise ValueError("temperature may only be set to 1 when thinking is enabled")
    if body.get("top_p", 1) < MIN_THINKING_TOP_P:
        raise ValueError(f"top_p must be at least {MIN_THINKING_TOP_P} when thinking is enabled")
    return budget


def _marked(system: Any) -> int | None:
    """The index of the system prompt's last block that asks for the prompt cache (`cache_control`), if any."""
    if not isinstance(system, list):
        return None
    return next((i for i in range(len(system) - 1, -1, -1) if isinstance(system[i], dict)
                 and (system[i].get("cache_control") or {}).get("type") == "ephemeral"), None)


def _prompt_usage(answer: SimAnswer) -> dict[str, int]:
    """`input_tokens` counts neither the tokens read from the cache nor those written to it."""
    return {"input_tokens": answer.prompt_tokens - answer.cached_tokens - answer.cache_write_tokens,
            "cache_read_input_tokens": answer.cached_tokens,
            "cache_creation_input_tokens": answer.cache_write_tokens}


def _media(content: Any) -> int:
    """Image and document blocks, checked as the API checks their `source`."""
    blocks = [b for b in content if isinstance(b, dict) and b.get("type") in _MEDIA_BLOCKS] \
        if isinstance(content, list) else []
    for block in blocks:
        source = block.get("source") or {}
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            continue
        if source.get("type") != "base64" or not source.get("media_type") or not source.get("data"):
            raise ValueError(f"{block['type']}.source: must be {{type: base64, media_type, data}} "
                             "or {type: url, url}")
    return len(blocks)


def completion(answer: SimAnswer, request: SimRequest, request_id: str) -> bytes:
    thought = [{"type": "thinking", "thinking": THOUGHT, "signature": "sim"}] if answer.thinking_tokens else []
    said = [{"type": "text", "text": answer.text}] if answer.words or not answer.calls else []
    calls = [{"type": "tool_use", "id": _tool_use_id(c.id), "name": c.name, "input": c.arguments} for c in answer.calls]
    return orjson.dumps({
        "id": f"msg_{request_id}", "type": "message", "role": "assistant", "model": request.model_id,
        "content": [*thought, *said, *calls],
        "stop_reason": _STOP_REASONS[answer.finish_reason], "stop_sequence": None,
        "usage": {**_prompt_usage(answer), "output_tokens": answer.completion_tokens + answer.thinking_tokens},
    })


def stream_events(answer: SimAnswer, request: SimRequest, request_id: str) -> Iterator[bytes]:
    """The documented event flow: start, one text block of one delta per word, the stop reason, stop."""
    message: dict[str, Any] = {
        "id": f"msg_{request_id}", "type": "message", "role": "assistant", "model": request.model_id,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {**_prompt_usage(answer), "output_tokens": 1},
    }
    yield _event("message_start", {"type": "message_start", "message": message})
    text = 0
    if answer.thinking_tokens:  # the thinking block comes first, as its own block
        text = 1
        yield _event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "thinking", "thinking": ""}})
        yield _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "thinking_delta", "thinking": THOUGHT}})
        yield _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "signature_delta", "signature": "sim"}})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
    index = text
    if answer.words or not answer.calls:
        yield _event("content_block_start",
                     {"type": "content_block_start", "index": text, "content_block": {"type": "text", "text": ""}})
        yield _event("ping", {"type": "ping"})
        for word in answer.words:
            yield _event("content_block_delta", {"type": "content_block_delta", "index": text,
                                                 "delta": {"type": "text_delta", "text": word}})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": text})
        index += 1
    for i, call in enumerate(answer.calls, index):  # a `tool_use` block, its input in one JSON delta
        block = {"type": "tool_use", "id": _tool_use_id(call.id), "name": call.name, "input": {}}
        yield _event("content_block_start", {"type": "content_block_start", "index": i, "content_block": block})
        if i == text:  # the first block
            yield _event("ping", {"type": "ping"})
        yield _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
            "type": "input_json_delta", "partial_json": orjson.dumps(call.arguments).decode()}})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": i})
    yield _event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": _STOP_REASONS[answer.finish_reason], "stop_sequence": None},
        "usage": {"output_tokens": answer.completion_tokens + answer.thinking_tokens},
    })
    yield _event("message_stop", {"type": "message_stop"})


def error(status: int, kind: str, message: str) -> bytes:
    # The status alone picks the documented error type; `kind` is the fleet's own label.
    error_type = _ERROR_TYPES.get(status, "overloaded_error" if status == 503 else "api_error")
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def overflow_error(prompt: int, window: int) -> bytes:
    return error(400, "invalid_request_error", f"prompt is too long: {prompt} tokens > {window} maximum")


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _text(content: Any) -> str:
    """A string, or the text of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text") or "") for b in content if isinstance(b, dict))
    return ""
