"""OpenAI tool calling in the Gemini API's terms, both ways.

- `tools` become one `tools` entry of `functionDeclarations`, each function's JSON Schema as its
  `parametersJsonSchema`; `tool_choice` becomes `toolConfig.functionCallingConfig` (`auto` AUTO,
  `required` ANY, `none` NONE, a named function ANY with `allowedFunctionNames`). The API has no
  switch for parallel calls: `parallel_tool_calls` is not sent.
- An assistant message's `tool_calls` become `functionCall` parts (arguments parsed from their JSON
  text), and a `tool` message a `functionResponse` part, named after the call it answers: its
  content as the response when it is a JSON object, else as `{"result": content}`. Both carry the
  call's id (the API asks for the id of a call that had one back in its response; with it, parallel
  calls of one function are told apart), except an id made here for a call the API gave none.
- An answer's `functionCall` parts become `tool_calls`, with the call's own `id` or one made here.

Thought signatures: a thinking model signs its function calls (`thoughtSignature` beside the
`functionCall`), and within the current turn (since the last user message) the API refuses a step's
first call that comes back without its signature. OpenAI's API has no place for it; Google's own
OpenAI-compatible endpoint puts it in the call's `extra_content.google.thought_signature`, and
clients written for that endpoint send it back there. The adapter does the same both ways: a signed
call reaches the client with its signature in `extra_content`, so it comes back to whichever
gateway process (`serve --workers N`, or after a restart) answers the next request. For clients
that drop fields they do not know, the adapter also keeps each call's signature by the call's id
(`Signatures`, bounded, in this process) and puts it back when the call returns without one. A call
with neither (made by another model, or signed in another process and stripped by the client) gets
the API's documented stand-in, `skip_thought_signature_validator`, where the API requires one.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from typing import Any

import orjson

from ..chat import Message, message_text
from ..errors import InvalidRequest
from ._tools import Call, answered_call, call, calls, choice, functions

_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
# What the API takes in place of a signature it would otherwise require (Google's thought-signatures guide).
UNSIGNED = "skip_thought_signature_validator"
SIGNATURES_KEPT = 10_000
SIGNATURE_BYTES_KEPT = 16 * 1024 * 1024  # a signature is opaque, often a few KB of base64


class Signatures:
    """The thought signatures of the calls one model made, by call id; the oldest are forgotten past
    `limit` signatures or `limit_bytes` characters."""

    def __init__(self, limit: int = SIGNATURES_KEPT, limit_bytes: int = SIGNATURE_BYTES_KEPT) -> None:
        self._limit = limit
        self._limit_bytes = limit_bytes
        self._size = 0
        self._kept: OrderedDict[str, str] = OrderedDict()

    def keep(self, call_id: str, signature: str) -> None:
        self._size += len(signature) - len(self._kept.pop(call_id, ""))
        self._kept[call_id] = signature
        while self._kept and (len(self._kept) > self._limit or self._size > self._limit_bytes):
            self._size -= len(self._kept.popitem(last=False)[1])

    def of(self, made: Call) -> str | None:
        extra = made.extra.get("extra_content")
        google = extra.get("google") if isinstance(extra, dict) else None
        signature = google.get("thought_signature") if isinstance(google, dict) else None
        return signature if isinstance(signature, str) and signature else self._kept.get(made.id)


def tool_settings(params: dict[str, Any]) -> dict[str, Any]:
    """`tools` and `toolConfig` for the request body; empty without `tools`."""
    offered = functions(params)
    if not offered:
        return {}
    declarations = []
    for name, description, parameters, _ in offered:  # no `strict`: the API has no such switch
        declared: dict[str, Any] = {"name": name}
        if description:
            declared["description"] = description
        if parameters:
            declared["parametersJsonSchema"] = parameters
        declarations.append(declared)
    settings: dict[str, Any] = {"tools": [{"functionDeclarations": declarations}]}
    chosen = choice(params)
    if chosen is not None:
        config: dict[str, Any] = {"mode": _MODES.get(chosen, "ANY")}
        if chosen not in _MODES:
            config["allowedFunctionNames"] = [chosen]
        settings["toolConfig"] = {"functionCallingConfig": config}
    return settings


# The id of a call the API gave none: `call_` and random hex digits, as OpenAI's own look.
MADE_ID_PREFIX, MADE_ID_BYTES = "call_", 12
MADE_ID = re.compile(f"{MADE_ID_PREFIX}[0-9a-f]{{{2 * MADE_ID_BYTES}}}")


class CallParts:
    """Turns a conversation's tool calls and results into parts: it learns each call's function name
    as the calls come, to name the `functionResponse` that answers it."""

    def __init__(self, signatures: Signatures, current_from: int) -> None:
        self._signatures = signatures
        self._current_from = current_from  # the index of the first message of the current turn
        self._names: dict[str, str] = {}

    def function_calls(self, message: Message, index: int) -> list[dict[str, Any]]:
        """An assistant message's `tool_calls` as `functionCall` parts, each with its signature when known;
        in the current turn, the first always has one."""
        parts = []
        for i, made in enumerate(calls(message, index)):
            self._names[made.id] = made.name
            part: dict[str, Any] = {"functionCall": {**_given(made.id), "name": made.name, "args": made.arguments}}
            signature = self._signatures.of(made)
            if signature is None and i == 0 and index >= self._current_from:
                signature = UNSIGNED
            if signature is not None:
                part["thoughtSignature"] = signature
            parts.append(part)
        return parts

    def function_response(self, message: Message, index: int) -> dict[str, Any]:
        """A `tool` message as the `functionResponse` part that answers its call."""
        call_id = answered_call(message, index)
        name = self._names.get(call_id)
        if name is None:
            raise InvalidRequest(f"the `tool` message answers call `{call_id}`, which no earlier assistant message "
                                 "made: a Gemini model needs the call's function name",
                                 param=f"messages[{index}].tool_call_id")
        text = message_text(message)
        try:
            response = orjson.loads(text)
        except orjson.JSONDecodeError:
            response = None
        return {"functionResponse": {**_given(call_id), "name": name,
                                     "response": response if isinstance(response, dict) else {"result": text}}}


def _given(call_id: str) -> dict[str, str]:
    """The `id` field of a call and of its response: the call's id, unless the adapter made it up because the
    API gave none (most calls): those go back as they came, without one."""
    return {} if MADE_ID.fullmatch(call_id) else {"id": call_id}


def current_turn(messages: list[Message]) -> int:
    """The index where the current turn starts: just after the last `user` message, or 0 without one."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i + 1
    return 0


def tool_call_of(part: dict[str, Any], signatures: Signatures) -> dict[str, Any] | None:
    """A `functionCall` part as an OpenAI `tool_calls` entry, its signature (kept) in `extra_content`
    as Google's OpenAI-compatible endpoint has it; None for other parts."""
    function = part.get("functionCall")
    if not isinstance(function, dict):
        return None
    call_id = str(function.get("id") or "") or f"{MADE_ID_PREFIX}{secrets.token_hex(MADE_ID_BYTES)}"
    made = call(call_id, str(function["name"]), function.get("args"))
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        signatures.keep(call_id, signature)
        made["extra_content"] = {"google": {"thought_signature": signature}}
    return made
