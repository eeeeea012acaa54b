"""`POST /v1/chat/completions`: decode, call the gateway core, encode the answer or the error.

Streaming contract: headers and the first chunk go out only once an upstream has produced a
first chunk, so every failure before that can still fail over. A fault after it ends the stream
with an SSE `error` event and no `[DONE]`, so no client mistakes a cut answer for a whole one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson

from ..chat import Chunk, Completion, TokenLogprob, Usage, said, tool_call_text
from ..dispatch import Started, account, close_stream, estimate_usage
from ..errors import LanewayError, ShuttingDown, UpstreamError, error_body
from ..exchange import CANCELLED, CLIENT_DISCONNECTED, OK, Exchange
from ..gateway import Gateway
from ..keys import KeyPolicy
from ..providers import redact
from ..request import ClientRequest, conversation_header, decode
from ..runtime import Runtime
from ._asgi import JSON, Headers, Receive, Send, respond, respond_error

CLIENT_CLOSED = 499  # the status nginx logs for a request its client closed before the answer
SHUT_DOWN = 503  # the status recorded for a request the stopping server cut short
WATCH_AFTER_S = 1.0  # a request not answered by then starts listening for its client leaving
T = TypeVar("T")
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


def laneway_headers(exchange: Exchange, cost: bool = True) -> Headers:
    headers = [
        (b"x-laneway-route", (exchange.route or "").encode()),
        (b"x-laneway-model", (exchange.model or "").encode()),
        (b"x-laneway-lane", exchange.lane.encode()),
        (b"x-laneway-attempts", str(len(exchange.attempts)).encode()),
    ]
    if cost:
        headers.append((b"x-laneway-cost-usd", f"{exchange.cost_usd:.8f}".encode()))
    if exchange.trimmed_messages:
        headers.append((b"x-laneway-trimmed", str(exchange.trimmed_messages).encode()))
    return headers


async def chat_completions(gateway: Gateway, body: bytes, headers: dict[str, str], path: str, send: Send,
                           exchange: Exchange, base: Headers, key: KeyPolicy | None = None,
                           receive: Receive | None = None) -> None:
    """`receive` is the request's, its body already read: a stream listens on it for the client leaving."""
    started = time.perf_counter()
    try:
        request = decode(body, gateway.config.server.max_messages)
        exchange.stream = request.stream
        if request.stream:
            await _stream(gateway, request, headers, path, send, exchange, base, started, key, receive)
            return
        completion = await _unless_client_leaves(gateway.complete(request, headers, path, exchange, key), receive,
                                                 exchange, started)
        if completion is None:  # the client left first: recorded, and nobody to answer
            gateway.finish(exchange, started)
            return
    except LanewayError as error:
        refused(gateway, exchange, error, headers, started)
        await respond_error(send, error, exchange.request_id, [*base, *laneway_headers(exchange)])
        return
    except Exception as exc:
        # A bug must still leave a record of the request it failed.
        _failed(exchange, LanewayError(f"internal error: {type(exc).__name__}"))
        gateway.finish(exchange, started)
        raise
    except asyncio.CancelledError:
        # Cancelled with its client still there: the server stopped, past its grace period. A stream
        # that had begun recorded itself; anything else is recorded here, never lost, and the client
        # hears why, with the request's id, in OpenAI's error shape.
        if exchange.outcome != CANCELLED:
            _cancelled(exchange, "before the answer")
            gateway.finish(exchange, started)
            stopped = ShuttingDown(f"{exchange.error}; send the request again")
            await respond_error(send, stopped, exchange.request_id, [*base, *laneway_headers(exchange)])
        raise
    if gateway.config.telemetry.store_bodies:
        exchange.answer_body = said(completion.text, completion.tool_calls)
    gateway.finish(exchange, started)
    logprobs = bool(request.params.get("logprobs"))
    payload = _completion_body(completion, exchange, _answer_id(exchange, headers), logprobs)
    await respond(send, 200, payload, [JSON, *base, *laneway_headers(exchange)])


async def _unless_client_leaves(answer: Awaitable[T], receive: Receive | None, exchange: Exchange,
                                started: float) -> T | None:
    """`answer` (the whole completion, or a stream's first chunk), or None if the client left before it:
    the request is then cancelled, which frees its place in a gate's queue or its slot and stops the
    upstream call, and the exchange says so. The watch starts only after `WATCH_AFTER_S`, so that
    the requests answered sooner pay for a timer and nothing else."""
    client = _ClientWatch(receive)
    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, client.watch, asyncio.current_task())
    try:
        return await answer
    except asyncio.CancelledError:
        if not client.left():
            raise
        waited = time.perf_counter() - started
        exchange.status, exchange.outcome = CLIENT_CLOSED, CLIENT_DISCONNECTED
        exchange.error = f"the client disconnected after {waited:.1f} s, before the answer"
        return None
    finally:
        timer.cancel()
        client.stop()


def _cancelled(exchange: Exchange, when: str) -> None:
    exchange.status, exchange.outcome = SHUT_DOWN, CANCELLED
    exchange.error = f"the gateway stopped {when} (past `server.shutdown_grace_ms`, or at a second Ctrl-C)"
    for attempt in exchange.attempts:  # the attempt in flight took the stop for its client leaving
        if attempt.outcome == CLIENT_DISCONNECTED:
            attempt.outcome, attempt.error = CANCELLED, exchange.error


async def stopped_while_read(gateway: Gateway, exchange: Exchange, send: Send, base: Headers, started: float,
                             headers: dict[str, str], key: KeyPolicy | None) -> None:
    """A request whose body was still arriving when the server stopped, past its grace: recorded (with its
    client key and conversation, as far as its headers say), and told so with its id, as a request cut later
    is (it had neither)."""
    exchange.api_key = key.name if key is not None else None
    exchange.conversation_id = conversation_header(headers)
    _cancelled(exchange, "before the request's body arrived")
    gateway.finish(exchange, started)
    stopped = ShuttingDown(f"{exchange.error}; send the request again")
    await respond_error(send, stopped, exchange.request_id, [*base, *laneway_headers(exchange)])


def refused(gateway: Gateway, exchange: Exchange, error: LanewayError, headers: dict[str, str],
            started: float) -> None:
    """Record a request that ended in `error` before any answer: a malformed one, one no model could take,
    or one refused before its body was read (its client key, its size, a web page's)."""
    _failed(exchange, error)
    if exchange.conversation_id is None:  # refused before its signals were read
        exchange.conversation_id = conversation_header(headers)
    gateway.finish(exchange, started)


def _failed(exchange: Exchange, error: LanewayError) -> None:
    exchange.status = error.status
    exchange.outcome = error.code
    exchange.error = error.message


def _answer_id(exchange: Exchange, headers: dict[str, str]) -> str:
    """The answer's `id`: the request id the gateway made, or, for a request id the client sent (which it may
    send again, for a trace), an id of the answer's own, as OpenAI's answers each have."""
    made = headers.get("x-request-id") != exchange.request_id
    return f"chatcmpl-{exchange.request_id if made else os.urandom(12).hex()}"


def _completion_body(completion: Completion, exchange: Exchange, answer: str, logprobs: bool) -> bytes:
    """The answer; its token log-probabilities only when the client asked (a cascade may ask for them
    itself), and only when the model gave them."""
    usage = completion.usage
    # `refusal` is always there, null unless the model declined (then without text), as OpenAI answers
    message: dict[str, Any] = {"role": "assistant", "content": completion.text, "refusal": completion.refusal}
    if completion.refusal is not None or completion.tool_calls:
        message["content"] = completion.text or None  # as OpenAI answers a refusal or a call without text
    if completion.tool_calls:
        message["tool_calls"] = completion.tool_calls
    if completion.annotations:
        message["annotations"] = completion.annotations
    tokens = {"content": completion.logprobs} if logprobs and completion.logprobs is not None else None
    body = {
        "id": answer, "object": "chat.completion", "created": int(exchange.started_at),
        "model": exchange.model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": completion.finish_reason, "logprobs": tokens}],
        "usage": usage_body(usage),
    }
    if completion.system_fingerprint is not None or completion.service_tier is not None:
        body.update(_upstream_fields(completion.system_fingerprint, completion.service_tier))
    return orjson.dumps(body)


def _upstream_fields(fingerprint: str | None, tier: str | None) -> dict[str, str]:
    """`system_fingerprint` and `service_tier` as an OpenAI-compatible upstream gave them (others give none)."""
    fields = {}
    if fingerprint is not None:
        fields["system_fingerprint"] = fingerprint
    if tier is not None:
        fields["service_tier"] = tier
    return fields


def usage_body(usage: Usage) -> dict[str, Any]:
    """OpenAI's `usage`; `prompt_tokens_details.cached_tokens` when the provider read from its prompt cache,
    `completion_tokens_details` when the model thought, or used a `prediction`."""
    body: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                            "total_tokens": usage.total_tokens}
    if usage.cached_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    details = {name: count for name, count in (("reasoning_tokens", usage.reasoning_tokens),
                                               ("accepted_prediction_tokens", usage.accepted_prediction_tokens),
                                               ("rejected_prediction_tokens", usage.rejected_prediction_tokens))
               if count}
    if details:
        body["completion_tokens_details"] = details
    return body


async def _stream(gateway: Gateway, request: ClientRequest, headers: dict[str, str], path: str, send: Send,
                  exchange: Exchange, base: Headers, started_perf: float, key: KeyPolicy | None,
                  receive: Receive | None) -> None:
    opened = await _unless_client_leaves(gateway.open_stream(request, headers, path, exchange, key), receive,
                                         exchange, started_perf)
    if opened is None:  # the client left before the first chunk: recorded, and nobody to answer
        gateway.finish(exchange, started_perf)
        return
    started, runtime = opened
    client = _ClientWatch(receive)
    stopped = False
    failure: UpstreamError | None = None
    try:
        encoder = _ChunkEncoder(exchange, _answer_id(exchange, headers), started.first)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_SSE, *base, *laneway_headers(exchange, cost=False)]})
        exchange.ttft_ms = (time.perf_counter() - started_perf) * 1000
        state = _StreamState(bool(request.params.get("logprobs")))
        await _forward(send, encoder, started.first, state)
        client.watch()  # after the first byte, so the time to it pays nothing for the watch
        try:
            async for chunk in started.rest:
                await _forward(send, encoder, chunk, state)
        except UpstreamError as error:
            # An upstream may echo the credential it refused in the stream's error event: never passed on.
            spec = runtime.config.models.get(started.model)
            if spec is not None:
                error.message = redact(spec, error.message)
            _stream_failed(exchange, started, error.code, f"after first byte: {error.message}", "stream_interrupted")
            failure = error
            tail = b""
        except asyncio.CancelledError:
            if client.left():
                # The client hung up: stop generating (and paying) for nobody, and say so in the log.
                exchange.status = CLIENT_CLOSED
                _stream_failed(exchange, started, CLIENT_DISCONNECTED,
                               f"the client disconnected after {state.pieces()} pieces", CLIENT_DISCONNECTED)
            else:  # the server stopped past its grace period: bill and record what was sent, then stop
                _cancelled(exchange, f"after {state.pieces()} pieces of the stream")
                _stream_failed(exchange, started, CANCELLED, exchange.error, CANCELLED)
                stopped = True
            tail = b""
        else:
            usage = state.usage or await _estimate(gateway, runtime, started, state.generated())
            tail = _account_stream(runtime, started, usage, state, exchange, request.include_usage, encoder)
        finally:
            client.stop()
        if exchange.outcome != OK and not started.accounted:  # what was generated is billed all the same
            usage = await _billed_so_far(gateway, runtime, started, state)
            account(started.attempt, exchange, runtime.config.models[started.model].price, usage)
        if failure is not None:  # the error, and what the stream cost up to it
            tail = _error_event(failure, exchange) + _cost_comment(exchange)
        if started.ticket is not None:  # the model's gate, told what the stream was billed
            attempt = started.attempt
            started.ticket.bill(attempt.prompt_tokens + attempt.completion_tokens, attempt.cost_usd)
    finally:
        await close_stream(started.rest)  # frees a gate slot at once if the client went away mid-stream
        if started.let_go is not None:  # and whatever the stream held, however far it was read
            await started.let_go()
        runtime.leave()
    if runtime.config.telemetry.store_bodies:
        exchange.answer_body = said("".join(state.text), state.calls)  # its calls as `name(arguments)`
    # Recorded before the last byte leaves, so whoever reads the whole answer finds it accounted.
    gateway.finish(exchange, started_perf)
    if stopped:
        raise asyncio.CancelledError
    if tail:
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def _account_stream(runtime: Runtime, started: Started, usage: Usage, state: _StreamState,
                    exchange: Exchange, include_usage: bool, encoder: _ChunkEncoder) -> bytes:
    if not started.accounted:  # a replayed answer (the cache's) is: its model may be gone from the config since
        _stream_ended(exchange, started)
        account(started.attempt, exchange, runtime.config.models[started.model].price, usage)
    tail = encoder.finish(state.finish or "stop")
    if include_usage:
        tail += encoder.usage(usage)
    return tail + _cost_comment(exchange) + b"data: [DONE]\n\n"


def _cost_comment(exchange: Exchange) -> bytes:
    """The SSE comment that tells a client (`laneway loadtest`) what the stream cost: a stream's headers
    leave before its cost is known."""
    return f": laneway cost_usd={exchange.cost_usd:.8f}\n\n".encode()


class _StreamState:
    __slots__ = ("calls", "finish", "logprobs", "text", "usage")

    def __init__(self, logprobs: bool) -> None:
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.text: list[str] = []  # the text and refusal pieces forwarded
        self.calls: list[dict[str, Any]] = []  # the tool-call pieces forwarded
        self.logprobs = logprobs  # the client asked for them

    def pieces(self) -> int:
        """How many pieces of the answer were forwarded: text, refusal and tool-call pieces."""
        return len(self.text) + len(self.calls)

    def generated(self) -> list[str]:
        """Everything the model generated, to count when its upstream reported no usage."""
        return [*self.text, *tool_call_text(self.calls)] if self.calls else self.text


async def _forward(send: Send, encoder: _ChunkEncoder, chunk: Chunk, state: _StreamState) -> None:
    if chunk.usage is not None:
        state.usage = chunk.usage
    if chunk.finish_reason:
        state.finish = chunk.finish_reason
    if chunk.text:
        state.text.append(chunk.text)
        tokens = chunk.logprobs if state.logprobs else None
        await send({"type": "http.response.body", "body": encoder.delta(chunk.text, tokens), "more_body": True})
    if chunk.tool_calls:
        state.calls += chunk.tool_calls
        await send({"type": "http.response.body", "body": encoder.tool_calls(chunk.tool_calls), "more_body": True})
    if chunk.refusal:
        state.text.append(chunk.refusal)
        await send({"type": "http.response.body", "body": encoder.refusal(chunk.refusal), "more_body": True})
    if chunk.annotations:
        await send({"type": "http.response.body", "body": encoder.annotations(chunk.annotations), "more_body": True})


async def _estimate(gateway: Gateway, runtime: Runtime, started: Started, text: list[str]) -> Usage:
    return await estimate_usage(gateway.counter, runtime.config.models[started.model], started.prompt, text)


async def _billed_so_far(gateway: Gateway, runtime: Runtime, started: Started, state: _StreamState) -> Usage:
    """What a stream cut before its end is billed: the prompt as the upstream counted it, if it said so before
    the cut (cache reads at their price), and the completion it counted or, if more, the pieces forwarded."""
    told = state.usage
    if told is None:
        return await _estimate(gateway, runtime, started, state.generated())
    # the pieces alone: the prompt, which the upstream counted, is not counted again
    pieces = await estimate_usage(gateway.counter, runtime.config.models[started.model], None, state.generated())
    return dataclasses.replace(told, completion_tokens=max(told.completion_tokens, pieces.completion_tokens))


def _stream_ended(exchange: Exchange, started: Started) -> None:
    elapsed = (time.perf_counter() - started.began) * 1000
    exchange.upstream_ms += elapsed - (started.attempt.ttft_ms or 0.0)
    started.attempt.latency_ms = elapsed


def _stream_failed(exchange: Exchange, started: Started, code: str, error: str, outcome: str) -> None:
    _stream_ended(exchange, started)
    started.attempt.outcome = code
    started.attempt.error = error
    exchange.outcome = outcome
    exchange.error = error


class _ClientWatch:
    """Listens on a stream's `receive` for the client leaving, and then cancels the task serving it
    (the server drops what is sent to a closed connection without a word, so the stream would run on)."""

    __slots__ = ("_armed", "_gone", "_receive", "_task")

    def __init__(self, receive: Receive | None) -> None:
        self._receive = receive
        self._task: asyncio.Future[Any] | None = None
        self._armed = False
        self._gone = False

    def watch(self, owner: asyncio.Task[Any] | None = None) -> None:
        """Cancel `owner` (by default the current task) when the client leaves, until `stop()`."""
        if self._receive is None:
            return
        owner = owner or asyncio.current_task()
        self._armed = True
        self._task = asyncio.ensure_future(self._receive())

        def heard(message: asyncio.Future[Any]) -> None:
            if (self._armed and owner is not None and not message.cancelled() and message.exception() is None
                    and message.result().get("type") == "http.disconnect"):
                self._gone = True
                owner.cancel()

        self._task.add_done_callback(heard)

    def left(self) -> bool:
        """Whether the client's leaving cancelled the task; if so, that cancellation is taken back."""
        self._armed = False
        if self._gone:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        return self._gone

    def stop(self) -> None:
        self._armed = False
        if self._task is not None and not self._task.done():
            self._task.cancel()


def _error_event(error: LanewayError, exchange: Exchange) -> bytes:
    body = orjson.dumps(error_body(error, exchange.request_id))
    return b"event: error\ndata: " + body + b"\n\n"


class _ChunkEncoder:
    """Pre-encodes the constant parts of every chunk of one stream. The first delta carries
    `"role": "assistant"`, as OpenAI's first chunk does."""

    __slots__ = ("_delta", "_finish_head", "_head", "_tail")

    def __init__(self, exchange: Exchange, answer: str, first: Chunk | None = None) -> None:
        """`answer`: the answer's `id`; `first`: the stream's first chunk, whose upstream fields
        (`system_fingerprint`) every chunk repeats."""
        upstream = _upstream_fields(first.system_fingerprint, first.service_tier) if first is not None else {}
        head = orjson.dumps({"id": answer, "object": "chat.completion.chunk",
                             "created": int(exchange.started_at), "model": exchange.model, **upstream})[:-1]
        self._delta = b"data: " + head + b',"choices":[{"index":0,"delta":{'
        self._head = self._delta + b'"role":"assistant",'
        self._tail = b'},"finish_reason":null}]}\n\n'
        self._finish_head = b"data: " + head

    def delta(self, text: str, logprobs: list[TokenLogprob] | None = None) -> bytes:
        tokens = b"" if logprobs is None else b'},"logprobs":{"content":' + orjson.dumps(logprobs)
        return self._event(b'"content":' + orjson.dumps(text) + tokens)

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        return self._event(b'"tool_calls":' + orjson.dumps(calls))

    def refusal(self, text: str) -> bytes:
        return self._event(b'"refusal":' + orjson.dumps(text))

    def annotations(self, annotations: list[Any]) -> bytes:
        return self._event(b'"annotations":' + orjson.dumps(annotations))

    def _event(self, fields: bytes) -> bytes:
        event = self._head + fields + self._tail
        self._head = self._delta  # the role goes with the first delta only
        return event

    def finish(self, reason: str) -> bytes:
        # An answer with no piece at all (an empty text, cut by `max_tokens`) still says whose it is.
        first = self.delta("") if self._head is not self._delta else b""
        return first + (self._finish_head + b',"choices":[{"index":0,"delta":{},"finish_reason":'
                + orjson.dumps(reason) + b"}]}\n\n")

    def usage(self, usage: Usage) -> bytes:
        return self._finish_head + b',"choices":[],"usage":' + orjson.dumps(usage_body(usage)) + b"}\n\n"
