"""Evaluation of a model on labelled rows: accuracy, out-of-scope recall, per-intent scores, confusions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidRequest
from ._model import UNKNOWN, IntentModel

TOP_CONFUSIONS = 10


def evaluate(model: IntentModel, texts: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Score `model` on rows labelled with intents or `unknown`.

    `accuracy` counts in-scope rows (an `unknown` answer to one is wrong); `oos_recall` is the share
    of `unknown` rows answered `unknown` (None when there are none). `labels_not_in_model` lists the
    rows' intents the model was not trained on.
    """
    if len(texts) != len(labels):
        raise InvalidRequest(f"got {len(texts)} texts but {len(labels)} labels; pass one label per text")
    predicted = [label for label, _ in model.classify_many(list(texts))]
    pairs = list(zip(labels, predicted, strict=True))
    in_scope = [(gold, guess) for gold, guess in pairs if gold != UNKNOWN]
    out_of_scope = [guess for gold, guess in pairs if gold == UNKNOWN]
    return {
        "rows": len(pairs),
        "accuracy": _share(sum(gold == guess for gold, guess in in_scope), len(in_scope)),
        "oos_recall": _share(sum(guess == UNKNOWN for guess in out_of_scope), len(out_of_scope)),
        "oos_precision": _oos_precision(pairs),
        "in_scope_rows": len(in_scope),
        "oos_rows": len(out_of_scope),
        "per_intent": _per_intent(pairs),
        "confusions": _confusions(pairs),
        # in-scope labels the model cannot answer: each of their rows counts as wrong
        "labels_not_in_model": sorted({gold for gold, _ in in_scope} - set(model.labels)),
    }


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _oos_precision(pairs: list[tuple[str, str]]) -> float | None:
    answered_unknown = [gold for gold, guess in pairs if guess == UNKNOWN]
    return _share(sum(gold == UNKNOWN for gold in answered_unknown), len(answered_unknown))


def _per_intent(pairs: list[tuple[str, str]]) -> dict[str, dict[str, float | int | None]]:
    support = Counter(gold for gold, _ in pairs)
    answered = Counter(guess for _, guess in pairs)
    correct = Counter(gold for gold, guess in pairs if gold == guess)
    return {
        label: {
            "precision": _share(correct[label], answered[label]),
            "recall": _share(correct[label], support[label]),
            "support": support[label],
        }
        # Intents the model answered that the data has no rows of are listed too, for their precision (0):
        # `unknown` answers are the rejections, which `accuracy` and `oos_recall` count already.
        for label in sorted(support.keys() | (answered.keys() - {UNKNOWN}))
    }


def _confusions(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The most frequent (gold, predicted) mistakes, most frequent first."""
    mistakes = Counter((gold, guess) for gold, guess in pairs if gold != guess)
    ranked = sorted(mistakes.items(), key=lambda item: (-item[1], item[0]))
    return [{"label": gold, "predicted": guess, "count": n} for (gold, guess), n in ranked[:TOP_CONFUSIONS]]
