"""The simulated fleet's models and their latency law (see fleet.yaml for the law and the numbers)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, ConfigIssue, not_utf8


@dataclass(frozen=True, slots=True)
class LatencyLaw:
    ttft_base: float
    ttft_per_ktok: float
    ttft_per_ktok2: float
    decode_ms_per_token: float
    batch_penalty: float
    jitter: float

    def ttft_ms(self, prompt_tokens: int, busy: float, rng: random.Random) -> float:
        k = prompt_tokens / 1000
        base = self.ttft_base + self.ttft_per_ktok * k + self.ttft_per_ktok2 * k * k
        return base * (1 + self.batch_penalty * busy) * self._jitter(rng)

    def decode_ms(self, tokens: int, busy: float, rng: random.Random) -> float:
        return self.decode_ms_per_token * tokens * (1 + self.batch_penalty * busy) * self._jitter(rng)

    def _jitter(self, rng: random.Random) -> float:
        return math.exp(rng.gauss(0.0, self.jitter)) if self.jitter else 1.0


@dataclass(frozen=True, slots=True)
class SimModel:
    name: str
    context_window: int
    slots: int
    queue_limit: int
    law: LatencyLaw
    output_mean: float
    output_sd: float
    overflow: str  # "error" or "stall"
    overflow_stall_ms: float
    logprob_reliability: float
    quality: float  # share of answers that are good, for cascade experiments
    cassette: str | None = None  # "strong" or "weak": which recorded real outputs it answers known prompts with

    def output_tokens(self, rng: random.Random, cap: int) -> tuple[int, bool]:
        wanted = max(8, round(rng.gauss(self.output_mean, self.output_sd)))
        return (cap, True) if wanted > cap else (wanted, False)


def load_fleet(path: str | None = None) -> dict[str, SimModel]:
    if path is None:
        text = resources.files("laneway.sim").joinpath("fleet.yaml").read_text("utf-8")
        source = "<built-in fleet>"
    else:
        source = path
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise _fleet_error("", f"cannot read the fleet file: {exc.strerror or exc}", source) from None
        except UnicodeDecodeError as exc:
            raise _fleet_error("", f"cannot read the fleet file: {not_utf8(exc)}", source) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise _fleet_error("", f"not valid YAML: {getattr(exc, 'problem', None) or exc}{where}", source) from None
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict) or not models:
        raise _fleet_error("models", "expected a mapping of model names to their laws; see the built-in fleet "
                                     "(laneway/sim/fleet.yaml) for the shape", source)
    fleet = {}
    for name, entry in models.items():
        try:
            fleet[str(name)] = model = _model(str(name), entry)
        except KeyError as exc:
            raise _fleet_error(f"models.{name}", f"missing `{exc.args[0]}`; see the built-in fleet "
                                                 "(laneway/sim/fleet.yaml) for the shape", source) from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise _fleet_error(f"models.{name}", f"invalid entry ({exc}); see the built-in fleet "
                                                 "(laneway/sim/fleet.yaml) for the shape", source) from None
        if (problem := _out_of_range(model)) is not None:
            raise _fleet_error(f"models.{name}.{problem[0]}", problem[1], source)
    return fleet


def _out_of_range(model: SimModel) -> tuple[str, str] | None:
    """The first value of `model` no fleet could run with, and what it must be: `slots: 0` answered every
    request with a timeout, and `overflow: stal` ran as `error`."""
    law = model.law
    checks = (
        ("context_window", model.context_window >= 1, "a whole number of tokens, at least 1"),
        ("slots", model.slots >= 1, "a whole number, at least 1 (calls served at once)"),
        ("queue_limit", model.queue_limit >= 0, "a whole number, at least 0"),
        ("overflow", model.overflow in ("error", "stall"), "`error` or `stall`"),
        ("overflow_stall_ms", model.overflow_stall_ms >= 0, "at least 0"),
        ("ttft", law.ttft_base >= 0 and law.ttft_per_ktok >= 0 and law.ttft_per_ktok2 >= 0,
         "`base`, `per_ktok` and `per_ktok2` at least 0"),
        ("decode_ms_per_token", law.decode_ms_per_token >= 0, "at least 0"),
        ("batch_penalty", law.batch_penalty >= 0, "at least 0"),
        ("jitter", law.jitter >= 0, "at least 0"),
        ("output_tokens", model.output_mean > 0 and model.output_sd >= 0, "`mean` above 0 and `sd` at least 0"),
        ("logprob_reliability", 0 <= model.logprob_reliability <= 1, "a fraction from 0 to 1"),
        ("quality", 0 <= model.quality <= 1, "a fraction from 0 to 1"),
        ("cassette", model.cassette in (None, "strong", "weak"), "`strong` or `weak`"),
    )
    return next(((key, f"must be {what}") for key, ok, what in checks if not ok), None)


def _fleet_error(path: str, message: str, source: str) -> ConfigError:
    return ConfigError([ConfigIssue(path, message)], source, subject="fleet file")


def _model(name: str, e: dict[str, Any]) -> SimModel:
    ttft = e["ttft"]
    out = e.get("output_tokens", {})
    law = LatencyLaw(float(ttft["base"]), float(ttft.get("per_ktok", 0)), float(ttft.get("per_ktok2", 0)),
                     float(e["decode_ms_per_token"]), float(e.get("batch_penalty", 0)), float(e.get("jitter", 0)))
    return SimModel(
        name=name, context_window=int(e["context_window"]), slots=int(e["slots"]),
        queue_limit=int(e.get("queue_limit", 1024)), law=law,
        output_mean=float(out.get("mean", 100)), output_sd=float(out.get("sd", 30)),
        overflow=str(e.get("overflow", "error")), overflow_stall_ms=float(e.get("overflow_stall_ms", 0)),
        logprob_reliability=float(e.get("logprob_reliability", 0.0)), quality=float(e.get("quality", 0.85)),
        cassette=e.get("cassette"),
    )
