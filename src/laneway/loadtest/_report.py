"""What a run measured, as one JSON-ready summary, a text table, a JSON file and a CSV file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson

from ._histogram import RELATIVE_ERROR, LatencyHistogram
from ._tally import Group, Second, Tally

QUANTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}
CSV_FIELDS = ("scope", "model", "lane", "requests", "errors", "throughput_rps", "p50_ms", "p90_ms", "p95_ms",
              "p99_ms", "max_ms", "mean_ms", "ttft_p50_ms", "ttft_p99_ms", "cost_usd")
# The quantiles of the percentile spectrum: 0, 20.6 %, 36.9 % ... 99.99 %, evenly spaced in 1/(1-q).
SPECTRUM = tuple(1 - 10 ** (-k / 10) for k in range(41))
# Above this share of one core the load generator itself may be what limits the run; a run shorter
# than `BUSY_CLIENT_MIN_S` is mostly start-up and shutdown, whose CPU says nothing about the load.
BUSY_CLIENT = 0.85
BUSY_CLIENT_MIN_S = 1.0
# Open loop: a p99 start lag past this says the requests waited in the load generator (for one of
# `--max-inflight` connections, or for its own CPU), and their latencies include that wait. The share of a
# core over the whole run missed it: a run whose tail after sending was long read 79 % with a 2.9 s p50.
LATE_START_S = 0.005
NO_HEADERS = ("-", "-")  # the (model, lane) of answers without Laneway's headers


def milliseconds(histogram: LatencyHistogram) -> dict[str, float] | None:
    if not histogram.count:
        return None
    figures = {name: histogram.quantile(q) * 1000 for name, q in QUANTILES.items()}
    figures |= {"max": histogram.max * 1000, "mean": histogram.mean * 1000, "min": histogram.min * 1000}
    return {name: round(value, 4) for name, value in figures.items()}


def _group(group: Group, wall_s: float) -> dict[str, Any]:
    return {"requests": group.requests, "errors": group.errors,
            "throughput_rps": round(group.requests / wall_s, 2) if wall_s else 0.0,
            "latency_ms": milliseconds(group.latency), "ttft_ms": milliseconds(group.ttft),
            "cost_usd": round(group.cost_usd, 8)}


def summarize(tally: Tally, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run as plain data: the shape of `--json`."""
    return {
        "settings": settings or {},
        "wall_s": round(tally.wall_s, 3),
        # Open loop: the requests sent over the time they were sent in. The throughput above counts the
        # time the last answers took to come in too.
        "sending_s": None if tally.sending_s is None else round(tally.sending_s, 3),
        # The schedule's rate: the requests drawn over the time they were sent for, or, once the schedule waited
        # for room (`WAITING_MAX`) and fell behind the clock, over the span of their due times.
        "offered_rps": (round((tally.all.requests + tally.cancelled)
                              / (tally.last_due_s if tally.schedule_held and tally.last_due_s else tally.sending_s), 2)
                        if tally.sending_s else None),
        # The requests that left the load generator over the time they left in: under `offered_rps` when it
        # could not keep up (then `start_lag_ms` says by how much they were late).
        "sent_rps": (round(tally.start_lag.count / max(tally.sending_s, tally.last_start_s), 2)
                     if tally.sending_s else None),
        "start_lag_ms": milliseconds(tally.start_lag),
        "histogram_relative_error": RELATIVE_ERROR,
        "all": _group(tally.all, tally.wall_s),
        "errors": dict(tally.errors.most_common()),
        "error_samples": {kind: tally.error_samples.get(kind, "") for kind, _ in tally.errors.most_common()},
        # Against another endpoint every answer lacks the headers: no model rows then.
        "models": [] if set(tally.by_model) <= {NO_HEADERS} else [
            {"model": model, "lane": lane, **_group(group, tally.wall_s)}
            for (model, lane), group in sorted(tally.by_model.items())],
        "chunk_gap_ms": milliseconds(tally.chunk_gaps),
        "spectrum": _spectrum(tally.all),
        "client": {"cpu_s": round(tally.client_cpu_s, 3),
                   "cpu_us_per_request": round(tally.client_cpu_us_per_request, 1),
                   "cpu_share": round(tally.client_cpu_share, 3)},
        # Every second of the run, those in which nothing ended too: a stall shows as zeros, not as a gap.
        "timeline": [_second(number, tally.timeline.get(number, Second()))
                     for number in range(max([int(tally.wall_s), *tally.timeline], default=-1) + 1)],
        "interrupted": tally.interrupted_s is not None,
        "interrupted_after_s": None if tally.interrupted_s is None else round(tally.interrupted_s, 3),
        "interrupted_in_warmup_after_s": (None if tally.warmup_interrupted_s is None
                                          else round(tally.warmup_interrupted_s, 3)),
        "cancelled": tally.cancelled,
    }


def _second(number: int, second: Second) -> dict[str, Any]:
    """One second of the timeline; its percentiles are None when nothing in it succeeded."""
    latency = second.latency if second.latency.count else None
    return {"second": number, "requests": second.requests, "errors": second.errors,
            "p50_ms": round(latency.quantile(0.5) * 1000, 3) if latency else None,
            "p99_ms": round(latency.quantile(0.99) * 1000, 3) if latency else None}


def _spectrum(group: Group) -> list[dict[str, Any]]:
    if not group.latency.count:
        return []
    ttft = group.ttft if group.ttft.count else None
    return [{"q": round(q, 6), "latency_ms": round(group.latency.quantile(q) * 1000, 4),
             "ttft_ms": round(ttft.quantile(q) * 1000, 4) if ttft else None} for q in SPECTRUM]


def write_json(summary: dict[str, Any], path: str | Path) -> None:
    Path(path).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")


def csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [_csv_row("all", "", "", summary["all"])]
    rows += [_csv_row("model", m["model"], m["lane"], m) for m in summary["models"]]
    return rows


def _csv_row(scope: str, model: str, lane: str, group: dict[str, Any]) -> dict[str, Any]:
    latency, ttft = group["latency_ms"] or {}, group["ttft_ms"] or {}
    return {"scope": scope, "model": model, "lane": lane, "requests": group["requests"],
            "errors": group["errors"], "throughput_rps": group["throughput_rps"],
            **{f"{k}_ms": latency.get(k, "") for k in ("p50", "p90", "p95", "p99", "max", "mean")},
            "ttft_p50_ms": ttft.get("p50", ""), "ttft_p99_ms": ttft.get("p99", ""),
            "cost_usd": group["cost_usd"]}


def write_csv(summary: dict[str, Any], path: str | Path) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(summary))


def render_text(summary: dict[str, Any]) -> str:
    everything = summary["all"]
    sent = (f" (offered at {summary['offered_rps']:.1f} req/s over {summary['sending_s']:.2f} s, "
            f"sent at {summary['sent_rps']:.1f})" if summary.get("sent_rps") is not None else "")
    lines = [f"{everything['requests']} requests in {summary['wall_s']:.2f} s: "
             f"{everything['throughput_rps']:.1f} req/s{sent}, {everything['errors']} errors"]
    if summary["interrupted"]:
        cancelled = f"; {summary['cancelled']} requests in flight cancelled" if summary["cancelled"] else ""
        warmup = summary.get("interrupted_in_warmup_after_s")
        lines.append(f"interrupted after {summary['interrupted_after_s']:.1f} s{cancelled}" if warmup is None else
                     f"interrupted {warmup:.1f} s into the warm-up: nothing measured")
    lines += [_figures_line("latency", everything["latency_ms"]),
              _figures_line("ttft", everything["ttft_ms"]),  # of the streamed requests
              _figures_line("chunk gap", summary["chunk_gap_ms"]),
              _figures_line("start lag", summary.get("start_lag_ms"))]  # open loop: sent after it was due
    if everything["errors"]:
        lines.append(f"  latency percentiles are of successful requests; {everything['errors']} failed")
    samples = summary.get("error_samples", {})
    lines += [f"  error {kind}: {n}" + (f" (first: {samples[kind]})" if samples.get(kind) else "")
              for kind, n in summary["errors"].items()]
    if summary["models"]:
        lines.append(f"  {'model':24} {'lane':9} {'requests':>8} {'errors':>6} {'p50 ms':>9} {'p99 ms':>9} "
                     f"{'cost usd':>12}")
        for m in summary["models"]:
            latency = m["latency_ms"] or {}
            lines.append(f"  {m['model']:24} {m['lane']:9} {m['requests']:8d} {m['errors']:6d} "
                         f"{_cell(latency.get('p50')):>9} {_cell(latency.get('p99')):>9} {m['cost_usd']:12.6f}")
    client = summary["client"]
    lines.append(f"  load generator: {client['cpu_us_per_request']:.0f} us CPU/request, "
                 f"{client['cpu_share'] * 100:.0f} % of one core")
    if client["cpu_share"] > BUSY_CLIENT and summary["wall_s"] >= BUSY_CLIENT_MIN_S:
        lines.append("  warning: the load generator was nearly saturated; the figures may be its own limit")
    lag = summary.get("start_lag_ms")
    if lag and lag["p99"] > LATE_START_S * 1000:
        lines.append(f"  warning: requests left the load generator up to {lag['p99']:.1f} ms after they were due "
                     "(p99 start lag), and their latencies include that wait: it could not send at this rate (lower "
                     "--rate, raise --max-inflight, or split the load over several load generators)")
    return "\n".join(line for line in lines if line)


def _figures_line(label: str, figures: dict[str, float] | None) -> str:
    if not figures:
        return ""
    cells = "  ".join(f"{name} {figures[name]:.3f}" for name in ("p50", "p90", "p95", "p99", "max"))
    return f"  {label + ' ms':13} {cells}"


def _cell(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.3f}"
