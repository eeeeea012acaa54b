"""Laneway's one error hierarchy, and the single mapping from errors to HTTP answers.

    LanewayError
    ├── ConfigError                 a routing file that cannot be used (carries every issue found)
    ├── ShuttingDown                503 shutting_down: the server stopped before the answer
    ├── RequestError                the client's request is wrong or cannot be served as asked
    │   ├── InvalidRequest          400 invalid_request
    │   ├── Unauthorized            401 invalid_api_key
    │   ├── Forbidden               403 forbidden
    │   ├── NotFound                404 not_found (no such endpoint)
    │   ├── MethodNotAllowed        405 method_not_allowed
    │   ├── ModelNotFound           404 model_not_found
    │   ├── NoRoute                 404 no_route
    │   ├── PayloadTooLarge         413 payload_too_large
    │   ├── ContextWindowExceeded   400 context_length_exceeded
    │   └── RateLimited             429 rate_limited
    └── UpstreamError               one attempt at one model failed (translated at the provider boundary)
        ├── UpstreamUnavailable     refused/reset connection, 5xx         -> 502 upstream_unavailable
        ├── UpstreamRateLimited     the upstream answered 429             -> 429 rate_limited
        ├── UpstreamTimeout         the request's deadline ran out        -> 504 model_inference_deadline_exceeded
        ├── UpstreamBadResponse     malformed, wrong type, oversized      -> 502 upstream_bad_response
        ├── UpstreamContextOverflow the upstream refused the prompt length -> 400 context_length_exceeded
        ├── UpstreamRejected        any other 4xx from the upstream       -> 400 upstream_rejected (the
        │                           request's fault: 400, 413, 415, 422), else 502 (the gateway's key or model)
        └── AllAttemptsFailed       every model of the plan failed; lists each attempt's error

Foreign exceptions (aiohttp, asyncio timeouts, JSON decoders) never leave a provider module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson


class LanewayError(Exception):
    """Base of every error Laneway raises on purpose."""

    status = 500
    code = "internal_error"
    type = "server_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ShuttingDown(LanewayError):
    """The server stopped, past `server.shutdown_grace_ms`, before the request's answer: a client told so
    can send it again, to another replica."""

    status = 503
    code = "shutting_down"


class FleetUnavailable(LanewayError):
    """A valid routing file's simulated fleet could not be started on reload (its port taken): not the file's
    mistake, and the running config goes on."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a routing file, located by YAML path (and line/column when known)."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = self.path or "<file>"
        if self.line is not None:
            where += f" (line {self.line}" + (f", column {self.column})" if self.column else ")")
        return f"{where}: {self.message}"


class ConfigError(LanewayError):
    """Input Laneway cannot use: a routing file, or another file or argument (`subject` names which)."""

    code = "invalid_config"

    def __init__(self, issues: Sequence[ConfigIssue], source: str = "", subject: str = "routing config") -> None:
        self.issues = tuple(issues)
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{head}{len(self.issues)} error(s) in {subject}:\n{lines}")


def not_utf8(error: UnicodeDecodeError) -> str:
    """What to tell of a file that is not UTF-8: where, and the fix."""
    return f"not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); save it as UTF-8"


def shown(value: Any, limit: int = 80) -> str:
    """A value of a client's request as the client wrote it, in JSON (`true`, `null`, `{"x":1}`), cut to
    `limit` characters."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RequestError(LanewayError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class InvalidRequest(RequestError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Unauthorized(RequestError):
    status = 401
    code = "invalid_api_key"
    type = "authentication_error"


class Forbidden(RequestError):
    status = 403
    code = "forbidden"
    type = "permission_error"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"


class NoRoute(RequestError):
    status = 404
    code = "no_route"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class ContextWindowExceeded(RequestError):
    code = "context_length_exceeded"

    def __init__(self, message: str, param: str = "messages") -> None:  # as OpenAI names it for a prompt too long
        super().__init__(message)
        self.param = param  # `max_tokens` when the prompt fits but the output asked for does not


class RateLimited(RequestError):
    status = 429
    code = "rate_limited"
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamError(LanewayError):
    """One attempt failed. `retryable` says whether trying again (same or next model) may help."""

    status = 502
    code = "upstream_unavailable"
    type = "upstream_error"
    retryable = True

    def __init__(self, message: str, *, model: str = "", upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.upstream_status = upstream_status
        self.billed: Any = None  # the `Usage` the upstream reported for an answer it then gave up on: billed


class UpstreamUnavailable(UpstreamError):
    pass


class ModelsCoolingDown(UpstreamError):
    """Nothing was sent: every model the request could go to has its breaker open after repeated
    failures. `retry_after_s` is when the first of them takes a probe again."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamRateLimited(UpstreamError):
    status = 429
    code = "rate_limited"
    type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        model: str = "",
        upstream_status: int | None = 429,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, model=model, upstream_status=upstream_status)
        self.retry_after_s = retry_after_s


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "model_inference_deadline_exceeded"
    type = "timeout_error"


class UpstreamBadResponse(UpstreamError):
    code = "upstream_bad_response"


class UpstreamContextOverflow(UpstreamError):
    status = 400
    code = "context_length_exceeded"
    type = "invalid_request_error"
    retryable = False
    param = "messages"


# Upstream answers that say the request itself is wrong (a schema the model refuses, a field out of
# range): the client's to fix, a 400 as OpenAI would answer, and no sign of the model's health.
CLIENT_FAULTS = (400, 413, 415, 422)


class UpstreamRejected(UpstreamError):
    """The upstream refused the request (4xx). One the client must fix (`CLIENT_FAULTS`) is a 400 with the
    upstream's `param`; any other (401, 403, 404: the gateway's key or model id) stays a 502."""

    code = "upstream_rejected"
    retryable = False

    def __init__(self, message: str, *, model: str = "", upstream_status: int | None = None,
                 param: str | None = None, gateway_fault: bool = False) -> None:
        super().__init__(message, model=model, upstream_status=upstream_status)
        self.param = param
        # `gateway_fault`: a 400 that is about the gateway's account (Gemini's invalid key), not the request.
        if upstream_status in CLIENT_FAULTS and not gateway_fault:
            self.status, self.type = 400, "invalid_request_error"

    @property
    def client_fault(self) -> bool:
        return self.status == 400


class AllAttemptsFailed(UpstreamError):
    """Every model in the plan failed; the status is that of the most telling attempt, and so are its
    `param` and, when rate limits ended it, the longest `retry_after_s` the upstreams asked for. `ran_out`:
    the request's deadline ended it (else its last attempt did, with time left)."""

    def __init__(self, errors: Sequence[UpstreamError], *, ran_out: bool = True) -> None:
        self.errors = tuple(errors)
        detail = "; ".join((f"`{e.model}`: " if e.model else "") + f"{e.code}: {e.message}" for e in self.errors)
        super().__init__(f"all {len(self.errors)} attempt(s) failed: {detail}")
        last = _most_telling(self.errors) if ran_out else self.errors[-1]
        self.status = last.status
        self.code = last.code
        self.type = last.type
        self.param = getattr(last, "param", None)
        waits = [e.retry_after_s for e in self.errors if isinstance(e, UpstreamRateLimited) and e.retry_after_s]
        self.retry_after_s = max(waits) if waits and self.status == 429 else None


def _most_telling(errors: Sequence[UpstreamError]) -> UpstreamError:
    # A deadline that ran out explains the outcome better than the earlier failures it cut short. Not a
    # model's own `deadline_ms` with time left after it: the models tried then are what ended it.
    for error in reversed(errors):
        if isinstance(error, UpstreamTimeout):
            return error
    return errors[-1]


def error_body(error: LanewayError, request_id: str) -> dict[str, object]:
    """The OpenAI-shaped error body for any Laneway error."""
    body: dict[str, object] = {
        "message": error.message,
        "type": error.type,
        "code": error.code,
        "param": getattr(error, "param", None),
        "request_id": request_id,
    }
    if isinstance(error, AllAttemptsFailed):
        body["attempts"] = [
            {"model": e.model, "code": e.code, "message": e.message, "upstream_status": e.upstream_status}
            for e in error.errors
        ]
    return {"error": body}


def without_password(url: str) -> str:
    """`url` as a message may show it: its password, if any, hidden."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def port_problem(url: str) -> str | None:
    """What is wrong with `url`'s port, for a message, or None (`urlsplit` reads the port only when asked)."""
    try:
        urlsplit(url).port  # noqa: B018 (it raises for a port that is not a number from 0 to 65535)
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    return None
