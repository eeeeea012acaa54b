"""The simulated fleet's HTTP server: every model, every wire format, real sockets.

Paths: `/{model}/v1/chat/completions` (OpenAI), `/{model}/v1/messages` (Anthropic) and
`/{model}/v1beta/models/{id}:generateContent` or `:streamGenerateContent` (Gemini), plus whatever
other wire modules register in `WIRES`. A fault is chosen by the upstream model id's suffix after
`@` (e.g. `gpt-5@error_500`), so tests can drive every failure path with a one-line model entry:

    error_NNN             answer status NNN (500, 502, 503, ...)
    error_429[_retry_S]   429, with `Retry-After: S` when given
    flaky_N[_TAG]         the first N calls of this exact model id fail with 500, then succeed
    slow_MS               wait MS milliseconds before answering
    silent                accept the request and never answer
    reset                 close the connection before any header
    malformed_json        200 with a body that is not JSON
    wrong_content_type    200 with text/html
    oversized             200 with a 16 MiB body
    overflow              the provider's context-length error
    cut_mid_stream        stream three chunks, then drop the connection
    stall_mid_stream      stream three chunks, then go silent
    bad_sse               stream three chunks, then a chunk that is not JSON

`GET /concurrency` reports, per upstream model id, the calls in progress, the most ever in
progress at once and the calls received (e.g. to check a limit several gateways share);
`DELETE /concurrency` answers the same, then starts the counts afresh.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import orjson
from aiohttp import web

from ..context import TokenCounter
from . import _wire_anthropic, _wire_gemini, _wire_openai
from ._answers import SimRequest, answer, prompt_tokens
from ._cassettes import Cassette
from ._fleet import SimModel
from ._prompt_cache import PromptCache

WIRES: dict[str, ModuleType] = {"openai": _wire_openai, "anthropic": _wire_anthropic, "gemini": _wire_gemini}
# Gemini's `{model}` segment is `<model id>:<method>`; its wire's `parse` splits the two.
_ROUTES: list[tuple[str, str]] = [
    ("openai", "/{name}/v1/chat/completions"),
    ("anthropic", "/{name}/v1/messages"),
    ("gemini", "/{name}/v1beta/models/{model}"),
]
_CUT_AFTER = 3


@dataclass
class _ModelState:
    model: SimModel
    slots: asyncio.Semaphore
    active: int = 0
    waiting: int = 0


@dataclass
class CallCount:
    active: int = 0
    peak: int = 0
    calls: int = 0

    def enter(self) -> None:
        self.active += 1
        self.calls += 1
        self.peak = max(self.peak, self.active)


@dataclass
class Fleet:
    models: dict[str, SimModel]
    seed: int = 7
    counter: TokenCounter = field(default_factory=TokenCounter)
    calls: dict[str, int] = field(default_factory=dict)
    concurrency: dict[str, CallCount] = field(default_factory=dict)  # by upstream model id
    cassette: Cassette | None = None  # recorded real outputs for known prompts
    prompt_cache: PromptCache = field(default_factory=PromptCache)
    _states: dict[str, _ModelState] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def state(self, name: str) -> _ModelState | None:
        if name not in self._states and name in self.models:
            model = self.models[name]
            self._states[name] = _ModelState(model, asyncio.Semaphore(model.slots))
        return self._states.get(name)


def build_app(fleet: Fleet) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_elsewhere(fleet)])
    for wire, path in _ROUTES:
        app.router.add_post(path, _handler(fleet, WIRES[wire]))
    app.router.add_get("/healthz", _health(fleet))
    app.router.add_get("/concurrency", _concurrency(fleet))
    app.router.add_delete("/concurrency", _concurrency(fleet))
    return app


def where_models_are(fleet: Fleet) -> str:
    """How a client reaches the fleet's models: each has its own path prefix, one per wire format."""
    return (f"each model under its own prefix: POST /{{model}}/v1/chat/completions (OpenAI), /{{model}}/v1/messages "
            f"(Anthropic), /{{model}}/v1beta/models/{{id}}:generateContent (Gemini); in a routing file, "
            f"`base_url: sim:///{{model}}/v1` (openai) or `sim:///{{model}}` (anthropic, gemini); models: "
            f"{', '.join(sorted(fleet.models))}")


def _elsewhere(fleet: Fleet) -> Any:
    """A path no route serves: a JSON 404 that says where the models are, instead of aiohttp's plain text."""

    @web.middleware
    async def elsewhere(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPNotFound:
            return web.json_response({"error": {"message": f"no endpoint `{request.method} {request.path}` on the "
                                                           f"simulated fleet; it serves {where_models_are(fleet)}",
                                                "type": "not_found_error", "code": "not_found"}}, status=404)
        return response

    return elsewhere


def _concurrency(fleet: Fleet) -> Any:
    async def concurrency(request: web.Request) -> web.Response:
        counts = {k: {"active": c.active, "peak": c.peak, "calls": c.calls} for k, c in fleet.concurrency.items()}
        if request.method == "DELETE":
            for count in fleet.concurrency.values():  # in place: calls in progress still hold their count
                count.peak, count.calls = count.active, 0
        return web.json_response(counts)

    return concurrency


def _health(fleet: Fleet) -> Any:
    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "models": sorted(fleet.models)})

    return health


def _handler(fleet: Fleet, wire: ModuleType) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _serve(fleet, wire, request)

    return handle


async def _serve(fleet: Fleet, wire: ModuleType, http: web.Request) -> web.StreamResponse:
    name = http.match_info["name"]
    state = fleet.state(name)
    if state is None:
        return _error(wire, 404, "model_not_found", f"no simulated model `{name}`; known: {sorted(fleet.models)}")
    try:
        body = await http.json(loads=orjson.loads)
        request = wire.parse(body, http.match_info.get("model"))
    except (ValueError, TypeError) as exc:
        return _error(wire, 400, "invalid_request", str(exc))
    if http.headers.get("x-sim-stream") == "1":
        request.stream = True
    count = fleet.concurrency.setdefault(request.model_id, CallCount())
    count.enter()
    try:
        return await _call(fleet, wire, http, state, request)
    finally:
        count.active -= 1


async def _call(fleet: Fleet, wire: ModuleType, http: web.Request, state: _ModelState,
                request: SimRequest) -> web.StreamResponse:
    name = http.match_info["name"]
    fault = request.model_id.partition("@")[2]
    early = await _early_fault(fleet, wire, http, request, fault)
    if early is not None:
        return early
    model = state.model
    prompt = prompt_tokens(fleet.counter, request)
    if prompt > model.context_window or fault == "overflow":
        if model.overflow == "stall" and fault != "overflow":
            await asyncio.sleep(model.overflow_stall_ms / 1000)
        return web.Response(status=400, body=wire.overflow_error(prompt, model.context_window),
                            content_type=wire.CONTENT_TYPE)
    if state.waiting >= model.queue_limit:
        return _error(wire, getattr(wire, "OVERLOADED_STATUS", 503), "overloaded",
                      f"`{name}` is overloaded: {state.waiting} calls queued")
    state.waiting += 1
    try:
        await state.slots.acquire()
    finally:
        state.waiting -= 1
    state.active += 1
    try:
        return await _generate(fleet, wire, http, state, request, fault)
    finally:
        state.active -= 1
        state.slots.release()


async def _early_fault(fleet: Fleet, wire: ModuleType, http: web.Request, request: SimRequest,
                       fault: str) -> web.StreamResponse | None:
    if not fault:
        return None
    kind, _, arg = fault.partition("_")
    if fault == "reset":
        if http.transport is not None:
            http.transport.abort()
        return web.Response(status=500)
    if fault == "silent":
        await asyncio.sleep(3600)
    if kind == "slow":
        await asyncio.sleep(int(arg or 1000) / 1000)
    if kind == "flaky":
        seen = fleet.calls.get(request.model_id, 0)
        fleet.calls[request.model_id] = seen + 1
        failures = int(arg.partition("_")[0] or 1)  # anything after the count only makes the id unique
        if seen < failures:
            return _error(wire, 500, "server_error", f"flaky failure {seen + 1} of {failures}")
    if kind == "error":
        status, _, retry = arg.partition("_retry_")
        headers = {"retry-after": retry} if retry else {}
        return _error(wire, int(status), "simulated_error", f"simulated {status}", headers)
    if fault == "malformed_json":
        return web.Response(status=200, body=b'{"choices": [', content_type="application/json")
    if fault == "wrong_content_type":
        return web.Response(status=200, text="<html>maintenance</html>", content_type="text/html")
    if fault == "oversized":
        return web.Response(status=200, body=b'{"pad": "' + b"x" * (16 * 1024 * 1024) + b'"}',
                            content_type="application/json")
    return None


async def _generate(fleet: Fleet, wire: ModuleType, http: web.Request, state: _ModelState,
                    request: SimRequest, fault: str) -> web.StreamResponse:
    model = state.model
    reply = answer(model, request, fleet.counter, fleet.seed, fleet.cassette)
    fleet.prompt_cache.bill(model.name, request, reply, fleet.counter, time.monotonic())
    rng = random.Random(hash((request.model_id, reply.prompt_tokens, next(fleet._ids))))
    busy = state.active / model.slots
    ttft = model.law.ttft_ms(reply.prompt_tokens, busy, rng)
    if reply.thinking_tokens:  # the answer's first token comes after the thinking
        ttft += model.law.decode_ms(reply.thinking_tokens, busy, rng)
    decode = model.law.decode_ms(reply.completion_tokens, busy, rng)
    request_id = f"sim{next(fleet._ids):08d}"
    await asyncio.sleep(ttft / 1000)
    if not request.stream:
        await asyncio.sleep(decode / 1000)
        return web.Response(body=wire.completion(reply, request, request_id), content_type=wire.CONTENT_TYPE)
    response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await response.prepare(http)
    per_event = decode / 1000 / max(1, len(reply.words))
    owed = 0.0
    for i, event in enumerate(wire.stream_events(reply, request, request_id)):
        if i == _CUT_AFTER and fault in ("cut_mid_stream", "stall_mid_stream", "bad_sse"):
            await _mid_stream_fault(http, response, fault)
            return response
        await response.write(event)
        owed += per_event
        if owed >= 0.002:
            await asyncio.sleep(owed)
            owed = 0.0
    await response.write_eof()
    return response


async def _mid_stream_fault(http: web.Request, response: web.StreamResponse, fault: str) -> None:
    if fault == "bad_sse":
        await response.write(b"data: {not json\n\n")
        await asyncio.sleep(3600)
    if fault == "stall_mid_stream":
        await asyncio.sleep(3600)
    if http.transport is not None:
        http.transport.abort()


def _error(wire: ModuleType, status: int, kind: str, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=wire.error(status, kind, message), content_type="application/json",
                        headers=headers)
