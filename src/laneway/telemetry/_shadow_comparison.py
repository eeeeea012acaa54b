"""Shadow lanes compared with their primaries: pure functions over shadow exchange rows.

Each shadow row carries its primary's latency, TTFT and cost and the answers' comparison in its
signals, so one row is one pair. Figures are given per candidate model, per route, and per signal
bucket (intent, priority, conversation length), each with 95 % intervals and a sample-size verdict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from laneway.exchange import OK
from laneway.telemetry._intervals import (
    MIN_SAMPLES,
    RESAMPLES,
    SEED,
    mean_interval,
    paired_percentile_deltas,
    wilson,
)
from laneway.telemetry._lane_figures import bucket_of_length, ci, insufficient, money, ms, pct, rate, relative
from laneway.telemetry._records import SHADOW_LANE, ExchangeRow
from laneway.telemetry._summary import NO_ROUTE, percentile

SIMILAR = 0.5  # a pair agrees, when its answers are not labels, at this text similarity or above


class ShadowPair(NamedTuple):
    """One candidate answer and the primary answer it shadowed."""

    candidate: str
    primary_model: str
    route: str
    ok: bool
    latency_ms: float
    primary_latency_ms: float
    ttft_ms: float | None
    primary_ttft_ms: float | None
    cost_usd: float
    primary_cost_usd: float
    exact: bool
    similarity: float
    label_agreement: bool | None
    intent: str | None = None
    priority: str | None = None
    convo_length: int | None = None
    simulated: bool = False

    @property
    def agrees(self) -> bool:
        return self.label_agreement if self.label_agreement is not None else self.similarity >= SIMILAR


BUCKETS: dict[str, Callable[[ShadowPair], str]] = {
    "intent": lambda p: p.intent or "(unknown)",
    "priority": lambda p: p.priority or "(unknown)",
    "convo_length": lambda p: bucket_of_length(p.convo_length),
}


def shadow_pairs(rows: Iterable[ExchangeRow]) -> list[ShadowPair]:
    """The pairs among `rows`: shadow rows whose signals name their primary."""
    return [pair for row in rows if row.lane == SHADOW_LANE and (pair := pair_of(row)) is not None]


def pair_of(row: ExchangeRow) -> ShadowPair | None:
    s = row.signals
    if s is None or "shadow_of" not in s or row.model is None:
        return None
    label = s.get("label_agreement")
    return ShadowPair(
        row.model, str(s.get("primary_model")), row.route or NO_ROUTE, row.outcome == OK,
        row.latency_ms, float(s.get("primary_latency_ms") or 0.0),
        row.ttft_ms, _float(s.get("primary_ttft_ms")),
        row.cost_usd, float(s.get("primary_cost_usd") or 0.0),
        s.get("exact") is True, float(s.get("similarity") or 0.0),
        None if label is None else bool(label), _text(s.get("intent")), _text(s.get("priority")),
        _int(s.get("convo_length")), row.simulated,
    )


def shadow_comparison(
    rows: Iterable[ExchangeRow], dropped: Mapping[str, int] | None = None, *,
    resamples: int = RESAMPLES, seed: int = SEED,
) -> dict[str, Any]:
    """Per candidate: figures overall, per route and per signal bucket, and a one-sentence verdict.

    `dropped` (jobs dropped per candidate) is None when unknown, e.g. over the exchange log."""
    pairs = shadow_pairs(rows)
    known = dropped is not None
    dropped = dropped or {}
    by_candidate: dict[str, list[ShadowPair]] = {}
    for pair in pairs:
        by_candidate.setdefault(pair.candidate, []).append(pair)
    candidates = {}
    for name in sorted(set(by_candidate) | {m for m, n in dropped.items() if n}):
        drops = dropped.get(name, 0) if known else None
        candidates[name] = _candidate(name, by_candidate.get(name, []), drops, resamples, seed)
    return {
        "simulated": any(p.simulated for p in pairs),
        "min_samples": MIN_SAMPLES,
        "methods": METHODS,
        "candidates": candidates,
        "summary": [figures["verdict"] for figures in candidates.values()],
    }


METHODS = {
    "agreement": f"label agreement when both answers are labels (1-3 words), "
    f"else text similarity >= {SIMILAR}",
    "latency_delta": "candidate minus primary percentile over pairs the candidate answered; "
    "negative is faster",
    "intervals": f"95 %: Wilson for rates, normal for mean cost deltas, paired percentile bootstrap "
    f"({RESAMPLES} resamples, fixed seed) for percentile deltas",
    "enough_samples": f"at least {MIN_SAMPLES} answered pairs in the group",
}


def _candidate(name: str, pairs: list[ShadowPair], dropped: int | None, resamples: int,
               seed: int) -> dict[str, Any]:
    overall = compare_pairs(pairs, resamples, seed)
    figures = dict(overall)
    figures["dropped"] = dropped
    figures["primary_models"] = dict(Counter(p.primary_model for p in pairs).most_common())
    figures["routes"] = _grouped(pairs, lambda p: p.route, overall, resamples, seed)
    figures["buckets"] = {dim: _grouped(pairs, key, overall, resamples, seed) for dim, key in BUCKETS.items()}
    figures["verdict"] = verdict(name, figures)
    return figures


def _grouped(pairs: Sequence[ShadowPair], key: Callable[[ShadowPair], str], overall: dict[str, Any],
             resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[ShadowPair]] = {}
    for pair in pairs:
        groups.setdefault(key(pair), []).append(pair)
    # A group holding every pair has the overall figures: the bootstrap is not run twice for them.
    return {name: overall if len(group) == len(pairs) else compare_pairs(group, resamples, seed)
            for name, group in sorted(groups.items())}


def compare_pairs(pairs: Sequence[ShadowPair], resamples: int = RESAMPLES,
                  seed: int = SEED) -> dict[str, Any]:
    """The figures of one group of pairs. Latency, agreement and cost compare answered pairs only."""
    answered = [p for p in pairs if p.ok]
    n, errors = len(answered), len(pairs) - len(answered)
    enough = n >= MIN_SAMPLES
    agreeing = sum(p.agrees for p in answered)
    exact = sum(p.exact for p in answered)
    figures: dict[str, Any] = {
        "pairs": len(pairs), "answered": n, "enough_samples": enough,
        "note": None if enough else insufficient(n),
        "agreement": rate(agreeing, n), "agreement_ci95": ci(wilson(agreeing, n), 4),
        "agreement_basis": _basis(answered),
        "mean_similarity": rate(sum(p.similarity for p in answered), n),
        "exact_rate": rate(exact, n), "exact_rate_ci95": ci(wilson(exact, n), 4),
        "error_rate": rate(errors, len(pairs)), "error_rate_ci95": ci(wilson(errors, len(pairs)), 4),
    }
    figures.update(_latency(answered, enough, resamples, seed))
    figures.update(_ttft(answered, enough, resamples, seed))
    figures.update(_cost(answered))
    return figures


def _latency(pairs: Sequence[ShadowPair], enough: bool, resamples: int, seed: int) -> dict[str, Any]:
    candidate = [p.latency_ms for p in pairs]
    primary = [p.primary_latency_ms for p in pairs]
    return _percentile_deltas("", candidate, primary, enough, resamples, seed)


def _ttft(pairs: Sequence[ShadowPair], enough: bool, resamples: int, seed: int) -> dict[str, Any]:
    both = [(p.ttft_ms, p.primary_ttft_ms) for p in pairs
            if p.ttft_ms is not None and p.primary_ttft_ms is not None]
    candidate, primary = [c for c, _ in both], [q for _, q in both]
    with_intervals = enough and len(both) >= MIN_SAMPLES
    figures = _percentile_deltas("ttft_", candidate, primary, with_intervals, resamples, seed)
    figures["ttft_pairs"] = len(both)
    return figures


def _percentile_deltas(prefix: str, candidate: list[float], primary: list[float], with_intervals: bool,
                       resamples: int, seed: int) -> dict[str, Any]:
    quantiles = (0.50, 0.95)
    intervals = (paired_percentile_deltas(candidate, primary, quantiles, resamples, seed) if with_intervals
                 else [None] * len(quantiles))
    figures: dict[str, Any] = {}
    ordered_c, ordered_p = sorted(candidate), sorted(primary)
    for q, interval in zip(quantiles, intervals, strict=True):
        tag = f"{prefix}p{round(q * 100)}"
        c, p = percentile(ordered_c, q), percentile(ordered_p, q)
        delta = None if c is None or p is None else c - p
        figures[f"candidate_{tag}_ms"], figures[f"primary_{tag}_ms"] = ms(c), ms(p)
        figures[f"{tag}_delta_ms"], figures[f"{tag}_delta_ci95"] = ms(delta), ci(interval, 3)
        figures[f"{tag}_delta_pct"] = relative(delta, p)
    return figures


def _cost(pairs: Sequence[ShadowPair]) -> dict[str, Any]:
    deltas = [p.cost_usd - p.primary_cost_usd for p in pairs]
    spent, baseline = sum(p.cost_usd for p in pairs), sum(p.primary_cost_usd for p in pairs)
    return {
        "cost_delta_usd": money(sum(deltas) / len(deltas)) if deltas else None,
        "cost_delta_ci95": ci(mean_interval(deltas), 8),
        "cost_delta_pct": relative(spent - baseline, baseline),
        "candidate_cost_usd": money(spent), "primary_cost_usd": money(baseline),
    }


def _basis(pairs: Sequence[ShadowPair]) -> str | None:
    labelled = sum(p.label_agreement is not None for p in pairs)
    if not pairs:
        return None
    if labelled == len(pairs):
        return "label"
    return f"similarity>={SIMILAR}" if labelled == 0 else f"label, else similarity>={SIMILAR}"


def verdict(name: str, f: Mapping[str, Any]) -> str:
    """One sentence: what moving this candidate's traffic would change, and how sure that is."""
    primaries = ", ".join(f.get("primary_models", {})) or "its primary"
    drops = "" if f.get("dropped") is None else f", {f['dropped']} dropped"
    head = f"{name} vs {primaries}: {f['pairs']} pairs{drops}"
    if not f["answered"]:
        failed = f"every one failed (errors {pct(_hundred(f['error_rate']), signed=False)})" if f["pairs"] else ""
        return f"{head}; no answered pairs yet{': ' + failed if failed else ''}."
    sure = "" if f["enough_samples"] else f" ({f['note']}: point estimates only)"
    parts = [
        f"p95 latency {_signed_ms(f['p95_delta_ms'])} "
        f"({pct(f['p95_delta_pct'])}{_interval_ms(f['p95_delta_ci95'])})",
        f"p50 {_signed_ms(f['p50_delta_ms'])} ({pct(f['p50_delta_pct'])})",
        f"cost per request {_signed_usd(f['cost_delta_usd'])} ({pct(f['cost_delta_pct'])})",
        f"agreement {pct(_hundred(f['agreement']), signed=False)}{_interval_rate(f['agreement_ci95'])}",
        f"errors {pct(_hundred(f['error_rate']), signed=False)}",
    ]
    by_length = _by_length(f.get("buckets", {}).get("convo_length", {}))
    return f"{head}{sure}: " + ", ".join(parts) + by_length + "."


def _by_length(groups: Mapping[str, Mapping[str, Any]]) -> str:
    if len(groups) < 2:
        return ""
    shown = [f"{name} {pct(g['p95_delta_pct'])}" if g["enough_samples"] else f"{name} {g['note']}"
             for name, g in groups.items()]
    return "; p95 by convo_length: " + ", ".join(shown)


def _signed_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0f} ms"


def _signed_usd(value: float | None) -> str:
    return "-" if value is None else f"{'+' if value >= 0 else '-'}${abs(value):.6f}"


def _interval_ms(interval: list[float] | None) -> str:
    return "" if interval is None else f"; 95 % CI {interval[0]:+.0f} to {interval[1]:+.0f} ms"


def _interval_rate(interval: list[float] | None) -> str:
    return "" if interval is None else f" (95 % CI {interval[0] * 100:.0f}-{interval[1] * 100:.0f} %)"


def _hundred(value: float | None) -> float | None:
    return None if value is None else value * 100


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
