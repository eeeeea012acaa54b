"""Routing file → validated, frozen `Config`. Every check runs here, once, never per request."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..chat import REASONING_EFFORTS
from ..errors import ConfigError, ConfigIssue, not_utf8, port_problem, without_password
from ..flags import SEED_MAX
from ..keys import KeyPolicy
from ..providers import PROVIDER_NAMES
from ..request import MAX_OUTPUT_TOKENS, SAMPLING_RANGES
from ..telemetry import TelemetrySettings, parse_telemetry
from ._access import parse_admin, parse_keys
from ._analysis import analyse_table
from ._gate import parse_gate, parse_priorities
from ._lanes import (
    LOGPROB_PROVIDERS,
    Canary,
    Cascade,
    KnowledgeSource,
    Shadow,
    ShadowSettings,
    parse_cache,
    parse_canaries,
    parse_cascade,
    parse_intents,
    parse_knowledge,
    parse_retrieval,
    parse_shadow_settings,
    parse_shadows,
)
from ._matcher import Matcher, MatcherError, always, compile_matcher
from ._model import (
    GEMINI_THINKING_LEVELS,
    SYSTEM_MODES,
    TABLE_ALIASES,
    TOKENIZERS,
    TRIM_POLICIES,
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
MAX_PORT = 65535
MAX_DEADLINE_MS = 3_600_000  # an hour: a longer wait for one answer is a mistake in the file
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
        raise ConfigError([ConfigIssue("", f"cannot read routing file: {exc.strerror}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read routing file: {not_utf8(exc)}")], str(path)) from None
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<string>") -> Config:
    raw, marks = load_yaml(text, source)
    issues = Issues(marks)
    base = Path(source).resolve().parent if Path(source).is_file() else Path.cwd()
    config = _build(raw, issues, source, base)
    if issues.errors or config is None:
        raise ConfigError(issues.errors or issues.items, source)
    return replace(config, text=text)


@cache
def builtin_models() -> dict[str, ModelSpec]:
    """The simulated fleet's registry, which names in any routing file may resolve against."""
    raw, marks = load_yaml(default_config_text(), "<built-in default>")
    issues = Issues(marks)
    models = _models(Section(raw, "", issues).section("models"), issues)
    if issues.errors:  # the shipped file is tested; this guards edits to it
        raise ConfigError(issues.errors, "<built-in default>")
    return models


def _build(raw: Any, issues: Issues, source: str, base: Path) -> Config | None:
    top = Section(raw, "", issues)
    own = _models(top.section("models"), issues) if top.has("models") else {}
    known = {**builtin_models(), **own}
    context = _Context(parse_knowledge(top.section("knowledge"), base), top.has("knowledge"))
    intents = parse_intents(top.section("intents"), base)
    priorities = parse_priorities(top.section("priorities"))
    keys = parse_keys(top, base)
    admin = parse_admin(top.section("admin"))
    state = top.text("state")
    if state is not None and (problem := _redis_url_problem(state)):
        issues.add("state", f"`{without_password(state)}` {problem}; use `redis://HOST:PORT/DB` (or `rediss://`, "
                            "`unix://PATH?db=N`)")
    _check_degrade(own, known, issues)
    shadow = _shadow_settings(top.section("shadow"), known)
    routes = _routes(top, known, issues, context)
    server = _server(top.section("server"))
    if server.table in known and server.table not in own:
        issues.add("server.table", f"`{server.table}` is a model's name: a request naming the model would be routed "
                                   "by the table; name the table otherwise (default `laneway`)")
    for name in own:
        if name == server.table or name in TABLE_ALIASES:
            issues.add(f"models.{name}", f"`{name}` names the route table (`server.table`, or its alias `auto`): a "
                                         "request naming it is routed by the table, never sent to this model; "
                                         "rename the model")
    sim = _sim(top.section("sim"), base)
    used = {name for r in routes for name in _models_of(r) if name} | {t.target for t in shadow.targets}
    while more := {m.gate.degrade_to for n in used if (m := known.get(n)) and m.gate and m.gate.degrade_to} - used:
        used |= more  # a chain, link by link (`_check_degrade` refused cycles)
    _check_simulated({**{n: known[n] for n in used if n in known}, **own}, set(own), sim, issues)
    telemetry = _telemetry(top)
    top.value("routes")
    top.done()
    _check_key_routes(keys, routes, issues)
    matchers = [(f"routes[{route.index}].matcher", route.matcher) for route in routes]
    matchers += [("priorities.escalation", priorities.escalation), ("priorities.triage", priorities.triage)]
    _check_intents(matchers, intents.model, issues)
    _check_global_shadows(shadow, routes, issues)
    if not routes and not issues.errors:
        issues.add("routes", "no routes; add at least one route with a `target` model")
    if issues.errors:
        return None
    models = {**{n: known[n] for n in sorted(used)}, **own}
    for warning in analyse_table(routes):
        issues.add(warning.path, warning.message, severity="warning")
    signals = frozenset(s for _, matcher in matchers for s in matcher.signals)  # `priorities:` read them too
    return Config(models, tuple(routes), server, sim, telemetry, source, tuple(issues.warnings), signals,
                  context.knowledge, intents, shadow, priorities, state, keys, admin)


def _models(section: Section, issues: Issues) -> dict[str, ModelSpec]:
    for name in section.raw:
        if not str(name).strip():  # answered with an empty `x-laneway-model`, read as refused before routing
            issues.add(section.where(str(name)), "a model name must not be empty; name the model, e.g. `fast`")
        elif not str(name).isprintable():
            issues.add(section.where(str(name)), f"the model name {str(name)!r} {UNPRINTABLE_NAME}")
    return {str(name): _model(str(name), section.section(str(name))) for name in list(section.raw)}


# Route and model names go out in the `x-laneway-route` and `x-laneway-model` headers of every answer.
UNPRINTABLE_NAME = ("holds a line break, tab or other control character, which no response header can carry; "
                    "write it on one line (a YAML block, `name: |`, ends in a line break)")


def _model(name: str, s: Section) -> ModelSpec:
    provider = s.text("provider", required=True, choices=PROVIDER_NAMES)
    base_url = s.text("base_url", required=True)
    if base_url and not base_url.startswith(("http://", "https://", "sim://")):
        s.issues.add(s.where("base_url"), f"`{without_password(base_url)}` is not an http(s) URL (or `sim://` for the "
                                          "simulated fleet)")
    elif base_url and base_url.startswith(("http://", "https://")):
        problem = _url_problem(base_url)
        if problem:
            s.issues.add(s.where("base_url"), f"`{without_password(base_url)}` {problem}")
    price = s.section("price")
    p = Price(price.number("input_per_mtok", 0.0, minimum=0) or 0.0,
              price.number("output_per_mtok", 0.0, minimum=0) or 0.0,
              price.number("cached_input_per_mtok", None, minimum=0),
              price.number("cache_write_per_mtok", None, minimum=0))
    price.done()
    breaker = s.section("cooldown")
    b = Breaker(breaker.whole("failures", 5, minimum=1),
                breaker.whole("cooldown_ms", 10_000, minimum=1, maximum=MAX_DEADLINE_MS))
    breaker.done()
    profile = _profile(s.section("profile"))
    deadline = s.number("deadline_ms", None, minimum=1, maximum=MAX_DEADLINE_MS, integer=True)
    spec = ModelSpec(
        name=name, provider=provider or "", base_url=(base_url or "").rstrip("/"),
        model=s.text("model", name) or name, api_key_env=s.variable("api_key_env"),
        context_window=s.whole("context_window", 128_000, minimum=1), price=p,
        deadline_ms=int(deadline) if deadline else None,
        max_concurrency=s.whole("max_concurrency", 64, minimum=1),
        connect_timeout_ms=s.whole("connect_timeout_ms", 1000, minimum=1, maximum=MAX_DEADLINE_MS),
        stream_idle_ms=s.whole("stream_idle_ms", 10_000, minimum=1, maximum=MAX_DEADLINE_MS),
        tokenizer=s.text("tokenizer", _DEFAULT_TOKENIZER.get(provider or "", "approx"), choices=TOKENIZERS)
        or "approx",
        direct=s.flag("direct", True), breaker=b, profile=profile,
        max_response_bytes=s.whole("max_response_bytes", 8 * 1024 * 1024, minimum=1024),
        gate=parse_gate(s.section("gate")) if s.has("gate") else None,
        warmup=s.flag("warmup", False), prompt_cache=s.flag("prompt_cache", False),
        reasoning=_reasoning(s.section("reasoning"), provider) if s.has("reasoning") else (),
    )
    _check_reasoning(s, spec)
    if not s.has("price"):
        capped = spec.gate is not None and spec.gate.usd_per_minute is not None
        binds = " (its gate's `usd_per_minute` never binds)" if capped else ""
        s.issues.add(s.where("price"), f"no `price`: its requests cost $0 in metrics, reports, budgets and spend "
                     f"caps{binds}; add `price: {{input_per_mtok: N, output_per_mtok: N}}` (0 and 0 for a model "
                     "that costs nothing)", severity="warning")
    if spec.prompt_cache and provider != "anthropic":
        s.issues.add(s.where("prompt_cache"), f"`prompt_cache` is for `anthropic` models; `{provider}` caches "
                     "long prompts on its own (its cached-token price is `price.cached_input_per_mtok`)")
    s.done()
    # Kept even when invalid (the file's errors stop the load anyway), so that routes naming this model
    # are not also told it is unknown.
    return spec


def _reasoning(s: Section, provider: str | None) -> tuple[tuple[str, int | str], ...]:
    """`reasoning_effort` -> thinking: a budget in tokens (Anthropic at least 1024, Gemini -1 for
    dynamic), 0 for none, or a Gemini thinking level."""
    if provider not in ("anthropic", "gemini"):
        s.issues.add(s.path, f"`reasoning` translates `reasoning_effort` for `anthropic` and `gemini` models; "
                             f"`{provider}` models take `reasoning_effort` as it is")
        return ()
    pairs: list[tuple[str, int | str]] = []
    for effort in [str(key) for key in s.raw]:
        value = s.value(effort)
        if effort not in REASONING_EFFORTS:
            s.issues.add(s.where(effort), f"unknown `reasoning_effort` value `{effort}`; expected one of "
                                          f"{', '.join(REASONING_EFFORTS)}")
        elif provider == "anthropic" and not (_whole(value) and (value == 0 or value >= 1024)):
            s.issues.add(s.where(effort), f"expected a thinking budget in tokens, at least 1024 (0: no thinking), "
                                          f"got {value!r}")
        elif provider == "gemini" and not ((_whole(value) and value >= -1) or value in GEMINI_THINKING_LEVELS):
            s.issues.add(s.where(effort), f"expected a thinking budget in tokens (-1: dynamic, 0: none) or a "
                                          f"thinking level ({', '.join(GEMINI_THINKING_LEVELS)}), got {value!r}")
        else:
            pairs.append((effort, value))
    return tuple(pairs)


def _check_reasoning(s: Section, spec: ModelSpec) -> None:
    """Warn of thinking budgets the model's window cannot hold, and of a Gemini model given both levels
    (Gemini 3) and budgets (Gemini 2.5): a model takes one or the other."""
    for effort, value in spec.reasoning:
        if isinstance(value, int) and value >= spec.context_window:
            s.issues.add(s.where(f"reasoning.{effort}"), f"a thinking budget of {value} tokens does not fit the "
                         f"model's `context_window` ({spec.context_window}): such requests are refused as too long",
                         severity="warning")
    if spec.profile.max_tokens is not None and spec.profile.max_tokens >= spec.context_window:
        s.issues.add(s.where("profile.max_tokens"), f"{spec.profile.max_tokens} tokens of output do not fit the "
                     f"model's `context_window` ({spec.context_window}): every request that names no `max_tokens` "
                     "is refused as too long", severity="warning")
    kinds = {type(value) for _, value in spec.reasoning}
    if spec.provider == "gemini" and kinds == {int, str}:
        s.issues.add(s.where("reasoning"), "mixes thinking levels (Gemini 3) and budgets in tokens (Gemini 2.5); "
                     "a model takes one or the other", severity="warning")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _profile(s: Section) -> Profile:
    profile = Profile(
        system=s.text("system"),
        system_mode=s.text("system_mode", "prepend", choices=SYSTEM_MODES) or "prepend",
        temperature=_sampling(s, "temperature"),
        top_p=_sampling(s, "top_p"),
        frequency_penalty=_sampling(s, "frequency_penalty"),
        presence_penalty=_sampling(s, "presence_penalty"),
        max_tokens=int(v) if (v := s.number("max_tokens", None, minimum=1, maximum=MAX_OUTPUT_TOKENS,
                                            integer=True)) else None,
    )
    s.done()
    return profile


def _sampling(s: Section, key: str) -> float | None:
    """A profile's sampling parameter, within the range a client's request is held to."""
    low, high = SAMPLING_RANGES[key]
    return s.number(key, None, minimum=low, maximum=high)


def _routes(top: Section, known: dict[str, ModelSpec], issues: Issues, context: _Context) -> list[Route]:
    routes: list[Route] = []
    names: set[str] = set()
    for i, raw in enumerate(top.items("routes")):
        route = _route(i, Section(raw, f"routes[{i}]", issues), known, context)
        if route is None:
            continue
        if route.name in names and isinstance(raw, dict) and "name" not in raw:
            issues.add(f"routes[{i}]", f"`routes[{i}]` has no `name`, so it is called `{route.name}`, which another "
                                       "route is named already; give it a `name`")
        elif route.name in names:
            issues.add(f"routes[{i}].name", f"duplicate route name `{route.name}`; names must be unique")
        names.add(route.name)
        routes.append(route)
    return routes


def _route(index: int, s: Section, known: dict[str, ModelSpec], context: _Context) -> Route | None:
    path = s.text("path", DEFAULT_PATH) or DEFAULT_PATH
    if not path.startswith("/"):
        s.issues.add(s.where("path"), f"`{path}` must start with `/`, e.g. `/v1/chat`")
    elif (base := path.rstrip("/")) not in ("", "/v1") and not base.startswith("/v1/"):
        # The server answers chat requests at `/v1/.../completions` only.
        s.issues.add(s.where("path"), f"no request reaches `{path}`: chat requests arrive at `/v1/.../completions`; "
                                      f"give a prefix of such a path, e.g. `/v1/chat`")
    elif (last := path.rstrip("/").rsplit("/", 1)[-1]) != "completions" and \
            difflib.get_close_matches(last, ["completions"], cutoff=0.75):
        s.issues.add(s.where("path"), f"`{path}` serves only paths under it, such as `{path.rstrip('/')}/completions`, "
                                      f"not `{DEFAULT_PATH}`, which OpenAI clients call; did you mean "
                                      f"`{path.rstrip('/').rsplit('/', 1)[0]}/completions`?", severity="warning")
    source = s.text("matcher")
    matcher = always()
    matcher_ok = True
    if source is not None:
        try:
            matcher = compile_matcher(source)
        except MatcherError as exc:
            # Reported, and the rest of the route is still read so that its other mistakes show too.
            s.issues.add(s.where("matcher"), f"{exc.message} (at column {exc.column} of the matcher)",
                         column_offset=exc.column - 1)
            matcher_ok = False
    target = _model_ref(s.issues, s.where("target"), s.value("target"), known, required=True)
    fallbacks = tuple(
        name for j, value in enumerate(s.items("fallbacks"))
        if (name := _model_ref(s.issues, s.where(f"fallbacks[{j}]"), value, known))
    )
    long_context = _model_ref(s.issues, s.where("long_context"), s.value("long_context"), known)
    trim = s.text("trim", "none", choices=TRIM_POLICIES) or "none"
    lanes = _route_lanes(s, known, context)
    retry = s.section("retry")
    r = Retry(retry.whole("attempts", 2, minimum=1), retry.whole("backoff_ms", 50, minimum=0, maximum=MAX_DEADLINE_MS))
    retry.done()
    deadline = s.number("deadline_ms", None, minimum=1, maximum=MAX_DEADLINE_MS, integer=True)
    name = s.text("name", f"route-{index}")
    if not name or not name.strip():
        s.issues.add(s.where("name"), "must not be empty; leave `name` out to be called "
                                      f"`route-{index}`, or give one")
    elif not name.isprintable():
        s.issues.add(s.where("name"), f"{name!r} {UNPRINTABLE_NAME}")
        name = None
    s.done()
    if target is None or not name or not matcher_ok:
        return None
    route = Route(index, name, path, matcher, target, fallbacks, long_context,
                  int(deadline) if deadline else None, r, source is not None, trim=trim, **lanes)
    _check_cascade(s, route, known)
    _check_repeats(s, route)
    return route


def _url_problem(url: str) -> str | None:
    """What makes an http(s) URL unusable, or None."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "names no host, e.g. `https://api.openai.com/v1`"
    if parts.username is not None or parts.password is not None:  # not sent: the upstream would answer 401
        return ("holds credentials (`user:password@`), which are not sent: give the key in the variable "
                "`api_key_env` names")
    problem = port_problem(url)
    return "has a port that is not a number from 1 to 65535" if problem is None and parts.port == 0 else problem


def _check_intents(matchers: list[tuple[str, Matcher]], model: Path | None, issues: Issues) -> None:
    """Every intent a matcher (at its YAML path) names must be one the intent model can answer (or `unknown`):
    a typo would otherwise make the route match nothing, silently."""
    named = [(where, value) for where, matcher in matchers for signal, value in matcher.literals if signal == "intent"]
    if not named:
        return
    from ..intents._default import default_model_path
    from ..intents._model import UNKNOWN, model_classes

    path = model or default_model_path()
    try:
        known = {*model_classes(path), UNKNOWN}
    except ConfigError:
        return  # a model that cannot be read is reported where `intents.model` names it, or at start-up
    for where, value in named:
        if value in known:
            continue
        close = difflib.get_close_matches(str(value), sorted(known), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        issues.add(where,
                   f"`{value}` is not an intent of the model `{path.name}`: no request's `intent` is ever `{value}` "
                   f"(a `!=` or `not in` with it always holds); {hint}it knows: {', '.join(sorted(known))}")


def _check_repeats(s: Section, route: Route) -> None:
    """Warn of a model listed twice in one plan, or a lane that sends to the model it stands beside:
    both usually come from a copied line."""
    tried = [route.target]
    for j, name in enumerate(route.fallbacks):
        if name in tried:
            earlier = "the target" if name == route.target else "an earlier fallback"
            s.issues.add(s.where(f"fallbacks[{j}]"), f"`{name}` is {earlier} already: it is tried again right "
                         "after failing, spending the deadline on a model that just failed; for more tries of "
                         "one model, raise `retry.attempts`", severity="warning")
        tried.append(name)
    if route.long_context == route.target:
        s.issues.add(s.where("long_context"), f"`{route.target}` is the route's own target: a prompt too long for it "
                     "is sent to it again; name a model with a larger `context_window`", severity="warning")
    if route.retrieval is not None and route.retrieval.on_miss == route.target:
        s.issues.add(s.where("retrieval") + ".on_miss", f"`{route.target}` is the route's own target: a miss goes "
                     "where a hit goes, only without the note that nothing matched; name a model better able to "
                     "answer without the knowledge base, or leave `on_miss` out", severity="warning")
    canaries: list[str] = []
    for k, canary in enumerate(route.canaries):
        where = s.where("canary") + (f"[{k}]" if len(route.canaries) > 1 else "") + ".target"
        if canary.target == route.target:
            s.issues.add(where, f"the canary `{canary.target}` is the route's own target: its conversations go "
                         "where they would anyway, and there is nothing to compare", severity="warning")
        elif canary.target in canaries:
            s.issues.add(where, f"`{canary.target}` is a canary of this route already; its weights add up. "
                         "Give it one entry with the whole weight", severity="warning")
        canaries.append(canary.target)
    shadows: list[str] = []
    for k, shadow in enumerate(route.shadows):
        if shadow.target == route.target:
            s.issues.add(s.where(f"shadow[{k}].target"), f"the shadow `{shadow.target}` is the route's own target: "
                         "each sampled request is sent to it twice and compared with itself", severity="warning")
        elif shadow.target in shadows:
            s.issues.add(s.where(f"shadow[{k}].target"), f"`{shadow.target}` is a shadow of this route already: a "
                         "request sampled by both entries is copied to it twice", severity="warning")
        shadows.append(shadow.target)
    if route.cascade is not None and route.cascade.escalate_to == route.target:
        s.issues.add(s.where("cascade.escalate_to"), f"`{route.target}` is the route's own target: a low-confidence "
                     "answer is asked again of the model that gave it. Escalate to a stronger model",
                     severity="warning")
    if route.cascade is not None and route.cascade.verifier == route.target:
        s.issues.add(s.where("cascade.verifier"), f"`{route.target}` is the route's own target: the model grades "
                     "its own answers, which says little of them. Name another model as the verifier",
                     severity="warning")


def _model_ref(issues: Issues, path: str, value: Any, known: dict[str, ModelSpec], *,
               required: bool = False, what: str = "the model this route sends to") -> str | None:
    if value is None:
        if required:
            parent, _, key = path.rpartition(".")
            issues.add(parent, f"missing `{key}`: {what}")
        return None
    if not isinstance(value, str):
        issues.add(path, f"expected a model name, got {value!r}")
        return None
    if value not in known:
        close = difflib.get_close_matches(value, sorted(known), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        issues.add(path, f"unknown model `{value}`; {hint}known: {', '.join(sorted(known))}")
        return None
    return value


@dataclass(frozen=True, slots=True)
class _Context:
    knowledge: dict[str, KnowledgeSource]
    declared: bool


def _models_of(route: Route) -> list[str | None]:
    names: list[str | None] = [route.target, *route.fallbacks, route.long_context]
    names += [c.target for c in route.canaries] + [s.target for s in route.shadows]
    if route.cascade:
        names += [route.cascade.escalate_to, route.cascade.verifier]
    if route.retrieval:
        names.append(route.retrieval.on_miss)
    return names


ROUTE_LANE_KEYS = ("canary", "shadow", "cascade", "cache", "retrieval")


def _route_lanes(s: Section, known: dict[str, ModelSpec], context: _Context) -> dict[str, Any]:
    lanes: dict[str, Any] = {}
    issues = s.issues
    s.seen.update(ROUTE_LANE_KEYS)  # keys of a route, for the hint of an unknown key
    if s.has("canary"):
        lanes["canaries"] = tuple(Canary(t, w) for t, w, path in parse_canaries(s.value("canary"), s)
                                  if _model_ref(issues, path, t, known))
    if s.has("shadow"):
        lanes["shadows"] = tuple(Shadow(t, w) for t, w, path in parse_shadows(s.items("shadow"), s.where("shadow"),
                                                                               issues)
                                 if _model_ref(issues, path, t, known))
    if s.has("cascade"):
        c = s.section("cascade")
        confidence, source, escalate_to, verifier = parse_cascade(c)
        ok = _model_ref(issues, c.where("escalate_to"), escalate_to, known)
        if verifier is not None:
            _model_ref(issues, c.where("verifier"), verifier, known)
        if ok:
            lanes["cascade"] = Cascade(confidence, source, ok, verifier)
    if isinstance(s.raw.get("cache"), bool | str):  # `cache: on`, YAML's boolean, or `cache: read_only`
        s.issues.add(s.where("cache"), "write the cache as a mapping: `cache: {mode: on}` (or read_only, "
                                       "write_only, off), optionally with `ttl_s` and `allow_temperature`")
    elif s.has("cache"):
        lanes["cache"] = parse_cache(s.section("cache"))
    if s.has("retrieval"):
        r = s.section("retrieval")
        retrieval = parse_retrieval(r)
        if retrieval is not None:
            if retrieval.knowledge not in context.knowledge:
                known_kb = ", ".join(sorted(context.knowledge)) or "none; add a `knowledge:` section"
                issues.add(r.where("knowledge"), f"unknown knowledge base `{retrieval.knowledge}`; known: {known_kb}")
            if retrieval.on_miss is not None:
                _model_ref(issues, r.where("on_miss"), retrieval.on_miss, known)
            lanes["retrieval"] = retrieval
    return lanes


def _check_cascade(s: Section, route: Route, known: dict[str, ModelSpec]) -> None:
    cascade = route.cascade
    if cascade is None or cascade.source != "logprobs":
        return
    for name in [route.target, *(c.target for c in route.canaries)]:
        provider = known[name].provider
        if provider and provider not in LOGPROB_PROVIDERS:  # no provider: the model has its own error
            s.issues.add(s.where("cascade.source"),
                         f"`logprobs` needs a model that returns log-probabilities ({', '.join(LOGPROB_PROVIDERS)}); "
                         f"`{name}` speaks `{provider}`. Use `source: self_report` or `source: verifier`")


def _check_global_shadows(shadow: ShadowSettings, routes: list[Route], issues: Issues) -> None:
    """Warn of a shadow every route gets whose candidate is some route's own target, and of a spend cap
    of nothing, which drops every copy."""
    for k, entry in enumerate(shadow.targets):
        own = [r.name for r in routes if r.target == entry.target]
        if own:
            issues.add(f"shadow.targets[{k}].target", f"`{entry.target}` is the target of route(s) {', '.join(own)}: "
                       "their sampled requests are sent to it twice and compared with themselves; give the other "
                       "routes their own `shadow:` instead", severity="warning")
    if (shadow.targets or any(r.shadows for r in routes)) and shadow.usd_per_hour == 0:
        issues.add("shadow.usd_per_hour", "is 0: every shadow copy is dropped unsent; raise it, or remove the "
                   "routes' `shadow:` entries", severity="warning")


def _check_simulated(models: dict[str, ModelSpec], own: set[str], sim: SimSettings, issues: Issues) -> None:
    """Every `sim://` model the file uses must be one of the simulated fleet's, and a fleet file
    (`sim.fleet`) must load: either otherwise fails every request, or the start."""
    named = {name: spec.base_url[len("sim://"):].strip("/").split("/")[0]
             for name, spec in models.items() if spec.simulated}
    if not named:
        return
    from ..sim._fleet import load_fleet

    try:
        fleet = sorted(load_fleet(sim.fleet))
    except ConfigError as error:
        for issue in error.issues:
            issues.add("sim.fleet", f"`{sim.fleet}`: {issue}")
        return
    for name, model in named.items():
        if model not in fleet:
            close = difflib.get_close_matches(model, fleet, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            if name in own:
                issues.add(f"models.{name}.base_url", f"the simulated fleet has no model `{model}`; {hint}"
                                                      f"it has: {', '.join(fleet)}")
            else:
                issues.add("sim.fleet", f"the routes use the built-in model `{name}`, which the fleet `{sim.fleet}` "
                                        f"has not; add it to the fleet, or route to one it has: {', '.join(fleet)}")


def _redis_url_problem(url: str) -> str | None:
    """What keeps `url` from naming one Redis database, or None. Redis's client reads a database it cannot
    parse as 0, which may be another deployment's."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "is not a Redis URL"
    if problem := port_problem(url):
        return problem
    parts = urlsplit(url)
    database = parse_qs(parts.query).get("db", [""])[0] if parts.scheme == "unix" else parts.path.strip("/")
    if database and not database.isdigit():
        return f"names the database `{database}`, which is not a number"
    return None


def _check_key_routes(keys: tuple[KeyPolicy, ...], routes: list[Route], issues: Issues) -> None:
    names = {r.name for r in routes}
    for key in keys:
        unknown = sorted((key.routes or frozenset()) - names)
        if unknown:
            issues.add(f"{key.where}.routes", f"unknown route `{unknown[0]}`; routes: {', '.join(sorted(names))}")


def _check_degrade(own: dict[str, ModelSpec], known: dict[str, ModelSpec], issues: Issues) -> None:
    for name, spec in own.items():
        target = spec.gate.degrade_to if spec.gate else None
        if target is not None:
            path = f"models.{name}.gate.degrade_to"
            if target == name:
                issues.add(path, "a model cannot degrade to itself; name a cheaper model")
            elif _model_ref(issues, path, target, known) and (cycle := _degrade_cycle(name, known)):
                issues.add(path, f"{' -> '.join(f'`{m}`' for m in cycle)} is a cycle: a request every gate of it "
                                 "turns away would go round it for ever; end the chain at a model without `degrade_to`")


def _degrade_cycle(start: str, known: dict[str, ModelSpec]) -> list[str] | None:
    """The models from `start` along `degrade_to` back to `start`, when the chain comes back to it."""
    chain, seen = [start], {start}
    spec = known.get(start)
    while spec is not None and spec.gate is not None and spec.gate.degrade_to is not None:
        target = spec.gate.degrade_to
        chain.append(target)
        if target == start:
            return chain
        if target in seen:  # a cycle further on, said at its own models
            return None
        seen.add(target)
        spec = known.get(target)
    return None


def _shadow_settings(s: Section, known: dict[str, ModelSpec]) -> ShadowSettings:
    targets, queue, concurrency, spend = parse_shadow_settings(s)
    shadows = tuple(Shadow(t, w) for t, w, path in targets if _model_ref(s.issues, path, t, known))
    return ShadowSettings(shadows, queue, concurrency, spend)


def _server(s: Section) -> ServerSettings:
    defaults = ServerSettings()
    settings = ServerSettings(
        table=s.text("table", defaults.table) or defaults.table,
        max_body_bytes=s.whole("max_body_bytes", defaults.max_body_bytes, minimum=1024),
        deadline_ms=s.whole("deadline_ms", defaults.deadline_ms, minimum=1, maximum=MAX_DEADLINE_MS),
        max_messages=s.whole("max_messages", defaults.max_messages, minimum=1),
        cache_entries=s.whole("cache_entries", defaults.cache_entries, minimum=1),
        shutdown_grace_ms=s.whole("shutdown_grace_ms", defaults.shutdown_grace_ms, minimum=0,
                                  maximum=MAX_DEADLINE_MS),
        keep_alive_ms=s.whole("keep_alive_ms", defaults.keep_alive_ms, minimum=100, maximum=MAX_DEADLINE_MS),
        read_timeout_ms=s.whole("read_timeout_ms", defaults.read_timeout_ms, minimum=100, maximum=MAX_DEADLINE_MS),
    )
    s.done()
    return settings


def _sim(s: Section, base: Path) -> SimSettings:
    """A fleet file is read relative to the routing file's folder."""
    fleet = s.text("fleet")
    if fleet is not None:
        path = base / fleet
        if not path.is_file():
            s.issues.add(s.where("fleet"), f"`{fleet}` is not a file (read relative to the routing file's folder: "
                                           f"{path}); leave `fleet` out for the built-in fleet")
        fleet = str(path)
    settings = SimSettings(
        host=s.text("host", "127.0.0.1") or "127.0.0.1",
        port=s.whole("port", 0, minimum=0, maximum=MAX_PORT),
        fleet=fleet,
        seed=s.whole("seed", 7, minimum=0, maximum=SEED_MAX),  # handed on to `laneway sim --seed`
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
