"""The telemetry sink the gateway records every finished exchange into.

`record()` only appends to a bounded buffer. A background task drains it into the metrics, the
in-memory window behind `stats()`, and the exchange log's batching writer. All methods are meant
to be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Any

import orjson

from laneway.exchange import Exchange
from laneway.telemetry._dashboard import dashboard_page
from laneway.telemetry._metrics import GatewayMetrics, LogHealth, StateSamples
from laneway.telemetry._records import SHADOW_LANE, ExchangeRow, LogRecord, fallbacks_of, log_record_of
from laneway.telemetry._settings import TelemetrySettings
from laneway.telemetry._shadow_comparison import shadow_comparison
from laneway.telemetry._store import open_store
from laneway.telemetry._summary import summarize
from laneway.telemetry._traces import ExchangeTracer
from laneway.telemetry._window import RecentExchanges, rows_of_columns
from laneway.telemetry._writer import ExchangeLog

logger = logging.getLogger("laneway.telemetry")

# The background drain works in small slices with a pause between them. A request needs several
# turns of the event loop (read, send upstream, read the answer, respond); a drain that yielded only
# one turn (`sleep(0)`) ran a slice between each of them and added them all to the request's
# latency: p99 at one connection 2.0-2.5 ms, against 0.8 ms with pauses (docs/benchmarks.md).
# Each flush drains what was pending when it began. Slices grow with the backlog (it then takes
# about `DRAIN_SLICES` of them), up to `DRAIN_SLICE_MAX`, which holds the loop about 0.5 ms. Small
# slices with short pauses (4 exchanges, 0.5 ms) hold each request up less often and for less than
# 16 with 2 ms: p99 at one connection 0.59 against 0.64 ms, and 3.7 µs less CPU per request
# (docs/benchmarks.md, ninth round).
DRAIN_SLICE = 4
DRAIN_SLICE_MAX = 64
DRAIN_PAUSE_S = 0.0005
DRAIN_SLICES = 200
# Exchanges waiting for the drain, at most: past it (a loop too busy to run the drain task), `record` drains
# a slice itself, so that memory stays bounded and the metrics still see every exchange.
PENDING_LIMIT = 50_000
METRICS_OFF = b"# metrics are turned off (`telemetry.metrics: false`)\n"
LOG_FIGURES = ("enabled", "up", "backlog", "written", "dropped")  # the exchange log's health in `stats()`
SHADOW_DROPPED = "shadow_dropped_"  # prefix of the events a shadow runner counts for each dropped job
# An exchange telemetry cannot take is logged with its traceback at most this often; the ones between are
# counted in the next such line. A fault that hit every exchange logged a traceback per request.
UNRECORDED_SAID_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Window:
    """One process's in-memory figures: its recent exchanges, shadows apart, the shadow jobs it dropped
    per candidate, its exchange log's health as `stats()["log"]` shows it, when it started (unix
    time): it holds nothing from before, and, once it has let exchanges go (`telemetry.stats_window`),
    the latest start among them (`let_go`): it holds every exchange that started after it, not all of
    those that started before (rows are kept in the order they ended)."""

    rows: list[ExchangeRow]
    shadows: list[ExchangeRow]
    shadow_dropped: dict[str, int]
    log: dict[str, Any]
    started_at: float
    let_go: float | None = None

    @classmethod
    def decode(cls, snapshot: bytes) -> Window:
        """The window of `Telemetry.window_snapshot()`; ValueError if `snapshot` is not one."""
        try:
            data = orjson.loads(snapshot)
            return cls(rows_of_columns(data["rows"]), rows_of_columns(data["shadows"]),
                       {str(model): int(n) for model, n in data["shadow_dropped"].items()},
                       {figure: data["log"][figure] for figure in LOG_FIGURES}, float(data["started_at"]),
                       None if data.get("let_go") is None else float(data["let_go"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a telemetry window snapshot: {error!r}") from None


class Telemetry:
    """Metrics, the exchange log, and the figures behind `/admin/stats` and the dashboard."""

    def __init__(self, settings: TelemetrySettings, *, simulated: bool = False) -> None:
        self.settings = settings
        self.simulated = simulated
        self.started_at = time.time()
        self.health = LogHealth(enabled=settings.exchange_log is not None)
        self._metrics = GatewayMetrics()
        self._pending: deque[Exchange] = deque()
        # Shadow rows are kept apart, so that a busy shadow lane never pushes primaries out of the window.
        self._recent = RecentExchanges(settings.stats_window)
        self._shadows = RecentExchanges(settings.stats_window)
        self._shadow_dropped: dict[str, int] = {}
        url = settings.exchange_log
        self._log = ExchangeLog(open_store(url), settings, self.health) if url else None
        self._tracer = ExchangeTracer(settings.traces, simulated) if settings.traces else None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._state: Callable[[], StateSamples] | None = None
        self._unrecorded_said_at = -math.inf  # `time.monotonic()` of the last line about an unrecorded exchange
        self._unrecorded_unsaid = 0  # unrecorded exchanges since, not logged one by one

    async def start(self) -> None:
        if self._log is not None:
            await self._log.open()
        self._task = asyncio.create_task(self._run(), name="laneway-telemetry")

    def record(self, exchange: Exchange) -> None:
        """Hand over a finished exchange (not to be mutated afterwards); O(1). The log's `buffer_limit` is
        applied where the log holds its backlog, not here: the metrics count every exchange."""
        self._pending.append(exchange)
        if len(self._pending) > PENDING_LIMIT:
            self._drain(DRAIN_SLICE_MAX)

    def count(self, event: str, model: str, n: int = 1) -> None:
        self._metrics.count(event, model, n)
        if event.startswith(SHADOW_DROPPED):
            self._shadow_dropped[model] = self._shadow_dropped.get(model, 0) + n

    def observe_queue_wait(self, model: str, seconds: float) -> None:
        """Time one request waited in `model`'s gate queue."""
        self._metrics.observe_queue_wait(model, seconds)

    def watch_state(self, source: Callable[[], StateSamples]) -> None:
        """Where each scrape reads the gateway's state: breakers and gates (`STATE_FAMILIES`)."""
        self._state = source

    def render_metrics(self) -> bytes:
        if not self.settings.metrics:
            return METRICS_OFF
        self._drain()
        return self._metrics.render(self.health, self._state() if self._state is not None else None)

    def stats(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """The figures of `GET /admin/stats` over the in-memory window, computed on the calling thread."""
        return self._summary([self.window()], since, until)

    async def stats_off_loop(self, since: float | None = None, until: float | None = None,
                             peers: Sequence[Window] = ()) -> dict[str, Any]:
        """`stats()`, with the other workers' windows (`peers`) added, computed in a worker thread.

        A full window of 10,000 exchanges takes about 20 ms to read and 40 ms to summarize; on the
        event loop, every dashboard poll held up every request for as long. Only a copy of the
        window is taken on the loop, which alone changes it."""
        recent, shadows, dropped, log = self._copy()

        def figures() -> dict[str, Any]:
            own = Window(recent.rows(), shadows.rows(), dropped, log, self.started_at, recent.let_go)
            return self._summary([own, *peers], since, until)

        return await asyncio.to_thread(figures)

    def window(self) -> Window:
        """What this process holds in memory: the rows behind `stats()` and the shadow comparison."""
        recent, shadows, dropped, log = self._copy()
        return Window(recent.rows(), shadows.rows(), dropped, log, self.started_at, recent.let_go)

    async def window_snapshot(self) -> bytes:
        """`window()` as JSON, for the worker that answers for all of `laneway serve --workers N`
        (`Window.decode` reads it back); encoded in a worker thread."""
        recent, shadows, dropped, log = self._copy()
        return await asyncio.to_thread(lambda: orjson.dumps(
            {"rows": recent.columns(), "shadows": shadows.columns(), "shadow_dropped": dropped, "log": log,
             "started_at": self.started_at, "let_go": recent.let_go}))

    def _copy(self) -> tuple[RecentExchanges, RecentExchanges, dict[str, int], dict[str, Any]]:
        """The window as it is now, apart from the one the drain goes on changing."""
        self._drain()
        health = self.health
        log = {figure: getattr(health, figure) for figure in LOG_FIGURES}
        return self._recent.copy(), self._shadows.copy(), dict(self._shadow_dropped), log

    def _summary(self, windows: Sequence[Window], since: float | None, until: float | None) -> dict[str, Any]:
        """The figures over `windows` in `[since, until)`. A window that has let exchanges go holds every one
        that started after the last of them started, not all of those before (a long one still held does
        not make its start a bound): its figures start at the first it holds after that, for every worker's
        alike, and say so when asked from before (`window.truncated`, `window.asked_since`); the exchange
        log (`laneway report`) has the rest."""
        held_from = max((_complete_from(w) for w in windows if w.let_go is not None), default=None)
        truncated = since is not None and held_from is not None and since < held_from
        start = held_from if held_from is not None and (since is None or since < held_from) else since
        rows = chain.from_iterable(chain(w.rows, w.shadows) for w in windows)
        summary = summarize(rows if len(windows) == 1 else _in_time_order(rows), (), start, until)
        summary["window"]["truncated"] = truncated
        if truncated:
            summary["window"]["asked_since"] = since
        summary["simulated"] = summary["simulated"] or self.simulated
        logs = [w.log for w in windows]
        summary["log"] = {"enabled": any(log["enabled"] for log in logs), "up": all(log["up"] for log in logs),
                          **{figure: sum(log[figure] for log in logs) for figure in ("backlog", "written", "dropped")}}
        return summary

    async def shadow_stats(self, dropped: Mapping[str, int] | None = None, since: float | None = None,
                           until: float | None = None, peers: Sequence[Window] = ()) -> dict[str, Any]:
        """Shadow candidates against their primaries over the in-memory window (`GET /admin/shadow`),
        with the other workers' windows (`peers`) added.

        `dropped` is jobs dropped per candidate (`ShadowRunner.dropped`); by default, the drops this
        sink was told of through `count("shadow_dropped_" + why, model)`, why being `queue`, `budget`,
        `cooling`, `gate`, `refused`, `context` or `shutdown`.
        The rows are taken on the event loop; the bootstrap runs in a worker thread (about a second
        per 10,000 pairs), so the loop keeps serving meanwhile."""
        self._drain()
        rows = [r for r in _in_time_order(chain(self._shadows.rows(), *(peer.shadows for peer in peers)))
                if (since is None or r.started_at >= since) and (until is None or r.started_at < until)]
        drops = Counter(self._shadow_dropped if dropped is None else dropped)
        for peer in peers:
            drops.update(peer.shadow_dropped)
        figures = await asyncio.to_thread(shadow_comparison, rows, dict(drops))
        figures["simulated"] = figures["simulated"] or self.simulated
        figures["window"] = {"since": since, "until": until, "shadow_rows": len(rows)}
        return figures

    def dashboard_html(self) -> bytes:
        return dashboard_page(self.simulated)

    async def flush(self) -> bool:
        """Drain everything recorded so far and write it to the log; False if the store is down."""
        self._drain()
        return True if self._log is None else await self._log.write_pending(force=True)

    async def roll_up(self, now: float | None = None) -> int:
        """Roll raw log rows past the retention period into hourly aggregates; rows rolled up."""
        if self._log is None:
            return 0
        await self.flush()
        return await self._log.roll_up(time.time() if now is None else now)

    async def aclose(self) -> None:
        """Stop, and write what is left within `close_timeout_ms` in all: a write in flight to a store that
        stopped answering gives up at that deadline too (PostgreSQL; an SQLite write is let finish)."""
        deadline = None if self._log is None else self._log.start_closing()
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._drain()
        # The log first: a slow trace collector took the log's whole time to close, and exchanges went unlogged.
        if self._log is not None:
            await self._log.close(deadline)
        if self._tracer is not None:
            await asyncio.to_thread(self._tracer.shutdown)

    async def _run(self) -> None:
        """Every `flush_interval_ms`, from the start of one cycle to the next: drain, then start a
        write of the log unless one is still running. A cycle that waited for its write, and then
        for a whole interval, fell behind at saturation: 10,934 exchanges pending after 8 s at 32
        connections, drained afterwards in the largest slices (docs/benchmarks.md)."""
        loop = asyncio.get_running_loop()
        interval = self.settings.flush_interval_ms / 1000.0
        writing: asyncio.Task[None] | None = None
        next_cycle = loop.time() + interval
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_cycle - loop.time()))
            next_cycle = loop.time() + interval
            # What is pending now, and no more: at saturation, exchanges arrive while this drains,
            # and a drain that waited for an empty buffer would never get to write the log.
            todo = len(self._pending)
            size = min(DRAIN_SLICE_MAX, max(DRAIN_SLICE, -(-todo // DRAIN_SLICES)))
            while todo > 0:
                self._drain(min(size, todo))
                todo -= size
                await asyncio.sleep(DRAIN_PAUSE_S)
            if writing is not None and writing.done():
                writing.result()  # a bug in the writer ends this task, as it did when awaited here
                writing = None
            if self._log is not None and writing is None:
                writing = asyncio.create_task(self._write_log(self._log), name="laneway-exchange-log")
        if writing is not None:
            await writing

    @staticmethod
    async def _write_log(log: ExchangeLog) -> None:
        await log.write_pending()
        await log.roll_up_if_due(time.time())

    def _drain(self, limit: int | None = None) -> None:
        pending = self._pending
        if not pending:
            return
        budget = len(pending) if limit is None else min(limit, len(pending))
        metrics = self._metrics if self.settings.metrics else None  # with them, the window behind `stats()`
        tracer, log, simulated = self._tracer, self._log, self.simulated
        store_bodies, cap = self.settings.store_bodies, self.settings.body_cap_bytes
        recent, shadows = self._recent, self._shadows
        records: list[LogRecord] = []
        for _ in range(budget):
            exchange = pending.popleft()
            try:
                if tracer is not None:
                    tracer.export(exchange)
                if metrics is None and log is None:
                    continue
                fallbacks = fallbacks_of(exchange)
                record = log_record_of(exchange, fallbacks, simulated, store_bodies, cap) if log is not None else None
                if metrics is not None:
                    metrics.observe(exchange, fallbacks)
                    (shadows if exchange.lane == SHADOW_LANE else recent).add(exchange, fallbacks, simulated)
                if record is not None:  # last: an exchange that failed before is not in the log
                    records.append(record)
            except Exception:  # noqa: BLE001 (said in `_unrecorded`): that exchange goes unrecorded, never those after it
                self._unrecorded(exchange)
        if log is not None:
            log.offer(records)

    def _unrecorded(self, exchange: Exchange) -> None:
        """Say (with the traceback, at most every `UNRECORDED_SAID_EVERY_S`) and count an exchange that
        could not be recorded; called in the `except` block."""
        if self._log is not None:
            self.health.dropped += 1
        now = time.monotonic()
        if now - self._unrecorded_said_at < UNRECORDED_SAID_EVERY_S:
            self._unrecorded_unsaid += 1
            return
        unsaid, self._unrecorded_unsaid, self._unrecorded_said_at = self._unrecorded_unsaid, 0, now
        logger.exception("laneway: exchange %r could not be recorded%s%s", exchange.request_id,
                         "; it is counted as dropped from the exchange log" if self._log is not None else "",
                         f" ({unsaid} more could not be since the last such line)" if unsaid else "")


def _in_time_order(rows: Iterable[ExchangeRow]) -> list[ExchangeRow]:
    """Several workers' rows as one window: oldest first, as each worker's own (each is a sorted run)."""
    return sorted(rows, key=_started_at)


_started_at = attrgetter("started_at")


def _complete_from(window: Window) -> float:
    """The first start from which `window` holds every exchange: its first row after those it let go."""
    assert window.let_go is not None
    return min((r.started_at for r in window.rows if r.started_at > window.let_go),
               default=math.nextafter(window.let_go, math.inf))
