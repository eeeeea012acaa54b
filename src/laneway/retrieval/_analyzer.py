"""Turns text into index terms: lower-cased words, Lucene's English stopwords removed, Snowball-stemmed.

The same analyzer must index the passages and read the queries, so a saved knowledge base records
its analyzer's name and `load` refuses a different one.
"""

from __future__ import annotations

import re
from functools import lru_cache

import Stemmer  # type: ignore[import-not-found]  # a C extension without stubs
from bm25s.stopwords import STOPWORDS_EN  # type: ignore[import-untyped]

ANALYZER_NAME = "en-lucene-stop-snowball-v1"

_WORD = re.compile(r"[a-z0-9]+")

# Lucene's 33 English stopwords. A longer list (pronouns, auxiliaries, question words, chat
# filler) measured worse: question words such as "when" and "how long" carry the intent.
_STOPWORDS = frozenset(STOPWORDS_EN)


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def analyze(text: str) -> list[str]:
    """The index terms of `text`, in order, repeats kept (BM25 counts them)."""
    words = [word for word in _WORD.findall(text.lower().replace("'", "")) if word not in _STOPWORDS]
    return list(_stemmer().stemWords(words))
