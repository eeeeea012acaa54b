"""bench/stream_probe.py, the socket-level cross-check of streaming time to first byte, against
the benchmark's fake upstream on a real loopback socket."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from stream_probe import probe
from upstream import Upstream


@contextmanager
def serving(start: Callable[[], Awaitable[asyncio.Server]]) -> Iterator[str]:
    """Runs a server made by `start` on its own loop in a thread; yields its chat-completions URL."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start())
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.close()
        loop.close()


def test_the_probe_times_the_first_event_and_reads_each_stream_to_its_end() -> None:
    async def start() -> asyncio.Server:
        # three events 20 ms apart: each stream lasts 40 ms
        return await asyncio.get_running_loop().create_server(lambda: Upstream(3, 0.02), "127.0.0.1", 0)

    with serving(start) as url:
        figures = probe(url, seconds=0.5, warmup=0.1)
    # one stream at a time over one connection: at most 0.5 s / 40 ms of them
    assert 3 <= figures["requests"] <= 14
    assert 0 < figures["head_p50_ms"] <= figures["first_event_p50_ms"] < 20


def test_the_probe_stops_on_an_answer_that_is_not_a_stream() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(answer, "127.0.0.1", 0)

    with serving(start) as url, pytest.raises(RuntimeError, match="not a 200 stream"):
        probe(url, seconds=0.2, warmup=0)
