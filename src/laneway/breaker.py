"""Per-model circuit breaker: consecutive failures open it for a cooldown, then one probe decides.

A probe that ends with no verdict on the model's health (the client left, the prompt was too long,
the request malformed, a gate turned it away) frees its slot with `release()`; one that is never
heard of again frees it after a cooldown's length, so that a lost probe cannot keep the model out
for good.

With several replicas, `laneway.state` publishes each opening and makes every replica `hold_open`."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Breaker


@dataclass(slots=True)
class CircuitBreaker:
    policy: Breaker
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False
    probe_since: float = 0.0
    opened: int = 0  # times the breaker opened, for metrics

    def allows(self, now: float) -> bool:
        """Closed: yes. Open: no, until the cooldown ends; then one caller probes (half-open)."""
        if self.open_until == 0.0:
            return True
        if now < self.open_until:
            return False
        if self.probing and now - self.probe_since < self.policy.cooldown_ms / 1000:
            return False
        self.probing, self.probe_since = True, now
        return True

    def release(self) -> None:
        """The probe in flight, if any, ended with no verdict: the next caller probes."""
        self.probing = False

    def hold_open(self, until: float) -> None:
        """Another replica opened this model's breaker: stay open (no probe) until `until`."""
        if until > self.open_until:
            self.open_until = until
            self.probing = False

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.probing = False

    def answering(self) -> None:
        """A stream's first chunk came: the model answers (closed, its probe over), but the failures before
        stand until the stream ends whole (`success`), so that a model that cuts every stream opens it."""
        self.open_until = 0.0
        self.probing = False

    def failure(self, now: float) -> bool:
        """Record a failure; return True when this one opened the breaker."""
        self.failures += 1
        was_probe = self.probing
        self.probing = False
        if was_probe or self.failures >= self.policy.failures:
            self.open_until = now + self.policy.cooldown_ms / 1000
            self.opened += 1
            return True
        return False

    @property
    def closed(self) -> bool:
        """No cooldown running and no probe deciding: calls, retries included, go through."""
        return self.open_until == 0.0

    def state(self, now: float) -> str:
        if self.closed:
            return "closed"
        return "half_open" if now >= self.open_until else "open"
