"""Frozen runtime objects built once from a routing file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigIssue
from ..gate import GatePolicy
from ..keys import KeyPolicy
from ..telemetry import TelemetrySettings
from ._access import AdminSettings
from ._gate import Priorities, default_priorities
from ._lanes import CacheSettings, Canary, Cascade, IntentSettings, KnowledgeSource, Retrieval, Shadow, ShadowSettings
from ._matcher import Matcher

DEFAULT_DEADLINE_MS = 5000
SYSTEM_MODES = ("prepend", "replace", "keep")
TOKENIZERS = ("cl100k_base", "approx")
GEMINI_THINKING_LEVELS = ("minimal", "low", "medium", "high")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. Prompt tokens the provider read from its prompt cache, or wrote to it,
    have prices of their own; without one they cost `input_per_mtok`."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
             cache_write_tokens: int = 0) -> float:
        """`prompt_tokens` includes `cached_tokens` and `cache_write_tokens`, as providers report them."""
        fresh = prompt_tokens - cached_tokens - cache_write_tokens
        cached = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        write = self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        return (fresh * self.input_per_mtok + cached_tokens * cached + cache_write_tokens * write
                + completion_tokens * self.output_per_mtok) / 1_000_000


@dataclass(frozen=True, slots=True)
class Profile:
    """How a model is prompted: system prompt, sampling and length defaults."""

    system: str | None = None
    system_mode: str = "prepend"  # prepend | replace | keep
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    max_tokens: int | None = None

    def sampling(self) -> dict[str, Any]:
        names = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "max_tokens")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True, slots=True)
class Breaker:
    failures: int = 5  # consecutive failures that open the breaker
    cooldown_ms: int = 10_000


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    provider: str
    base_url: str
    model: str  # the upstream's model id
    api_key_env: str | None = None
    context_window: int = 128_000
    price: Price = Price()
    deadline_ms: int | None = None
    max_concurrency: int = 64
    connect_timeout_ms: int = 1000
    stream_idle_ms: int = 10_000  # once streaming, the longest gap between two chunks
    tokenizer: str = "cl100k_base"  # "approx" for providers whose tokenizer is not public
    direct: bool = True  # may be addressed directly by the request's `model` field
    breaker: Breaker = Breaker()
    profile: Profile = Profile()
    max_response_bytes: int = 8 * 1024 * 1024
    gate: GatePolicy | None = None
    warmup: bool = False  # send one tiny request at start-up so the first real one is not slow
    prompt_cache: bool = False  # anthropic: mark the system prompt for the provider's prompt cache
    # anthropic, gemini: `reasoning_effort` -> a thinking budget in tokens (or a Gemini thinking level)
    reasoning: tuple[tuple[str, int | str], ...] = ()

    @property
    def simulated(self) -> bool:
        return self.base_url.startswith("sim://")

    def thinking(self, effort: object) -> int | str | None:
        """What `reasoning_effort: effort` becomes for this model; None when `reasoning:` does not say."""
        return next((value for name, value in self.reasoning if name == effort), None)

    def temperature(self, params: Mapping[str, Any]) -> float | None:
        """The temperature this model answers `params` at; None for the API's default: none set, or
        Anthropic's extended thinking, which takes none (the adapter leaves it out)."""
        if self.provider == "anthropic" and self.reasoning:
            budget = self.thinking(params.get("reasoning_effort"))
            if isinstance(budget, int) and budget > 0:
                return None
        temperature = params.get("temperature", self.profile.temperature)
        return None if temperature is None else float(temperature)


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 2  # tries per model, the first included
    backoff_ms: int = 50  # base of the jittered exponential backoff


TRIM_POLICIES = ("none", "oldest")


@dataclass(frozen=True, slots=True)
class Route:
    index: int
    name: str
    path: str
    matcher: Matcher
    target: str
    fallbacks: tuple[str, ...] = ()
    long_context: str | None = None
    deadline_ms: int | None = None
    retry: Retry = Retry()
    has_matcher: bool = True
    canaries: tuple[Canary, ...] = ()
    shadows: tuple[Shadow, ...] = ()
    cascade: Cascade | None = None
    retrieval: Retrieval | None = None
    cache: CacheSettings = field(default_factory=CacheSettings)
    trim: str = "none"  # none | oldest: what to do with a conversation a model's window cannot hold

    def matches_path(self, path: str) -> bool:
        base = self.path.rstrip("/")  # `/v1/chat/completions/` serves `/v1/chat/completions`
        return path == base or path.startswith(base + "/")


# Names of the route table besides `server.table`: a request naming one is routed by the table.
TABLE_ALIASES = ("auto",)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    table: str = "laneway"  # the `model` value that means "route by the table"
    max_body_bytes: int = 20 * 1024 * 1024  # a chat carrying a photo as a `data:` URL fits, as OpenAI's 20 MB
    deadline_ms: int = DEFAULT_DEADLINE_MS
    max_messages: int = 2048
    cache_entries: int = 10_000  # bound of the in-memory response cache
    # How long a stopping server lets requests in flight finish (a long stream) before it cuts them,
    # recorded as such: under the 30 s a container orchestrator grants before it kills the process.
    shutdown_grace_ms: int = 25_000
    # A connection is closed after this without a request, and a request whose head or body stops arriving
    # for as long gets a 408. Read at start, as is the next.
    keep_alive_ms: int = 30_000
    # A request must arrive whole within this of its first byte (408): a body trickled a byte every few
    # seconds never stops for `keep_alive_ms`.
    read_timeout_ms: int = 300_000


@dataclass(frozen=True, slots=True)
class SimSettings:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    fleet: str | None = None  # path of a fleet file; None: the built-in one
    seed: int = 7


@dataclass(frozen=True)
class Config:
    models: Mapping[str, ModelSpec]
    routes: tuple[Route, ...]
    server: ServerSettings = ServerSettings()
    sim: SimSettings = SimSettings()
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    source: str = "<built-in>"
    warnings: tuple[ConfigIssue, ...] = ()
    signals_used: frozenset[str] = field(default_factory=frozenset)
    knowledge: Mapping[str, KnowledgeSource] = field(default_factory=dict)
    intents: IntentSettings = field(default_factory=IntentSettings)
    shadow: ShadowSettings = field(default_factory=ShadowSettings)
    priorities: Priorities = field(default_factory=default_priorities)
    state: str | None = None  # redis://HOST:PORT/DB: gates, budgets, cooldowns and cache shared by replicas
    keys: tuple[KeyPolicy, ...] = ()
    admin: AdminSettings = field(default_factory=AdminSettings)
    text: str = field(default="", repr=False, compare=False)  # the routing file as it was read

    @property
    def simulated(self) -> bool:
        return any(m.simulated for m in self.models.values())

    def deadline_ms(self, route: Route | None, model: ModelSpec) -> int:
        if route is not None and route.deadline_ms is not None:
            return route.deadline_ms
        return model.deadline_ms or self.server.deadline_ms
