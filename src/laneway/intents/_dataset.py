"""Labelled rows from a `text,label` CSV file; out-of-scope rows carry the label `unknown`.

Labels are read lower-cased, as routing files and clients name intents (`UNKNOWN` is `unknown`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ConfigIssue, not_utf8

COLUMNS = ("text", "label")


@dataclass(frozen=True, slots=True)
class LabelledRows:
    texts: tuple[str, ...]
    labels: tuple[str, ...]


def read_rows(path: str | Path) -> LabelledRows:
    """Read a CSV with a header naming `text` and `label`; every problem names the file and row."""
    source = Path(path)
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" export starts with a byte-order mark
        with source.open(newline="", encoding="utf-8-sig") as handle:
            return _parse(source, csv.DictReader(handle, strict=True))  # strict: an open quote is an error
    except OSError as error:
        raise _error(source, f"cannot read the file: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise _error(source, not_utf8(error)) from None
    except csv.Error as error:
        raise _error(source, f"not a readable CSV: {error}") from None
    except _RowError as error:
        where = f"{source}:{error.line}"
        raise ConfigError([ConfigIssue(where, error.message)], source=str(source), subject="intent data") from None


class _RowError(Exception):
    """A row the csv module cannot read, and the line it ends on."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def _parse(source: Path, reader: csv.DictReader[str]) -> LabelledRows:
    header = reader.fieldnames or []
    if not header:
        raise _error(source, "the file is empty; it needs the header `text,label` and a row per message")
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        names = ", ".join(f"`{m}`" for m in missing)
        raise _error(source, f"missing column(s) {names} in header {header}; the header must be `text,label`")
    texts: list[str] = []
    labels: list[str] = []
    issues: list[ConfigIssue] = []
    for row in _rows(reader):
        if row.get(None):  # type: ignore[call-overload]  # the fields past the header's, under the key None
            issues.append(ConfigIssue(f"{source}:{reader.line_num}", f"more fields than the header's {len(header)}; "
                                      "quote a text that holds a comma"))
            continue
        text, label = (row.get("text") or "").strip(), (row.get("label") or "").strip().lower()
        if not text or not label:
            empty = "`text`" if not text else "`label`"
            where = f"{source}:{reader.line_num}"
            issues.append(ConfigIssue(where, f"empty {empty}; fill it or drop the row"))
            continue
        texts.append(text)
        labels.append(label)
    if issues:
        raise ConfigError(issues[:20], source=str(source), subject="intent data")
    if not texts:
        raise _error(source, "no data rows; add `text,label` rows under the header")
    return LabelledRows(tuple(texts), tuple(labels))


def _rows(reader: csv.DictReader[str]) -> Iterator[dict[str, str]]:
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            limit = csv.field_size_limit()
            fix = (f"each row holds one message; cut or drop the one over {limit:,} characters"
                   if "field larger than field limit" in str(error) else "check the quoting there")
            raise _RowError(reader.reader.line_num, f"not a readable CSV row ({error}); {fix}") from None
        yield row


def _error(source: Path, message: str) -> ConfigError:
    return ConfigError([ConfigIssue(str(source), message)], source=str(source), subject="intent data")
