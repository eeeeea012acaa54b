"""One timed request: send a body, read the answer (or its event stream), say what happened.

Errors are classified by kind: `HTTP <status> <code>` from the answer's OpenAI-shaped error body,
`stream error <code>` for an SSE `event: error` or an event whose data is an object with an `error`
(as the `openai` client reads one), `stream bad event` for an event whose data is not JSON, `stream cut`
for a stream that ends without `[DONE]` (closed early, or its connection broken), `not a stream` for a
streamed request answered otherwise, and `timeout`, `connect` or
`transport <ExceptionName>` when no answer arrived or it broke off (what the answer's head said, its model,
lane and cost, is kept). A whole answer under 400 that is no chat completion is `bad answer`, or
`answer error <code>` for an error object. Each failed outcome also carries what it was told
(`detail`): the error body's message, or the exception's words.

A stream's time to first token is the arrival of its first event that carries generated output
(`content`, `tool_calls`, `refusal` or reasoning in the first choice's delta): not a comment, a
keep-alive or a first chunk with only the role. The chunk times are those of such events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import orjson

_COST_MARK = b": laneway cost_usd="
DETAIL_CHARS = 300  # of an error's message kept as its sample


@dataclass(slots=True)
class Outcome:
    """What one request got. Times are seconds from the moment the request was due."""

    latency: float
    status: int = 0
    error: str = ""
    detail: str = ""  # what the failure said: the error body's message, or the exception's words
    ttft: float | None = None
    model: str = "-"
    lane: str = "-"
    route: str = "-"
    cost_usd: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each SSE event, streams only


async def send(session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, due: float,
               limit_s: float) -> Outcome:
    """POST `body`; `due` is the perf_counter() time the request should have gone out."""
    outcome: Outcome | None = None  # once the answer's head came: what it said (model, lane, cost) is kept
    try:
        async with asyncio.timeout(limit_s), session.post(url, data=body) as response:
            outcome = Outcome(0.0, status=response.status)
            _read_headers(outcome, response.headers)
            if stream and response.status < 400:
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" in ctype:
                    await _read_stream(outcome, response, due)
                else:
                    await response.read()
                    outcome.error = "not a stream"
                    outcome.detail = f"answered with content-type `{ctype}`"
            else:
                payload = await response.read()
                if response.status >= 400:
                    outcome.error = f"HTTP {response.status} {_error_code(payload)}".rstrip()
                    outcome.detail = _error_message(payload)
                else:
                    _check_completion(outcome, payload)
    except TimeoutError:
        words = f"no answer within {limit_s:g} s" if outcome is None else f"the answer not whole within {limit_s:g} s"
        return _broken(outcome, due, "timeout", words)
    except aiohttp.ClientConnectorError as exc:
        return _broken(outcome, due, "connect", _words(exc))
    except aiohttp.ClientError as exc:
        return _broken(outcome, due, f"transport {type(exc).__name__}", _words(exc))
    outcome.latency = time.perf_counter() - due
    return outcome


def _broken(outcome: Outcome | None, due: float, kind: str, detail: str) -> Outcome:
    """A request that failed before its answer was whole; what the answer's head said, if it came, is kept."""
    if outcome is None:
        return Outcome(time.perf_counter() - due, error=kind, detail=detail)
    outcome.latency = time.perf_counter() - due
    outcome.error, outcome.detail = kind, detail
    return outcome


def _check_completion(outcome: Outcome, payload: bytes) -> None:
    """A whole answer under 400 that is no chat completion (an HTML page, an empty body, an error object) is
    a failure: `bad answer`, or `answer error <code>` for an OpenAI-shaped error."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = _NOT_JSON
    if isinstance(data, dict) and data.get("error"):
        outcome.error, outcome.detail = f"answer error {_error_code(payload)}".rstrip(), _error_message(payload)
    elif not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        start = " ".join(payload[:DETAIL_CHARS].decode("utf-8", "replace").split())
        outcome.error = "bad answer"
        outcome.detail = f"no chat completion (a JSON object with `choices`): {start or 'an empty body'}"[:DETAIL_CHARS]


def _read_headers(outcome: Outcome, headers: Mapping[str, str]) -> None:
    get = headers.get
    outcome.model = get("x-laneway-model") or "-"
    outcome.lane = get("x-laneway-lane") or "-"
    outcome.route = get("x-laneway-route") or "-"
    cost = get("x-laneway-cost-usd")
    if cost:
        outcome.cost_usd = _number(cost.encode())


async def _read_stream(outcome: Outcome, response: aiohttp.ClientResponse, due: float) -> None:
    done = False
    pending = b""
    try:
        async for piece in response.content.iter_any():
            now = time.perf_counter() - due
            # CRLF line ends are as valid as LF; a CR left at the end of `pending` meets its LF in the next piece
            pending = (pending + piece).replace(b"\r\n", b"\n")
            *events, pending = pending.split(b"\n\n")
            for event in events:
                done = _read_event(outcome, event, now) or done
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:  # the body broken off
        if not done and not outcome.error:
            outcome.error, outcome.detail = "stream cut", _words(exc)
    if not done and not outcome.error:
        outcome.error = "stream cut"


def _read_event(outcome: Outcome, event: bytes, now: float) -> bool:
    """True for the `[DONE]` event; notes output, a cost comment or an error event."""
    data: list[bytes] = []
    name = b""
    for line in event.split(b"\n"):
        if line.startswith(_COST_MARK):
            outcome.cost_usd = _number(line[len(_COST_MARK):])
        elif line.startswith(b"data:"):
            data.append(line[5:].strip())
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    if not data:
        return False  # a comment or a keep-alive
    payload = b"\n".join(data)
    if payload == b"[DONE]":
        return True
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        chunk = _NOT_JSON
    if name == b"error" or (isinstance(chunk, dict) and chunk.get("error")):  # an error event's data may be words
        _failed(outcome, f"stream error {_error_code(payload)}".rstrip(), _error_message(payload))
    elif chunk is _NOT_JSON:
        _failed(outcome, "stream bad event", f"not JSON: {payload.decode('utf-8', 'replace')}")
    elif _carries_output(chunk):
        if outcome.ttft is None:
            outcome.ttft = now
        outcome.chunk_times.append(now)
    return False


def _failed(outcome: Outcome, kind: str, detail: str) -> None:
    """The first failure of a stream is the one it is counted under."""
    if not outcome.error:
        outcome.error, outcome.detail = kind, " ".join(detail.split())[:DETAIL_CHARS]


_NOT_JSON = object()
_OUTPUT_FIELDS = ("content", "tool_calls", "refusal", "reasoning_content", "reasoning")


def _carries_output(chunk: object) -> bool:
    try:
        delta = chunk["choices"][0]["delta"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return False
    return isinstance(delta, dict) and any(delta.get(name) for name in _OUTPUT_FIELDS)


def _error_code(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") or error.get("type") if isinstance(error, dict) else None
    return str(code) if code else ""


def _error_message(payload: bytes) -> str:
    """The `error.message` of an OpenAI-shaped error body, else the body's start as text."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    text = message if isinstance(message, str) else payload.decode("utf-8", "replace")
    return " ".join(text.split())[:DETAIL_CHARS]


def _words(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:DETAIL_CHARS]


def _number(text: bytes) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return 0.0
