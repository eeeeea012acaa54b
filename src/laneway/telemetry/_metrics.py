"""Gateway metrics, aggregated in plain counters and written in the Prometheus text format.

Every family is declared once in `FAMILIES`. Aggregation runs off the hot path (the telemetry
pump drains recorded exchanges into `GatewayMetrics.observe`); rendering walks the live series.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from laneway.exchange import Exchange, billed_apart

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)
OVERHEAD_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RETRIEVAL_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
QUEUE_WAIT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SeriesKey = tuple[str, str, str]  # model, route, lane
SERIES_LABELS = ("model", "route", "lane")
# The gateway's state at a scrape, read then rather than counted: family -> samples of (labels, value).
StateSamples = Mapping[str, Sequence[tuple[tuple[tuple[str, str], ...], float]]]

# name -> (type, help). Units are in the names and restated in the help text.
FAMILIES: dict[str, tuple[str, str]] = {
    "laneway_requests_total": (
        "counter",
        "Requests finished, by answering model, route, lane and outcome; lane=\"shadow\" counts shadow copies, "
        "which answered no client.",
    ),
    "laneway_request_latency_seconds": ("histogram", "End-to-end request latency in seconds."),
    "laneway_time_to_first_token_seconds": ("histogram", "Time to the first streamed token in seconds."),
    "laneway_gateway_overhead_seconds": (
        "histogram",
        "Time spent in the gateway itself (latency minus upstream wait) in seconds.",
    ),
    "laneway_prompt_tokens_total": ("counter", "Prompt (input) tokens billed, in tokens."),
    "laneway_completion_tokens_total": ("counter", "Completion (output) tokens billed, in tokens."),
    "laneway_cost_usd_total": (
        "counter",
        "Cost of requests in US dollars, at the models' list prices (lane=\"shadow\": what shadow copies cost).",
    ),
    "laneway_fallbacks_total": (
        "counter",
        "Hand-overs from one model to the next within a request (retries of the same model are not counted).",
    ),
    "laneway_attempts_total": ("counter", "Attempts at each model, by the attempt's outcome."),
    "laneway_model_events_total": ("counter", "Model events such as `cooldown` (a breaker opened)."),
    "laneway_queue_wait_seconds": ("histogram", "Time a request waited in a model's gate queue in seconds."),
    "laneway_retrieval_total": (
        "counter",
        "Retrievals for routes with `retrieval:`, by route and result (`hit`: passages injected; `miss`: none).",
    ),
    "laneway_retrieval_seconds": ("histogram", "Time a retrieval took (search and injection) in seconds."),
    "laneway_exchanges_dropped_total": (
        "counter",
        "Exchanges the exchange log lost: its buffer was full, or the store refused them, in exchanges.",
    ),
    "laneway_model_breaker_state": (
        "gauge",
        "Each model's circuit breaker, one sample per state (closed, open, half_open): 1 for the state it is in.",
    ),
    "laneway_gate_in_flight": ("gauge", "Calls holding a slot of the model's gate, in calls."),
    "laneway_gate_queued": ("gauge", "Requests waiting in the model's gate queue, in requests."),
    "laneway_gate_concurrency_limit": (
        "gauge",
        "The concurrency limit of the model's gate, in calls (an adaptive gate moves it).",
    ),
    "laneway_shared_state_up": (
        "gauge",
        "1 if the shared state (`state:`, Redis) answers, else 0 (the replica keeps to its own limits); "
        "absent without `state:`.",
    ),
    "laneway_exchange_log_written_total": ("counter", "Exchanges written to the exchange log, in exchanges."),
    "laneway_exchange_log_backlog_exchanges": (
        "gauge",
        "Exchanges waiting to be written to the exchange log.",
    ),
    "laneway_exchange_log_up": ("gauge", "1 if the last write to the exchange log succeeded, else 0."),
}

# Families read from the gateway's state at each scrape (`render(..., state)`), not from exchanges.
STATE_FAMILIES = frozenset({"laneway_model_breaker_state", "laneway_gate_in_flight", "laneway_gate_queued",
                            "laneway_gate_concurrency_limit", "laneway_shared_state_up"})

# Only `laneway serve --workers N` renders these, after the families every worker declares itself.
WORKER_UP = "laneway_worker_up"
WORKER_FAMILIES: dict[str, tuple[str, str]] = {
    WORKER_UP: (
        "gauge",
        "1 if the worker answered this scrape, else 0 (its samples are missing from it), by worker index.",
    ),
}


class Histogram:
    """Bucket counts (non-cumulative) plus a sum; cumulated only when rendered."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def lines(self, name: str, labels: str) -> Iterator[str]:
        sep = "," if labels else ""
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            yield f'{name}_bucket{{{labels}{sep}le="{bound}"}} {running}'
        running += self.counts[-1]
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {running}'
        yield f"{name}_sum{{{labels}}} {self.total!r}"
        yield f"{name}_count{{{labels}}} {running}"


@dataclass(slots=True)
class _Series:
    outcomes: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    ttft: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    overhead: Histogram = field(default_factory=lambda: Histogram(OVERHEAD_BUCKETS_S))
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    fallbacks: int = 0


@dataclass(slots=True)
class LogHealth:
    """The exchange log's state as the metrics show it."""

    enabled: bool = True
    dropped: int = 0
    written: int = 0
    backlog: int = 0
    up: bool = True


class GatewayMetrics:
    """All metric state of one gateway process."""

    def __init__(self) -> None:
        self._series: dict[SeriesKey, _Series] = {}
        self._attempts: dict[tuple[str, str], int] = {}
        self._events: dict[tuple[str, str], int] = {}
        self._queue_wait: dict[str, Histogram] = {}
        self._retrievals: dict[tuple[str, str], int] = {}  # (route, hit | miss)
        self._retrieval_s: dict[str, Histogram] = {}

    def observe(self, exchange: Exchange, fallbacks: int) -> None:
        """Count one finished exchange; `fallbacks` is `fallbacks_of(exchange)`, computed once by the caller."""
        series = self._series_of((exchange.model or "", exchange.route or "", exchange.lane))
        series.outcomes[exchange.outcome] = series.outcomes.get(exchange.outcome, 0) + 1
        series.latency.observe(exchange.latency_ms / 1000.0)
        if exchange.ttft_ms is not None:
            series.ttft.observe(exchange.ttft_ms / 1000.0)
        series.overhead.observe(exchange.overhead_ms / 1000.0)
        series.tokens_in += exchange.prompt_tokens
        series.tokens_out += exchange.completion_tokens
        series.cost_usd += exchange.cost_usd
        series.fallbacks += fallbacks
        if exchange.retrieval_hits is not None:
            self._retrieved(exchange.route or "", exchange.retrieval_hits, exchange.retrieval_ms)
        attempts = exchange.attempts
        for attempt in attempts:
            pair = (attempt.model, attempt.outcome)
            self._attempts[pair] = self._attempts.get(pair, 0) + 1
        if len(attempts) > 1:  # what other models billed (a cascade's first answer) is theirs, not this one's
            for attempt in attempts:
                if billed_apart(attempt, exchange.model):
                    series.cost_usd -= attempt.cost_usd  # the exchange's tokens are its answer's alone
                    other = self._series_of((attempt.model, exchange.route or "", attempt.lane))
                    other.cost_usd += attempt.cost_usd
                    other.tokens_in += attempt.prompt_tokens
                    other.tokens_out += attempt.completion_tokens

    def _retrieved(self, route: str, hits: int, ms: float | None) -> None:
        pair = (route, "hit" if hits else "miss")
        self._retrievals[pair] = self._retrievals.get(pair, 0) + 1
        if ms is not None:
            _histogram(self._retrieval_s, route, RETRIEVAL_BUCKETS_S).observe(ms / 1000.0)

    def _series_of(self, key: SeriesKey) -> _Series:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        return series

    def count(self, event: str, model: str, n: int = 1) -> None:
        self._events[(model, event)] = self._events.get((model, event), 0) + n

    def observe_queue_wait(self, model: str, seconds: float) -> None:
        _histogram(self._queue_wait, model, QUEUE_WAIT_BUCKETS_S).observe(seconds)

    def render(self, log: LogHealth, state: StateSamples | None = None) -> bytes:
        lines: list[str] = []
        for name, (kind, help_text) in FAMILIES.items():
            if not log.enabled and name.startswith("laneway_exchange_log_"):
                continue
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            if state is not None and name in STATE_FAMILIES:
                lines.extend(f"{name}{{{_pairs(labels)}}} {value:g}" if labels else f"{name} {value:g}"
                             for labels, value in state.get(name, ()))
            else:
                lines.extend(self._samples(name, log))
        return ("\n".join(lines) + "\n").encode("utf-8")

    def _samples(self, name: str, log: LogHealth) -> Iterator[str]:
        series_values: dict[str, Callable[[_Series], float]] = {
            "laneway_prompt_tokens_total": lambda s: s.tokens_in,
            "laneway_completion_tokens_total": lambda s: s.tokens_out,
            "laneway_cost_usd_total": lambda s: s.cost_usd,
            "laneway_fallbacks_total": lambda s: s.fallbacks,
        }
        histograms: dict[str, Callable[[_Series], Histogram]] = {
            "laneway_request_latency_seconds": lambda s: s.latency,
            "laneway_time_to_first_token_seconds": lambda s: s.ttft,
            "laneway_gateway_overhead_seconds": lambda s: s.overhead,
        }
        if name == "laneway_requests_total":
            for key, series in self._series.items():
                for outcome, n in series.outcomes.items():
                    yield f'{name}{{{_labels(SERIES_LABELS, key)},outcome="{_escape(outcome)}"}} {n}'
        elif name in series_values:
            value_of = series_values[name]
            for key, series in self._series.items():
                yield f"{name}{{{_labels(SERIES_LABELS, key)}}} {value_of(series)!r}"
        elif name in histograms:
            histogram_of = histograms[name]
            for key, series in self._series.items():
                yield from histogram_of(series).lines(name, _labels(SERIES_LABELS, key))
        elif name == "laneway_attempts_total":
            for pair, n in self._attempts.items():
                yield f"{name}{{{_labels(('model', 'outcome'), pair)}}} {n}"
        elif name == "laneway_model_events_total":
            for pair, n in self._events.items():
                yield f"{name}{{{_labels(('model', 'event'), pair)}}} {n}"
        elif name == "laneway_queue_wait_seconds":
            for model, histogram in self._queue_wait.items():
                yield from histogram.lines(name, _labels(("model",), (model,)))
        elif name == "laneway_retrieval_total":
            for pair, n in self._retrievals.items():
                yield f"{name}{{{_labels(('route', 'result'), pair)}}} {n}"
        elif name == "laneway_retrieval_seconds":
            for route, histogram in self._retrieval_s.items():
                yield from histogram.lines(name, _labels(("route",), (route,)))
        elif name.startswith(("laneway_exchange_", "laneway_exchanges_")):
            yield from _log_samples(name, log)


def worker_up_lines(answered: Mapping[int, bool]) -> Iterator[str]:
    """`laneway_worker_up` for each worker index: whether its samples are in this scrape."""
    kind, help_text = WORKER_FAMILIES[WORKER_UP]
    yield f"# HELP {WORKER_UP} {help_text}"
    yield f"# TYPE {WORKER_UP} {kind}"
    for index, up in sorted(answered.items()):
        yield f'{WORKER_UP}{{worker="{index}"}} {int(up)}'


def _histogram(table: dict[str, Histogram], key: str, bounds: tuple[float, ...]) -> Histogram:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = Histogram(bounds)
    return histogram


def _log_samples(name: str, log: LogHealth) -> Iterator[str]:
    values = {
        "laneway_exchanges_dropped_total": log.dropped,
        "laneway_exchange_log_written_total": log.written,
        "laneway_exchange_log_backlog_exchanges": log.backlog,
        "laneway_exchange_log_up": int(log.up),
    }
    yield f"{name} {values[name]}"


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return _pairs(zip(names, values, strict=True))


def _pairs(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in labels)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
