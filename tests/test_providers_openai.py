"""The `openai` adapter against what OpenAI-compatible servers other than OpenAI answer: llama.cpp's and vLLM's
refusals of a prompt too long, and the error events servers put in a stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import pytest

from _loopback import Handler, serving
from laneway.chat import ChatRequest
from laneway.config import ModelSpec
from laneway.errors import (
    UpstreamContextOverflow,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from laneway.providers import create_provider

LLAMA_CPP_OVERFLOW = {"error": {"code": 400, "message": "request (9412 tokens) exceeds the available context size "
                                "(8192 tokens), try increasing it", "type": "exceed_context_size_error",
                                "n_prompt_tokens": 9412, "n_ctx": 8192}}


class Scripted(Handler):
    status: ClassVar[int] = 200
    body: ClassVar[bytes] = b""
    content_type: ClassVar[str] = "application/json"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(self.status)
        self.send_header("content-type", self.content_type)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


def answer(status: int, body: bytes, content_type: str = "application/json") -> type[Scripted]:
    return type("Answer", (Scripted,), {"status": status, "body": body, "content_type": content_type})


def request() -> ChatRequest:
    return ChatRequest("local", [{"role": "user", "content": "hi"}])


async def call(url: str, stream: bool) -> Any:
    provider = create_provider(ModelSpec(name="local", provider="openai", base_url=url, model="m"), url)
    deadline = asyncio.get_running_loop().time() + 5
    try:
        if not stream:
            return await provider.complete(request(), deadline)
        return [chunk async for chunk in provider.stream(request(), deadline)]
    finally:
        await provider.aclose()


@pytest.mark.parametrize("stream", [False, True])
async def test_llama_cpp_refusing_a_prompt_too_long_is_an_overflow(stream: bool) -> None:
    """Read as a malformed request, it reached the client as a 400 and the route's `long_context` model was
    never tried."""
    with (serving(answer(400, json.dumps(LLAMA_CPP_OVERFLOW).encode())) as upstream,
          pytest.raises(UpstreamContextOverflow, match="exceeds the available context size")):
        await call(upstream.url, stream)


@pytest.mark.parametrize(("error", "raised"), [
    (LLAMA_CPP_OVERFLOW["error"], UpstreamContextOverflow),
    ({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested "
      "5000 tokens", "type": "BadRequestError", "code": 400}, UpstreamContextOverflow),  # vLLM
    ({"message": "Rate limit reached", "type": "rate_limit_error", "code": "429"}, UpstreamRateLimited),
    ({"message": "tools are not supported", "type": "BadRequestError", "code": 400}, UpstreamRejected),
    ({"message": "overloaded", "code": 503}, UpstreamUnavailable),
    ({"message": "something broke"}, UpstreamUnavailable),
])
async def test_an_error_event_in_a_stream_is_read_as_the_same_error_in_a_status(
        error: dict[str, Any], raised: type[UpstreamError]) -> None:
    """Every error event was a generic failure, retried on the same model: a 400 sent again, an overflow never
    handed to the `long_context` model, a 429 answered as a 502 without its wait."""
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in (role, {"error": error}))
    with serving(answer(200, body, "text/event-stream")) as upstream, \
            pytest.raises(raised, match="mid-stream") as caught:
        await call(upstream.url, stream=True)
    assert type(caught.value) is raised
