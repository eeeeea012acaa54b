"""Lexical features of a message: TF-IDF weighted word n-grams and in-word character n-grams.

The same analyzer runs at training and at inference, in pure Python and numpy, so a trained
model needs no machine-learning library to classify.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")

WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (1, 5)


def normalize(text: str) -> str:
    """Lower-case and collapse whitespace: every n-gram is then free of newlines."""
    return _SPACE.sub(" ", text.lower()).strip()


def word_ngrams(text: str) -> list[str]:
    words = _WORD.findall(text)
    grams: list[str] = list(words)
    grams.extend(f"{a} {b}" for a, b in pairwise(words))
    return grams


def char_ngrams(text: str) -> list[str]:
    lo, hi = CHAR_NGRAMS
    grams: list[str] = []
    for word in text.split(" "):
        padded = f" {word} "
        for n in range(lo, min(hi, len(padded)) + 1):
            grams.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    return grams


@dataclass(frozen=True, slots=True)
class Block:
    """One family of n-grams: its vocabulary (n-gram -> column) and inverse document frequencies."""

    vocabulary: dict[str, int]
    idf: npt.NDArray[np.float32]
    offset: int

    def weights(self, grams: Iterable[str]) -> tuple[list[int], npt.NDArray[np.float32]]:
        counts = Counter(g for g in grams if g in self.vocabulary)
        if not counts:
            return [], np.zeros(0, np.float32)
        local = [self.vocabulary[g] for g in counts]
        values = np.fromiter((1.0 + math.log(c) for c in counts.values()), np.float32, len(local))
        values *= self.idf[local]
        values /= np.float32(np.linalg.norm(values))
        return [self.offset + i for i in local], values


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """The word block and the character block side by side, each L2-normalized on its own."""

    words: Block
    chars: Block

    @property
    def size(self) -> int:
        return self.chars.offset + len(self.chars.vocabulary)

    def vector(self, text: str) -> tuple[list[int], npt.NDArray[np.float32]]:
        clean = normalize(text)
        word_cols, word_vals = self.words.weights(word_ngrams(clean))
        char_cols, char_vals = self.chars.weights(char_ngrams(clean))
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
