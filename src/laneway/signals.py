"""Signals: the typed facts about a request that route matchers read.

The catalogue (`SIGNALS`) is what the matcher compiler type-checks against. `Signals` holds one
request's values; `tokens` and `intent` are computed only when something reads them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .chat import Message, message_text
from .errors import InvalidRequest, shown

PRIORITIES = ("low", "normal", "high", "urgent")
CHANNELS = ("chat", "email")


@dataclass(frozen=True, slots=True)
class SignalType:
    kind: str  # "int", "float", "bool", "enum", "str", "any"
    values: tuple[str, ...] = ()
    default: Any = None
    doc: str = ""
    maximum: float | None = None  # of a number: the most it can be (all are at least 0)


SIGNALS: dict[str, SignalType] = {
    "convo_length": SignalType("int", default=0, doc="user + assistant messages in the conversation"),
    "turns": SignalType("int", default=0, doc="user messages in the conversation"),
    "tokens": SignalType("int", default=0, doc="prompt tokens, counted with the target's tokenizer"),
    "priority": SignalType("enum", PRIORITIES, "normal", "low | normal | high | urgent"),
    "escalation": SignalType("bool", default=False, doc="the conversation was escalated"),
    "channel": SignalType("enum", CHANNELS, "chat", "chat | email"),
    "tier": SignalType("str", default="", doc="customer tier, free text (e.g. gold)"),
    "conversation_id": SignalType("str", default="", doc="sticky conversation key"),
    "user": SignalType("str", default="", doc="end-user id (the body's `user` field)"),
    "intent": SignalType("str", default="unknown", doc="intent of the latest customer message"),
    "intent_confidence": SignalType("float", default=0.0, doc="classifier confidence in [0, 1]", maximum=1.0),
}

# Signals a client may set through `metadata` or `x-laneway-<name>` headers. A client-set
# `intent` (from the client's own classifier) has confidence 1 and skips Laneway's.
SETTABLE = ("priority", "escalation", "channel", "tier", "conversation_id", "intent")

# `metadata.subject`: an email's subject line. With `channel == email` the intent classifier and
# retrieval read it before the latest customer message, as a triage agent reads an email.
SUBJECT = "subject"

IntentFn = Callable[[str], tuple[str, float]]
TokenFn = Callable[[list[Message]], int]


# The intent classifier and retrieval read this much of the customer's text, from its start (where an email's
# request is, before what it quotes). Both cost time in proportion to the text, on the event loop: a 5 MB
# message held every other request up for 1.1 s, however short theirs.
CUSTOMER_TEXT_CHARS = 2_000
# Where the thread an email quotes begins: the line a mail client writes before it ("On Mon, 3 Mar 2025 at
# 10:02, Support <support@example.com> wrote:", maybe wrapped over two lines), or Outlook's separator or
# header block. The quote (an agent's earlier reply, longer than the customer's new request) outweighed the
# request: 96 % of billing replies lost their intent to it.
_ATTRIBUTION = r"On\b[^\n]*(?:\n[^\n]*)?\bwrote:[ \t]*\r?$"
_HEADER_BLOCK = r"-{2,}[ \t]*Original Message[ \t]*-{2,}|_{10,}[ \t]*$|From:[ \t][^\n]*\n(?:Sent|Date):"
_THREAD_START = re.compile(rf"^(?:{_ATTRIBUTION}|{_HEADER_BLOCK})", re.MULTILINE | re.IGNORECASE)
# An older thread below a quoted one: only a header block says so for sure. A customer's own line may read
# "On Friday your agent wrote:", and one above a quoted "> On ... wrote:" ran into it as one match.
_OLDER_THREAD = re.compile(rf"^(?:{_HEADER_BLOCK})", re.MULTILINE | re.IGNORECASE)
# A quoted line: left out wherever it is, since a reply may answer a quoted question line by line.
_QUOTED_LINE = re.compile(r"^[ \t]*>.*(?:\n|$)", re.MULTILINE)
# The thread begins with quoted lines (after blank ones): the client quotes it, and the customer may have
# written between its lines (an inline reply) as well as above and below it.
_QUOTED_NEXT = re.compile(r"[ \t]*\r?\n(?:[ \t]*\r?\n)*[ \t]*>")
# Characters of an email searched for its own words, before they are cut to `CUSTOMER_TEXT_CHARS`: a reply
# written under a long quote starts past the first 2,000, which held only the quote.
EMAIL_SCAN_CHARS = 65_536


class Signals:
    """One request's signal values. Attribute names are the catalogue's names."""

    __slots__ = (
        "_intent",
        "_intent_fn",
        "_messages",
        "_token_fn",
        "_tokens",
        "channel",
        "conversation_id",
        "convo_length",
        "escalation",
        "metadata",
        "priority",
        "tier",
        "turns",
        "user",
    )

    def __init__(
        self,
        messages: list[Message],
        *,
        priority: str = "normal",
        escalation: bool = False,
        channel: str = "chat",
        tier: str = "",
        conversation_id: str = "",
        user: str = "",
        intent: str = "",
        metadata: Mapping[str, Any] | None = None,
        token_fn: TokenFn | None = None,
        intent_fn: IntentFn | None = None,
    ) -> None:
        turns = 0
        assistant = 0
        for message in messages:
            role = message.get("role")
            if role == "user":
                turns += 1
            elif role == "assistant":
                assistant += 1
        self.convo_length = turns + assistant
        self.turns = turns
        self.priority = priority
        self.escalation = escalation
        self.channel = channel
        self.tier = tier
        self.conversation_id = conversation_id
        self.user = user
        self.metadata: Mapping[str, Any] = metadata or {}
        self._messages = messages
        self._tokens: int | None = None
        self._token_fn = token_fn
        self._intent: tuple[str, float] | None = (intent, 1.0) if intent else None
        self._intent_fn = intent_fn

    @property
    def tokens(self) -> int:
        if self._tokens is None:
            self._tokens = self._token_fn(self._messages) if self._token_fn else 0
        return self._tokens

    @tokens.setter
    def tokens(self, value: int) -> None:
        self._tokens = value

    @property
    def intent(self) -> str:
        return self._classified()[0]

    @property
    def intent_confidence(self) -> float:
        return self._classified()[1]

    def _classified(self) -> tuple[str, float]:
        if self._intent is None:
            if self._intent_fn is None:
                self._intent = ("unknown", 0.0)
            else:
                self._intent = self._intent_fn(self.customer_text())
        return self._intent

    def customer_text(self) -> str:
        """What the intent classifier and retrieval read: the latest customer message, after the subject
        line for an email that has one (`metadata.subject`), at most `CUSTOMER_TEXT_CHARS` of it; of an email,
        what comes before the thread it quotes."""
        text = next((message_text(m) for m in reversed(self._messages) if m.get("role") == "user"), "")
        subject = None
        if self.channel == "email":
            text = own_words(text[:EMAIL_SCAN_CHARS])
            subject = self.metadata.get(SUBJECT)
        if isinstance(subject, str) and subject.strip():
            text = f"{subject.strip()}\n{text}" if text else subject.strip()
        return text[:CUSTOMER_TEXT_CHARS]

    def computed(self) -> dict[str, Any]:
        """The values worth recording, without forcing lazy signals that were never read."""
        values: dict[str, Any] = {
            "convo_length": self.convo_length, "turns": self.turns, "priority": self.priority,
            "escalation": self.escalation, "channel": self.channel,
        }
        if self.tier:
            values["tier"] = self.tier
        if self._tokens is not None:
            values["tokens"] = self._tokens
        if self._intent is not None:
            values["intent"], values["intent_confidence"] = self._intent
        if self.metadata:
            values["metadata"] = dict(self.metadata)
        return values


def parse_settable(name: str, raw: Any, where: str) -> Any:
    """Validate a client-supplied signal value; `where` names its source for the error."""
    kind = SIGNALS[name]
    if kind.kind == "enum":
        value = str(raw).strip().lower() if isinstance(raw, str) else raw
        if value not in kind.values:
            raise InvalidRequest(
                f"`{where}`: invalid value {shown(raw)}; expected one of {', '.join(kind.values)}", param=where
            )
        return value
    if kind.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no", ""):
            return False
        raise InvalidRequest(f"`{where}`: invalid value {shown(raw)}; expected true or false (also yes/no, 1/0)",
                             param=where)
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        raise InvalidRequest(f"`{where}`: expected a string, got {shown(raw)}", param=where)
    text = str(raw)
    if len(text) > MAX_TEXT_SIGNAL:  # kept in the exchange log and in memory, exchange after exchange
        raise InvalidRequest(f"`{where}`: {len(text)} characters, more than {MAX_TEXT_SIGNAL}", param=where)
    return text


MAX_TEXT_SIGNAL = 512  # characters of a client's `conversation_id` or `tier`, as of an OpenAI `metadata` value


def own_words(email: str) -> str:
    """An email's own words, without its quoted lines. A thread quoted line by line (`> ...` after the line
    that begins it) leaves every other line: the customer may answer its questions between them. A thread
    not quoted so (Outlook's block, a forward) is cut off: the text before it (`_THREAD_START`); when nothing
    comes before (a reply written under the quote), the text after the line that begins the thread; all of
    it when that leaves nothing either."""
    thread = _THREAD_START.search(email)
    if thread is not None and _QUOTED_NEXT.match(email, thread.end()):
        # Above the quote a greeting ("Hi, my answers are below."), the request between its lines: reading only
        # what came before the thread read the greeting, and 40 of 40 inline billing replies missed the route.
        after = email[thread.end():]
        if (older := _OLDER_THREAD.search(after)) is not None:  # an older thread below, not quoted so: cut off
            after = after[:older.start()]
        own = _unquoted(email[:thread.start()] + after[2 if after.startswith("\r\n") else 1:])
        return own if own.strip() else email
    own = _unquoted(email if thread is None else email[:thread.start()])
    if own.strip() or thread is None:
        return own if own.strip() else email
    below = _unquoted(email[thread.end():])
    return below if below.strip() else email


def _unquoted(text: str) -> str:
    return _QUOTED_LINE.sub("", text) if ">" in text else text
