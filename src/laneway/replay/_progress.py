"""A progress bar on stderr for a demo run: requests answered out of those expected, per architecture."""

from __future__ import annotations

import time
from typing import TextIO

from ._driver import Progress

_WIDTH = 28
_REDRAW_S = 0.1


class ProgressBar:
    def __init__(self, stream: TextIO, expected_per_architecture: float, names: tuple[str, ...]) -> None:
        self.stream = stream
        self.expected = max(1.0, expected_per_architecture) * len(names)
        self.state = {name: Progress() for name in names}
        self.started = time.monotonic()
        self._drawn = 0.0
        self._live = stream.isatty()
        self._phase = ""

    def update(self, name: str, progress: Progress) -> None:
        self.state[name] = Progress(progress.phase, progress.sent, progress.done)
        now = time.monotonic()
        if self._live and now - self._drawn >= _REDRAW_S:
            self._drawn = now
            self.stream.write("\r" + self.line())
            self.stream.flush()
        elif not self._live and progress.phase != self._phase:
            self._phase = progress.phase
            self.stream.write(self.line() + "\n")

    def line(self) -> str:
        done = sum(p.done for p in self.state.values())
        fraction = min(0.99, done / self.expected)
        filled = round(fraction * _WIDTH)
        phase = next(iter(self.state.values())).phase  # architectures share the arrival schedule
        counts = "  ".join(f"{name} {p.done}/{p.sent}" for name, p in self.state.items())
        elapsed = time.monotonic() - self.started
        return (f"SIMULATED replay [{'#' * filled}{'.' * (_WIDTH - filled)}] {fraction * 100:3.0f} %  "
                f"{phase or 'starting':7}  {counts}  {elapsed:5.1f} s")

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        done = sum(p.done for p in self.state.values())
        end = "\r" if self._live else ""
        self.stream.write(f"{end}SIMULATED replay [{'#' * _WIDTH}] 100 %  {done} requests in {elapsed:.1f} s"
                          + " " * 20 + "\n")
        self.stream.flush()
