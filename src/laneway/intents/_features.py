"""Lexical features of a message: TF-IDF weighted word n-grams and in-word character n-grams.

The same analyzer runs at training and at inference, in pure Python and numpy, so a trained
model needs no machine-learning library to classify.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import islice, pairwise

import numpy as np
import numpy.typing as npt

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")

WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (1, 5)
CHAR_CACHE = 1 << 15  # words whose character n-gram columns are kept
CACHED_WORD_CHARS = 40  # longer words are not kept: their columns grow with their length


def normalize(text: str) -> str:
    """Lower-case and collapse whitespace: every n-gram is then free of newlines."""
    return _SPACE.sub(" ", text.lower()).strip()


def word_ngrams(text: str) -> list[str]:
    words = _WORD.findall(text)
    grams: list[str] = list(words)
    grams.extend(f"{a} {b}" for a, b in pairwise(words))
    return grams


def char_ngrams(text: str) -> list[str]:
    grams: list[str] = []
    for word in text.split(" "):
        grams.extend(word_char_ngrams(word))
    return grams


def word_char_ngrams(word: str) -> list[str]:
    lo, hi = CHAR_NGRAMS
    padded = f" {word} "
    return [padded[i : i + n] for n in range(lo, min(hi, len(padded)) + 1) for i in range(len(padded) - n + 1)]


def _char_columns(vocabulary: dict[str, int], word: str) -> tuple[int, ...]:
    return tuple(vocabulary[g] for g in word_char_ngrams(word) if g in vocabulary)


@dataclass(frozen=True, slots=True)
class Block:
    """One family of n-grams: its vocabulary (n-gram -> column) and inverse document frequencies."""

    vocabulary: dict[str, int]
    idf: npt.NDArray[np.float32]
    offset: int

    def weights(self, grams: Iterable[str]) -> tuple[list[int], npt.NDArray[np.float32]]:
        vocabulary = self.vocabulary
        return self.tfidf([vocabulary[g] for g in grams if g in vocabulary])

    def tfidf(self, local: list[int]) -> tuple[list[int], npt.NDArray[np.float32]]:
        """The unit-length TF-IDF weights of the block's columns `local` (one entry per occurrence)."""
        if not local:
            return [], np.zeros(0, np.float32)
        counts = Counter(local)
        columns = list(counts)
        frequencies = np.fromiter(counts.values(), np.float64, len(columns))
        np.log(frequencies, out=frequencies)
        frequencies += 1.0
        values = frequencies.astype(np.float32)
        values *= self.idf[columns]
        values /= np.float32(np.linalg.norm(values))
        offset = self.offset
        return [offset + i for i in columns], values


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """The word block and the character block side by side, each L2-normalized on its own.

    A message's character n-grams are those of its words, each padded with spaces, so the columns
    they hit are looked up once per word and kept (`CHAR_CACHE` words, the training words to begin
    with): generating and looking up some 25 n-grams per word was most of a message's cost, up to
    0.6 ms for a long one (docs/intents.md)."""

    words: Block
    chars: Block
    _char_columns: Callable[[str], tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        columns = lru_cache(maxsize=CHAR_CACHE)(partial(_char_columns, self.chars.vocabulary))
        object.__setattr__(self, "_char_columns", columns)
        for word in islice((g for g in self.words.vocabulary if " " not in g), CHAR_CACHE // 2):
            columns(word)

    @property
    def size(self) -> int:
        return self.chars.offset + len(self.chars.vocabulary)

    def vector(self, text: str) -> tuple[list[int], npt.NDArray[np.float32]]:
        clean = normalize(text)
        word_cols, word_vals = self.words.weights(word_ngrams(clean))
        char_columns, vocabulary = self._char_columns, self.chars.vocabulary
        local: list[int] = []
        for word in clean.split(" "):
            # A long word (a pasted URL, an id, base64) is looked up each time: kept, each held some 25 KB, and
            # 32,768 distinct ones grew the gateway by 0.8 GB.
            local.extend(char_columns(word) if len(word) <= CACHED_WORD_CHARS else _char_columns(vocabulary, word))
        char_cols, char_vals = self.chars.tfidf(local)
        return word_cols + char_cols, np.concatenate([word_vals, char_vals])

    def grams(self) -> list[str]:
        """Every n-gram in column order (the inverse of the two vocabularies)."""
        ordered = [""] * self.size
        for block in (self.words, self.chars):
            for gram, column in block.vocabulary.items():
                ordered[block.offset + column] = gram
        return ordered


def fit_features(texts: Sequence[str], char_min_df: int = 2) -> TextFeatures:
    """Learn both vocabularies and their IDF from training texts; rare character n-grams are dropped."""
    cleaned = [normalize(t) for t in texts]
    words = _fit_block((set(word_ngrams(t)) for t in cleaned), len(cleaned), 1, offset=0)
    char_sets = (set(char_ngrams(t)) for t in cleaned)
    chars = _fit_block(char_sets, len(cleaned), char_min_df, len(words.vocabulary))
    return TextFeatures(words, chars)


def _fit_block(documents: Iterable[set[str]], n_docs: int, min_df: int, offset: int) -> Block:
    df: Counter[str] = Counter()
    for grams in documents:
        df.update(grams)
    kept = sorted(g for g, count in df.items() if count >= min_df)
    idf = np.array([math.log((1 + n_docs) / (1 + df[g])) + 1.0 for g in kept], np.float32)
    return Block({g: i for i, g in enumerate(kept)}, idf, offset)


def features_from_grams(grams: Sequence[str], idf: npt.NDArray[np.float32], n_words: int) -> TextFeatures:
    """Rebuild the analyzer from a saved column order: `n_words` word n-grams, then characters."""
    words = Block({g: i for i, g in enumerate(grams[:n_words])}, idf[:n_words], 0)
    chars = Block({g: i for i, g in enumerate(grams[n_words:])}, idf[n_words:], n_words)
    return TextFeatures(words, chars)
