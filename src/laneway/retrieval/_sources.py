"""Reads source documents (Markdown, JSON, CSV) and cuts them into passages.

Markdown is split at headings (each passage titled by its heading path); JSON is a list of
objects with `text` and optional `title`/`id`, or ABCD's agent guidelines (see `_abcd`); CSV has a
`text` column and optional `title`/`id` columns. A document longer than `chunk_tokens` words is
cut at paragraph boundaries into several passages.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from laneway.errors import ConfigError, ConfigIssue
from laneway.retrieval._abcd import guideline_documents, is_abcd_guidelines
from laneway.retrieval._document import Document
from laneway.retrieval._passage import Passage

SUFFIXES = (".md", ".markdown", ".json", ".csv")

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
# A line of `=` (level 1) or `-` (level 2) under a line of text makes that text a heading (CommonMark's
# setext headings, as pandoc writes them); under a blank line, `---` is a rule, not a heading.
_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)\s*$")
_NOT_A_TITLE = re.compile(r"^\s*([-*+]\s|\d+[.)]\s|\||>)")  # a list item, a table row, a quote
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n.*?^(---|\.\.\.)[ \t]*$\n?", re.DOTALL | re.MULTILINE)
_FENCE = re.compile(r"^\s*(```|~~~)")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# A run without spaces longer than this (text in a script written without spaces, a long URL) counts as one word
# per `CHARS_PER_WORD` characters, and is cut between characters: counted as one word, a Japanese section of
# 34,500 characters was one passage, past the window of every model its hit went to.
LONG_RUN_CHARS = 32
CHARS_PER_WORD = 2
# An inline file (`![chart](data:image/png;base64,...)`, as Markdown exports write images) is no policy text: its
# bytes made a passage of 400,000 characters whose random letters matched unrelated questions.
_DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w=.+-]+)*,[^\s)\"'<>]*")


def source_error(path: Path, message: str) -> ConfigError:
    return ConfigError([ConfigIssue(str(path), message)], source=str(path), subject="knowledge source")


def read_passages(sources: Sequence[Path], chunk_tokens: int) -> list[Passage]:
    """Every passage of every source, in source order; ids are unique across the sources."""
    if not sources:
        raise ConfigError([ConfigIssue("sources", "no source documents given; pass at least one file")],
                          subject="knowledge sources")
    passages: list[Passage] = []
    for path in sources:
        documents = read_documents(Path(path))
        chunks = [chunk for document in documents for chunk in chunk_document(document, chunk_tokens)]
        if not chunks:
            raise source_error(path, f"`{path}` has no text to index; add content or drop it from the sources")
        passages.extend(chunks)
    return _unique_ids(passages)


def read_documents(path: Path) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise source_error(path, f"`{path}` is not a supported source; use one of {', '.join(SUFFIXES)}")
    try:
        raw = path.read_text(encoding="utf-8-sig")  # a spreadsheet's or editor's byte-order mark is skipped
    except FileNotFoundError:
        raise source_error(path, f"`{path}` does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise source_error(path, f"`{path}` cannot be read as UTF-8 text ({error})") from None
    if suffix == ".json":
        return _json_documents(path, raw)
    if suffix == ".csv":
        return _csv_documents(path, raw)
    return list(_markdown_documents(path, raw))


def _markdown_documents(path: Path, raw: str) -> Iterator[Document]:
    headings: list[tuple[int, str]] = [(0, path.stem)]  # the open headings, by level: the section's path
    body: list[str] = []
    in_fence = False
    for line in _FRONT_MATTER.sub("", raw, count=1).splitlines():  # a YAML front matter block is no passage
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _heading(line, body)
        if heading is None:
            body.append(line)
            continue
        level, title = heading
        if not title:
            title = body.pop().strip()  # the line the underline made a heading
        yield from _section(path, [title for _, title in headings], body)
        while headings[-1][0] >= level:  # a heading closes those at its level and below (levels may skip)
            headings.pop()
        headings.append((level, title))
        body = []
    yield from _section(path, [title for _, title in headings], body)


def _heading(line: str, before: list[str]) -> tuple[int, str] | None:
    """The level and title of a heading `line` opens, or (level, "") for an underline that makes the line
    before (the last of `before`) one; None for a line of text."""
    if match := _HEADING.match(line):
        return len(match.group(1)), match.group(2)
    underline = _UNDERLINE.match(line)
    if underline and before and before[-1].strip() and not _NOT_A_TITLE.match(before[-1]):
        return (1 if underline.group(1)[0] == "=" else 2), ""
    return None


def _section(path: Path, headings: list[str], body: list[str]) -> Iterator[Document]:
    text = "\n".join(body).strip()
    if text:
        title = " > ".join(headings[1:]) or path.stem
        yield Document(f"{path.stem}/{slug(headings[-1])}", path.name, title, text)


def _json_documents(path: Path, raw: str) -> list[Document]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise source_error(path, f"`{path}` is not valid JSON: {error}") from None
    if is_abcd_guidelines(data):
        return guideline_documents(data, path.name)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise source_error(
            path,
            f"`{path}` must be a JSON list of objects with a `text` field (and optional `title`, `id`), "
            "or ABCD agent guidelines",
        )
    return [_record_document(path, index, item, f"record {index + 1}") for index, item in enumerate(data)]


def _csv_documents(path: Path, raw: str) -> list[Document]:
    # A cell may be as long as the file (it is cut into passages as Markdown and JSON texts are); the csv
    # module's limit (131,072 characters) is raised, for the process, as far as this file needs.
    csv.field_size_limit(max(csv.field_size_limit(), len(raw)))
    # Rows end at \n or \r, not at U+2028 in a cell; strict: an open quote is an error, not the rest of the file.
    reader = csv.DictReader(io.StringIO(raw, newline=""), strict=True)
    documents: list[Document] = []
    read = 0  # lines read up to the end of the last good row: a bad row starts on the next
    try:
        if "text" not in (reader.fieldnames or []):
            raise source_error(path, f"`{path}` needs a `text` column (optional: `title`, `id`); "
                                     f"found {reader.fieldnames}")
        read = reader.line_num
        for index, row in enumerate(reader):
            where = f"line {reader.line_num}"
            if row.get(None):  # the fields past the header's, under the key None
                raise source_error(path, f"`{path}` {where}: more fields than the header's "
                                         f"{len(reader.fieldnames or [])}; quote a text that holds a comma")
            documents.append(_record_document(path, index, row, where))
            read = reader.line_num
    except csv.Error as error:
        # `line_num` has read past the row's start (to the end of the data, for an open quote)
        raise source_error(path, f"`{path}` line {read + 1}: not valid CSV ({error}); check the "
                                 "quoting of the row that starts there") from None
    return documents


def _record_document(path: Path, index: int, record: dict[str, object], where: str) -> Document:
    """A JSON record or CSV row; untitled, it is searched and shown by its text and source alone."""
    text = record.get("text")
    if not isinstance(text, str):
        problem = "has no `text`" if text is None else f"`text` must be a string, got {type(text).__name__}"
        raise source_error(path, f"`{path}` {where}: {problem}")
    title = str(record.get("title") or "")
    identifier = str(record.get("id") or f"{path.stem}/{index + 1}")
    return Document(identifier, path.name, title, text.strip())


def chunk_document(document: Document, chunk_tokens: int) -> list[Passage]:
    """`document` cut at paragraph boundaries into pieces of at most `chunk_tokens` words (`_words`), without
    inline files (`data:` URIs)."""
    text = _DATA_URI.sub("", document.text) if "data:" in document.text else document.text
    pieces = list(_pack(_paragraphs(text, chunk_tokens), chunk_tokens))
    if not pieces:
        return []
    if len(pieces) == 1:
        return [Passage(document.id, document.source, document.title, pieces[0], 0.0)]
    return [
        Passage(f"{document.id}#{number}", document.source, document.title, piece, 0.0)
        for number, piece in enumerate(pieces, start=1)
    ]


def _paragraphs(text: str, limit: int) -> Iterator[tuple[str, int]]:
    """Each paragraph with its word count; one longer than `limit` comes cut between words."""
    for paragraph in _PARAGRAPH_BREAK.split(text.strip()):
        words = list(_words(paragraph, limit))
        size = sum(weight for _, weight, _ in words)
        if size <= limit:
            if words:
                yield paragraph.strip(), size
            continue
        part: list[str] = []
        size = 0
        for word, weight, glue in words:
            if part and size + weight > limit:
                yield "".join(part).lstrip(), size
                part, size = [], 0
            part.append(glue + word)
            size += weight
        if part:
            yield "".join(part).lstrip(), size


def _words(paragraph: str, limit: int) -> Iterator[tuple[str, int, str]]:
    """The paragraph's words as (text, count, what joins it to the word before): a run longer than
    `LONG_RUN_CHARS` counts one word per `CHARS_PER_WORD` characters, and comes whole when that fits a
    passage (a link is never cut in two), else in pieces of `LONG_RUN_CHARS` characters (text without spaces)."""
    for word in paragraph.split():
        if len(word) <= LONG_RUN_CHARS:
            yield word, 1, " "
            continue
        if (weight := -(-len(word) // CHARS_PER_WORD)) <= limit:
            yield word, weight, " "
            continue
        for start in range(0, len(word), LONG_RUN_CHARS):
            piece = word[start : start + LONG_RUN_CHARS]
            yield piece, -(-len(piece) // CHARS_PER_WORD), " " if start == 0 else ""


def _pack(paragraphs: Iterator[tuple[str, int]], limit: int) -> Iterator[str]:
    piece: list[str] = []
    size = 0
    for paragraph, count in paragraphs:
        if piece and size + count > limit:
            yield "\n\n".join(piece)
            piece, size = [], 0
        piece.append(paragraph)
        size += count
    if piece:
        yield "\n\n".join(piece)


def _unique_ids(passages: list[Passage]) -> list[Passage]:
    """The passages, an id met before renamed `id~N` with the lowest N no passage has (one may name `a~2`)."""
    taken = {passage.id for passage in passages}
    seen: set[str] = set()
    unique: list[Passage] = []
    for passage in passages:
        if passage.id in seen:
            n = 2
            while f"{passage.id}~{n}" in taken:
                n += 1
            renamed = f"{passage.id}~{n}"
            taken.add(renamed)
            passage = Passage(renamed, passage.source, passage.title, passage.text, 0.0)
        seen.add(passage.id)
        unique.append(passage)
    return unique


def slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower())) or "section"
