"""`laneway serve --workers N`: N gateway processes accepting on one listening socket.

The parent binds the socket, starts the simulated fleet once (when the config uses it), and
supervises the workers: one that dies is replaced, SIGHUP is passed on (each worker reloads; a
worker that reloads through `POST /admin/reload` counts its reload in a shared array and sends the
parent a SIGHUP, which the parent passes on to the others only), SIGINT/SIGTERM stop
them gracefully (each flushes its exchange log). Each worker keeps its own metrics and in-memory
window, and also listens on a private Unix socket in a directory the parent creates for the run:
there the worker that answers `/metrics`, `/admin/stats` or `/admin/shadow` fetches the others', so
each describes every worker (`_peers.py`). Gates, cache and breakers are shared through
`state: redis://...` when the config sets it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from multiprocessing import resource_tracker
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType
from typing import Any

from ..config import SimSettings, load_config
from ._http11 import http_url
from ._peers import WorkerSockets
from ._serve import FORCE_STOP, STOP_SIGNALS, check_exposure, fleet_command

log = logging.getLogger("laneway")
EARLY_EXIT_S = 10.0
MAX_EARLY_EXITS = 3
PR_SET_PDEATHSIG = 1  # prctl(2)
MAX_SOCKET_PATH = 103  # bytes in a Unix socket's path: 104 with its NUL on some systems, 108 on Linux


def serve_workers(config_path: str | Path | None, host: str, port: int, workers: int,
                  allow_unauthenticated: bool) -> int:
    """Run `workers` gateway processes until SIGINT or SIGTERM; the exit code for `laneway serve`."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the supervisor can pass a reload on
    config = load_config(config_path)
    check_exposure(config, host, allow_unauthenticated, warn=False)  # worker 0 warns
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    fleet = _start_fleet(config.sim) if config.simulated else None
    args = (config_path, host, port, sock, fleet[1] if fleet else None, allow_unauthenticated)
    private = _private_directory(workers)
    try:
        supervisor = _Supervisor(multiprocessing.get_context("spawn"), args, workers, private, sock)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, supervisor.forward)
        print(f"laneway: {workers} workers serving on {http_url(host, sock.getsockname()[1])}", flush=True)
        return supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(private, ignore_errors=True)
        if fleet is not None:
            fleet[0].terminate()
            fleet[0].wait(10)


def _private_directory(workers: int) -> str:
    """A new directory for the workers' private sockets, mode 0700: no other user reaches them there.

    Under `$TMPDIR`, unless a socket's path there would be too long for the system (a Unix socket's
    path holds at most 104 bytes on some systems, 108 on Linux): then under `/tmp`."""
    private = tempfile.mkdtemp(prefix="laneway-workers-")
    if len(WorkerSockets(private, 0, workers).path(workers - 1).encode()) <= MAX_SOCKET_PATH:
        return private
    os.rmdir(private)
    return tempfile.mkdtemp(prefix="laneway-workers-", dir="/tmp")


class _Supervisor:
    """Keeps `count` workers running: one that dies is replaced (a worker that keeps dying within
    `EARLY_EXIT_S` of its start, `MAX_EARLY_EXITS` times in a row, ends the whole server with exit code 1);
    SIGHUP is passed on to every worker, SIGINT and SIGTERM stop them gracefully. Worker `i`, and any
    that replaces it, has its private socket at the same path in `private`."""

    def __init__(self, context: Any, args: tuple[Any, ...], count: int, private: str,
                 listening: socket.socket) -> None:
        self._context = context
        self._args = args
        self._private = private
        self._count = count
        self._listening = listening
        self._stopping = False
        self._interrupts = 0
        self._early_exits = 0
        # Reloads each worker made itself (`POST /admin/reload`), and how many of them the last SIGHUP saw.
        self._reloads = context.RawArray("Q", count)
        self._seen = [0] * count
        # SIGHUPs passed on: a worker that was starting when one came (ignoring it) reloads once it serves.
        self._hangups = context.RawValue("Q", 0)
        self._workers: list[tuple[Any, float]] = [self._start(i) for i in range(count)]

    def forward(self, sig: int, _frame: FrameType | None) -> None:
        """SIGHUP: every worker reloads, but one that has just reloaded itself and asked for it.
        SIGINT, SIGTERM: every worker stops gracefully, and this process's copy of the listening socket
        closes, so that new connections are refused rather than left waiting; a second SIGINT (Ctrl-C
        again) makes the workers stop at once."""
        passed = sig
        if sig == signal.SIGHUP:
            self._hangups.value += 1
        else:
            self._stopping = True
            self._listening.close()
            passed = signal.SIGINT
            if sig == signal.SIGINT:
                self._interrupts += 1
                if self._interrupts > 1:
                    passed = FORCE_STOP
        for i, (process, _) in enumerate(self._workers):
            if sig == signal.SIGHUP and self._reloads[i] != self._seen[i]:
                self._seen[i] = self._reloads[i]
                continue
            if process.pid is not None and process.is_alive():
                _signal(process.pid, passed)

    def run(self) -> int:
        while not self._stopping:
            wait([process.sentinel for process, _ in self._workers], timeout=1.0)
            for i, (process, started) in enumerate(self._workers):
                if process.is_alive() or self._stopping:
                    continue
                early = time.monotonic() - started < EARLY_EXIT_S
                self._early_exits = self._early_exits + 1 if early else 0
                log.error("laneway: worker %d (pid %s) exited with code %s%s", i, process.pid, process.exitcode,
                          "; starting a new one" if self._early_exits < MAX_EARLY_EXITS else "")
                if self._early_exits >= MAX_EARLY_EXITS:
                    log.error("laneway: workers keep exiting right after they start; stopping (see the errors above)")
                    self.forward(signal.SIGTERM, None)
                    self._join()
                    return 1
                self._workers[i] = self._start(i)
        self._join()
        return 0

    def _start(self, i: int) -> tuple[Any, float]:
        args = (*self._args, WorkerSockets(self._private, i, self._count), self._reloads, self._hangups)
        process = self._context.Process(target=_worker, args=args, name=f"laneway-worker-{i}")
        # Started with SIGHUP ignored (an ignored signal stays ignored in the new process), so that a
        # reload passed on while it starts does not kill it; it handles SIGHUP once it serves. A stop passed on
        # while it starts waits, blocked (the mask is inherited too), until it serves and unblocks it
        # (`_serve.serve`). Its SIGINT is not left ignored, as a shell's `&` leaves it (an ignored signal is
        # dropped even while blocked): the stop was lost, and the server ran on; and, left to Python while
        # not blocked, it broke the start off with a KeyboardInterrupt traceback.
        # The start launches multiprocessing's resource tracker the first time, and unblocks SIGINT and SIGTERM
        # as it does: launched beforehand, it leaves the mask alone.
        resource_tracker.ensure_running()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN), signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGHUP, previous[0])
            signal.signal(signal.SIGINT, previous[1])
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return process, time.monotonic()

    def _join(self) -> None:
        for process, _ in self._workers:
            process.join()


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _worker(config_path: str | Path | None, host: str, port: int, sock: socket.socket, sim_url: str | None,
            allow_unauthenticated: bool, worker: WorkerSockets, reloads: Any, hangups: Any) -> None:
    import uvloop

    from ._serve import serve

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    _stop_with_parent()
    uvloop.run(serve(config_path, host, port, allow_unauthenticated, sockets=[sock], sim_url=sim_url,
                     worker=worker, reloaded=partial(_reload_the_others, worker.index, reloads),
                     hangups=lambda: int(hangups.value)))
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        # The supervisor was killed outright, and will not remove the run's directory (its sockets, the routing
        # file the workers ran, with its key hashes): each worker tries, on its way out.
        shutil.rmtree(worker.directory, ignore_errors=True)


def _reload_the_others(index: int, reloads: Any) -> None:
    """Worker `index` reloaded through `POST /admin/reload`: its supervisor passes a SIGHUP to every
    other worker. It counts the reload first, so that the supervisor does not reload it again."""
    reloads[index] += 1
    os.kill(os.getppid(), signal.SIGHUP)


def _stop_with_parent() -> None:
    """A worker whose parent is killed (SIGKILL: nothing forwards a signal) gets SIGINT, and so stops
    gracefully instead of keeping the port with no fleet and no supervisor (Linux's parent-death
    signal; elsewhere the parent's own signal handling is all there is)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the signal was asked for
        os.kill(os.getpid(), signal.SIGINT)


def _start_fleet(sim: SimSettings) -> tuple[subprocess.Popen[str], str]:
    args = fleet_command(sim)
    # Out of reach of the terminal's Ctrl-C, as in `fleet_process`: the workers drain first.
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True,  # noqa: S603 - our own interpreter
                               start_new_session=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if " at " not in line:
        process.kill()
        raise RuntimeError(f"the simulated fleet did not start: {line!r}")
    print(line.strip(), flush=True)
    return process, line.rsplit(" at ", 1)[1].strip()
