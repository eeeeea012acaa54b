"""The simulated fleet: the case study's models served over real HTTP, with a latency law,
context windows, list prices and selectable faults. Every figure it produces is simulated.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..errors import ConfigError, ConfigIssue
from ._answers import is_good
from ._cassettes import default_cassette_path, load_cassette
from ._fleet import LatencyLaw, SimModel, load_fleet
from ._server import WIRES, Fleet, build_app, where_models_are


@dataclass
class RunningFleet:
    """A fleet listening on a loopback port; `url` replaces `sim://` in model base URLs."""

    url: str
    runner: web.AppRunner
    fleet: Fleet

    async def aclose(self) -> None:
        await self.runner.cleanup()


async def start_fleet(host: str = "127.0.0.1", port: int = 0, fleet_file: str | None = None,
                      seed: int = 7, cassette: Path | None = None) -> RunningFleet:
    """Serve the fleet; `cassette` defaults to the recorded outputs shipped in a checkout, if any."""
    path = cassette or default_cassette_path()
    fleet = Fleet(load_fleet(fleet_file), seed=seed, cassette=load_cassette(path) if path else None)
    fleet.counter.warm()
    # Faults such as `silent` sleep for an hour: cancel their handlers at shutdown instead of waiting.
    runner = web.AppRunner(build_app(fleet), access_log=None, handle_signals=False, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise ConfigError([ConfigIssue("host", f"cannot listen on {host}:{port}: {error.strerror or error}; pick "
                                               "another host or port")], subject="simulated fleet") from None
    bound = runner.addresses[0][1]
    return RunningFleet(f"http://{host}:{bound}", runner, fleet)


async def serve_forever(host: str, port: int, fleet_file: str | None = None, seed: int = 7,
                        announce: bool = True, parent: int | None = None) -> None:
    """Serve until cancelled; with `parent`, also until that process is gone (a gateway that started
    the fleet in a session of its own, out of reach of the terminal's Ctrl-C, and then died)."""
    running = await start_fleet(host, port, fleet_file, seed)
    if announce:
        print(f"laneway sim: simulated fleet ({', '.join(sorted(running.fleet.models))}) at {running.url}",
              flush=True)
        if parent is None:  # run by hand: say where the models are (a gateway reads only the line above)
            print(f"laneway sim: {where_models_are(running.fleet)}", flush=True)
    try:
        await (_orphaned(parent) if parent is not None else asyncio.Event().wait())
    finally:
        await running.aclose()


async def _orphaned(parent: int) -> None:
    """Returns once `parent` is no longer this process's parent."""
    while True:
        if os.getppid() != parent:
            return
        await asyncio.sleep(1.0)


__all__ = ["WIRES", "Fleet", "LatencyLaw", "RunningFleet", "SimModel", "build_app", "is_good", "load_fleet",
           "serve_forever", "start_fleet"]
