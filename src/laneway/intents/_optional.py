"""Optional dependencies of the intent classifier, imported only when a feature needs them."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import InvalidRequest


def optional_library(name: str, needed_for: str, install: str) -> Any:
    """The module `name`, or an error saying what needs it and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise InvalidRequest(f"{needed_for} needs `{name}`: `pip install {install}`") from error
