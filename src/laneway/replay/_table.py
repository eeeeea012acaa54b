"""The before/after table `laneway demo` prints, and the JSON it writes. Every figure is SIMULATED."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._figures import Figures, share_of
from ._run import EFFICIENT, HEAVY, ArchitectureRun, DemoResult, overflow_timeouts

# The case study's own results, quoted beside the simulated ones.
CASE_STUDY = {
    "p95": "~600 ms -> >3.2 s in the spike; 1.2 s after (-62 %)",
    "p99": "~600 ms -> >3.2 s in the spike",
    "escalations": "-18 % in the spike; recovered after",
    "cost": "-42 % per conversation",
    "efficient": "78 %",
    "heavy": "9 % (escalations, >8-turn dialogs)",
    "accuracy": "held (the team's evals)",
}
# What "good answers" measures, printed under the table: the simulation has no accuracy of its own to offer.
GOOD_ANSWERS_NOTE = ("good answers: the share of requests answered with an answer the simulated fleet rates good; "
                     "each model gives good answers at its own rate (`quality` in laneway/sim/fleet.yaml), "
                     "whatever the request, so in this simulation any traffic moved to a cheaper model lowers it")


def milliseconds(value: float) -> str:
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def change(before: float, after: float) -> str:
    if before == 0:
        return "-"
    return f"{(after - before) / before * 100:+.0f} %"


def _points(before: float, after: float) -> str:
    return f"{(after - before) * 100:+.1f} pts"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"  # None: nothing to count it over


def render_table(result: DemoResult) -> str:
    before, after = result.runs["before"], result.runs["after"]
    s = result.settings
    lines = [
        "laneway demo - SIMULATED: every figure below comes from the simulated fleet, "
        "not from real providers.",
        f"traffic: real support conversations, open-loop Poisson arrivals, {s.rate:g} req/s for "
        f"{s.normal_s:g} s (normal), then {s.rate * s.burst_factor:g} req/s for {s.burst_s:g} s "
        f"({s.burst_factor:g}x burst); seed {s.seed}",
        f"before: {before.label} (laneway/replay/configs/before.yaml)",
        f"after:  {after.label} (laneway/replay/configs/after.yaml)",
        "",
        _grid(_rows(before, after)),
        GOOD_ANSWERS_NOTE,
    ]
    for run in (before, after):
        if run.example_error:
            lines.append(f"first timeout ({run.name}): {run.example_error}")
    return "\n".join(lines)


def _rows(before: ArchitectureRun, after: ArchitectureRun) -> list[Sequence[str]]:
    bn, bb = before.phases["normal"], before.phases["burst"]
    an, ab = after.phases["normal"], after.phases["burst"]
    rows: list[Sequence[str]] = [
        ("SIMULATED", "before", "", "after", "", "change", "case study"),
        ("", "normal", "burst", "normal", "burst", "at burst", "(reported)"),
    ]
    for label, key, quote in (("latency p50", "p50_ms", ""), ("latency p95", "p95_ms", CASE_STUDY["p95"]),
                              ("latency p99", "p99_ms", CASE_STUDY["p99"])):
        values = [getattr(f, key) for f in (bn, bb, an, ab)]
        rows.append((label, *map(milliseconds, values), change(values[1], values[3]), quote))
    rows.append(("escalations answered / min", *(f"{f.escalation.ok_per_min:.1f}" for f in (bn, bb, an, ab)),
                 change(bb.escalation.ok_per_min, ab.escalation.ok_per_min), ""))
    ratios = (percent(f.escalation.ok_ratio) for f in (bn, bb, an, ab))
    rows.append(("escalations answered / offered", *ratios, "", CASE_STUDY["escalations"]))
    rows.append(("timeouts (deadline exceeded)", *(str(f.timeouts) for f in (bn, bb, an, ab)), "", ""))
    overflows = (str(overflow_timeouts([r for r in run.records if r.phase == phase]))
                 for run in (before, after) for phase in ("normal", "burst"))
    rows.append(("  of which token-window overflow", *overflows, "", "the seed's error line"))
    rows.append(("requests", *(str(f.requests) for f in (bn, bb, an, ab)), "", ""))
    rows.append(("good answers (simulated quality)", *(percent(f.good_share) for f in (bn, bb, an, ab)),
                 _points(bb.good_share, ab.good_share), CASE_STUDY["accuracy"]))
    bo, ao = before.overall, after.overall
    rows.append(("cost per conversation (whole run)", f"${bo.cost_per_conversation_usd:.4f}", "",
                 f"${ao.cost_per_conversation_usd:.4f}", "",
                 change(bo.cost_per_conversation_usd, ao.cost_per_conversation_usd), CASE_STUDY["cost"]))
    rows.append(("traffic on efficient models", percent(efficient_share(bo)), "",
                 percent(efficient_share(ao)), "", "", CASE_STUDY["efficient"]))
    rows.append((f"traffic on {HEAVY}", percent(heavy_share(bo)), "", percent(heavy_share(ao)), "", "",
                 CASE_STUDY["heavy"]))
    models = sorted(set(bo.traffic_share) | set(ao.traffic_share),
                    key=lambda m: -ao.traffic_share.get(m, 0.0))
    for model in models:
        rows.append((f"  share: {model}", percent(bo.traffic_share.get(model, 0.0)), "",
                     percent(ao.traffic_share.get(model, 0.0)), "", "", ""))
    return rows


def _grid(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    return "\n".join(lines)


def efficient_share(figures: Figures) -> float:
    return share_of(figures.traffic_share, EFFICIENT)


def heavy_share(figures: Figures) -> float:
    return share_of(figures.traffic_share, (HEAVY,))


def result_json(result: DemoResult, quick: bool) -> dict[str, Any]:
    """`{"before": FIG, "after": FIG}`; FIG's top-level figures cover the whole run, `phases` each phase."""
    s = result.settings
    settings = {"rate": s.rate, "burst_rate": s.rate * s.burst_factor, "normal_s": s.normal_s,
                "burst_s": s.burst_s, "seed": s.seed, "quick": quick}
    out: dict[str, Any] = {}
    for name, run in result.runs.items():
        fig = run.overall.to_json()
        fig.update({
            "simulated": True, "architecture": run.label, "config": f"laneway/replay/configs/{name}.yaml",
            "efficient_share": round(efficient_share(run.overall), 4),
            "heavy_share": round(heavy_share(run.overall), 4),
            "phases": {phase: figures.to_json() for phase, figures in run.phases.items()},
            "example_error": run.example_error, "settings": settings,
        })
        out[name] = fig
    return out
