"""`python -m laneway.loadtest ...`: the same as `laneway loadtest ...`."""

import argparse
import sys

from ._cli import add_commands


def main() -> int:
    parser = argparse.ArgumentParser(prog="laneway")
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["loadtest", *sys.argv[1:]])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
