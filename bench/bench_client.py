"""CPU per request of the upstream HTTP client: the aiohttp-based `Upstream` against the pooled one.

Drives Laneway's ASGI app in process (no HTTP server in front: only the gateway and its upstream
client spend this process's CPU) against `bench/upstream.py`, with `bench/configs/laneway-full.yaml`
(ten routes, three models, metrics and the SQLite exchange log on). Each round runs both clients,
interleaved, `--requests` requests at concurrency `--concurrency` after a warm-up; the report is
the median over rounds of process CPU time per request and of requests per second. Every answer
must be a 200, or the run fails.

Run (from the repository root):
    .venv/bin/python bench/bench_client.py [--rounds 5] [--requests 6000] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

from laneway.config import load_config
from laneway.errors import UpstreamBadResponse, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from laneway.gateway import Gateway
from laneway.providers._base import OverflowTest, Upstream, _error_message
from laneway.server import App
from laneway.telemetry import Telemetry

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "Where is my refund? I returned the item two weeks ago."}]


class AiohttpUpstream(Upstream):
    """The previous `Upstream`: one aiohttp session per model, `asyncio.timeout_at` around every wait."""

    def __init__(self, base: Upstream) -> None:
        super().__init__(base.spec, base.base_url, {})
        self.headers = dict(base.headers)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.spec.max_concurrency, keepalive_timeout=60,
                                             enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self.headers, json_serialize=lambda o: orjson.dumps(o).decode(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.spec.connect_timeout_ms / 1000),
                auto_decompress=True, skip_auto_headers=("User-Agent",))
        return self._session

    async def post_json(self, url: str, body: dict[str, Any], deadline: float,
                        overflow: OverflowTest) -> dict[str, Any]:
        try:
            async with asyncio.timeout_at(deadline), self.session.post(url, data=orjson.dumps(body)) as response:
                payload = await response.read()
                if response.status >= 400:
                    raise self.status_error(response.status, response.headers, payload, overflow)
        except TimeoutError:
            raise self.timeout() from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(str(exc), model=self.spec.name) from None
        decoded: dict[str, Any] = orjson.loads(payload)
        return decoded

    async def open_stream(self, url: str, body: dict[str, Any], deadline: float,  # type: ignore[override]
                          overflow: OverflowTest) -> aiohttp.ClientResponse:
        async with asyncio.timeout_at(deadline):
            response = await self.session.post(url, data=orjson.dumps(body))
        if response.status >= 400:
            raise UpstreamError(_error_message((await response.read()).decode()), model=self.spec.name)
        return response

    async def sse(self, response: aiohttp.ClientResponse, deadline: float,  # type: ignore[override]
                  first: bool = True) -> AsyncIterator[tuple[str, bytes]]:
        loop = asyncio.get_running_loop()
        data: list[bytes] = []
        waiting_first = first
        idle = self.spec.stream_idle_ms / 1000
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline if waiting_first else loop.time() + idle):
                        line = await response.content.readline()
                except TimeoutError:
                    raise UpstreamTimeout("stalled", model=self.spec.name) from None
                if not line:
                    return
                line = line.rstrip(b"\r\n")
                if not line and data:
                    waiting_first = False
                    yield "", b"\n".join(data)
                    data = []
                elif line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamBadResponse(str(exc), model=self.spec.name) from None
        finally:
            response.release()

    async def warm(self) -> None:
        async with self.session.get(self.base_url) as response:
            await response.read()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def drive(app: App, body: bytes, requests: int, concurrency: int) -> list[int]:
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    statuses: list[int] = []

    async def one() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)

    async def worker() -> None:
        for _ in range(requests // concurrency):
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def measure(config_path: Path, client: str, body: bytes, requests: int, concurrency: int) -> tuple[float, float]:
    config = load_config(str(config_path))
    telemetry = Telemetry(config.telemetry)
    await telemetry.start()
    gateway = await Gateway.start(config, telemetry=telemetry)
    if client == "aiohttp":
        for provider in gateway.runtime.providers.values():
            old = provider.upstream  # type: ignore[attr-defined]
            provider.upstream = AiohttpUpstream(old)  # type: ignore[attr-defined]
            await old.aclose()
    app = App(gateway)
    try:
        await drive(app, body, 500, concurrency)
        wall, cpu = time.perf_counter(), time.process_time()
        statuses = await drive(app, body, requests, concurrency)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await gateway.aclose()
        await telemetry.aclose()
    if set(statuses) != {200} or len(statuses) != requests // concurrency * concurrency:
        raise SystemExit(f"{client}: not every answer was a 200: {sorted(set(statuses))}")
    return cpu / len(statuses) * 1e6, len(statuses) / wall


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is taken: stop what listens there or pass another `--port`")
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(port)])
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"bench/upstream.py did not start listening on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--stream", action="store_true", help="streamed requests (SSE) instead of JSON answers")
    args = parser.parse_args()
    body = orjson.dumps({"model": "laneway", "messages": MESSAGES, "stream": args.stream,
                         "metadata": {"priority": "normal", "conversation_id": "c-1"}})
    upstream = start_upstream(args.port)
    results: dict[str, list[tuple[float, float]]] = {"aiohttp": [], "pooled": []}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            text = (ROOT / "bench" / "configs" / "laneway-full.yaml").read_text()
            text = text.replace("127.0.0.1:9001", f"127.0.0.1:{args.port}")
            text = text.replace("sqlite:///var/bench/exchanges.sqlite3", f"sqlite:///{scratch}/exchanges.sqlite3")
            config_path = Path(scratch) / "laneway.yaml"
            config_path.write_text(text)
            for round_ in range(args.rounds):
                for client in ("aiohttp", "pooled") if round_ % 2 == 0 else ("pooled", "aiohttp"):
                    cpu, rate = uvloop.run(measure(config_path, client, body, args.requests, args.concurrency))
                    results[client].append((cpu, rate))
                    print(f"round {round_ + 1} {client:8s} {cpu:6.0f} us CPU/request {rate:7.0f} requests/s",
                          flush=True)
    finally:
        upstream.terminate()
        upstream.wait()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    for client, rows in results.items():
        print(f"median {client:8s} {statistics.median(r[0] for r in rows):6.0f} us CPU/request "
              f"{statistics.median(r[1] for r in rows):7.0f} requests/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
