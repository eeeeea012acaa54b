"""Intent classification for chat and email triage: a fast lexical model trained on labelled rows,
optionally with a second stage over an int8 MiniLM sentence embedding for the uncertain messages.

`classify(text) -> (intent, confidence)` needs numpy only (plus onnxruntime and tokenizers for a
model with the encoder stage); training also needs scikit-learn (and onnx for the encoder stage).
"""

from __future__ import annotations

from ._cli import add_commands
from ._dataset import LabelledRows, read_rows
from ._default import default_model_path, load_default
from ._encoder import SentenceEncoder
from ._evaluation import evaluate
from ._model import UNKNOWN, EncoderStage, IntentModel
from ._training import TrainingOptions, train

__all__ = [
    "UNKNOWN",
    "EncoderStage",
    "IntentModel",
    "LabelledRows",
    "SentenceEncoder",
    "TrainingOptions",
    "add_commands",
    "default_model_path",
    "evaluate",
    "load_default",
    "read_rows",
    "train",
]
