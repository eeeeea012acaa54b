"""Route-table analysis for `laneway check`: overlaps (first match wins) and gaps (`no_route`).

Matchers only compare signals with literals, so the values that can change an outcome are the
literals themselves and their neighbours. The analysis evaluates every route over that grid of
example requests (sampled deterministically when the grid is large).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

from ..signals import SIGNALS, Signals
from ._model import Route

_MAX_EXAMPLES = 20_000


@dataclass(frozen=True, slots=True)
class TableWarning:
    path: str
    message: str


def analyse_table(routes: Sequence[Route]) -> list[TableWarning]:
    """A route's `path` is a prefix of the request paths it serves, so a request to `/v1/chat/completions` is
    served by the routes of `/v1/chat` and of `/v1/chat/completions`, in table order. Each route path stands
    for the requests under it, and is analysed with every route that serves it; a route is never reached
    when it is reached under none of them."""
    overlaps: dict[tuple[int, int], dict[str, Any]] = {}
    reached: set[int] = set()
    matched: set[int] = set()  # by some example, first or not
    gaps: list[TableWarning] = []
    paths = list(dict.fromkeys(r.path for r in routes))
    for path in paths:
        group = [r for r in routes if r.matches_path(path)]
        gap = _analyse_group(group, overlaps, reached, matched)
        if gap is not None:
            own = next(r for r in routes if r.path == path)  # a route of `path`: what it serves is under it
            gaps.append(_gap_warning(path, [p for p in paths if p != path and own.matches_path(p)], gap))
    if routes and not any(r.matches_path(CHAT_PATH) for r in routes):
        served = ", ".join(f"`{p}`" for p in paths)
        gaps.append(TableWarning("routes", f"no route serves `{CHAT_PATH}`, the path OpenAI clients call (the routes "
                                           f"serve {served}): every such request gets `404 no_route`. Give a route "
                                           f"`path: {CHAT_PATH}`, or leave `path` out"))
    return [*_findings(routes, overlaps, reached, matched), *gaps]


def _analyse_group(routes: list[Route], overlaps: dict[tuple[int, int], dict[str, Any]], reached: set[int],
                   matched: set[int]) -> dict[str, Any] | None:
    """Runs the examples through `routes`, adding to what is found; an example no route matches, if any."""
    gap: dict[str, Any] | None = None
    for example in _examples(_grid(routes)):
        if example.get("turns", 0) > example.get("convo_length", float("inf")):
            continue  # no request has more user messages than messages
        signals = cast(Signals, _as_signals(example))  # duck-typed: matchers read attributes only
        hits = [r for r in routes if r.matcher(signals)]
        if not hits:
            gap = gap or example
            continue
        reached.add(hits[0].index)
        matched.update(r.index for r in hits)
        for later in hits[1:]:
            if not later.has_matcher:  # a default route catching the rest is the intended overlap
                continue
            overlaps.setdefault((hits[0].index, later.index), example)
    return gap


OVERLAPS = "overlaps "  # how a warning of two routes that match the same request begins
CHAT_PATH = "/v1/chat/completions"  # where OpenAI's clients send chat requests


def _gap_warning(path: str, deeper: list[str], example: dict[str, Any]) -> TableWarning:
    where = f"a request to `{path}` or a path under it" if not deeper else (
        f"a request to `{path}`, or to a path under it other than {', '.join(f'`{p}`' for p in deeper)} and the "
        "paths under those")
    return TableWarning(
        f"routes (path {path})",
        f"gap: {where}, such as {_describe(example)}, matches no route; it gets `404 no_route`. "
        f"Add a default route (one without `matcher`, with `path: {path}`) at the end if that is not intended",
    )


def _findings(routes: Sequence[Route], overlaps: dict[tuple[int, int], dict[str, Any]], reached: set[int],
              matched: set[int]) -> list[TableWarning]:
    warnings = []
    by_index = {r.index: r for r in routes}
    for (first_index, later_index), example in overlaps.items():
        a, b = by_index[first_index], by_index[later_index]
        outcome = (f"it goes to `{a.target}`, not `{b.target}`" if a.target != b.target
                   else f"it follows `{a.name}`'s settings (fallbacks, deadline, lanes), not `{b.name}`'s")
        warnings.append(TableWarning(
            f"routes[{later_index}]",
            f"{OVERLAPS}`{a.name}` (routes[{first_index}]): a request such as {_describe(example)} matches both; "
            f"the first match wins, so {outcome}",
        ))
    for route in routes:
        if route.index in reached:
            continue
        if route.index in matched:
            path, why = f"routes[{route.index}]", "every request it matches is taken by an earlier route"
        else:
            path = f"routes[{route.index}].matcher"
            why = (f"its matcher `{route.matcher.source}` matched none of the example requests tried "
                   "(conditions that contradict each other, such as `x > 10 && x < 5`, never hold)")
        warnings.append(TableWarning(path, f"`{route.name}` is never reached: {why}"))
    return warnings


def _grid(routes: list[Route]) -> dict[str, list[Any]]:
    literals: dict[str, list[Any]] = {}
    for route in routes:
        for name in sorted(route.matcher.signals):
            literals.setdefault(name, [])
        for name, value in route.matcher.literals:
            literals[name].append(value)
    return {name: _candidates(name, values) for name, values in literals.items()}


def _candidates(name: str, literals: list[Any]) -> list[Any]:
    kind = SIGNALS[name].kind if name in SIGNALS else "any"
    if kind == "enum":
        values = SIGNALS[name].values
        default = SIGNALS[name].default
        return [default, *(v for v in values if v != default)]
    if kind == "bool":
        return [False, True]
    if kind in ("int", "float"):
        step = 1 if kind == "int" else 0.01
        out: list[Any] = []
        for n in literals:
            mid = n // 2 if kind == "int" else n / 2
            out += [mid or step, n, n + step, n - step]
        out += [0]
        top = SIGNALS[name].maximum if name in SIGNALS else None
        if top is not None:
            out.append(top)
        return [v for v in dict.fromkeys(out) if v >= 0 and (top is None or v <= top)] or [0]
    if kind != "any":
        return [*dict.fromkeys(literals), "other"]
    # `metadata.<key>`: any JSON value. A number compared with `<` or `>` needs the values either side of it.
    out = [*literals, None]
    for n in literals:
        if isinstance(n, int | float) and not isinstance(n, bool):
            out += [n - 1, n + 1] if isinstance(n, int) else [n - 0.01, n + 0.01]
    return list(dict.fromkeys(out))


def _examples(grid: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    names = list(grid)
    size = 1
    for values in grid.values():
        size *= len(values)
    if size <= _MAX_EXAMPLES:
        for combo in itertools.product(*(grid[n] for n in names)):
            yield dict(zip(names, combo, strict=True))
        return
    rng = random.Random(0)
    for _ in range(_MAX_EXAMPLES):
        yield {n: rng.choice(grid[n]) for n in names}


def _as_signals(example: dict[str, Any]) -> SimpleNamespace:
    values = {name: spec.default for name, spec in SIGNALS.items()}
    metadata = {}
    if "convo_length" not in example:  # as few messages as its user messages
        values["convo_length"] = example.get("turns", values["convo_length"])
    for name, value in example.items():
        if name.startswith("metadata."):
            if value is not None:
                metadata[name[len("metadata."):]] = value
        else:
            values[name] = value
    return SimpleNamespace(**values, metadata=metadata)


def _describe(example: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return "(absent)" if value is None else str(value)

    return ", ".join(f"{name}={show(value)}" for name, value in example.items()) or "any request"
