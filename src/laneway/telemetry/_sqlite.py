"""The exchange log in one SQLite file (WAL mode), driven from a single worker thread.

The stdlib `sqlite3` module releases the GIL while SQLite works, so a dedicated thread keeps the
event loop free without the per-call hops of a wrapper library.

Each exchange is stored as its `LogRecord`: the start time (indexed) and one JSON array of its
`LOG_COLUMNS` values, in the table `exchange_records`. The view `exchanges` reads the array back
as those columns, for the report and for anyone's SQL. Logs of earlier releases, which kept the
columns in a table `exchanges`, are converted on open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import TypeVar

from laneway.telemetry._records import LOG_COLUMNS, ExchangeRow, HourlyRow, LogRecord
from laneway.telemetry._store import (
    ADDED_HOURLY_COLUMNS,
    FETCH_HOURLY_SQL,
    HOUR_S,
    JSON_COLUMNS,
    RECORDS_TABLE,
    ExchangeLogUnavailable,
    Written,
    convert_attempts_sql,
    exchange_row,
    exchange_view_sql,
    fetch_rows_sql,
    roll_up_sql,
    schema,
    window,
)

log = logging.getLogger("laneway.telemetry")
T = TypeVar("T")
# Rows per INSERT statement. The sqlite3 module releases the GIL once per statement it steps, so
# `executemany` hands the GIL back and forth with the event loop once per row; one statement for
# many rows does it once per batch.
ROWS_PER_INSERT = 32
# One write is one transaction (a commit rewrites the table's and the index's last pages, so
# fewer, larger ones cost less CPU per row), its statements back to back. The writer thread shares
# the core with the event loop; at the lowest priority (nice 19), the loop's thread takes the core
# back as soon as it wakes. An earlier writer, at nice 10, slept 2 ms between two statements to
# keep out of requests' way: each wake-up ran cold, the writer cost 6-7 µs per row against 4-5,
# and its pauses left a backlog behind every saturated second; without them, at nice 19, requests
# wait less (p99 at one connection 0.58 against 0.67 ms) and telemetry cost 7 µs less per request
# at 1,000 requests/s in a side-by-side run (docs/benchmarks.md, thirteenth round).
WRITER_NICENESS = 19
LOCKED_WAIT_S = 5.0  # as long as the busy timeout other statements wait for a lock
LOCKED_RETRY_S = 0.02
_INSERT = f"INSERT INTO {RECORDS_TABLE} (started_at, record) VALUES (?, ?)"  # noqa: S608 (constant)
_INSERT_MANY = _INSERT + ", (?, ?)" * (ROWS_PER_INSERT - 1)
_VIEW = exchange_view_sql()
_CONVERT_ATTEMPTS = convert_attempts_sql()
_ROLL_UP, _ROLL_UP_ATTEMPTS, _DELETE = roll_up_sql(0)
_FETCH_ROWS = fetch_rows_sql(0)


class SqliteStore:
    """`sqlite:///relative/path` or `sqlite:////absolute/path`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url.removeprefix("sqlite:///"))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="laneway-exchange-log",
                                          initializer=_lower_priority)
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open)

    async def write(self, records: Sequence[LogRecord]) -> Written:
        await self._run(lambda: self._write(records))
        return Written(len(records))

    async def roll_up(self, cutoff: float) -> int:
        return await self._run(lambda: self._roll_up(cutoff))

    async def fetch(
        self, since: float | None, until: float | None
    ) -> tuple[list[ExchangeRow], list[HourlyRow]]:
        return await self._run(lambda: self._fetch(since, until))

    async def aclose(self) -> None:
        await self._run(self._close)
        self._thread.shutdown(wait=True)

    def hurry(self, deadline: float) -> None:
        """Nothing to do: a write in the worker thread cannot be stopped half-way (its batch, left in the
        backlog, would be written twice), and a local file answers."""

    async def _run(self, work: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work)
        except (sqlite3.Error, OSError) as error:
            raise ExchangeLogUnavailable(f"exchange log `{self.url}`: {error}{self._hint(error)}") from error

    def _hint(self, error: BaseException) -> str:
        if isinstance(error, sqlite3.OperationalError) and "unable to open" in str(error):
            return (f" (`{self.path.resolve()}` must be a file this process may create and write: check that it is "
                    "not a folder, the folder's permissions and that its file system is writable, or point "
                    "`telemetry.exchange_log` elsewhere)")
        return ""

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._open()
        assert self._db is not None
        return self._db

    def _open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            _write_ahead(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            _prepare(db, self.url)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _write(self, records: Sequence[LogRecord]) -> None:
        db = self._connection()
        with _transaction(db):
            for start in range(0, len(records), ROWS_PER_INSERT):
                rows = records[start : start + ROWS_PER_INSERT]
                if len(rows) == ROWS_PER_INSERT:
                    db.execute(_INSERT_MANY, tuple(chain.from_iterable(rows)))
                else:
                    db.executemany(_INSERT, rows)

    def _roll_up(self, cutoff: float) -> int:
        db = self._connection()
        cutoff = cutoff // HOUR_S * HOUR_S
        with _transaction(db):
            db.execute(_ROLL_UP, (cutoff,))
            db.execute(_ROLL_UP_ATTEMPTS, (cutoff, cutoff))
            return db.execute(_DELETE, (cutoff,)).rowcount

    def _fetch(self, since: float | None, until: float | None) -> tuple[list[ExchangeRow], list[HourlyRow]]:
        db = self._connection()
        start, end = window(since, until)
        rows = [exchange_row(values) for values in db.execute(_FETCH_ROWS, (start, end))]
        hourly = [HourlyRow(*values) for values in db.execute(FETCH_HOURLY_SQL, (start, end))]
        return rows, hourly

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _write_ahead(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode. The switch needs the file to itself, and SQLite answers "database is
    locked" at once, without waiting, while another connection holds it: the workers of `serve
    --workers N` opening a new log together did, one start in about eight. It is tried again for up to
    `LOCKED_WAIT_S`; the mode stays with the file, so once one worker has switched it the others only
    read it."""
    deadline = time.monotonic() + LOCKED_WAIT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(LOCKED_RETRY_S)


def _prepare(db: sqlite3.Connection, url: str) -> None:
    """Create the tables and the view, or convert a log of an earlier release. A log that is up to
    date is only read: workers opening the same file do not queue for its write lock."""
    if _exchanges(db) == ("view", _VIEW) and not _missing_hourly_columns(db):
        return
    with _transaction(db):  # one at a time, when several workers open the same file
        for statement in schema(0):
            db.execute(statement)
        for name in _missing_hourly_columns(db):
            db.execute(f"ALTER TABLE exchanges_hourly ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0")
        kind, sql = _exchanges(db)
        if kind == "table":
            _convert_columns(db, url)
        elif kind == "view" and sql != _VIEW:
            db.execute("DROP VIEW exchanges")  # from a release with other columns
        if sql != _VIEW:
            converted = db.execute(_CONVERT_ATTEMPTS).rowcount
            if converted:
                log.info("exchange log `%s`: rewrote the attempts of %d exchanges as arrays of values", url,
                         converted)
            db.execute(_VIEW)


def _missing_hourly_columns(db: sqlite3.Connection) -> list[str]:
    """Hourly columns a log of an earlier release lacks (all of them, before the table exists)."""
    present = {str(column[1]) for column in db.execute("PRAGMA table_info(exchanges_hourly)")}
    return [name for name in ADDED_HOURLY_COLUMNS if name not in present]


def _exchanges(db: sqlite3.Connection) -> tuple[str | None, str | None]:
    found = db.execute("SELECT type, sql FROM sqlite_master WHERE name = 'exchanges'").fetchone()
    return (str(found[0]), str(found[1])) if found else (None, None)


def _convert_columns(db: sqlite3.Connection, url: str) -> None:
    """Move the rows of an earlier release's `exchanges` table (one column per value) into records,
    then drop it. Columns it predates become nulls, which the view reads as NULL."""
    present = {str(column[1]) for column in db.execute("PRAGMA table_info(exchanges)")}
    values = ", ".join(_legacy_value(name, present) for name in LOG_COLUMNS)
    moved = db.execute(
        f"INSERT INTO {RECORDS_TABLE} (started_at, record) "  # noqa: S608 (constant names)
        f"SELECT started_at, json_array({values}) FROM exchanges ORDER BY rowid"
    ).rowcount
    db.execute("DROP TABLE exchanges")
    log.info("exchange log `%s`: moved %d exchanges from the column table of an earlier release", url, moved)


def _legacy_value(name: str, present: set[str]) -> str:
    if name not in present:
        return "NULL"
    return f"json({name})" if name in JSON_COLUMNS else name  # JSON text nests as JSON, not as a string


def _lower_priority() -> None:
    """Let the writer thread yield the CPU to the event loop's thread whenever both want it (Linux
    schedules threads one by one). With one core, a writer at the same priority delayed requests
    more: p99 at one connection 1.37 ms against 1.18 ms at nice 10 (docs/benchmarks.md)."""
    if not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + WRITER_NICENESS))


class _transaction:
    """BEGIN ... COMMIT, or ROLLBACK on any error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
