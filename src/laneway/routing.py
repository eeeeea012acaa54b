"""Route table → decision. Pure: the same config, model field, path and signals give the same plan."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .config import TABLE_ALIASES, Config, Route
from .errors import ModelNotFound, NoRoute
from .signals import Signals


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route | None  # None when the client addressed a model directly
    lanes: tuple[tuple[str, str], ...]  # (lane, model) in the order they are tried


def decide(config: Config, model_field: str, path: str, signals: Signals, request_id: str = "") -> Decision:
    if model_field == config.server.table or model_field in TABLE_ALIASES:
        return _by_table(config, path, signals, signals.conversation_id or signals.user or request_id)
    spec = config.models.get(model_field)
    if spec is None or not spec.direct:
        known = [config.server.table, *TABLE_ALIASES, *(n for n, m in config.models.items() if m.direct)]
        raise ModelNotFound(f"unknown model `{model_field}`; use one of: {', '.join(known)}")
    return Decision(None, (("direct", model_field),))


def _by_table(config: Config, path: str, signals: Signals, sticky_key: str) -> Decision:
    for route in config.routes:
        if route.matches_path(path) and route.matcher(signals):
            lanes = [("primary", route.target)]
            canary = canary_target(route, sticky_key) if route.canaries else None
            if canary is not None:
                lanes.insert(0, ("canary", canary))  # a failing canary falls back to the primary
            lanes += [("fallback", name) for name in route.fallbacks]
            return Decision(route, tuple(lanes))
    if not any(route.matches_path(path) for route in config.routes):
        served = ", ".join(sorted({f"`{route.path}`" for route in config.routes}))
        raise NoRoute(f"no route serves the path `{path}` (the routes serve {served}); send chat requests to "
                      "`/v1/chat/completions`, or give a route that `path:`")
    raise NoRoute(
        f"no route matches this request (path `{path}`, {_summary(signals)}); "
        "add a default route (one without `matcher`) to the routing file"
    )


def canary_target(route: Route, sticky_key: str) -> str | None:
    """The canary model for this key, or None for the primary. Pure: a key never changes lanes."""
    point = unit_hash(f"{route.name}|{sticky_key}")
    edge = 0.0
    for canary in route.canaries:
        edge += canary.weight
        if point < edge:
            return canary.target
    return None


def unit_hash(key: str) -> float:
    """A stable hash of `key` in [0, 1)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _summary(signals: Signals) -> str:
    return (f"convo_length={signals.convo_length}, priority={signals.priority}, "
            f"escalation={'true' if signals.escalation else 'false'}, channel={signals.channel}")
