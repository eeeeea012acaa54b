"""OpenAI tool calling in the Messages API's terms, both ways.

- `tools` (`{"type": "function", "function": {name, description, parameters}}`) become tools with
  an `input_schema`; `tool_choice` and `parallel_tool_calls` become `tool_choice`.
- An assistant message's `tool_calls` become `tool_use` blocks (arguments parsed from their JSON
  text), and a `tool` message becomes a `tool_result` block in a user turn.
- An answer's `tool_use` blocks become `tool_calls` (arguments written back as JSON text); in a
  stream, a `tool_use` block's start and its `input_json_delta`s become `delta.tool_calls` pieces.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..chat import Message, message_text
from ..errors import InvalidRequest

_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}


def tool_settings(params: dict[str, Any]) -> dict[str, Any]:
    """`tools` and `tool_choice` for the request body; empty without `tools`."""
    tools = params.get("tools")
    if not tools:
        return {}
    settings: dict[str, Any] = {"tools": [_tool(tool, i) for i, tool in enumerate(tools)]}
    choice = _choice(params.get("tool_choice"))
    if params.get("parallel_tool_calls") is False and choice.get("type") != "none":
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice:
        settings["tool_choice"] = choice
    return settings


def _tool(tool: Any, i: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"`tools[{i}]` must be `{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}`",
                             param=f"tools[{i}]")
    described = {"name": function["name"],
                 "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        described["description"] = function["description"]
    return described


def _choice(choice: Any) -> dict[str, Any]:
    if choice is None:
        return {}
    if isinstance(choice, str) and choice in _CHOICES:
        return dict(_CHOICES[choice])
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    raise InvalidRequest("`tool_choice` must be `auto`, `required`, `none` or "
                         "`{\"type\": \"function\", \"function\": {\"name\": ...}}`", param="tool_choice")


def tool_use_blocks(message: Message) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` as `tool_use` blocks."""
    blocks = []
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise InvalidRequest("a tool call needs an `id` and a `function` with a `name`", param=f"tool_calls[{i}]")
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"tool call `{call['id']}`: `arguments` must be a JSON object, as text",
                                 param=f"tool_calls[{i}].function.arguments")
        blocks.append({"type": "tool_use", "id": call["id"], "name": str(function.get("name")), "input": arguments})
    return blocks


def tool_result_block(message: Message) -> dict[str, Any]:
    """A `tool` message as the `tool_result` block that answers its call."""
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("a `tool` message needs the `tool_call_id` of the call it answers",
                             param="messages.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    text = message_text(message)
    if text:
        block["content"] = text
    return block


def tool_calls_of(blocks: list[Any]) -> list[dict[str, Any]] | None:
    """An answer's `tool_use` blocks as OpenAI `tool_calls`; None when there are none."""
    calls = [_call(block) for block in blocks if isinstance(block, dict) and block.get("type") == "tool_use"]
    return calls or None


def _call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = orjson.dumps(block.get("input") or {}).decode()
    return {"id": str(block["id"]), "type": "function",
            "function": {"name": str(block["name"]), "arguments": arguments}}


class StreamedCalls:
    """The tool calls of one stream: each `tool_use` block gets the next OpenAI call index."""

    def __init__(self) -> None:
        self._index: dict[int, int] = {}  # content block index -> tool call index

    def started(self, block_index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        self._index[block_index] = index = len(self._index)
        return [{"index": index, "id": str(block["id"]), "type": "function",
                 "function": {"name": str(block["name"]), "arguments": ""}}]

    def arguments(self, block_index: int, piece: str) -> list[dict[str, Any]] | None:
        if block_index not in self._index or not piece:
            return None
        return [{"index": self._index[block_index], "function": {"arguments": piece}}]
