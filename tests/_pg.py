"""Shared fixtures of the telemetry tests: exchanges, metric and report readers, a throwaway PostgreSQL.

`postgres_server()` starts a private cluster (initdb + pg_ctl from /usr/lib/postgresql/*/bin) in a
temporary directory on a free loopback port, as the `postgres` user when run as root, unless
`LANEWAY_TEST_POSTGRES_DSN` names a server to use instead. An outage is a real `pg_ctl stop`;
with an external server it is simulated by severing a loopback proxy in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from laneway.exchange import Attempt, Exchange
from laneway.telemetry import Telemetry, TelemetrySettings, add_commands
from laneway.telemetry._summary import summarize
from laneway.telemetry._window import rows_of

# Yesterday 00:00 UTC: recent enough that no retention period has passed, fixed within a day.
BASE_TIME = time.time() // 86_400 * 86_400 - 86_400
MODELS = ("claude-sonnet-37", "heavy-foundation", "gemini-2.5-flash-lite")
ROUTES = ("chat-short", "chat-long")


# Two attempts with a value of its own in every field, for reading attempts back from a log.
EVERY_FIELD_ATTEMPTS = (
    Attempt("m-a", "upstream_unavailable", 40.5, None, 120, 0, 0.0, "connection refused", 503, "canary", 0, 0),
    Attempt("m-b", "ok", 800.25, 95.5, 130, 42, 0.0021, "", 200, "fallback", 64, 2),
)


def make_exchange(i: int, *, started_at: float = BASE_TIME, escalation: bool | None = None) -> Exchange:
    """A varied, deterministic exchange: some fallbacks, timeouts and escalations."""
    model = MODELS[i % len(MODELS)]
    attempts = []
    if i % 7 == 0:
        attempts.append(
            Attempt(
                model=MODELS[(i + 1) % 3],
                outcome="upstream_unavailable",
                latency_ms=40.0,
                error="connection refused",
            )
        )
    timed_out = i % 11 == 0
    prompt, completion = 200 + i % 50, 0 if timed_out else 40 + i % 30
    cost = (prompt * 3 + completion * 15) / 1e6
    attempts.append(
        Attempt(
            model=model,
            outcome="model_inference_deadline_exceeded" if timed_out else "ok",
            latency_ms=100.0 + (i * 37) % 900,
            ttft_ms=50.0 + (i * 13) % 300,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
        )
    )
    return Exchange(
        request_id=f"req-{i}",
        started_at=started_at + i * 0.5,
        conversation_id=f"conv-{i % 40}" if i % 5 else None,
        route=ROUTES[i % 2],
        lane="fallback" if len(attempts) > 1 else "primary",
        model=model,
        status=504 if timed_out else 200,
        outcome="model_inference_deadline_exceeded" if timed_out else "ok",
        latency_ms=120.0 + (i * 37) % 900 + (i % 13) * 0.25,
        ttft_ms=None if i % 4 == 0 else 55.0 + (i * 13) % 300,
        upstream_ms=100.0 + (i * 37) % 900,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=cost,
        attempts=attempts,
        signals={"escalation": (i % 3 == 0) if escalation is None else escalation, "priority": "normal"},
    )


def cascaded_exchange(i: int, *, started_at: float = BASE_TIME) -> Exchange:
    """A cascade escalated: the cheap model's first answer is billed to it, the answer to the strong one."""
    return Exchange(f"cascade-{i}", started_at + i * 0.5, route=ROUTES[i % 2], lane="cascade", model=MODELS[1],
                    cost_usd=0.06, prompt_tokens=100, completion_tokens=20,
                    attempts=[Attempt(MODELS[0], "ok", cost_usd=0.01, prompt_tokens=80, completion_tokens=30),
                              Attempt(MODELS[1], "ok", cost_usd=0.05, lane="cascade", prompt_tokens=100,
                                      completion_tokens=20)])


SKIPPED_MODEL = "small-window"


def long_context_exchange(i: int, *, started_at: float = BASE_TIME) -> Exchange:
    """A prompt too long for the target, answered by the long-context model: the skipped attempt keeps the
    prompt's count (why it was skipped), which nobody billed."""
    return Exchange(f"long-{i}", started_at + i * 0.5, route=ROUTES[0], lane="fallback", model=MODELS[2],
                    cost_usd=0.02, prompt_tokens=9000, completion_tokens=40,
                    attempts=[Attempt(SKIPPED_MODEL, "skipped", prompt_tokens=9000,
                                      error="context_window: 9000 tokens > 8192"),
                              Attempt(MODELS[2], "ok", lane="fallback", cost_usd=0.02, prompt_tokens=9000,
                                      completion_tokens=40)])


async def log_and_roll_up_mixed_exchanges(settings: TelemetrySettings) -> dict[str, Any]:
    """Log 40-day-old exchanges (failovers, timeouts, cascades) to `settings`' store and roll every one of
    them up; their summary as the raw rows give it, to compare with the report afterwards."""
    now = BASE_TIME + 86_400
    old = now - 40 * 86_400
    exchanges = [make_exchange(i, started_at=old + i * 40) for i in range(300)]
    for i, exchange in enumerate(exchanges[::3]):  # a third on a retrieval route: hits and misses
        exchange.retrieval_hits, exchange.retrieval_ms = 3 * (i % 2), 1.5
    exchanges += [cascaded_exchange(i, started_at=old + i * 300) for i in range(30)]
    exchanges += [long_context_exchange(i, started_at=old + i * 500) for i in range(10)]
    raw = summarize(rows_of(exchanges, False))
    assert SKIPPED_MODEL not in raw["models"]  # sent nothing, billed nothing, failed nothing
    assert raw["total"]["failed_attempts"] > 0 and raw["models"][MODELS[0]]["cost_usd"] > 0
    assert raw["total"]["retrievals"] == 100 and 0 < raw["total"]["retrieval_hit_rate"] < 1
    telemetry = Telemetry(replace(settings, retention_days=30))
    await telemetry.start()
    for exchange in exchanges:
        telemetry.record(exchange)
    assert await telemetry.roll_up(now) == len(exchanges)
    await telemetry.aclose()
    return raw


ROLLED_UP_FIGURES = ("requests", "errors", "timeouts", "tokens_in", "tokens_out", "fallbacks", "failed_attempts",
                     "retrievals", "retrieval_hit_rate")


def assert_same_counts(before: dict[str, Any], after: dict[str, Any]) -> None:
    """The figures hourly roll-ups keep are the same in both summaries: totals, per model, per route."""
    for part in ("models", "routes"):
        assert set(before[part]) == set(after[part]), part
    for part, name in [("total", None), *((p, n) for p in ("models", "routes") for n in before[p])]:
        one, other = (before[part], after[part]) if name is None else (before[part][name], after[part][name])
        assert {k: one[k] for k in ROLLED_UP_FIGURES} == {k: other[k] for k in ROLLED_UP_FIGURES}, (part, name)
        assert one["cost_usd"] == pytest.approx(other["cost_usd"], abs=1e-6), (part, name)


SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


def samples(text: bytes) -> list[tuple[str, dict[str, str], float]]:
    found = []
    for line in text.decode().splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        found.append((match["name"], labels, float(match["value"])))
    return found


def total(text: bytes, name: str, **want: str) -> float:
    return sum(
        v for n, labels, v in samples(text) if n == name and all(labels.get(k) == w for k, w in want.items())
    )


def report(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="laneway")
    add_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(["report", *argv])
    code: int = args.func(args)
    return code


def sqlite_settings(tmp_path: Path, **changes: object) -> TelemetrySettings:
    return TelemetrySettings(exchange_log=f"sqlite:///{tmp_path}/log.sqlite3", **changes)  # type: ignore[arg-type]


def count_rows(tmp_path: Path, sql: str = "SELECT count(*) FROM exchanges") -> int:
    with sqlite3.connect(tmp_path / "log.sqlite3") as db:
        value: int = db.execute(sql).fetchone()[0]
    return value


def odd_exchanges() -> list[Exchange]:
    """Exchanges whose optional fields are absent, zero or present: what the log's NULL stand-ins must
    survive. The first has no attempt at all (rejected before any call)."""
    bare = Exchange("odd-0", BASE_TIME, route=None, model=None, status=429, outcome="rate_limited")
    full = make_exchange(3, escalation=True)
    full.cascade_confidence, full.retrieval_hits, full.retrieval_ms, full.api_key = 0.0, 0, 0.0, "team-a"
    full.stream, full.ttft_ms = True, 0.0
    shadow = Exchange("odd-2/shadow/x", BASE_TIME + 1, route="r", lane="shadow", model="x", latency_ms=5.0,
                      attempts=[Attempt("x", "ok", lane="shadow")], signals={"shadow_of": "odd-2", "n": 1})
    return [bare, full, shadow, make_exchange(5), make_exchange(7)]


async def report_to(path: Path, *argv: str) -> int:
    """Run `laneway report` (which runs its own event loop) in a thread, its output into `path`."""

    def run() -> int:
        with path.open("w") as sink, contextlib.redirect_stdout(sink):
            return report(*argv)

    return await asyncio.to_thread(run)


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Cluster:
    """A private PostgreSQL cluster controlled with pg_ctl."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql")
        self.bin = Path(found[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="laneway-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_user:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "laneway", "--no-sync")
        self.dsn = f"postgresql://laneway@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as_user, str(self.bin / tool), *args], check=True, capture_output=True, timeout=60
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def freeze(self, frozen: bool) -> None:
        """Stop (or resume) every server process: connections stay open, nothing answers."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        for pid in [postmaster, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class _Proxy:
    """A loopback TCP relay in front of an external server; `stop()` severs every connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = _free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()
        self._flowing.set()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        assert self._listener is not None
        # Closing alone would not wake the thread blocked in accept(); shutting down does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def freeze(self, frozen: bool) -> None:
        """Hold (or let through) every byte: connections stay open, nothing answers."""
        if frozen:
            self._flowing.clear()
        else:
            self._flowing.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class PostgresServer:
    """A server tests may stop and start; `database()` gives each test a fresh database."""

    def __init__(self, admin_dsn: str, control: _Cluster | _Proxy) -> None:
        self.admin_dsn = admin_dsn
        self.control = control

    def stop(self) -> None:
        self.control.stop()

    def start(self) -> None:
        self.control.start()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The server keeps its connections but answers nothing, as a stopped or locked-up one does."""
        self.control.freeze(True)
        try:
            yield
        finally:
            self.control.freeze(False)

    async def database(self) -> str:
        """A new, empty database on the server; its DSN."""
        import asyncpg  # type: ignore[import-untyped]

        name = f"laneway_{uuid.uuid4().hex[:12]}"
        db = await asyncpg.connect(self.admin_dsn)
        try:
            await db.execute(f'CREATE DATABASE "{name}"')
        finally:
            await db.close()
        return urlunsplit(urlsplit(self.admin_dsn)._replace(path=f"/{name}"))


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    external = os.environ.get("LANEWAY_TEST_POSTGRES_DSN")
    if external:
        parts = urlsplit(external)
        proxy = _Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        proxy.start()
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        yield PostgresServer(urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{proxy.port}")), proxy)
        proxy.stop()
        return
    cluster = _Cluster()
    try:
        cluster.start()
        yield PostgresServer(cluster.dsn, cluster)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()
        cluster.remove()
