"""The exchange log's batching writer: a bounded backlog, retries while the store is down.

Nothing is dropped silently: an exchange that does not fit in the backlog, or is still unwritten
when the close timeout runs out, is counted in `LogHealth.dropped` (and so in the metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from itertools import islice

from laneway.errors import without_password
from laneway.telemetry._metrics import LogHealth
from laneway.telemetry._records import LogRecord
from laneway.telemetry._settings import TelemetrySettings
from laneway.telemetry._store import ExchangeLogUnavailable, ExchangeStore

log = logging.getLogger("laneway.telemetry")

MAX_BACKOFF_S = 5.0
ROLL_UP_EVERY_S = 3600.0
CLOSE_RETRY_S = 0.1
WRITE_BATCHES = 50


class ExchangeLog:
    """Buffers log records and writes them to the store in batches."""

    def __init__(self, store: ExchangeStore, settings: TelemetrySettings, health: LogHealth) -> None:
        self.store = store
        self.health = health
        self._settings = settings
        self._backlog: deque[LogRecord] = deque()
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self._next_roll_up = 0.0
        self._dropping = False  # the backlog overflowed (said once), since the outage began
        self._dropped_before = 0  # `health.dropped` when the outage began
        self._maybe_stored = 0  # rows first in the backlog that a failed write may have stored all the same
        # One store operation at a time: a write spans several turns of the event loop, and a flush
        # or roll-up asked for meanwhile must wait for it (or it would write the same rows again).
        self._busy = asyncio.Lock()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def offer(self, records: Sequence[LogRecord]) -> None:
        room = max(0, self._settings.buffer_limit - len(self._backlog))
        self._backlog.extend(records[:room])
        if len(records) > room:
            if not self._dropping:  # once per outage (the count is in the metrics, and said at its end)
                self._dropping = True
                log.error("exchange log `%s`: the backlog is full (`telemetry.buffer_limit`: %d); exchanges are "
                          "dropped, unrecorded, until the store takes writes again",
                          without_password(self.store.url), self._settings.buffer_limit)
            self.health.dropped += len(records) - room
        self.health.backlog = len(self._backlog)

    async def open(self) -> None:
        try:
            await self.store.open()
        except ExchangeLogUnavailable as error:
            self._failed(error)

    async def write_pending(self, *, force: bool = False) -> bool:
        """Write the backlog in batches of `batch_size` rows; False if the store failed.

        An unforced write takes the backlog of the moment, not what arrives meanwhile (at
        saturation it would never end), in at most `WRITE_BATCHES` batches: batches grow with the
        backlog. A forced write (flush, shutdown) writes everything."""
        if not force and time.monotonic() < self._retry_at:
            return False
        async with self._busy:
            return await self._write_backlog(force)

    async def _write_backlog(self, force: bool) -> bool:
        todo = len(self._backlog)
        size = self._settings.batch_size if force else max(self._settings.batch_size, -(-todo // WRITE_BATCHES))
        while self._backlog and (force or todo > 0):
            batch = list(islice(self._backlog, size))
            try:
                written = await self.store.write(batch)
            except ExchangeLogUnavailable as error:
                # its rows stay first in the backlog, and the store may have taken them (a reply lost)
                self._maybe_stored = max(self._maybe_stored, len(batch))
                self._failed(error)
                return False
            # Only `offer` touches the backlog meanwhile, and it appends on the right.
            for _ in batch:
                self._backlog.popleft()
            todo -= len(batch)
            self.health.written += written.stored
            if written.refused:
                self.health.dropped += len(written.refused)
                log.error("laneway: the exchange log refused %d exchange(s) for what they hold, and they are not "
                          "logged (request ids %s): %s", len(written.refused), ", ".join(written.refused[:10]),
                          written.reason)
            doubtful = min(self._maybe_stored, len(batch))
            self._maybe_stored -= doubtful
            # PostgreSQL keys rows by request id and start: beyond the rows of a write that failed but may have
            # committed, a row already there is another exchange under the same key, and it is lost
            if reused := max(0, len(batch) - written.stored - len(written.refused) - doubtful):
                self.health.dropped += reused
                log.warning("laneway: %d exchange(s) were not logged: an exchange with the same request id and start "
                            "is logged already; counted as dropped", reused)
            self.health.backlog = len(self._backlog)
            self._recovered()
        return True

    async def roll_up_if_due(self, now: float) -> None:
        if time.monotonic() < max(self._next_roll_up, self._retry_at):
            return
        try:
            await self.roll_up(now)
        except ExchangeLogUnavailable as error:
            self._failed(error)
            return
        self._next_roll_up = time.monotonic() + ROLL_UP_EVERY_S

    async def roll_up(self, now: float) -> int:
        cutoff = now - self._settings.retention_days * 86_400.0
        async with self._busy:
            rolled = await self.store.roll_up(cutoff)
        if rolled:
            log.info(
                "exchange log: rolled %d exchanges older than %d days into hourly aggregates",
                rolled,
                self._settings.retention_days,
            )
        return rolled

    def start_closing(self) -> float:
        """Start closing: the close must be over `close_timeout_ms` from now (returned, `time.monotonic()`),
        and a write in flight is told to give up by then (`ExchangeStore.hurry`), so it does not hold the close."""
        deadline = time.monotonic() + self._settings.close_timeout_ms / 1000.0
        self.store.hurry(deadline)
        return deadline

    async def close(self, deadline: float | None = None) -> None:
        """Write what is left by `deadline` (by default `close_timeout_ms` from now), however the store
        behaves (a store that stops answering holds a write until the deadline, not for good); what stays
        unwritten is counted."""
        if deadline is None:
            deadline = time.monotonic() + self._settings.close_timeout_ms / 1000.0
        budget_s = max(0.0, deadline - time.monotonic())
        if self._backlog and not self.health.up:
            log.warning("exchange log `%s` is unavailable: trying to write %d exchanges for up to %.1f s "
                        "(`telemetry.close_timeout_ms`) before stopping", without_password(self.store.url),
                        len(self._backlog), budget_s)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(budget_s):
                    while True:
                        if await self.write_pending(force=True) or time.monotonic() >= deadline:
                            break
                        await asyncio.sleep(CLOSE_RETRY_S)
        except asyncio.CancelledError:  # a second Ctrl-C: stop now, but say what it cost
            if self._backlog:
                self.health.dropped += len(self._backlog)
                log.error("exchange log `%s`: stopped before %d exchanges were written",
                          without_password(self.store.url), len(self._backlog))
                self._backlog.clear()
            raise
        if self._backlog:
            lost = len(self._backlog)
            self.health.dropped += lost
            self._backlog.clear()
            self.health.backlog = 0
            log.error(
                "exchange log `%s` stayed unavailable: %d exchanges were not written",
                without_password(self.store.url),
                lost,
            )
        try:
            await self.store.aclose()
        except ExchangeLogUnavailable as error:
            log.warning("%s", error)

    def _failed(self, error: ExchangeLogUnavailable) -> None:
        if self.health.up:  # an outage begins: its drops are said once, and counted up at its end
            log.warning("%s; buffering up to %d exchanges and retrying", error, self._settings.buffer_limit)
            self._dropping, self._dropped_before = False, self.health.dropped
        self.health.up = False
        self._backoff_s = min(
            MAX_BACKOFF_S, max(self._settings.flush_interval_ms / 1000.0, self._backoff_s * 2)
        )
        self._retry_at = time.monotonic() + self._backoff_s

    def _recovered(self) -> None:
        if not self.health.up:
            lost = self.health.dropped - self._dropped_before
            log.log(logging.ERROR if lost else logging.INFO, "exchange log `%s` is writable again%s",
                    without_password(self.store.url),
                    f"; {lost} exchanges were dropped unrecorded meanwhile" if lost else "")
        self.health.up = True
        self._backoff_s = 0.0
        self._retry_at = 0.0
