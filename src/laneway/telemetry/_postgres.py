"""The exchange log in PostgreSQL through `asyncpg`, shared by several gateway replicas."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson

from laneway.errors import ConfigError, ConfigIssue, without_password
from laneway.telemetry._records import ExchangeRow, HourlyRow, LogRecord
from laneway.telemetry._store import (
    ADDED_HOURLY_COLUMNS,
    FETCH_HOURLY_SQL,
    HOUR_S,
    KEY_COLUMNS_SQL,
    KEY_NAME_SQL,
    ExchangeLogUnavailable,
    Written,
    added_columns,
    exchange_row,
    fetch_hourly_sql,
    fetch_rows_sql,
    numbered,
    postgres_insert_sql,
    rekey_sql,
    roll_up_sql,
    schema,
    window,
)

log = logging.getLogger("laneway.telemetry")
T = TypeVar("T")
Connection = Any  # asyncpg ships no type information
_INSERT = postgres_insert_sql()
_ROLL_UP, _ROLL_UP_ATTEMPTS, _DELETE = (numbered(sql) for sql in roll_up_sql(1))
_FETCH_ROWS = numbered(fetch_rows_sql(1))
CONNECT_TIMEOUT_S = 5.0
# A server that accepts the connection but stops answering (stopped, overloaded, locked) must not hold
# the writer, or the shutdown, for good: past these, the statement counts as a failure and the
# connection is dropped. Roll-ups and reads cover many rows, so they get longer.
WRITE_TIMEOUT_S = 10.0
LONG_TIMEOUT_S = 120.0
_SCHEMA_LOCK = 0x6C616E65  # any constant shared by every replica: schema changes and roll-ups take it


_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # an escaped NUL in JSON text, not an escaped backslash's "u0000"


def _storable(record: str) -> str:
    """PostgreSQL's text and jsonb hold no NUL character (a client's text may): each is stored as U+FFFD."""
    return _NUL.sub(r"\1\\ufffd", record) if "\\u0000" in record else record


def _asyncpg() -> Any:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as error:
        raise ConfigError(
            [
                ConfigIssue(
                    "telemetry.exchange_log",
                    "a `postgresql://` exchange log needs `asyncpg`: pip install asyncpg",
                )
            ]
        ) from error
    return asyncpg


class PostgresStore:
    """One connection, reopened after any failure; every statement is idempotent or transactional."""

    def __init__(self, url: str, *, reading: bool = False) -> None:
        self.url = url
        self._reading = reading  # for a report: never create the tables
        self._driver = _asyncpg()
        self._db: Connection | None = None
        self._scope: asyncio.Timeout | None = None  # the operation in flight's
        self._fetch_hourly = numbered(FETCH_HOURLY_SQL)
        self._failures: tuple[type[BaseException], ...] = (
            OSError,
            self._driver.PostgresError,
            self._driver.InterfaceError,
        )

    async def open(self) -> None:
        await self._run(self._connection, WRITE_TIMEOUT_S)

    async def write(self, records: Sequence[LogRecord]) -> Written:
        texts = [_storable(record) for _, record in records]

        async def work(db: Connection) -> Written:
            try:
                return Written(await self._insert(db, texts))
            except self._driver.DataError:  # a record the server will not take: the others still go in
                return await self._one_by_one(db, texts)

        return await self._run(lambda: self._with_connection(work), WRITE_TIMEOUT_S)

    async def _insert(self, db: Connection, texts: list[str]) -> int:
        async with db.transaction():
            status: str = await db.execute(_INSERT, texts)
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <rows>"

    async def _one_by_one(self, db: Connection, texts: list[str]) -> Written:
        stored, refused, reason = 0, [], ""
        for text in texts:
            try:
                stored += await self._insert(db, [text])
            except self._driver.DataError as error:
                refused.append(str(orjson.loads(text)[0]))  # the request id leads the record
                reason = str(error).replace("\n", " ")
        return Written(stored, tuple(refused), reason)

    async def roll_up(self, cutoff: float) -> int:
        cutoff = cutoff // HOUR_S * HOUR_S

        async def work(db: Connection) -> int:
            async with db.transaction():
                # One roll-up at a time across every worker and replica sharing the log: two at once each summed
                # the same raw rows, and the hours counted them twice. The second, once the first commits, finds
                # them gone (READ COMMITTED reads what committed before each statement). The schema's lock: a
                # replica's start-up `ALTER TABLE` beside a roll-up could deadlock.
                await db.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await db.execute(_ROLL_UP, cutoff)
                await db.execute(_ROLL_UP_ATTEMPTS, cutoff, cutoff)
                status: str = await db.execute(_DELETE, cutoff)
            return int(status.rsplit(" ", 1)[-1])

        return await self._run(lambda: self._with_connection(work), LONG_TIMEOUT_S)

    async def fetch(
        self, since: float | None, until: float | None
    ) -> tuple[list[ExchangeRow], list[HourlyRow]]:
        start, end = window(since, until)

        async def work(db: Connection) -> tuple[list[ExchangeRow], list[HourlyRow]]:
            rows = [exchange_row(tuple(r)) for r in await db.fetch(_FETCH_ROWS, start, end)]
            hourly = [HourlyRow(*tuple(r)) for r in await db.fetch(self._fetch_hourly, start, end)]
            return rows, hourly

        return await self._run(lambda: self._with_connection(work), LONG_TIMEOUT_S)

    async def aclose(self) -> None:
        db, self._db = self._db, None
        if db is not None and not db.is_closed():
            unanswered: tuple[type[BaseException], ...] = (TimeoutError, *self._failures)
            try:
                await db.close(timeout=CONNECT_TIMEOUT_S)
            except unanswered:
                db.terminate()  # a server that does not answer the goodbye either

    def hurry(self, deadline: float) -> None:
        """The operation in flight times out at `deadline` at the latest: the rows of a write cut short
        stay in the backlog, and the table's key makes writing them again a no-op."""
        scope = self._scope
        if scope is not None and not scope.expired():
            loop = asyncio.get_running_loop()
            when = loop.time() + max(0.0, deadline - time.monotonic())
            current = scope.when()
            scope.reschedule(when if current is None else min(current, when))

    async def _run(self, work: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        started = time.monotonic()
        scope = asyncio.timeout(timeout_s)
        try:
            async with scope:
                self._scope = scope
                return await work()
        except TimeoutError:
            await self._discard()
            # asyncpg's own connect timeout raises the same error, inside the statement's time
            waited = (f"no answer within {time.monotonic() - started:.1f} s" if scope.expired()
                      else f"no connection within {CONNECT_TIMEOUT_S:g} s")
            raise ExchangeLogUnavailable(f"exchange log `{without_password(self.url)}`: {waited}") from None
        except self._failures as error:
            await self._discard()
            raise ExchangeLogUnavailable(f"exchange log `{without_password(self.url)}`: {error}") from error
        finally:
            if self._scope is scope:
                self._scope = None

    async def _with_connection(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        return await work(await self._connection())

    async def _connection(self) -> Connection:
        if self._db is None or self._db.is_closed():
            db = await self._driver.connect(self.url, timeout=CONNECT_TIMEOUT_S)
            if self._reading:
                if await db.fetchval("SELECT to_regclass('exchanges')") is None:
                    await db.close()
                    raise ExchangeLogUnavailable(f"`{without_password(self.url)}` is not a Laneway exchange log (it "
                                                 "has no `exchanges` table); pass the gateway's log with `--db`")
                # A report does not convert a log of an earlier release: what it lacks reads as 0.
                present = {r[0] for r in await db.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'exchanges_hourly' "
                    "AND table_schema = current_schema()")}
                self._fetch_hourly = numbered(fetch_hourly_sql([n for n in ADDED_HOURLY_COLUMNS if n not in present]))
                self._db = db
                return db
            async with db.transaction():
                # Replicas starting together would otherwise race on `CREATE TABLE IF NOT EXISTS`.
                await db.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                for statement in [*schema(1), *added_columns()]:
                    await db.execute(statement)
                await self._rekey(db)
            self._db = db
        return self._db

    async def _rekey(self, db: Connection) -> None:
        """Key a log of an earlier release, keyed by the request id alone, by `POSTGRES_KEY`."""
        if await db.fetchval(KEY_COLUMNS_SQL) != ["request_id"]:
            return
        log.info("exchange log `%s`: keying the exchanges by request id and start, so that requests that share "
                 "an `x-request-id` are each logged (once, for the log of an earlier release)",
                 without_password(self.url))
        await db.execute(rekey_sql(await db.fetchval(KEY_NAME_SQL)))

    async def _discard(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.terminate()
