"""The OpenAI Chat Completions wire format, as the simulated fleet speaks it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

from ..chat import media_parts
from ._answers import SimAnswer, SimRequest
from ._structured import ANY_OBJECT
from ._tools import SimTool

CONTENT_TYPE = "application/json"
# What a `reasoning_effort` lets the simulated model think, in tokens (it spends less on short prompts).
_EFFORT_BUDGETS = {"none": 0, "minimal": 128, "low": 1024, "medium": 4096, "high": 16384, "xhigh": 32768}


def parse(body: dict[str, Any], path_model: str | None) -> SimRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens")) or 1024
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in _EFFORT_BUDGETS:
        raise ValueError(f"reasoning_effort: unsupported value {effort!r}; supported: {', '.join(_EFFORT_BUDGETS)}")
    return SimRequest(
        model_id=str(body.get("model") or path_model or ""), messages=messages, max_tokens=int(max_tokens),
        stream=bool(body.get("stream")), logprobs=bool(body.get("logprobs")), seed=body.get("seed"),
        json_schema=_schema(body.get("response_format")),
        media=sum(len(media_parts(m) or ()) for m in messages if isinstance(m, dict)),
        cache_prefix=len(messages),  # OpenAI caches long prompts on its own
        thinking_budget=_EFFORT_BUDGETS.get(effort, 0) if isinstance(effort, str) else 0,
        tools=_tools(body.get("tools")), tool_choice=_choice(body.get("tool_choice")),
        tool_answered=isinstance(messages[-1], dict) and messages[-1].get("role") == "tool",
    )


def _tools(tools: Any) -> tuple[SimTool, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("function"), dict)
                                              and isinstance(t["function"].get("name"), str) for t in tools):
        raise ValueError("`tools` must be a list of {\"type\": \"function\", \"function\": {\"name\": ...}}")
    return tuple(SimTool(t["function"]["name"], str(t["function"].get("description") or ""),
                         t["function"].get("parameters")) for t in tools)


def _choice(choice: Any) -> str | None:
    if isinstance(choice, dict):
        return str((choice.get("function") or {}).get("name") or "") or None
    return choice if isinstance(choice, str) else None


def _usage(answer: SimAnswer) -> dict[str, Any]:
    """`completion_tokens` includes the reasoning tokens, as OpenAI counts them."""
    output = answer.completion_tokens + answer.thinking_tokens
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": output,
            "total_tokens": answer.prompt_tokens + output,
            "prompt_tokens_details": {"cached_tokens": answer.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": answer.thinking_tokens}}


def _schema(response_format: Any) -> dict[str, Any] | None:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return ANY_OBJECT
    if kind != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    return schema if isinstance(schema, dict) else ANY_OBJECT


def completion(answer: SimAnswer, request: SimRequest, request_id: str) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.calls:
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": orjson.dumps(c.arguments).decode()}} for c in answer.calls]}
    choice: dict[str, Any] = {
        "index": 0, "message": message,
        "finish_reason": answer.finish_reason, "logprobs": _logprobs(answer.words, answer.logprobs),
    }
    return orjson.dumps({
        "id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()),
        "model": request.model_id, "choices": [choice],
        "usage": _usage(answer),
    })


def stream_events(answer: SimAnswer, request: SimRequest, request_id: str) -> Iterator[bytes]:
    """One SSE event per word; then the finish, the usage chunk and `[DONE]`."""
    head = {"id": f"chatcmpl-{request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": request.model_id}
    for i, word in enumerate(answer.words):
        delta: dict[str, Any] = {"content": word}
        if i == 0:
            delta["role"] = "assistant"
        lp = _logprobs([word], answer.logprobs[i:i + 1]) if answer.logprobs else None
        yield _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": lp}]})
    for i, call in enumerate(answer.calls):  # as OpenAI streams a call: its id and name, then its arguments
        started = {"index": i, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        delta = {"role": "assistant", "content": None} if i == 0 and not answer.words else {}
        yield _event({**head, "choices": [{"index": 0, "delta": {**delta, "tool_calls": [started]},
                                           "finish_reason": None}]})
        arguments = {"index": i, "function": {"arguments": orjson.dumps(call.arguments).decode()}}
        yield _event({**head, "choices": [{"index": 0, "delta": {"tool_calls": [arguments]}, "finish_reason": None}]})
    yield _event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]})
    yield _event({**head, "choices": [], "usage": _usage(answer)})
    yield b"data: [DONE]\n\n"


def error(status: int, kind: str, message: str) -> bytes:
    codes = {400: "invalid_request_error", 429: "rate_limit_exceeded", 503: "server_overloaded"}
    return orjson.dumps({"error": {"message": message, "type": codes.get(status, "server_error"),
                                   "param": None, "code": kind}})


def overflow_error(prompt: int, window: int) -> bytes:
    return error(400, "context_length_exceeded",
                 f"This model's maximum context length is {window} tokens. However, your messages resulted in "
                 f"{prompt} tokens. Please reduce the length of the messages. (token-window overflow)")


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _logprobs(words: list[str], values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"content": [{"token": w, "logprob": v, "bytes": None, "top_logprobs": []}
                        for w, v in zip(words, values, strict=False)]}
