"""The gateway core: one object holding all state, called by the HTTP shell, the CLI and the tools.

    decode → signals → route → (prepare, context fit) → dispatch → account
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from .chat import Completion
from .config import Config, load_config
from .context import TokenCounter
from .dispatch import Dispatcher, Plan, Started
from .exchange import Exchange
from .request import ClientRequest, read_signals
from .routing import decide
from .runtime import Runtime
from .signals import Signals

log = logging.getLogger("laneway")


class ExchangeSink(Protocol):
    def record(self, exchange: Exchange) -> None: ...

    def count(self, event: str, model: str, n: int = 1) -> None: ...


class Gateway:
    def __init__(self, config: Config, *, config_path: str | Path | None = None, sim_url: str | None = None,
                 telemetry: ExchangeSink | None = None) -> None:
        self.config_path = config_path
        self.sim_url = sim_url
        self.telemetry = telemetry
        self.counter = TokenCounter()
        self.runtime = Runtime.build(config, sim_url)
        self.ready = False
        self._fleet: Any = None
        self._reload_lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, config: Config | None = None, *, config_path: str | Path | None = None,
                    sim_url: str | None = None, telemetry: ExchangeSink | None = None) -> Gateway:
        """Load the config (the embedded default if none), bring up the fleet if it needs one."""
        if config is None:
            config = load_config(config_path)
        fleet = None
        if config.simulated and sim_url is None:
            from .sim import start_fleet

            fleet = await start_fleet(config.sim.host, config.sim.port, config.sim.fleet, config.sim.seed)
            sim_url = fleet.url
        gateway = cls(config, config_path=config_path, sim_url=sim_url, telemetry=telemetry)
        gateway._fleet = fleet
        gateway.counter.warm()
        gateway.ready = True
        return gateway

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def reload(self) -> Config:
        """Re-read the routing file; on any error the running config stays and the error is raised."""
        async with self._reload_lock:
            config = load_config(self.config_path)
            if config.simulated and self.sim_url is None:
                from .sim import start_fleet

                self._fleet = await start_fleet(config.sim.host, config.sim.port, config.sim.fleet, config.sim.seed)
                self.sim_url = self._fleet.url
            old, self.runtime = self.runtime, Runtime.build(config, self.sim_url)
            task = asyncio.create_task(old.aclose())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
            log.info("laneway: reloaded %s (%d routes, %d models)", config.source, len(config.routes),
                     len(config.models))
            return config

    def signals(self, request: ClientRequest, headers: Mapping[str, str]) -> Signals:
        return read_signals(request, headers, token_fn=self.counter.count)

    def plan(self, runtime: Runtime, request: ClientRequest, path: str, signals: Signals,
             exchange: Exchange) -> Plan:
        decision = decide(runtime.config, request.model, path, signals)
        route = decision.route
        exchange.route = route.name if route else None
        first = runtime.config.models[decision.lanes[0][1]]
        deadline_ms = runtime.config.deadline_ms(route, first)
        return Plan(route, list(decision.lanes), asyncio.get_running_loop().time() + deadline_ms / 1000)

    async def complete(self, request: ClientRequest, headers: Mapping[str, str], path: str,
                       exchange: Exchange) -> Completion:
        runtime = self.runtime
        runtime.enter()
        try:
            signals = self.signals(request, headers)
            exchange.conversation_id = signals.conversation_id or None
            plan = self.plan(runtime, request, path, signals, exchange)
            exchange.signals = signals.computed()
            return await self._dispatcher(runtime).complete(plan, request.messages, request.params, exchange)
        finally:
            runtime.leave()

    async def open_stream(self, request: ClientRequest, headers: Mapping[str, str], path: str,
                          exchange: Exchange) -> tuple[Started, Runtime]:
        """Dispatch until a first chunk arrives. The caller must `runtime.leave()` when the stream ends."""
        runtime = self.runtime
        runtime.enter()
        try:
            signals = self.signals(request, headers)
            exchange.conversation_id = signals.conversation_id or None
            plan = self.plan(runtime, request, path, signals, exchange)
            exchange.signals = signals.computed()
            started = await self._dispatcher(runtime).stream(plan, request.messages, request.params, exchange)
        except BaseException:
            runtime.leave()
            raise
        return started, runtime

    def _dispatcher(self, runtime: Runtime) -> Dispatcher:
        sink = self.telemetry
        return Dispatcher(runtime, self.counter, (lambda m: sink.count("cooldown", m)) if sink else None)

    def finish(self, exchange: Exchange, started_perf: float) -> None:
        exchange.latency_ms = (time.perf_counter() - started_perf) * 1000
        if self.telemetry is not None:
            self.telemetry.record(exchange)

    async def aclose(self) -> None:
        self.ready = False
        await self.runtime.aclose()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        if self._fleet is not None:
            await self._fleet.aclose()
