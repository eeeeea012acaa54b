"""A named BM25 index over passages: built from source documents, searched, saved and loaded.

Scoring is Lucene-style BM25 from `bm25s` over the terms of `_analyzer`; a passage's indexed
text is its title followed by its text, so a heading names what its section is about.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import bm25s  # type: ignore[import-untyped]
import numpy as np

from laneway.config import MIN_CHUNK_TOKENS
from laneway.errors import ConfigError, ConfigIssue
from laneway.retrieval._analyzer import ANALYZER_NAME, KNOWN_ANALYZERS, analyze, analyzer
from laneway.retrieval._passage import Passage
from laneway.retrieval._sources import read_passages

# bm25s sets its own logger to DEBUG when imported, so "Building index from tokens" reached the
# terminal of every `laneway check` and `serve` with a knowledge base.
logging.getLogger("bm25s").setLevel(logging.WARNING)
# bm25s counts tokens through tqdm even with its bar off, and tqdm's first bar takes a lock that is a
# multiprocessing semaphore: one a worker of `serve --workers` killed outright never releases, which
# the server's resource tracker then reports as leaked at shutdown. A thread lock is all it needs here.
# (bm25s does without tqdm when it is not installed.)
with contextlib.suppress(ImportError):
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    if not hasattr(tqdm, "_lock"):
        tqdm.set_lock(threading.RLock())

FORMAT = "laneway-knowledge/1"
DEFAULT_CHUNK_TOKENS = 400
_BM25_PARAMETERS = {"k1": 1.2, "b": 0.75, "method": "lucene"}


class KnowledgeBase:
    """Passages of one knowledge base and the BM25 index over them."""

    def __init__(self, name: str, passages: Sequence[Passage], index: bm25s.BM25,
                 analyzer_name: str = ANALYZER_NAME) -> None:
        self._name = name
        self._passages = tuple(passages)
        self._index = index
        self._vocabulary: dict[str, int] = index.vocab_dict
        self._analyzer_name = analyzer_name
        self._analyze = analyzer(analyzer_name)  # the one the index was built with

    @property
    def name(self) -> str:
        return self._name

    @property
    def passages(self) -> tuple[Passage, ...]:
        return self._passages

    def __len__(self) -> int:
        return len(self._passages)

    def search(self, query: str, top_k: int = 3, min_score: float = 0.0) -> list[Passage]:
        """The `top_k` best passages scoring at least `min_score`, best first.

        A passage sharing no term with the query scores 0 and is never returned.
        """
        if top_k < 1:
            raise ConfigError([ConfigIssue("retrieval.top_k", f"must be at least 1, got {top_k}")])
        term_ids = [self._vocabulary[term] for term in self._analyze(query) if term in self._vocabulary]
        if not term_ids:
            return []
        scores = self._index.get_scores_from_ids(term_ids)
        return [self._scored(int(i), float(scores[i])) for i in _best(scores, top_k, max(min_score, 0.0))]

    def _scored(self, position: int, score: float) -> Passage:
        passage = self._passages[position]
        return Passage(passage.id, passage.source, passage.title, passage.text, score)

    @classmethod
    def build(
        cls, name: str, sources: Sequence[Path], *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    ) -> KnowledgeBase:
        """Read `sources` (Markdown, JSON, CSV), cut them into passages and index them."""
        if not name.strip():
            raise ConfigError([ConfigIssue("knowledge", "a knowledge base needs a non-empty name")],
                              subject="knowledge base")
        if chunk_tokens < MIN_CHUNK_TOKENS:
            raise ConfigError([ConfigIssue("chunk_tokens", f"must be at least {MIN_CHUNK_TOKENS}, got {chunk_tokens}")])
        passages = read_passages(sources, chunk_tokens)
        index = bm25s.BM25(**_BM25_PARAMETERS)
        index.index([analyze(f"{p.title}\n{p.text}") for p in passages], show_progress=False)
        return cls(name, passages, index)

    def save(self, directory: Path) -> None:
        """Write the passages and the index to `directory` (created if missing) for `load`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._index.save(str(directory / "bm25"), show_progress=False)
        with (directory / "passages.jsonl").open("w", encoding="utf-8") as out:
            for passage in self._passages:
                record = asdict(passage)
                del record["score"]
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        manifest = {"format": FORMAT, "name": self._name, "analyzer": self._analyzer_name, "passages": len(self)}
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> KnowledgeBase:
        """A knowledge base saved by `save`."""
        directory = Path(directory)
        manifest = _read_manifest(directory)
        passages = _read_passages(directory / "passages.jsonl")
        try:
            index = bm25s.BM25.load(str(directory / "bm25"), show_progress=False)
        except (OSError, ValueError) as error:
            raise _artifact_error(directory, f"has an unreadable index ({error})") from None
        if len(passages) != manifest.get("passages") or index.scores["num_docs"] != len(passages):
            raise _artifact_error(directory, "passages and index disagree in size")
        return cls(str(manifest["name"]), passages, index, str(manifest["analyzer"]))


def _best(scores: np.ndarray, top_k: int, min_score: float) -> list[int]:
    candidates = np.flatnonzero((scores > 0) & (scores >= min_score))
    if len(candidates) > top_k:
        keep = np.argpartition(-scores[candidates], top_k - 1)[:top_k]
        candidates = candidates[keep]
    # Ties are broken by passage order so that results are reproducible.
    order = np.lexsort((candidates, -scores[candidates]))
    return [int(i) for i in candidates[order]]


def _read_manifest(directory: Path) -> dict[str, object]:
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _artifact_error(directory, "is not a saved knowledge base (no `manifest.json`)") from None
    except (OSError, ValueError) as error:
        raise _artifact_error(directory, f"has an unreadable `manifest.json` ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _artifact_error(directory, f"was saved in another format; expected `{FORMAT}`")
    if manifest.get("analyzer") not in KNOWN_ANALYZERS:
        raise _artifact_error(directory, f"was built with analyzer `{manifest.get('analyzer')}`, which this "
                                         f"release does not have (it has {', '.join(KNOWN_ANALYZERS)})")
    return manifest


def _read_passages(path: Path) -> list[Passage]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not `splitlines`: a passage may hold U+2028
        return [Passage(score=0.0, **json.loads(line)) for line in lines if line.strip()]
    except (OSError, ValueError, TypeError) as error:
        raise _artifact_error(path.parent, f"has unreadable passages ({error})") from None


def _artifact_error(directory: Path, problem: str) -> ConfigError:
    hint = "rebuild it with `laneway knowledge build NAME SOURCE... --out DIR`"
    return ConfigError([ConfigIssue(str(directory), f"`{directory}` {problem}; {hint}")], source=str(directory),
                       subject="knowledge base")
