"""Open-loop arrival schedules: when each request is due, independent of when answers come back."""

from __future__ import annotations

import random
from collections.abc import Iterator


def poisson_arrivals(rate: float, seed: int | None = None) -> Iterator[float]:
    """Offsets in seconds from the start of a Poisson process of `rate` arrivals per second.

    Gaps are independent exponential draws with mean 1/rate, so bursts and lulls happen as they
    do with many independent clients, and a server slower than the offered rate builds a queue.
    """
    if rate <= 0:
        raise ValueError(f"the arrival rate must be positive, got {rate!r}")
    draw = random.Random(seed)
    at = 0.0
    while True:
        at += draw.expovariate(rate)
        yield at
