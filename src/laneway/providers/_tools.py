"""OpenAI tool calling as the adapters that translate it read it: each function a client offers, the
choice it makes, and the calls of an assistant message, checked once and named in one error style."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from ..chat import Message
from ..errors import InvalidRequest


class Function(NamedTuple):
    """One of `tools`: its name, description (or ""), parameters (a JSON Schema, or None), and whether the
    calls must follow the schema (`strict`, as the `openai` client's `pydantic_function_tool` sets it)."""

    name: str
    description: str
    parameters: dict[str, Any] | None
    strict: bool = False


class Call(NamedTuple):
    """One of an assistant message's `tool_calls`, its arguments parsed."""

    id: str
    name: str
    arguments: dict[str, Any]
    extra: dict[str, Any]  # the call's other fields, as the client sent them (e.g. `extra_content`)


# `tool_choice` strings: let the model choose, make it call one, or forbid calls.
CHOICES = ("auto", "required", "none")


def functions(params: dict[str, Any]) -> list[Function]:
    """The request's `tools`, each `{"type": "function", "function": {"name": ...}}`; empty without any."""
    return [_function(tool, i) for i, tool in enumerate(params.get("tools") or ())]


def _function(tool: Any, i: int) -> Function:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"`tools[{i}]` must be `{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}`",
                             param=f"tools[{i}]")
    parameters = function.get("parameters")
    return Function(function["name"], str(function.get("description") or ""),
                    parameters if isinstance(parameters, dict) else None, function.get("strict") is True)


def choice(params: dict[str, Any]) -> str | None:
    """`tool_choice` as one of `CHOICES`, or the name of the one function to call; None when not sent."""
    chosen = params.get("tool_choice")
    if chosen is None or chosen in CHOICES:
        return chosen
    function = chosen.get("function") if isinstance(chosen, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return str(function["name"])
    raise InvalidRequest("`tool_choice` must be `auto`, `required`, `none` or "
                         "`{\"type\": \"function\", \"function\": {\"name\": ...}}`", param="tool_choice")


def calls(message: Message, index: int) -> list[Call]:
    """The `tool_calls` of an assistant message (the request's `index`th), each with an `id` and a function's
    `name` and `arguments` (a JSON object, as text)."""
    found = []
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        where = f"messages[{index}].tool_calls[{i}]"
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise InvalidRequest("a tool call needs an `id` and a `function` with a `name`", param=where)
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"tool call `{call['id']}`: `arguments` must be a JSON object, as text",
                                 param=f"{where}.function.arguments")
        extra = {key: value for key, value in call.items() if key not in ("id", "type", "function")}
        found.append(Call(call["id"], str(function.get("name")), arguments, extra))
    return found


def answered_call(message: Message, index: int) -> str:
    """The `tool_call_id` of a `tool` message (the request's `index`th): the call it answers."""
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("a `tool` message needs the `tool_call_id` of the call it answers",
                             param=f"messages[{index}].tool_call_id")
    return call_id


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    """An OpenAI `tool_calls` entry; `arguments` (an object) written as JSON text."""
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments or {}).decode()}}
