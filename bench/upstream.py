"""A fast fake OpenAI-compatible upstream for overhead benchmarks: raw asyncio protocol on uvloop.

Every request gets the same small chat completion. A body asking for `"stream": true` gets an SSE
stream of `--chunks` content events, the first at once and the rest `--gap-ms` apart, then a usage
event and `[DONE]`, so a client can tell whether a proxy forwards chunks as they arrive.

Run: python bench/upstream.py --port 9001 [--chunks 6] [--gap-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import orjson
import uvloop

_COMPLETION = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "fast",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Your refund was issued today."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 24, "completion_tokens": 7, "total_tokens": 31},
})
_JSON_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
              b"connection: keep-alive\r\n\r\n" % len(_COMPLETION))
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
             b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n")


def _event(payload: dict[str, Any] | None) -> bytes:
    data = b"data: " + (orjson.dumps(payload) if payload is not None else b"[DONE]") + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _delta(text: str) -> bytes:
    return _event({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": "fast",
                   "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


_TAIL = (_event({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                 "model": "fast", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
         + _event({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": "fast", "choices": [],
                   "usage": {"prompt_tokens": 24, "completion_tokens": 6, "total_tokens": 30}})
         + _event(None) + b"0\r\n\r\n")


class Upstream(asyncio.Protocol):
    def __init__(self, chunks: int, gap_s: float) -> None:
        self.chunks = chunks
        self.gap_s = gap_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.answer(body)

    def answer(self, body: bytes) -> None:
        assert self.transport is not None
        if b'"stream":true' not in body and b'"stream": true' not in body:
            self.transport.write(_JSON_HEAD + _COMPLETION)
            return
        self.transport.write(_SSE_HEAD + _delta("Your "))
        loop = asyncio.get_running_loop()
        for i in range(1, self.chunks):
            last = i == self.chunks - 1
            piece = _delta(f"word{i} ") + (_TAIL if last else b"")
            loop.call_later(self.gap_s * i, self._write, piece)
        if self.chunks <= 1:
            self.transport.write(_TAIL)

    def _write(self, piece: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(piece)


async def serve(host: str, port: int, chunks: int, gap_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(chunks, gap_s), host, port, backlog=4096)
    print(f"upstream ready at http://{host}:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--chunks", type=int, default=6, help="content events per stream")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="time between content events")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.chunks, args.gap_ms / 1000))


if __name__ == "__main__":
    main()
