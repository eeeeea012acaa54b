"""The shipped customer-support model, trained on the Bitext data by `scripts/build_intent_model.py`."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, ConfigIssue
from ._model import IntentModel

DEFAULT_MODEL = "customer-support.npz"


def default_model_path() -> Path:
    return Path(__file__).with_name("models") / DEFAULT_MODEL


def load_default() -> IntentModel:
    """Load the shipped model; a checkout without it says how to build it."""
    path = default_model_path()
    if not path.is_file():
        fix = "build it with `python scripts/build_intent_model.py`"
        raise ConfigError([ConfigIssue(str(path), f"the default intent model is missing; {fix}")],
                          subject="intent model")
    return IntentModel.load(path)
