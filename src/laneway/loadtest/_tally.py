"""Aggregating outcomes: latency and TTFT histograms overall and per (model, lane), errors by kind,
cost, a per-second timeline, and the load generator's own CPU use."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

from ._call import Outcome
from ._histogram import LatencyHistogram


@dataclass(slots=True)
class Group:
    """The figures of one slice of the traffic (all of it, or one model and lane)."""

    requests: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    ttft: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add(self, outcome: Outcome) -> None:
        self.requests += 1
        self.cost_usd += outcome.cost_usd
        if outcome.error:
            self.errors += 1
            return
        self.latency.record(outcome.latency)
        if outcome.ttft is not None:
            self.ttft.record(outcome.ttft)


@dataclass(slots=True)
class Second:
    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class Tally:
    """Everything a run measured; `add` is called once per finished request."""

    def __init__(self) -> None:
        self.all = Group()
        self.by_model: dict[tuple[str, str], Group] = {}
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}  # what the first failure of each kind said
        self.chunk_gaps = LatencyHistogram()
        self.timeline: dict[int, Second] = {}
        self.wall_s = 0.0  # from the first request sent to the last one answered
        self.sending_s: float | None = None  # open loop: how long requests were sent for (the offered load's span)
        self.client_cpu_s = 0.0
        self.interrupted_s: float | None = None  # when the run was told to stop early, from its start
        self.warmup_interrupted_s: float | None = None  # told so during the warm-up: when, from its start
        self.cancelled = 0  # requests still in flight when an interrupted run stopped waiting
        # Open loop: how late each request left the load generator after it was due (waiting for a connection
        # of `--max-inflight`, or for the generator itself), and when the last one left, from the run's start.
        self.start_lag = LatencyHistogram()
        self.last_start_s = 0.0
        self.last_due_s = 0.0  # when the last request sent was due
        self.schedule_held = False  # the schedule waited for room (`WAITING_MAX`), and fell behind the clock

    def started(self, lag: float, at: float) -> None:
        """An open-loop request left `lag` seconds after it was due, `at` seconds into the run."""
        self.start_lag.record(lag)
        self.last_start_s = max(self.last_start_s, at)

    def add(self, outcome: Outcome, finished_at: float) -> None:
        """`finished_at` is seconds since the run started."""
        self.all.add(outcome)
        key = (outcome.model, outcome.lane)
        group = self.by_model.get(key)
        if group is None:
            group = self.by_model[key] = Group()
        group.add(outcome)
        second = self.timeline.setdefault(int(finished_at), Second())
        second.requests += 1
        if outcome.error:
            self.errors[outcome.error] += 1
            self.error_samples.setdefault(outcome.error, outcome.detail)
            second.errors += 1
            return  # a failed stream's gaps would count its stall as the forwarding's
        second.latency.record(outcome.latency)
        for before, after in itertools.pairwise(outcome.chunk_times):
            self.chunk_gaps.record(after - before)

    @property
    def throughput(self) -> float:
        return self.all.requests / self.wall_s if self.wall_s else 0.0

    @property
    def client_cpu_us_per_request(self) -> float:
        return self.client_cpu_s / self.all.requests * 1e6 if self.all.requests else 0.0

    @property
    def client_cpu_share(self) -> float:
        """The load generator's CPU time over wall time: near 1.0 it is the bottleneck."""
        return self.client_cpu_s / self.wall_s if self.wall_s else 0.0
