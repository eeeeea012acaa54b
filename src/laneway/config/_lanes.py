"""The optional parts of a route's plan: canary, shadow, cascade and retrieval; and the `knowledge:`
and `intents:` sections they refer to. Parsed into frozen objects; cross-checked at load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._reader import Issues, Section

CONFIDENCE_SOURCES = ("logprobs", "self_report", "verifier")
# Wire formats that return token log-probabilities.
LOGPROB_PROVIDERS = ("openai", "gemini")
RETRIEVAL_STYLES = ("system", "user")
MIN_CHUNK_TOKENS = 16  # words; shorter passages carry too few words to rank by


CACHE_TTL_MAX_S = 30 * 86_400  # a cached answer kept longer than a month is a mistake in the file

@dataclass(frozen=True, slots=True)
class Canary:
    target: str
    weight: float  # share of sticky keys sent to `target`, in [0, 1]


@dataclass(frozen=True, slots=True)
class Shadow:
    target: str
    sample: float  # share of requests (by request id) also sent to `target`


@dataclass(frozen=True, slots=True)
class Cascade:
    confidence: float  # answers under this confidence are escalated
    source: str  # logprobs | self_report | verifier
    escalate_to: str
    verifier: str | None = None


@dataclass(frozen=True, slots=True)
class Retrieval:
    knowledge: str
    top_k: int = 3
    min_score: float = 0.0
    style: str = "system"
    on_miss: str | None = None  # model to send to when nothing relevant is found


CACHE_MODES = ("on", "read_only", "write_only", "off")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    mode: str = "off"  # on | read_only | write_only | off
    ttl_s: float = 300.0
    allow_temperature: bool = False  # also cache sampled answers (temperature above 0, or unset)

    @property
    def reads(self) -> bool:
        return self.mode in ("on", "read_only")

    @property
    def writes(self) -> bool:
        return self.mode in ("on", "write_only")


@dataclass(frozen=True, slots=True)
class KnowledgeSource:
    name: str
    sources: tuple[Path, ...] = ()
    index: Path | None = None  # a prebuilt index (`laneway knowledge build`)
    chunk_tokens: int = 400


@dataclass(frozen=True, slots=True)
class IntentSettings:
    model: Path | None = None  # None: the shipped customer-support model


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    targets: tuple[Shadow, ...] = ()  # global shadows, added to every route's own
    queue: int = 1000  # pending shadow calls; past it they are dropped and counted
    concurrency: int = 8
    usd_per_hour: float = 5.0  # spend cap for shadow calls


def fraction(s: Section, key: str, default: float | None = None) -> float | None:
    value = s.number(key, default, minimum=0)
    if value is not None and value > 1:
        s.issues.add(s.where(key), f"must be a fraction between 0 and 1, got {value!r}")
        return default
    return value


def parse_canaries(raw: Any, s: Section) -> list[tuple[str, float, str]]:
    """(target, weight, path) triples; a mapping or a list of mappings."""
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for i, item in enumerate(items):
        path = s.where("canary") + (f"[{i}]" if isinstance(raw, list) else "")
        entry = Section(item, path, s.issues)
        target = entry.text("target", required=True)
        weight = fraction(entry, "weight")
        if weight is None and not entry.has("weight"):  # a bad value has its own error
            s.issues.add(path, "missing `weight`, e.g. `weight: 0.05` for 5 % of conversations")
        entry.done()
        if target and weight is not None:
            out.append((target, weight, path + ".target"))
    if sum(w for _, w, _ in out) > 1:
        s.issues.add(s.where("canary"), "canary weights add up to more than 1")
    return out


def parse_shadows(raw: list[Any], path: str, issues: Issues) -> list[tuple[str, float, str]]:
    out = []
    for i, item in enumerate(raw):
        entry = Section(item, f"{path}[{i}]", issues)
        target = entry.text("target", required=True)
        sample = fraction(entry, "sample", 1.0)
        entry.done()
        if target:
            out.append((target, sample or 0.0, f"{path}[{i}].target"))
    return out


def parse_cascade(s: Section) -> tuple[float, str, str | None, str | None]:
    confidence = fraction(s, "confidence")
    if confidence is None and not s.has("confidence"):  # a bad value has its own error
        s.issues.add(s.path, "missing `confidence`: answers under this threshold are escalated, e.g. 0.7")
    source = s.text("source", "logprobs", choices=CONFIDENCE_SOURCES) or "logprobs"
    escalate_to = s.text("escalate_to", required=True)
    verifier = s.text("verifier")
    if source == "verifier" and verifier is None:
        s.issues.add(s.path, "`source: verifier` needs `verifier:`, the model that grades answers")
    elif source != "verifier" and verifier is not None:
        s.issues.add(s.where("verifier"), f"a verifier grades answers only with `source: verifier`; with "
                     f"`source: {source}` it is never called. Set `source: verifier` or remove `verifier`",
                     severity="warning")
    s.done()
    return confidence or 0.0, source, escalate_to, verifier


def parse_retrieval(s: Section) -> Retrieval | None:
    knowledge = s.text("knowledge", required=True)
    retrieval = Retrieval(
        knowledge=knowledge or "",
        top_k=s.whole("top_k", 3, minimum=1),
        min_score=s.number("min_score", 0.0, minimum=0) or 0.0,
        style=s.text("style", "system", choices=RETRIEVAL_STYLES) or "system",
        on_miss=s.text("on_miss"),
    )
    s.done()
    return retrieval if knowledge else None


def parse_knowledge(s: Section, base: Path) -> dict[str, KnowledgeSource]:
    out: dict[str, KnowledgeSource] = {}
    for name in list(s.raw):
        entry = s.section(str(name))
        sources = tuple(base / str(p) for p in entry.items("sources"))
        index = entry.text("index")
        if not sources and index is None:
            entry.issues.add(entry.path, "give `sources:` (Markdown, JSON or CSV files) or `index:` (a built index)")
        elif sources and index is not None:
            # Both would leave an edited source silently unread behind the index.
            entry.issues.add(entry.path, "give either `sources:` (indexed at start-up) or `index:` (built by "
                             "`laneway knowledge build`), not both")
        for i, path in enumerate(sources):
            if not path.exists():
                entry.issues.add(f"{entry.where('sources')}[{i}]", f"no such file `{path}`")
        out[str(name)] = KnowledgeSource(str(name), sources, base / index if index else None,
                                         entry.whole("chunk_tokens", 400, minimum=MIN_CHUNK_TOKENS))
        entry.done()
    return out


def parse_intents(s: Section, base: Path) -> IntentSettings:
    model = s.text("model")
    s.done()
    if model is not None and not (base / model).exists():
        s.issues.add(s.where("model"), f"no intent model at `{base / model}`; train one with `laneway intents train`")
    return IntentSettings(base / model if model else None)


# Each shadow worker is a task, made when the first copy is queued: 300,000 of them took 1.7 s of the
# first request's time and 350 MB.
SHADOW_CONCURRENCY_MAX = 1024
SHADOW_QUEUE_MAX = 1_000_000


def parse_shadow_settings(s: Section) -> tuple[list[tuple[str, float, str]], int, int, float]:
    targets = parse_shadows(s.items("targets"), s.where("targets"), s.issues)
    queue = s.whole("queue", 1000, minimum=1, maximum=SHADOW_QUEUE_MAX)
    concurrency = s.whole("concurrency", 8, minimum=1, maximum=SHADOW_CONCURRENCY_MAX)
    spend = s.number("usd_per_hour", 5.0, minimum=0) or 0.0
    s.done()
    return targets, queue, concurrency, spend


def parse_cache(s: Section) -> CacheSettings:
    raw = s.raw.get("mode")
    if isinstance(raw, bool):  # YAML reads a bare `on` / `off` as a boolean
        s.raw["mode"] = "on" if raw else "off"
    settings = CacheSettings(
        mode=s.text("mode", "on", choices=CACHE_MODES) or "on",
        ttl_s=s.number("ttl_s", 300.0, minimum=1, maximum=CACHE_TTL_MAX_S) or 300.0,
        allow_temperature=s.flag("allow_temperature", False),
    )
    s.done()
    return settings
