"""A trained intent model: lexical features, one linear layer, a softmax and a rejection threshold.

A lexical model classifies with numpy only. A model with an `EncoderStage` also has a second
linear layer over the lexical features and a sentence embedding; it is used for the messages the
lexical layer is not sure of. A model is one `.npz` file holding its vocabulary, IDF, weights
(float16), a JSON header and, for the encoder kind, the ONNX graph and tokenizer;
`IntentModel.load` rebuilds it without any training library.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, ConfigIssue
from ._encoder import ContextEncoder, SentenceEncoder, StaticEncoder
from ._features import TextFeatures, features_from_grams

UNKNOWN = "unknown"
FORMAT = "laneway-intents/1"
ENCODER_FORMAT = "laneway-intents/2"


@dataclass(frozen=True, slots=True)
class EncoderStage:
    """The second stage: a linear layer over the lexical features and the message's embedding
    (from the int8 transformer, `SentenceEncoder`, or from its distilled token vectors, `StaticEncoder`).

    It runs only when the lexical layer's top probability is under `defer_below` (so 0 never runs
    it and anything above 1 always does). `lexical_weights` has one row per lexical feature,
    `embedding_weights` one per embedding dimension.
    """

    encoder: SentenceEncoder | StaticEncoder | ContextEncoder
    lexical_weights: npt.NDArray[np.float32]
    embedding_weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    defer_below: float

    def probabilities(self, cols: list[int], vals: npt.NDArray[np.float32], text: str) -> npt.NDArray[np.float32]:
        scores = vals @ self.lexical_weights[cols] + self.encoder.embed(text) @ self.embedding_weights + self.bias
        return _softmax(scores)


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
    encoder: EncoderStage | None = None
    labels: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(c for c in self.classes if c != UNKNOWN))

    def probabilities(self, text: str) -> npt.NDArray[np.float32]:
        """The softmax over `classes` for one message (the encoder stage's when it is consulted)."""
        cols, vals = self.features.vector(text)
        if self.encoder is not None and self.encoder.defer_below > 1:  # the encoder stage decides everything
            return self.encoder.probabilities(cols, vals, text)
        probs = self._lexical(cols, vals)
        if self.encoder is None or probs.max() >= self.encoder.defer_below:
            return probs
        return self.encoder.probabilities(cols, vals, text)

    def defers(self, text: str) -> bool:
        """Whether `classify(text)` runs the encoder stage."""
        if self.encoder is None:
            return False
        cols, vals = self.features.vector(text)
        return bool(self._lexical(cols, vals).max() < self.encoder.defer_below)

    def _lexical(self, cols: list[int], vals: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return _softmax(vals @ self.weights[cols] + self.bias)

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
        header: dict[str, Any] = {
            "format": FORMAT,
            "classes": list(self.classes),
            "threshold": self.threshold,
            "word_ngrams": len(self.features.words.vocabulary),
        }
        grams = "\n".join(self.features.grams()).encode("utf-8")
        idf = np.concatenate([self.features.words.idf, self.features.chars.idf])
        arrays: dict[str, Any] = {
            "grams": np.frombuffer(grams, np.uint8),
            "idf": idf.astype(np.float32),
            "weights": self.weights.astype(np.float16),
            "bias": self.bias.astype(np.float32),
        }
        if self.encoder is not None:
            header["format"] = ENCODER_FORMAT
            header["defer_below"] = self.encoder.defer_below
            encoder = self.encoder.encoder
            if isinstance(encoder, StaticEncoder):
                header["encoder"] = "static"
                arrays["encoder_table"] = encoder.table.astype(np.float16)
            elif isinstance(encoder, ContextEncoder):
                header["encoder"] = "context"
                arrays |= {"encoder_table": encoder.table.astype(np.float16),
                           "encoder_left_keys": encoder.left_keys, "encoder_left": encoder.left.astype(np.float16),
                           "encoder_right_keys": encoder.right_keys,
                           "encoder_right": encoder.right.astype(np.float16)}
            else:
                header["encoder"] = "transformer"
                arrays["encoder_graph"] = np.frombuffer(encoder.graph, np.uint8)
            arrays |= {
                "encoder_tokenizer": np.frombuffer(encoder.tokenizer.encode("utf-8"), np.uint8),
                "encoder_lexical_weights": self.encoder.lexical_weights.astype(np.float16),
                "encoder_embedding_weights": self.encoder.embedding_weights.astype(np.float16),
                "encoder_bias": self.encoder.bias.astype(np.float32),
            }
        with target.open("wb") as out:
            np.savez_compressed(out, header=np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> IntentModel:
        """Read a model written by `save`; a missing or foreign file is a `ConfigError`."""
        source = Path(path)
        try:
            with np.load(source, allow_pickle=False) as archive:
                header = json.loads(archive["header"].tobytes().decode("utf-8"))
                if header.get("format") not in (FORMAT, ENCODER_FORMAT):
                    expected = f"`{FORMAT}` or `{ENCODER_FORMAT}`"
                    raise _artifact_error(source, f"format is `{header.get('format')}`, expected {expected}")
                grams = archive["grams"].tobytes().decode("utf-8").split("\n")
                idf, weights, bias = archive["idf"], archive["weights"], archive["bias"]
                stage = _encoder_stage(archive, header) if header["format"] == ENCODER_FORMAT else None
        except OSError as error:
            raise _artifact_error(source, f"cannot read an intent model: {error.strerror or error}") from None
        except (KeyError, ValueError, EOFError, zipfile.BadZipFile):  # EOFError: an empty file
            raise _artifact_error(source, "not a Laneway intent model (an .npz archive written by "
                                          "`laneway intents train`)") from None
        return cls(
            classes=tuple(header["classes"]),
            features=features_from_grams(grams, idf, int(header["word_ngrams"])),
            weights=weights.astype(np.float32),
            bias=bias,
            threshold=float(header["threshold"]),
            encoder=stage,
        )


def model_classes(path: str | Path) -> tuple[str, ...]:
    """The classes a saved model answers with, read from its header alone (no weights are loaded)."""
    source = Path(path)
    try:
        with np.load(source, allow_pickle=False) as archive:
            return tuple(json.loads(archive["header"].tobytes().decode("utf-8"))["classes"])
    except OSError as error:
        raise _artifact_error(source, f"cannot read an intent model: {error.strerror or error}") from None
    except (KeyError, ValueError, EOFError, zipfile.BadZipFile):  # EOFError: an empty file
        raise _artifact_error(source, "not a Laneway intent model (an .npz archive written by "
                                      "`laneway intents train`)") from None


def _encoder_stage(archive: Any, header: dict[str, Any]) -> EncoderStage:
    tokenizer = archive["encoder_tokenizer"].tobytes().decode("utf-8")
    encoder: SentenceEncoder | StaticEncoder | ContextEncoder
    if header.get("encoder") == "static":
        # Vector tables stay float16 in memory, half the size; the rows a message reads are widened.
        encoder = StaticEncoder(archive["encoder_table"], tokenizer)
    elif header.get("encoder") == "context":
        encoder = ContextEncoder(archive["encoder_table"], archive["encoder_left_keys"], archive["encoder_left"],
                                 archive["encoder_right_keys"], archive["encoder_right"], tokenizer)
    else:
        encoder = SentenceEncoder(archive["encoder_graph"].tobytes(), tokenizer)
    return EncoderStage(
        encoder=encoder,
        lexical_weights=archive["encoder_lexical_weights"].astype(np.float32),
        embedding_weights=archive["encoder_embedding_weights"].astype(np.float32),
        bias=archive["encoder_bias"],
        defer_below=float(header["defer_below"]),
    )


def as_stored(values: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """`values` rounded to the float16 a saved model holds, back in float32: a model built from them
    answers exactly as it will once saved and loaded."""
    return values.astype(np.float16).astype(np.float32)


def _softmax(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()  # type: ignore[no-any-return]


def _artifact_error(path: Path, message: str) -> ConfigError:
    fix = "train one with `laneway intents train DATA.csv --out MODEL`"
    return ConfigError([ConfigIssue(str(path), f"{message}; {fix}")], subject="intent model")
