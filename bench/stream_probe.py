"""Time to first byte of a streamed answer, read off a plain blocking socket.

The cross-check of `laneway loadtest --stream`, as wrk is for plain requests: one keep-alive
connection, streaming requests back to back, each timed from the moment its bytes were written
to the arrival of the answer's first bytes and of its first SSE `data:` event. No event loop and no
HTTP library stand between the socket and the clock.

Run: python bench/stream_probe.py --url http://127.0.0.1:9005/v1/chat/completions [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

PAYLOADS = Path(__file__).resolve().parent / "payloads.jsonl"
_OK = b"HTTP/1.1 200 "
_END_OF_CHUNKED = b"\r\n0\r\n\r\n"


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    return head + body


def streaming_bodies(limit: int = 50) -> list[bytes]:
    """The benchmark's payloads, each asking for a stream (compact JSON, as clients send it)."""
    bodies = []
    for line in PAYLOADS.read_text().splitlines()[:limit]:
        if line.strip():
            payload = json.loads(line)
            payload["stream"] = True
            bodies.append(json.dumps(payload, separators=(",", ":")).encode())
    return bodies


def probe(url: str, seconds: float, warmup: float = 1.0) -> dict[str, float | int]:
    """Streams back to back for `warmup` + `seconds`; medians (and p99) of the counted ones. A
    non-200 answer or a closed connection stops the probe: a benchmark must not time errors."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [request_bytes(host, port, parts.path, body) for body in streaming_bodies()]
    heads: list[float] = []
    firsts: list[float] = []
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        counting_from = time.perf_counter() + warmup
        n = 0
        while (sent := time.perf_counter()) < counting_from + seconds:
            sock.sendall(requests[n % len(requests)])
            n += 1
            head_at, first_at = _read_stream(sock)
            if sent < counting_from:
                continue
            heads.append((head_at - sent) * 1000)
            firsts.append((first_at - sent) * 1000)
    return {"requests": len(firsts),
            "head_p50_ms": _quantile(heads, 0.5), "first_event_p50_ms": _quantile(firsts, 0.5),
            "first_event_p99_ms": _quantile(firsts, 0.99)}


def _read_stream(sock: socket.socket) -> tuple[float, float]:
    """Reads one chunked SSE answer to its end; when its first bytes and its first event arrived."""
    buffer = b""
    head_at = first_at = 0.0
    while True:
        piece = sock.recv(65536)
        at = time.perf_counter()
        if not piece:
            raise ConnectionError("the server closed the connection")
        buffer += piece
        if not head_at:
            head_at = at
        if len(buffer) >= len(_OK) and not buffer.startswith(_OK):
            raise RuntimeError(f"not a 200 stream: {buffer[:200]!r}")
        if not first_at and b"data: " in buffer:
            first_at = at
        if buffer.endswith(_END_OF_CHUNKED):
            return head_at, first_at


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if q == 0.5:
        return statistics.median(values)
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(probe(args.url, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
