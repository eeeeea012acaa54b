"""Dispatch: try a decision's models in order under one shared deadline.

Each model gets up to `retry.attempts` tries with jittered exponential backoff (a `Retry-After`
inside the remaining budget is honoured; one beyond it moves on to the next model). Models whose
breaker is open, whose context window the prompt would overflow, or whose adapter cannot carry the
request (`Provider.refusal`: a `response_format` or a media part its API takes no such way), are
skipped and recorded.
For streams, failover is possible until the first chunk is in hand; after that the caller owns
the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from .chat import (
    ChatRequest,
    Chunk,
    Completion,
    GatewayMessage,
    KnowledgeMessage,
    Message,
    Usage,
    message_text,
    tool_call_text,
)
from .config import ModelSpec, Price, Route
from .context import TokenCounter, upper_bound
from .errors import (
    AllAttemptsFailed,
    ContextWindowExceeded,
    InvalidRequest,
    ModelsCoolingDown,
    RateLimited,
    UpstreamContextOverflow,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .exchange import CLIENT_DISCONNECTED, GATED, INTERNAL_ERROR, OK, SKIPPED, Attempt, Exchange
from .gate import Gate, GateRejected
from .providers import Refusal, redact
from .runtime import Runtime, fits, output_reserve, prepare

COOLING_DOWN = "cooldown: breaker open"  # the error of an attempt skipped for its model's open breaker
# The share of what is left of the deadline a canary attempt may take before the primary gets the rest.
CANARY_SHARE = 0.5
# The share of what is left of the deadline a wait in a gate's queue may take when a model comes after
# the gated one (its `degrade_to`, or the route's next model): the rest is that model's.
QUEUE_SHARE = 0.5
# A timeout is a verdict on the model (its breaker counts it) only when the attempt had at least this share
# of the model's fair time: the request's whole deadline, or its own `deadline_ms` if shorter. Under
# `CANARY_SHARE`, so that a canary that hangs through its share is charged it.
FAIR_SHARE = 0.25
# How early a timer may fire as the event loop reads its clock: a deadline this close is one that ran out.
TIMER_SLACK_S = 0.005
# The `max_tokens` a trimmed conversation leaves room for when the request names none (at most a
# quarter of the model's window); the request then asks for no more.
TRIM_ANSWER_TOKENS = 1024
# A prompt longer than this is counted in a worker thread (about 4 ms of the tokenizer's time).
LARGE_PROMPT_BYTES = 64 * 1024
T = TypeVar("T")


Lane = tuple[str, str, ChatRequest, "Ticket", int]  # lane, model, the request for it, its gate ticket, messages trimmed


@dataclass(slots=True)
class Plan:
    route: Route | None
    lanes: list[tuple[str, str]]
    deadline: float  # event-loop time
    priority: int = 1  # gate queue class: 0 escalation, 1 chat, 2 triage
    budget_ms: float = math.inf  # the request's whole deadline, as `deadline` was set from it
    gated: GateRejected | None = None  # the last gate that turned the request away, for a 429 if nothing answers
    # What the route's fallbacks get instead of the conversation, when the first lane gets it otherwise: on a
    # retrieval miss sent to `on_miss`, the rest of the route answers with the block that says nothing matched.
    fallback_messages: list[Message] | None = None


class Ticket:
    """A gate admission held for the duration of one model's attempts (and of its stream)."""

    __slots__ = ("admitted", "estimate", "gate", "holding", "settled", "used")

    def __init__(self, gate: Gate | None) -> None:
        self.gate = gate
        self.admitted = False
        self.holding = False  # a stream passed through `hold` was read: its own cleanup runs when it ends
        self.estimate = (0, 0.0)  # tokens, USD charged to the gate's budgets at admission
        self.used: tuple[int, float, float | None] | None = None  # tokens, USD, latency of the call that answered
        self.settled: tuple[int, float] | None = None  # tokens, USD the budgets were left charged at release

    def release(self) -> None:
        if self.gate is None or not self.admitted:
            return
        self.admitted = False
        tokens, usd, latency_ms = self.used if self.used is not None else (*self.estimate, None)
        self.settled = (tokens, usd)
        self.gate.release(latency_ms, tokens - self.estimate[0], usd - self.estimate[1])

    def bill(self, tokens: int, usd: float) -> None:
        """What the call used, once known: a stream cut short, or one whose upstream reported no usage, is
        billed after it gave its slot back, at the estimate; the gate's budgets are corrected by the
        difference (they only ever saw the estimate, and a cap was passed by the cost of whole streams)."""
        if self.gate is None:
            return
        if self.settled is None:  # not given back yet: released with it
            if self.admitted:
                self.used = (tokens, usd, self.used[2] if self.used is not None else None)
            return
        self.gate.correct(tokens - self.settled[0], usd - self.settled[1])
        self.settled = (tokens, usd)

    async def hold(self, chunks: AsyncIterator[Chunk], ended: Callable[[BaseException | None], None],
                   price: Price, began: float) -> AsyncIterator[Chunk]:
        """Pass a stream through, keeping the gate slot until it ends; `ended` hears how: None when it ended
        whole, else what stopped it (the upstream's error, or the consumer closing it). A whole stream settles
        the gate's budgets with what it used (its cost at `price`, when its upstream reported usage) and its
        latency from `began` (`perf_counter()` when the attempt was sent: an adaptive gate judges a stream by
        its wait for the first word too). Only a stream that was read runs this; `let_go` cleans up after one
        that never was."""
        self.holding = True
        usage: Usage | None = None
        try:
            async for chunk in chunks:
                if chunk.usage is not None:
                    usage = chunk.usage
                yield chunk
        except BaseException as stopped:
            ended(stopped)
            raise
        else:
            ended(None)
            latency_ms = (time.perf_counter() - began) * 1000
            self.used = (self.estimate[0], self.estimate[1], latency_ms) if usage is None else (
                usage.total_tokens, price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                                               usage.cache_write_tokens), latency_ms)
        finally:
            self.release()


@dataclass(slots=True)
class Started:
    """A stream whose first chunk has arrived: the point after which there is no failover."""

    model: str
    lane: str
    attempt: Attempt
    first: Chunk
    rest: AsyncIterator[Chunk]
    prompt: ChatRequest | None  # what was sent: counted only if the upstream reports no usage
    began: float  # perf_counter() when the attempt started
    accounted: bool = False  # usage and cost already recorded (an answer replayed as a stream)
    ticket: Ticket | None = None  # the gate admission, billed what the stream used once that is known
    # Frees what the stream holds however far it was read: the consumer awaits it when done with `rest`.
    let_go: Callable[[], Awaitable[None]] | None = None


async def let_go(held: AsyncIterator[Chunk], chunks: AsyncIterator[Chunk], ticket: Ticket,
                 ended: Callable[[BaseException | None], None]) -> None:
    """Close a begun stream (`held`, the upstream's `chunks` passed through `ticket.hold`) whether or not it was
    read. One left half-read by a wrapper that was closed (the cache's tee) is closed now, not by the garbage
    collector; one never read (a failure between the first chunk and the first read) never ran the body that
    frees its gate slot, tells its breaker and closes the upstream's stream, which is done here."""
    await close_stream(held)
    if not ticket.holding:
        ended(GeneratorExit())
        ticket.release()
        await close_stream(chunks)


class Dispatcher:
    def __init__(self, runtime: Runtime, counter: TokenCounter, sink: Any = None) -> None:
        self.runtime = runtime
        self.counter = counter
        self.sink = sink

    async def complete(self, plan: Plan, messages: list[Message], params: dict[str, Any],
                       exchange: Exchange) -> Completion:
        errors: list[UpstreamError] = []
        unsendable: list[InvalidRequest] = []
        async with contextlib.aclosing(self._lanes(plan, messages, params, exchange, unsendable, errors)) as lanes:
            async for lane, name, request, ticket, trimmed in lanes:
                try:
                    for attempt_no in range(self._tries(plan)):
                        attempt, started, limit, given_s = self._attempt(plan, exchange, errors, attempt_no, lane,
                                                                         name, trimmed)
                        try:
                            completion = await self.runtime.providers[name].complete(request, limit)
                        except UpstreamError as error:
                            self._failed(attempt, error, started, name, exchange, plan, given_s, request, messages)
                            errors.append(error)
                            if not await self._retry_pause(plan, error, attempt_no, exchange, name):
                                break
                            continue
                        except InvalidRequest as refused:  # the adapter cannot put it in its wire format: unsent
                            self._unsendable(attempt, name, _as_sent_by_the_client(refused, request, messages),
                                             unsendable)
                            break
                        except BaseException as exc:  # a client that left, or a bug
                            _broke_off(attempt, started, exc, exchange)
                            self.runtime.breakers[name].release()  # no verdict on the model either way
                            raise
                        if not completion.usage.total_tokens:  # none reported: counted here, as for a stream
                            generated = [completion.text, completion.refusal or "",
                                         *tool_call_text(completion.tool_calls or [])]
                            completion.usage = await estimate_usage(self.counter, self.runtime.config.models[name],
                                                                    request, generated)
                        self._succeeded(attempt, started, name, exchange, completion.usage)
                        exchange.lane, exchange.model, exchange.trimmed_messages = lane, name, trimmed
                        ticket.used = (completion.usage.total_tokens, attempt.cost_usd, attempt.latency_ms)
                        return completion
                finally:
                    ticket.release()
        raise unsendable[0] if unsendable and not errors else self._give_up(errors, exchange, plan)

    async def stream(self, plan: Plan, messages: list[Message], params: dict[str, Any],
                     exchange: Exchange) -> Started:
        errors: list[UpstreamError] = []
        unsendable: list[InvalidRequest] = []
        async with contextlib.aclosing(self._lanes(plan, messages, params, exchange, unsendable, errors)) as lanes:
            async for lane, name, request, ticket, trimmed in lanes:
                handed_over = False  # the slot goes with the stream, which gives it back when it ends
                try:
                    for attempt_no in range(self._tries(plan)):
                        attempt, started, limit, given_s = self._attempt(plan, exchange, errors, attempt_no, lane,
                                                                         name, trimmed)
                        chunks = self.runtime.providers[name].stream(request, plan.deadline)
                        try:
                            # Bounded as a whole: an upstream that opens the stream at once with an event that holds
                            # nothing for the client (OpenAI's role chunk, reasoning deltas) has not answered yet.
                            first = await _first_chunk(chunks, limit)
                        except TimeoutError:
                            error: UpstreamError = UpstreamTimeout(
                                "no first chunk within this attempt's time (the request's deadline, the model's "
                                "`deadline_ms`, or a canary's share of the deadline)", model=name)
                        except StopAsyncIteration:
                            error = UpstreamUnavailable("stream ended before any data", model=name)
                        except UpstreamError as exc:
                            error = exc
                        except InvalidRequest as refused:  # the adapter cannot put it in its wire format: unsent
                            await close_stream(chunks)
                            self._unsendable(attempt, name, _as_sent_by_the_client(refused, request, messages),
                                             unsendable)
                            break
                        except BaseException as exc:  # a client that left, or a bug: no failover
                            _broke_off(attempt, started, exc, exchange)
                            self.runtime.breakers[name].release()  # no verdict on the model either way
                            ticket.release()  # at once, not after the upstream's stream is closed
                            await close_stream(chunks)
                            raise
                        else:
                            attempt.ttft_ms = (time.perf_counter() - started) * 1000
                            exchange.upstream_ms += attempt.ttft_ms
                            self.runtime.breakers[name].answering()
                            exchange.lane, exchange.model, exchange.trimmed_messages = lane, name, trimmed
                            ended = partial(self._stream_ended, name)
                            rest = ticket.hold(chunks, ended, self.runtime.config.models[name].price, started)
                            handed_over = True
                            return Started(name, lane, attempt, first, rest, request, started, ticket=ticket,
                                           let_go=partial(let_go, rest, chunks, ticket, ended))
                        await close_stream(chunks)
                        self._failed(attempt, error, started, name, exchange, plan, given_s, request, messages)
                        errors.append(error)
                        if not await self._retry_pause(plan, error, attempt_no, exchange, name):
                            break
                finally:
                    # a pause between tries or a closing stream cancelled (the client left, the server stopped)
                    # must give the slot back too: held, it stopped the gated model for good
                    if not handed_over:
                        ticket.release()
        raise unsendable[0] if unsendable and not errors else self._give_up(errors, exchange, plan)

    def _attempt(self, plan: Plan, exchange: Exchange, errors: list[UpstreamError], attempt_no: int, lane: str,
                 name: str, trimmed: int) -> tuple[Attempt, float, float, float]:
        """A new attempt at `name`, recorded: the attempt, when it starts (`perf_counter()`), when it must give
        up (loop time), and the seconds it has until then; raises the request's error when its deadline is gone."""
        if _expired(plan):
            _too_late(exchange, attempt_no, name, lane)
            raise self._give_up(errors, exchange, plan)
        attempt = Attempt(name, OK, lane=lane, trimmed_messages=trimmed)
        exchange.attempts.append(attempt)
        limit = _attempt_limit(plan, lane, self.runtime.config.models[name]) or plan.deadline
        return attempt, time.perf_counter(), limit, limit - asyncio.get_running_loop().time()

    def _unsendable(self, attempt: Attempt, name: str, refused: InvalidRequest,
                    unsendable: list[InvalidRequest]) -> None:
        """The model's adapter cannot carry the request (a media part its API takes no such way): the
        attempt is recorded as skipped and the plan goes on, as for `Provider.refusal`; when no model
        could carry it, the first such error is the client's 400."""
        attempt.outcome, attempt.error = SKIPPED, refused.message
        self.runtime.breakers[name].release()  # no verdict on the model
        # Named, since a client that sent `model: laneway` chose no model and would not know which refused.
        unsendable.append(InvalidRequest(f"`{name}` ({self.runtime.config.models[name].provider}): {refused.message}",
                                         param=refused.param))

    def _tries(self, plan: Plan) -> int:
        return plan.route.retry.attempts if plan.route else 2

    async def _lanes(self, plan: Plan, messages: list[Message], params: dict[str, Any], exchange: Exchange,
                     unsendable: list[InvalidRequest], errors: list[UpstreamError]) -> AsyncGenerator[Lane, None]:
        """Walk the plan's lanes: skip (and record) models that cannot hold the prompt or whose breaker
        is open, pass each gate, and add the `long_context` or `degrade_to` model when one is needed.
        A prompt too long for a model goes to the route's `long_context` model first; with `trim:
        oldest`, a model it is still too long for gets it without its oldest messages (the count is
        the last value yielded). A model whose adapter found the request malformed (`unsendable`) has
        the last word: its error names the field. A deadline that runs out in a gate's queue ends the plan with
        the `errors` of the models tried before. Callers close it when they stop early
        (`contextlib.aclosing`): left to the garbage collector, it would be closed in a task of the
        event loop's own, one more task per request."""
        lanes = plan.lanes
        overflow: list[str] = []
        rooms: list[tuple[int, str]] = []  # what each model too small for the request has left for the output
        short = math.inf  # the fewest tokens by which the prompt and its output miss a model's window
        refused: list[Refusal] = []
        # The prompt's tokens for the models it overflowed: told to the client, but billed by none, so not the
        # exchange's `prompt_tokens` (each skipped attempt keeps its own count).
        longest = 0
        i = 0
        while i < len(lanes):
            lane, name = lanes[i]
            i += 1
            spec = self.runtime.config.models[name]
            refusal = self.runtime.providers[name].refusal(params)
            if refusal is not None:
                error = f"{refusal.param}: {refusal.reason}"
                exchange.attempts.append(Attempt(name, SKIPPED, lane=lane, error=error))
                refused.append(refusal._replace(reason=f"`{name}` ({spec.provider}): {refusal.reason}"))
                continue
            grounded = plan.fallback_messages if lane == "fallback" and plan.fallback_messages is not None else messages
            request = prepare(spec, grounded, params)
            trimmed = 0
            bound = upper_bound(request.messages, request.params.get("tools"))
            default_output = _default_output(plan, spec, self.runtime.providers[name].default_max_tokens)
            ok, prompt = await counted(bound, fits, self.counter, spec, request, bound, default_output)
            if not ok:
                long_context = plan.route.long_context if plan.route else None
                if any(n == long_context for _, n in lanes):
                    long_context = None  # in the plan already
                # Trimmed only where no model later in the plan, that may be called now, has the room for the
                # whole conversation.
                reserve = output_reserve(spec, request, default_output)
                needed = prompt + reserve
                now = asyncio.get_running_loop().time()
                roomier = any(self.runtime.config.models[n].context_window >= needed
                              and self.runtime.breakers[n].state(now) != "open" for _, n in lanes[i:])
                cut = None if long_context is not None or roomier else await counted(bound, self._trim, plan, spec,
                                                                                       request)
                if cut is None:
                    exchange.attempts.append(Attempt(name, SKIPPED, prompt_tokens=prompt, lane=lane,
                                                     error=f"context_window: {prompt} tokens > {spec.context_window}"))
                    overflow.append(f"`{name}` holds {spec.context_window} with {reserve} for the output")
                    rooms.append((spec.context_window - prompt, name))
                    short = min(short, prompt + reserve - spec.context_window)
                    longest = max(longest, prompt)
                    if long_context is not None:
                        lanes.insert(i, ("fallback", long_context))
                    continue
                request, trimmed, prompt = cut
            if not self.runtime.breakers[name].allows(asyncio.get_running_loop().time()):
                exchange.attempts.append(Attempt(name, SKIPPED, lane=lane, error=COOLING_DOWN))
                continue
            gate = self.runtime.gates.get(name)
            ticket = Ticket(gate)
            if gate is not None and not await self._admit(gate, ticket, plan, lane, spec, request, prompt, exchange,
                                                          errors):
                self.runtime.breakers[name].release()
                continue
            yield lane, name, request, ticket, trimmed
        if unsendable:  # a model that carries what the request asks for found it malformed: the caller says so
            return
        if refused and not any(a.outcome != SKIPPED for a in exchange.attempts):
            params_named = sorted({r.param for r in refused})
            raise InvalidRequest(
                f"no model of the route can carry the request's {' and '.join(f'`{p}`' for p in params_named)}: "
                f"{'; '.join(r.reason for r in refused)}. Route such requests to a model whose adapter carries "
                "them (docs/providers.md), or give the route one as a fallback", param=params_named[0])
        if overflow and not any(a.outcome != SKIPPED for a in exchange.attempts):
            asked = next((key for key in ("max_completion_tokens", "max_tokens") if key in params), None)
            room, roomiest = max(rooms)
            routed = plan.route is not None
            if asked is not None and room > 0:  # the prompt fits: the output asked for does not
                where = "in any model of the route" if routed else f"in `{roomiest}`"
                raise ContextWindowExceeded(
                    f"`{asked}` is too large: {params[asked]} tokens of output do not fit next to the prompt's "
                    f"{longest} {where} ({'; '.join(overflow)}). Ask for at most "
                    f"{room} (`{roomiest}`)", param=asked)
            trims = plan.route is not None and plan.route.trim != "none"
            fix = ("even `trim: oldest` cannot make it fit: the system prompt and the latest user message, with "
                   "what follows it, are too long. Shorten them, ask for less output (`max_tokens`), or give the "
                   "route a `long_context:` model" if trims else
                   "Trim the conversation (or give the route `trim: oldest`), or give the route a `long_context:` "
                   "model" if routed else
                   "Trim the conversation, or send it to a model with a larger context window (or to a route of "
                   "the table, which can trim it or hand it to a `long_context:` model)")
            raise ContextWindowExceeded(
                f"the prompt has {longest} tokens, more than fits: {'; '.join(overflow)}. {fix}"
                f"{self._retrieved_share(messages, short, exchange.retrieval_hits)}")

    def _retrieved_share(self, messages: list[Message], short: float, hits: int | None) -> str:
        """What of a prompt too long the passages of the route's retrieval are, said to the client, who sent none
        of them (they are kept whole, as the system prompt is), when fewer passages could make it fit (`short`:
        the fewest tokens by which the prompt and its output miss a model's window); else empty, as when the
        retrieval found none (its block then only says so)."""
        block = next((m for m in messages if isinstance(m, KnowledgeMessage)), None)
        if block is None or not hits:
            return ""
        passages = self.counter.text_tokens(message_text(block))
        if passages < short:  # without any passage, it would still be too long: no use saying so
            return ""
        return (f". Of the prompt's tokens, {passages} are the passages the "
                "route's `retrieval:` added: a lower `top_k` or a higher `min_score` leaves them room")

    def _trim(self, plan: Plan, spec: ModelSpec, request: ChatRequest) -> tuple[ChatRequest, int, int] | None:
        """With the route's `trim: oldest`, `request` without the oldest messages `spec`'s window cannot
        hold: the request, how many messages were left out, and the prompt's tokens. None otherwise, or
        if it cannot fit."""
        if plan.route is None or plan.route.trim == "none":
            return None
        answer = min(TRIM_ANSWER_TOKENS, spec.context_window // 4)
        # Without a `max_tokens`, room for an answer all the same, and the answer held to it.
        params = request.params if request.max_tokens(0) else {**request.params, "max_tokens": answer}
        reserve = output_reserve(spec, request, answer)
        cut = self.counter.trim_oldest(request.messages, spec.tokenizer, spec.context_window - reserve,
                                       request.params.get("tools"))
        if cut is None:
            return None
        messages, dropped, tokens = cut
        return ChatRequest(request.model, messages, params), dropped, tokens

    async def _admit(self, gate: Gate, ticket: Ticket, plan: Plan, lane: str, spec: ModelSpec,
                     request: ChatRequest, prompt: int, exchange: Exchange, errors: list[UpstreamError]) -> bool:
        """Pass `spec`'s gate, or record the refusal and queue its `degrade_to` model; without one, the plan
        goes on to its next model (a fallback), and a plan with none left is a 429. With a model to go
        to after this one, the wait in the gate's queue takes at most `QUEUE_SHARE` of what is left of
        the deadline, so that the next model still has time to answer."""
        if prompt < 0:
            prompt = self.counter.count(request.messages, spec.tokenizer, request.params.get("tools"))
        ticket.estimate = admission_estimate(spec, request, prompt)
        degrade = spec.gate.degrade_to if spec.gate else None
        loop = asyncio.get_running_loop()
        queued = loop.time()
        until = plan.deadline
        if degrade is not None or plan.lanes[-1] != (lane, spec.name):
            until = queued + QUEUE_SHARE * max(0.0, plan.deadline - queued)
        try:
            waited = await gate.admit(plan.priority, *ticket.estimate, until)
        except GateRejected as refused:
            waited = loop.time() - queued  # for a slot, in vain: a wait all the same
            exchange.upstream_ms += waited * 1000
            exchange.attempts.append(Attempt(spec.name, GATED, latency_ms=waited * 1000, lane=lane,
                                             error=refused.reason))
            if self.sink is not None:
                self.sink.count("gate_rejected", spec.name)
                self.sink.observe_queue_wait(spec.name, waited)
            plan.gated = refused
            at = plan.lanes.index((lane, spec.name))
            if degrade is not None and all(name != degrade for _, name in plan.lanes[:at]):  # never one tried already
                plan.lanes.insert(at + 1, ("degraded", degrade))
            elif plan.lanes[-1] == (lane, spec.name):
                # The deadline, not the queue's timeout, ended the wait: a 504 that names the gate, as when
                # the deadline runs out anywhere else before a model is sent the request, and the failures of
                # the models tried before it, if any.
                if not refused.out_of_time:
                    raise _turned_away(refused) from None
                if not errors:
                    raise self._give_up([], exchange, plan, expired=True) from None
                waited_for = UpstreamTimeout(f"the deadline ran out in its gate's queue ({refused.reason})",
                                             model=spec.name)
                raise AllAttemptsFailed([*errors, waited_for]) from None
            return False
        ticket.admitted = True
        exchange.upstream_ms += waited * 1000
        if self.sink is not None:
            self.sink.observe_queue_wait(spec.name, waited)
        return True

    def _failed(self, attempt: Attempt, error: UpstreamError, started: float, name: str, exchange: Exchange,
                plan: Plan, given_s: float, request: ChatRequest, messages: list[Message]) -> None:
        """`given_s`: the time the attempt had, from when it was sent to its limit. `request` is what was sent,
        made of the client's `messages`: an upstream's 400 names the client's own message (`client_param`)."""
        if isinstance(error, UpstreamRejected) and error.param:
            error.param = client_param(error.param, request, messages)
        if isinstance(error, UpstreamContextOverflow):
            _long_context_next(plan, (attempt.lane, name))
        # An upstream may echo the credential it refused, in a status's body or in a stream's first event.
        error.message = redact(self.runtime.config.models[name], error.message)
        attempt.latency_ms = (time.perf_counter() - started) * 1000
        attempt.outcome = error.code
        attempt.error = error.message
        attempt.upstream_status = error.upstream_status
        exchange.upstream_ms += attempt.latency_ms
        if error.billed is not None:  # it generated, and said what that cost, before it gave up
            account(attempt, exchange, self.runtime.config.models[name].price, error.billed)
        # The request's whole deadline (the route's, or its target's), or the model's own if shorter: not the
        # deadline the attempted model would have set, which, shorter than the target's, spared a hung canary
        # or fallback that had half of the request's time every time.
        spec = self.runtime.config.models[name]
        fair_s = min(plan.budget_ms, spec.deadline_ms or math.inf) / 1000
        self.judge(name, error, short=isinstance(error, UpstreamTimeout) and given_s < FAIR_SHARE * fair_s)

    def judge(self, name: str, error: UpstreamError, *, short: bool = False) -> None:
        """Tell model `name`'s breaker of a failed attempt. A prompt too long, or a request the upstream calls
        malformed, says nothing of the model's health: one client's bad requests must not cool a model down
        for everyone. Nor does a rate limit: the upstream says when to come back (its `Retry-After` reaches
        the client), and a breaker opened on 429s would answer 503s, for its own cooldown, to clients that
        handle rate limits. Nor does a timeout of an attempt that was given too little time (`short`): a
        fallback left the last moments of the deadline by the models before it."""
        breaker = self.runtime.breakers[name]
        if (short or isinstance(error, UpstreamContextOverflow | UpstreamRateLimited)
                or (isinstance(error, UpstreamRejected) and error.client_fault)):
            breaker.release()
        elif breaker.failure(asyncio.get_running_loop().time()) and self.sink is not None:
            self.sink.count("cooldown", name)

    def _stream_ended(self, name: str, stopped: BaseException | None) -> None:
        """A begun stream of model `name` ended: whole, a success; cut or stalled by the upstream, a failure
        (a model that cuts every stream after its first chunk opens its breaker); stopped by the client or
        the gateway, no verdict."""
        if stopped is None:
            self.runtime.breakers[name].success()
        elif isinstance(stopped, UpstreamError):
            self.judge(name, stopped)
        else:
            self.runtime.breakers[name].release()

    def _succeeded(self, attempt: Attempt, started: float, name: str, exchange: Exchange, usage: Usage) -> None:
        attempt.latency_ms = (time.perf_counter() - started) * 1000
        exchange.upstream_ms += attempt.latency_ms
        self.runtime.breakers[name].success()
        account(attempt, exchange, self.runtime.config.models[name].price, usage)

    async def _retry_pause(self, plan: Plan, error: UpstreamError, attempt_no: int, exchange: Exchange,
                           name: str) -> bool:
        """Sleep before retrying model `name`; False means move on to the next model instead: also when
        this failure opened its breaker, or was the probe of a half-open one (a breaker lets one call
        through, not its retries). The pause is time spent on the upstream's account (its `Retry-After`,
        a backoff), not the gateway's."""
        if not error.retryable or isinstance(error, UpstreamTimeout) or attempt_no + 1 >= self._tries(plan):
            return False
        if not self.runtime.breakers[name].closed:
            return False
        loop = asyncio.get_running_loop()
        left = plan.deadline - loop.time()
        base = (plan.route.retry.backoff_ms if plan.route else 50) / 1000
        pause = random.uniform(0.5, 1.0) * base * (2 ** attempt_no)
        if isinstance(error, UpstreamRateLimited) and error.retry_after_s is not None:
            pause = error.retry_after_s
        if pause >= left:
            return False
        paused = loop.time()
        try:
            await asyncio.sleep(pause)
        finally:  # cut short too (the client left): the time was the upstream's, not the gateway's overhead
            exchange.upstream_ms += (loop.time() - paused) * 1000
        return True

    def _give_up(self, errors: list[UpstreamError], exchange: Exchange, plan: Plan,
                 expired: bool = False) -> Exception:
        if errors:
            ran_out = expired or asyncio.get_running_loop().time() >= plan.deadline - TIMER_SLACK_S
            return AllAttemptsFailed(errors, ran_out=ran_out)
        if expired or _expired(plan):  # nothing was sent: the deadline ran out before (at a gate, in a retry pause)
            where = f" ({plan.gated.reason})" if plan.gated is not None else ""
            return AllAttemptsFailed([UpstreamTimeout(f"the deadline ran out before any model was sent the "
                                                      f"request{where}")])
        if plan.gated is not None:  # a gate turned it away, and no model after it was tried
            return _turned_away(plan.gated)
        skipped = [a for a in exchange.attempts if a.outcome == SKIPPED]
        cooling = [a.model for a in skipped if a.error == COOLING_DOWN]
        if cooling and len(cooling) == len(skipped):
            now = asyncio.get_running_loop().time()
            wait = max(0.0, min(self.runtime.breakers[name].open_until for name in cooling) - now)
            names = ", ".join(f"`{name}`" for name in dict.fromkeys(cooling))
            when = f"the first takes a probe request in {math.ceil(wait)} s" if wait >= 1 else "a probe request is on"
            return ModelsCoolingDown(
                f"nothing was sent: every model this request could go to is cooling down after repeated failures "
                f"({names}: breaker open; {when}). Retry then, or give the route a fallback model on another "
                "provider", retry_after_s=max(1.0, math.ceil(wait)))
        return AllAttemptsFailed([UpstreamUnavailable(f"skipped: {a.error}", model=a.model) for a in skipped]
                                 or [UpstreamUnavailable("the plan had no model to try")])


def _long_context_next(plan: Plan, current: tuple[str, str]) -> None:
    """The upstream said the prompt is too long for it (what the gateway does not count, images and files,
    may have made it so): the route's `long_context` model, if not in the plan yet, comes next."""
    long_context = plan.route.long_context if plan.route is not None else None
    if long_context is not None and all(name != long_context for _, name in plan.lanes) and current in plan.lanes:
        plan.lanes.insert(plan.lanes.index(current) + 1, ("fallback", long_context))


def _default_output(plan: Plan, spec: ModelSpec, adapters: int) -> int:
    """The output a request that names no `max_tokens` gets room for: what `trim: oldest` holds the answer to on
    a route that trims, else what the adapter asks for (`adapters`: Anthropic's API requires a `max_tokens`)."""
    if plan.route is not None and plan.route.trim != "none":
        return min(TRIM_ANSWER_TOKENS, spec.context_window // 4)
    return adapters


async def estimate_usage(counter: TokenCounter, spec: ModelSpec, prompt: ChatRequest | None,
                         generated: list[str]) -> Usage:
    """The usage of an answer whose upstream reported none, whole or streamed, so that none costs $0: the
    prompt as sent (if known) and the `generated` pieces, counted with `spec`'s tokenizer (in a worker thread
    when large, as a prompt is: a 50 MB answer held the event loop for 1.9 s)."""
    prompt_tokens = 0
    if prompt is not None:
        tools = prompt.params.get("tools")
        prompt_tokens = await counted(upper_bound(prompt.messages, tools), counter.count, prompt.messages,
                                       spec.tokenizer, tools)
    text = "".join(generated)
    return Usage(prompt_tokens, await counted(len(text), counter.text_tokens, text))


def admission_estimate(spec: ModelSpec, request: ChatRequest, prompt: int) -> tuple[int, float]:
    """What a call is charged at admission, a gate's budgets and the shadow cap alike: tokens and USD of its
    `prompt` and of its `max_tokens` (256 when it names none) at `spec`'s price."""
    output = request.max_tokens(256)
    return prompt + output, spec.price.cost(prompt, output)


def account(attempt: Attempt, exchange: Exchange, price: Price, usage: Usage) -> None:
    """Record what the answer cost: its tokens (prompt-cache reads and writes at their own prices)."""
    attempt.prompt_tokens = usage.prompt_tokens
    attempt.completion_tokens = usage.completion_tokens
    attempt.cached_tokens = usage.cached_tokens
    attempt.cost_usd = price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens,
                                  usage.cache_write_tokens)
    exchange.prompt_tokens = usage.prompt_tokens
    exchange.completion_tokens = usage.completion_tokens
    exchange.cost_usd += attempt.cost_usd


_MESSAGE_PARAM = re.compile(r"messages\.?\[(\d+)\]")  # `messages.[2]`: OpenAI's older way of writing it


def _as_sent_by_the_client(refused: InvalidRequest, sent: ChatRequest, messages: list[Message]) -> InvalidRequest:
    """`refused` with its `param` pointing into the client's own messages (`client_param`)."""
    param = client_param(refused.param, sent, messages)
    return refused if param == refused.param else InvalidRequest(refused.message, param=param)


def client_param(param: str | None, sent: ChatRequest, messages: list[Message]) -> str | None:
    """`param`, an adapter's or an upstream's, pointing into the client's own messages: both count in the list
    they were sent, which a model profile's system prompt, retrieval's passages or trimming made another (the
    client's `messages[1]` was named `messages[2]`, past its last message)."""
    found = _MESSAGE_PARAM.match(param or "")
    if param is None or found is None or int(found.group(1)) >= len(sent.messages):
        return param
    message = sent.messages[int(found.group(1))]
    client = [m for m in messages if not isinstance(m, GatewayMessage)]
    index = next((i for i, m in enumerate(client) if m is message), None)
    if index is None:  # one the gateway put in (a profile's system prompt, the passages): none of the client's
        return None
    return f"messages[{index}]{param[found.end():]}"


def _turned_away(refused: GateRejected) -> RateLimited:
    """The client's 429 when a gate turned the request away and no model was left to try."""
    return RateLimited(f"{refused.reason}; retry later", refused.retry_after_s)


async def counted(bound: int, count: Callable[..., T], *args: Any) -> T:
    """`count(*args)`, in a worker thread for a prompt of more than `LARGE_PROMPT_BYTES` (`bound` is its
    `upper_bound`): the tokenizer takes about 60 ms per MB, during which the event loop would serve no
    other request; it lets go of the GIL meanwhile."""
    if bound > LARGE_PROMPT_BYTES:
        return await asyncio.to_thread(count, *args)
    return count(*args)


def _broke_off(attempt: Attempt, started: float, exc: BaseException, exchange: Exchange) -> None:
    """The attempt in flight when the request was cancelled (the server cancels a request's task when its
    client has left, server/_chat.py), or when a bug raised what no adapter should: the request's 500."""
    if isinstance(exc, asyncio.CancelledError):
        attempt.outcome = CLIENT_DISCONNECTED
    else:
        attempt.outcome, attempt.error = INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
    attempt.latency_ms = (time.perf_counter() - started) * 1000
    exchange.upstream_ms += attempt.latency_ms


def _attempt_limit(plan: Plan, lane: str, spec: ModelSpec) -> float | None:
    """When one attempt must give up, if before the plan's deadline (else None): a canary attempt may use
    only `CANARY_SHARE` of what is left, so that a canary that hangs still leaves the primary time to
    answer; a model with its own `deadline_ms` gets at most that, so that a slow model leaves its
    fallbacks the rest of a route's longer deadline."""
    now = asyncio.get_running_loop().time()
    limits = [now + spec.deadline_ms / 1000] if spec.deadline_ms is not None else []
    if lane == "canary":
        limits.append(now + CANARY_SHARE * max(0.0, plan.deadline - now))
    limit = min(limits, default=plan.deadline)
    return limit if limit < plan.deadline else None


async def _first_chunk(chunks: AsyncIterator[Chunk], limit: float) -> Chunk:
    """The stream's first chunk that holds something for the client; `TimeoutError` past `limit` (only the
    first chunk is bounded: once a stream has begun it cannot fail over). One that holds only usage (vLLM's
    `continuous_usage_stats` put it on every event) began the stream, and an error after it, before any
    token, reached the client as a cut stream instead of failing over: its usage goes with the next."""
    async with asyncio.timeout_at(limit):
        usage = None
        while True:
            chunk = await anext(chunks)
            if (chunk.text or chunk.finish_reason or chunk.tool_calls is not None or chunk.refusal
                    or chunk.annotations or chunk.logprobs):
                if chunk.usage is None:
                    chunk.usage = usage
                return chunk
            usage = chunk.usage or usage


def _expired(plan: Plan) -> bool:
    return asyncio.get_running_loop().time() >= plan.deadline


def _too_late(exchange: Exchange, attempt_no: int, name: str, lane: str) -> None:
    """The deadline ran out before `name`, the first model considered, was sent the request (a gate admitted
    it just then): the exchange still names the model, so that its timeouts count against it."""
    if attempt_no == 0 and not exchange.attempts:
        exchange.attempts.append(Attempt(name, SKIPPED, lane=lane, error="the deadline ran out before it was sent"))


async def close_stream(chunks: AsyncIterator[Chunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        # Closing a failed upstream stream must not mask the error that made us close it.
        with contextlib.suppress(Exception):
            await aclose()


def replay_stream(completion: Completion, exchange: Exchange) -> Started:
    """A finished answer (cached, or accepted by a cascade) as a stream: words as chunks (the first with the
    answer's logprobs), its tool calls whole, then the finish reason and usage. Its cost is already accounted."""
    words = completion.text.split(" ")

    async def rest() -> AsyncIterator[Chunk]:
        for word in words[1:]:
            yield Chunk(" " + word)
        if completion.tool_calls:
            yield Chunk(tool_calls=[{"index": i, **call} for i, call in enumerate(completion.tool_calls)])
        if completion.refusal:
            yield Chunk(refusal=completion.refusal)
        if completion.annotations:
            yield Chunk(annotations=completion.annotations)
        yield Chunk(finish_reason=completion.finish_reason, usage=completion.usage)

    model = exchange.model or ""
    attempt = exchange.attempts[-1] if exchange.attempts else Attempt(model, OK, lane=exchange.lane)
    first = Chunk(words[0], logprobs=completion.logprobs,  # all of them: the pieces are words, not tokens
                  system_fingerprint=completion.system_fingerprint, service_tier=completion.service_tier)
    return Started(model, exchange.lane, attempt, first, rest(), None, time.perf_counter(), accounted=True)
