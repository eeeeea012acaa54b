"""The exchange log on a real PostgreSQL server: bursts, outages, retention, and `laneway report`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from _pg import (
    BASE_TIME,
    EVERY_FIELD_ATTEMPTS,
    PostgresServer,
    assert_same_counts,
    log_and_roll_up_mixed_exchanges,
    make_exchange,
    postgres_server,
    report,
    total,
)
from laneway.exchange import Attempt, Exchange
from laneway.telemetry import Telemetry, TelemetrySettings, _postgres, add_commands
from laneway.telemetry._store import schema


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with postgres_server() as running:
        yield running


async def scalar(dsn: str, sql: str) -> int:
    db = await asyncpg.connect(dsn)
    try:
        value: int = await db.fetchval(sql)
    finally:
        await db.close()
    return value


async def test_a_burst_of_10000_exchanges_lands_in_postgres(server: PostgresServer) -> None:
    dsn = await server.database()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn))
    await telemetry.start()
    for i in range(10_000):
        telemetry.record(make_exchange(i))
    await telemetry.aclose()
    assert await scalar(dsn, "SELECT count(*) FROM exchanges") == 10_000
    attempts = await scalar(dsn, "SELECT count(*) FROM exchanges, jsonb_array_elements(attempts)")
    assert attempts == 10_000 + len(range(0, 10_000, 7))
    assert await scalar(dsn, "SELECT count(*) FROM exchanges WHERE signals->>'escalation' = 'true'") == len(
        range(0, 10_000, 3)
    )


async def test_an_outage_buffers_up_to_the_bound_and_counts_the_drops(server: PostgresServer) -> None:
    dsn = await server.database()
    settings = TelemetrySettings(
        exchange_log=dsn, buffer_limit=200, flush_interval_ms=50, close_timeout_ms=30_000
    )
    telemetry = Telemetry(settings)
    await telemetry.start()
    for i in range(50):
        telemetry.record(make_exchange(i))
    assert await telemetry.flush()
    server.stop()
    try:
        for i in range(50, 350):
            telemetry.record(make_exchange(i))
            if i % 50 == 49:
                assert not await telemetry.flush()
        await asyncio.sleep(0.3)  # the background writer keeps failing meanwhile
        text = telemetry.render_metrics()
        assert total(text, "laneway_exchange_log_up") == 0
        assert total(text, "laneway_exchanges_dropped_total") == 100
        assert total(text, "laneway_exchange_log_backlog_exchanges") == 200
        assert total(text, "laneway_requests_total") == 350
    finally:
        server.start()
    await telemetry.aclose()
    assert await scalar(dsn, "SELECT count(*) FROM exchanges") == 250
    assert await scalar(dsn, "SELECT max(started_at) FROM exchanges") == make_exchange(249).started_at
    text = telemetry.render_metrics()
    assert total(text, "laneway_exchange_log_up") == 1
    assert total(text, "laneway_exchange_log_written_total") == 250


async def test_a_server_that_stops_answering_times_out_and_the_shutdown_keeps_its_deadline(
        server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_postgres, "WRITE_TIMEOUT_S", 0.5)
    dsn = await server.database()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn, flush_interval_ms=50, close_timeout_ms=1500))
    await telemetry.start()
    telemetry.record(make_exchange(0))
    assert await telemetry.flush()
    with server.frozen():
        for i in range(1, 6):
            telemetry.record(make_exchange(i))
        started = time.monotonic()
        assert not await telemetry.flush()  # no answer within the write timeout: down, not hung
        assert time.monotonic() - started < 2.0
        assert total(telemetry.render_metrics(), "laneway_exchange_log_up") == 0
        started = time.monotonic()
        await telemetry.aclose()
        assert time.monotonic() - started < 1.5 + 5.5  # close_timeout_ms, plus the goodbye's own bound
    assert telemetry.health.dropped == 5  # counted, not silent
    assert await scalar(dsn, "SELECT count(*) FROM exchanges") == 1


async def test_a_write_in_flight_to_a_server_that_stopped_answering_gives_up_at_the_close_deadline(
        server: PostgresServer) -> None:
    dsn = await server.database()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn, flush_interval_ms=50, close_timeout_ms=1000))
    await telemetry.start()
    telemetry.record(make_exchange(0))
    assert await telemetry.flush()
    with server.frozen():
        for i in range(1, 4):
            telemetry.record(make_exchange(i))
        await asyncio.sleep(0.3)  # the background write of the three is under way, with its 10 s timeout
        started = time.monotonic()
        await telemetry.aclose()
        took = time.monotonic() - started
    assert took < 1.0 + 1.0, took  # close_timeout_ms, not the write's own timeout
    assert telemetry.health.dropped == 3
    assert await scalar(dsn, "SELECT count(*) FROM exchanges") == 1


async def test_a_server_that_takes_the_connection_but_never_greets_is_named_as_such(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_postgres, "CONNECT_TIMEOUT_S", 0.3)
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        store = _postgres.PostgresStore(f"postgresql://laneway@127.0.0.1:{port}/laneway")
        with pytest.raises(_postgres.ExchangeLogUnavailable, match=r"no connection within 0\.3 s"):
            await store.open()
    finally:
        silent.close()


async def test_a_report_on_a_database_without_a_log_says_so_and_creates_nothing(
        server: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = await server.database()
    assert await asyncio.to_thread(report, "--db", dsn) == 1
    err = capsys.readouterr().err
    assert "is not a Laneway exchange log (it has no `exchanges` table)" in err and "Traceback" not in err
    assert await scalar(dsn, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == 0


async def test_a_cascade_charges_each_model_what_it_billed_on_postgres(
        server: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = await server.database()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn))
    await telemetry.start()
    telemetry.record(Exchange("cascaded", BASE_TIME, model="strong", route="triage", lane="cascade", cost_usd=0.06,
                              attempts=[Attempt("cheap", "ok", cost_usd=0.01),
                                        Attempt("strong", "ok", cost_usd=0.05, lane="cascade")]))
    await telemetry.aclose()
    assert await asyncio.to_thread(report, "--db", dsn, "--json") == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert {m: f["cost_usd"] for m, f in models.items()} == pytest.approx({"cheap": 0.01, "strong": 0.05})


async def test_attempts_land_as_objects_of_every_field_on_postgres(server: PostgresServer) -> None:
    dsn = await server.database()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn))
    await telemetry.start()
    telemetry.record(Exchange("r-1", BASE_TIME, model="m-b", attempts=list(EVERY_FIELD_ATTEMPTS)))
    telemetry.record(Exchange("r-2", BASE_TIME + 1, outcome="bad_request", status=400))
    await telemetry.aclose()
    first = await scalar(dsn, "SELECT attempts::text FROM exchanges WHERE request_id = 'r-1'")
    assert json.loads(first) == [dataclasses.asdict(a) for a in EVERY_FIELD_ATTEMPTS]
    assert await scalar(dsn, "SELECT attempts::text FROM exchanges WHERE request_id = 'r-2'") == "[]"
    assert await scalar(dsn, "SELECT attempts->1->>'lane' FROM exchanges WHERE request_id = 'r-1'") == "fallback"


def report_json(dsn: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert report("--db", dsn, "--json") == 0
    figures: dict[str, Any] = json.loads(out.getvalue())
    return figures


async def test_hourly_roll_ups_keep_each_models_failed_attempts_and_what_it_billed_on_postgres(
        server: PostgresServer) -> None:
    dsn = await server.database()
    raw = await log_and_roll_up_mixed_exchanges(TelemetrySettings(exchange_log=dsn))
    rolled = await asyncio.to_thread(report_json, dsn)
    assert rolled["total"]["latency_samples"] == 0  # every figure below comes from the hourly rows
    assert_same_counts(raw, rolled)


async def test_a_report_reads_a_log_of_an_earlier_release_without_converting_it(server: PostgresServer) -> None:
    dsn = await server.database()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn))
    await telemetry.start()
    await telemetry.aclose()
    db = await asyncpg.connect(dsn)
    try:  # the hourly table as earlier releases made it, without `failed_attempts` and the retrieval counts
        for column in ("failed_attempts", "retrievals", "retrieval_hits"):
            await db.execute(f"ALTER TABLE exchanges_hourly DROP COLUMN {column}")
        await db.execute("INSERT INTO exchanges_hourly (hour, model, route, lane, requests, errors, timeouts, "
                         "escalated_ok, tokens_in, tokens_out, conversations, fallbacks, simulated, cost_usd) "
                         "VALUES ($1, 'm', 'r', 'primary', 5, 1, 0, 0, 10, 20, 5, 0, 0, 0.5)", BASE_TIME - 7200)
    finally:
        await db.close()
    figures = await asyncio.to_thread(report_json, dsn)
    assert figures["total"]["requests"] == 5 and figures["total"]["failed_attempts"] == 0
    assert await scalar(dsn, "SELECT count(*) FROM information_schema.columns WHERE "
                             "table_name = 'exchanges_hourly' AND column_name = 'failed_attempts'") == 0
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn))  # the gateway converts it
    await telemetry.start()
    await telemetry.aclose()
    assert await scalar(dsn, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'exchanges_hourly' "
                             "AND column_name IN ('failed_attempts', 'retrievals', 'retrieval_hits')") == 3


async def test_retention_and_report_on_postgres_match_stats(server: PostgresServer) -> None:
    dsn = await server.database()
    now = BASE_TIME + 86_400
    old = [make_exchange(i, started_at=now - 45 * 86_400) for i in range(300)]
    recent = [make_exchange(i + 300) for i in range(400)]
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn, retention_days=30), simulated=True)
    await telemetry.start()
    for exchange in old:
        telemetry.record(exchange)
    assert await telemetry.roll_up(now) == 300
    for exchange in recent:
        telemetry.record(exchange)
    await telemetry.aclose()
    assert await scalar(dsn, "SELECT count(*) FROM exchanges") == 400
    assert await scalar(dsn, "SELECT sum(requests) FROM exchanges_hourly") == 300

    def run(*argv: str) -> dict[str, object]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert report("--db", dsn, "--json", *argv) == 0
        figures: dict[str, object] = json.loads(out.getvalue())
        return figures

    everything = await asyncio.to_thread(run)
    assert everything["total"]["requests"] == 700  # type: ignore[index]
    until = BASE_TIME + 1_000  # after the last exchange: the same window for both (alone, `--since` ends now)
    recent_only = await asyncio.to_thread(run, "--since", _iso(BASE_TIME - 60), "--until", _iso(until))
    expected = telemetry.stats(BASE_TIME - 60, until)
    for key in ("total", "models", "routes"):
        assert recent_only[key] == expected[key], key


def _iso(moment: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(moment, UTC).isoformat()


async def test_shadow_rows_and_lane_columns_round_trip_through_postgres(server: PostgresServer) -> None:
    dsn = await server.database()
    db = await asyncpg.connect(dsn)
    try:  # an exchange log created before the lane columns existed
        for statement in schema(1):
            await db.execute(statement.replace(",\n  cascade_confidence DOUBLE PRECISION,\n  retrieval_hits "
                                               "INTEGER,\n  retrieval_ms DOUBLE PRECISION", ""))
        assert await db.fetchval("SELECT count(*) FROM information_schema.columns "
                                 "WHERE table_name = 'exchanges' AND column_name = 'cascade_confidence'") == 0
    finally:
        await db.close()
    primaries = [make_exchange(i) for i in range(40)]
    for exchange in primaries:
        exchange.cascade_confidence, exchange.retrieval_hits, exchange.retrieval_ms = 0.75, 2, 1.5
    shadows = [shadow_of(p) for p in primaries]
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn), simulated=True)
    await telemetry.start()
    for exchange in [*primaries, *shadows]:
        telemetry.record(exchange)
    await telemetry.aclose()
    assert await scalar(dsn, "SELECT count(*) FROM exchanges WHERE retrieval_hits = 2") == 40

    def run(*argv: str) -> dict[str, Any]:
        parser = argparse.ArgumentParser(prog="laneway")
        add_commands(parser.add_subparsers(required=True))
        args = parser.parse_args([*argv, "--db", dsn, "--json"])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert args.func(args) == 0
        figures: dict[str, Any] = json.loads(out.getvalue())
        return figures

    logged = (await asyncio.to_thread(run, "shadow", "report"))["candidates"]["gemini-2.5-flash-lite"]
    live = (await telemetry.shadow_stats())["candidates"]["gemini-2.5-flash-lite"]
    for key in ("pairs", "agreement", "p95_delta_ms", "p95_delta_ci95", "cost_delta_usd", "buckets"):
        assert logged[key] == live[key], key
    assert logged["pairs"] == 40 and logged["p95_delta_ms"] < 0
    report_figures = await asyncio.to_thread(run, "report")
    assert report_figures["total"] == telemetry.stats()["total"]
    assert report_figures["shadow"]["requests"] == 40


def shadow_of(primary: Exchange) -> Exchange:
    target = "gemini-2.5-flash-lite"
    return Exchange(
        f"{primary.request_id}/shadow/{target}", primary.started_at + 0.1, route=primary.route, lane="shadow",
        model=target, latency_ms=primary.latency_ms / 2, cost_usd=primary.cost_usd / 5,
        attempts=[Attempt(target, "ok", lane="shadow")],
        signals={**primary.signals, "shadow_of": primary.request_id, "primary_model": primary.model,
                 "primary_latency_ms": primary.latency_ms, "primary_ttft_ms": primary.ttft_ms,
                 "primary_cost_usd": primary.cost_usd, "exact": False, "similarity": 0.6},
    )


async def test_exchanges_that_share_a_request_id_are_each_logged_and_an_earlier_log_is_rekeyed(
        server: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    """A client may send one `x-request-id` for several requests (a retry keeps its id). Keyed by the request id
    alone, the log kept the first and lost the others: their spend was missing from every report."""
    dsn = await server.database()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn))
    await telemetry.start()
    first, again = make_exchange(1), make_exchange(2)
    again.request_id = first.request_id
    for exchange in (first, again, make_exchange(3)):
        telemetry.record(exchange)
    assert await telemetry.flush()
    assert (telemetry.health.written, telemetry.health.dropped) == (3, 0)
    await telemetry.aclose()
    assert await scalar(dsn, f"SELECT count(*) FROM exchanges WHERE request_id = '{first.request_id}'") == 2
    db = await asyncpg.connect(dsn)  # as an earlier release left it
    try:
        await db.execute("DELETE FROM exchanges WHERE request_id = $1 AND started_at = $2", again.request_id,
                         again.started_at)
        await db.execute("ALTER TABLE exchanges DROP CONSTRAINT exchanges_pkey, ADD PRIMARY KEY (request_id)")
    finally:
        await db.close()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn))
    with caplog.at_level(logging.INFO, logger="laneway.telemetry"):
        await telemetry.start()
        telemetry.record(again)
        assert await telemetry.flush()
        await telemetry.aclose()
    assert (telemetry.health.written, telemetry.health.dropped) == (1, 0)
    assert await scalar(dsn, "SELECT count(*) FROM exchanges") == 3
    assert any("keying the exchanges by request id and start" in r.getMessage() for r in caplog.records)


async def test_a_nul_character_a_client_sent_is_stored_as_a_replacement_and_stops_nothing(
        server: PostgresServer) -> None:
    """PostgreSQL's text holds no NUL: a record carrying one used to fail its batch, which the writer took for an
    outage and retried for good, so that nothing after it was ever logged."""
    dsn = await server.database()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn))
    await telemetry.start()
    poisoned = make_exchange(0)
    poisoned.conversation_id = "ab\x00c"
    poisoned.signals = {**poisoned.signals, "tier": "\\u0000 stays as it was typed", "odd\x00key": "\x00"}
    poisoned.error = "bad\x00field"
    telemetry.record(poisoned)
    for i in range(1, 300):
        telemetry.record(make_exchange(i))
    assert await telemetry.flush()
    await telemetry.aclose()
    assert await scalar(dsn, "SELECT count(*) FROM exchanges") == 300
    db = await asyncpg.connect(dsn)
    try:
        row = await db.fetchrow("SELECT conversation_id, error, signals FROM exchanges WHERE request_id = $1",
                                poisoned.request_id)
    finally:
        await db.close()
    signals = json.loads(row["signals"])
    assert (row["conversation_id"], row["error"]) == ("ab\ufffdc", "bad\ufffdfield")
    assert signals["tier"] == "\\u0000 stays as it was typed" and signals["odd\ufffdkey"] == "\ufffd"
    assert telemetry.health.dropped == 0 and telemetry.health.up


async def test_a_record_the_server_refuses_for_its_data_is_named_and_counted_and_the_rest_land(
        server: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    dsn = await server.database()
    telemetry = Telemetry(TelemetrySettings(exchange_log=dsn, metrics=False))  # the log alone reads the value
    await telemetry.start()
    refused = make_exchange(5)
    refused.prompt_tokens = 2**63  # over a BIGINT column: PostgreSQL refuses the value, not the connection
    with caplog.at_level(logging.WARNING, logger="laneway.telemetry"):
        for i in range(10):
            telemetry.record(refused if i == 5 else make_exchange(i))
        assert await telemetry.flush()
        telemetry.record(make_exchange(10))
        assert await telemetry.flush()
    await telemetry.aclose()
    assert await scalar(dsn, "SELECT count(*) FROM exchanges") == 10
    assert (telemetry.health.written, telemetry.health.dropped, telemetry.health.up) == (10, 1, True)
    said = [r.getMessage() for r in caplog.records]
    assert any("refused 1 exchange(s) for what they hold" in m and refused.request_id in m and "out of range" in m
               for m in said), said
    assert not any("buffering" in m or "logged already" in m for m in said), said


async def test_roll_ups_run_at_once_by_two_gateways_count_each_exchange_once(server: PostgresServer) -> None:
    """`serve --workers 2` (or two replicas) rolled up together at start: each summed the same raw rows, and the
    hours held every rolled-up exchange, and its cost, twice."""
    dsn = await server.database()
    now = BASE_TIME + 86_400
    writer = Telemetry(TelemetrySettings(exchange_log=dsn, retention_days=30))
    await writer.start()
    for i in range(3_000):
        writer.record(make_exchange(i, started_at=now - 45 * 86_400 + i))
    await writer.aclose()
    cost = await scalar(dsn, "SELECT round(sum(cost_usd)::numeric * 1e6) FROM exchanges")
    gateways = [Telemetry(TelemetrySettings(exchange_log=dsn, retention_days=30)) for _ in range(2)]
    for telemetry in gateways:
        await telemetry.start()
    try:
        rolled = await asyncio.gather(*(telemetry.roll_up(now) for telemetry in gateways))
    finally:
        for telemetry in gateways:
            await telemetry.aclose()
    assert sorted(rolled) == [0, 3_000]
    assert await scalar(dsn, "SELECT sum(requests) FROM exchanges_hourly") == 3_000
    assert await scalar(dsn, "SELECT round(sum(cost_usd)::numeric * 1e6) FROM exchanges_hourly") == cost
