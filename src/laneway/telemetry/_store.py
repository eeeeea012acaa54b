"""The exchange log's storage: one Protocol, the shared schema, and the URL-to-store factory.

Both stores show the same `exchanges` columns to SQL: a table in PostgreSQL, a view over the
stored records in SQLite. Attempts are a JSON column of their exchange (not a table of their own):
they are written once, always read with their exchange, and one insert per exchange halves the
write volume. Both SQLite (`json_each`) and PostgreSQL (`jsonb_array_elements`) can still query
them in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from laneway.errors import ConfigError, ConfigIssue, LanewayError, without_password
from laneway.exchange import CLIENT_DISCONNECTED, NOT_SENT
from laneway.telemetry._records import (
    ATTEMPT_FIELDS,
    FAILED_SEPARATOR,
    LOG_COLUMNS,
    NOT_FAILED,
    ROW_COLUMNS,
    SHADOW_LANE,
    ExchangeRow,
    HourlyRow,
    LogRecord,
)

HOUR_S = 3600.0
FAR_PAST, FAR_FUTURE = 0.0, 1e12
RECORDS_TABLE = "exchange_records"  # SQLite: one row per exchange, its `LogRecord` as it came


class ExchangeLogUnavailable(LanewayError):
    """The exchange log's store cannot be reached or refused a write; exchanges stay buffered."""


@dataclass(frozen=True, slots=True)
class Written:
    """What a write did with its records: the rows `stored` (fewer: some were there already), and the request
    ids of those `refused` for their data, which no retry would change (`reason`: the store's words)."""

    stored: int
    refused: tuple[str, ...] = ()
    reason: str = ""


class ExchangeStore(Protocol):
    """Where finished exchanges are kept. Every method may raise `ExchangeLogUnavailable`."""

    url: str

    async def open(self) -> None: ...

    async def write(self, records: Sequence[LogRecord]) -> Written:
        """Insert `records` in one transaction (a record the store refuses for its data aside)."""

    async def roll_up(self, cutoff: float) -> int: ...

    async def fetch(
        self, since: float | None, until: float | None
    ) -> tuple[list[ExchangeRow], list[HourlyRow]]: ...

    async def aclose(self) -> None: ...

    def hurry(self, deadline: float) -> None:
        """A closing gateway's: an operation in flight gives up at `deadline` (`time.monotonic()`) at the
        latest, if the store can stop it without losing or doubling rows."""


# column -> (SQLite type, PostgreSQL type): the PostgreSQL table's columns, and the types the SQLite
# view gives its columns (`exchange_view_sql`).
_LOG_TYPES: dict[str, tuple[str, str]] = {
    # PostgreSQL keys the table (`POSTGRES_KEY`): a commit whose reply is lost is retried, and the key
    # makes that retry a no-op. SQLite does not: a failed batch rolls back whole, so a retry never doubles a
    # row, and keeping random request ids in an index costs an insert into a random page (13.6
    # against 6.3 µs per row on a 150,000-row log, measured on the columns of earlier releases).
    "request_id": ("TEXT NOT NULL", "TEXT NOT NULL"),
    "started_at": ("REAL NOT NULL", "DOUBLE PRECISION NOT NULL"),
    "stream": ("INTEGER NOT NULL", "BOOLEAN NOT NULL"),
    "status": ("INTEGER NOT NULL", "INTEGER NOT NULL"),
    "ttft_ms": ("REAL", "DOUBLE PRECISION"),
    "escalation": ("INTEGER NOT NULL", "BOOLEAN NOT NULL"),
    "simulated": ("INTEGER NOT NULL", "BOOLEAN NOT NULL"),
    "fallbacks": ("INTEGER NOT NULL", "INTEGER NOT NULL"),
    "prompt_tokens": ("INTEGER NOT NULL", "BIGINT NOT NULL"),
    "completion_tokens": ("INTEGER NOT NULL", "BIGINT NOT NULL"),
    "attempts": ("TEXT NOT NULL", "JSONB NOT NULL"),
    "signals": ("TEXT NOT NULL", "JSONB NOT NULL"),
    "retrieval_hits": ("INTEGER", "INTEGER"),
}
# Columns added after the first release: PostgreSQL logs created before them gain them on open, as
# NULL (in SQLite, the view reads them as NULL from older records).
ADDED_COLUMNS = ("cascade_confidence", "retrieval_hits", "retrieval_ms")
_NULLABLE_FLOATS = {"ttft_ms", "cascade_confidence", "retrieval_ms"}
_NULLABLE_TEXT = {"conversation_id", "route", "model", "api_key", "prompt_body", "answer_body"}
_FLOATS = {"latency_ms", "upstream_ms", "overhead_ms", "cost_usd"}


def column_type(name: str, dialect: int) -> str:
    """A log column's type in dialect 0 (SQLite) or 1 (PostgreSQL)."""
    if name in _LOG_TYPES:
        return _LOG_TYPES[name][dialect]
    if name in _FLOATS:
        return ("REAL NOT NULL", "DOUBLE PRECISION NOT NULL")[dialect]
    if name in _NULLABLE_FLOATS:
        return ("REAL", "DOUBLE PRECISION")[dialect]
    return "TEXT" if name in _NULLABLE_TEXT else "TEXT NOT NULL"


JSON_COLUMNS = frozenset({name for name in LOG_COLUMNS if column_type(name, 1).startswith("JSONB")})


def schema(dialect: int) -> list[str]:
    """DDL for dialect 0 (SQLite) or 1 (PostgreSQL); every statement is idempotent. SQLite's view
    of the records as columns is `exchange_view_sql()`."""
    real, count = ("REAL", "INTEGER") if dialect == 0 else ("DOUBLE PRECISION", "BIGINT")
    hourly_counts = ", ".join(f"{name} {count} NOT NULL" for name in _HOURLY_COUNTS)
    if dialect == 0:
        exchanges = [
            f"CREATE TABLE IF NOT EXISTS {RECORDS_TABLE} (started_at REAL NOT NULL, record TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {RECORDS_TABLE}_started_at ON {RECORDS_TABLE} (started_at)",
        ]
    else:
        columns = ",\n  ".join(f"{name} {column_type(name, dialect)}" for name in LOG_COLUMNS)
        exchanges = [
            f"CREATE TABLE IF NOT EXISTS exchanges (\n  {columns},\n  PRIMARY KEY ({', '.join(POSTGRES_KEY)})\n)",
            "CREATE INDEX IF NOT EXISTS exchanges_started_at ON exchanges (started_at)",
        ]
    return [
        *exchanges,
        (
            f"CREATE TABLE IF NOT EXISTS exchanges_hourly (hour {real} NOT NULL, model TEXT NOT NULL, "
            f"route TEXT NOT NULL, lane TEXT NOT NULL, {hourly_counts}, cost_usd {real} NOT NULL, "
            "PRIMARY KEY (hour, model, route, lane))"
        ),
    ]


def exchange_view_sql() -> str:
    """SQLite's `exchanges`: every `LOG_COLUMNS` column read out of the stored JSON array, typed as
    `column_type` says (JSON `true` and `false` read as 1 and 0), the attempts as objects."""
    return f"CREATE VIEW exchanges AS SELECT\n  {_sqlite_columns(ATTEMPT_OBJECTS)}\nFROM {RECORDS_TABLE}"


def _sqlite_columns(attempts: str) -> str:
    return ",\n  ".join(attempts if name == "attempts" else _view_column(i, name)
                        for i, name in enumerate(LOG_COLUMNS))


def _view_column(index: int, name: str) -> str:
    if name == "started_at":
        return name  # the indexed column, so that a window on the view uses the index
    value = f"json_extract(record, '$[{index}]')"
    if column_type(name, 0).startswith("REAL"):
        value = f"CAST({value} AS REAL)"  # a whole number in JSON would read as an INTEGER
    return f"{value} AS {name}"


_STORED_ATTEMPTS = f"json_extract(record, '$[{LOG_COLUMNS.index('attempts')}]')"
# What SQL on the view sees: each stored array of values as an object of `ATTEMPT_FIELDS`.
ATTEMPT_OBJECTS = (
    "(SELECT json_group_array(json_object("  # noqa: S608 (constant names)
    + ", ".join(f"'{name}', json_extract(a.value, '$[{i}]')" for i, name in enumerate(ATTEMPT_FIELDS))
    + f")) FROM json_each({_STORED_ATTEMPTS}) AS a) AS attempts"
)
# Laneway's own queries read SQLite's records through this instead of the view: the attempts as stored,
# arrays of values, so that a report does not build objects for every row.
_SQLITE_ROWS = f"(SELECT {_sqlite_columns(f'{_STORED_ATTEMPTS} AS attempts')} FROM {RECORDS_TABLE})"  # noqa: S608


def attempt_field(element: str, name: str, dialect: int) -> str:
    """SQL for field `name` of the attempt `element` (a JSON value): an array of values as SQLite stores
    it (dialect 0), an object in PostgreSQL (dialect 1), as text or a number."""
    return f"json_extract({element}, '$[{ATTEMPT_FIELDS.index(name)}]')" if dialect == 0 else f"{element}->>'{name}'"


def _attempt_cost(element: str, dialect: int) -> str:
    cost = attempt_field(element, "cost_usd", dialect)
    return cost if dialect == 0 else f"({cost})::float8"


def _attempt_count(element: str, name: str, dialect: int) -> str:
    """An attempt's token count `name`, 0 when absent."""
    count = attempt_field(element, name, dialect)
    return f"COALESCE({count}, 0)" if dialect == 0 else f"COALESCE(({count})::int8, 0)"


def _first_attempt(name: str, dialect: int) -> str:
    """SQL for field `name` of an exchange's first attempt, NULL when it has none."""
    return (f"json_extract(attempts, '$[0][{ATTEMPT_FIELDS.index(name)}]')" if dialect == 0
            else f"attempts->0->>'{name}'")


def convert_attempts_sql() -> str:
    """SQLite: rewrite the attempts of records from releases that stored them as objects into arrays of
    values (records already converted are left alone)."""
    values = ", ".join(f"json_extract(a.value, '$.{name}')" for name in ATTEMPT_FIELDS)
    index = LOG_COLUMNS.index("attempts")
    return (
        f"UPDATE {RECORDS_TABLE} SET record = json_replace(record, '$[{index}]', "  # noqa: S608 (constant names)
        f"(SELECT json_group_array(json_array({values})) FROM json_each(record, '$[{index}]') AS a)) "
        f"WHERE json_type(record, '$[{index}][0]') = 'object'"
    )


# Hourly columns added after the first release; a log created before them gains them on open, as 0.
ADDED_HOURLY_COLUMNS = ("failed_attempts", "retrievals", "retrieval_hits")


# PostgreSQL's key: an exchange is its request id and its start, since a client may send one `x-request-id`
# for several requests (a retry keeps its id), and each is an exchange of its own. Logs of earlier releases,
# keyed by the request id alone, lost every exchange after the first under an id; they are rekeyed on open.
POSTGRES_KEY = ("request_id", "started_at")
KEY_COLUMNS_SQL = (
    "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i JOIN pg_attribute a "
    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'exchanges'::regclass "
    "AND i.indisprimary"
)
KEY_NAME_SQL = "SELECT conname FROM pg_constraint WHERE conrelid = 'exchanges'::regclass AND contype = 'p'"


def rekey_sql(constraint: str) -> str:
    """PostgreSQL: the statement that rekeys a log of an earlier release (`constraint`: its key's name)."""
    return (f'ALTER TABLE exchanges DROP CONSTRAINT "{constraint}", '
            f"ADD PRIMARY KEY ({', '.join(POSTGRES_KEY)})")


def added_columns() -> list[str]:
    """PostgreSQL: `ALTER TABLE` statements for the columns a log created by an older release lacks."""
    return [f"ALTER TABLE exchanges ADD COLUMN IF NOT EXISTS {n} {column_type(n, 1)}" for n in ADDED_COLUMNS] + [
        f"ALTER TABLE exchanges_hourly ADD COLUMN IF NOT EXISTS {n} BIGINT NOT NULL DEFAULT 0"
        for n in ADDED_HOURLY_COLUMNS
    ]


_HOURLY_COUNTS = (
    "requests",
    "errors",
    "timeouts",
    "escalated_ok",
    "tokens_in",
    "tokens_out",
    "conversations",
    "fallbacks",
    "simulated",
    "failed_attempts",
    "retrievals",
    "retrieval_hits",
)
_HOURLY_SELECT = {
    "requests": "COUNT(*)",
    "errors": f"SUM(CASE WHEN outcome NOT IN ('ok', '{CLIENT_DISCONNECTED}') THEN 1 ELSE 0 END)",
    "timeouts": "SUM(CASE WHEN outcome = 'model_inference_deadline_exceeded' THEN 1 ELSE 0 END)",
    "escalated_ok": "SUM(CASE WHEN outcome = 'ok' AND escalation THEN 1 ELSE 0 END)",
    "tokens_in": "SUM(prompt_tokens)",
    "tokens_out": "SUM(completion_tokens)",
    "cost_usd": "SUM(cost_usd)",
    "conversations": (
        "COUNT(DISTINCT conversation_id) + SUM(CASE WHEN conversation_id IS NULL THEN 1 ELSE 0 END)"
    ),
    "fallbacks": "SUM(fallbacks)",
    "simulated": "SUM(CASE WHEN simulated THEN 1 ELSE 0 END)",
    "failed_attempts": "0",  # all of them come from the attempts, in `_attempts_roll_up`
    "retrievals": "SUM(CASE WHEN retrieval_hits IS NOT NULL THEN 1 ELSE 0 END)",
    "retrieval_hits": "SUM(CASE WHEN retrieval_hits > 0 THEN 1 ELSE 0 END)",
}
HOURLY_COLUMNS = HourlyRow._fields
# The statements below are assembled from the constant column names above, never from input: every
# value travels as a bound parameter, hence the `noqa: S608`.


_CASTS = {"DOUBLE PRECISION": "float8", "INTEGER": "int4", "BIGINT": "int8", "BOOLEAN": "boolean"}


def postgres_insert_sql() -> str:
    """PostgreSQL: the insert of a batch of records, bound as one `jsonb[]` and unpacked into
    columns by the server."""
    values = ", ".join(_from_record(i, name) for i, name in enumerate(LOG_COLUMNS))
    # No conflict target: the key is request_id; a retried batch is a no-op.
    return (
        f"INSERT INTO exchanges ({', '.join(LOG_COLUMNS)}) SELECT {values} "  # noqa: S608
        "FROM unnest($1::jsonb[]) AS batch(r) ON CONFLICT DO NOTHING"
    )


def _from_record(index: int, name: str) -> str:
    if name == "attempts":  # arrays of values in the record, objects in the table
        pairs = ", ".join(f"'{field}', a->{i}" for i, field in enumerate(ATTEMPT_FIELDS))
        return (f"(SELECT COALESCE(jsonb_agg(jsonb_build_object({pairs}) ORDER BY n), '[]'::jsonb) "  # noqa: S608
                f"FROM jsonb_array_elements(r->{index}) WITH ORDINALITY AS x(a, n))")
    if name in JSON_COLUMNS:
        return f"r->{index}"
    cast = _CASTS.get(column_type(name, 1).removesuffix(" NOT NULL"))
    return f"(r->>{index})::{cast}" if cast else f"r->>{index}"


def roll_up_sql(dialect: int) -> tuple[str, str, str]:
    """Upsert hourly aggregates of raw rows older than the cutoff (the exchanges, then their
    attempts), then delete those rows. The statements take the cutoff as their parameters (the
    attempts' statement takes it twice)."""
    hour = (
        "CAST(started_at / 3600 AS INTEGER) * 3600.0" if dialect == 0 else "floor(started_at / 3600) * 3600"
    )
    sums = [_HOURLY_SELECT[name] for name in HOURLY_COLUMNS[4:]]
    merge = ", ".join(f"{name} = exchanges_hourly.{name} + excluded.{name}" for name in HOURLY_COLUMNS[4:])
    upsert = (
        f"INSERT INTO exchanges_hourly ({', '.join(HOURLY_COLUMNS)}) "  # noqa: S608
        f"SELECT {hour}, COALESCE(model, ''), COALESCE(route, ''), lane, {', '.join(sums)} "
        "FROM exchanges WHERE started_at < ? GROUP BY 1, 2, 3, 4 "
        f"ON CONFLICT (hour, model, route, lane) DO UPDATE SET {merge}"
    )
    table = RECORDS_TABLE if dialect == 0 else "exchanges"
    return upsert, _attempts_roll_up(dialect, hour), f"DELETE FROM {table} WHERE started_at < ?"  # noqa: S608


def _attempts_roll_up(dialect: int, hour: str) -> str:
    """What the hourly rows keep of the attempts, as `summarize` reads them from raw rows: each failed
    attempt counts against its model, and the cost of an attempt at another model than the one that
    answered (a cascade's first answer, a verifier's grade) moves to that model, and its tokens are added
    there (the exchange's own are its answer's). Only exchanges with more than one attempt, or that
    failed, are looked at; shadows are not. The rows this adds for a model that answered nothing have
    no requests."""
    if dialect == 0:
        source, length = f"{_SQLITE_ROWS} e, json_each(e.attempts) a", "json_array_length(e.attempts)"
        element, other = "a.value", "IS NOT"
    else:
        source, length = "exchanges e, jsonb_array_elements(e.attempts) a", "jsonb_array_length(e.attempts)"
        element, other = "a", "IS DISTINCT FROM"
    model, outcome = attempt_field(element, "model", dialect), attempt_field(element, "outcome", dialect)
    cost = _attempt_cost(element, dialect)
    tokens_in, tokens_out = (_attempt_count(element, name, dialect) for name in ("prompt_tokens", "completion_tokens"))
    moved = (f"{length} > 1 AND ({cost} > 0 OR {tokens_in} > 0 OR {tokens_out} > 0) AND {model} {other} e.model "
             f"AND {outcome} NOT IN {_NOT_SENT}")
    scope = f"e.started_at < ? AND e.lane <> '{SHADOW_LANE}' AND ({length} > 1 OR e.outcome <> 'ok')"
    at = hour.replace("started_at", "e.started_at")
    added = ("cost_usd", "failed_attempts", "tokens_in", "tokens_out")
    counts = [name for name in HOURLY_COLUMNS[4:] if name not in added]
    merge = ", ".join(f"{name} = exchanges_hourly.{name} + excluded.{name}" for name in added)
    # The parameter is bound twice: SQLite's `?` once per use, PostgreSQL's `$1` by `numbered`, once per `?`.
    return (
        f"INSERT INTO exchanges_hourly ({', '.join(HOURLY_COLUMNS[:4])}, {', '.join(counts)}, "  # noqa: S608
        f"{', '.join(added)}) SELECT hour, model, route, lane, {', '.join('0' for _ in counts)}, "
        "SUM(moved), SUM(failed), SUM(moved_in), SUM(moved_out) FROM ("
        f"SELECT {at} AS hour, COALESCE({model}, '') AS model, COALESCE(e.route, '') AS route, e.lane AS lane, "
        f"CASE WHEN {outcome} NOT IN {_NOT_FAILED} THEN 1 ELSE 0 END AS failed, "
        f"CASE WHEN {moved} THEN {cost} ELSE 0 END AS moved, "
        f"CASE WHEN {moved} THEN {tokens_in} ELSE 0 END AS moved_in, "
        f"CASE WHEN {moved} THEN {tokens_out} ELSE 0 END AS moved_out FROM {source} WHERE {scope} "
        f"UNION ALL SELECT {at}, COALESCE(e.model, ''), COALESCE(e.route, ''), e.lane, 0, -{cost}, 0, 0 "
        f"FROM {source} WHERE {scope} AND {moved}"
        ") AS attempts WHERE true GROUP BY 1, 2, 3, 4 "
        # an attempt that neither failed nor billed (one never sent, a hang-up) adds no row of its own
        "HAVING SUM(failed) <> 0 OR SUM(moved) <> 0 OR SUM(moved_in) <> 0 OR SUM(moved_out) <> 0 "
        f"ON CONFLICT (hour, model, route, lane) DO UPDATE SET {merge}"
    )


_NOT_FAILED = "(" + ", ".join(f"'{outcome}'" for outcome in NOT_FAILED) + ")"
_NOT_SENT = "(" + ", ".join(f"'{outcome}'" for outcome in NOT_SENT) + ")"


def _row_sources(dialect: int) -> dict[str, str]:
    """SQL for the `ExchangeRow` fields that are not log columns of the same name, in dialect 0 (SQLite,
    reading `_SQLITE_ROWS`) or 1 (PostgreSQL). The entry lane and model come from the first attempt, so
    rows written before those figures were read still have them."""
    if dialect == 0:
        signals, length, each, element = "signals", "json_array_length(attempts)", "json_each(attempts)", "value"
        concat, pair, other = "group_concat({}, char(31))", "json_group_array(json_array({}, {}, {}, {}))", "IS NOT"
    else:
        signals, length = "signals::text", "jsonb_array_length(attempts)"
        each, element = "jsonb_array_elements(attempts) a", "a"
        concat, pair = "string_agg({}, chr(31))", "json_agg(json_build_array({}, {}, {}, {}))::text"
        other = "IS DISTINCT FROM"
    model, outcome = attempt_field(element, "model", dialect), attempt_field(element, "outcome", dialect)
    cost = _attempt_cost(element, dialect)
    tokens_in, tokens_out = _attempt_count(element, "prompt_tokens", dialect), _attempt_count(
        element, "completion_tokens", dialect)
    failed = f"SELECT {concat.format(model)} FROM {each} WHERE {outcome} NOT IN {_NOT_FAILED}"  # noqa: S608
    others = (f"SELECT {pair.format(model, cost, tokens_in, tokens_out)} FROM {each} "  # noqa: S608 (constant names)
              f"WHERE ({cost} > 0 OR {tokens_in} > 0 OR {tokens_out} > 0) AND {model} {other} exchanges.model "
              f"AND {outcome} NOT IN {_NOT_SENT}")
    return {
        "tokens_in": "prompt_tokens",
        "tokens_out": "completion_tokens",
        "entry_lane": f"COALESCE({_first_attempt('lane', dialect)}, lane)",
        "entry_model": f"COALESCE({_first_attempt('model', dialect)}, model)",
        "signals": f"CASE WHEN lane = 'shadow' THEN {signals} END",
        # As `failed_models` computes it: looked for only where an exchange has more than one attempt or failed.
        "failed_models": f"CASE WHEN {length} > 1 OR outcome <> 'ok' THEN ({failed}) END",
        "other_costs": f"CASE WHEN {length} > 1 THEN ({others}) END",
    }


def fetch_rows_sql(dialect: int) -> str:
    sources = _row_sources(dialect)
    table = f"{_SQLITE_ROWS} AS exchanges" if dialect == 0 else "exchanges"
    return (
        f"SELECT {', '.join(sources.get(name, name) for name in ROW_COLUMNS)} FROM {table} "  # noqa: S608
        "WHERE started_at >= ? AND started_at < ? ORDER BY started_at"
    )


def fetch_hourly_sql(missing: Collection[str] = ()) -> str:
    """The hourly rows of a window: those whose hour starts in it (an hour counts whole, in the window
    holding its start); `missing` columns (of a log a report may not convert) read as 0."""
    columns = ", ".join(f"0 AS {name}" if name in missing else name for name in HOURLY_COLUMNS)
    return f"SELECT {columns} FROM exchanges_hourly WHERE hour >= ? AND hour < ? ORDER BY hour"  # noqa: S608


FETCH_HOURLY_SQL = fetch_hourly_sql()


def window(since: float | None, until: float | None) -> tuple[float, float]:
    return (FAR_PAST if since is None else since, FAR_FUTURE if until is None else until)


def exchange_row(values: Sequence[Any]) -> ExchangeRow:
    row = ExchangeRow(*values)
    signals = orjson.loads(row.signals) if isinstance(row.signals, str) else None
    failed = tuple(row.failed_models.split(FAILED_SEPARATOR)) if isinstance(row.failed_models, str) else ()
    others: list[list[Any]] = orjson.loads(row.other_costs) if isinstance(row.other_costs, str) else []
    return row._replace(escalation=bool(row.escalation), simulated=bool(row.simulated), signals=signals,
                        failed_models=failed,
                        other_costs=tuple((str(m), float(c), int(i), int(o)) for m, c, i, o in others))


def numbered(sql: str) -> str:
    """`?` placeholders to PostgreSQL's `$1, $2, ...`."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def open_store(url: str, *, reading: bool = False) -> ExchangeStore:
    """The store for an exchange log URL (`sqlite:///...` or `postgresql://...`). A store opened for
    `reading` (the reports) never creates the log's tables: a database without them is an error."""
    if url.startswith("sqlite:///"):
        from laneway.telemetry._sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from laneway.telemetry._postgres import PostgresStore

        return PostgresStore(url, reading=reading)
    raise ConfigError(
        [ConfigIssue("telemetry.exchange_log", f"`{without_password(url)}`: use `sqlite:///` or `postgresql://`")]
    )
