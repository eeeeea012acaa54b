"""Run `laneway intents ...` in-process, as the console script would."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from laneway.intents import add_commands


def run_intents_cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="laneway")
    add_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
