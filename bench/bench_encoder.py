"""Cost and quality of the MiniLM sentence encoder for one message on one thread, by precision.

    python bench/bench_encoder.py               # latency of each variant over the Banking77 validation rows
    python bench/bench_encoder.py --accuracy    # also logistic-regression accuracy on Banking77 (slower)

Variants: the float32 graph, int8 with one scale per matrix, int8 with one scale per output
channel (the one intent models use), and the static token vectors distilled from it on the
training rows. Latency is per single message, pinned to one core, ONNX Runtime with one thread;
tokenization is measured on its own. `cosine` is the mean cosine similarity to the float32
embeddings. Accuracy: in-scope accuracy on the Banking77 90/10 split (no rejection), with the
embedding alone and next to the TF-IDF features (embedding scaled by 2), logistic regression C=10.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "scripts")]

import build_intent_model as corpora  # noqa: E402

from laneway.intents._encoder import SentenceEncoder  # noqa: E402
from laneway.intents._features import fit_features  # noqa: E402
from laneway.intents._minilm import (  # noqa: E402
    BertShape,
    StaticDistiller,
    bert_graph,
    minilm_directory,
    quantize,
    read_safetensors,
)
from laneway.intents._training import feature_matrix  # noqa: E402


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {q: round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)
            for q, p in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}


def latency_ms(embed: Callable[[str], Any], texts: Sequence[str], passes: int = 2) -> dict[str, float]:
    for text in texts[:100]:
        embed(text)
    samples = []
    for _ in range(passes):
        for text in texts:
            started = time.perf_counter_ns()
            embed(text)
            samples.append((time.perf_counter_ns() - started) / 1e6)
    return percentiles(samples)


def accuracy(embed: Callable[[str], Any], train: corpora.Rows, val: corpora.Rows) -> dict[str, float]:
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    (train_texts, train_labels), (val_texts, val_labels) = train, val
    train_vectors = np.stack([embed(t) for t in train_texts])
    val_vectors = np.stack([embed(t) for t in val_texts])
    features = fit_features(train_texts)
    lexical_train, lexical_val = feature_matrix(features, train_texts), feature_matrix(features, val_texts)
    result = {}
    for name, fit_rows, val_rows in (
        ("embedding", train_vectors, val_vectors),
        ("tfidf+embedding", sparse.hstack([lexical_train, sparse.csr_matrix(2 * train_vectors)]).tocsr(),
         sparse.hstack([lexical_val, sparse.csr_matrix(2 * val_vectors)]).tocsr()),
    ):
        model = LogisticRegression(C=10, max_iter=2000).fit(fit_rows, train_labels)
        result[name] = round(float(np.mean(model.predict(val_rows) == np.array(val_labels))), 4)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accuracy", action="store_true", help="also train logistic regressions on Banking77")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    train, val = corpora.holdout(corpora.banking_rows(), 0.1)
    folder = minilm_directory()
    shape = BertShape.from_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    tokenizer = (folder / "tokenizer.json").read_text(encoding="utf-8")
    fp32 = bert_graph(read_safetensors(folder / "model.safetensors"), shape)
    encoders = {
        "float32": SentenceEncoder(fp32, tokenizer),
        "int8 per matrix": SentenceEncoder(quantize(fp32, per_channel=False), tokenizer),
        "int8 per channel": SentenceEncoder(quantize(fp32), tokenizer),
    }
    embedders: dict[str, Callable[[str], Any]] = {name: e.embed for name, e in encoders.items()}
    embedders["static (distilled on train)"] = StaticDistiller(folder).distill(train[0]).embed
    base = encoders["float32"]
    lengths = [len(base.token_ids(t)) for t in val[0]]
    print(json.dumps({"tokens": {q: int(np.percentile(lengths, p)) for q, p in
                                 (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
                      "tokenize_ms": latency_ms(base.token_ids, val[0])}), flush=True)
    reference = np.stack([base.embed(t) for t in val[0]])
    for name, embed in embedders.items():
        vectors = np.stack([embed(t) for t in val[0]])
        row: dict[str, Any] = {"variant": name, "latency_ms": latency_ms(embed, val[0]),
                               "cosine": round(float(np.mean(np.sum(vectors * reference, axis=1))), 4)}
        if args.accuracy:
            row["accuracy"] = accuracy(embed, train, val)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
