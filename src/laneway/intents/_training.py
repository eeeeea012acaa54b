"""Training: fit the lexical features and a logistic regression, then tune the rejection threshold.

The threshold is tuned on a stratified slice held out from the training data; the final model is
then refitted on every row. scikit-learn is needed here only, never to classify.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidRequest
from ._features import TextFeatures, fit_features
from ._model import UNKNOWN, IntentModel

SPARED_SHARE = 0.01


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """`regularization` is the inverse L2 strength C; `holdout` the share kept for the threshold;
    `balanced` weighs every label's rows so that each label counts the same in the loss."""

    regularization: float = 10.0
    balanced: bool = False
    holdout: float = 0.2
    seed: int = 0
    max_iter: int = 1000


def train(texts: Sequence[str], labels: Sequence[str], options: TrainingOptions | None = None) -> IntentModel:
    """Train a model on `texts` labelled with `labels`; rows labelled `unknown` teach rejection."""
    opts = options or TrainingOptions()
    _check_training_data(texts, labels)
    tune, held = stratified_split(labels, opts.holdout, opts.seed)
    probe = fit(_pick(texts, tune), _pick(labels, tune), opts, threshold=0.0)
    probs = np.stack([probe.probabilities(texts[i]) for i in held])
    threshold = tune_threshold(probe, probs, _pick(labels, held))
    return fit(texts, labels, opts, threshold)


def fit(texts: Sequence[str], labels: Sequence[str], opts: TrainingOptions, threshold: float) -> IntentModel:
    """One fit on all given rows, with a fixed threshold."""
    linear_model = _training_library("sklearn.linear_model")
    features = fit_features(texts)
    classes = tuple(sorted(set(labels)))
    classifier = linear_model.LogisticRegression(
        C=opts.regularization, max_iter=opts.max_iter, class_weight="balanced" if opts.balanced else None
    )
    classifier.fit(feature_matrix(features, texts), [classes.index(label) for label in labels])
    # Weights are stored as float16; rounding them here keeps a saved model's answers identical.
    weights = classifier.coef_.T.astype(np.float16).astype(np.float32)
    bias = classifier.intercept_.astype(np.float32)
    if len(classes) == 2:  # binary LogisticRegression has one column: expand to a two-way softmax
        weights = np.hstack([-weights / 2, weights / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2], np.float32)
    return IntentModel(classes, features, weights, bias, threshold)


def feature_matrix(features: TextFeatures, texts: Sequence[str]) -> Any:
    """The rows' features as one scipy CSR matrix, the input of the linear model."""
    sparse = _training_library("scipy.sparse")
    indptr, indices, data = [0], [], [np.zeros(0, np.float32)]
    for text in texts:
        cols, vals = features.vector(text)
        indices.extend(cols)
        data.append(vals)
        indptr.append(len(indices))
    shape = (len(texts), features.size)
    return sparse.csr_matrix((np.concatenate(data), indices, indptr), shape=shape, dtype=np.float32)


def tune_threshold(model: IntentModel, probs: npt.NDArray[np.float32], labels: Sequence[str]) -> float:
    """With out-of-scope rows, the threshold maximizing mean(in-scope accuracy, out-of-scope recall);
    without, the confidence under which only `SPARED_SHARE` of the correct answers fall."""
    gold = np.array(labels)
    confidences = np.array([probs[i].max() for i in range(len(gold))])
    predicted = np.array([model.classes[int(p.argmax())] for p in probs])
    if UNKNOWN in set(labels):
        return _balanced_threshold(gold, predicted, confidences)
    return _spared_threshold(gold == predicted, confidences)


def _balanced_threshold(gold: npt.NDArray[np.str_], predicted: npt.NDArray[np.str_],
                        confidences: npt.NDArray[np.float64]) -> float:
    in_scope = gold != UNKNOWN
    best, best_score = 0.0, -1.0
    for candidate in np.unique(np.concatenate([[0.0], confidences])):
        answer = np.where(confidences < candidate, UNKNOWN, predicted)
        accuracy = float(np.mean(answer[in_scope] == gold[in_scope])) if in_scope.any() else 0.0
        recall = float(np.mean(answer[~in_scope] == UNKNOWN))
        if (score := (accuracy + recall) / 2) > best_score:
            best, best_score = float(candidate), score
    return best


def _spared_threshold(correct: npt.NDArray[np.bool_], confidences: npt.NDArray[np.float64]) -> float:
    # Without examples of out-of-scope messages, reject only what looks least like a right answer:
    # the threshold may cost at most SPARED_SHARE of the answers that were correct.
    right = confidences[correct]
    return float(np.quantile(right, SPARED_SHARE)) if len(right) else 0.0


def stratified_split(labels: Sequence[str], share: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic split of row indices: `share` of every label (at least one row when it has two)."""
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    held: list[int] = []
    for label in sorted(set(labels)):
        rows = [i for i, value in enumerate(labels) if value == label]
        rng.shuffle(rows)
        n_held = max(1, round(share * len(rows))) if len(rows) > 1 else 0
        held.extend(rows[:n_held])
        keep.extend(rows[n_held:])
    return sorted(keep), sorted(held)


def _pick(values: Sequence[str], rows: Sequence[int]) -> list[str]:
    return [values[i] for i in rows]


def _check_training_data(texts: Sequence[str], labels: Sequence[str]) -> None:
    if len(texts) != len(labels):
        raise InvalidRequest(f"got {len(texts)} texts but {len(labels)} labels; pass one label per text")
    intents = {label for label in labels if label != UNKNOWN}
    if len(intents) < 2:
        found = sorted(intents)
        raise InvalidRequest(f"training needs at least two intents besides `{UNKNOWN}`, got {found}")


def _training_library(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:  # pragma: no cover - depends on the environment
        hint = "`pip install scikit-learn scipy`"
        raise InvalidRequest(f"training an intent model needs `{name}`: {hint}") from error
