"""OpenAI tool calling in the Messages API's terms, both ways.

- `tools` (`{"type": "function", "function": {name, description, parameters, strict}}`) become tools
  with an `input_schema` (and `strict`, the API's strict tool use); `tool_choice` and
  `parallel_tool_calls` become `tool_choice`.
- An assistant message's `tool_calls` become `tool_use` blocks (arguments parsed from their JSON
  text), and a `tool` message becomes a `tool_result` block in a user turn.
- An answer's `tool_use` blocks become `tool_calls` (arguments written back as JSON text); in a
  stream, a `tool_use` block's start and its `input_json_delta`s become `delta.tool_calls` pieces.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..chat import Message, message_text
from ._tools import Function, answered_call, call, calls, choice, functions

_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}
# What the API accepts as a `tool_use` id; other servers' ids (`functions.lookup:0`) are refused with a 400.
_ID_CHARACTERS = re.compile(r"[^a-zA-Z0-9_-]")


def tool_settings(params: dict[str, Any]) -> dict[str, Any]:
    """`tools` and `tool_choice` for the request body; empty without `tools`."""
    offered = functions(params)
    if not offered:
        return {}
    settings: dict[str, Any] = {"tools": [_tool(function) for function in offered]}
    chosen = choice(params)
    selected: dict[str, Any] = {} if chosen is None else dict(_CHOICES.get(chosen) or {"type": "tool", "name": chosen})
    if params.get("parallel_tool_calls") is False and selected.get("type") != "none":
        selected = {**(selected or {"type": "auto"}), "disable_parallel_tool_use": True}
    if selected:
        settings["tool_choice"] = selected
    return settings


def _tool(function: Function) -> dict[str, Any]:
    described: dict[str, Any] = {"name": function.name,
                                 "input_schema": function.parameters or {"type": "object", "properties": {}}}
    if function.description:
        described["description"] = function.description
    if function.strict:  # the API's strict tool use: calls that follow the schema, as OpenAI's `strict`
        described["strict"] = True
    return described


def tool_use_blocks(message: Message, index: int) -> list[dict[str, Any]]:
    """The `tool_calls` of an assistant message (the request's `index`th) as `tool_use` blocks."""
    return [{"type": "tool_use", "id": _sendable(c.id), "name": c.name, "input": c.arguments}
            for c in calls(message, index)]


def tool_result_block(message: Message, index: int) -> dict[str, Any]:
    """A `tool` message (the request's `index`th) as the `tool_result` block that answers its call."""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": _sendable(answered_call(message, index))}
    text = message_text(message)
    if text:
        block["content"] = text
    return block


def _sendable(call_id: str) -> str:
    """A call id as the API accepts it: another model's id (a conversation that failed over) with its other
    characters replaced, and a digest of the original so that two ids stay two. The same id maps to the
    same value in the call and in its result."""
    if not _ID_CHARACTERS.search(call_id) and call_id:
        return call_id
    digest = hashlib.blake2b(call_id.encode(), digest_size=4).hexdigest()
    return f"{_ID_CHARACTERS.sub('_', call_id)}_{digest}"


def tool_calls_of(blocks: list[Any]) -> list[dict[str, Any]] | None:
    """An answer's `tool_use` blocks as OpenAI `tool_calls`; None when there are none."""
    made = [call(str(block["id"]), str(block["name"]), block.get("input"))
            for block in blocks if isinstance(block, dict) and block.get("type") == "tool_use"]
    return made or None


class StreamedCalls:
    """The tool calls of one stream: each `tool_use` block gets the next OpenAI call index."""

    def __init__(self) -> None:
        self._index: dict[int, int] = {}  # content block index -> tool call index
        self._empty: set[int] = set()  # tool_use blocks no argument has reached yet

    def started(self, block_index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        self._index[block_index] = index = len(self._index)
        self._empty.add(block_index)
        return [{"index": index, "id": str(block["id"]), "type": "function",
                 "function": {"name": str(block["name"]), "arguments": ""}}]

    def arguments(self, block_index: int, piece: str) -> list[dict[str, Any]] | None:
        if block_index not in self._index or not piece:
            return None
        self._empty.discard(block_index)
        return [{"index": self._index[block_index], "function": {"arguments": piece}}]

    def stopped(self, block_index: int) -> list[dict[str, Any]] | None:
        """A call without arguments streams only an empty `partial_json`; its arguments are `{}`, as
        whole, so that the client's joined pieces parse."""
        if block_index not in self._empty:
            return None
        self._empty.discard(block_index)
        return [{"index": self._index[block_index], "function": {"arguments": "{}"}}]
