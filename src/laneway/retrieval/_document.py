"""A whole source document before it is cut into passages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    id: str
    source: str
    title: str
    text: str
