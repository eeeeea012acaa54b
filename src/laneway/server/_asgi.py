"""Minimal ASGI plumbing: read a bounded body, send a response. No framework on the hot path."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from ..errors import AllAttemptsFailed, LanewayError, ModelsCoolingDown, PayloadTooLarge, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = (b"content-type", b"application/json")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


# A body over the limit but under this is read and discarded, so the client can read the 413
# instead of failing on a reset connection; anything larger is refused at once.
_DRAIN_LIMIT = 64 * 1024 * 1024


async def read_body(receive: Receive, limit: int, declared: int | None, continue_expected: bool = False) -> bytes:
    """The request's body, up to `limit` bytes. A client that sent `Expect: 100-continue` waits for a word
    before sending the body: one declared over the limit is refused before it is asked for."""
    too_large = PayloadTooLarge(f"request body exceeds the limit of {limit} bytes (`server.max_body_bytes`)")
    if declared is not None and (declared > _DRAIN_LIMIT or (continue_expected and declared > limit)):
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > _DRAIN_LIMIT:
            raise too_large
        if not message.get("more_body", False):
            if size > limit:
                raise too_large
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    """A whole response: with its length, so that it leaves in one piece and the connection stays open."""
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, payload: Any, headers: Headers) -> None:
    await respond(send, status, orjson.dumps(payload), [JSON, *headers])


async def respond_error(send: Send, error: LanewayError, request_id: str, headers: Headers) -> None:
    extra = list(headers)
    retry = getattr(error, "retry_after_s", None)
    if retry is not None and error.status in (429, 503):  # a wait someone asked for; none is made up
        # Whole seconds, rounded up: told 2 for an upstream's 2.45, a client came back before its window.
        extra.append((b"retry-after", str(max(1, math.ceil(retry if math.isfinite(retry) else 1))).encode()))
    if isinstance(error, AllAttemptsFailed | ModelsCoolingDown) and error.status >= 500:
        # The route's retries and fallbacks have run, or every model is cooling down: an SDK's own retries
        # (OpenAI's read this header, and would sleep out a `Retry-After` first) would multiply them against
        # upstreams that are failing, and hold the client for seconds before the same error.
        extra.append((b"x-should-retry", b"false"))
    await respond_json(send, error.status, error_body(error, request_id), extra)


def header_map(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
