"""A trained intent model: lexical features, one linear layer, a softmax and a rejection threshold.

Inference uses numpy only. A model is one `.npz` file holding its vocabulary, IDF, weights
(float16) and a JSON header; `IntentModel.load` rebuilds it without any training library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, ConfigIssue
from ._features import TextFeatures, features_from_grams

UNKNOWN = "unknown"
FORMAT = "laneway-intents/1"


@dataclass(frozen=True, slots=True)
class IntentModel:
    """Maps a message to `(intent, confidence)`; answers `unknown` when no intent is confident.

    `classes` are the softmax outputs (they include `unknown` when the training data had
    out-of-scope rows); `labels` are the in-scope intents the model can return.
    """

    classes: tuple[str, ...]
    features: TextFeatures
    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    threshold: float
    labels: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(c for c in self.classes if c != UNKNOWN))

    def probabilities(self, text: str) -> npt.NDArray[np.float32]:
        """The softmax over `classes` for one message."""
        cols, vals = self.features.vector(text)
        scores = vals @ self.weights[cols] + self.bias
        scores = np.exp(scores - scores.max())
        return scores / scores.sum()  # type: ignore[no-any-return]

    def classify(self, text: str) -> tuple[str, float]:
        """The most likely intent and its probability, or `unknown` with the probability of no intent."""
        probs = self.probabilities(text)
        return self.decide(probs)

    def decide(self, probs: npt.NDArray[np.float32]) -> tuple[str, float]:
        best = int(probs.argmax())
        label, confidence = self.classes[best], float(probs[best])
        if label == UNKNOWN:
            return UNKNOWN, confidence
        if confidence < self.threshold:
            return UNKNOWN, 1.0 - confidence
        return label, confidence

    def classify_many(self, texts: list[str]) -> list[tuple[str, float]]:
        return [self.classify(text) for text in texts]

    def save(self, path: str | Path) -> None:
        """Write the model as one compressed `.npz` file (the parent folder is created)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT,
            "classes": list(self.classes),
            "threshold": self.threshold,
            "word_ngrams": len(self.features.words.vocabulary),
        }
        grams = "\n".join(self.features.grams()).encode("utf-8")
        idf = np.concatenate([self.features.words.idf, self.features.chars.idf])
        with target.open("wb") as out:
            np.savez_compressed(
                out,
                header=np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8),
                grams=np.frombuffer(grams, np.uint8),
                idf=idf.astype(np.float32),
                weights=self.weights.astype(np.float16),
                bias=self.bias.astype(np.float32),
            )

    @classmethod
    def load(cls, path: str | Path) -> IntentModel:
        """Read a model written by `save`; a missing or foreign file is a `ConfigError`."""
        source = Path(path)
        try:
            with np.load(source, allow_pickle=False) as archive:
                header = json.loads(archive["header"].tobytes().decode("utf-8"))
                grams = archive["grams"].tobytes().decode("utf-8").split("\n")
                idf, weights, bias = archive["idf"], archive["weights"], archive["bias"]
        except (OSError, KeyError, ValueError) as error:
            raise _artifact_error(source, f"cannot read an intent model: {error}") from error
        if header.get("format") != FORMAT:
            raise _artifact_error(source, f"format is `{header.get('format')}`, expected `{FORMAT}`")
        return cls(
            classes=tuple(header["classes"]),
            features=features_from_grams(grams, idf, int(header["word_ngrams"])),
            weights=weights.astype(np.float32),
            bias=bias,
            threshold=float(header["threshold"]),
        )


def _artifact_error(path: Path, message: str) -> ConfigError:
    fix = "train one with `laneway intents train DATA.csv --out MODEL`"
    return ConfigError([ConfigIssue(str(path), f"{message}; {fix}")])
