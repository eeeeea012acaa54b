"""Intent classification for chat and email triage: a fast lexical model trained on labelled rows.

`classify(text) -> (intent, confidence)` needs numpy only; training also needs scikit-learn.
"""

from __future__ import annotations

from ._cli import add_commands
from ._dataset import LabelledRows, read_rows
from ._default import default_model_path, load_default
from ._evaluation import evaluate
from ._model import UNKNOWN, IntentModel
from ._training import TrainingOptions, train

__all__ = [
    "UNKNOWN",
    "IntentModel",
    "LabelledRows",
    "TrainingOptions",
    "add_commands",
    "default_model_path",
    "evaluate",
    "load_default",
    "read_rows",
    "train",
]
