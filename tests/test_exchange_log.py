"""The exchange log: every exchange lands (SQLite), what it holds reads back as the figures in memory, it keeps
up while exchanges arrive and while a write waits, retention rolls old rows up by the hour, and its troubles are
said and counted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from _pg import (
    BASE_TIME,
    EVERY_FIELD_ATTEMPTS,
    assert_same_counts,
    count_rows,
    iso,
    log_and_roll_up_mixed_exchanges,
    make_exchange,
    odd_exchanges,
    report_to,
    sqlite_settings,
    total,
)
from laneway.exchange import Attempt, Exchange
from laneway.telemetry import Telemetry, TelemetrySettings
from laneway.telemetry._sqlite import WRITER_NICENESS, SqliteStore
from laneway.telemetry._store import open_store
from laneway.telemetry._window import rows_of


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


async def test_the_sqlite_writer_thread_runs_below_the_event_loop(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/log.sqlite3")
    await store.open()
    writer = await store._run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    await store.aclose()
    loop = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert writer == min(19, loop + WRITER_NICENESS) > loop


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
