"""A fake upstream on a loopback port for the tests that choose its every answer: subclass `Handler`
with a `do_POST` that answers with `send`, and serve it with `LoopbackUpstream`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackUpstream(ThreadingHTTPServer):
    """Serves `handler` on a free loopback port; `url` is its `/v1` base URL."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, data: bytes, content_type: str) -> None:
        """A 200 with `data` as its whole body."""
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[LoopbackUpstream]:
    """`handler` served on a loopback port in a thread, for as long as the block runs."""
    upstream = LoopbackUpstream(handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        yield upstream
    finally:
        upstream.shutdown()
        upstream.server_close()


def sse_body(events: Sequence[dict[str, Any]]) -> bytes:
    """OpenAI's stream of `events`, ended by `[DONE]`."""
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def completion_body(model: str, choice: dict[str, Any], **fields: Any) -> bytes:
    """OpenAI's whole answer with one `choice`, and `fields` (`usage`, ...) beside it."""
    return json.dumps({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                       "choices": [choice], **fields}).encode()
