"""Conversation traces: loading `data/traces/*.json` and turning them into a stream of requests.

A trace file holds conversations (each a list of messages and the points at which the customer
sent a request), the policy passages they reference, and the mix of conversation kinds. A
`schedule` interleaves conversations the way a live queue does: a few are open at once, each
arrival continues one of them, and a finished conversation is replaced by the next one drawn.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ConfigIssue

FORMAT = "laneway-traces/1"
KINDS = ("chat", "email", "escalation", "long")
DEFAULT_TRACE = "support.json"


@dataclass(frozen=True, slots=True)
class Turn:
    """One request of a conversation: the first `upto` messages, and the signals set on it."""

    upto: int
    escalation: bool
    priority: str


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    kind: str
    source: str
    channel: str
    topic: str
    messages: tuple[dict[str, Any], ...]
    turns: tuple[Turn, ...]


@dataclass(frozen=True, slots=True)
class Trace:
    conversations: tuple[Conversation, ...]
    mix: Mapping[str, float]
    source: str

    def of_kind(self, kind: str) -> list[Conversation]:
        return [c for c in self.conversations if c.kind == kind]


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """What one arrival sends: a conversation's messages so far and its signals."""

    conversation_id: str
    kind: str
    messages: tuple[dict[str, Any], ...]
    metadata: Mapping[str, Any]

    @property
    def escalation(self) -> bool:
        return bool(self.metadata.get("escalation"))


def default_trace_path() -> Path:
    """`data/traces/support.json` of the checkout this package runs from, else of the working directory."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        candidate = root / "data" / "traces" / DEFAULT_TRACE
        if candidate.is_file():
            return candidate
    return Path.cwd() / "data" / "traces" / DEFAULT_TRACE


def load_trace(path: str | Path | None = None) -> Trace:
    file = Path(path) if path is not None else default_trace_path()
    try:
        raw = json.loads(file.read_text("utf-8"))
    except OSError as exc:
        raise _error(file, "", f"cannot read the trace file ({exc.strerror}); build it with "
                               "`python scripts/build_traces.py` or pass `--traces PATH`") from None
    except ValueError as exc:
        raise _error(file, "", f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _error(file, "format", f"expected a `{FORMAT}` trace; rebuild it with "
                                     "`scripts/build_traces.py`")
    try:
        passages: dict[str, str] = raw["passages"]
        system = {"role": "system", "content": str(raw["system"])}
        conversations = tuple(_conversation(c, passages, system) for c in raw["conversations"])
        mix = {kind: float(raw["mix"].get(kind, 0.0)) for kind in KINDS}
    except (KeyError, TypeError, ValueError) as exc:
        raise _error(file, "conversations", f"malformed trace entry ({exc!r})") from None
    if not any(weight > 0 for weight in mix.values()):
        raise _error(file, "mix", f"no kind has a weight above 0; give one of {', '.join(KINDS)} a weight")
    present = {c.kind for c in conversations}
    missing = [kind for kind, weight in mix.items() if weight > 0 and kind not in present]
    if missing:
        raise _error(file, "mix", f"kind `{missing[0]}` has a weight but no conversations")
    return Trace(conversations, mix, str(file))


def _conversation(raw: dict[str, Any], passages: Mapping[str, str], system: dict[str, Any]) -> Conversation:
    messages = (system, *(_message(m, passages) for m in raw["messages"]))
    # `upto` counts the stored messages; the shared system prompt is one more in front.
    turns = tuple(Turn(int(t["upto"]) + 1, bool(t["escalation"]), str(t["priority"]))
                  for t in raw["requests"])
    if raw["kind"] not in KINDS or not turns or any(not 1 < t.upto <= len(messages) for t in turns):
        raise ValueError(f"conversation `{raw.get('id')}` has an unknown kind or turns outside its messages")
    return Conversation(str(raw["id"]), str(raw["kind"]), str(raw["source"]), str(raw["channel"]),
                        str(raw["topic"]), messages, turns)


def _message(raw: dict[str, Any], passages: Mapping[str, str]) -> dict[str, Any]:
    if "passages" in raw:
        texts = [passages[p] for p in raw["passages"]]
        body = "\n\n".join(texts) if texts else "(no passage matched)"
        return {"role": "system",
                "content": "Policy passages retrieved for the next customer message:\n\n" + body}
    return {"role": str(raw["role"]), "content": str(raw["content"])}


def _error(file: Path, where: str, message: str) -> ConfigError:
    return ConfigError([ConfigIssue(where, message)], str(file), subject="traces")


def schedule(trace: Trace, seed: int, open_conversations: int = 8) -> Iterator[TraceRequest]:
    """An endless, deterministic stream of requests with the trace's mix of conversation kinds.

    Kinds are drawn by smooth weighted round-robin, so even a short replay has the stated mix;
    within a kind, conversations come in a seeded shuffled cycle, and each repetition gets its
    own conversation id.
    """
    rng = random.Random(seed)
    pools = {kind: _cycle(trace.of_kind(kind), rng) for kind, weight in trace.mix.items() if weight > 0}
    picker = _weighted_round_robin({k: trace.mix[k] for k in pools})
    serial = 0
    active: list[tuple[str, Conversation, int]] = []
    while True:
        while len(active) < open_conversations:
            serial += 1
            conversation = next(pools[next(picker)])
            active.append((f"{conversation.id}#{serial}", conversation, 0))
        slot = rng.randrange(len(active))
        key, conversation, done = active[slot]
        yield _request(key, conversation, conversation.turns[done])
        if done + 1 == len(conversation.turns):
            active.pop(slot)
        else:
            active[slot] = (key, conversation, done + 1)


def _request(key: str, conversation: Conversation, turn: Turn) -> TraceRequest:
    metadata = {"conversation_id": key, "channel": conversation.channel, "priority": turn.priority,
                "escalation": turn.escalation, "topic": conversation.topic}
    return TraceRequest(key, conversation.kind, conversation.messages[:turn.upto], metadata)


def _cycle(items: list[Conversation], rng: random.Random) -> Iterator[Conversation]:
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def _weighted_round_robin(weights: Mapping[str, float]) -> Iterator[str]:
    credit = dict.fromkeys(weights, 0.0)
    total = sum(weights.values())
    while True:
        for kind, weight in weights.items():
            credit[kind] += weight
        best = max(credit, key=lambda k: credit[k])
        credit[best] -= total
        yield best
