"""The workers of `laneway serve --workers N` as one server in `/metrics`.

Each worker serves its own metrics, and only those, on a private Unix socket (`worker-<i>.sock`
in a directory only the server's user can enter). The worker that answers a scrape asks every
peer there at once, for at most `PEER_TIMEOUT_S`, and merges their expositions with its own:
each sample gains a `worker` label, each family is declared once, and `laneway_worker_up` names
the workers that did not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from ..telemetry import Telemetry
from ..telemetry._metrics import worker_up_lines

PEER_TIMEOUT_S = 1.0
_OWN_METRICS = "/metrics"


@dataclass(frozen=True)
class WorkerSockets:
    """Worker `index` of `count`, and the directory of every worker's private socket."""

    directory: str
    index: int
    count: int

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")


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
        answers = await asyncio.gather(*(_own_metrics_of(client) for client in self._clients.values()))
        expositions = {i: answer for i, answer in zip(self._clients, answers, strict=True) if answer is not None}
        expositions[self._worker.index] = own
        return merge_metrics(expositions, self._worker.count)

    async def aclose(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()))


@contextlib.asynccontextmanager
async def serve_peers(worker: WorkerSockets, telemetry: Telemetry) -> AsyncIterator[Peers]:
    """Serve this worker's own metrics on its private socket, and reach its peers', until exit."""
    runner = web.AppRunner(_own_metrics_app(telemetry), access_log=None, shutdown_timeout=PEER_TIMEOUT_S)
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


def _own_metrics_app(telemetry: Telemetry) -> web.Application:
    async def own_metrics(_request: web.Request) -> web.Response:
        # Never the peers' too: a worker asked by another one must not ask the others in turn.
        return web.Response(body=telemetry.render_metrics(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get(_OWN_METRICS, own_metrics)
    return app


async def _own_metrics_of(client: aiohttp.ClientSession) -> bytes | None:
    try:
        async with client.get(f"http://worker{_OWN_METRICS}") as response:
            return await response.read() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None  # left out of the scrape; `laneway_worker_up` shows it


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
