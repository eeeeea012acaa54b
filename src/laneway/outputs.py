"""The files a command writes once its run is over (`--json`, `--csv`, `--html`): each path is tried
before the run, so one that cannot be written is a one-line error up front, not a traceback after it."""

from __future__ import annotations

import os
from pathlib import Path


def unwritable(option: str, path: str | Path) -> str | None:
    """Why the file for `option` could not be written at `path` (the message names both and the fix),
    or None if it can."""
    problem = _problem(option, Path(path))
    return None if problem is None else f"`{option} {path}`: {problem}"


def _problem(option: str, target: Path) -> str | None:
    if target.is_dir():
        return f"is a directory; name a file in it, e.g. `{target / ('report.' + option.lstrip('-'))}`"
    if not target.parent.is_dir():
        return f"`{target.parent}` is not a directory; create it or choose another path"
    try:
        _open_for_writing(target)
    except OSError as error:
        return f"cannot be written ({error.strerror or error}); choose another path"
    return None


def _open_for_writing(target: Path) -> None:
    """Open `target` as the command will, leaving it as it was. Permission bits are not enough:
    they do not bind root, nor say what a filesystem such as /proc or a read-only mount refuses."""
    if os.path.lexists(target):
        if target.is_file():  # a device or pipe (`/dev/null`) is left to the write itself
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND))
        return
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    target.unlink()
