"""Simulated fleets in child processes, so the fleets and the gateway spread over the cores.

Each child prints `... at http://127.0.0.1:PORT` first, like `laneway sim`. Its seed and hash
seed are fixed, so a fleet's jitter is reproducible.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

# The child imports only the fleet, not the gateway: it starts in about a second. It runs in a session of
# its own, out of reach of the terminal's Ctrl-C (the demo stops it), and ends when the demo is gone, however
# the demo ended (`kill -9` too).
_CHILD = ("import os, sys, uvloop; from laneway.sim import serve_forever; "
          "uvloop.run(serve_forever('127.0.0.1', 0, None, int(sys.argv[1]), parent=os.getppid()))")


@contextmanager
def fleet_processes(seed: int, count: int) -> Iterator[list[str]]:
    """`count` simulated fleets on free loopback ports, started in parallel; yields their URLs."""
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    command = [sys.executable, "-c", _CHILD, str(seed)]
    with ExitStack() as stack:
        processes = []
        for _ in range(count):
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env,  # noqa: S603
                                       start_new_session=True)
            stack.callback(_stop, process)
            processes.append(process)
        yield [_url(process) for process in processes]


def _url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if " at " not in line:
        raise RuntimeError(f"the simulated fleet did not start (it printed {line!r}); "
                           "run `laneway sim` to see why")
    return line.rsplit(" at ", 1)[1].strip()


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(10)
