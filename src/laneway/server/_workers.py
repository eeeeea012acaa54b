"""`laneway serve --workers N`: N gateway processes accepting on one listening socket.

The parent binds the socket, starts the simulated fleet once (when the config uses it), and
supervises the workers: SIGHUP is passed on (each worker reloads), SIGINT/SIGTERM stop them
gracefully (each flushes its exchange log). Each worker has its own gates, cache and metrics
unless the config shares them through `state: redis://...`; `/metrics` is per worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType

from ..config import load_config
from ._serve import check_exposure


def serve_workers(config_path: str | Path | None, host: str, port: int, workers: int,
                  allow_unauthenticated: bool) -> None:
    config = load_config(config_path)
    check_exposure(config, host, allow_unauthenticated)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    fleet = _start_fleet(config.sim.host, config.sim.seed, config.sim.fleet) if config.simulated else None
    sim_url = fleet[1] if fleet else None
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(config_path, host, port, sock, sim_url, allow_unauthenticated),
                                 name=f"laneway-worker-{i}") for i in range(workers)]
    for process in processes:
        process.start()
    print(f"laneway: {workers} workers serving on http://{host}:{port}", flush=True)

    def forward(sig: int, _frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                _signal(process.pid, signal.SIGINT if sig == signal.SIGTERM else sig)

    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        for process in processes:
            process.join()
    finally:
        sock.close()
        if fleet is not None:
            fleet[0].terminate()
            fleet[0].wait(10)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _worker(config_path: str | Path | None, host: str, port: int, sock: socket.socket, sim_url: str | None,
            allow_unauthenticated: bool) -> None:
    import uvloop

    from ._serve import serve

    uvloop.run(serve(config_path, host, port, allow_unauthenticated, sockets=[sock], sim_url=sim_url))


def _start_fleet(host: str, seed: int, fleet_file: str | None) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "laneway", "sim", "--host", host, "--port", "0", "--seed", str(seed)]
    if fleet_file:
        args += ["--fleet", fleet_file]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)  # noqa: S603 - our own interpreter
    assert process.stdout is not None
    line = process.stdout.readline()
    if " at " not in line:
        process.kill()
        raise RuntimeError(f"the simulated fleet did not start: {line!r}")
    print(line.strip(), flush=True)
    return process, line.rsplit(" at ", 1)[1].strip()
