"""A real gateway on a loopback port, run in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from laneway.config import parse_config
from laneway.exchange import Exchange
from laneway.gateway import Gateway
from laneway.server import App
from laneway.server._http11 import HttpServer

# One model per wire format on the simulated fleet: OpenAI, Anthropic, Gemini.
WIRE_MODELS = (("gpt-5-mini", "openai", "sim:///gpt-5-mini/v1"),
               ("claude-sonnet-37", "anthropic", "sim:///claude-sonnet-37"),
               ("gemini-2.5-flash-lite", "gemini", "sim:///gemini-2.5-flash-lite"))
WIRE_MODEL_NAMES = [name for name, _, _ in WIRE_MODELS]  # OpenAI, Anthropic, Gemini wires


def wire_models_yaml() -> str:
    """The `models:` entries of `WIRE_MODELS`, each priced alike, for a routing file's `models:` section."""
    return "".join(f"""  {name}:
    provider: {provider}
    base_url: {base}
    model: {name}
    context_window: 100000
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
""" for name, provider, base in WIRE_MODELS)


class RecordingSink:
    """A telemetry sink that keeps every exchange and event, for assertions."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.events: list[tuple[str, str]] = []
        self.queue_waits: list[tuple[str, float]] = []  # (model, seconds) per wait at a gate, admitted or not

    def record(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)

    def count(self, event: str, model: str, n: int = 1) -> None:
        self.events.append((event, model))

    def observe_queue_wait(self, model: str, seconds: float) -> None:
        self.events.append(("queue_wait", model))
        self.queue_waits.append((model, seconds))

    def by_id(self, request_id: str) -> Exchange:
        found = [e for e in self.exchanges if e.request_id == request_id]
        assert len(found) == 1, f"{len(found)} exchanges recorded for {request_id}"
        return found[0]


class LiveGateway:
    def __init__(self, config_text: str, sim_url: str | None, config_path: Path | None = None,
                 telemetry: Any = None, server: str = "laneway") -> None:
        """`server` is `laneway` (the HTTP server `laneway serve` runs) or `uvicorn` (any ASGI server)."""
        self.config_text = config_text
        self.config_path = config_path
        self.sim_url = sim_url
        self.telemetry = telemetry
        self.loop = asyncio.new_event_loop()
        self.gateway: Gateway | None = None
        self.server_kind = server
        self.server: HttpServer | uvicorn.Server | None = None
        self.port = 0
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveGateway:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced to the test through start()
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        config = parse_config(self.config_text, str(self.config_path or "<test>"))
        self.gateway = await Gateway.start(config, config_path=self.config_path, sim_url=self.sim_url,
                                           telemetry=self.telemetry)
        app = App(self.gateway)
        if self.server_kind == "uvicorn":
            uvi = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, loop="none", lifespan="on",
                                                log_level="warning", access_log=False, proxy_headers=False))
            uvi.install_signal_handlers = lambda: None  # type: ignore[method-assign]
            self.server = uvi
            await self._until_stopped(uvi.serve(), lambda: uvi.started,
                                      lambda: uvi.servers[0].sockets[0].getsockname()[1])
        else:
            ours = HttpServer(app, "127.0.0.1", 0, handle_signals=False)
            self.server = ours
            await self._until_stopped(ours.serve(), lambda: ours.started, lambda: ours.bound_ports[0])

    async def _until_stopped(self, serving: Any, started: Any, port: Any) -> None:
        """Runs `serving`; once `started()`, publishes `port()` to the test, then waits for the stop."""
        task = asyncio.create_task(serving)
        while not started():
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        self.port = port()
        self._started.set()
        await task

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the gateway's loop (e.g. to inspect or reload it)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if isinstance(self.server, HttpServer):
            self.loop.call_soon_threadsafe(self.server.exit)
        elif self.server is not None:
            self.server.should_exit = True
        self._thread.join(30)


@contextmanager
def live_gateway(config_text: str, sim_url: str | None, **kwargs: Any) -> Iterator[LiveGateway]:
    live = LiveGateway(config_text, sim_url, **kwargs).start()
    try:
        yield live
    finally:
        live.stop()


@contextmanager
def fleet_process(*extra: str) -> Iterator[str]:
    """`laneway sim` in a child process; yields its URL."""
    process = subprocess.Popen([sys.executable, "-m", "laneway", "sim", "--port", "0", *extra],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert " at " in line, line
        yield line.rsplit(" at ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(10)
