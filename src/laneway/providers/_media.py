"""OpenAI content parts that are not text (`image_url`, `file`, `input_audio`), read for the adapters
that translate them into their own blocks.

An image is a `data:` URL (base64) or an `http(s)` URL; a file is a `data:` URL in `file_data` (a
file uploaded to OpenAI, named by `file_id`, exists only there); audio is base64 `data` with its
`format`. A part no adapter can read is a `400` that names it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..chat import TEXT_PARTS
from ..errors import InvalidRequest

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Media:
    """One non-text part: base64 `data` with its `mime` type, or a `url` to fetch it from."""

    kind: str  # the OpenAI part type: image_url | file | input_audio
    mime: str = ""
    data: str = ""
    url: str = ""


def media_of(part: Any, adapter: str) -> Media | None:
    """None for a text part; the part's media otherwise. A part of another type, or one whose data
    cannot be read, is an `InvalidRequest` naming what `adapter` would need."""
    kind = part.get("type", "text") if isinstance(part, dict) else None
    if kind in TEXT_PARTS:
        return None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            return Media(kind, url=url)
        return _inline(kind, url, "`image_url.url` must be a `data:image/...;base64,` URL or an http(s) URL")
    if kind == "file":
        file = part.get("file") if isinstance(part.get("file"), dict) else {}
        if "file_id" in file and "file_data" not in file:
            raise InvalidRequest(f"a `file` part names `file_id` {file['file_id']!r}, a file uploaded to OpenAI, "
                                 f"which the `{adapter}` adapter cannot fetch: send its content as `file_data` "
                                 "(a `data:application/pdf;base64,` URL)", param="messages")
        return _inline(kind, file.get("file_data"), "`file.file_data` must be a `data:...;base64,` URL")
    if kind == "input_audio":
        audio = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
        data, fmt = audio.get("data"), audio.get("format")
        if not isinstance(data, str) or not isinstance(fmt, str) or not fmt:
            raise InvalidRequest("an `input_audio` part needs base64 `data` and a `format` (`wav`, `mp3`)",
                                 param="messages")
        return Media(kind, mime=f"audio/{fmt}", data=data)
    raise InvalidRequest(f"the `{adapter}` adapter carries `text`, `image_url`, `file` and `input_audio` content "
                         f"parts, not {kind!r}", param="messages")


def _inline(kind: str, url: Any, shape: str) -> Media:
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        shown = url[:40] + "..." if isinstance(url, str) and len(url) > 40 else url
        raise InvalidRequest(f"the `{kind}` part's data cannot be read: {shape}, got {shown!r}", param="messages")
    return Media(kind, mime=match.group(1), data=match.group(2))


def unsupported(media: Media, adapter: str, what: str) -> InvalidRequest:
    """The error for a part `adapter` cannot send: `what` says what it can."""
    source = f"from {media.url}" if media.url else f"of type {media.mime}"
    return InvalidRequest(f"the `{adapter}` adapter cannot send the `{media.kind}` part {source}: {what}",
                          param="messages")
