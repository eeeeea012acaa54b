"""Routing file → validated, frozen `Config`. Every check runs here, once, never per request."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..providers import PROVIDER_NAMES
from ..telemetry import TelemetrySettings, parse_telemetry
from ._analysis import analyse_table
from ._matcher import MatcherError, always, compile_matcher
from ._model import (
    SYSTEM_MODES,
    TOKENIZERS,
    Breaker,
    Config,
    ModelSpec,
    Price,
    Profile,
    Retry,
    Route,
    ServerSettings,
    SimSettings,
)
from ._reader import Issues, Section
from ._yaml import load_yaml

DEFAULT_PATH = "/v1/chat/completions"
# OpenAI models count exactly with cl100k_base (o200k_base is not bundled offline; for English
# text the two differ by a few per cent). Anthropic's and Google's tokenizers are not public.
_DEFAULT_TOKENIZER = {"openai": "cl100k_base"}


def default_config_text() -> str:
    return resources.files("laneway").joinpath("defaults/laneway.yaml").read_text("utf-8")


def load_config(path: str | Path | None = None) -> Config:
    """Load a routing file; `None` loads the embedded default (the simulated fleet)."""
    if path is None:
        return parse_config(default_config_text(), "<built-in default>")
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        from ..errors import ConfigIssue

        raise ConfigError([ConfigIssue("", f"cannot read routing file: {exc.strerror}")], str(path)) from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<string>") -> Config:
    raw, marks = load_yaml(text, source)
    issues = Issues(marks)
    config = _build(raw, issues, source)
    if issues.errors or config is None:
        raise ConfigError(issues.errors or issues.items, source)
    return config


@cache
def builtin_models() -> dict[str, ModelSpec]:
    """The simulated fleet's registry, which names in any routing file may resolve against."""
    raw, marks = load_yaml(default_config_text(), "<built-in default>")
    issues = Issues(marks)
    models = _models(Section(raw, "", issues).section("models"), issues)
    if issues.errors:  # the shipped file is tested; this guards edits to it
        raise ConfigError(issues.errors, "<built-in default>")
    return models


def _build(raw: Any, issues: Issues, source: str) -> Config | None:
    top = Section(raw, "", issues)
    own = _models(top.section("models"), issues) if top.has("models") else {}
    known = {**builtin_models(), **own}
    routes = _routes(top, known, issues)
    server = _server(top.section("server"))
    sim = _sim(top.section("sim"))
    telemetry = _telemetry(top)
    top.value("routes")
    top.done()
    if not routes and not issues.errors:
        issues.add("routes", "no routes; add at least one route with a `target` model")
    if issues.errors:
        return None
    used = {name for r in routes for name in (r.target, *r.fallbacks, r.long_context) if name}
    models = {**{n: known[n] for n in sorted(used)}, **own}
    for warning in analyse_table(routes):
        issues.add(warning.path, warning.message, severity="warning")
    signals = frozenset(s for r in routes for s in r.matcher.signals)
    return Config(models, tuple(routes), server, sim, telemetry, source, tuple(issues.warnings), signals)


def _models(section: Section, issues: Issues) -> dict[str, ModelSpec]:
    models: dict[str, ModelSpec] = {}
    for name in list(section.raw):
        spec = _model(str(name), section.section(str(name)))
        if spec is not None:
            models[str(name)] = spec
    return models


def _model(name: str, s: Section) -> ModelSpec | None:
    provider = s.text("provider", required=True, choices=PROVIDER_NAMES)
    base_url = s.text("base_url", required=True)
    if base_url and not base_url.startswith(("http://", "https://", "sim://")):
        s.issues.add(s.where("base_url"), f"`{base_url}` is not an http(s) URL (or `sim://` for the simulated fleet)")
    price = s.section("price")
    p = Price(price.number("input_per_mtok", 0.0, minimum=0) or 0.0,
              price.number("output_per_mtok", 0.0, minimum=0) or 0.0)
    price.done()
    breaker = s.section("cooldown")
    b = Breaker(breaker.whole("failures", 5, minimum=1), breaker.whole("cooldown_ms", 10_000, minimum=1))
    breaker.done()
    profile = _profile(s.section("profile"))
    deadline = s.number("deadline_ms", None, minimum=1, integer=True)
    spec = ModelSpec(
        name=name, provider=provider or "", base_url=(base_url or "").rstrip("/"),
        model=s.text("model", name) or name, api_key_env=s.text("api_key_env"),
        context_window=s.whole("context_window", 128_000, minimum=1), price=p,
        deadline_ms=int(deadline) if deadline else None,
        max_concurrency=s.whole("max_concurrency", 64, minimum=1),
        connect_timeout_ms=s.whole("connect_timeout_ms", 1000, minimum=1),
        stream_idle_ms=s.whole("stream_idle_ms", 10_000, minimum=1),
        tokenizer=s.text("tokenizer", _DEFAULT_TOKENIZER.get(provider or "", "approx"), choices=TOKENIZERS)
        or "approx",
        direct=s.flag("direct", True), breaker=b, profile=profile,
        max_response_bytes=s.whole("max_response_bytes", 8 * 1024 * 1024, minimum=1024),
    )
    s.done()
    return spec if provider and base_url else None


def _profile(s: Section) -> Profile:
    profile = Profile(
        system=s.text("system"),
        system_mode=s.text("system_mode", "prepend", choices=SYSTEM_MODES) or "prepend",
        temperature=s.number("temperature", None, minimum=0),
        top_p=s.number("top_p", None, minimum=0),
        frequency_penalty=s.number("frequency_penalty", None, minimum=-2),
        presence_penalty=s.number("presence_penalty", None, minimum=-2),
        max_tokens=int(v) if (v := s.number("max_tokens", None, minimum=1, integer=True)) else None,
    )
    s.done()
    return profile


def _routes(top: Section, known: dict[str, ModelSpec], issues: Issues) -> list[Route]:
    routes: list[Route] = []
    names: set[str] = set()
    for i, raw in enumerate(top.items("routes")):
        route = _route(i, Section(raw, f"routes[{i}]", issues), known)
        if route is None:
            continue
        if route.name in names:
            issues.add(f"routes[{i}].name", f"duplicate route name `{route.name}`; names must be unique")
        names.add(route.name)
        routes.append(route)
    return routes


def _route(index: int, s: Section, known: dict[str, ModelSpec]) -> Route | None:
    path = s.text("path", DEFAULT_PATH) or DEFAULT_PATH
    if not path.startswith("/"):
        s.issues.add(s.where("path"), f"`{path}` must start with `/`, e.g. `/v1/chat`")
    source = s.text("matcher")
    matcher = always()
    if source is not None:
        try:
            matcher = compile_matcher(source)
        except MatcherError as exc:
            s.issues.add(s.where("matcher"), f"{exc.message} (at column {exc.column} of the matcher)",
                         column_offset=exc.column - 1)
            return None
    target = _model_ref(s, "target", s.value("target"), known, required=True)
    fallbacks = tuple(
        name for j, value in enumerate(s.items("fallbacks"))
        if (name := _model_ref(s, f"fallbacks[{j}]", value, known))
    )
    long_context = _model_ref(s, "long_context", s.value("long_context"), known)
    retry = s.section("retry")
    r = Retry(retry.whole("attempts", 2, minimum=1), retry.whole("backoff_ms", 50, minimum=0))
    retry.done()
    deadline = s.number("deadline_ms", None, minimum=1, integer=True)
    name = s.text("name", f"route-{index}") or f"route-{index}"
    s.done()
    if target is None:
        return None
    return Route(index, name, path, matcher, target, fallbacks, long_context,
                 int(deadline) if deadline else None, r, source is not None)


def _model_ref(s: Section, key: str, value: Any, known: dict[str, ModelSpec], *,
               required: bool = False) -> str | None:
    path = s.where(key)
    if value is None:
        if required:
            s.issues.add(s.path, f"missing `{key}`: the model this route sends to")
        return None
    if not isinstance(value, str):
        s.issues.add(path, f"expected a model name, got {value!r}")
        return None
    if value not in known:
        s.issues.add(path, f"unknown model `{value}`; known: {', '.join(sorted(known))}")
        return None
    return value


def _server(s: Section) -> ServerSettings:
    defaults = ServerSettings()
    settings = ServerSettings(
        table=s.text("table", defaults.table) or defaults.table,
        max_body_bytes=s.whole("max_body_bytes", defaults.max_body_bytes, minimum=1024),
        deadline_ms=s.whole("deadline_ms", defaults.deadline_ms, minimum=1),
        max_messages=s.whole("max_messages", defaults.max_messages, minimum=1),
    )
    s.done()
    return settings


def _sim(s: Section) -> SimSettings:
    settings = SimSettings(
        host=s.text("host", "127.0.0.1") or "127.0.0.1",
        port=s.whole("port", 0, minimum=0),
        fleet=s.text("fleet"),
        seed=s.whole("seed", 7, minimum=0),
    )
    s.done()
    return settings


def _telemetry(top: Section) -> TelemetrySettings:
    try:
        return parse_telemetry(top.value("telemetry"), "telemetry")
    except ConfigError as exc:
        for issue in exc.issues:
            top.issues.add(issue.path, issue.message)
        return TelemetrySettings()
