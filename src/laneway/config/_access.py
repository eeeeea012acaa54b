"""Who may call the gateway: the `keys:` list (or `keys_file:`) and the `admin:` section."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..keys import PERIODS, KeyPolicy, name_problem
from ._reader import Issues, Section

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class AdminSettings:
    key_env: str | None = None  # environment variable holding the admin key
    protect_metrics: bool = False  # also require the admin key for /metrics


def parse_keys(top: Section, base: Path) -> tuple[KeyPolicy, ...]:
    entries: list[tuple[Any, str]] = [(raw, f"keys[{i}]") for i, raw in enumerate(top.items("keys"))]
    file = top.text("keys_file")
    if file is not None:
        entries += _from_file(base / file, top.where("keys_file"), top.issues)
    policies = []
    names: set[str] = set()
    owners: dict[str, str] = {}  # digest -> the key that has it
    for raw, path in entries:
        policy = _key(Section(raw, path, top.issues))
        if policy is None:
            continue
        if policy.name in names:
            top.issues.add(path, f"duplicate key name `{policy.name}`")
        if (owner := owners.get(policy.digest)) is not None:
            # Only one of them could ever answer for the key: the other's routes and limits would not apply.
            top.issues.add(f"{path}.hash", f"the same hash as key `{owner}`; each key needs its own: make one "
                                           f"with `laneway keys new {policy.name}`")
        names.add(policy.name)
        owners.setdefault(policy.digest, policy.name)
        policies.append(policy)
    return tuple(policies)


def _from_file(path: Path, where: str, issues: Issues) -> list[tuple[Any, str]]:
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
    except OSError as exc:
        issues.add(where, f"cannot read keys file `{path}`: {exc.strerror}")
        return []
    except yaml.YAMLError:
        issues.add(where, f"keys file `{path}` is not valid YAML")
        return []
    if not isinstance(raw, list):
        issues.add(where, f"keys file `{path}` must hold a list of keys")
        return []
    return [(entry, f"{path.name}[{i}]") for i, entry in enumerate(raw)]


def _key(s: Section) -> KeyPolicy | None:
    name = s.text("name", required=True)
    problem = None if name is None else name_problem(name)
    if problem:
        s.issues.add(s.where("name"), f"the key name {problem}; name the client the key is for, e.g. `web`")
        name = None
    digest = s.text("hash", required=True)
    if digest is not None and not _DIGEST.match(digest):
        s.issues.add(s.where("hash"), "expected `sha256:<64 hex digits>`; make one with `laneway keys new NAME`")
        digest = None
    routes = s.items("routes") if s.has("routes") else None
    rpm = s.number("requests_per_minute", None, minimum=1, integer=True)
    tpm = s.number("tokens_per_minute", None, minimum=1, integer=True)
    policy = KeyPolicy(
        name=name or "", digest=digest or "",
        routes=frozenset(str(r) for r in routes) if routes is not None else None,
        requests_per_minute=int(rpm) if rpm else None, tokens_per_minute=int(tpm) if tpm else None,
        usd_budget=s.number("usd_budget", None, minimum=0),
        budget_period=s.text("budget_period", "month", choices=tuple(PERIODS)) or "month",
        where=s.path,
    )
    s.done()
    return policy if name and digest else None


def parse_admin(s: Section) -> AdminSettings:
    settings = AdminSettings(s.variable("key_env"), s.flag("protect_metrics", False))
    s.done()
    return settings
