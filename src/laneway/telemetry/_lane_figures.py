"""How lane comparison figures are rounded, bucketed and worded, shared by the shadow, canary and
cascade comparisons so their JSON and their sentences read alike."""

from __future__ import annotations

from laneway.telemetry._intervals import MIN_SAMPLES, Interval

# Conversation lengths (user + assistant messages) grouped as the routing examples split them.
LENGTH_BUCKETS = ((2, "1-2"), (8, "3-8"))
LONGEST_BUCKET = "9+"


def bucket_of_length(convo_length: int | None) -> str:
    if convo_length is None:
        return "(unknown)"
    for upper, name in LENGTH_BUCKETS:
        if convo_length <= upper:
            return name
    return LONGEST_BUCKET


def insufficient(n: int) -> str:
    return f"insufficient samples (n={n} < {MIN_SAMPLES})"


def rate(part: float, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def relative(delta: float | None, baseline: float | None) -> float | None:
    """`delta` as a percentage of `baseline`."""
    if delta is None or not baseline:
        return None
    return round(delta / baseline * 100, 1)


def ci(interval: Interval | None, digits: int) -> list[float] | None:
    return None if interval is None else [round(interval[0], digits), round(interval[1], digits)]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def money(value: float) -> float:
    return round(value, 8)


def pct(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f} %" if signed else f"{value:.1f} %"
