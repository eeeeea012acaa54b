"""`python -m laneway` and the `laneway` console script: the command's modules are imported inside the
Ctrl-C handler, so a Ctrl-C while the command starts ends it quietly, as one later does."""

from __future__ import annotations

INTERRUPTED = 130


def main() -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        return INTERRUPTED
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
