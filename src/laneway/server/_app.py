"""The ASGI application: a thin shell that maps paths to the gateway core."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from ..config import TABLE_ALIASES
from ..errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    LanewayError,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    Unauthorized,
)
from ..exchange import Exchange
from ..gateway import Gateway
from ..telemetry import Telemetry
from ._asgi import (
    ClientGone,
    Headers,
    Receive,
    Scope,
    Send,
    header_map,
    read_body,
    respond,
    respond_error,
    respond_json,
)
from ._chat import chat_completions, laneway_headers, refused, stopped_while_read
from ._openapi import openapi_document
from ._peers import Peers

log = logging.getLogger("laneway")
LEGACY_COMPLETIONS = "/v1/completions"  # every other `/v1/.../completions` path is a chat route's
_PROMETHEUS = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
_HTML = (b"content-type", b"text/html; charset=utf-8")
LOOPBACK = ("127.0.0.1", "localhost", "::1")  # the names a gateway without client keys listens and answers under
_READS = frozenset({"GET", "HEAD"})  # the server sends a HEAD's answer without its body
_MODEL_PATH = "/v1/models/"
# A client's `x-request-id` is kept when it is this short and of printable ASCII; else one is made.
MAX_REQUEST_ID = 128


class App:
    """`App(gateway)` is an ASGI 3 application; `lifespan` closes the gateway at shutdown. A worker of
    `laneway serve --workers N` passes its `peers`, so that `/metrics`, `/admin/stats`, `/admin/shadow`
    and the dashboard describe every worker."""

    def __init__(self, gateway: Gateway, reloaded: Callable[[], None] | None = None,
                 peers: Peers | None = None) -> None:
        self.gateway = gateway
        if isinstance(gateway.telemetry, Telemetry):
            gateway.telemetry.watch_state(gateway.state_samples)  # breakers and gates, read at each scrape
        self._reloaded = reloaded  # after a reload through `POST /admin/reload`: tell the other workers
        self._peers = peers
        self._get = {
            "/healthz": self._healthz, "/readyz": self._readyz, "/v1/models": self._models,
            "/admin/config": self._admin_config, "/metrics": self._metrics, "/admin/stats": self._stats,
            "/dashboard": self._dashboard, "/openapi.json": self._openapi, "/admin/shadow": self._shadow,
        }
        self._post = {"/admin/reload": self._reload}
        # Not the dashboard: a page without figures, which reads them from `/admin/stats` with the admin key.
        self._protected = frozenset({"/admin/config", "/admin/stats", "/admin/reload", "/admin/shadow", "/metrics"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_map(scope)
        request_id = headers.get("x-request-id", "")
        if not (0 < len(request_id) <= MAX_REQUEST_ID and request_id.isascii() and request_id.isprintable()):
            request_id = os.urandom(12).hex()
        base: Headers = [(b"x-request-id", request_id.encode("latin-1"))]
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            # Without keys: loopback only, open to whoever reaches it, but not to web pages.
            if ("origin" in headers or path in self._protected or path == "/dashboard") and \
                    not self.gateway.keys.enabled:
                _refuse_browsers(method, path, headers, scope, self._protected, self.gateway.config.admin.key_env)
            if path == LEGACY_COMPLETIONS:
                raise NotFound(f"`{LEGACY_COMPLETIONS}` (OpenAI's legacy text completions, with `prompt`) is not "
                               "served; send `messages` to `/v1/chat/completions`")
            if _is_chat_request(method, path):
                if method != "POST":
                    self._not_allowed(method, path, base)
                await self._chat(scope, receive, send, headers, request_id, base)
            elif path in self._protected:
                self._authorize_admin(headers, path)
                await self._admin(method, path, send, base, scope)
            elif method in _READS and path in self._get:
                await self._get[path](send, base, scope)
            elif method in _READS and path.startswith(_MODEL_PATH):
                await self._model(path[len(_MODEL_PATH):], send, base, scope)
            elif method == "POST" and path in self._post:
                await self._post[path](send, base, scope)
            elif path in self._get or path in self._post or path.startswith(_MODEL_PATH):
                self._not_allowed(method, path, base)
            else:
                raise NotFound(f"no endpoint `{method} {path}`; see /openapi.json")
        except ClientGone:
            return
        except LanewayError as error:
            if _is_chat_request(method, path):  # refused before it was read (key, size, a web page, a method)
                exchange = Exchange(request_id, time.time(), path=path, lane="")
                if method == "POST":
                    refused(self.gateway, exchange, error, headers, time.perf_counter())
                base = [*base, *laneway_headers(exchange)]  # as every chat answer: routed nowhere, cost 0
            await respond_error(send, error, request_id, base)
        except Exception:
            log.exception("laneway: unexpected error serving %s %r (request %s)", method, path, request_id)
            with contextlib.suppress(RuntimeError):  # the response may have started already
                await respond_error(send, LanewayError("internal error; see the gateway log"), request_id, base)

    async def _admin(self, method: str, path: str, send: Send, base: Headers, scope: Scope) -> None:
        if method in _READS and path in self._get:
            await self._get[path](send, base, scope)
        elif method == "POST" and path in self._post:
            await self._post[path](send, base, scope)
        else:
            self._not_allowed(method, path, base)

    def _not_allowed(self, method: str, path: str, base: Headers) -> None:
        """A 405 that says, in `Allow`, which methods the path takes."""
        models = path.startswith(_MODEL_PATH)
        allowed = "GET, HEAD, POST" if models and _is_chat(path) else "GET, HEAD" if models or path in self._get \
            else "POST"
        base.append((b"allow", allowed.encode()))
        raise MethodNotAllowed(f"`{method} {path}` is not supported; use {allowed}")

    def _authorize_admin(self, headers: dict[str, str], path: str) -> None:
        """Admin endpoints need the admin key once clients need keys or `admin.key_env` is set; a
        `key_env` naming an unset variable keeps them closed rather than open."""
        config = self.gateway.config
        if path == "/metrics" and not config.admin.protect_metrics:
            return
        variable = config.admin.key_env
        expected = os.environ.get(variable, "") if variable else ""
        if not expected:
            if variable:
                raise Forbidden(f"admin endpoints are closed: `admin.key_env` names `{variable}`, which is not "
                                "set in the gateway's environment")
            if self.gateway.keys.enabled:
                raise Forbidden("admin endpoints are closed: set `admin.key_env` to the variable holding the "
                                "admin key")
            return  # no keys at all: the gateway listens on loopback only
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise Unauthorized("admin endpoints need `Authorization: Bearer <admin key>`")

    async def _chat(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], request_id: str,
                    base: Headers) -> None:
        key = self.gateway.keys.authenticate(headers.get("authorization")) if self.gateway.keys.enabled else None
        exchange = Exchange(request_id, time.time(), path=scope["path"], lane="")  # a lane once routed
        declared = headers.get("content-length")
        try:
            size = int(declared) if declared is not None else None
        except ValueError:
            raise InvalidRequest("`content-length` is not a number") from None
        started = time.perf_counter()
        try:
            body = await read_body(receive, self.gateway.config.server.max_body_bytes, size,
                                   headers.get("expect", "").lower() == "100-continue")
        except asyncio.CancelledError:  # the server stopped past its grace (a client that left is `ClientGone`)
            await stopped_while_read(self.gateway, exchange, send, base, started, headers, key)
            raise
        await chat_completions(self.gateway, body, headers, scope["path"], send, exchange, base, key, receive)

    async def _openapi(self, send: Send, base: Headers, scope: Scope) -> None:
        await respond_json(send, 200, openapi_document(), base)

    async def _healthz(self, send: Send, base: Headers, scope: Scope) -> None:
        await respond_json(send, 200, {"status": "ok"}, base)

    async def _readyz(self, send: Send, base: Headers, scope: Scope) -> None:
        ready = self.gateway.ready
        await respond_json(send, 200 if ready else 503, {"ready": ready}, base)

    async def _models(self, send: Send, base: Headers, scope: Scope) -> None:
        models = self._model_list(scope)
        await respond_json(send, 200, {"object": "list", "data": list(models.values())}, base)

    async def _model(self, name: str, send: Send, base: Headers, scope: Scope) -> None:
        """`GET /v1/models/{id}`, as the `openai` client's `models.retrieve` asks."""
        models = self._model_list(scope)
        if name not in models:
            raise ModelNotFound(f"unknown model `{name}`; the models are: {', '.join(models)}")
        await respond_json(send, 200, models[name], base)

    def _model_list(self, scope: Scope) -> dict[str, dict[str, Any]]:
        """The `model` values the caller may send: the table's name (and its alias `auto`), and the models
        a client may address directly. With client keys, as for chat, only a caller with a key is told, and
        a key held to some routes is told of the table alone."""
        keys = self.gateway.keys
        key = keys.authenticate(header_map(scope).get("authorization")) if keys.enabled else None
        config = self.gateway.config
        now = int(time.time())
        names = [(config.server.table, "laneway"), *((alias, "laneway") for alias in TABLE_ALIASES)]
        if key is None or key.routes is None:
            names += [(name, spec.provider) for name, spec in config.models.items() if spec.direct]
        return {name: {"id": name, "object": "model", "created": now, "owned_by": owner} for name, owner in names}

    async def _admin_config(self, send: Send, base: Headers, scope: Scope) -> None:
        await respond_json(send, 200, describe(self.gateway), base)

    async def _reload(self, send: Send, base: Headers, scope: Scope) -> None:
        try:
            config = await self.gateway.reload()
        except ConfigError as error:
            body = {"reloaded": False, "errors": [str(i) for i in error.issues],
                    "running": self.gateway.config.source}
            await respond_json(send, 400, body, base)
            return
        except Exception as error:  # the file is valid, and could not be put to work: the running config goes on
            log.exception("laneway: reload failed, keeping the running config")
            body = {"reloaded": False, "errors": [Gateway.unapplied(error)], "running": self.gateway.config.source}
            await respond_json(send, 500, body, base)
            return
        if self._reloaded is not None:
            self._reloaded()
        await respond_json(send, 200, {"reloaded": True, "routes": len(config.routes),
                                       "warnings": [str(w) for w in config.warnings]}, base)

    async def _metrics(self, send: Send, base: Headers, scope: Scope) -> None:
        telemetry = self._telemetry()
        body = telemetry.render_metrics() if self._peers is None else await self._peers.metrics()
        await respond(send, 200, body, [_PROMETHEUS, *base])

    async def _stats(self, send: Send, base: Headers, scope: Scope) -> None:
        since, until = _stats_window(parse_qs(scope.get("query_string", b"").decode("latin-1")))
        telemetry = self._live_figures()
        figures = await (telemetry.stats_off_loop(since, until) if self._peers is None
                         else self._peers.stats(since, until))
        await respond_json(send, 200, figures, base)

    async def _shadow(self, send: Send, base: Headers, scope: Scope) -> None:
        telemetry, dropped = self._live_figures(), self.gateway.shadows.dropped
        figures = await (telemetry.shadow_stats(dropped) if self._peers is None else self._peers.shadow_stats(dropped))
        await respond_json(send, 200, figures, base)

    async def _dashboard(self, send: Send, base: Headers, scope: Scope) -> None:
        await respond(send, 200, self._live_figures().dashboard_html(), [_HTML, *base])

    def _telemetry(self) -> Telemetry:
        telemetry = self.gateway.telemetry
        if not isinstance(telemetry, Telemetry):
            raise NotFound("telemetry is not running in this gateway")
        return telemetry

    def _live_figures(self) -> Telemetry:
        telemetry = self._telemetry()
        if not telemetry.settings.metrics:
            raise NotFound("live figures are turned off (`telemetry.metrics: false`); turn metrics on, "
                           "or read the exchange log with `laneway report`")
        return telemetry

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def describe(gateway: Gateway) -> dict[str, Any]:
    """The running config without secrets: key variable names are shown, never their values."""
    config = gateway.config
    return {
        "source": config.source,
        "simulated": config.simulated,
        "models": {name: {"provider": m.provider, "base_url": m.base_url, "model": m.model,
                          "api_key_env": m.api_key_env, "context_window": m.context_window,
                          "price": {"input_per_mtok": m.price.input_per_mtok,
                                    "output_per_mtok": m.price.output_per_mtok},
                          "profile": asdict(m.profile), "reasoning": dict(m.reasoning)}
                   for name, m in config.models.items()},
        "routes": [{"name": r.name, "path": r.path, "matcher": r.matcher.source, "target": r.target,
                    "fallbacks": list(r.fallbacks), "long_context": r.long_context, "trim": r.trim,
                    "deadline_ms": r.deadline_ms, "canaries": [asdict(c) for c in r.canaries],
                    "shadows": [asdict(s) for s in r.shadows], "cascade": asdict(r.cascade) if r.cascade else None,
                    "retrieval": asdict(r.retrieval) if r.retrieval else None, "cache": r.cache.mode}
                   for r in config.routes],
        "warnings": [str(w) for w in config.warnings],
    }


def _stats_window(query: dict[str, list[str]]) -> tuple[float | None, float | None]:
    """`since` and `until` of `GET /admin/stats`, unix seconds or ISO 8601 times (UTC unless they carry an
    offset, as `laneway report` reads them); the window must start before it ends. `since` alone (a time
    past) is up to now, as `laneway report --since` reads it: its rates count the idle time since too."""
    since = _moment("since", query["since"][0]) if "since" in query else None
    until = _moment("until", query["until"][0]) if "until" in query else None
    if not all(math.isfinite(moment) for moment in (since, until) if moment is not None):
        raise InvalidRequest("`since` and `until` are unix times in seconds, not `nan` or `inf`", param="since")
    if since is not None and until is None and since < (now := time.time()):
        until = now
    if since is not None and until is not None and since >= until:
        raise InvalidRequest(f"`since` ({query['since'][0]}) is not before `until` ({query['until'][0]}): "
                             "a window must start before it ends; pass an earlier `since` or a later `until`",
                             param="since")
    return since, until


def _moment(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"`{name}` ({text!r}) is neither unix seconds nor an ISO 8601 time such as "
                             "2026-06-01T12:00:00Z", param=name) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _refuse_browsers(method: str, path: str, headers: dict[str, str], scope: Scope, protected: frozenset[str],
                     admin_key_env: str | None) -> None:
    """Without client keys the gateway listens on loopback and trusts whoever reaches it, but a web page in a
    browser on the same machine reaches it too: a request a page sends (a browser says so in `Origin`) may not
    spend the provider keys or reload the config, and the admin figures are read only under a loopback name
    (a page whose name was re-pointed at 127.0.0.1 sends its own: DNS rebinding)."""
    origin = headers.get("origin")
    if origin is not None and method not in _READS:
        raise Forbidden(f"a request from a web page (`Origin: {origin[:100]}`) is refused: without client keys "
                        "the gateway trusts whoever reaches it; call it from a server (it answers no CORS preflight), "
                        "with client keys (`keys:`) when it is reachable from other machines")
    server = scope.get("server")
    on_loopback = server is not None and (str(server[0]).startswith("127.") or server[0] == "::1")
    if on_loopback and (path in protected or path == "/dashboard") and not admin_key_env:
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
        if host and name.lower() not in LOOPBACK:
            raise Forbidden(f"`{path}` is served under a loopback name only (`Host: {host[:100]}`): without client "
                            "keys, use http://127.0.0.1:PORT, or set `admin.key_env`")


def _is_chat_request(method: str, path: str) -> bool:
    """A request to a chat path; a read of one under `/v1/models/` is a model's lookup (a route's own path may
    lie there too)."""
    return _is_chat(path) and not (method in _READS and path.startswith(_MODEL_PATH))


def _is_chat(path: str) -> bool:
    """A chat completions path (`/v1/chat/completions`, or a route's own under `/v1/`)."""
    return path.startswith("/v1/") and path.endswith("/completions") and path != LEGACY_COMPLETIONS
