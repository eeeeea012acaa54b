"""`python -m laneway.loadtest ...`: the same as `laneway loadtest ...`."""

import sys

from laneway.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["loadtest", *sys.argv[1:]]))
