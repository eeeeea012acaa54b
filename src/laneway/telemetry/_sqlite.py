"""The exchange log in one SQLite file (WAL mode), driven from a single worker thread.

The stdlib `sqlite3` module releases the GIL while SQLite works, so a dedicated thread keeps the
event loop free without the per-call hops of a wrapper library.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from laneway.telemetry._records import ExchangeRow, HourlyRow, LogRecord
from laneway.telemetry._store import (
    FETCH_HOURLY_SQL,
    HOUR_S,
    ExchangeLogUnavailable,
    added_columns,
    exchange_row,
    fetch_rows_sql,
    insert_sql,
    roll_up_sql,
    schema,
    window,
)

T = TypeVar("T")
_INSERT = insert_sql()
_ROLL_UP, _DELETE = roll_up_sql(0)
_FETCH_ROWS = fetch_rows_sql(0)


class SqliteStore:
    """`sqlite:///relative/path` or `sqlite:////absolute/path`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url.removeprefix("sqlite:///"))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="laneway-exchange-log")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open)

    async def write(self, records: Sequence[LogRecord]) -> None:
        await self._run(lambda: self._write(records))

    async def roll_up(self, cutoff: float) -> int:
        return await self._run(lambda: self._roll_up(cutoff))

    async def fetch(
        self, since: float | None, until: float | None
    ) -> tuple[list[ExchangeRow], list[HourlyRow]]:
        return await self._run(lambda: self._fetch(since, until))

    async def aclose(self) -> None:
        await self._run(self._close)
        self._thread.shutdown(wait=True)

    async def _run(self, work: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work)
        except (sqlite3.Error, OSError) as error:
            raise ExchangeLogUnavailable(f"exchange log `{self.url}`: {error}") from error

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
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        for statement in schema(0):
            db.execute(statement)
        present = {str(column[1]) for column in db.execute("PRAGMA table_info(exchanges)")}
        for statement in added_columns(0, present):
            db.execute(statement)
        self._db = db

    def _write(self, records: Sequence[LogRecord]) -> None:
        db = self._connection()
        with _transaction(db):
            db.executemany(_INSERT, records)

    def _roll_up(self, cutoff: float) -> int:
        db = self._connection()
        cutoff = cutoff // HOUR_S * HOUR_S
        with _transaction(db):
            db.execute(_ROLL_UP, (cutoff,))
            return db.execute(_DELETE, (cutoff,)).rowcount

    def _fetch(self, since: float | None, until: float | None) -> tuple[list[ExchangeRow], list[HourlyRow]]:
        db = self._connection()
        start, end = window(since, until)
        rows = [exchange_row(values) for values in db.execute(_FETCH_ROWS, (start, end))]
        hourly = [HourlyRow(*values) for values in db.execute(FETCH_HOURLY_SQL, (start - HOUR_S, end))]
        return rows, hourly

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class _transaction:
    """BEGIN ... COMMIT, or ROLLBACK on any error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
