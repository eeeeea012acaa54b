"""One demo run: the same traffic replayed through the `before` and the `after` routing files.

Both architectures run at the same time, each on its own simulated fleet (see `_fleet`), and see
the same arrivals: same seed, same conversations, same instants.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from ..config import Config, builtin_models, parse_config
from ..errors import ConfigError, ConfigIssue
from ..gateway import Gateway
from ._driver import Phase, Progress, replay
from ._figures import TIMEOUT, Figures, Record, figures
from ._traces import Trace, schedule

ARCHITECTURES = (("before", "heavy model only"), ("after", "routed by signals"))
HEAVY = "heavy-foundation"
# Models the case study calls efficient: the fast path for short, normal-priority traffic.
EFFICIENT = ("gemini-2.5-flash-lite", "claude-sonnet-37", "gpt-5-mini")


DEFAULT_RATE = 6.0
DEFAULT_SEED = 7


@dataclass(frozen=True, slots=True)
class DemoSettings:
    rate: float = DEFAULT_RATE  # normal traffic, requests per second; the burst is `burst_factor` times this
    seed: int = DEFAULT_SEED
    normal_s: float = 20.0
    burst_s: float = 20.0
    burst_factor: float = 3.0

    @property
    def phases(self) -> tuple[Phase, ...]:
        return (Phase("normal", self.rate, self.normal_s),
                Phase("burst", self.rate * self.burst_factor, self.burst_s))


@dataclass(slots=True)
class ArchitectureRun:
    name: str
    label: str
    records: list[Record]
    overall: Figures
    phases: dict[str, Figures]
    example_error: str | None = None


@dataclass(slots=True)
class DemoResult:
    settings: DemoSettings
    runs: dict[str, ArchitectureRun] = field(default_factory=dict)


def architecture_config(name: str) -> Config:
    """`before` or `after`: the routing files shipped in `laneway/replay/configs/`."""
    if name not in dict(ARCHITECTURES):
        issue = ConfigIssue("architecture", f"unknown architecture `{name}`; use `before` or `after`")
        raise ConfigError([issue])
    text = resources.files("laneway.replay").joinpath(f"configs/{name}.yaml").read_text("utf-8")
    return parse_config(text, f"laneway/replay/configs/{name}.yaml")


def heavy_window() -> int:
    """The window the heavy model really serves: the built-in registry's, as the fleet enforces it."""
    return builtin_models()[HEAVY].context_window


def overflow_timeouts(records: Sequence[Record]) -> int:
    """Timeouts of requests whose prompt was past the heavy model's served window."""
    return sum(r.outcome == TIMEOUT and r.prompt_tokens > heavy_window() for r in records)


def summarise(name: str, label: str, records: list[Record], settings: DemoSettings) -> ArchitectureRun:
    phases = {p.name: figures([r for r in records if r.phase == p.name], p.duration_s)
              for p in settings.phases}
    overall = figures(records, sum(p.duration_s for p in settings.phases))
    first = next((r for r in records if r.outcome == TIMEOUT), None)
    example = None
    if first is not None:
        example = first.error
        if first.prompt_tokens > heavy_window():
            example += (f"; its prompt had {first.prompt_tokens} tokens, past the {heavy_window()}-token "
                        f"window `{HEAVY}` serves (token-window overflow)")
    return ArchitectureRun(name, label, records, overall, phases, example)


async def run_architecture(name: str, sim_url: str, trace: Trace, settings: DemoSettings,
                           on_progress: Callable[[Progress], None] | None = None) -> list[Record]:
    gateway = await Gateway.start(architecture_config(name), sim_url=sim_url)
    try:
        requests = schedule(trace, settings.seed)
        return await replay(gateway, requests, settings.phases, settings.seed, on_progress)
    finally:
        await gateway.aclose()


async def run_demo(trace: Trace, settings: DemoSettings, fleets: Mapping[str, str],
                   on_progress: Callable[[str, Progress], None] | None = None,
                   architectures: Sequence[tuple[str, str]] = ARCHITECTURES) -> DemoResult:
    """Replay the same arrivals through each architecture at once, each on its own fleet (`fleets[name]`)."""

    async def one(name: str, label: str) -> ArchitectureRun:
        report = (lambda p: on_progress(name, p)) if on_progress is not None else None
        records = await run_architecture(name, fleets[name], trace, settings, report)
        return summarise(name, label, records, settings)

    runs = await asyncio.gather(*(one(name, label) for name, label in architectures))
    return DemoResult(settings, {run.name: run for run in runs})
