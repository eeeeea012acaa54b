"""Accuracy and latency of the intent classifier on the validation splits of the three data sets.

    python bench/bench_intents.py                      # all data sets
    python bench/bench_intents.py --only banking77 --json
    python bench/bench_intents.py --export var/intents # also write the splits as text,label CSVs
    python bench/bench_intents.py --encoder transformer  # with the int8 MiniLM encoder stage
    python bench/bench_intents.py --encoder static       # with MiniLM token vectors distilled on train
    python bench/bench_intents.py --encoder context      # the same, and each token's vectors by neighbour
    python bench/bench_intents.py --only banking77 --model M.npz  # measure a saved model, no training

Splits (deterministic, never the held-out test sets): Banking77 train.csv 90/10 stratified;
CLINC150 `train`+`oos_train` / `val`+`oos_val`; Bitext 80/20 stratified plus CLINC off-topic
rows as `unknown` (see scripts/build_intent_model.py). Latency is measured per single message,
pinned to one CPU core with one BLAS thread; start-up is a fresh interpreter importing
`laneway.intents` and loading the saved model. With `--encoder`, the report adds the share of
messages sent to the encoder stage and the accuracy at other deferral thresholds (`frontier`),
and `latency_always_ms` is the latency when every message goes to the encoder.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "scripts")]

import build_intent_model as corpora  # noqa: E402

from laneway.intents import UNKNOWN, IntentModel, TrainingOptions, evaluate, train  # noqa: E402
from laneway.intents._encoder import ContextEncoder, SentenceEncoder, StaticEncoder  # noqa: E402

ENCODER_KINDS = {SentenceEncoder: "transformer", StaticEncoder: "static", ContextEncoder: "context"}

Split = tuple[corpora.Rows, corpora.Rows]


def banking77() -> Split:
    return corpora.holdout(corpora.banking_rows(), 0.1)


def clinc150() -> Split:
    splits = corpora.clinc_splits()
    return splits["train"], splits["val"]


SPLITS: dict[str, Callable[[], Split]] = {
    "banking77": banking77,
    "clinc150": clinc150,
    "bitext": corpora.support_validation,
}


def latency_ms(model: IntentModel, texts: Sequence[str], passes: int = 3) -> dict[str, float]:
    for text in texts[:200]:
        model.classify(text)
    samples = []
    for _ in range(passes):
        for text in texts:
            started = time.perf_counter_ns()
            model.classify(text)
            samples.append((time.perf_counter_ns() - started) / 1e6)
    samples.sort()
    return {q: samples[min(len(samples) - 1, int(p * len(samples)))] for q, p in
            (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}


def startup_s(path: Path) -> float:
    code = ("import time; t = time.perf_counter(); from laneway.intents import IntentModel; "
            f"IntentModel.load({str(path)!r}); print(time.perf_counter() - t)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def bench(name: str, workdir: Path, encoder: str | None = None, defer_below: float | None = None,
          oos_recall: float | None = None, saved: Path | None = None) -> dict[str, Any]:
    (train_texts, train_labels), (val_texts, val_labels) = SPLITS[name]()
    options = corpora.OPTIONS if name == "bitext" else TrainingOptions()
    options = dataclasses.replace(options, encoder=encoder, defer_below=defer_below, oos_recall=oos_recall)
    started = time.perf_counter()
    model = IntentModel.load(saved) if saved else train(train_texts, train_labels, options)
    trained = time.perf_counter() - started
    report = evaluate(model, val_texts, val_labels)
    accepting = dataclasses.replace(model, threshold=0.0)
    path = saved or workdir / f"{name}.npz"
    if not saved:
        model.save(path)
    kind = "lexical" if model.encoder is None else ENCODER_KINDS[type(model.encoder.encoder)]
    result = {
        "dataset": name, "kind": kind,
        "train_rows": len(train_texts), "val_rows": len(val_texts),
        "accuracy": report["accuracy"], "oos_recall": report["oos_recall"], "threshold": model.threshold,
        "accuracy_no_rejection": evaluate(accepting, val_texts, val_labels)["accuracy"],
        "train_s": round(trained, 1), "latency_ms": latency_ms(model, val_texts),
        "startup_s": startup_s(path), "model_mb": round(path.stat().st_size / 1e6, 2),
        "confusions": report["confusions"][:5],
    }
    if UNKNOWN in val_labels:
        result["threshold_tradeoff"] = threshold_tradeoff(model, val_texts, val_labels)
    if model.encoder is not None:
        result["deferred"] = sum(map(model.defers, val_texts)) / len(val_texts)
        result["frontier"] = frontier(model, val_texts, val_labels)
        always = dataclasses.replace(model, encoder=dataclasses.replace(model.encoder, defer_below=2.0))
        result["latency_always_ms"] = latency_ms(always, val_texts)
    return result


def threshold_tradeoff(model: IntentModel, texts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float]]:
    """In-scope accuracy and out-of-scope recall of the same model at other rejection thresholds."""
    probabilities = [model.probabilities(text) for text in texts]
    points = []
    for threshold in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        variant = dataclasses.replace(model, threshold=threshold)
        answers = [variant.decide(probs)[0] for probs in probabilities]
        in_scope = [answer == gold for answer, gold in zip(answers, labels, strict=True) if gold != UNKNOWN]
        oos = [answer == UNKNOWN for answer, gold in zip(answers, labels, strict=True) if gold == UNKNOWN]
        points.append({"threshold": threshold, "accuracy": round(sum(in_scope) / len(in_scope), 4),
                       "oos_recall": round(sum(oos) / len(oos), 4)})
    return points


def frontier(model: IntentModel, texts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float | None]]:
    """Accuracy, out-of-scope recall and deferred share at other deferral thresholds (same weights)."""
    assert model.encoder is not None
    points: list[dict[str, float | None]] = []
    for defer_below in (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 2.0):
        variant = dataclasses.replace(model, encoder=dataclasses.replace(model.encoder, defer_below=defer_below))
        report = evaluate(variant, texts, labels)
        points.append({"defer_below": defer_below, "accuracy": report["accuracy"],
                       "oos_recall": report["oos_recall"],
                       "deferred": sum(map(variant.defers, texts)) / len(texts)})
    return points


def export(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, split in SPLITS.items():
        for part, (texts, labels) in zip(("train", "val"), split(), strict=True):
            with (directory / f"{name}-{part}.csv").open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["text", "label"])
                writer.writerows(zip(texts, labels, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=sorted(SPLITS), action="append", help="data set(s) to run")
    parser.add_argument("--json", action="store_true", help="print one JSON object per data set")
    parser.add_argument("--export", type=Path, metavar="DIR",
                        help="write the splits as text,label CSVs and stop")
    parser.add_argument("--encoder", choices=("transformer", "static", "context"),
                        help="train models with this MiniLM encoder stage")
    parser.add_argument("--defer-below", type=float, metavar="P",
                        help="with --encoder: lexical top probability under which the encoder runs "
                             "(default: the training default of the encoder)")
    parser.add_argument("--oos-recall", type=float, metavar="R",
                        help="tune rejection to reach this out-of-scope recall on the training holdout")
    parser.add_argument("--model", type=Path, metavar="MODEL.npz",
                        help="measure this saved model (trained on the --only data set's train split), no training")
    args = parser.parse_args(argv)
    if args.model and len(args.only or []) != 1:
        parser.error("--model needs exactly one --only data set")
    if args.export:
        export(args.export)
        return 0
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.only or list(SPLITS):
            result = bench(name, Path(workdir), args.encoder, args.defer_below, args.oos_recall, args.model)
            print(json.dumps(result) if args.json else _line(result), flush=True)
    return 0


def _line(r: dict[str, Any]) -> str:
    oos = "n/a" if r["oos_recall"] is None else f"{100 * r['oos_recall']:.1f}%"
    lat = r["latency_ms"]
    return (f"{r['dataset']:<10} accuracy {100 * r['accuracy']:.2f}% "
            f"(no rejection {100 * r['accuracy_no_rejection']:.2f}%)  oos_recall {oos}  "
            f"p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms  max {lat['max']:.2f} ms  "
            f"start-up {r['startup_s']:.2f} s  model {r['model_mb']} MB  train {r['train_s']} s"
            + _encoder_line(r))


def _encoder_line(r: dict[str, Any]) -> str:
    if "deferred" not in r:
        return ""
    always = r["latency_always_ms"]
    points = "; ".join(
        f"<{p['defer_below']:g}: {100 * p['accuracy']:.2f}%"
        + ("" if p["oos_recall"] is None else f"/{100 * p['oos_recall']:.0f}%")
        + f" ({100 * p['deferred']:.0f}% deferred)"
        for p in r["frontier"]
    )
    return (f"\n{'':<10} {r['kind']}: deferred {100 * r['deferred']:.1f}%  always-encoder p50 {always['p50']:.3f} ms "
            f"p99 {always['p99']:.3f} ms  frontier {points}")


if __name__ == "__main__":
    raise SystemExit(main())
