"""The in-memory window behind `stats()` and the dashboard: the most recent exchanges, by column.

The window is a ring of preallocated columns: numbers in `array`s, names in lists that point at
the strings the exchange already holds. Adding an exchange allocates nothing (a shadow's signals
aside) and a full window frees nothing. An earlier window kept one log record per exchange (a
tuple, its JSON strings and its floats, about 1 KB): with 10,000 of them, every request of a
gateway at 1,000 requests/s cost 12 µs more CPU than with 100, in memory traffic and in freeing
the oldest record on each arrival. These columns saved 9 µs of it in `bench/compare_variants.py
--cpu --together`, about 3 µs in `bench/profile_gateway.py` (docs/benchmarks.md). Rows are built
only when the window is read.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import chain
from typing import Any

import orjson

from laneway.exchange import Exchange
from laneway.telemetry._records import (
    ROW_COLUMNS,
    SHADOW_LANE,
    ExchangeRow,
    failed_models,
    fallbacks_of,
    other_costs,
    signals_json,
)

_ABSENT = float("nan")  # an absent number in a float column
_NO_HITS = -1  # an absent `retrieval_hits`
_row = partial(tuple.__new__, ExchangeRow)  # a row from a tuple of its fields, without a Python-level call


class RecentExchanges:
    """The last `size` exchanges added, read back as `ExchangeRow`s, oldest first."""

    __slots__ = (
        "_cascade",
        "_conversation",
        "_cost",
        "_entry_lane",
        "_entry_model",
        "_escalation",
        "_failed",
        "_fallbacks",
        "_hits",
        "_lane",
        "_latency",
        "_model",
        "_next",
        "_others",
        "_outcome",
        "_retrieval_ms",
        "_route",
        "_signals",
        "_simulated",
        "_size",
        "_started",
        "_tokens_in",
        "_tokens_out",
        "_ttft",
        "full",
        "let_go",
    )

    def __init__(self, size: int) -> None:
        self._size = size
        self._next = 0
        self.full = False
        self.let_go: float | None = None  # the latest start of the exchanges overwritten: it holds all after it
        self._allocate(0)  # the columns proper come with the first exchange: a window may stay empty

    def __len__(self) -> int:
        return self._size if self.full else self._next

    def add(self, e: Exchange, fallbacks: int, simulated: bool) -> None:
        """Keep `e`'s summary row, overwriting the oldest once the window is full."""
        i = self._next
        if i >= len(self._model):
            if not self._size:
                return
            self._allocate(self._size)
        if self.full:
            gone = self._started[i]
            if self.let_go is None or gone > self.let_go:
                self.let_go = gone
        self._started[i] = e.started_at
        self._latency[i] = e.latency_ms
        ttft, confidence, hits, retrieval_ms = e.ttft_ms, e.cascade_confidence, e.retrieval_hits, e.retrieval_ms
        self._ttft[i] = _ABSENT if ttft is None else ttft
        self._cascade[i] = _ABSENT if confidence is None else confidence
        self._retrieval_ms[i] = _ABSENT if retrieval_ms is None else retrieval_ms
        self._hits[i] = _NO_HITS if hits is None else hits
        self._tokens_in[i] = e.prompt_tokens
        self._tokens_out[i] = e.completion_tokens
        self._cost[i] = e.cost_usd
        self._fallbacks[i] = fallbacks
        self._escalation[i] = e.signals.get("escalation") is True
        self._simulated[i] = simulated
        model, lane = e.model or None, e.lane
        self._model[i] = model
        self._route[i] = e.route or None
        self._lane[i] = lane
        self._outcome[i] = e.outcome
        self._conversation[i] = e.conversation_id or None
        attempts = e.attempts
        if attempts:
            first = attempts[0]
            self._entry_lane[i], self._entry_model[i] = first.lane, first.model
        else:
            self._entry_lane[i], self._entry_model[i] = lane, model
        # Shadow rows keep their signals for pairing, as the log stores them (through JSON).
        self._signals[i] = orjson.loads(signals_json(e.signals)) if lane == SHADOW_LANE else None
        self._failed[i] = failed_models(e)
        self._others[i] = other_costs(e)
        i += 1
        if i == self._size:
            i, self.full = 0, True
        self._next = i

    def copy(self) -> RecentExchanges:
        """A copy of the window as it is now, to read in another thread while this one keeps changing
        (about 0.3 ms for 10,000 rows, against 20 ms to build their rows)."""
        copied = RecentExchanges.__new__(RecentExchanges)
        for name in RecentExchanges.__slots__:
            value = getattr(self, name)
            setattr(copied, name, value[:] if isinstance(value, array | list | bytearray) else value)
        return copied

    def rows(self) -> list[ExchangeRow]:
        """Every row in the window, oldest first."""
        return list(map(_row, zip(*self._columns(), strict=True)))

    def columns(self) -> list[list[Any]]:
        """The window's rows as columns in `ExchangeRow` order, oldest first, made of JSON types only:
        what a worker sends the one that answers `/admin/stats` for all (see `rows_of_columns`)."""
        return [list(column) for column in self._columns()]

    def _columns(self) -> tuple[Iterator[Any], ...]:
        o = self._ordered
        return (  # in `ExchangeRow` order
            o(self._started), o(self._model), o(self._route), o(self._lane), o(self._outcome), o(self._latency),
            map(_number, o(self._ttft)), o(self._tokens_in), o(self._tokens_out), o(self._cost),
            o(self._conversation), map(bool, o(self._escalation)), o(self._fallbacks), map(bool, o(self._simulated)),
            o(self._entry_lane), o(self._entry_model), map(_number, o(self._cascade)), map(_hits, o(self._hits)),
            map(_number, o(self._retrieval_ms)), o(self._signals), map(_models, o(self._failed)),
            map(_models, o(self._others)),
        )

    def _allocate(self, size: int) -> None:
        floats = ints = bytes(8 * size)
        self._started, self._latency, self._ttft = array("d", floats), array("d", floats), array("d", floats)
        self._cost, self._cascade, self._retrieval_ms = array("d", floats), array("d", floats), array("d", floats)
        self._tokens_in, self._tokens_out = array("q", ints), array("q", ints)
        self._fallbacks, self._hits = array("q", ints), array("q", ints)
        self._escalation, self._simulated = bytearray(size), bytearray(size)
        names: list[Any] = [None] * size
        self._model, self._route, self._lane, self._outcome = names[:], names[:], names[:], names[:]
        self._conversation, self._entry_lane, self._entry_model = names[:], names[:], names[:]
        self._signals, self._failed, self._others = names[:], names[:], names[:]

    def _ordered(self, column: Any) -> Iterator[Any]:
        end = self._next
        if not self.full:
            return iter(column[:end])
        return chain(column[end:], column[:end])


def rows_of(exchanges: Iterable[Exchange], simulated: bool) -> list[ExchangeRow]:
    """The summary rows of `exchanges`, as the window keeps them."""
    batch = list(exchanges)
    window = RecentExchanges(len(batch))
    for exchange in batch:
        window.add(exchange, fallbacks_of(exchange), simulated)
    return window.rows()


def rows_of_columns(columns: list[list[Any]]) -> list[ExchangeRow]:
    """The rows of `RecentExchanges.columns()` after a trip through JSON, which turned tuples into lists."""
    if len(columns) != len(ROW_COLUMNS):
        raise ValueError(f"expected {len(ROW_COLUMNS)} columns of exchange rows, got {len(columns)}")
    *plain, failed, others = columns
    return list(map(_row, zip(*plain, map(tuple, failed), (tuple(map(tuple, o)) for o in others), strict=True)))


def _number(value: float) -> float | None:
    return None if value != value else value  # NaN marks an absent number


def _models(value: tuple[Any, ...] | None) -> tuple[Any, ...]:
    return value or ()


def _hits(value: int) -> int | None:
    return None if value == _NO_HITS else value
