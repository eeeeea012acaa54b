"""The gateway core: one object holding all state, called by the HTTP shell, the CLI and the tools.

    signals → route → ground (retrieval) → dispatch (deadline, retries, fallbacks, context fit)
            → cascade → answer;  shadow copies and accounting run off the request's path
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .cache import CacheStore, MemoryStore, cache_key, cacheable, lookup, model_scope, remember
from .cascade import complete_with_cascade
from .chat import Chunk, Completion, Message, said
from .config import CacheSettings, Config, load_config, unset_variables, warning_lines
from .context import TokenCounter
from .dispatch import Dispatcher, Plan, Started, replay_stream
from .errors import ConfigError, ConfigIssue, FleetUnavailable
from .exchange import SKIPPED, Exchange, refused_for_the_client
from .grounding import ground
from .keys import KeyPolicy, KeyRing
from .request import ClientRequest, read_signals
from .routing import decide
from .runtime import Runtime
from .shadow import ShadowRunner

if TYPE_CHECKING:
    from .state import SharedState

log = logging.getLogger("laneway")


BREAKER_STATES = ("closed", "open", "half_open")  # what `CircuitBreaker.state` answers


class ExchangeSink(Protocol):
    def record(self, exchange: Exchange) -> None: ...

    def count(self, event: str, model: str, n: int = 1) -> None: ...

    def observe_queue_wait(self, model: str, seconds: float) -> None: ...


class Gateway:
    def __init__(self, config: Config, *, config_path: str | Path | None = None, sim_url: str | None = None,
                 telemetry: ExchangeSink | None = None) -> None:
        self.config_path = config_path
        self.sim_url = sim_url
        self.telemetry = telemetry
        self.counter = TokenCounter()
        self.runtime = Runtime.build(config, sim_url)
        self.shadows = ShadowRunner(config.shadow, telemetry, self.counter)
        self.cache: CacheStore = MemoryStore(config.server.cache_entries)
        self.state: SharedState | None = None  # with `state:`, shared with the other replicas through Redis
        self.keys = KeyRing(config.keys)
        self._background: set[asyncio.Task[None]] = set()
        self.ready = False
        self._fleet: Any = None
        self._reload_lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()
        # Checks a config may serve here (`laneway serve` refuses one without keys on a public address);
        # raises `ConfigError`. Run at start-up by the caller and on every reload by `reload()`.
        self.vet: Callable[[Config], None] | None = None
        self.speaks = True  # False in all workers of `serve --workers N` but the first: they warn once, not N times
        self.starts_fleet_on_reload = True  # False in a worker of `serve --workers N`: its supervisor runs the fleet
        self.applied: Callable[[Config], None] | None = None  # told of each config a reload put in place

    @classmethod
    async def start(cls, config: Config | None = None, *, config_path: str | Path | None = None,
                    sim_url: str | None = None, telemetry: ExchangeSink | None = None, warm: bool = True) -> Gateway:
        """Load the config (the embedded default if none), bring up the fleet if it needs one; with
        `warm`, also connect to every upstream before returning (else call `warm_up()`)."""
        if config is None:
            config = load_config(config_path)
        fleet = None
        if config.simulated and sim_url is None:
            from .sim import start_fleet

            fleet = await start_fleet(config.sim.host, config.sim.port, config.sim.fleet, config.sim.seed)
            sim_url = fleet.url
        gateway = cls(config, config_path=config_path, sim_url=sim_url, telemetry=telemetry)
        gateway._fleet = fleet
        if config.state is not None:
            from .state import SharedState

            if telemetry is not None:  # from 0: an alert on its increase sees the first outage too
                telemetry.count("state_unavailable", "", 0)
            gateway.state = await SharedState.open(config.state, telemetry, lambda: gateway.runtime.breakers)
            if isinstance(gateway.cache, MemoryStore):  # what the replica caches in while Redis is unreachable
                gateway.state.cache.local = gateway.cache
            gateway.cache = gateway.state.cache
            gateway.runtime.share(gateway.state)
            gateway.keys.shared = gateway.state
        gateway.counter.warm()
        if warm:
            await gateway.warm_up()
        return gateway

    async def warm_up(self) -> None:
        """Connect to every upstream (and send configured warm-up requests); `/readyz` is 503 until then."""
        await self.runtime.warm()
        self.ready = True

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def reload(self) -> Config:
        """Re-read the routing file; on any error the running config stays and the error is raised."""
        async with self._reload_lock:
            # Off the loop: reading and analysing a large routing file takes seconds (150 routes: 3 s).
            config = await asyncio.to_thread(self._read_config)
            config = restart_only(self.config, config, fleet_running=self.sim_url is not None)
            # as `check` and start-up say them
            config = replace(config, warnings=(*config.warnings, *unset_variables(config)))
            if config.simulated and self.sim_url is None:
                if not self.starts_fleet_on_reload:
                    raise FleetUnavailable("the simulated fleet starts with `laneway serve --workers N` only: each "
                                           "worker would start its own, and all but one find the port taken. "
                                           "Restart the server to run simulated models")
                from .sim import start_fleet

                try:
                    self._fleet = await start_fleet(config.sim.host, config.sim.port, config.sim.fleet,
                                                    config.sim.seed)
                except ConfigError as error:  # the machine's port, not the file's mistake: the reload's 500
                    raise FleetUnavailable(f"the simulated fleet (`sim.host`, `sim.port`) {error.issues[0].message}"
                                           ) from None
                self.sim_url = self._fleet.url
            runtime = await asyncio.to_thread(Runtime.build, config, self.sim_url, self.runtime)
            await runtime.warm()
            runtime.adopt_gate_policies()
            old, self.runtime = self.runtime, runtime
            self.keys.update(config.keys)
            self.shadows.settings = config.shadow
            task = asyncio.create_task(old.aclose())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
            log.info("laneway: reloaded %s (%d routes, %d models)", config.source, len(config.routes),
                     len(config.models))
            if self.applied is not None:
                self.applied(config)
            for line in warning_lines(config.warnings) if self.speaks else ():
                log.warning("laneway: %s", line)
            return config

    @staticmethod
    def unapplied(error: BaseException) -> str:
        """What stopped a reload other than the file's mistakes (`ConfigError`): a valid file that could not
        be put to work (the simulated fleet's port taken, say)."""
        return f"the new config could not be put to work: {type(error).__name__}: {error}"

    def _read_config(self) -> Config:
        config = load_config(self.config_path)
        if self.vet is not None:
            self.vet(config)
        return config

    async def complete(self, request: ClientRequest, headers: Mapping[str, str], path: str,
                       exchange: Exchange, key: KeyPolicy | None = None) -> Completion:
        runtime = self.runtime
        runtime.enter()
        try:
            return await self._answer(runtime, request, headers, path, exchange, key)
        finally:
            runtime.leave()

    async def open_stream(self, request: ClientRequest, headers: Mapping[str, str], path: str,
                          exchange: Exchange, key: KeyPolicy | None = None) -> tuple[Started, Runtime]:
        """Dispatch until a first chunk is in hand. The caller must `runtime.leave()` when the stream ends.

        A cached answer, and with a cascade the accepted answer, are held whole and replayed as a stream."""
        runtime = self.runtime
        runtime.enter()
        try:
            plan, messages, params = await self._prepare(runtime, request, headers, path, exchange, key)
            entry, cache = self._cache_entry(runtime, plan, messages, params)
            cached = await self._cached(entry, cache, exchange, plan.lanes[0][1])
            if cached is not None:
                return replay_stream(cached, exchange), runtime
            if plan.route is not None and plan.route.cascade is not None:
                completion = await self._whole(runtime, plan, messages, params, exchange)
                self._after(runtime, plan, messages, params, exchange, completion, entry, cache)
                return replay_stream(completion, exchange), runtime
            started = await self._dispatcher(runtime).stream(plan, messages, params, exchange)
            targets = self.shadows.targets(runtime, plan.route, exchange.request_id)
            keep = entry if cache is not None and cache.writes and started.model == plan.lanes[0][1] else None
            if targets or keep:
                started.rest = self._tee(runtime, targets, messages, params, exchange, started, started.rest,
                                         keep, cache.ttl_s if cache else 0.0)
            return started, runtime
        except BaseException:
            runtime.leave()
            raise

    async def _answer(self, runtime: Runtime, request: ClientRequest, headers: Mapping[str, str], path: str,
                      exchange: Exchange, key: KeyPolicy | None) -> Completion:
        plan, messages, params = await self._prepare(runtime, request, headers, path, exchange, key)
        entry, cache = self._cache_entry(runtime, plan, messages, params)
        cached = await self._cached(entry, cache, exchange, plan.lanes[0][1])
        if cached is not None:
            return cached
        completion = await self._whole(runtime, plan, messages, params, exchange)
        self._after(runtime, plan, messages, params, exchange, completion, entry, cache)
        return completion

    async def _whole(self, runtime: Runtime, plan: Plan, messages: list[Message], params: dict[str, Any],
                     exchange: Exchange) -> Completion:
        dispatcher = self._dispatcher(runtime)
        if plan.route is not None and plan.route.cascade is not None:
            return await complete_with_cascade(dispatcher, plan.route.cascade, plan, messages, params, exchange)
        return await dispatcher.complete(plan, messages, params, exchange)

    def _after(self, runtime: Runtime, plan: Plan, messages: list[Message], params: dict[str, Any],
               exchange: Exchange, completion: Completion, entry: str | None, cache: CacheSettings | None) -> None:
        """Off the request's path: copy the answer to the shadow lanes and into the cache."""
        targets = self.shadows.targets(runtime, plan.route, exchange.request_id)
        if targets:
            self._shadow(runtime, targets, messages, params, exchange, said(completion.text, completion.tool_calls))
        # Only the model the entry is keyed by: a fallback's or a degraded lane's answer (sampled, maybe) would
        # be served for a whole TTL after the target is back. Nor a first answer the cascade found unsure and
        # kept only because its escalation failed: for the TTL, the cascade would never run on that prompt.
        if (entry is not None and cache is not None and cache.writes and exchange.model == plan.lanes[0][1]
                and not _unsure(plan, exchange)):
            self._keep(entry, completion, exchange.model, cache.ttl_s)

    def _cache_entry(self, runtime: Runtime, plan: Plan, messages: list[Message],
                     params: dict[str, Any]) -> tuple[str | None, CacheSettings | None]:
        route = plan.route
        if route is None or route.cache.mode == "off":
            return None, None
        target = runtime.config.models[plan.lanes[0][1]]
        if not cacheable(route.cache, target.temperature(params)):
            return None, None
        # Keyed by the model too: a canary's answers go to its own conversations only, and a route whose
        # target changes (or whose target's prompt or upstream does) starts afresh.
        return cache_key(f"{route.name}|{model_scope(target)}", messages, params), route.cache

    async def _cached(self, entry: str | None, cache: CacheSettings | None, exchange: Exchange,
                      target: str) -> Completion | None:
        """The cached answer, if any; the lookup is counted against `target`, the model it would save a call to."""
        if entry is None or cache is None or not cache.reads:
            return None
        hit = await lookup(self.cache, entry)
        if self.telemetry is not None:
            self.telemetry.count("cache_miss" if hit is None else "cache_hit", target)
        if hit is None:
            return None
        # Nothing was billed: the exchange's tokens and cost stay 0 (the client still gets the answer's usage).
        exchange.lane, exchange.model = "cache", hit.model
        return hit

    def _keep(self, key: str, completion: Completion, model: str, ttl_s: float) -> None:
        task = asyncio.create_task(remember(self.cache, key, completion, model, ttl_s))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _prepare(self, runtime: Runtime, request: ClientRequest, headers: Mapping[str, str], path: str,
                       exchange: Exchange, key: KeyPolicy | None) -> tuple[Plan, list[Message], dict[str, Any]]:
        signals = read_signals(request, headers, runtime.intent_labels, token_fn=self.counter.count,
                               intent_fn=runtime.classify)
        exchange.conversation_id = signals.conversation_id or None
        decision = decide(runtime.config, request.model, path, signals, exchange.request_id)
        route = decision.route
        exchange.route = route.name if route else None
        if route is None:  # a model named by the client: its lane says so, answered or refused
            exchange.lane = decision.lanes[0][0]
        # The budget is the route target's (a canary's own `deadline_ms` only caps its attempt), or the named model's.
        first = runtime.config.models[route.target if route is not None else decision.lanes[0][1]]
        if key is not None:
            exchange.api_key = key.name
            output = request.max_tokens(256)
            tokens = signals.tokens + output if key.tokens_per_minute else 0
            # Held against the key's budget while the request runs: requests at once cannot all spend its last dollar.
            usd = first.price.cost(signals.tokens, output) if key.usd_budget is not None else 0.0
            await self.keys.admit(key, exchange.route, tokens, usd)
            exchange.key_tokens, exchange.key_usd = tokens, usd  # settled against what was used (`finish`)
        budget_ms = runtime.config.deadline_ms(route, first)
        deadline = asyncio.get_running_loop().time() + budget_ms / 1000
        priority = runtime.config.priorities.of(signals) if runtime.gates else 1
        plan = Plan(route, list(decision.lanes), deadline, priority, budget_ms)
        messages = request.messages
        if route is not None and route.retrieval is not None:
            grounding = ground(runtime.knowledge[route.retrieval.knowledge], route.retrieval, messages,
                               signals.customer_text())
            messages = grounding.messages
            exchange.retrieval_hits, exchange.retrieval_ms = grounding.hits, grounding.latency_ms
            if grounding.hits == 0 and route.retrieval.on_miss is not None:  # instead of the target and any canary
                fallbacks = [lane for lane in plan.lanes if lane[0] == "fallback"]
                plan.lanes = [("primary", route.retrieval.on_miss), *fallbacks]
                plan.fallback_messages = grounding.missed
        exchange.signals = signals.computed()
        if runtime.config.telemetry.store_bodies:
            exchange.prompt_body = orjson.dumps(messages).decode()
        return plan, messages, request.params

    async def _tee(self, runtime: Runtime, targets: list[str], messages: list[Message], params: dict[str, Any],
                   exchange: Exchange, started: Started, source: AsyncIterator[Chunk], key: str | None,
                   ttl_s: float) -> AsyncIterator[Chunk]:
        """Pass a stream through; once it has ended whole, copy it to the shadows and the cache (an
        answer that calls tools is not cached: its calls arrive in pieces)."""
        first = started.first
        pieces, refusal, logprobs = [first.text], [first.refusal], list(first.logprobs or ())
        annotations = list(first.annotations or ())
        finish, usage, fingerprint = first.finish_reason, first.usage, first.system_fingerprint
        calls = list(first.tool_calls or ())
        async for chunk in source:
            pieces.append(chunk.text)
            refusal.append(chunk.refusal)
            finish, usage = chunk.finish_reason or finish, chunk.usage or usage
            if chunk.tool_calls:
                calls += chunk.tool_calls
            if chunk.logprobs:
                logprobs += chunk.logprobs
            if chunk.annotations:
                annotations += chunk.annotations
            yield chunk
        text = "".join(pieces)
        if targets:
            self._shadow(runtime, targets, messages, params, exchange, said(text, calls))
        if key is not None and usage is not None and not calls:
            completion = Completion(text, finish or "stop", usage, started.model, refusal="".join(refusal) or None,
                                    logprobs=logprobs or None, system_fingerprint=fingerprint,
                                    annotations=annotations or None)
            self._keep(key, completion, started.model, ttl_s)

    def _shadow(self, runtime: Runtime, targets: list[str], messages: list[Message], params: dict[str, Any],
                exchange: Exchange, primary_said: str) -> None:
        """Copy the answered request to the shadow lanes: a fault there is said, never the client's error."""
        try:
            self.shadows.submit(runtime, targets, messages, params, exchange, primary_said)
        except Exception:  # logged: the answer is the client's, whatever the copies do
            log.exception("laneway: request %s could not be copied to the shadow lanes", exchange.request_id)

    def _dispatcher(self, runtime: Runtime) -> Dispatcher:
        return Dispatcher(runtime, self.counter, self.telemetry)

    def state_samples(self) -> dict[str, list[tuple[tuple[tuple[str, str], ...], float]]]:
        """The breakers' and gates' state now, as `/metrics` shows it (`telemetry.STATE_FAMILIES`)."""
        runtime, now = self.runtime, asyncio.get_running_loop().time()
        states = {name: breaker.state(now) for name, breaker in runtime.breakers.items()}
        gates = runtime.gates.items()
        return {
            "laneway_model_breaker_state": [((("model", name), ("state", state)), float(states[name] == state))
                                            for name in states for state in BREAKER_STATES],
            "laneway_gate_in_flight": [((("model", name),), float(gate.in_flight)) for name, gate in gates],
            "laneway_gate_queued": [((("model", name),), float(gate.queued)) for name, gate in gates],
            "laneway_gate_concurrency_limit": [((("model", name),), float(gate.limit)) for name, gate in gates],
            "laneway_shared_state_up": [] if self.state is None else [((), float(self.state.up))],
        }

    def finish(self, exchange: Exchange, started_perf: float) -> None:
        exchange.latency_ms = (time.perf_counter() - started_perf) * 1000
        if exchange.model is None and exchange.status >= 400:
            _blame(exchange)
        if exchange.api_key is not None and (exchange.cost_usd or exchange.key_usd or exchange.key_tokens):
            # The estimates counted the whole conversation; a trimmed one, a cached answer, a failed call used less.
            self.keys.settle(exchange.api_key, exchange.key_tokens, exchange.prompt_tokens + exchange.completion_tokens,
                             exchange.key_usd, exchange.cost_usd)
        if self.telemetry is not None:
            self.telemetry.record(exchange)

    async def aclose(self) -> None:
        self.ready = False
        await self.shadows.aclose()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.runtime.aclose()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        if self.state is not None:
            await self.state.aclose()
        if self._fleet is not None:
            await self._fleet.aclose()


def _unsure(plan: Plan, exchange: Exchange) -> bool:
    """The answer is one the route's cascade scored under its threshold (kept since the escalation failed)."""
    cascade = plan.route.cascade if plan.route is not None else None
    score = exchange.cascade_confidence
    return cascade is not None and score is not None and score < cascade.confidence


def _blame(exchange: Exchange) -> None:
    """A failed exchange belongs to the last model it was sent to, so per-model error and timeout rates
    count it; one sent to none, to the last one considered (a breaker open, a gate full), unless the
    client's request was at fault (a 4xx other than 408 and 429: a prompt too long, tools no model
    carries), which is no model's error."""
    if refused_for_the_client(exchange):
        return
    sent = [attempt for attempt in exchange.attempts if attempt.outcome != SKIPPED]
    considered = sent or exchange.attempts
    if considered:
        exchange.model, exchange.lane = considered[-1].model, considered[-1].lane


RESTART_ONLY = "changed, but takes effect only when Laneway restarts"
# Sections a running gateway built its long-lived parts from: a reload reads them, and does not apply them.
_BUILT_AT_START = ("state", "telemetry")
_SERVER_BUILT_AT_START = ("cache_entries", "keep_alive_ms", "read_timeout_ms")
# The shadow lane's queue and workers are made at start; its targets and spend cap follow a reload.
_SHADOW_BUILT_AT_START = ("queue", "concurrency")


def restart_only(running: Config, new: Config, *, fleet_running: bool) -> Config:
    """`new` with the running values of the sections a reload changes but cannot apply (`sim:` once a
    fleet runs), and a warning for each: the config then says what runs, and a later reload of the
    file as it was does not warn again."""
    sections = (*_BUILT_AT_START, "sim") if fleet_running else _BUILT_AT_START
    changed = [name for name in sections if getattr(running, name) != getattr(new, name)]
    kept = {name: getattr(running, name) for name in changed}
    started = {name: getattr(running.server, name) for name in _SERVER_BUILT_AT_START
               if getattr(running.server, name) != getattr(new.server, name)}
    if started:
        changed.extend(f"server.{name}" for name in started)
        kept["server"] = replace(new.server, **started)
    shadow = {name: getattr(running.shadow, name) for name in _SHADOW_BUILT_AT_START
              if getattr(running.shadow, name) != getattr(new.shadow, name)}
    if shadow:
        changed.extend(f"shadow.{name}" for name in shadow)
        kept["shadow"] = replace(new.shadow, **shadow)
    notes = [ConfigIssue(name, f"{RESTART_ONLY}; the running value stays", severity="warning") for name in changed]
    return replace(new, **kept, warnings=(*new.warnings, *notes))
