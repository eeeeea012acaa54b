"""`laneway serve`: the gateway on its HTTP/1.1 server (uvloop, httptools), plus the simulated fleet in its own
process when the config uses it, and hot reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import yaml

from ..config import Config, SimSettings, load_config, parse_config, unset_variables, warning_lines
from ..errors import ConfigError, ConfigIssue
from ..gateway import Gateway, restart_only
from ..telemetry import Telemetry
from ._app import LOOPBACK, App
from ._http11 import HttpServer, http_url
from ._peers import WorkerSockets, serve_peers

log = logging.getLogger("laneway")
FORCE_STOP = signal.SIGUSR1  # from `laneway serve --workers N`'s supervisor: a second Ctrl-C, stop now
# What a worker's supervisor passes on to stop it: blocked while the worker starts, unblocked once it serves.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, FORCE_STOP})


def check_exposure(config: Config, host: str, allow_unauthenticated: bool, warn: bool = True) -> None:
    """Without client keys, only loopback: refuse anything else unless told otherwise (and `warn`)."""
    if config.keys:
        return
    if host not in LOOPBACK and not allow_unauthenticated:
        raise ConfigError([ConfigIssue("keys", f"no client keys are configured, so Laneway listens on loopback "
                                       f"only, not `{host}`; add `keys:` (see `laneway keys new`) or pass "
                                       "--allow-unauthenticated")], config.source)
    if warn:
        log.warning("laneway: no client keys configured: every caller that reaches %s is trusted", host)


def fleet_command(sim: SimSettings) -> list[str]:
    """`laneway sim` as this process starts it: it stops by itself once this process is gone."""
    args = [sys.executable, "-m", "laneway", "sim", "--host", sim.host, "--port", str(sim.port),
            "--seed", str(sim.seed), "--parent", str(os.getpid())]
    return [*args, "--fleet", sim.fleet] if sim.fleet else args


@contextlib.asynccontextmanager
async def fleet_process(config: Config) -> AsyncIterator[str]:
    """Run `laneway sim` in a child process (so its work never shares the gateway's event loop)."""
    args = fleet_command(config.sim)
    # A session of its own: the terminal's Ctrl-C reaches the gateway, which drains its streams to the
    # fleet and then stops it; the fleet would otherwise die first and cut them.
    process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if " at " not in line:  # it said why on its own stderr, which is this process's
            raise ConfigError([ConfigIssue("sim", "the simulated fleet did not start (its own message is above); "
                                                  "check `sim.host`, `sim.port` and `sim.fleet`")], config.source)
        url = line.rsplit(" at ", 1)[1].strip()
        print(line.strip(), flush=True)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def serve(config_path: str | Path | None, host: str, port: int, allow_unauthenticated: bool = False, *,
                sockets: list[socket.socket] | None = None, sim_url: str | None = None,
                worker: WorkerSockets | None = None, reloaded: Callable[[], None] | None = None,
                hangups: Callable[[], int] | None = None) -> None:
    """Serve one gateway process; `laneway serve --workers N` runs N of these on one shared socket,
    each also on its private socket (`worker`), each telling the others of a reload through
    `POST /admin/reload` with `reloaded`; `hangups` reads how many SIGHUPs their supervisor passed on."""
    # A reload asked for before this process can reload must not kill it (SIGHUP's default); the
    # handler comes once the gateway runs (`_on_sighup`), and reloads if one came meanwhile (`hangups`).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    hangups_before = hangups() if hangups is not None else 0
    config, replacing = _running_config(config_path, worker, fleet_running=sim_url is not None)
    speaks = worker is None or worker.index == 0  # the workers of one server warn once, not once each
    warns = speaks and not replacing  # a worker that replaces one that died: said at the start or the reload
    check_exposure(config, host, allow_unauthenticated, warn=warns)
    for line in warning_lines((*config.warnings, *unset_variables(config))) if warns else ():
        log.warning("laneway: %s", line)
    async with contextlib.AsyncExitStack() as stack:
        if config.simulated and sim_url is None:
            sim_url = await stack.enter_async_context(fleet_process(config))
        telemetry = Telemetry(config.telemetry, simulated=config.simulated)
        await telemetry.start()
        stack.push_async_callback(telemetry.aclose)  # runs after the gateway has closed: flushes the log
        peers = await stack.enter_async_context(serve_peers(worker, telemetry)) if worker is not None else None
        gateway = await Gateway.start(config, config_path=config_path, sim_url=sim_url, telemetry=telemetry,
                                      warm=False)
        gateway.speaks = speaks
        if worker is not None:  # the shadow spend cap is the server's: each worker keeps to its part
            gateway.shadows.share = 1 / worker.count
            gateway.starts_fleet_on_reload = False
        if worker is not None:  # a worker that replaces this one, should it die, starts from what runs
            worker.keep_started_config(self_contained(config))
            worker.keep_running_config(self_contained(config))
            gateway.applied = lambda applied: worker.keep_running_config(self_contained(applied))
        # A reload warns only when it drops the keys the running config had: otherwise it was said at start.
        gateway.vet = lambda new: check_exposure(new, host, allow_unauthenticated,
                                                 warn=speaks and bool(gateway.config.keys))
        tasks: set[asyncio.Task[None]] = set()  # background tasks, referenced until they finish
        warming = asyncio.create_task(gateway.warm_up())  # serves /healthz at once, /readyz once warm
        tasks.add(warming)
        warming.add_done_callback(tasks.discard)
        reload = _on_sighup(gateway, tasks)
        if hangups is not None and hangups() != hangups_before:  # a SIGHUP came while this process started
            reload()
        label = " (simulated fleet)" if config.simulated else ""

        def announce(server: HttpServer) -> None:  # once listening: with `--port 0`, the port it got
            print(f"laneway: serving {config.source}{label} on {http_url(host, server.bound_ports[0])} "
                  f"- {len(config.routes)} routes, {len(config.models)} models", flush=True)
            if sockets is not None:  # a worker: a stop its supervisor passed on while it started arrives now,
                # on the next turn of the loop, once the server's signal handlers are in place
                asyncio.get_running_loop().call_soon(signal.pthread_sigmask, signal.SIG_UNBLOCK, STOP_SIGNALS)

        app = App(gateway, reloaded, peers)
        # SIGINT and SIGTERM end in a graceful return (exit code 0), so the exchange log is flushed; the
        # grace period is the config's when the stop begins. A worker's supervisor owns Ctrl-C (which
        # reaches a worker from the terminal and again from the supervisor): it forces with FORCE_STOP.
        settings = gateway.config.server
        server = HttpServer(app, host, port, sockets=sockets, keep_alive_s=settings.keep_alive_ms / 1000,
                            request_deadline_s=settings.read_timeout_ms / 1000, backlog=4096,
                            grace_s=lambda: gateway.config.server.shutdown_grace_ms / 1000,
                            second_sigint_forces=sockets is None,
                            force_signals=(FORCE_STOP,) if sockets is not None else (), on_started=announce)
        # Everything built so far (config, tokenizer tables, indexes) lives for the whole process:
        # take it out of the garbage collector's sight so a full collection does not stall a request.
        gc.collect()
        gc.freeze()
        await server.serve()


def _running_config(config_path: str | Path | None, worker: WorkerSockets | None, *,
                    fleet_running: bool) -> tuple[Config, bool]:
    """The routing file a worker of `serve --workers N` starts from: the one its peers run, when one of
    them noted it (a worker replacing one that died: True), with the values the server started with for
    the sections a reload does not apply; else the file itself. A file edited since the last reload is
    not applied by a worker's restart: it would run another config than its peers, and a file that no
    longer loads would stop the whole server."""
    if worker is not None and config_path is not None:
        try:
            text = worker.running_config.read_text("utf-8")
        except FileNotFoundError:
            pass
        else:
            try:
                running = parse_config(text, str(config_path))
            except ConfigError as error:  # a file it names (a knowledge source, ...) broke on disk since
                log.error("laneway: worker %d cannot load the routing file its peers run:\n%s", worker.index, error)
                raise SystemExit(2) from None
            with contextlib.suppress(OSError, ConfigError):
                started = parse_config(worker.started_config.read_text("utf-8"), str(config_path))
                running = restart_only(started, running, fleet_running=fleet_running)
            return running, True
    return load_config(config_path), False


def self_contained(config: Config) -> str:
    """`config`'s text, with the keys of its `keys_file:` written out in `keys:`: a worker that replaces
    one that died must accept the keys its peers accept, whatever the keys file holds by then."""
    data = yaml.safe_load(config.text) if "keys_file" in config.text else None
    if not isinstance(data, dict) or "keys_file" not in data:
        return config.text
    del data["keys_file"]
    data["keys"] = [
        {"name": key.name, "hash": key.digest, **({"routes": sorted(key.routes)} if key.routes is not None else {}),
         **{name: value for name in ("requests_per_minute", "tokens_per_minute", "usd_budget")
            if (value := getattr(key, name)) is not None},
         "budget_period": key.budget_period}
        for key in config.keys]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _on_sighup(gateway: Gateway, tasks: set[asyncio.Task[None]]) -> Callable[[], None]:
    loop = asyncio.get_running_loop()

    def reload() -> None:
        async def run() -> None:
            try:
                await gateway.reload()
            except ConfigError as error:
                log.error("laneway: reload failed, keeping the running config:\n%s", error)
            except Exception as error:  # said, with its traceback: the running config goes on
                log.error("laneway: reload failed, keeping the running config: %s", Gateway.unapplied(error),
                          exc_info=not isinstance(error, OSError | RecursionError))

        task = loop.create_task(run())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload)
    return reload

