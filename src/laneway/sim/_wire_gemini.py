"""The Gemini API `generateContent` wire format, as the simulated fleet speaks it.

The model id and the method travel in the path (`.../models/{model}:generateContent` or
`:streamGenerateContent`); the method decides whether the answer streams. Streams are always
server-sent events, as with `?alt=sse`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from ..chat import Message
from ._answers import SimAnswer, SimRequest
from ._structured import ANY_OBJECT
from ._tools import NONE, REQUIRED, SimTool

CONTENT_TYPE = "application/json"

_METHODS = {"generateContent": False, "streamGenerateContent": True}
_FINISH_REASONS = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
_MODES = {"AUTO": None, "ANY": REQUIRED, "NONE": NONE}
UNSIGNED_CALL = ("Function call is missing a thought_signature in functionCall parts. This is required for tools "
                 "to work correctly, and missing thought_signature may lead to degraded model performance.")
_STATUSES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_DEFAULT_MAX_OUTPUT = 8192
_LEVEL_BUDGETS = {"minimal": 128, "low": 1024, "medium": 8192, "high": 24576}


def parse(body: dict[str, Any], path_model: str | None) -> SimRequest:
    model, _, method = (path_model or "").rpartition(":")
    if not model or method not in _METHODS:
        raise ValueError(f"the path must end in `models/{{model}}:{' or :'.join(_METHODS)}`")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ValueError("* GenerateContentRequest.contents: contents is not specified")
    system = _text(body.get("systemInstruction"))
    chat: list[Message] = [{"role": "system", "content": system}] if system else []
    chat += [{"role": "assistant" if c.get("role") == "model" else "user", "content": _text(c)}
             for c in contents]
    _check_signatures(contents)
    config = body.get("generationConfig") or {}
    budget = _thinking(config)
    limit = config.get("maxOutputTokens")
    if limit is not None and "thinkingBudget" in (config.get("thinkingConfig") or {}):
        limit = max(1, int(limit) - max(0, budget))  # a budget in tokens is part of the output's limit
    return SimRequest(model_id=model, messages=chat, thinking_budget=budget,
                      max_tokens=int(limit or _DEFAULT_MAX_OUTPUT),
                      stream=_METHODS[method], logprobs=bool(config.get("responseLogprobs")),
                      seed=config.get("seed"), json_schema=_schema(config), media=sum(map(_media, contents)),
                      cache_prefix=len(chat),  # Gemini caches long prompts on its own
                      tools=_tools(body.get("tools")), tool_choice=_choice(body.get("toolConfig")),
                      tool_answered=_has(contents[-1], "functionResponse"))


def _tools(tools: Any) -> tuple[SimTool, ...]:
    declared = []
    for tool in tools or ():
        for function in (tool.get("functionDeclarations") or ()) if isinstance(tool, dict) else ():
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ValueError("* GenerateContentRequest.tools[].function_declarations[].name: name is not specified")
            schema = function.get("parametersJsonSchema") or function.get("parameters")
            declared.append(SimTool(function["name"], str(function.get("description") or ""),
                                    schema if isinstance(schema, dict) else None))
    return tuple(declared)


def _choice(config: Any) -> str | None:
    calling = (config.get("functionCallingConfig") or {}) if isinstance(config, dict) else {}
    allowed = calling.get("allowedFunctionNames")
    if calling.get("mode") == "ANY" and isinstance(allowed, list) and len(allowed) == 1:
        return str(allowed[0])
    return _MODES.get(str(calling.get("mode") or "AUTO"))


def _has(content: Any, kind: str) -> bool:
    parts = content.get("parts") if isinstance(content, dict) else None
    return isinstance(parts, list) and any(isinstance(p, dict) and kind in p for p in parts)


def _check_signatures(contents: list[Any]) -> None:
    """As Gemini 3 checks them: in the current turn (after the last user message with text), the first
    function call of each model step must come back with its `thoughtSignature`."""
    start = 0
    for i, content in enumerate(contents):
        if isinstance(content, dict) and content.get("role") != "model" and _has(content, "text"):
            start = i + 1
    for i, content in enumerate(contents[start:], start):
        if not isinstance(content, dict) or content.get("role") != "model":
            continue
        calls = [p for p in content.get("parts") or () if isinstance(p, dict) and "functionCall" in p]
        if calls and not calls[0].get("thoughtSignature"):
            name = (calls[0].get("functionCall") or {}).get("name")
            raise ValueError(f"Unable to submit request because function call `{name}` in the {i + 1}. content "
                             f"block is missing a `thought_signature`. {UNSIGNED_CALL}")


def _thinking(config: dict[str, Any]) -> int:
    """`thinkingConfig` as a budget in tokens (a level stands for its usual budget; 0 without it)."""
    thinking = config.get("thinkingConfig")
    if thinking is None:
        return 0
    budget, level = thinking.get("thinkingBudget"), thinking.get("thinkingLevel")
    if budget is not None and level is not None:
        raise ValueError("thinking_budget and thinking_level are not supported together")
    if level is not None:
        if level not in _LEVEL_BUDGETS:
            raise ValueError(f"* GenerationConfig.thinking_config.thinking_level: unknown value {level!r}")
        return _LEVEL_BUDGETS[level]
    if not isinstance(budget, int) or budget < -1:
        raise ValueError("* GenerationConfig.thinking_config.thinking_budget: must be an integer of at least -1")
    return budget


def _media(content: Any) -> int:
    """Inline media parts, checked as the API checks them."""
    parts = [p.get("inlineData") for p in content.get("parts") or () if isinstance(p, dict) and "inlineData" in p]
    for inline in parts:
        if not isinstance(inline, dict) or not inline.get("mimeType") or not inline.get("data"):
            raise ValueError("* GenerateContentRequest.contents[].parts[].inline_data: needs mime_type and data")
    return len(parts)


def _schema(config: dict[str, Any]) -> dict[str, Any] | None:
    if config.get("responseMimeType") != "application/json":
        return None
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    return schema if isinstance(schema, dict) else ANY_OBJECT


def completion(answer: SimAnswer, request: SimRequest, request_id: str) -> bytes:
    return orjson.dumps(_response(answer, request, request_id, answer.words, answer.logprobs, final=True))


def stream_events(answer: SimAnswer, request: SimRequest, request_id: str) -> Iterator[bytes]:
    """One `GenerateContentResponse` per word; the last carries the finish reason and the full usage."""
    last = len(answer.words) - 1
    for i, word in enumerate(answer.words):
        logprobs = answer.logprobs[i:i + 1]
        yield _event(_response(answer, request, request_id, [word], logprobs, final=i == last))
    if last < 0:
        yield _event(_response(answer, request, request_id, [], [], final=True))


def error(status: int, kind: str, message: str) -> bytes:
    body = {"error": {"code": status, "message": message, "status": _STATUSES.get(status, "UNKNOWN")}}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def overflow_error(prompt: int, window: int) -> bytes:
    return error(400, "INVALID_ARGUMENT",
                 f"The input token count ({prompt}) exceeds the maximum number of tokens allowed ({window}).")


def _response(answer: SimAnswer, request: SimRequest, request_id: str, words: list[str],
              logprobs: list[float], final: bool) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": "".join(words)}] if words or not answer.calls else []
    if final:  # a call comes whole, in the last event; the first call of a step is signed
        parts += [{"functionCall": {"name": c.name, "args": c.arguments}} for c in answer.calls]
        if answer.calls:
            parts[-len(answer.calls)]["thoughtSignature"] = "c2ltOg==" + answer.calls[0].id.removeprefix("call_")
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if final:
        candidate["finishReason"] = _FINISH_REASONS[answer.finish_reason]
    candidate["index"] = 0
    if request.logprobs:
        chosen = [{"token": w, "logProbability": v} for w, v in zip(words, logprobs, strict=False)]
        candidate["logprobsResult"] = {"topCandidates": [{"candidates": [c]} for c in chosen],
                                       "chosenCandidates": chosen}
    # Every event carries the prompt count; only the last one carries the candidates' count.
    usage: dict[str, Any] = {"promptTokenCount": answer.prompt_tokens}
    if final:
        usage["candidatesTokenCount"] = answer.completion_tokens
        if answer.thinking_tokens:
            usage["thoughtsTokenCount"] = answer.thinking_tokens
    output = answer.completion_tokens + answer.thinking_tokens if final else 0
    usage["totalTokenCount"] = answer.prompt_tokens + output
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": answer.prompt_tokens}]
    if answer.cached_tokens:
        usage["cachedContentTokenCount"] = answer.cached_tokens
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": request.model_id,
            "responseId": request_id}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


def _text(content: Any) -> str:
    """The text of a `Content` (`{"parts": [{"text": ...}]}`)."""
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    return "".join(str(p.get("text") or "") for p in parts if isinstance(p, dict))
