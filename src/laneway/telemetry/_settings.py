"""The `telemetry:` section of a routing file: strict parsing into frozen settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from laneway.errors import ConfigError, ConfigIssue, port_problem, without_password

DEFAULT_EXCHANGE_LOG = "sqlite:///var/laneway/exchanges.sqlite3"
LOG_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


@dataclass(frozen=True)
class TelemetrySettings:
    """What is measured, where exchanges are logged, and how much the log may hold back."""

    metrics: bool = True
    exchange_log: str | None = DEFAULT_EXCHANGE_LOG
    traces: str | None = None  # OTLP/HTTP endpoint for OpenTelemetry spans; None: off
    store_bodies: bool = False
    body_cap_bytes: int = 4096
    retention_days: int = 30
    buffer_limit: int = 100_000
    batch_size: int = 500
    flush_interval_ms: int = 200
    stats_window: int = 10_000  # most recent exchanges kept in memory for `stats()` and the dashboard
    close_timeout_ms: int = 5_000  # how long `aclose()` keeps retrying a store that is down


_KINDS: dict[str, type] = {f.name: bool if f.type == "bool" else int for f in fields(TelemetrySettings)}
_KINDS["exchange_log"] = str
_KINDS["traces"] = str
_MINIMUMS = {"body_cap_bytes": 0, "retention_days": 1, "close_timeout_ms": 0}
# Bounds on what is held in memory: a window of 1,000,000 exchanges takes about 200 MB.
_MAXIMUMS = {"stats_window": 1_000_000, "buffer_limit": 10_000_000, "batch_size": 100_000,
             "body_cap_bytes": 16 * 1024 * 1024}


def parse_telemetry(raw: object, path: str = "telemetry") -> TelemetrySettings:
    """Validate the raw `telemetry:` mapping; every problem found is reported at once."""
    if raw is None:
        return TelemetrySettings()
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [ConfigIssue(path, "must be a mapping of telemetry settings, e.g. `metrics: true`")]
        )
    issues: list[ConfigIssue] = []
    values: dict[str, Any] = {}
    for key, value in raw.items():
        issue = _check(str(key), value, f"{path}.{key}")
        if issue is None:
            values[str(key)] = value
        else:
            issues.append(issue)
    if issues:
        raise ConfigError(issues)
    return TelemetrySettings(**values)


def _check(key: str, value: object, where: str) -> ConfigIssue | None:
    kind = _KINDS.get(key)
    if kind is None:
        known = ", ".join(f"`{name}`" for name in _KINDS)
        return ConfigIssue(where, f"unknown telemetry setting `{key}`; known: {known}")
    if key == "exchange_log":
        return _check_log_url(value, where)
    if key == "traces":
        if value is None or (isinstance(value, str) and value.startswith(("http://", "https://"))):
            return None
        return ConfigIssue(where, "must be the OTLP/HTTP traces endpoint, e.g. `http://collector:4318/v1/traces`")
    if kind is bool:
        return None if isinstance(value, bool) else ConfigIssue(where, "must be `true` or `false`")
    if not isinstance(value, int) or isinstance(value, bool):
        return ConfigIssue(where, f"must be a whole number, got `{value!r}`")
    minimum = _MINIMUMS.get(key, 1)
    if value < minimum:
        return ConfigIssue(where, f"must be at least {minimum}, got {value}")
    maximum = _MAXIMUMS.get(key)
    if maximum is not None and value > maximum:
        return ConfigIssue(where, f"must be at most {maximum:,}, got {value:,}")
    return None


def _check_log_url(value: object, where: str) -> ConfigIssue | None:
    if value is None:
        return None
    if isinstance(value, str) and value.startswith("sqlite:///"):
        path = value.removeprefix("sqlite:///")
        if path.rstrip("/") and not path.endswith("/"):
            return None
        return ConfigIssue(where, f"`{value}` names no file; use `sqlite:///relative/log.sqlite3` or "
                                  "`sqlite:////absolute/log.sqlite3`")
    if isinstance(value, str) and value.startswith(LOG_SCHEMES):
        problem = port_problem(value)
        return None if problem is None else ConfigIssue(where, f"`{without_password(value)}` {problem}")
    return ConfigIssue(
        where,
        f"`{without_password(value) if isinstance(value, str) else repr(value)}` is not an exchange log URL; use "
        "`sqlite:///path/to/file.sqlite3`, "
        "`postgresql://user@host:port/db`, or `null` to turn the log off",
    )
