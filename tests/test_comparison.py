"""Lane comparisons: intervals, shadow pairs, canary and cascade figures, their persistence through the
exchange log, the `shadow report` / `canary report` / `report --config` commands, and a live shadow lane."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import sqlite3
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from _live import live_gateway
from laneway.config import load_config
from laneway.exchange import Attempt, Exchange
from laneway.telemetry import (
    ExchangeRow,
    Telemetry,
    TelemetrySettings,
    add_commands,
    canary_comparison,
    cascade_savings,
    newcombe,
    paired_percentile_deltas,
    shadow_comparison,
    summarize,
    wilson,
)
from laneway.telemetry._records import ATTEMPT_FIELDS, LOG_COLUMNS
from laneway.telemetry._report import cascade_text
from laneway.telemetry._window import rows_of

BASE = 1_750_000_000.0


def row(i: int = 0, **fields: Any) -> ExchangeRow:
    values: dict[str, Any] = {
        "started_at": BASE + i, "model": "gpt-5-mini", "route": "chat", "lane": "primary", "outcome": "ok",
        "latency_ms": 100.0, "ttft_ms": None, "tokens_in": 100, "tokens_out": 50, "cost_usd": 0.001,
        "conversation_id": None, "escalation": False, "fallbacks": 0, "simulated": False,
    }
    values.update(fields)
    values.setdefault("entry_model", values["model"])
    return ExchangeRow(**values)


def shadow_row(i: int, latency: float, primary_latency: float, *, convo_length: int = 1, cost: float = 0.0002,
               primary_cost: float = 0.001, similarity: float = 0.8, outcome: str = "ok",
               candidate: str = "gemini-2.5-flash-lite", **signals: Any) -> ExchangeRow:
    return row(i, model=candidate, lane="shadow", latency_ms=latency, cost_usd=cost, outcome=outcome,
               entry_lane="shadow", signals={
                   "shadow_of": f"req-{i}", "primary_model": "gpt-5-mini",
                   "primary_latency_ms": primary_latency, "primary_ttft_ms": None,
                   "primary_cost_usd": primary_cost, "exact": False, "similarity": similarity,
                   "convo_length": convo_length, "priority": "normal", **signals})


# --- intervals -----------------------------------------------------------------------------------------


def test_wilson_and_newcombe_match_published_values() -> None:
    low, high = wilson(8, 10) or (0.0, 0.0)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # Wilson 1927 / Newcombe 1998, table I
    low, high = newcombe(56, 70, 48, 80) or (0.0, 0.0)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)  # Newcombe 1998, method 10
    assert wilson(0, 0) is None and newcombe(1, 2, 0, 0) is None
    low, high = wilson(0, 40) or (1.0, 1.0)
    assert low == 0.0 and 0.05 < high < 0.1


def test_paired_bootstrap_is_seeded_and_exact_for_a_constant_shift() -> None:
    primary = [float(100 + (i * 37) % 400) for i in range(200)]
    shifted = [p - 25.0 for p in primary]
    assert paired_percentile_deltas(shifted, primary, (0.5, 0.95)) == [(-25.0, -25.0), (-25.0, -25.0)]
    noisy = [p * (0.5 + (i % 7) / 10) for i, p in enumerate(primary)]
    first = paired_percentile_deltas(noisy, primary, (0.95,), resamples=300, seed=3)
    assert first == paired_percentile_deltas(noisy, primary, (0.95,), resamples=300, seed=3)
    assert first != paired_percentile_deltas(noisy, primary, (0.95,), resamples=300, seed=4)
    low, high = first[0] or (0.0, 0.0)
    assert low < high


# --- shadow --------------------------------------------------------------------------------------------


def test_shadow_comparison_per_candidate_bucket_and_sample_verdict() -> None:
    rows = [shadow_row(i, latency=60.0 + i, primary_latency=100.0 + i / 0.6 - i, convo_length=1 + i % 2)
            for i in range(40)]
    rows += [shadow_row(100 + i, latency=300.0, primary_latency=310.0, convo_length=12, similarity=0.2)
             for i in range(10)]
    rows.append(shadow_row(200, latency=5000.0, primary_latency=100.0, outcome="upstream_unavailable"))
    rows.append(row(300, cost_usd=9.0))  # a primary: never a pair
    figures = shadow_comparison(rows, {"gemini-2.5-flash-lite": 3, "claude-sonnet-37": 2})
    lite = figures["candidates"]["gemini-2.5-flash-lite"]
    assert (lite["pairs"], lite["answered"], lite["dropped"]) == (51, 50, 3)
    assert lite["agreement"] == 0.8 and lite["agreement_basis"] == "similarity>=0.5"
    assert lite["error_rate"] == round(1 / 51, 4) and lite["error_rate_ci95"][0] < lite["error_rate"]
    assert lite["cost_delta_usd"] == pytest.approx(-0.0008) and lite["cost_delta_pct"] == -80.0
    assert lite["p95_delta_ms"] < 0 and lite["p95_delta_ci95"] is not None
    assert lite["p95_delta_ci95"][0] <= lite["p95_delta_ms"] <= lite["p95_delta_ci95"][1]
    short, long = lite["buckets"]["convo_length"]["1-2"], lite["buckets"]["convo_length"]["9+"]
    assert short["enough_samples"] and short["pairs"] == 41
    assert not long["enough_samples"] and long["note"] == "insufficient samples (n=10 < 30)"
    assert long["p95_delta_ci95"] is None and long["p95_delta_ms"] == -10.0
    assert "insufficient samples (n=10 < 30)" in lite["verdict"] and "-80.0 %" in lite["verdict"]
    assert figures["candidates"]["claude-sonnet-37"]["pairs"] == 0
    assert "no answered pairs" in figures["candidates"]["claude-sonnet-37"]["verdict"]


def test_shadow_p95_delta_is_candidate_minus_primary_percentiles() -> None:
    rows = [shadow_row(i, latency=0.6 * (100.0 + i), primary_latency=100.0 + i) for i in range(60)]
    lite = shadow_comparison(rows)["candidates"]["gemini-2.5-flash-lite"]
    primary_p95 = 100.0 + 0.95 * 59
    assert lite["primary_p95_ms"] == pytest.approx(primary_p95)
    assert lite["p95_delta_ms"] == pytest.approx(-0.4 * primary_p95, abs=1e-3)
    assert lite["p95_delta_pct"] == -40.0


def test_label_agreement_wins_over_similarity_when_answers_are_labels() -> None:
    rows = [shadow_row(i, 50.0, 100.0, similarity=0.0, label_agreement=i % 4 != 0) for i in range(40)]
    lite = shadow_comparison(rows)["candidates"]["gemini-2.5-flash-lite"]
    assert lite["agreement_basis"] == "label" and lite["agreement"] == 0.75


def test_summaries_keep_shadow_cost_out_of_the_totals() -> None:
    rows = [row(i, cost_usd=0.01) for i in range(9)]
    rows += [shadow_row(i, 50.0, 100.0, cost=0.5) for i in range(3)]
    summary = summarize(rows)
    assert summary["total"]["requests"] == 9 and summary["total"]["cost_usd"] == pytest.approx(0.09)
    assert summary["models"]["gpt-5-mini"]["share"] == 1.0
    assert "gemini-2.5-flash-lite" not in summary["models"]
    assert summary["shadow"]["cost_usd"] == pytest.approx(1.5) and summary["shadow"]["requests"] == 3
    assert summary["shadow"]["models"]["gemini-2.5-flash-lite"]["requests"] == 3


# --- canary and cascade --------------------------------------------------------------------------------


def test_canary_lane_owns_its_failovers_and_differences_carry_intervals() -> None:
    rows = [row(i, latency_ms=200.0 + i % 50, cost_usd=0.002) for i in range(80)]
    rows += [row(100 + i, model="gemini-2.5-flash-lite", lane="canary", entry_lane="canary",
                 latency_ms=100.0 + i % 50, cost_usd=0.0005) for i in range(36)]
    # four canaries failed over to the primary model: still the canary lane's, as errors it caused
    rows += [row(200 + i, lane="primary", entry_lane="canary", entry_model="gemini-2.5-flash-lite",
                 latency_ms=400.0, cost_usd=0.002, fallbacks=1) for i in range(4)]
    rows.append(row(300, route="other"))  # no canary on this route: not reported
    figures = canary_comparison(rows)
    assert list(figures["routes"]) == ["chat"]
    chat = figures["routes"]["chat"]
    canary = chat["canaries"]["gemini-2.5-flash-lite"]
    assert (chat["primary"]["requests"], canary["requests"]) == (80, 40)
    assert canary["fallback_rate"] == 0.1 and chat["primary"]["fallback_rate"] == 0.0
    d = canary["vs_primary"]
    assert d["enough_samples"] and d["p50_delta_ms"] < 0
    assert d["p95_delta_ci95"][0] <= d["p95_delta_ms"] <= d["p95_delta_ci95"][1]
    assert d["fallback_rate_delta"] == 0.1 and d["fallback_rate_delta_ci95"][0] > 0
    assert d["cost_per_request_delta_usd"] == pytest.approx((36 * 0.0005 + 4 * 0.002) / 40 - 0.002)
    assert figures["summary"][0].startswith("route chat: canary gemini-2.5-flash-lite (40 requests)")
    assert "fallback rate +10.0 points (95 % CI +" in figures["summary"][0]
    # The fallback rate's interval lies above 0, cost's below, p95's (the failovers' tail) across it.
    assert figures["summary"][0].endswith("Worse with 95 % confidence: fallback rate. Better with 95 % confidence: "
                                          "cost per request.")
    same = [row(i, latency_ms=200.0 + i % 40, cost_usd=0.002) for i in range(80)]  # the canary's latencies twice
    same += [row(100 + i, model="gemini-2.5-flash-lite", lane="canary", entry_lane="canary",
                 latency_ms=200.0 + i, cost_usd=0.002) for i in range(40)]
    assert canary_comparison(same)["summary"][0].endswith("No difference shown with 95 % confidence: every "
                                                            "interval spans 0 (4 times the requests halve an "
                                                            "interval).")
    early = canary_comparison(rows[:90])
    few = early["routes"]["chat"]["canaries"]["gemini-2.5-flash-lite"]["vs_primary"]
    assert not few["enough_samples"] and few["p95_delta_ci95"] is None
    # Before there is enough to compare, the summary still says what the canary did so far.
    assert early["summary"][0].endswith("so far the canary's error rate is 0.0 % and its fallback rate 0.0 %.")


class Price:
    def __init__(self, input_per_mtok: float, output_per_mtok: float) -> None:
        self.rates = (input_per_mtok, output_per_mtok)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.rates[0] + completion_tokens * self.rates[1]) / 1e6


def test_cascade_escalation_rate_and_savings_against_always_heavy() -> None:
    rows = [row(i, tokens_in=1000, tokens_out=100, cost_usd=0.0004, cascade_confidence=0.9)
            for i in range(30)]
    rows += [row(100 + i, model="gpt-5", lane="cascade", tokens_in=1000, tokens_out=200, cost_usd=0.0035,
                 cascade_confidence=0.2) for i in range(10)]
    rows.append(shadow_row(500, 50.0, 100.0, cost=1.0))
    # Answers from the response cache went through no cascade: they count neither way.
    rows += [row(200 + i, model="gpt-5", lane="cache", tokens_in=0, tokens_out=0, cost_usd=0.0) for i in range(5)]
    prices = {"gpt-5": Price(1.25, 10.0)}
    figures = cascade_savings(rows, {"chat": "gpt-5"}, prices)["routes"]["chat"]
    heavy = 30 * (1000 * 1.25 + 100 * 10.0) / 1e6 + 10 * (1000 * 1.25 + 200 * 10.0) / 1e6
    spent = 30 * 0.0004 + 10 * 0.0035
    assert (figures["exchanges"], figures["escalated"], figures["escalation_rate"]) == (40, 10, 0.25)
    assert figures["always_heavy_cost_usd"] == pytest.approx(heavy)
    assert figures["saved_usd"] == pytest.approx(heavy - spent)
    assert figures["saved_pct"] == round((heavy - spent) / heavy * 100, 1)
    unpriced = cascade_savings(rows)
    assert unpriced["note"] and "--config" in unpriced["note"]
    chat = unpriced["routes"]["chat"]
    assert chat["saved_usd"] is None and chat["escalate_to"] == "gpt-5"


def test_a_cascade_the_routing_file_no_longer_has_is_still_reported_from_the_log() -> None:
    rows = [row(i, tokens_in=1000, tokens_out=100, cost_usd=0.0004, cascade_confidence=0.9) for i in range(30)]
    rows += [row(100 + i, model="gpt-5", lane="cascade", tokens_in=1000, tokens_out=200, cost_usd=0.0035,
                 cascade_confidence=0.2) for i in range(10)]
    # Today's routing file cascades another route, and still prices gpt-5.
    figures = cascade_savings(rows, {"email": "gpt-5"}, {"gpt-5": Price(1.25, 10.0)})["routes"]
    assert set(figures) == {"chat"}  # `email` has no exchange in the window
    chat = figures["chat"]
    assert (chat["escalate_to"], chat["escalated"], chat["exchanges"]) == ("gpt-5", 10, 40)
    assert chat["saved_usd"] is not None and "no cascade on this route" in chat["note"]


def test_a_cascade_whose_escalations_all_failed_is_seen_without_prices_and_saves_nothing_by_it() -> None:
    rows = [row(i, tokens_in=1000, tokens_out=100, cost_usd=0.0004, cascade_confidence=0.9) for i in range(20)]
    # under the threshold, the escalation to gpt-5 failed, and the first answer went out
    rows += [row(100 + i, tokens_in=1000, tokens_out=100, cost_usd=0.0004, cascade_confidence=0.2,
                 failed_models=("gpt-5",)) for i in range(10)]
    unpriced = cascade_savings(rows)["routes"]["chat"]
    assert (unpriced["escalate_to"], unpriced["escalated"], unpriced["escalations_failed"]) == ("gpt-5", 0, 10)
    priced = cascade_savings(rows, {"chat": "gpt-5"}, {"gpt-5": Price(1.25, 10.0)}, {"chat": 0.5})["routes"]["chat"]
    assert priced["escalations_failed"] == 10
    assert priced["saved_by_failed_usd"] == pytest.approx(10 * ((1000 * 1.25 + 100 * 10.0) / 1e6 - 0.0004))
    text = cascade_text({"routes": {"chat": {**priced, "note": None}}, "note": None})
    assert "of it from the first answers sent when their escalation failed, which is no saving" in text


# --- persistence and commands --------------------------------------------------------------------------


def exchange(i: int, **fields: Any) -> Exchange:
    model = fields.pop("model", "gpt-5-mini")
    lane = fields.pop("lane", "primary")
    attempts = fields.pop("attempts", None) or [Attempt(model, "ok", latency_ms=100.0, lane=lane)]
    return Exchange(f"req-{i}", BASE + i, route="chat", lane=lane, model=model, latency_ms=200.0 + i % 40,
                    prompt_tokens=100, completion_tokens=40, cost_usd=0.001, attempts=attempts,
                    signals={"convo_length": 1 + i % 3, "priority": "normal"}, **fields)


def shadow_of(primary: Exchange, latency: float) -> Exchange:
    target = "gemini-2.5-flash-lite"
    return Exchange(f"{primary.request_id}/shadow/{target}", primary.started_at + 0.1, route=primary.route,
                    lane="shadow", model=target, stream=True, latency_ms=latency, cost_usd=0.0002,
                    attempts=[Attempt(target, "ok", latency_ms=latency, lane="shadow")],
                    signals={**primary.signals, "shadow_of": primary.request_id,
                             "primary_model": primary.model, "primary_latency_ms": primary.latency_ms,
                             "primary_ttft_ms": None,
                             "primary_cost_usd": primary.cost_usd, "exact": False, "similarity": 0.7})


def run_cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="laneway")
    add_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code: int = args.func(args)
    return code, out.getvalue()


async def logged(tmp_path: Path, exchanges: list[Exchange]) -> tuple[Telemetry, str]:
    url = f"sqlite:///{tmp_path}/log.sqlite3"
    telemetry = Telemetry(TelemetrySettings(exchange_log=url), simulated=True)
    await telemetry.start()
    for item in exchanges:
        telemetry.record(item)
    await telemetry.aclose()
    return telemetry, url


async def test_shadow_report_from_sqlite_matches_the_in_memory_figures(tmp_path: Path) -> None:
    primaries = [exchange(i) for i in range(45)]
    shadows = [shadow_of(p, 0.5 * p.latency_ms) for p in primaries]
    telemetry, url = await logged(tmp_path, [*primaries, *shadows])
    code, out = await asyncio.to_thread(run_cli, "shadow", "report", "--db", url, "--json")
    assert code == 0
    logged_figures = json.loads(out)["candidates"]["gemini-2.5-flash-lite"]
    live = (await telemetry.shadow_stats())["candidates"]["gemini-2.5-flash-lite"]
    for key in ("pairs", "agreement", "p95_delta_ms", "p95_delta_ci95", "cost_delta_usd", "buckets",
                "routes"):
        assert logged_figures[key] == live[key], key
    assert logged_figures["pairs"] == 45 and logged_figures["p95_delta_pct"] == -50.0
    code, out = await asyncio.to_thread(run_cli, "report", "--db", url, "--json")
    report = json.loads(out)
    assert report["total"]["requests"] == 45 and report["total"]["cost_usd"] == pytest.approx(0.045)
    assert report["shadow"]["cost_usd"] == pytest.approx(45 * 0.0002)
    assert report["total"] == telemetry.stats()["total"]
    code, text = await asyncio.to_thread(run_cli, "shadow", "report", "--db", url)
    assert code == 0 and text.startswith("SIMULATED") and "p95 latency" in text and "convo_length 1-2" in text


# The `exchanges` table as releases before the lane columns created it: one column per value.
LEGACY_TABLE = """CREATE TABLE exchanges (
  request_id TEXT NOT NULL, started_at REAL NOT NULL, path TEXT NOT NULL, conversation_id TEXT, route TEXT,
  lane TEXT NOT NULL, model TEXT, stream INTEGER NOT NULL, status INTEGER NOT NULL, outcome TEXT NOT NULL,
  error TEXT NOT NULL, latency_ms REAL NOT NULL, ttft_ms REAL, upstream_ms REAL NOT NULL, overhead_ms REAL NOT NULL,
  prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost_usd REAL NOT NULL,
  escalation INTEGER NOT NULL, fallbacks INTEGER NOT NULL, simulated INTEGER NOT NULL, attempts TEXT NOT NULL,
  signals TEXT NOT NULL, api_key TEXT, prompt_body TEXT, answer_body TEXT)"""
LEGACY_ROWS = [
    ("old-1", BASE - 10.5, "/v1/chat/completions", "c-9", "chat", "primary", "gpt-5-mini", 1, 200, "ok", "",
     250.0, 80.0, 240.0, 10.0, 100, 40, 0.001, 1, 0, 1,
     '[{"model":"gpt-5-mini","outcome":"ok","latency_ms":240.0,"lane":"primary"}]',
     '{"priority":"high","escalation":true}', "team-a", None, None),
    ("old-2", BASE - 5.0, "/v1/chat/completions", None, None, "primary", None, 0, 502, "upstream_unavailable",
     "no model answered", 31.5, None, 30.0, 1.5, 0, 0, 0.0, 0, 1, 1, "[]", "{}", None, "hi", None),
]


async def test_an_exchange_log_of_an_earlier_release_is_converted_to_records(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(LEGACY_TABLE)
        db.executemany(f"INSERT INTO exchanges VALUES ({', '.join('?' * 26)})", LEGACY_ROWS)
    grounded = exchange(1, retrieval_hits=3, retrieval_ms=2.5, cascade_confidence=0.4)
    await logged(tmp_path, [grounded])
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT type FROM sqlite_master WHERE name = 'exchanges'").fetchone() == ("view",)
        old = db.execute("SELECT * FROM exchanges WHERE request_id LIKE 'old-%' ORDER BY started_at").fetchall()
        assert [without_attempts(r[:26]) for r in old] == [without_attempts(r) for r in LEGACY_ROWS]
        assert [type(v) for v in old[0][:26]] == [type(v) for v in LEGACY_ROWS[0]]  # 250.0 stays a float
        # Every attempt shows every field; those the release did not write are null.
        assert [json.loads(r[21]) for r in old] == [
            [{**dict.fromkeys(ATTEMPT_FIELDS), "model": "gpt-5-mini", "outcome": "ok", "latency_ms": 240.0,
              "lane": "primary"}], []]
        assert [r[26:] for r in old] == [(None, None, None)] * 2  # columns those releases did not have
        stored = db.execute("SELECT cascade_confidence, retrieval_hits, retrieval_ms FROM exchanges "
                            "WHERE request_id = 'req-1'")
        assert stored.fetchall() == [(0.4, 3, 2.5)]
    code, out = await asyncio.to_thread(run_cli, "report", "--db", f"sqlite:///{path}", "--json")
    report = json.loads(out)
    assert code == 0 and report["total"]["requests"] == 3
    assert report["models"]["gpt-5-mini"]["requests"] == 2
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # a view of other columns, as another release made it
        db.execute("DROP VIEW exchanges")
        db.execute("CREATE VIEW exchanges AS SELECT started_at FROM exchange_records")
    await logged(tmp_path, [exchange(2)])
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT * FROM exchanges ORDER BY started_at").fetchall()
        assert len(rows) == 4 and {len(r) for r in rows} == {len(LOG_COLUMNS)}
        assert without_attempts(rows[0][:26]) == without_attempts(LEGACY_ROWS[0])


def without_attempts(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[:21] + row[22:]


async def test_canary_report_reads_entry_lanes_back_from_the_log(tmp_path: Path) -> None:
    canary = "gemini-2.5-flash-lite"
    failed = [Attempt(canary, "upstream_unavailable", lane="canary"), Attempt("gpt-5-mini", "ok")]
    exchanges = [exchange(i) for i in range(40)]
    exchanges += [exchange(100 + i, model=canary, lane="canary") for i in range(35)]
    exchanges += [exchange(200 + i, attempts=failed) for i in range(5)]
    _, url = await logged(tmp_path, exchanges)
    assert rows_of(exchanges[-1:], False)[0].entry_lane == "canary"
    code, out = await asyncio.to_thread(run_cli, "canary", "report", "--db", url, "--json")
    figures = json.loads(out)["routes"]["chat"]
    assert figures["primary"]["requests"] == 40 and figures["canaries"][canary]["requests"] == 40
    assert figures["canaries"][canary]["fallback_rate"] == 0.125
    code, text = await asyncio.to_thread(run_cli, "canary", "report", "--db", url)
    assert code == 0 and f"canary {canary}" in text and "fallback rate +12.5 points" in text


async def test_report_prices_the_cascade_from_the_routing_file(tmp_path: Path) -> None:
    rows = [exchange(i, cascade_confidence=0.9) for i in range(24)]
    rows += [exchange(100 + i, model="gpt-5", lane="cascade", cascade_confidence=0.1) for i in range(10)]
    # Escalations that timed out: the first answer went out, and the escalation model's attempt failed.
    timed_out = [Attempt("gpt-5-mini", "ok"), Attempt("gpt-5", "timeout", lane="cascade")]
    rows += [exchange(200 + i, cascade_confidence=0.2, attempts=timed_out) for i in range(4)]
    # Escalations never sent (the escalation model's breaker was open): only the threshold shows them.
    skipped = [Attempt("gpt-5-mini", "ok"), Attempt("gpt-5", "skipped", lane="cascade")]
    rows += [exchange(300 + i, cascade_confidence=0.3, attempts=skipped) for i in range(2)]
    _, url = await logged(tmp_path, rows)
    config = tmp_path / "lanes.yaml"
    config.write_text("routes:\n- name: chat\n  target: gpt-5-mini\n"
                      "  cascade: {confidence: 0.6, source: logprobs, escalate_to: gpt-5}\n")
    code, out = await asyncio.to_thread(run_cli, "report", "--db", url, "--json", "--config", str(config))
    chat = json.loads(out)["cascade"]["routes"]["chat"]
    assert code == 0 and chat["escalation_rate"] == 0.25 and chat["escalate_to"] == "gpt-5"
    assert chat["escalations_failed"] == 6
    heavy = 40 * load_config(config).models["gpt-5"].price.cost(100, 40)
    assert chat["always_heavy_cost_usd"] == pytest.approx(heavy)
    assert chat["saved_usd"] == pytest.approx(heavy - 40 * 0.001)
    code, text = await asyncio.to_thread(run_cli, "report", "--db", url)
    assert "10 of 40 escalated to gpt-5 (25.0%" in text and "pass it with `--config FILE`" in text
    # Without the routing file's threshold, only the escalations that failed after being sent show.
    assert "4 more escalations failed or were skipped, and kept the first answer" in text


# --- a live shadow lane --------------------------------------------------------------------------------

SHADOW = """
routes:
- name: chat
  target: gpt-5-mini
  shadow: [{target: gemini-2.5-flash-lite, sample: 1.0}]
"""


def send(url: str, content: str) -> dict[str, str]:
    payload = {"model": "laneway", "messages": [{"role": "user", "content": content}]}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(payload).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        return dict(response.headers)


def test_live_shadow_lane_reports_flash_lite_faster_and_cheaper(sim_url: str) -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None), simulated=True)
    with live_gateway(SHADOW, sim_url, telemetry=telemetry) as live, ThreadPoolExecutor(8) as pool:
        heads = list(pool.map(lambda i: send(live.url, f"where is my order number {i}?"), range(40)))

        async def pairs() -> int:
            candidates = (await telemetry.shadow_stats())["candidates"]
            return int(candidates.get("gemini-2.5-flash-lite", {}).get("pairs", 0))

        deadline = time.monotonic() + 20
        while live.call(pairs()) < 40:
            assert time.monotonic() < deadline, "shadow calls did not finish"
            time.sleep(0.05)

        async def figures() -> tuple[dict[str, Any], dict[str, Any]]:
            return await telemetry.shadow_stats(), telemetry.stats()

        shadow, stats = live.call(figures())
    assert {h["x-laneway-model"] for h in heads} == {"gpt-5-mini"}
    lite = shadow["candidates"]["gemini-2.5-flash-lite"]
    assert lite["pairs"] == 40 and lite["dropped"] == 0 and lite["enough_samples"]
    assert lite["p95_delta_ms"] < 0 and lite["cost_delta_usd"] < 0
    assert lite["primary_models"] == {"gpt-5-mini": 40}
    assert stats["total"]["requests"] == 40 and set(stats["models"]) == {"gpt-5-mini"}
    assert stats["shadow"]["requests"] == 40
    billed = sum(float(h["x-laneway-cost-usd"]) for h in heads)
    assert stats["total"]["cost_usd"] == pytest.approx(billed, abs=1e-6)


@pytest.mark.parametrize("command", [("report",), ("shadow", "report"), ("canary", "report")])
def test_a_log_path_given_without_its_url_scheme_is_answered_with_the_url_to_use(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]) -> None:
    """A misused option, as the others are: exit code 2 (it was 1, which says the log could not be read)."""
    path = tmp_path / "log.sqlite3"
    path.write_bytes(b"")
    assert run_cli(*command, "--db", str(path))[0] == 2
    assert "is not an exchange log URL" in (err := capsys.readouterr().err)
    assert f"`--db sqlite:///{path}`" in err
    assert run_cli(*command, "--db", "mysql://user:secret@db/log")[0] == 2
    err = capsys.readouterr().err
    assert "`mysql://user:***@db/log` is not an exchange log URL" in err and "secret" not in err


def test_a_candidate_that_failed_every_call_says_so_in_its_sentence() -> None:
    rows = [shadow_row(i, latency=400.0, primary_latency=100.0, outcome="model_inference_deadline_exceeded")
            for i in range(4)]
    figures = shadow_comparison(rows, {"gemini-2.5-flash-lite": 15})
    sentence = figures["candidates"]["gemini-2.5-flash-lite"]["verdict"]
    assert "4 pairs, 15 dropped; no answered pairs yet: every one failed (errors 100.0 %)" in sentence
