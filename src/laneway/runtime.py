"""A loaded configuration brought to life: one provider (and connection pool) and breaker per model.

A reload builds a new `Runtime` and swaps it in; the old one closes once its in-flight requests
have finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .breaker import CircuitBreaker
from .chat import ChatRequest, GatewayMessage, Message
from .config import Config, KnowledgeSource, ModelSpec
from .context import TokenCounter, upper_bound
from .errors import ConfigError, LanewayError
from .gate import Gate, SharedLimits
from .providers import Provider, create_provider
from .signals import SIGNALS, IntentFn

if TYPE_CHECKING:
    from .intents import IntentModel
    from .retrieval import KnowledgeBase

log = logging.getLogger("laneway")
UNKNOWN_INTENT = SIGNALS["intent"].default


@dataclass
class Runtime:
    config: Config
    providers: dict[str, Provider]
    breakers: dict[str, CircuitBreaker]
    knowledge: dict[str, KnowledgeBase] = field(default_factory=dict)
    classify: IntentFn | None = None
    intent_labels: frozenset[str] = frozenset()  # what `classify` answers, `unknown` included
    gates: dict[str, Gate] = field(default_factory=dict)
    shared: SharedLimits | None = None  # limits shared with other replicas (`state:`)
    inflight: int = 0
    _drained: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(cls, config: Config, sim_url: str | None, previous: Runtime | None = None) -> Runtime:
        """Everything a config needs before its first request: pools, breakers, gates, indexes, classifier.

        Gates are carried over from `previous`, so a reload never forgets the calls in flight behind
        them: a changed policy is applied to the gate in place on the event loop (`adopt_gate_policies`);
        new gates share `previous`'s replica-wide limits.
        So are the breakers of models whose definition did not change: a reload that edits the
        routes does not send requests to a model that is cooling down."""
        providers = {name: create_provider(spec, _resolve(spec, sim_url)) for name, spec in config.models.items()}
        kept = {name: breaker for name, breaker in previous.breakers.items()
                if previous.config.models.get(name) == config.models.get(name)} if previous else {}
        breakers = {name: kept.get(name) or CircuitBreaker(spec.breaker) for name, spec in config.models.items()}
        knowledge = {name: _knowledge_base(source, config.source) for name, source in config.knowledge.items()}
        old = previous.gates if previous else {}
        shared = previous.shared if previous else None
        gates = {name: old[name] if name in old else Gate(name, spec.gate, shared)
                 for name, spec in config.models.items() if spec.gate is not None}
        model = _intent_model(config)
        return cls(config, providers, breakers, knowledge, model.classify if model else None,
                   frozenset((*model.labels, UNKNOWN_INTENT)) if model else frozenset(), gates, shared)

    def adopt_gate_policies(self) -> None:
        """Give the gates carried over from the previous config their new policies (on the event loop)."""
        for name, gate in self.gates.items():
            policy = self.config.models[name].gate
            assert policy is not None
            gate.adopt(policy)

    def share(self, shared: SharedLimits) -> None:
        """From now on, every gate also keeps to the limits `shared` with the other replicas."""
        self.shared = shared
        for gate in self.gates.values():
            gate.shared = shared

    async def warm(self, timeout_s: float = 10.0) -> None:
        """Pre-connect every upstream; with `warmup: true`, also send one tiny request to the model."""
        async def one(name: str, provider: Provider) -> None:
            await provider.warm()
            if provider.spec.warmup:
                request = ChatRequest(provider.spec.model, [{"role": "user", "content": "ping"}], {"max_tokens": 1})
                try:
                    await provider.complete(request, asyncio.get_running_loop().time() + timeout_s)
                except LanewayError as error:
                    log.warning("laneway: warm-up request to `%s` failed: %s", name, error.message)

        await asyncio.gather(*(one(name, p) for name, p in self.providers.items()))

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._drained.set()

    async def aclose(self, drain_timeout_s: float = 30.0) -> None:
        if self.inflight:
            self._drained.clear()
            try:
                async with asyncio.timeout(drain_timeout_s):
                    await self._drained.wait()
            except TimeoutError:
                pass
        await asyncio.gather(*(p.aclose() for p in self.providers.values()))


def load_files(config: Config) -> None:
    """Read every file the config names beyond itself (knowledge sources or indexes, the intent model) as
    serving would, so that `laneway check` finds what would stop `laneway serve`: a `ConfigError`."""
    for source in config.knowledge.values():
        _knowledge_base(source, config.source)
    _intent_model(config)


def _knowledge_base(source: KnowledgeSource, config_source: str) -> KnowledgeBase:
    from .retrieval import KnowledgeBase  # BM25 and its numeric stack load only when a route retrieves

    with _at(f"knowledge.{source.name}", config_source):
        if source.index is not None:
            return KnowledgeBase.load(source.index)
        return KnowledgeBase.build(source.name, source.sources, chunk_tokens=source.chunk_tokens)


def _intent_model(config: Config) -> IntentModel | None:
    """Loaded only when some matcher reads `intent`: the classifier costs nothing otherwise."""
    if not config.signals_used & {"intent", "intent_confidence"}:
        return None
    from .intents import IntentModel, load_default

    with _at("intents.model", config.source):
        return IntentModel.load(config.intents.model) if config.intents.model else load_default()


@contextlib.contextmanager
def _at(path: str, config_source: str) -> Iterator[None]:
    """A file's error, placed at the key of the routing file (`config_source`) that names the file."""
    try:
        yield
    except ConfigError as error:
        named = error.source or ""
        issues = [
            replace(issue, path=path if not issue.path or issue.path in issue.message else f"{path}: {issue.path}",
                    message=issue.message if named in issue.message else f"{named}: {issue.message}")
            for issue in error.issues
        ]
        raise ConfigError(issues, config_source) from None


def _resolve(spec: ModelSpec, sim_url: str | None) -> str:
    if not spec.simulated:
        return spec.base_url
    if sim_url is None:
        raise RuntimeError(f"model `{spec.name}` uses the simulated fleet but no fleet is running")
    return sim_url + spec.base_url[len("sim://"):]


def prepare(spec: ModelSpec, messages: list[Message], params: dict[str, Any]) -> ChatRequest:
    """Apply the model's prompt profile: system prompt and default sampling parameters."""
    profile = spec.profile
    if profile.system is not None and profile.system_mode != "keep":
        if profile.system_mode == "replace":  # the client's system prompt, not what the gateway added
            messages = [m for m in messages
                        if m.get("role") not in ("system", "developer") or isinstance(m, GatewayMessage)]
        messages = [GatewayMessage(role="system", content=profile.system), *messages]
    merged = {**profile.sampling(), **params}
    if "max_completion_tokens" in params:
        merged.pop("max_tokens", None)
    return ChatRequest(spec.model, messages, merged)


def output_reserve(spec: ModelSpec, request: ChatRequest, default: int = 0) -> int:
    """The tokens the model's window must keep free for the output: the answer's `max_tokens` (or
    `default`), plus the thinking budget the adapter adds for `reasoning_effort` (`reasoning:`)."""
    reserve = request.max_tokens(default)
    if spec.reasoning:
        thinking = spec.thinking(request.params.get("reasoning_effort"))
        if isinstance(thinking, int) and thinking > 0:
            reserve += thinking
    return reserve


def fits(counter: TokenCounter, spec: ModelSpec, request: ChatRequest, bound: int | None = None,
         default_output: int = 0) -> tuple[bool, int]:
    """Whether prompt + requested output (`default_output` when the request names none) fit the model's
    window; returns the prompt count if taken. `bound`: the prompt's `upper_bound`, if known."""
    reserve = output_reserve(spec, request, default_output)
    tools = request.params.get("tools")
    if (upper_bound(request.messages, tools) if bound is None else bound) + reserve <= spec.context_window:
        return True, -1
    prompt = counter.count(request.messages, spec.tokenizer, tools)
    return prompt + reserve <= spec.context_window, prompt
