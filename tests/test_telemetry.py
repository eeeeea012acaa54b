"""Telemetry: settings, summaries, Prometheus metrics, the SQLite exchange log and `laneway report`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _live import live_gateway
from _pg import (
    BASE_TIME,
    EVERY_FIELD_ATTEMPTS,
    MODELS,
    assert_same_counts,
    log_and_roll_up_mixed_exchanges,
    make_exchange,
    report,
    samples,
    total,
)
from laneway.errors import ConfigError
from laneway.exchange import Attempt, Exchange
from laneway.telemetry import (
    FAMILIES,
    Telemetry,
    TelemetrySettings,
    parse_telemetry,
    percentile,
)
from laneway.telemetry import _telemetry as telemetry_module
from laneway.telemetry._html_report import cost_plot
from laneway.telemetry._records import fallbacks_of
from laneway.telemetry._sqlite import WRITER_NICENESS, SqliteStore
from laneway.telemetry._store import open_store
from laneway.telemetry._summary import summarize
from laneway.telemetry._telemetry import Window
from laneway.telemetry._window import RecentExchanges, rows_of


def sqlite_settings(tmp_path: Path, **changes: object) -> TelemetrySettings:
    return TelemetrySettings(exchange_log=f"sqlite:///{tmp_path}/log.sqlite3", **changes)  # type: ignore[arg-type]


def test_parse_telemetry_builds_frozen_settings() -> None:
    assert parse_telemetry(None) == TelemetrySettings()
    settings = parse_telemetry(
        {
            "exchange_log": "postgresql://gw@db:5432/laneway",
            "store_bodies": True,
            "batch_size": 50,
            "metrics": False,
        }
    )
    assert (settings.exchange_log, settings.store_bodies, settings.batch_size, settings.metrics) == (
        "postgresql://gw@db:5432/laneway",
        True,
        50,
        False,
    )
    assert parse_telemetry({"exchange_log": None}).exchange_log is None


def test_parse_telemetry_reports_every_problem_with_its_path() -> None:
    raw = {
        "metrcs": True,
        "store_bodies": "yes",
        "batch_size": 0,
        "exchange_log": "mysql://x",
        "buffer_limit": 1.5,
    }
    with pytest.raises(ConfigError) as caught:
        parse_telemetry(raw, "config.telemetry")
    issues = {issue.path: issue.message for issue in caught.value.issues}
    assert set(issues) == {f"config.telemetry.{key}" for key in raw}
    assert "`metrics`" in issues["config.telemetry.metrcs"]
    assert "sqlite:///" in issues["config.telemetry.exchange_log"]
    with pytest.raises(ConfigError):
        parse_telemetry(["metrics"])


@pytest.mark.parametrize("url", ["sqlite:////", "sqlite:///", "sqlite:///var/logs/"])
def test_an_sqlite_log_url_without_a_file_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"telemetry\.exchange_log: .* names no file; use `sqlite:///relative"):
        parse_telemetry({"exchange_log": url})


@given(
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200),
    st.sampled_from([0.5, 0.95, 0.99]),
)
def test_percentile_interpolates_like_numpy(values: list[float], q: float) -> None:
    assert percentile(sorted(values), q) == pytest.approx(
        float(np.percentile(values, q * 100)), rel=1e-9, abs=1e-9
    )


def test_summary_rates_costs_and_escalation_throughput() -> None:
    exchanges = [make_exchange(i) for i in range(600)]  # 600 x 0.5 s = 5 minutes
    summary = summarize(
        rows_of(exchanges, simulated=False), since=BASE_TIME, until=BASE_TIME + 300
    )
    model = MODELS[0]
    mine = [e for e in exchanges if e.model == model]
    figures = summary["models"][model]
    assert figures["requests"] == len(mine)
    assert figures["errors"] == figures["timeouts"] == sum(e.outcome != "ok" for e in mine)
    escalated_ok = sum(e.outcome == "ok" and e.signals["escalation"] for e in mine)
    assert figures["escalated_ok_per_min"] == pytest.approx(escalated_ok / 5.0, abs=1e-4)
    conversations = {e.conversation_id for e in mine if e.conversation_id} | {
        e.request_id for e in mine if e.conversation_id is None
    }
    cost = sum(e.cost_usd for e in mine)
    assert figures["cost_per_conversation_usd"] == pytest.approx(cost / len(conversations), abs=1e-6)
    tokens = sum(e.prompt_tokens + e.completion_tokens for e in mine)
    assert figures["cost_per_1k_tokens_usd"] == pytest.approx(cost * 1000 / tokens, abs=1e-6)
    assert figures["p95_ms"] == pytest.approx(np.percentile([e.latency_ms for e in mine], 95), abs=1e-3)
    assert sum(g["share"] for g in summary["routes"].values()) == pytest.approx(1.0)
    assert summary["total"]["requests"] == 600


async def test_metrics_pass_promtool_and_account_for_every_exchange() -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))
    exchanges = [make_exchange(i) for i in range(300)]
    for exchange in exchanges:
        telemetry.record(exchange)
    telemetry.count("cooldown", "heavy-foundation")
    telemetry.observe_queue_wait("heavy-foundation", 0.3)
    text = telemetry.render_metrics()
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus"
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    declared = Counter(line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE"))
    assert set(declared) == set(FAMILIES) - {n for n in FAMILIES if n.startswith("laneway_exchange_log_")}
    assert set(declared.values()) == {1}
    assert total(text, "laneway_requests_total") == 300
    assert total(text, "laneway_requests_total", outcome="model_inference_deadline_exceeded") == sum(
        e.outcome != "ok" for e in exchanges
    )
    assert total(text, "laneway_request_latency_seconds_count") == 300
    assert total(text, "laneway_request_latency_seconds_sum") == pytest.approx(
        sum(e.latency_ms for e in exchanges) / 1000
    )
    assert total(text, "laneway_time_to_first_token_seconds_count") == sum(
        e.ttft_ms is not None for e in exchanges
    )
    assert total(text, "laneway_gateway_overhead_seconds_sum") == pytest.approx(
        sum(e.overhead_ms for e in exchanges) / 1000
    )
    assert total(text, "laneway_cost_usd_total") == pytest.approx(sum(e.cost_usd for e in exchanges))
    assert total(text, "laneway_completion_tokens_total") == sum(e.completion_tokens for e in exchanges)
    assert total(text, "laneway_fallbacks_total") == sum(len(e.attempts) - 1 for e in exchanges)
    assert total(text, "laneway_attempts_total", outcome="upstream_unavailable") == sum(
        i % 7 == 0 for i in range(300)
    )
    assert total(text, "laneway_model_events_total", event="cooldown", model="heavy-foundation") == 1
    assert total(text, "laneway_queue_wait_seconds_bucket", le="0.5") == 1
    assert total(text, "laneway_queue_wait_seconds_bucket", le="0.25") == 0


async def test_overflowing_the_log_buffer_drops_from_the_log_only_and_counts(tmp_path: Path) -> None:
    """`buffer_limit` bounds what waits to be written: past it, exchanges miss the log (counted), never the
    metrics or the figures of `/admin/stats`."""
    db = tmp_path / "small.sqlite3"
    telemetry = Telemetry(TelemetrySettings(exchange_log=f"sqlite:///{db}", buffer_limit=10))
    await telemetry.start()
    for i in range(15):
        telemetry.record(make_exchange(i))
    text = telemetry.render_metrics()
    figures = telemetry.stats()
    await telemetry.aclose()
    assert total(text, "laneway_exchanges_dropped_total") == 5
    assert total(text, "laneway_requests_total") == 15
    assert figures["total"]["requests"] == 15 and figures["log"]["dropped"] == 5
    with contextlib.closing(sqlite3.connect(db)) as connection:
        assert connection.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 10


def test_a_drain_that_falls_behind_is_caught_up_by_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the drain task starved, what waits for it stays bounded, and every exchange is still counted."""
    from laneway.telemetry import _telemetry

    monkeypatch.setattr(_telemetry, "PENDING_LIMIT", 100)
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))  # not started: no drain task runs
    for i in range(1_000):
        telemetry.record(make_exchange(i))
        assert len(telemetry._pending) <= 101
    assert total(telemetry.render_metrics(), "laneway_requests_total") == 1_000


def metric_mix() -> list[Exchange]:
    """Exchanges for every path into the metrics: fallbacks, timeouts, streams, a shadow, an exchange
    with no attempt, a cascade whose first answer another model billed, and retrievals."""
    cascade = Exchange("cascade-1", BASE_TIME, route="billing", lane="cascade", model="gpt-5", cost_usd=0.0112,
                       latency_ms=900.0, upstream_ms=899.6, attempts=[
                           Attempt("gpt-5-mini", "ok", cost_usd=0.001), Attempt("grader", "ok", cost_usd=0.0002,
                                                                                 lane="verifier"),
                           Attempt("gpt-5", "ok", cost_usd=0.01, lane="cascade")])
    retrievals = [Exchange(f"kb-{i}", BASE_TIME, route="billing", model="gpt-5", latency_ms=300.0,
                           retrieval_hits=i % 3, retrieval_ms=None if i == 4 else 0.2 * i,
                           attempts=[Attempt("gpt-5", "ok")]) for i in range(5)]
    return [make_exchange(i) for i in range(1_100)] + odd_exchanges() + [cascade, *retrievals]


def metric_samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in samples(text)
            if not name.startswith(("laneway_exchange", "laneway_model_events"))}


@pytest.mark.parametrize("stats_window", [1, 5, 600, 10_000])
def test_metrics_count_every_exchange_whatever_the_window_and_the_scrapes(stats_window: int) -> None:
    """The metrics count every exchange, whatever the window behind `stats()` keeps and however often
    they are scraped, cascades' costs billed to the models that ran them."""
    exchanges = metric_mix()
    once = Telemetry(TelemetrySettings(exchange_log=None))
    telemetry = Telemetry(TelemetrySettings(exchange_log=None, stats_window=stats_window))
    for n, exchange in enumerate(exchanges):
        once.record(exchange)
        telemetry.record(exchange)
        if n in (3, 700, 701):
            telemetry.render_metrics()  # a scrape amid the traffic
    text = telemetry.render_metrics()
    got, want = metric_samples(text), metric_samples(once.render_metrics())
    assert got.keys() == want.keys()
    assert got == pytest.approx(want, rel=1e-12)
    per_series = Counter((e.model or "", e.route or "", e.lane, e.outcome) for e in exchanges)
    assert {(labels["model"], labels["route"], labels["lane"], labels["outcome"]): int(value)
            for name, labels, value in samples(text) if name == "laneway_requests_total"} == per_series
    attempts = Counter((a.model, a.outcome) for e in exchanges for a in e.attempts)
    assert {(labels["model"], labels["outcome"]): int(value)
            for name, labels, value in samples(text) if name == "laneway_attempts_total"} == attempts
    # The cascade's first answer and its grade are billed to their models, not to the one that answered.
    assert total(text, "laneway_cost_usd_total", model="gpt-5-mini", route="billing") == pytest.approx(0.001)
    assert total(text, "laneway_cost_usd_total", model="grader", lane="verifier") == pytest.approx(0.0002)
    assert total(text, "laneway_cost_usd_total", model="gpt-5", route="billing") == pytest.approx(0.01)
    assert total(text, "laneway_cost_usd_total") == pytest.approx(sum(e.cost_usd for e in exchanges))
    assert total(text, "laneway_retrieval_total", route="billing", result="hit") == 3
    assert total(text, "laneway_retrieval_total", route="billing", result="miss") == 2
    assert total(text, "laneway_retrieval_total", result="miss") == 3  # odd_exchanges()' too
    assert total(text, "laneway_retrieval_seconds_count") == 5
    assert total(text, "laneway_time_to_first_token_seconds_count") == sum(e.ttft_ms is not None for e in exchanges)
    # A value equal to a bucket's bound counts under it.
    assert total(text, "laneway_request_latency_seconds_bucket", le="0.25") == sum(
        e.latency_ms / 1000 <= 0.25 for e in exchanges)
    assert total(text, "laneway_request_latency_seconds_sum") == pytest.approx(
        sum(e.latency_ms for e in exchanges) / 1000)
    # The window itself still holds the last `stats_window` exchanges, the shadow apart.
    assert len(telemetry.window().rows) == min(stats_window, len(exchanges) - 1)


def count_rows(tmp_path: Path, sql: str = "SELECT count(*) FROM exchanges") -> int:
    with sqlite3.connect(tmp_path / "log.sqlite3") as db:
        value: int = db.execute(sql).fetchone()[0]
    return value


async def test_a_burst_of_10000_exchanges_all_lands(tmp_path: Path) -> None:
    telemetry = Telemetry(sqlite_settings(tmp_path))
    await telemetry.start()
    for i in range(10_000):
        telemetry.record(make_exchange(i))
    await telemetry.aclose()
    assert count_rows(tmp_path) == 10_000
    assert count_rows(tmp_path, "SELECT sum(json_array_length(attempts)) FROM exchanges") == 10_000 + len(
        range(0, 10_000, 7)
    )
    assert total(telemetry.render_metrics(), "laneway_exchange_log_written_total") == 10_000
    assert count_rows(tmp_path, "SELECT count(*) FROM pragma_journal_mode WHERE journal_mode = 'wal'") == 1


def odd_exchanges() -> list[Exchange]:
    """Exchanges whose optional fields are absent, zero or present: what the log's NULL stand-ins must
    survive. The first has no attempt at all (rejected before any call)."""
    bare = Exchange("odd-0", BASE_TIME, route=None, model=None, status=429, outcome="rate_limited")
    full = make_exchange(3, escalation=True)
    full.cascade_confidence, full.retrieval_hits, full.retrieval_ms, full.api_key = 0.0, 0, 0.0, "team-a"
    full.stream, full.ttft_ms = True, 0.0
    shadow = Exchange("odd-2/shadow/x", BASE_TIME + 1, route="r", lane="shadow", model="x", latency_ms=5.0,
                      attempts=[Attempt("x", "ok", lane="shadow")], signals={"shadow_of": "odd-2", "n": 1})
    return [bare, full, shadow, make_exchange(5), make_exchange(7)]


async def test_rows_read_back_from_the_log_equal_the_rows_in_memory(tmp_path: Path) -> None:
    exchanges = odd_exchanges()
    telemetry = Telemetry(sqlite_settings(tmp_path), simulated=True)
    await telemetry.start()
    for exchange in exchanges:
        telemetry.record(exchange)
    await telemetry.aclose()
    store = open_store(f"sqlite:///{tmp_path}/log.sqlite3")
    logged, _ = await store.fetch(None, None)
    await store.aclose()
    expected = rows_of(exchanges, simulated=True)
    assert sorted(logged, key=lambda r: r.started_at) == sorted(expected, key=lambda r: r.started_at)
    window = telemetry.stats()["total"]
    assert window["requests"] == len(exchanges) - 1  # the window behind `stats()` too (shadows apart)
    assert expected[0].model is None and expected[0].entry_model is None and expected[0].ttft_ms is None
    assert expected[1].retrieval_hits == 0 and expected[1].cascade_confidence == 0.0 and expected[1].escalation
    assert expected[2].signals == {"shadow_of": "odd-2", "n": 1} and expected[2].entry_lane == "shadow"
    nulls = "SELECT count(*) FROM exchanges WHERE {} IS NULL"
    assert count_rows(tmp_path, nulls.format("model")) == 1
    assert count_rows(tmp_path, nulls.format("retrieval_hits")) == len(exchanges) - 1
    assert count_rows(tmp_path, nulls.format("api_key")) == len(exchanges) - 1
    assert count_rows(tmp_path, "SELECT sum(stream) + sum(escalation) FROM exchanges") == 2


def test_the_window_keeps_the_latest_rows_oldest_first_and_absent_numbers_absent() -> None:
    window = RecentExchanges(3)
    assert len(window) == 0 and window.rows() == []
    exchanges = odd_exchanges()  # 5 exchanges: absent, zero and present optional numbers
    for exchange in exchanges:
        window.add(exchange, fallbacks_of(exchange), False)
    rows = window.rows()
    assert len(window) == 3
    assert [r.started_at for r in rows] == [e.started_at for e in exchanges[2:]]
    assert rows == rows_of(exchanges, simulated=False)[2:]
    assert rows[0].signals == {"shadow_of": "odd-2", "n": 1} and rows[1].signals is None
    first_two = RecentExchanges(5)
    for exchange in exchanges[:2]:
        first_two.add(exchange, 0, True)
    none, zeros = first_two.rows()
    assert none.ttft_ms is None and none.retrieval_hits is None and none.cascade_confidence is None
    assert zeros.ttft_ms == 0.0 and zeros.retrieval_hits == 0 and zeros.cascade_confidence == 0.0
    assert none.simulated and zeros.escalation and not none.escalation
    empty = RecentExchanges(0)
    empty.add(exchanges[0], 0, False)
    assert empty.rows() == []


async def test_attempts_read_back_from_the_sqlite_view_as_objects_of_every_field(tmp_path: Path) -> None:
    telemetry = Telemetry(sqlite_settings(tmp_path))
    await telemetry.start()
    telemetry.record(Exchange("r-1", BASE_TIME, model="m-b", attempts=list(EVERY_FIELD_ATTEMPTS)))
    telemetry.record(Exchange("r-2", BASE_TIME + 1, outcome="bad_request", status=400))
    await telemetry.aclose()
    with contextlib.closing(sqlite3.connect(tmp_path / "log.sqlite3")) as db:
        rows = db.execute("SELECT attempts, json_extract(attempts, '$[1].lane') FROM exchanges ORDER BY started_at")
        (first, lane), (none, _) = rows.fetchall()
        # Stored as arrays of values, in the order of the fields.
        stored = db.execute("SELECT json_extract(record, '$[21][0]') FROM exchange_records ORDER BY started_at")
        assert json.loads(stored.fetchone()[0]) == list(dataclasses.astuple(EVERY_FIELD_ATTEMPTS[0]))
    assert json.loads(first) == [dataclasses.asdict(a) for a in EVERY_FIELD_ATTEMPTS]
    assert lane == "fallback" and json.loads(none) == []


async def test_a_log_of_records_with_attempts_as_objects_is_converted(tmp_path: Path) -> None:
    """The release before kept each attempt as an object in the record; such a log keeps working."""
    failed_then_ok = Exchange("r-1", BASE_TIME, model="m-b", route="chat", cost_usd=0.0021,
                              attempts=list(EVERY_FIELD_ATTEMPTS))
    await log_exchanges(tmp_path, [failed_then_ok])
    path = tmp_path / "log.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        (record,) = db.execute("SELECT record FROM exchange_records").fetchone()
        values = json.loads(record)
        values[21] = [dataclasses.asdict(a) for a in EVERY_FIELD_ATTEMPTS]  # as that release wrote it
        db.execute("UPDATE exchange_records SET record = ?", (json.dumps(values),))
        db.execute("DROP VIEW exchanges")
        db.execute("CREATE VIEW exchanges AS SELECT started_at FROM exchange_records")  # that release's differed
    await log_exchanges(tmp_path, [Exchange("r-2", BASE_TIME + 1, model="m-a", attempts=[Attempt("m-a", "ok")])])
    with contextlib.closing(sqlite3.connect(path)) as db:
        stored = db.execute("SELECT json_extract(record, '$[21]') FROM exchange_records ORDER BY started_at")
        assert [json.loads(a) for (a,) in stored] == [[list(dataclasses.astuple(a)) for a in EVERY_FIELD_ATTEMPTS],
                                                      [["m-a", "ok", *list(dataclasses.astuple(Attempt("", "")))[2:]]]]
        (attempts,) = db.execute("SELECT attempts FROM exchanges WHERE request_id = 'r-1'").fetchone()
    assert json.loads(attempts) == [dataclasses.asdict(a) for a in EVERY_FIELD_ATTEMPTS]
    assert await report_to(tmp_path / "out.json", "--db", f"sqlite:///{path}", "--json") == 0
    figures = json.loads((tmp_path / "out.json").read_text())
    assert figures["models"]["m-a"]["failed_attempts"] == 1 and figures["total"]["requests"] == 2


async def log_exchanges(tmp_path: Path, exchanges: list[Exchange]) -> None:
    telemetry = Telemetry(sqlite_settings(tmp_path))
    await telemetry.start()
    for exchange in exchanges:
        telemetry.record(exchange)
    await telemetry.aclose()


async def test_the_log_is_written_while_exchanges_keep_arriving(tmp_path: Path) -> None:
    """Exchanges arriving faster than one slice per pause drains them (a saturated gateway) never let
    the buffer run empty: the log must be written all the same."""
    telemetry = Telemetry(sqlite_settings(tmp_path, flush_interval_ms=20))
    await telemetry.start()
    sent, deadline = 0, time.monotonic() + 5
    while telemetry.health.written == 0 and time.monotonic() < deadline:
        for _ in range(50):
            telemetry.record(make_exchange(sent))
            sent += 1
        await asyncio.sleep(0.001)
    written = telemetry.health.written
    await telemetry.aclose()
    assert written > 0, f"nothing written while {sent} exchanges arrived"
    assert count_rows(tmp_path) == sent


async def test_the_drain_keeps_its_pace_while_a_log_write_waits(tmp_path: Path) -> None:
    """A write held up (here by another connection's lock on the file) must not hold up the drain
    into the metrics, the window and the log's backlog."""
    telemetry = Telemetry(sqlite_settings(tmp_path, flush_interval_ms=20))
    await telemetry.start()
    await telemetry.flush()  # the log file exists
    other = sqlite3.connect(tmp_path / "log.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        for i in range(100):
            telemetry.record(make_exchange(i))
        await asyncio.sleep(0.2)  # drained and offered; the write that started waits for the lock
        for i in range(100, 250):
            telemetry.record(make_exchange(i))
        await asyncio.sleep(0.2)
        backlog, written = telemetry.health.backlog, telemetry.health.written
    finally:
        other.execute("ROLLBACK")
        other.close()
    await telemetry.aclose()
    assert (backlog, written) == (250, 0)
    assert count_rows(tmp_path) == 250


async def test_aclose_flushes_what_the_background_writer_has_not_written(tmp_path: Path) -> None:
    telemetry = Telemetry(sqlite_settings(tmp_path, flush_interval_ms=600_000))
    await telemetry.start()
    for i in range(25):
        telemetry.record(make_exchange(i))
    assert count_rows(tmp_path) == 0
    await telemetry.aclose()
    assert count_rows(tmp_path) == 25


async def test_bodies_are_stored_only_when_enabled_and_capped(tmp_path: Path) -> None:
    for store, folder in ((False, tmp_path / "off"), (True, tmp_path / "on")):
        telemetry = Telemetry(sqlite_settings(folder, store_bodies=store, body_cap_bytes=8))
        await telemetry.start()
        telemetry.record(dataclasses.replace(make_exchange(1), prompt_body="héllo wörld", answer_body="short"))
        await telemetry.aclose()
        with sqlite3.connect(folder / "log.sqlite3") as db:
            stored = db.execute("SELECT prompt_body, answer_body FROM exchanges").fetchone()
        assert stored == (("héllo w", "short") if store else (None, None))


async def test_retention_rolls_old_rows_into_hourly_aggregates(tmp_path: Path) -> None:
    now = BASE_TIME + 86_400
    old = [make_exchange(i, started_at=now - 40 * 86_400) for i in range(500)]
    recent = [make_exchange(i + 500, started_at=now - 3600) for i in range(100)]
    telemetry = Telemetry(sqlite_settings(tmp_path, retention_days=30))
    await telemetry.start()
    for exchange in old + recent:
        telemetry.record(exchange)
    assert await telemetry.roll_up(now) == 500
    await telemetry.aclose()
    assert count_rows(tmp_path) == 100
    assert count_rows(tmp_path, "SELECT sum(requests) FROM exchanges_hourly") == 500
    out = tmp_path / "report.json"
    assert await report_to(out, "--db", f"sqlite:///{tmp_path}/log.sqlite3", "--json") == 0
    figures = json.loads(out.read_text())
    assert figures["total"]["requests"] == 600
    assert figures["total"]["cost_usd"] == pytest.approx(sum(e.cost_usd for e in old + recent), abs=1e-6)
    assert figures["total"]["errors"] == sum(e.outcome != "ok" for e in old + recent)
    assert figures["total"]["latency_samples"] == 100


async def test_a_rolled_up_hour_counts_once_in_the_window_that_holds_its_start(tmp_path: Path) -> None:
    now = BASE_TIME + 86_400
    hour = now - 40 * 86_400  # an hour's start: its 200 exchanges are rolled up into one hourly row
    telemetry = Telemetry(sqlite_settings(tmp_path, retention_days=30))
    await telemetry.start()
    for i in range(200):
        telemetry.record(make_exchange(i, started_at=hour + 900 + i))
    assert await telemetry.roll_up(now) == 200
    await telemetry.aclose()
    db = f"sqlite:///{tmp_path}/log.sqlite3"

    async def requests(since: float, until: float, *compare: str) -> tuple[int, ...]:
        out = tmp_path / "report.json"
        assert await report_to(out, "--db", db, "--since", iso(since), "--until", iso(until), *compare, "--json") == 0
        figures = json.loads(out.read_text())
        windows = [figures, *([figures["compare"]] if compare else [])]
        assert all(w["window"]["rolled_up_requests"] == w["total"]["requests"] for w in windows)
        return tuple(w["total"]["requests"] for w in windows)

    assert await requests(hour + 600, hour + 1200) == (0,)  # inside the hour, after its start
    assert await requests(hour - 1800, hour + 1800) == (200,)
    # before and after a point inside the hour: counted in one of them, not in both
    assert await requests(hour + 1800, hour + 3600, "--compare-since", iso(hour - 3600)) == (0, 200)


async def test_hourly_roll_ups_keep_each_models_failed_attempts_and_what_it_billed(tmp_path: Path) -> None:
    raw = await log_and_roll_up_mixed_exchanges(sqlite_settings(tmp_path))
    out = tmp_path / "report.json"
    assert await report_to(out, "--db", f"sqlite:///{tmp_path}/log.sqlite3", "--json") == 0
    rolled = json.loads(out.read_text())
    assert rolled["total"]["latency_samples"] == 0  # every figure below comes from the hourly rows
    assert_same_counts(raw, rolled)


async def test_a_log_without_hourly_failed_attempts_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite3"
    telemetry = Telemetry(sqlite_settings(tmp_path, retention_days=1))
    await telemetry.start()
    telemetry.record(make_exchange(1, started_at=time.time()))  # answered at once: no failed attempt
    await telemetry.aclose()
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # the hourly table as earlier releases made it
        db.execute("DROP TABLE exchanges_hourly")
        db.execute("CREATE TABLE exchanges_hourly (hour REAL NOT NULL, model TEXT NOT NULL, route TEXT NOT NULL, "
                   "lane TEXT NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL, timeouts INTEGER NOT "
                   "NULL, escalated_ok INTEGER NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, "
                   "conversations INTEGER NOT NULL, fallbacks INTEGER NOT NULL, simulated INTEGER NOT NULL, "
                   "cost_usd REAL NOT NULL, PRIMARY KEY (hour, model, route, lane))")
        db.execute("INSERT INTO exchanges_hourly VALUES (?, 'm', 'r', 'primary', 5, 1, 0, 0, 10, 20, 5, 0, 0, 0.5)",
                   (BASE_TIME - 7200,))
    out = tmp_path / "report.json"
    assert await report_to(out, "--db", f"sqlite:///{path}", "--json") == 0
    figures = json.loads(out.read_text())
    assert figures["total"]["requests"] == 6 and figures["total"]["failed_attempts"] == 0
    telemetry = Telemetry(sqlite_settings(tmp_path, retention_days=1))
    await telemetry.start()
    telemetry.record(make_exchange(7, started_at=BASE_TIME - 3 * 86_400))  # one failed attempt
    await telemetry.roll_up(BASE_TIME)
    await telemetry.aclose()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT sum(failed_attempts), sum(requests) FROM exchanges_hourly").fetchone() == (1, 6)
        assert db.execute("SELECT sum(retrievals), sum(retrieval_hits) FROM exchanges_hourly").fetchone() == (0, 0)
        assert db.execute("SELECT count(*) FROM exchanges").fetchone() == (1,)


async def report_to(path: Path, *argv: str) -> int:
    """Run `laneway report` (which runs its own event loop) in a thread, its output into `path`."""

    def run() -> int:
        with path.open("w") as sink, contextlib.redirect_stdout(sink):
            return report(*argv)

    return await asyncio.to_thread(run)


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


async def test_report_json_gives_the_same_numbers_as_stats(tmp_path: Path) -> None:
    telemetry = Telemetry(sqlite_settings(tmp_path), simulated=True)
    await telemetry.start()
    for i in range(1200):
        telemetry.record(make_exchange(i))
    await telemetry.aclose()
    db = f"sqlite:///{tmp_path}/log.sqlite3"
    since, until = BASE_TIME + 100, BASE_TIME + 400
    for argv, expected in (
        (("--db", db, "--json"), telemetry.stats()),
        (("--db", db, "--json", "--since", iso(since), "--until", iso(until)), telemetry.stats(since, until)),
    ):
        assert await report_to(tmp_path / "out.json", *argv) == 0
        figures = json.loads((tmp_path / "out.json").read_text())
        for key in ("total", "models", "routes", "window", "simulated"):
            assert figures[key] == expected[key], key
    assert telemetry.stats(since, until)["total"]["requests"] == 600
    assert telemetry.stats()["simulated"] is True


async def test_report_writes_tables_and_a_self_contained_html_file(tmp_path: Path) -> None:
    telemetry = Telemetry(sqlite_settings(tmp_path), simulated=True)
    await telemetry.start()
    for i in range(300):
        telemetry.record(make_exchange(i))
    await telemetry.aclose()
    db = f"sqlite:///{tmp_path}/log.sqlite3"
    out, page = tmp_path / "out.txt", tmp_path / "report.html"
    assert (
        await report_to(
            out,
            "--db",
            db,
            "--html",
            str(page),
            "--since",
            iso(BASE_TIME + 60),
            "--compare-since",
            iso(BASE_TIME),
            "--compare-until",
            iso(BASE_TIME + 60),
        )
        == 0
    )
    text = out.read_text()
    assert "SIMULATED: 180 of 180" in text and "baseline:" in text
    for name in MODELS:
        assert re.search(rf"^{re.escape(name)}\s+\d+\.\d%\s+60\s", text, re.M), text
    html = page.read_text()
    assert html.count("<svg") == len(MODELS) + 1 and html.count("<polyline") == len(MODELS)
    assert "simulated fleet" in html
    assert not re.search(r"(src|href)=|@import|url\(|https://", html)


def test_report_explains_a_missing_log_and_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report("--db", f"sqlite:///{tmp_path}/nothing.sqlite3") == 1
    assert "--db" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report("--last", "yesterday")
    assert "1h" in capsys.readouterr().err


def test_metrics_off_turns_every_live_figure_off(sim_url: str) -> None:
    telemetry = Telemetry(TelemetrySettings(metrics=False, exchange_log=None))
    config = "routes:\n- name: chat\n  target: gpt-5-mini\n"
    with live_gateway(config, sim_url, telemetry=telemetry) as live:
        body = json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hi"}]}).encode()
        with urllib.request.urlopen(urllib.request.Request(live.url + "/v1/chat/completions", data=body)) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(live.url + "/metrics") as answer:
            assert answer.read().startswith(b"# metrics are turned off")
        for path in ("/admin/stats", "/admin/shadow", "/dashboard"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(live.url + path)
            assert refused.value.code == 404, path
            assert "telemetry.metrics: false" in json.loads(refused.value.read())["error"]["message"]


async def test_the_sqlite_writer_thread_runs_below_the_event_loop(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/log.sqlite3")
    await store.open()
    writer = await store._run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    await store.aclose()
    loop = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert writer == min(19, loop + WRITER_NICENESS) > loop


@pytest.mark.parametrize(("attempts", "hand_overs"), [
    ([("gpt-5", "upstream_unavailable", "primary"), ("gpt-5", "ok", "primary")], 0),  # a retry
    ([("gpt-5", "upstream_unavailable", "primary"), ("gpt-5", "upstream_unavailable", "primary"),
      ("claude-sonnet-37", "ok", "fallback")], 1),
    ([("canary-model", "upstream_unavailable", "canary"), ("gpt-5", "ok", "primary")], 1),
    ([("gpt-5-mini", "ok", "primary"), ("grader", "ok", "verifier"), ("gpt-5", "ok", "cascade")], 0),
    ([("gpt-5-mini", "ok", "primary"), ("gpt-5", "upstream_unavailable", "cascade"),
      ("claude-sonnet-37", "ok", "fallback")], 1),
])
def test_fallbacks_count_hand_overs_to_another_model_not_retries(attempts: list[tuple[str, str, str]],
                                                                 hand_overs: int) -> None:
    exchange = Exchange("r", BASE_TIME, model=attempts[-1][0], lane=attempts[-1][2],
                        attempts=[Attempt(model, outcome, lane=lane) for model, outcome, lane in attempts])
    assert fallbacks_of(exchange) == hand_overs
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))
    telemetry.record(exchange)
    assert total(telemetry.render_metrics(), "laneway_fallbacks_total") == hand_overs
    assert telemetry.stats()["total"]["fallbacks"] == hand_overs


def test_the_cost_plot_of_a_window_within_one_time_bucket_shows_its_points() -> None:
    """A line through one point draws nothing: each model's cost must still show."""
    rows = rows_of([make_exchange(i, started_at=BASE_TIME + i) for i in range(9)], False)
    plot = cost_plot(rows, [])
    assert plot.count("<polyline") == len(MODELS)
    dots = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="2.5" fill="(#[0-9a-f]{6})"/>', plot)
    assert len(dots) == len(MODELS) and len({colour for _, _, colour in dots}) == len(MODELS)


async def test_stats_asked_from_before_what_a_full_window_holds_start_at_its_oldest_and_say_so() -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None, stats_window=10))
    await telemetry.start()
    try:
        for i in range(50):
            telemetry.record(make_exchange(i))  # one every 0.5 s from BASE_TIME
        asked = telemetry.stats(since=BASE_TIME)
        recent = telemetry.stats(since=BASE_TIME + 22.5)
        whole = telemetry.stats()
        snapshot = Window.decode(await telemetry.window_snapshot())
        peers = await telemetry.stats_off_loop(since=BASE_TIME, peers=[snapshot])
    finally:
        await telemetry.aclose()
    # The window holds the last 10 (from BASE_TIME + 20): the figures are theirs, over their span.
    assert asked["total"]["requests"] == 10
    assert asked["window"]["since"] == BASE_TIME + 20 and asked["window"]["truncated"] is True
    assert asked["window"]["asked_since"] == BASE_TIME
    assert (recent["total"]["requests"], recent["window"]["truncated"]) == (5, False)
    assert (whole["total"]["requests"], whole["window"]["truncated"]) == (10, False)
    assert peers["window"]["truncated"] is True and peers["total"]["requests"] == 20  # a full peer's window too


async def test_a_full_window_asked_from_its_oldest_start_gives_every_exchange_it_holds() -> None:
    """The window is in the order exchanges ended: a slow one that started first ends last. Asked from its
    start, the figures still count every exchange held, not only those that started after the first to end."""
    telemetry = Telemetry(TelemetrySettings(exchange_log=None, stats_window=10))
    await telemetry.start()
    try:
        for i in range(20):
            telemetry.record(make_exchange(i))
        slow = make_exchange(20)
        # began after the last one let go (5.0 s on), before the nine others held (5.5 s on), ended after them
        slow.started_at = BASE_TIME + 5.2
        telemetry.record(slow)
        held = telemetry.stats()
        asked = telemetry.stats(since=BASE_TIME + 5.2)
    finally:
        await telemetry.aclose()
    assert held["total"]["requests"] == 10 and held["window"]["since"] == BASE_TIME + 5.2
    assert (asked["total"]["requests"], asked["window"]["truncated"]) == (10, False)


async def test_a_new_log_another_connection_holds_is_opened_once_it_lets_go(tmp_path: Path) -> None:
    """Switching a new file to WAL needs it to itself, and SQLite says "locked" at once rather than wait:
    workers opening a new log together failed so, one start in about eight."""
    path = tmp_path / "log.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    store = SqliteStore(f"sqlite:///{path}")
    try:
        await store.open()
    finally:
        holder.close()
    await store.aclose()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_an_exchange_whose_signals_no_encoder_takes_is_logged_all_the_same(tmp_path: Path) -> None:
    """One such exchange stopped the exchange log for good (the writer's task died on it)."""
    db = tmp_path / "log.sqlite3"
    telemetry = Telemetry(TelemetrySettings(exchange_log=f"sqlite:///{db}"))
    await telemetry.start()
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    poisoned = make_exchange(0)
    poisoned.signals = {**poisoned.signals, "metadata": {"x": deep}}
    for exchange in (poisoned, make_exchange(1)):
        telemetry.record(exchange)
    assert await telemetry.flush()
    await telemetry.aclose()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT request_id, signals FROM exchanges ORDER BY started_at").fetchall()
    assert len(rows) == 2 and "could not be encoded" in rows[0][1] + rows[1][1]


async def test_a_log_that_cannot_be_opened_says_what_to_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "a-folder"  # an exchange log path that is a folder: SQLite cannot open it
    folder.mkdir()
    telemetry = Telemetry(TelemetrySettings(exchange_log=f"sqlite:///{folder}", close_timeout_ms=200))
    with caplog.at_level(logging.WARNING, logger="laneway.telemetry"):
        await telemetry.start()
        await telemetry.aclose()
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert f"unable to open database file (`{folder}` must be a file this process may create and write" in said


async def test_the_log_says_when_it_starts_dropping_what_it_dropped_and_what_a_second_ctrl_c_cost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With `metrics: false` no counter shows the drops: the log lines are all an operator has."""
    path = tmp_path / "log.sqlite3"
    path.mkdir()  # unavailable until it becomes a file
    settings = TelemetrySettings(exchange_log=f"sqlite:///{path}", metrics=False, buffer_limit=50,
                                 flush_interval_ms=20, close_timeout_ms=30_000)
    telemetry = Telemetry(settings)
    with caplog.at_level(logging.INFO, logger="laneway.telemetry"):
        await telemetry.start()
        for i in range(120):
            telemetry.record(make_exchange(i))
        assert not await telemetry.flush()
        full = [r for r in caplog.records if "the backlog is full (`telemetry.buffer_limit`: 50)" in r.getMessage()]
        assert len(full) == 1 and full[0].levelno == logging.ERROR
        path.rmdir()
        assert await telemetry.flush()
        assert any("writable again; 70 exchanges were dropped unrecorded meanwhile" in r.getMessage()
                   for r in caplog.records)
        await telemetry.aclose()
        down = tmp_path / "down.sqlite3"
        down.mkdir()
        stopped = Telemetry(dataclasses.replace(settings, exchange_log=f"sqlite:///{down}"))
        await stopped.start()
        for i in range(30):
            stopped.record(make_exchange(i))
        assert not await stopped.flush()
        closing = asyncio.create_task(stopped.aclose())
        await asyncio.sleep(0.3)
        closing.cancel()  # what a second Ctrl-C does to the stop
        with pytest.raises(asyncio.CancelledError):
            await closing
    said = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"trying to write 30 exchanges for up to (29|30)\.\d s", m) for m in said), said
    assert any("stopped before 30 exchanges were written" in m for m in said), said
    assert (telemetry.health.dropped, stopped.health.dropped) == (70, 30)


async def test_an_exchange_no_part_of_telemetry_can_take_costs_itself_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A value past 64 bits stopped the drain for good: no exchange after it reached the log or the metrics."""
    telemetry = Telemetry(TelemetrySettings(exchange_log=f"sqlite:///{tmp_path}/log.sqlite3"))
    await telemetry.start()
    poisoned = make_exchange(3)
    poisoned.prompt_tokens = 10**20
    with caplog.at_level(logging.ERROR, logger="laneway.telemetry"):
        for i in range(10):
            telemetry.record(poisoned if i == 3 else make_exchange(i))
        assert await telemetry.flush()
        telemetry.record(make_exchange(10))
        assert await telemetry.flush()
    await telemetry.aclose()
    assert (telemetry.health.written, telemetry.health.dropped) == (10, 1)
    assert total(telemetry.render_metrics(), "laneway_requests_total") >= 10
    assert any(poisoned.request_id in r.getMessage() and "counted as dropped" in r.getMessage()
               for r in caplog.records)


async def test_a_fault_that_hits_every_exchange_is_said_once_a_minute_with_the_count_between(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A traceback per exchange flooded the log at the gateway's request rate."""
    telemetry = Telemetry(TelemetrySettings(exchange_log=f"sqlite:///{tmp_path}/log.sqlite3"))
    await telemetry.start()

    def poisoned(i: int) -> Exchange:
        exchange = make_exchange(i)
        exchange.prompt_tokens = 10**20
        return exchange

    with caplog.at_level(logging.ERROR, logger="laneway.telemetry"):
        for i in range(5):
            telemetry.record(poisoned(i))
        assert await telemetry.flush()
        said = [r for r in caplog.records if "could not be recorded" in r.getMessage()]
        assert len(said) == 1 and said[0].exc_info is not None
        monkeypatch.setattr(telemetry_module, "UNRECORDED_SAID_EVERY_S", 0.0)
        telemetry.record(poisoned(5))
        assert await telemetry.flush()
    await telemetry.aclose()
    said = [r.getMessage() for r in caplog.records if "could not be recorded" in r.getMessage()]
    assert len(said) == 2 and "(4 more could not be since the last such line)" in said[1]
    assert telemetry.health.dropped == 6


def test_a_full_window_gives_figures_only_from_where_it_holds_every_exchange() -> None:
    """The window keeps the exchanges that ended last. A long one still held started before short ones it
    no longer holds: its start cannot be where the figures begin, or they lack those."""
    telemetry = Telemetry(TelemetrySettings(exchange_log=None, stats_window=4))
    long_one = Exchange("long", BASE_TIME, model="gpt-5", route="chat", lane="primary", latency_ms=10_000.0)
    short = [Exchange(f"short-{i}", BASE_TIME + 1 + i, model="gpt-5-mini", route="chat", lane="primary",
                      latency_ms=100.0) for i in range(6)]
    for exchange in short[:3]:  # end before the long one, and are evicted
        telemetry.record(exchange)
    telemetry.record(long_one)  # ends at BASE_TIME + 10
    later = [Exchange(f"later-{i}", BASE_TIME + 11 + i, model="gpt-5-mini", route="chat", lane="primary",
                      latency_ms=100.0) for i in range(3)]
    for exchange in later:
        telemetry.record(exchange)
    figures = telemetry.stats()  # the short ones it let go started up to 3 s on: from there on it holds all
    assert (figures["window"]["since"], figures["total"]["requests"]) == (BASE_TIME + 11, 3)
    asked = telemetry.stats(since=BASE_TIME)
    assert asked["window"]["truncated"] and (asked["window"]["since"], asked["total"]["requests"]) == (
        BASE_TIME + 11, 3)
    assert telemetry.stats(since=BASE_TIME + 12)["total"]["requests"] == 2


async def test_rows_a_failed_write_may_have_stored_are_not_taken_for_reused_request_ids() -> None:
    """A store keyed by request id (PostgreSQL) answers the write again of a batch whose reply was lost with
    fewer rows: those are logged already. Past them, a row it did not store is another exchange under an id
    a client sent twice, lost from the log: it counts as dropped."""
    from laneway.telemetry._metrics import LogHealth
    from laneway.telemetry._store import ExchangeLogUnavailable, Written
    from laneway.telemetry._writer import ExchangeLog

    class KeyedStoreLosingItsFirstReply:
        url = "keyed://"

        def __init__(self) -> None:
            self.rows: set[str] = set()
            self.writes = 0

        async def open(self) -> None: ...

        async def write(self, records: Any) -> Written:
            ids = [json.loads(text)[0] for _, text in records]
            new = [i for i in ids if i not in self.rows]
            self.rows.update(new)
            self.writes += 1
            if self.writes == 1:
                raise ExchangeLogUnavailable("the reply was lost after the commit")
            return Written(len(new))

        async def aclose(self) -> None: ...

        def hurry(self, deadline: float) -> None: ...

    store = KeyedStoreLosingItsFirstReply()
    health = LogHealth(enabled=True)
    log = ExchangeLog(store, TelemetrySettings(exchange_log="sqlite:///unused", flush_interval_ms=1), health)  # type: ignore[arg-type]
    log.offer([(BASE_TIME, json.dumps([f"req-{i}"])) for i in range(3)])
    assert not await log.write_pending(force=True)
    assert await log.write_pending(force=True)  # the same three again: stored already, nothing lost
    assert (health.written, health.dropped, store.rows) == (0, 0, {"req-0", "req-1", "req-2"})
    log.offer([(BASE_TIME, json.dumps(["req-1"])), (BASE_TIME, json.dumps(["req-3"]))])
    assert await log.write_pending(force=True)
    assert (health.written, health.dropped) == (1, 1)  # req-1 again: another request, lost from the log
