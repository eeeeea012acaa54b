"""The files a command writes once its run is over (`--json`, `--csv`, `--html`).

Before the run, `check_outputs` tries each path, so that one that cannot be written, or that would
overwrite one of the run's inputs or another output, is a one-line error up front rather than a
traceback, or a lost input, after it. After the run, `write_outputs` writes each one that still
can be (a disk fills, a directory goes away) and names each that could not, in one line."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Option = tuple[str, str | Path | None]  # an option's name (`--json`) and its path, None when not given
NOT_WRITTEN = 2  # the exit code of a run some output of which could not be written


def check_outputs(outputs: Sequence[Option], inputs: Sequence[Option] = ()) -> str | None:
    """The first reason the outputs could not be written as asked (the message names the option, the
    path and the fix), or None: each must be a writable file that is no input and no other output."""
    taken = _identities(inputs)
    for option, path in outputs:
        if path is None:
            continue
        problem = unwritable(option, path) or _clash(option, path, taken)
        if problem:
            return problem
    return None


def overwrites(option: str, path: str | Path, inputs: Sequence[Option]) -> str | None:
    """Why `option path` must not be written: it is the file of one of `inputs` (the message names both
    and the fix), or None."""
    return _clash(option, path, _identities(inputs))


def _identities(files: Sequence[Option]) -> dict[tuple[int, int] | str, tuple[str, str | Path]]:
    return {identity: (option, path) for option, path in files
            if path is not None and (identity := _identity(Path(path))) is not None}


def _clash(option: str, path: str | Path, taken: dict[tuple[int, int] | str, tuple[str, str | Path]]) -> str | None:
    """The message if `path` is a file of `taken` already; else None, and `path` is taken from now on."""
    identity = _identity(Path(path))
    if identity is None:
        return None
    if identity in taken:
        other, other_path = taken[identity]
        return (f"`{option} {path}` is the file of `{other} {other_path}` too, which it would overwrite; "
                "choose another path")
    taken[identity] = (option, path)
    return None


def unwritable(option: str, path: str | Path) -> str | None:
    """Why the file for `option` could not be written at `path` (the message names both and the fix),
    or None if it can."""
    if not str(path):
        return f"`{option}` is empty; name a file (an unset shell variable?)"
    problem = _problem(option, Path(path))
    return None if problem is None else f"`{option} {path}`: {problem}"


def output_path(text: str) -> Path:
    """An argparse type for an output file: `Path("")` would be the working directory."""
    if not text:
        raise argparse.ArgumentTypeError("is empty; name a file (an unset shell variable?)")
    return Path(text)


def write_outputs(command: str, writes: Sequence[tuple[str, str | Path, Callable[[], object]]]) -> bool:
    """Write each output (`option`, `path`, the call that writes it), on past any that fails; a line on
    stderr for each failure. True when every one was written."""
    written = True
    for option, path, write in writes:
        try:
            write()
        except OSError as error:
            print(f"laneway {command}: cannot write `{option} {path}`: {error.strerror or error}; "
                  "choose another path", file=sys.stderr)
            written = False
    return written


def _identity(path: Path) -> tuple[int, int] | str | None:
    """What makes two paths one file: its device and inode when it exists, its absolute path when it
    does not yet; None for a device or pipe (`/dev/null` may take several outputs)."""
    try:
        status = path.stat()
    except OSError:
        return str(path.absolute())
    return (status.st_dev, status.st_ino) if stat.S_ISREG(status.st_mode) else None


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
