"""Canary lanes compared with their route's primary: pure functions over exchange rows.

A request belongs to the lane its route first sent it to (its first attempt's lane), even when the
canary failed and another model answered: a canary is judged on everything it was given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from laneway.exchange import OK
from laneway.telemetry._intervals import (
    MIN_SAMPLES,
    RESAMPLES,
    SEED,
    mean_difference_interval,
    newcombe,
    unpaired_percentile_deltas,
    wilson,
)
from laneway.telemetry._lane_figures import ci, insufficient, money, ms, rate, relative
from laneway.telemetry._records import CACHE_LANE, SHADOW_LANE, ExchangeRow
from laneway.telemetry._summary import NO_ROUTE, percentile

CANARY_LANE = "canary"
PRIMARY_LANE = "primary"


def failed_over(row: ExchangeRow) -> bool:
    """Another model than the one the route chose answered (or tried to) because the first failed."""
    return row.lane == "fallback" or (row.entry_lane == CANARY_LANE and row.lane == PRIMARY_LANE)


def canary_comparison(rows: Iterable[ExchangeRow], *, resamples: int = RESAMPLES,
                      seed: int = SEED) -> dict[str, Any]:
    """Per route that had canary traffic: each lane's figures and each canary's difference to primary."""
    by_route: dict[str, dict[str, list[ExchangeRow]]] = {}
    simulated = False
    for row in rows:
        if row.lane in (SHADOW_LANE, CACHE_LANE):  # a cache hit called neither lane's model
            continue
        lane = (row.entry_model or "(none)") if row.entry_lane == CANARY_LANE else PRIMARY_LANE
        by_route.setdefault(row.route or NO_ROUTE, {}).setdefault(lane, []).append(row)
        simulated = simulated or row.simulated
    routes = {name: _route(name, lanes, resamples, seed) for name, lanes in sorted(by_route.items())
              if set(lanes) - {PRIMARY_LANE}}
    return {"simulated": simulated, "min_samples": MIN_SAMPLES, "routes": routes,
            "summary": [line for figures in routes.values() for line in figures["summary"]]}


def _route(route: str, lanes: Mapping[str, list[ExchangeRow]], resamples: int, seed: int) -> dict[str, Any]:
    primary = lanes.get(PRIMARY_LANE, [])
    figures = {PRIMARY_LANE: lane_figures(primary)}
    canaries = {}
    for model, rows in sorted(lanes.items()):
        if model != PRIMARY_LANE:
            canaries[model] = {**lane_figures(rows), "vs_primary": difference(rows, primary, resamples, seed)}
    summary = [_sentence(route, model, c, figures[PRIMARY_LANE]) for model, c in canaries.items()]
    return {**figures, "canaries": canaries, "summary": summary}


def lane_figures(rows: Sequence[ExchangeRow]) -> dict[str, Any]:
    n = len(rows)
    latencies = sorted(r.latency_ms for r in rows)
    errors = sum(r.outcome != OK for r in rows)
    fallbacks = sum(failed_over(r) for r in rows)
    models = sorted({r.entry_model for r in rows if r.entry_model})
    return {
        "requests": n, "models": models, "enough_samples": n >= MIN_SAMPLES,
        "p50_ms": ms(percentile(latencies, 0.50)), "p95_ms": ms(percentile(latencies, 0.95)),
        "cost_per_request_usd": money(sum(r.cost_usd for r in rows) / n) if n else None,
        "error_rate": rate(errors, n), "error_rate_ci95": ci(wilson(errors, n), 4),
        "fallback_rate": rate(fallbacks, n), "fallback_rate_ci95": ci(wilson(fallbacks, n), 4),
    }


def difference(canary: Sequence[ExchangeRow], primary: Sequence[ExchangeRow], resamples: int = RESAMPLES,
               seed: int = SEED) -> dict[str, Any]:
    """Canary minus primary, with 95 % intervals once both lanes have enough samples."""
    n_c, n_p = len(canary), len(primary)
    enough = min(n_c, n_p) >= MIN_SAMPLES
    a, b = [r.latency_ms for r in canary], [r.latency_ms for r in primary]
    intervals = unpaired_percentile_deltas(a, b, (0.50, 0.95), resamples, seed) if enough else [None, None]
    note = None if enough else insufficient(min(n_c, n_p))
    figures: dict[str, Any] = {"enough_samples": enough, "note": note}
    for q, interval in zip((0.50, 0.95), intervals, strict=True):
        c, p = percentile(sorted(a), q), percentile(sorted(b), q)
        delta = None if c is None or p is None else c - p
        tag = f"p{round(q * 100)}"
        figures |= {f"{tag}_delta_ms": ms(delta), f"{tag}_delta_ci95": ci(interval, 3),
                    f"{tag}_delta_pct": relative(delta, p)}
    cost_c, cost_p = [r.cost_usd for r in canary], [r.cost_usd for r in primary]
    mean_p = sum(cost_p) / n_p if n_p else None
    delta_cost = sum(cost_c) / n_c - mean_p if n_c and mean_p is not None else None
    figures |= {"cost_per_request_delta_usd": None if delta_cost is None else money(delta_cost),
                "cost_per_request_delta_ci95": ci(mean_difference_interval(cost_c, cost_p), 8),
                "cost_per_request_delta_pct": relative(delta_cost, mean_p)}
    for name, test in (("error_rate", lambda r: r.outcome != OK), ("fallback_rate", failed_over)):
        hits_c, hits_p = sum(map(test, canary)), sum(map(test, primary))
        delta = None if not (n_c and n_p) else hits_c / n_c - hits_p / n_p
        figures |= {f"{name}_delta": None if delta is None else round(delta, 4),
                    f"{name}_delta_ci95": ci(newcombe(hits_c, n_c, hits_p, n_p), 4)}
    return figures


def _sentence(route: str, model: str, canary: Mapping[str, Any], primary: Mapping[str, Any]) -> str:
    d = canary["vs_primary"]
    primaries = ", ".join(primary["models"]) or "-"
    head = (f"route {route}: canary {model} ({canary['requests']} requests) "
            f"vs primary {primaries} ({primary['requests']} requests)")
    if not d["enough_samples"]:  # no comparison yet, but what the canary did so far is worth seeing
        return (f"{head}: {d['note']}; so far the canary's error rate is {_share(canary['error_rate'])} "
                f"and its fallback rate {_share(canary['fallback_rate'])}.")
    p95 = d["p95_delta_ci95"]
    return (f"{head}: p95 {d['p95_delta_ms']:+.0f} ms (95 % CI {p95[0]:+.0f} to {p95[1]:+.0f}), "
            f"cost per request {_pct(d['cost_per_request_delta_pct'])}, "
            f"error rate {_points(d['error_rate_delta'], d['error_rate_delta_ci95'])}, "
            f"fallback rate {_points(d['fallback_rate_delta'], d['fallback_rate_delta_ci95'])}. {_verdict(d)}")


# (name in the sentence, difference's 95 % interval field): higher is worse for each
_JUDGED = (("p95 latency", "p95_delta_ci95"), ("cost per request", "cost_per_request_delta_ci95"),
           ("error rate", "error_rate_delta_ci95"), ("fallback rate", "fallback_rate_delta_ci95"))


def _verdict(d: Mapping[str, Any]) -> str:
    """Which differences the intervals show, and what more traffic would buy when they show none."""
    worse = [name for name, field in _JUDGED if d.get(field) and d[field][0] > 0]
    better = [name for name, field in _JUDGED if d.get(field) and d[field][1] < 0]
    said = [f"{label} with 95 % confidence: {', '.join(names)}." for label, names in (("Worse", worse),
                                                                                      ("Better", better)) if names]
    if said:
        return " ".join(said)
    return ("No difference shown with 95 % confidence: every interval spans 0 (4 times the requests halve "
            "an interval).")


def _points(delta: float, interval: list[float] | None) -> str:
    shown = f"{delta * 100:+.1f} points"
    return shown if not interval else f"{shown} (95 % CI {interval[0] * 100:+.1f} to {interval[1] * 100:+.1f})"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"
