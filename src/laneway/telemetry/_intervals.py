"""95 % confidence intervals for lane comparisons, and the sample size below which none is claimed.

Proportions use the Wilson score interval, differences of proportions Newcombe's hybrid score
interval (built from two Wilson intervals), differences of means the normal (Welch) interval, and
differences of percentiles a percentile bootstrap with a fixed seed, so the same rows always give
the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054
MIN_SAMPLES = 30  # per group: below it figures are shown as point estimates, "insufficient samples"
RESAMPLES = 1000
SEED = 20_250_601
_CELLS_PER_CHUNK = 2_000_000  # resampled values held at once by the bootstrap

Interval = tuple[float, float]


def wilson(successes: int, n: int) -> Interval | None:
    """Wilson score interval for `successes / n`; None without samples."""
    if n <= 0:
        return None
    p, z2 = successes / n, Z95 * Z95
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(successes_a: int, n_a: int, successes_b: int, n_b: int) -> Interval | None:
    """Newcombe's interval for the difference of proportions `a - b`."""
    interval_a, interval_b = wilson(successes_a, n_a), wilson(successes_b, n_b)
    if interval_a is None or interval_b is None:
        return None
    (low_a, high_a), (low_b, high_b) = interval_a, interval_b
    p_a, p_b = successes_a / n_a, successes_b / n_b
    d = p_a - p_b
    return d - math.hypot(p_a - low_a, high_b - p_b), d + math.hypot(high_a - p_a, p_b - low_b)


def mean_interval(values: Sequence[float]) -> Interval | None:
    """Normal interval for the mean of `values` (e.g. paired cost differences)."""
    n = len(values)
    if n < 2:
        return None
    data = np.asarray(values, dtype=float)
    mean, half = float(data.mean()), Z95 * float(data.std(ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def mean_difference_interval(a: Sequence[float], b: Sequence[float]) -> Interval | None:
    """Welch's normal interval for `mean(a) - mean(b)` of two independent samples."""
    if len(a) < 2 or len(b) < 2:
        return None
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = float(x.mean() - y.mean())
    half = Z95 * math.sqrt(float(x.var(ddof=1)) / len(x) + float(y.var(ddof=1)) / len(y))
    return d - half, d + half


def paired_percentile_deltas(
    candidate: Sequence[float], primary: Sequence[float], quantiles: Sequence[float],
    resamples: int = RESAMPLES, seed: int = SEED,
) -> list[Interval | None]:
    """For each quantile q, an interval for `q(candidate) - q(primary)`, resampling whole pairs."""
    n = len(candidate)
    if n < 2 or n != len(primary):
        return [None] * len(quantiles)
    x, y = np.asarray(candidate, dtype=float), np.asarray(primary, dtype=float)
    rng = np.random.default_rng(seed)
    deltas = []
    for size in _chunks(resamples, n):
        picks = rng.integers(0, n, size=(size, n))
        deltas.append(_quantiles(x[picks], quantiles) - _quantiles(y[picks], quantiles))
    return _bounds(np.concatenate(deltas, axis=1))


def unpaired_percentile_deltas(
    a: Sequence[float], b: Sequence[float], quantiles: Sequence[float],
    resamples: int = RESAMPLES, seed: int = SEED,
) -> list[Interval | None]:
    """For each quantile q, an interval for `q(a) - q(b)`, resampling each sample on its own."""
    if len(a) < 2 or len(b) < 2:
        return [None] * len(quantiles)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    deltas = []
    for size in _chunks(resamples, max(len(x), len(y))):
        resampled_x = _quantiles(x[rng.integers(0, len(x), size=(size, len(x)))], quantiles)
        resampled_y = _quantiles(y[rng.integers(0, len(y), size=(size, len(y)))], quantiles)
        deltas.append(resampled_x - resampled_y)
    return _bounds(np.concatenate(deltas, axis=1))


def _chunks(resamples: int, n: int) -> list[int]:
    per_chunk = max(1, _CELLS_PER_CHUNK // n)
    full, rest = divmod(resamples, per_chunk)
    return [per_chunk] * full + ([rest] if rest else [])


def _quantiles(samples: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Shape (len(quantiles), resamples); linear interpolation, like `percentile`."""
    result: np.ndarray = np.quantile(samples, list(quantiles), axis=1)
    return result


def _bounds(deltas: np.ndarray) -> list[Interval | None]:
    low, high = np.quantile(deltas, [0.025, 0.975], axis=1)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]
