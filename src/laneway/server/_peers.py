"""The workers of `laneway serve --workers N` as one server in `/metrics`, `/admin/stats`,
`/admin/shadow` and the dashboard.

Each worker serves its own metrics and its in-memory window, and only those, on a private Unix
socket (`worker-<i>.sock` in a directory only the server's user can enter). The worker that answers
a client asks every peer there at once, for at most `PEER_TIMEOUT_S`:

- for a scrape, it merges their expositions with its own: each sample gains a `worker` label, each
  family is declared once, and `laneway_worker_up` names the workers that did not answer;
- for the live figures, it summarizes their windows' exchanges with its own, so that percentiles
  and conversations span every worker, and says under `workers` which ones answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ..telemetry import Telemetry
from ..telemetry._metrics import worker_up_lines
from ..telemetry._telemetry import Window

PEER_TIMEOUT_S = 1.0
_OWN_METRICS = "/metrics"
_OWN_WINDOW = "/window"

log = logging.getLogger("laneway.server")


@dataclass(frozen=True)
class WorkerSockets:
    """Worker `index` of `count`, and the directory of every worker's private socket."""

    directory: str
    index: int
    count: int

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")

    @property
    def running_config(self) -> Path:
        """Where the workers keep the routing file they run, as they last loaded it: a worker that replaces
        one that died starts from it, not from a file edited, or broken, since (`keep_running_config`)."""
        return Path(self.directory) / "running.yaml"

    def keep_running_config(self, text: str) -> None:
        """Note `text` as the routing file the workers run (after a start or a reload), in one rename."""
        spare = self.running_config.with_name(f"running.{self.index}.tmp")
        spare.write_text(text, encoding="utf-8")
        os.replace(spare, self.running_config)

    @property
    def started_config(self) -> Path:
        """The routing file the server started with: the sections a reload cannot apply (`state:`,
        `telemetry:`, ...) are still its values, in a worker that replaces one that died too."""
        return Path(self.directory) / "started.yaml"

    def keep_started_config(self, text: str) -> None:
        """Note `text` as the routing file the server started with, unless a worker did so already."""
        spare = self.started_config.with_name(f"started.{self.index}.tmp")
        spare.write_text(text, encoding="utf-8")
        with contextlib.suppress(FileExistsError):
            os.link(spare, self.started_config)
        spare.unlink()


class Peers:
    """One worker's clients to the other workers' private sockets."""

    def __init__(self, worker: WorkerSockets, telemetry: Telemetry) -> None:
        self._worker = worker
        self._telemetry = telemetry
        timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
        # No keep-alive: a connection kept to a worker that has since been replaced would fail one scrape.
        self._clients = {i: aiohttp.ClientSession(connector=aiohttp.UnixConnector(worker.path(i), force_close=True),
                                                  timeout=timeout)
                         for i in range(worker.count) if i != worker.index}

    async def metrics(self) -> bytes:
        """Every worker's metrics that arrived in time, with this worker's, as one exposition."""
        own = self._telemetry.render_metrics()
        if not self._telemetry.settings.metrics:
            return own
        expositions = await self._ask(_OWN_METRICS)
        expositions[self._worker.index] = own
        return merge_metrics(expositions, self._worker.count)

    async def stats(self, since: float | None, until: float | None) -> dict[str, Any]:
        """`GET /admin/stats` over every worker's window that arrived in time."""
        windows = await self._windows()
        figures = await self._telemetry.stats_off_loop(since, until, list(windows.values()))
        figures["workers"] = self._answered(windows)
        return figures

    async def shadow_stats(self, dropped: Mapping[str, int]) -> dict[str, Any]:
        """`GET /admin/shadow` over every worker's window that arrived in time; `dropped` is this worker's."""
        windows = await self._windows()
        figures = await self._telemetry.shadow_stats(dropped, peers=list(windows.values()))
        figures["workers"] = self._answered(windows)
        return figures

    async def _ask(self, path: str) -> dict[int, bytes]:
        """Every peer's answer to `path`, by worker index, from those that answered in time."""
        answers = await asyncio.gather(*(_fetch(client, path) for client in self._clients.values()))
        return {i: answer for i, answer in zip(self._clients, answers, strict=True) if answer is not None}

    async def _windows(self) -> dict[int, Window]:
        return await asyncio.to_thread(_decoded, await self._ask(_OWN_WINDOW))  # 10-40 ms for 10,000 rows

    def _answered(self, windows: Mapping[int, Window]) -> dict[str, Any]:
        """Which workers the figures hold, and since when each: a replaced worker starts with nothing."""
        started = {i: window.started_at for i, window in windows.items()}
        started[self._worker.index] = self._telemetry.started_at
        return {"count": self._worker.count, "answered": sorted(started),
                "started_at": {str(i): started[i] for i in sorted(started)}}

    async def aclose(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()))


@contextlib.asynccontextmanager
async def serve_peers(worker: WorkerSockets, telemetry: Telemetry) -> AsyncIterator[Peers]:
    """Serve this worker's own metrics on its private socket, and reach its peers', until exit."""
    runner = web.AppRunner(_own_figures_app(telemetry), access_log=None, shutdown_timeout=PEER_TIMEOUT_S)
    await runner.setup()
    try:
        await web.SockSite(runner, _listen(worker.path(worker.index))).start()
        peers = Peers(worker, telemetry)
        try:
            yield peers
        finally:
            await peers.aclose()
    finally:
        await runner.cleanup()


def _own_figures_app(telemetry: Telemetry) -> web.Application:
    # Never the peers' too: a worker asked by another one must not ask the others in turn.
    async def own_metrics(_request: web.Request) -> web.Response:
        return web.Response(body=telemetry.render_metrics(), content_type="text/plain", charset="utf-8")

    async def own_window(_request: web.Request) -> web.Response:
        if not telemetry.settings.metrics:  # no window is kept
            return web.Response(status=404)
        return web.Response(body=await telemetry.window_snapshot(), content_type="application/json")

    app = web.Application()
    app.router.add_get(_OWN_METRICS, own_metrics)
    app.router.add_get(_OWN_WINDOW, own_window)
    return app


async def _fetch(client: aiohttp.ClientSession, path: str) -> bytes | None:
    try:
        async with client.get(f"http://worker{path}") as response:
            return await response.read() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None  # left out; `laneway_worker_up` and the figures' `workers` show it


def _decoded(snapshots: Mapping[int, bytes]) -> dict[int, Window]:
    windows = {}
    for index, snapshot in snapshots.items():
        try:
            windows[index] = Window.decode(snapshot)
        except ValueError as error:
            log.error("worker %d sent a window that could not be read, left out of the live figures: %s", index, error)
    return windows


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by the worker this one replaces
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(64)
    return sock


@dataclass(slots=True)
class _Family:
    declaration: list[str] = field(default_factory=list)  # its `# HELP` and `# TYPE` lines, once each
    samples: list[str] = field(default_factory=list)


def merge_metrics(expositions: Mapping[int, bytes], workers: int) -> bytes:
    """One Prometheus exposition out of each answering worker's own (by worker index), for `workers`
    workers: every family declared once, followed by every worker's samples of it, labelled."""
    families: dict[str, _Family] = {}
    for index in sorted(expositions):
        _add_worker(families, index, expositions[index].decode("utf-8"))
    lines: list[str] = []
    for family in families.values():
        lines += family.declaration
        lines += family.samples
    lines += worker_up_lines({i: i in expositions for i in range(workers)})
    return ("\n".join(lines) + "\n").encode("utf-8")


def _add_worker(families: dict[str, _Family], index: int, text: str) -> None:
    label = f'worker="{index}"'
    name, family = "", _Family()
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            name = line.split(" ", 3)[2]
            family = families.setdefault(name, _Family())
            if not any(seen.startswith(line[:7]) for seen in family.declaration):
                family.declaration.append(line)
        elif line and not line.startswith("#"):
            sample = line[:_name_end(line)]
            if not name or not sample.startswith(name):  # a sample of no declared family: its own family
                name, family = sample, families.setdefault(sample, _Family())
            family.samples.append(_labelled(line, label))


def _labelled(sample: str, label: str) -> str:
    """`sample` with `label` first among its labels: a label value may hold `}` and `,`, so the
    front of the labels is the one place found without reading the values."""
    end = _name_end(sample)
    if end == len(sample) or sample[end] != "{":
        return f"{sample[:end]}{{{label}}}{sample[end:]}"
    separator = "" if sample[end + 1] == "}" else ","
    return f"{sample[:end + 1]}{label}{separator}{sample[end + 1:]}"


def _name_end(sample: str) -> int:
    return next((i for i, char in enumerate(sample) if char in "{ \t"), len(sample))
