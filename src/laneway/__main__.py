"""`python -m laneway` and the `laneway` console script: the command's modules are imported inside the
Ctrl-C handler, so a Ctrl-C while the command starts ends it quietly, as one later does."""

from __future__ import annotations

import signal
import sys

INTERRUPTED = 130


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        # A reload (SIGHUP) asked for while the modules load must not stop the server (the signal's default):
        # `serve` handles it once it runs, and reloads then if one came meanwhile.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        return INTERRUPTED
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
