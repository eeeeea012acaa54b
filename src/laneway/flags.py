"""Argparse types for the numeric flags of Laneway's commands: a bad value is the flag's one-line
error (`argument --top-k: must be at least 1, got 0`), never a traceback."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def bounded(low: float, high: float | None = None, *, above: bool = False,
            whole: bool = False) -> Callable[[str], float]:
    """A number from `low` (excluded when `above`) up to `high` (if any); a whole number when `whole`."""

    def parse(text: str) -> float:
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if whole else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):  # `nan` passes every comparison below
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        if value < low or (above and value == low) or (high is not None and value > high):
            bounds = (f"from {low:g} to {high:g}" if high is not None else
                      f"above {low:g}" if above else f"at least {low:g}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


SEED_MAX = 2**32 - 1  # the largest PYTHONHASHSEED, which `demo` gives each simulated fleet it starts


def seed(text: str) -> int:
    """A `--seed`: a whole number from 0 to `SEED_MAX`, as every seeded command can take it."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {SEED_MAX}, got {text}")
    return value
