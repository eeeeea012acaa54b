"""The gateway core: one object holding all state, called by the HTTP shell, the CLI and the tools.

    signals → route → ground (retrieval) → dispatch (deadline, retries, fallbacks, context fit)
            → cascade → answer;  shadow copies and accounting run off the request's path
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from . import cascade as confidence
from .chat import Chunk, Completion, Message
from .config import Config, load_config
from .context import TokenCounter
from .dispatch import Dispatcher, Plan, Started
from .errors import LanewayError
from .exchange import OK, Attempt, Exchange
from .grounding import ground
from .request import ClientRequest, read_signals
from .routing import decide
from .runtime import Runtime
from .shadow import ShadowRunner

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
        self.shadows = ShadowRunner(config.shadow, telemetry)
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
            runtime = await asyncio.to_thread(Runtime.build, config, self.sim_url)
            old, self.runtime = self.runtime, runtime
            task = asyncio.create_task(old.aclose())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
            log.info("laneway: reloaded %s (%d routes, %d models)", config.source, len(config.routes),
                     len(config.models))
            return config

    async def complete(self, request: ClientRequest, headers: Mapping[str, str], path: str,
                       exchange: Exchange) -> Completion:
        runtime = self.runtime
        runtime.enter()
        try:
            return await self._answer(runtime, request, headers, path, exchange)
        finally:
            runtime.leave()

    async def open_stream(self, request: ClientRequest, headers: Mapping[str, str], path: str,
                          exchange: Exchange) -> tuple[Started, Runtime]:
        """Dispatch until a first chunk is in hand. The caller must `runtime.leave()` when the stream ends.

        With a cascade the accepted answer is held whole, then replayed as a stream."""
        runtime = self.runtime
        runtime.enter()
        try:
            plan, messages, params = self._prepare(runtime, request, headers, path, exchange)
            if plan.route is not None and plan.route.cascade is not None:
                completion = await self._dispatch_with_cascade(runtime, plan, messages, params, exchange)
                return _replay(completion, exchange), runtime
            started = await self._dispatcher(runtime).stream(plan, messages, params, exchange)
            targets = self.shadows.targets(plan.route, exchange.request_id)
            if targets:
                started.rest = self._tee_for_shadow(runtime, targets, messages, params, exchange, started)
            return started, runtime
        except BaseException:
            runtime.leave()
            raise

    async def _answer(self, runtime: Runtime, request: ClientRequest, headers: Mapping[str, str], path: str,
                      exchange: Exchange) -> Completion:
        plan, messages, params = self._prepare(runtime, request, headers, path, exchange)
        if plan.route is not None and plan.route.cascade is not None:
            completion = await self._dispatch_with_cascade(runtime, plan, messages, params, exchange)
        else:
            completion = await self._dispatcher(runtime).complete(plan, messages, params, exchange)
        self._shadow(runtime, plan, messages, params, exchange, completion.text)
        return completion

    def _prepare(self, runtime: Runtime, request: ClientRequest, headers: Mapping[str, str], path: str,
                 exchange: Exchange) -> tuple[Plan, list[Message], dict[str, Any]]:
        signals = read_signals(request, headers, token_fn=self.counter.count, intent_fn=runtime.classify)
        exchange.conversation_id = signals.conversation_id or None
        decision = decide(runtime.config, request.model, path, signals, exchange.request_id)
        route = decision.route
        exchange.route = route.name if route else None
        first = runtime.config.models[decision.lanes[0][1]]
        deadline = asyncio.get_running_loop().time() + runtime.config.deadline_ms(route, first) / 1000
        plan = Plan(route, list(decision.lanes), deadline)
        messages = request.messages
        if route is not None and route.retrieval is not None:
            grounding = ground(runtime.knowledge[route.retrieval.knowledge], route.retrieval, messages,
                               signals.customer_text())
            messages = grounding.messages
            exchange.retrieval_hits, exchange.retrieval_ms = grounding.hits, grounding.latency_ms
            if grounding.hits == 0 and route.retrieval.on_miss is not None:
                plan.lanes = [("primary", route.retrieval.on_miss), *plan.lanes[1:]]
        exchange.signals = signals.computed()
        return plan, messages, request.params

    async def _dispatch_with_cascade(self, runtime: Runtime, plan: Plan, messages: list[Message],
                                     params: dict[str, Any], exchange: Exchange) -> Completion:
        cascade = plan.route.cascade if plan.route else None
        assert cascade is not None
        dispatcher = self._dispatcher(runtime)
        asked, asked_params = messages, params
        if cascade.source == "self_report":
            asked = confidence.ask_for_self_report(messages)
        elif cascade.source == "logprobs":
            asked_params = confidence.ask_for_logprobs(params)
        completion = await dispatcher.complete(plan, asked, asked_params, exchange)
        if exchange.lane not in ("primary", "canary"):
            return completion  # a fallback answered: nothing cheaper to second-guess
        score = await self._confidence(runtime, cascade.source, cascade.verifier, messages, completion, plan,
                                       exchange)
        exchange.cascade_confidence = score
        if score >= cascade.confidence:
            return completion
        escalation = Plan(plan.route, [("cascade", cascade.escalate_to)], plan.deadline)
        try:
            return await dispatcher.complete(escalation, messages, params, exchange)
        except LanewayError as error:
            log.warning("laneway: cascade escalation to `%s` failed (%s); keeping the first answer",
                        cascade.escalate_to, error.code)
            return completion

    async def _confidence(self, runtime: Runtime, source: str, verifier: str | None, messages: list[Message],
                          completion: Completion, plan: Plan, exchange: Exchange) -> float:
        if source == "logprobs":
            return confidence.from_logprobs(completion)
        if source == "self_report":
            return confidence.take_self_report(completion)
        assert verifier is not None
        spec = runtime.config.models[verifier]
        request = confidence.verifier_request(spec.model, messages, completion.text)
        attempt = Attempt(verifier, OK, lane="verifier")
        exchange.attempts.append(attempt)
        started = time.perf_counter()
        try:
            graded = await runtime.providers[verifier].complete(request, plan.deadline)
        except LanewayError as error:
            attempt.outcome, attempt.error = error.code, error.message
            return 0.0
        finally:
            attempt.latency_ms = (time.perf_counter() - started) * 1000
            exchange.upstream_ms += attempt.latency_ms
        attempt.prompt_tokens, attempt.completion_tokens = graded.usage.prompt_tokens, graded.usage.completion_tokens
        attempt.cost_usd = spec.price.cost(attempt.prompt_tokens, attempt.completion_tokens)
        exchange.cost_usd += attempt.cost_usd
        return confidence.from_verifier(graded)

    def _shadow(self, runtime: Runtime, plan: Plan, messages: list[Message], params: dict[str, Any],
                exchange: Exchange, text: str) -> None:
        targets = self.shadows.targets(plan.route, exchange.request_id)
        if targets:
            self.shadows.submit(runtime, targets, messages, params, exchange, text)

    async def _tee_for_shadow(self, runtime: Runtime, targets: list[str], messages: list[Message],
                              params: dict[str, Any], exchange: Exchange, started: Started) -> AsyncIterator[Chunk]:
        pieces = [started.first.text]
        async for chunk in started.rest:
            pieces.append(chunk.text)
            yield chunk
        self.shadows.submit(runtime, targets, messages, params, exchange, "".join(pieces))

    def _dispatcher(self, runtime: Runtime) -> Dispatcher:
        sink = self.telemetry
        return Dispatcher(runtime, self.counter, (lambda m: sink.count("cooldown", m)) if sink else None)

    def finish(self, exchange: Exchange, started_perf: float) -> None:
        exchange.latency_ms = (time.perf_counter() - started_perf) * 1000
        if self.telemetry is not None:
            self.telemetry.record(exchange)

    async def aclose(self) -> None:
        self.ready = False
        await self.shadows.aclose()
        await self.runtime.aclose()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        if self._fleet is not None:
            await self._fleet.aclose()


def _replay(completion: Completion, exchange: Exchange) -> Started:
    """A finished answer as a stream: words as chunks, the finish reason and usage at the end."""
    words = completion.text.split(" ")

    async def rest() -> AsyncIterator[Chunk]:
        for word in words[1:]:
            yield Chunk(" " + word)
        yield Chunk(finish_reason=completion.finish_reason, usage=completion.usage)

    attempt = exchange.attempts[-1]
    model = exchange.model or attempt.model
    return Started(model, exchange.lane, attempt, Chunk(words[0]), rest(), completion.usage.prompt_tokens,
                   time.perf_counter(), accounted=True)
