"""What a confidence cascade saved against sending everything to its escalation model.

`escalated` counts the exchanges the escalation model answered; `escalations_failed` those whose
first answer was under the route's threshold and went out all the same: the escalation failed (an
error, the deadline) or was never sent (an open breaker, a gate). Without the routing file's
thresholds, it counts the exchanges whose escalation model failed after the first answer.

For every exchange on a cascaded route, the always-heavy cost is what its answer's tokens would have
cost at the escalation model's prices; the saving is that minus what the exchange did cost (first
answer, grader and escalation included). The heavy model would not have written exactly the same
number of tokens: the figure prices the same tokens, not a replay.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from laneway.telemetry._intervals import MIN_SAMPLES, wilson
from laneway.telemetry._lane_figures import ci, insufficient, money, rate, relative
from laneway.telemetry._records import CACHE_LANE, SHADOW_LANE, ExchangeRow
from laneway.telemetry._summary import NO_ROUTE

CASCADE_LANE = "cascade"
NO_PRICES = "no routing file given: pass it with `--config FILE` to price the always-heavy baseline"
NOT_IN_FILE = "the routing file has no cascade on this route: its escalation model is read from the log"


class Priced(Protocol):
    def cost(self, prompt_tokens: int, completion_tokens: int) -> float: ...


def cascade_savings(rows: Iterable[ExchangeRow], escalate_to: Mapping[str, str] | None = None,
                    prices: Mapping[str, Priced] | None = None,
                    thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Per cascaded route: escalation rate and cost saved. Routes are those of `escalate_to` (route →
    escalation model, from the routing file) and those whose exchanges carry a confidence: a routing file
    that no longer cascades a route does not hide what the log holds of it."""
    by_route: dict[str, list[ExchangeRow]] = {}
    for row in rows:
        if row.lane != SHADOW_LANE:
            by_route.setdefault(row.route or NO_ROUTE, []).append(row)
    scored = {name for name, group in by_route.items() if any(r.cascade_confidence is not None for r in group)}
    routes = {}
    for name in sorted((scored | set(escalate_to or ())) & set(by_route)):
        figures = _route(by_route[name], (escalate_to or {}).get(name), prices, (thresholds or {}).get(name))
        if escalate_to is not None and name not in escalate_to:
            figures["note"] = "; ".join(filter(None, (figures["note"], NOT_IN_FILE)))
        routes[name] = figures
    return {"priced": prices is not None, "note": None if prices is not None else NO_PRICES, "routes": routes}


def _route(rows: list[ExchangeRow], heavy: str | None, prices: Mapping[str, Priced] | None,
           threshold: float | None) -> dict[str, Any]:
    rows = [r for r in rows if r.lane != CACHE_LANE]  # a cached answer went through no cascade
    n = len(rows)
    escalated = sum(r.lane == CASCADE_LANE for r in rows)
    scores = [r.cascade_confidence for r in rows if r.cascade_confidence is not None]
    heavy = heavy or next((r.model for r in rows if r.lane == CASCADE_LANE and r.model), None) or _failed_after(rows)
    if threshold is not None:
        failed_rows = [r for r in rows if r.lane != CASCADE_LANE and r.cascade_confidence is not None
                       and r.cascade_confidence < threshold]
    else:
        # Scored, yet the escalation model failed and the first answer went out (the model that answered
        # first was scored, so the escalation model's failure came after it).
        failed_rows = [r for r in rows if r.lane != CASCADE_LANE and r.cascade_confidence is not None
                       and heavy in r.failed_models] if heavy is not None else []
    failed = len(failed_rows)
    spent = sum(r.cost_usd for r in rows)
    figures: dict[str, Any] = {
        "exchanges": n, "scored": len(scores), "escalated": escalated, "escalations_failed": failed,
        "escalate_to": heavy,
        "escalation_rate": rate(escalated, n), "escalation_rate_ci95": ci(wilson(escalated, n), 4),
        "mean_confidence": rate(sum(scores), len(scores)),
        "enough_samples": n >= MIN_SAMPLES, "note": None if n >= MIN_SAMPLES else insufficient(n),
        "cost_usd": money(spent), "always_heavy_cost_usd": None, "saved_usd": None, "saved_pct": None,
        "saved_by_failed_usd": None,
    }
    price = prices.get(heavy) if prices is not None and heavy is not None else None
    if price is not None:
        baseline = sum(price.cost(r.tokens_in, r.tokens_out) for r in rows)
        # What the failed escalations "saved" is no saving: those answers went out under the threshold.
        by_failed = sum(price.cost(r.tokens_in, r.tokens_out) - r.cost_usd for r in failed_rows)
        figures |= {"always_heavy_cost_usd": money(baseline), "saved_usd": money(baseline - spent),
                    "saved_pct": relative(baseline - spent, baseline), "saved_by_failed_usd": money(by_failed)}
    return figures


def _failed_after(rows: list[ExchangeRow]) -> str | None:
    """Without the routing file and with no escalation answered: the model that most often failed after
    a scored first answer (not the first model's own retries), i.e. the escalation model."""
    failed = Counter(m for r in rows if r.cascade_confidence is not None and r.lane != CASCADE_LANE
                     for m in r.failed_models if m != r.model)
    return failed.most_common(1)[0][0] if failed else None
