"""Turns text into index terms: lower-cased words, Lucene's English stopwords removed, Snowball-stemmed.

The same analyzer must index the passages and read the queries, so a saved knowledge base records
its analyzer's name, and is read with that one (`analyzer`); `load` refuses a name it does not know.
A word is a run of letters and digits of any script. The first analyzer (`...-v1`) read ASCII
letters only: "Zürich" was the terms `z` and `rich`, and text in Japanese had no terms at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import Stemmer  # type: ignore[import-not-found]  # a C extension without stubs
from bm25s.stopwords import STOPWORDS_EN  # type: ignore[import-untyped]

ANALYZER_NAME = "en-lucene-stop-snowball-v2"  # what `build` uses
_WORDS = {"en-lucene-stop-snowball-v1": re.compile(r"[a-z0-9]+"), ANALYZER_NAME: re.compile(r"[^\W_]+")}

# Lucene's 33 English stopwords. A longer list (pronouns, auxiliaries, question words, chat
# filler) measured worse: question words such as "when" and "how long" carry the intent.
_STOPWORDS = frozenset(STOPWORDS_EN)


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def analyzer(name: str = ANALYZER_NAME) -> Callable[[str], list[str]]:
    """The analyzer called `name`; KeyError for a name none has."""
    word = _WORDS[name]

    def analyze(text: str) -> list[str]:
        """The index terms of `text`, in order, repeats kept (BM25 counts them)."""
        words = [w for w in word.findall(text.lower().replace("'", "")) if w not in _STOPWORDS]
        return list(_stemmer().stemWords(words))

    return analyze


analyze = analyzer()
KNOWN_ANALYZERS = tuple(_WORDS)
