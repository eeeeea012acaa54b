"""The text block that carries retrieved passages into a prompt.

Style `system` is appended to the system prompt; style `user` is placed in a user message just
before the customer's latest message. Both number the passages, name their titles and sources,
tell the model to answer from them only, and to ask a clarifying question when they do not cover
the request. With no passages the block says so, so the model does not invent a policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from laneway.errors import ConfigError, ConfigIssue
from laneway.retrieval._passage import Passage

STYLES = ("system", "user")

_GROUNDING = (
    "Answer using only the policy passages below. Cite the passages you rely on by number, like [1]. "
    "If they do not cover the customer's request, do not guess: ask the customer a clarifying question "
    "or offer to hand the conversation to a human agent."
)
_NOTHING_FOUND = (
    "No policy passage in the knowledge base matched the customer's request. Do not state any policy, "
    "price, fee or deadline from memory: ask the customer a clarifying question or offer to hand the "
    "conversation to a human agent."
)
_HEADERS = {"system": "## Knowledge base", "user": "Reference material for the next customer message:"}


def render_passages(passages: Sequence[Passage], *, style: str = "system") -> str:
    """The numbered passages, with their titles and sources, under the grounding instruction."""
    if style not in STYLES:
        raise ConfigError(
            [ConfigIssue("retrieval.style", f"unknown style `{style}`; use one of {', '.join(STYLES)}")]
        )
    if not passages:
        return f"{_HEADERS[style]}\n\n{_NOTHING_FOUND}"
    numbered = [
        f"[{number}] {passage.title + ' ' if passage.title else ''}(source: {passage.source})\n{passage.text.strip()}"
        for number, passage in enumerate(passages, start=1)
    ]
    return "\n\n".join([_HEADERS[style], _GROUNDING, *numbered])
