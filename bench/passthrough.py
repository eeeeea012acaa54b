"""The floor for a Python gateway: uvicorn (uvloop, httptools) + a raw ASGI app + one pooled aiohttp
client. No routing, no parsing, no metrics: it forwards the body and answers with what came back,
streams chunk by chunk as they arrive.

Run: python bench/passthrough.py --port 9003 --upstream http://127.0.0.1:9001/v1/chat/completions
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


class Passthrough:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=30),
                                                  skip_auto_headers=("User-Agent",))
        return self._session

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, self)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {"content-type": "application/json"}
        async with self.session().post(self.upstream, data=body, headers=headers) as response:
            ctype = response.headers.get("content-type", "application/json").encode()
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [(b"content-type", ctype)]})
            if b'"stream":true' in body:
                async for piece in response.content.iter_any():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": await response.read()})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _lifespan(receive: Receive, send: Send, app: Passthrough) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await app.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9003)
    parser.add_argument("--upstream", default="http://127.0.0.1:9001/v1/chat/completions")
    args = parser.parse_args()
    print(f"passthrough ready at http://{args.host}:{args.port}", flush=True)
    uvicorn.run(Passthrough(args.upstream), host=args.host, port=args.port, loop="uvloop", http="httptools",
                lifespan="on", access_log=False, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
