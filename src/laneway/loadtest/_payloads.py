"""Load-test payloads: JSONL of chat-completions bodies, or JSONL of conversations replayed turn by turn.

A conversation line is an object with a `conversation` key (its id):

    {"conversation": "c-42", "model": "laneway", "signals": {"priority": "high", "channel": "chat"},
     "params": {"max_tokens": 200},
     "messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "I was charged twice"},
                  {"role": "assistant", "content": "..."},
                  {"role": "user", "content": "Still waiting", "signals": {"escalation": true}}]}

Each `user` message becomes one request carrying the messages up to it, with `metadata` holding
the conversation's `signals` plus `conversation_id`. A message's own `signals` (stripped from
what is sent) change the signals from that turn on. `model` (default: the command's `--model`)
and `params` (extra body fields such as `max_tokens`) are optional; a `metadata` object in
`params` is merged under the signals. Any other line is sent as is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError, ConfigIssue, not_utf8


@dataclass(frozen=True, slots=True)
class Payload:
    """One request body, ready to send; a body with `"stream": true` is sent and read as a stream."""

    body: dict[str, Any]
    conversation: str | None = None


def load_payloads(path: str | Path, model: str = "laneway") -> list[Payload]:
    """Every request of a payload file, in file order (a conversation's turns in turn order)."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else not_utf8(exc)
        issue = ConfigIssue(str(source), f"cannot read the payload file: {problem}; check `--payloads`")
        raise _invalid([issue]) from None
    payloads: list[Payload] = []
    # Lines end at "\n" only: `splitlines` also splits at U+2028 and U+0085, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            payloads.extend(_payloads_of(_decode(line, source, number), model, f"{source}:{number}"))
    if not payloads:
        raise _invalid([ConfigIssue(str(source), "no requests: write one JSON object per line")])
    return payloads


def _decode(line: str, source: Path, number: int) -> dict[str, Any]:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise _invalid([ConfigIssue(f"{source}:{number}", f"not valid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise _invalid([ConfigIssue(f"{source}:{number}", "each line must be a JSON object")])
    return data


def _payloads_of(data: dict[str, Any], model: str, where: str) -> Iterator[Payload]:
    if "conversation" not in data:
        if not isinstance(data.get("messages"), list):
            raise _invalid([ConfigIssue(where, "a request line needs a `messages` list "
                                               "(or a `conversation` key to replay it turn by turn)")])
        yield Payload({**data, "model": data.get("model") or model})
        return
    yield from conversation_turns(data, model, where)


def conversation_turns(data: dict[str, Any], model: str, where: str = "conversation") -> Iterator[Payload]:
    """The requests of one conversation line, one per `user` message."""
    conversation = data["conversation"]
    if isinstance(conversation, bool) or not isinstance(conversation, str | int) or not str(conversation).strip():
        raise _invalid([ConfigIssue(f"{where}.conversation", "must be the conversation's id (text or a number), "
                                                             f"got {orjson.dumps(conversation).decode()}")])
    conversation = str(conversation)
    messages, signals, params = data.get("messages"), data.get("signals", {}), data.get("params", {})
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _invalid([ConfigIssue(f"{where}.messages", "must be a list of message objects")])
    if not isinstance(signals, dict) or not isinstance(params, dict):
        raise _invalid([ConfigIssue(where, "`signals` and `params` must be objects")])
    extra = params.get("metadata", {})
    if not isinstance(extra, dict):
        raise _invalid([ConfigIssue(f"{where}.params.metadata", "must be an object")])
    current = {**extra, **signals, "conversation_id": conversation}
    sent: list[dict[str, Any]] = []
    turns = 0
    for i, message in enumerate(messages):
        turn_signals = message.get("signals", {})
        if not isinstance(turn_signals, dict):
            raise _invalid([ConfigIssue(f"{where}.messages[{i}].signals", "must be an object, such as "
                                                                          '{"escalation": true}')])
        current = {**current, **turn_signals}
        sent.append({k: v for k, v in message.items() if k != "signals"})
        if message.get("role") == "user":
            turns += 1
            body = {**params, "model": data.get("model") or model, "messages": list(sent), "metadata": dict(current)}
            yield Payload(body, conversation)
    if not turns:
        raise _invalid([ConfigIssue(f"{where}.messages", "has no `user` message: each one is a turn to send")])


def _invalid(issues: list[ConfigIssue]) -> ConfigError:
    return ConfigError(issues, subject="load-test payloads")
