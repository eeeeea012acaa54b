"""Reads ABCD's agent guidelines (`guidelines.json` of the Action-Based Conversations Dataset).

The file is `{flow: {"description", "subflows": {subflow: {"instructions": [2 lines],
"actions": [{"button", "text", "subtext": [...]}]}}}}`. Each subflow becomes one document titled
`Flow > Subflow` with id `flow-slug/subflow-slug`: the flow's description, the opening
instruction, one paragraph per numbered action (its button, text and sub-points), then the
closing instruction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from laneway.retrieval._document import Document


def is_abcd_guidelines(data: object) -> bool:
    return (
        isinstance(data, dict)
        and bool(data)
        and all(isinstance(flow, dict) and isinstance(flow.get("subflows"), dict) for flow in data.values())
    )


def guideline_documents(guidelines: Mapping[str, Any], source: str) -> list[Document]:
    return [
        _subflow_document(flow_name, flow, subflow_name, subflow, source)
        for flow_name, flow in guidelines.items()
        for subflow_name, subflow in flow["subflows"].items()
    ]


def _subflow_document(
    flow_name: str, flow: Mapping[str, Any], subflow_name: str, subflow: Mapping[str, Any], source: str
) -> Document:
    instructions = [str(line) for line in subflow.get("instructions", [])]
    paragraphs = [f"{flow_name}: {flow.get('description', '')}.", *instructions[:1]]
    for number, action in enumerate(subflow.get("actions", []), start=1):
        paragraphs.append(_action_paragraph(number, action))
    paragraphs.extend(instructions[1:])
    identifier = f"{_slug(flow_name)}/{_slug(subflow_name)}"
    return Document(identifier, source, f"{flow_name} > {subflow_name}", "\n\n".join(paragraphs))


def _action_paragraph(number: int, action: Mapping[str, Any]) -> str:
    button = str(action.get("button", ""))
    head = f"{number}. [{button}] " if button and button != "N/A" else f"{number}. "
    lines = [head + str(action.get("text", "")).strip()]
    lines.extend(f"   - {str(point).strip()}" for point in action.get("subtext", []))
    return "\n".join(lines)


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))
