"""Tool calls as the simulated fleet makes them.

A simulated model offered tools calls one when the customer's last message asks for it: the
function `tool_choice` names; otherwise the one whose name and description share the most words
with that message (with `required` the first one when none does; with `auto` none then, and it
answers in text). Once a tool's result is the last thing in the conversation, it answers in text,
as it does under `none`. The arguments follow the function's parameters (`_structured.instance`),
and a string or number parameter whose name the message uses takes the number that follows it
("where is order 1182" gives `{"order": "1182"}`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from ._structured import instance

_WORD = re.compile(r"[a-z0-9]+")
_NUMBER_AFTER = r"\b{name}\b\D{{0,12}}?(\d+)"
NONE, REQUIRED = "none", "required"


@dataclass(frozen=True, slots=True)
class SimTool:
    """A function a request offers: its name, description and parameters (a JSON Schema)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SimCall:
    id: str
    name: str
    arguments: dict[str, Any]


def tool_call(tools: tuple[SimTool, ...], choice: str | None, answered: bool, text: str,
              rng: random.Random, sentences: tuple[str, ...]) -> SimCall | None:
    """The call a simulated model makes, given the tools offered, `tool_choice` (`auto`, `required`,
    `none` or a function's name; None is `auto`), whether a tool's result came last, and the
    customer's last message; None when it answers in text."""
    if not tools or answered or choice == NONE:
        return None
    by_name = {tool.name: tool for tool in tools}
    tool = by_name.get(choice) if choice else None
    if tool is None:
        said = set(_WORD.findall(text.lower()))
        scored = [(len(said & set(_WORD.findall(f"{t.name} {t.description}".lower().replace("_", " ")))), i)
                  for i, t in enumerate(tools)]
        shared, best = max(scored, key=lambda pair: (pair[0], -pair[1]))
        if not shared and choice != REQUIRED:
            return None
        tool = tools[best]
    return SimCall(f"call_{rng.getrandbits(64):016x}", tool.name, _arguments(tool, text, rng, sentences))


def _arguments(tool: SimTool, text: str, rng: random.Random, sentences: tuple[str, ...]) -> dict[str, Any]:
    schema = tool.parameters or {"type": "object", "properties": {}}
    made = instance(schema, rng, sentences)
    arguments = made if isinstance(made, dict) else {}
    properties = schema.get("properties")
    for name, spec in properties.items() if isinstance(properties, dict) else ():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in ("string", "integer", "number") or "enum" in spec:
            continue
        found = re.search(_NUMBER_AFTER.format(name=re.escape(name.lower())), text.lower())
        if found:
            arguments[name] = found.group(1) if kind == "string" else int(found.group(1))
    return arguments
