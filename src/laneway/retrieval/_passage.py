"""The unit a knowledge base stores and returns: one chunk of one source document."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Passage:
    """A chunk of a source document; `score` is its BM25 score for the query (0.0 when stored)."""

    id: str
    source: str
    title: str
    text: str
    score: float
