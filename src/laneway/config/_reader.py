"""A strict reader over one YAML mapping: typed getters, unknown keys reported, every error pathed."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigIssue
from ._yaml import Marks, join

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Issues:
    """Collects every problem of a file, so one `laneway check` shows them all."""

    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        self.items: list[ConfigIssue] = []

    def add(self, path: str, message: str, column_offset: int | None = None, severity: str = "error") -> None:
        line, column = self.marks.get(path, (None, None))
        if column_offset is not None and column is not None:
            column += column_offset
        self.items.append(ConfigIssue(path, message, line, column, severity))

    @property
    def errors(self) -> list[ConfigIssue]:
        return [i for i in self.items if i.severity == "error"]

    @property
    def warnings(self) -> list[ConfigIssue]:
        return [i for i in self.items if i.severity == "warning"]


class Section:
    """One mapping of the file. Call the getters for every known key, then `done()`."""

    def __init__(self, raw: Any, path: str, issues: Issues) -> None:
        self.path = path
        self.issues = issues
        self.seen: set[str] = set()
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            issues.add(path, f"expected a mapping (key: value), got {_kind(raw)}")
            raw = {}
        self.raw: dict[str, Any] = raw

    def where(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        """Whether the mapping holds `key`, a key the reader knows (an unknown key's hint names it)."""
        self.seen.add(key)
        return key in self.raw

    def value(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return self.raw.get(key, default)

    def text(self, key: str, default: str | None = None, *, required: bool = False,
            choices: Iterable[str] | None = None) -> str | None:
        value = self.value(key)
        if value is None:
            if required:
                self.issues.add(self.path, f"missing `{key}`")
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.issues.add(self.where(key), f"expected text, got {_kind(value)}")
            return default
        text = str(value)
        options = tuple(choices or ())
        if options and text not in options:
            self.issues.add(self.where(key), f"unknown value `{text}`; expected one of {', '.join(options)}")
            return default
        return text

    def variable(self, key: str) -> str | None:
        """The name of an environment variable; the value itself is never repeated, for it may be a
        secret pasted in its place."""
        name = self.text(key)
        if name is not None and not _VARIABLE.fullmatch(name):
            self.issues.add(self.where(key), "must be the name of the environment variable that holds the secret "
                                             "(letters, digits and `_`, such as `OPENAI_API_KEY`), not the secret "
                                             "itself; `${...}` is not expanded")
            return None
        return name

    def number(self, key: str, default: float | None = None, *, minimum: float | None = None,
               maximum: float | None = None, integer: bool = False, required: bool = False) -> float | None:
        value = self.value(key)
        if value is None:
            if required:
                self.issues.add(self.path, f"missing `{key}`")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and isinstance(value, float)):
            want = "a whole number" if integer else "a number"
            self.issues.add(self.where(key), f"expected {want}, got {value!r}")
            return default
        if not math.isfinite(value):  # YAML's .nan and .inf: every comparison with NaN is false
            self.issues.add(self.where(key), f"expected a finite number, got {'.nan' if value != value else '.inf'}")
            return default
        if minimum is not None and value < minimum:
            self.issues.add(self.where(key), f"must be at least {minimum:g}, got {value!r}")
            return default
        if maximum is not None and value > maximum:
            shown = f"{maximum:,}" if isinstance(maximum, int) else f"{maximum:g}"  # `:g` rounds a large whole number
            self.issues.add(self.where(key), f"must be at most {shown}, got {value!r}")
            return default
        return value

    def whole(self, key: str, default: int, *, minimum: int | None = 0, maximum: int | None = None) -> int:
        value = self.number(key, default, minimum=minimum, maximum=maximum, integer=True)
        return int(value) if value is not None else default

    def flag(self, key: str, default: bool) -> bool:
        value = self.value(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.issues.add(self.where(key), f"expected true or false, got {value!r}")
            return default
        return value

    def items(self, key: str) -> list[Any]:
        value = self.value(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.issues.add(self.where(key), f"expected a list, got {_kind(value)}")
            return []
        return value

    def section(self, key: str) -> Section:
        return Section(self.value(key), self.where(key), self.issues)

    def done(self) -> None:
        for key in self.raw:
            if key not in self.seen:
                hint = difflib.get_close_matches(str(key), sorted(self.seen), n=1)
                fix = f"; did you mean `{hint[0]}`?" if hint else f"; known keys: {', '.join(sorted(self.seen))}"
                self.issues.add(self.where(str(key)), f"unknown key `{key}`{fix}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "text", bool: "a boolean"}.get(type(value), type(value).__name__)
