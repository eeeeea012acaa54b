"""Accuracy and latency of the intent classifier on the validation splits of the three data sets.

    python bench/bench_intents.py                      # all data sets
    python bench/bench_intents.py --only banking77 --json
    python bench/bench_intents.py --export var/intents # also write the splits as text,label CSVs

Splits (deterministic, never the held-out test sets): Banking77 train.csv 90/10 stratified;
CLINC150 `train`+`oos_train` / `val`+`oos_val`; Bitext 80/20 stratified plus CLINC off-topic
rows as `unknown` (see scripts/build_intent_model.py). Latency is measured per single message,
pinned to one CPU core with one BLAS thread; start-up is a fresh interpreter importing
`laneway.intents` and loading the saved model.
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

from laneway.intents import IntentModel, evaluate, train  # noqa: E402

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


def bench(name: str, workdir: Path) -> dict[str, Any]:
    (train_texts, train_labels), (val_texts, val_labels) = SPLITS[name]()
    started = time.perf_counter()
    model = train(train_texts, train_labels, corpora.OPTIONS if name == "bitext" else None)
    trained = time.perf_counter() - started
    report = evaluate(model, val_texts, val_labels)
    accepting = dataclasses.replace(model, threshold=0.0)
    path = workdir / f"{name}.npz"
    model.save(path)
    return {
        "dataset": name, "train_rows": len(train_texts), "val_rows": len(val_texts),
        "accuracy": report["accuracy"], "oos_recall": report["oos_recall"], "threshold": model.threshold,
        "accuracy_no_rejection": evaluate(accepting, val_texts, val_labels)["accuracy"],
        "train_s": round(trained, 1), "latency_ms": latency_ms(model, val_texts),
        "startup_s": startup_s(path), "model_mb": round(path.stat().st_size / 1e6, 2),
        "confusions": report["confusions"][:5],
    }


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
    args = parser.parse_args(argv)
    if args.export:
        export(args.export)
        return 0
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.only or list(SPLITS):
            result = bench(name, Path(workdir))
            print(json.dumps(result) if args.json else _line(result), flush=True)
    return 0


def _line(r: dict[str, Any]) -> str:
    oos = "n/a" if r["oos_recall"] is None else f"{100 * r['oos_recall']:.1f}%"
    lat = r["latency_ms"]
    return (f"{r['dataset']:<10} accuracy {100 * r['accuracy']:.2f}% "
            f"(no rejection {100 * r['accuracy_no_rejection']:.2f}%)  oos_recall {oos}  "
            f"p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms  max {lat['max']:.2f} ms  "
            f"start-up {r['startup_s']:.2f} s  model {r['model_mb']} MB  train {r['train_s']} s")


if __name__ == "__main__":
    raise SystemExit(main())
