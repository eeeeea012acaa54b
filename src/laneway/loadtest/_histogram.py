"""A log-linear (HDR-style) latency histogram with a stated relative error.

Values are recorded as whole nanoseconds. Values under 2,048 ns get a bucket each; above that,
every power-of-two range is split into 1,024 equal buckets, so a bucket is never wider than
1/1,024 of its lower bound. A quantile is reported as its bucket's midpoint, clamped to the
recorded min and max: every reported value is within 1/2,048 (0.049 %) of the exact one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

_SUB_BITS = 11
_HALF = 1 << (_SUB_BITS - 1)  # 1,024 buckets per power of two
RELATIVE_ERROR = 1 / (1 << _SUB_BITS)


def bucket_of(value: int) -> int:
    shift = value.bit_length() - _SUB_BITS
    if shift <= 0:
        return value
    return _HALF * shift + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) of the values that land in bucket `index`."""
    if index < 2 * _HALF:
        return index, index + 1
    shift = index // _HALF - 1
    low = (index - _HALF * shift) << shift
    return low, low + (1 << shift)


class LatencyHistogram:
    """Durations in seconds in, quantiles in seconds out."""

    __slots__ = ("_counts", "count", "max_ns", "min_ns", "total_ns")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total_ns = 0
        self.min_ns = 0
        self.max_ns = 0

    def record(self, seconds: float) -> None:
        value = max(0, int(seconds * 1e9))
        index = bucket_of(value)
        self._counts[index] = self._counts.get(index, 0) + 1
        if self.count == 0 or value < self.min_ns:
            self.min_ns = value
        self.max_ns = max(self.max_ns, value)
        self.count += 1
        self.total_ns += value

    def record_all(self, values: Iterable[float]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: LatencyHistogram) -> None:
        for index, n in other._counts.items():
            self._counts[index] = self._counts.get(index, 0) + n
        if other.count and (self.count == 0 or other.min_ns < self.min_ns):
            self.min_ns = other.min_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        self.count += other.count
        self.total_ns += other.total_ns

    def quantile(self, q: float) -> float:
        """The nearest-rank `q` quantile (0 < q <= 1) in seconds; 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                middle = (low + high - 1) / 2
                return min(max(middle, self.min_ns), self.max_ns) / 1e9
        return self.max_ns / 1e9

    def percentiles(self, qs: Iterable[float]) -> dict[float, float]:
        return {q: self.quantile(q) for q in qs}

    @property
    def mean(self) -> float:
        return self.total_ns / self.count / 1e9 if self.count else 0.0

    @property
    def max(self) -> float:
        return self.max_ns / 1e9

    @property
    def min(self) -> float:
        return self.min_ns / 1e9

    def distribution(self) -> Iterator[tuple[float, float]]:
        """(cumulative fraction, value in seconds) at each occupied bucket, in value order."""
        seen = 0
        for index in sorted(self._counts):
            seen += self._counts[index]
            low, high = bucket_bounds(index)
            yield seen / self.count, min(max((low + high - 1) / 2, self.min_ns), self.max_ns) / 1e9
