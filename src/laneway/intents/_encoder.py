"""Sentence encoders: WordPiece tokens in, one L2-normalized vector out.

`SentenceEncoder` runs an int8 ONNX graph (see `_minilm.py` for how it is built) with ONNX
Runtime, one message at a time on one thread. `StaticEncoder` averages one stored vector per
token (distilled from that graph), with numpy; `ContextEncoder` reads each token's vector by its
neighbours as well. Each keeps its tokenizer; all are stored inside a saved intent model, so
loading one needs no network and no machine-learning framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._optional import optional_library

MAX_TOKENS = 128
Table = npt.NDArray[np.floating[Any]]  # vectors by row: float16 as a saved model holds them, or float32


class SentenceEncoder:
    """Embeds one message. `graph` is a serialized ONNX model mapping `input_ids` (int64, one
    message, `[CLS] ... [SEP]`) to `embedding` (float32); `tokenizer` is a `tokenizers` JSON."""

    __slots__ = ("_session", "_tokenizer", "dimensions", "graph", "tokenizer")

    def __init__(self, graph: bytes, tokenizer: str) -> None:
        self.graph = graph
        self.tokenizer = tokenizer
        runtime = _runtime_library("onnxruntime")
        options = runtime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = runtime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = runtime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session: Any = runtime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self._tokenizer = wordpiece(tokenizer)
        self.dimensions = int(self._session.get_outputs()[0].shape[-1])

    def token_ids(self, text: str) -> npt.NDArray[np.int64]:
        return np.asarray(self._tokenizer.encode(text).ids, np.int64)

    @property
    def vocabulary_size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    def outputs(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The graph's raw output for token ids: the pooled vector, or one vector per token."""
        result: npt.NDArray[np.float32] = self._session.run(None, {"input_ids": ids})[0]
        return result

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        """The message's unit-length embedding."""
        return unit(self.outputs(self.token_ids(text)))


class StaticEncoder:
    """Embeds one message as the mean of its tokens' stored vectors (`table`, one row per token id,
    float16 as a saved model holds it, or float32)."""

    __slots__ = ("_tokenizer", "dimensions", "table", "tokenizer")

    def __init__(self, table: Table, tokenizer: str) -> None:
        self.table = table
        self.tokenizer = tokenizer
        self._tokenizer = wordpiece(tokenizer)
        self.dimensions = int(table.shape[1])

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        vector: npt.NDArray[np.float32] = self.table[self._tokenizer.encode(text).ids].astype(np.float32).mean(0)
        return unit(vector)


class ContextEncoder:
    """Embeds one message as the mean of its tokens' vectors, each read with its neighbours: the mean
    of the stored vectors of (left neighbour, token) and (token, right neighbour), those of the two
    pairs that were seen when the vectors were distilled, else the token's own vector (`table`).

    A pair is a key `first * KEY_BASE + second`, a neighbour counted from 1 (0: none, at either end
    of `[CLS] ... [SEP]`); `left_keys` and `right_keys` are sorted, one row of `left` and `right`
    each."""

    __slots__ = ("_tokenizer", "dimensions", "left", "left_keys", "right", "right_keys", "table", "tokenizer")

    def __init__(self, table: Table, left_keys: npt.NDArray[np.int64], left: Table, right_keys: npt.NDArray[np.int64],
                 right: Table, tokenizer: str) -> None:
        self.table, self.tokenizer = table, tokenizer
        self.left_keys, self.left, self.right_keys, self.right = left_keys, left, right_keys, right
        self._tokenizer = wordpiece(tokenizer)
        self.dimensions = int(table.shape[1])

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        return self.embed_ids(np.asarray(self._tokenizer.encode(text).ids, np.int64))

    def embed_ids(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The unit-length embedding of a message's token ids (`[CLS] ... [SEP]`)."""
        before, after = pair_keys(ids)
        left, left_found = _rows(self.left_keys, self.left, before)
        right, right_found = _rows(self.right_keys, self.right, after)
        found = left_found + right_found
        own = self.table[ids].astype(np.float32)
        vectors = np.where(found[:, None] > 0, (left + right) / np.maximum(found, 1)[:, None], own)
        return unit(vectors.mean(0))


KEY_BASE = 1 << 20  # above any token id plus one


def pair_keys(ids: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """For each token, the keys of (left neighbour, token) and (token, right neighbour)."""
    shifted = ids + 1
    before = np.concatenate(([0], shifted[:-1]))
    after = np.concatenate((shifted[1:], [0]))
    return before * KEY_BASE + ids, ids * KEY_BASE + after


def _rows(keys: npt.NDArray[np.int64], table: Table,
          wanted: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The rows of `table` for the keys `wanted` (zero where absent), and 1.0 where present."""
    if not len(keys):
        return np.zeros((len(wanted), table.shape[1]), np.float32), np.zeros(len(wanted), np.float32)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    found = (keys[at] == wanted).astype(np.float32)
    return table[at].astype(np.float32) * found[:, None], found


def wordpiece(tokenizer: str) -> Any:
    """A `tokenizers` tokenizer from its JSON: no padding, at most `MAX_TOKENS` tokens."""
    loaded = _runtime_library("tokenizers").Tokenizer.from_str(tokenizer)
    loaded.no_padding()
    loaded.enable_truncation(MAX_TOKENS)
    return loaded


def unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norm = np.float32(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _runtime_library(name: str) -> Any:
    return optional_library(name, "an intent model with a sentence encoder", "'laneway[encoder]'")
