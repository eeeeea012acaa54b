"""Telemetry: settings, summaries, Prometheus metrics, the in-memory window and `laneway report` (the exchange log
itself: test_exchange_log.py)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _live import live_gateway
from _pg import (
    BASE_TIME,
    MODELS,
    iso,
    make_exchange,
    odd_exchanges,
    report,
    report_to,
    samples,
    sqlite_settings,
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
from laneway.telemetry._summary import summarize
from laneway.telemetry._telemetry import Window
from laneway.telemetry._window import RecentExchanges, rows_of


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


@pytest.mark.parametrize(("attempts", "hand_overs"), [
    ([("gpt-5", "upstream_unavailable", "primary"), ("gpt-5", "ok", "primary")], 0),  # a retry
    ([("gpt-5", "upstream_unavailable", "primary"), ("gpt-5", "upstream_unavailable", "primary"),
      ("claude-sonnet-37", "ok", "fallback")], 1),
    ([("canary-model", "upstream_unavailable", "canary"), ("gpt-5", "ok", "primary")], 1),
    ([("gpt-5-mini", "ok", "primary"), ("grader", "ok", "verifier"), ("gpt-5", "ok", "cascade")], 0),
    ([("gpt-5-mini", "ok", "primary"), ("gpt-5", "upstream_unavailable", "cascade"),
      ("claude-sonnet-37", "ok", "fallback")], 1),
    ([("gpt-5", "skipped", "primary"), ("claude-sonnet-37", "ok", "fallback")], 1),  # a breaker open: handed over
    ([("gpt-5", "skipped", "primary"), ("claude-sonnet-37", "skipped", "fallback")], 0),  # the client's 400
])
def test_fallbacks_count_hand_overs_to_another_model_not_retries(attempts: list[tuple[str, str, str]],
                                                                 hand_overs: int) -> None:
    """A request refused as the client's fault, sent to no model, counted a fallback for each model passed
    over: an alert on the fallback rate fired on clients' malformed requests."""
    refused = all(outcome == "skipped" for _, outcome, _ in attempts)
    exchange = Exchange("r", BASE_TIME, model=attempts[-1][0], lane=attempts[-1][2], status=400 if refused else 200,
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


