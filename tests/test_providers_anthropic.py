"""The Anthropic adapter against documented Messages API bodies and streams, and the simulated fleet."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from laneway.chat import ChatRequest, Chunk, Usage
from laneway.config import ModelSpec
from laneway.context import TokenCounter
from laneway.errors import (
    InvalidRequest,
    UpstreamBadResponse,
    UpstreamContextOverflow,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from laneway.providers import create_provider
from laneway.sim import RunningFleet, start_fleet

KEY_ENV = "LANEWAY_TEST_ANTHROPIC_KEY"

# The Messages API reference's example response.
DOCUMENTED_MESSAGE = b"""{
  "content": [{"text": "Hi! My name is Claude.", "type": "text"}],
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
  "model": "claude-3-7-sonnet-20250219",
  "role": "assistant",
  "stop_reason": "end_turn",
  "stop_sequence": null,
  "type": "message",
  "usage": {"input_tokens": 2095, "output_tokens": 503}
}"""

# The streaming guide's basic example, event for event.
DOCUMENTED_STREAM = [
    b'event: message_start\ndata: {"type": "message_start", "message": {'
    b'"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [],'
    b' "model": "claude-3-7-sonnet-20250219",'
    b' "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}\n\n',
    b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0,'
    b' "content_block": {"type": "text", "text": ""}}\n\n',
    b'event: ping\ndata: {"type": "ping"}\n\n',
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0,'
    b' "delta": {"type": "text_delta", "text": "Hello"}}\n\n',
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0,'
    b' "delta": {"type": "text_delta", "text": "!"}}\n\n',
    b'event: content_block_stop\ndata: {"type": "content_block_stop", "index": 0}\n\n',
    b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "end_turn",'
    b' "stop_sequence":null}, "usage": {"output_tokens": 15}}\n\n',
    b'event: message_stop\ndata: {"type": "message_stop"}\n\n',
]
OVERLOADED_EVENT = (b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error",'
                    b' "message": "Overloaded"}}\n\n')


def error_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message},
                         "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"})


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    events: list[bytes] | None = None


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Loopback:
    """A purpose-built upstream on a loopback port: answers `reply`, records what it was sent."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.seen: list[Seen] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.path_qs, dict(request.headers), orjson.loads(await request.read())))
        reply = self.reply
        if reply.events is None:
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers,
                                content_type=reply.content_type)
        response = web.StreamResponse(status=reply.status, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in reply.events:
            await response.write(event)
        await response.write_eof()
        return response


@pytest.fixture
async def loopback() -> AsyncIterator[Loopback]:
    server = Loopback()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


@pytest.fixture
async def fleet() -> AsyncIterator[RunningFleet]:
    running = await start_fleet()
    yield running
    await running.aclose()


def spec(model: str = "claude-3-7-sonnet-20250219", key_env: str | None = KEY_ENV) -> ModelSpec:
    return ModelSpec(name="claude-sonnet-37", provider="anthropic", base_url="", model=model,
                     api_key_env=key_env)


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def conversation(**params: Any) -> ChatRequest:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "My card was charged twice."},
        {"role": "user", "content": [{"type": "text", "text": "Order 1182."}]},
        {"role": "assistant", "content": "Let me check."},
        {"role": "system", "content": "Billing data is attached."},
        {"role": "user", "content": "Thanks."},
    ]
    return ChatRequest(model="claude-sonnet-37", messages=messages, params=params)


async def drain(provider: Any, request: ChatRequest, into: list[Chunk] | None = None) -> list[Chunk]:
    chunks = into if into is not None else []
    async for chunk in provider.stream(request, deadline()):
        chunks.append(chunk)
    return chunks


async def test_complete_translates_documented_message_and_sends_messages_api_request(
        loopback: Loopback, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-test-7f3a")
    loopback.reply = Reply(body=DOCUMENTED_MESSAGE)
    provider = create_provider(spec(), loopback.url)
    request = conversation(temperature=1.6, top_p=0.9, stop="###", presence_penalty=0.4, seed=3,
                           logprobs=True, max_tokens=300)
    completion = await provider.complete(request, deadline())
    await provider.aclose()

    assert (completion.text, completion.finish_reason) == ("Hi! My name is Claude.", "stop")
    assert completion.usage == Usage(2095, 503)
    assert completion.upstream_id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    seen = loopback.seen[0]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-test-7f3a"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in {k.lower() for k in seen.headers}
    assert seen.body == {
        "model": "claude-3-7-sonnet-20250219",
        "max_tokens": 300,
        "system": "You are a support agent.\n\nBilling data is attached.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "My card was charged twice."},
                                         {"type": "text", "text": "Order 1182."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}]},
            {"role": "user", "content": [{"type": "text", "text": "Thanks."}]},
        ],
        "temperature": 1.0,
        "stop_sequences": ["###"],
    }


async def test_blank_blocks_both_samplers_and_a_prefill_tail_are_sent_as_the_api_accepts_them(
        loopback: Loopback) -> None:
    # The Messages API answers 400 to a whitespace-only text block, to a final assistant turn that
    # ends in whitespace, and (recent models) to `temperature` with `top_p`.
    loopback.reply = Reply(body=DOCUMENTED_MESSAGE)
    provider = create_provider(spec(key_env=None), loopback.url)
    messages = [{"role": "user", "content": [{"type": "text", "text": "  \n"}, {"type": "text", "text": "Refund?"}]},
                {"role": "assistant", "content": " "},
                {"role": "user", "content": "Order 7."},
                {"role": "assistant", "content": "Your refund is \n"}]
    await provider.complete(ChatRequest("m", messages, {"top_p": 0.5, "stop": ["\n", "", "END"]}), deadline())
    await provider.complete(ChatRequest("m", messages[:1], {"temperature": 0.2, "top_p": 0.5, "stop": "\n\n"}),
                            deadline())
    await provider.aclose()

    first, second = (seen.body for seen in loopback.seen)
    # and to an empty or whitespace-only stop sequence
    assert first["stop_sequences"] == ["END"] and "stop_sequences" not in second
    assert first["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Refund?"}, {"type": "text", "text": "Order 7."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Your refund is"}]},
    ]
    assert first["top_p"] == 0.5 and "temperature" not in first
    assert second["temperature"] == 0.2 and "top_p" not in second


async def test_max_tokens_defaults_when_the_client_names_none(loopback: Loopback) -> None:
    loopback.reply = Reply(body=DOCUMENTED_MESSAGE)
    provider = create_provider(spec(key_env=None), loopback.url)
    await provider.complete(ChatRequest("m", [{"role": "user", "content": "hi"}]), deadline())
    await provider.complete(ChatRequest("m", [{"role": "user", "content": "hi"}],
                                        {"max_completion_tokens": 77}), deadline())
    await provider.aclose()
    assert [s.body["max_tokens"] for s in loopback.seen] == [4096, 77]
    assert "x-api-key" not in loopback.seen[0].headers
    assert "system" not in loopback.seen[0].body


async def test_a_request_without_any_turn_is_refused_before_sending(loopback: Loopback) -> None:
    provider = create_provider(spec(), loopback.url)
    with pytest.raises(InvalidRequest, match="non-empty `user` or `assistant`"):
        await provider.complete(ChatRequest("m", [{"role": "system", "content": "Only a system prompt."}]),
                                deadline())
    await provider.aclose()
    assert loopback.seen == []


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("refusal", "content_filter"),
])
async def test_stop_reasons_map_to_openai_finish_reasons(loopback: Loopback, stop_reason: str,
                                                          finish: str) -> None:
    body = orjson.loads(DOCUMENTED_MESSAGE)
    body["stop_reason"] = stop_reason
    loopback.reply = Reply(body=orjson.dumps(body))
    provider = create_provider(spec(), loopback.url)
    completion = await provider.complete(conversation(), deadline())
    await provider.aclose()
    assert completion.finish_reason == finish


async def test_stream_translates_documented_events_with_usage_from_start_and_delta(
        loopback: Loopback) -> None:
    loopback.reply = Reply(events=DOCUMENTED_STREAM)
    provider = create_provider(spec(), loopback.url)
    chunks = await drain(provider, conversation(max_tokens=64))
    await provider.aclose()

    assert [c.text for c in chunks if c.text] == ["Hello", "!"]
    finals = [c for c in chunks if c.finish_reason is not None]
    assert len(finals) == 1 and finals[0] is chunks[-1]
    assert finals[0].finish_reason == "stop"
    assert finals[0].usage == Usage(25, 15)
    assert loopback.seen[0].body["stream"] is True


def tool_use_stream(*arguments: bytes) -> list[bytes]:
    """A `tool_use` block streamed as the API does: its input as `input_json_delta` pieces."""
    deltas = [b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0,'
              b' "delta": {"type": "input_json_delta", "partial_json": ' + orjson.dumps(piece.decode()) + b'}}\n\n'
              for piece in arguments]
    return [
        DOCUMENTED_STREAM[0],
        b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, "content_block":'
        b' {"type": "tool_use", "id": "toolu_01", "name": "list_orders", "input": {}}}\n\n',
        *deltas,
        b'event: content_block_stop\ndata: {"type": "content_block_stop", "index": 0}\n\n',
        b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "tool_use"},'
        b' "usage": {"output_tokens": 12}}\n\n',
        b'event: message_stop\ndata: {"type": "message_stop"}\n\n',
    ]


@pytest.mark.parametrize(("pieces", "arguments"), [
    ((b"",), "{}"),  # a call without arguments: one empty piece
    ((), "{}"),
    ((b'{"order', b'_id": "1182"}'), '{"order_id": "1182"}'),
])
async def test_streamed_tool_call_arguments_join_into_json(loopback: Loopback, pieces: tuple[bytes, ...],
                                                           arguments: str) -> None:
    loopback.reply = Reply(events=tool_use_stream(*pieces))
    provider = create_provider(spec(), loopback.url)
    chunks = await drain(provider, conversation())
    await provider.aclose()
    calls = [call for c in chunks for call in c.tool_calls or ()]
    assert calls[0]["id"] == "toolu_01" and calls[0]["function"]["name"] == "list_orders"
    assert {call["index"] for call in calls} == {0}
    assert "".join(call["function"].get("arguments", "") for call in calls) == arguments
    assert chunks[-1].finish_reason == "tool_calls"


async def test_a_message_delta_that_repeats_the_input_count_keeps_the_cache_counts_it_leaves_null(
        loopback: Loopback) -> None:
    start = DOCUMENTED_STREAM[0].replace(b'"usage": {"input_tokens": 25, "output_tokens": 1}',
                                         b'"usage": {"input_tokens": 25, "cache_read_input_tokens": 100,'
                                         b' "cache_creation_input_tokens": 0, "output_tokens": 1}')
    delta = (b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "end_turn"},'
             b' "usage": {"input_tokens": 25, "cache_read_input_tokens": null, "output_tokens": 15}}\n\n')
    loopback.reply = Reply(events=[start, *DOCUMENTED_STREAM[1:6], delta, DOCUMENTED_STREAM[-1]])
    provider = create_provider(spec(), loopback.url)
    chunks = await drain(provider, conversation())
    await provider.aclose()
    assert chunks[-1].usage == Usage(125, 15, 100, 0)  # the 100 cached prompt tokens still counted (and priced)


async def test_stream_stop_reason_max_tokens_is_length(loopback: Loopback) -> None:
    events = [e.replace(b'"stop_reason": "end_turn"', b'"stop_reason": "max_tokens"')
              for e in DOCUMENTED_STREAM]
    loopback.reply = Reply(events=events)
    provider = create_provider(spec(), loopback.url)
    chunks = await drain(provider, conversation())
    await provider.aclose()
    assert chunks[-1].finish_reason == "length"


async def test_stream_without_message_stop_is_cut(loopback: Loopback) -> None:
    loopback.reply = Reply(events=DOCUMENTED_STREAM[:5])
    provider = create_provider(spec(), loopback.url)
    got: list[Chunk] = []
    with pytest.raises(UpstreamBadResponse, match="message_stop"):
        await drain(provider, conversation(), got)
    await provider.aclose()
    assert "".join(c.text for c in got) == "Hello!"
    assert all(c.finish_reason is None for c in got)


@pytest.mark.parametrize(("event", "error"), [
    (OVERLOADED_EVENT, UpstreamUnavailable),
    (b'event: error\ndata: {"type": "error", "error": {"type": "api_error", "message": "Internal"}}\n\n',
     UpstreamUnavailable),
    (b'event: error\ndata: {"type": "error", "error": {"type": "rate_limit_error",'
     b' "message": "slow down"}}\n\n', UpstreamRateLimited),
])
async def test_mid_stream_error_event_raises_after_the_text_already_sent(
        loopback: Loopback, event: bytes, error: type[UpstreamError]) -> None:
    loopback.reply = Reply(events=[*DOCUMENTED_STREAM[:4], event])
    provider = create_provider(spec(), loopback.url)
    got: list[Chunk] = []
    with pytest.raises(error, match="mid-stream"):
        await drain(provider, conversation(), got)
    await provider.aclose()
    assert [c.text for c in got] == ["Hello"]


async def test_malformed_stream_event_is_a_bad_response(loopback: Loopback) -> None:
    bad = b"event: content_block_delta\ndata: {not json\n\n"
    loopback.reply = Reply(events=[*DOCUMENTED_STREAM[:3], bad])
    provider = create_provider(spec(), loopback.url)
    with pytest.raises(UpstreamBadResponse, match="malformed event"):
        await drain(provider, conversation())
    await provider.aclose()


@pytest.mark.parametrize(("reply", "error", "status"), [
    (Reply(529, error_body("overloaded_error", "Overloaded")), UpstreamUnavailable, 529),
    (Reply(500, error_body("api_error", "Internal server error")), UpstreamUnavailable, 500),
    (Reply(400, error_body("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum")),
     UpstreamContextOverflow, 400),
    (Reply(400, error_body("invalid_request_error", "max_tokens: Field required")), UpstreamRejected, 400),
    (Reply(401, error_body("authentication_error", "invalid x-api-key")), UpstreamRejected, 401),
    (Reply(403, error_body("permission_error", "Your API key does not have permission")),
     UpstreamRejected, 403),
])
async def test_error_answers_map_to_laneway_errors(loopback: Loopback, reply: Reply,
                                                   error: type[UpstreamError], status: int) -> None:
    loopback.reply = reply
    provider = create_provider(spec(), loopback.url)
    with pytest.raises(error) as caught:
        await provider.complete(conversation(), deadline())
    with pytest.raises(error):
        await drain(provider, conversation())
    await provider.aclose()
    assert caught.value.upstream_status == status
    assert orjson.loads(reply.body)["error"]["message"] in caught.value.message


@pytest.mark.parametrize(("body", "client_fault"), [
    (error_body("invalid_request_error", "Your credit balance is too low to access the Anthropic API. Please go to "
                                         "Plans & Billing to upgrade or purchase credits."), False),
    (error_body("invalid_request_error", "max_tokens: Field required"), True),
])
async def test_a_400_about_the_gateways_account_is_not_the_clients_fault(loopback: Loopback, body: bytes,
                                                                         client_fault: bool) -> None:
    """An account without credit reached the client as its own malformed request, and never cooled the model."""
    loopback.reply = Reply(400, body)
    provider = create_provider(spec(), loopback.url)
    for call in (lambda: provider.complete(conversation(), deadline()), lambda: drain(provider, conversation())):
        with pytest.raises(UpstreamRejected) as caught:
            await call()
        assert caught.value.client_fault is client_fault
        assert caught.value.status == (400 if client_fault else 502)
        assert ("add credit" in caught.value.message) is not client_fault
    await provider.aclose()


async def test_rate_limit_carries_retry_after(loopback: Loopback) -> None:
    body = error_body("rate_limit_error", "Number of request tokens has exceeded your limit")
    loopback.reply = Reply(429, body, headers={"retry-after": "17"})
    provider = create_provider(spec(), loopback.url)
    with pytest.raises(UpstreamRateLimited) as caught:
        await provider.complete(conversation(), deadline())
    await provider.aclose()
    assert caught.value.retry_after_s == 17.0


@pytest.mark.parametrize(("reply", "pattern"), [
    (Reply(body=b'{"content": [{"type": "text", "text": "Hi'), "malformed JSON"),
    (Reply(body=b"<html>maintenance</html>", content_type="text/html"), "expected JSON"),
    (Reply(body=b'{"type": "message", "role": "assistant"}'), "content"),
])
async def test_unusable_success_bodies_are_bad_responses(loopback: Loopback, reply: Reply,
                                                          pattern: str) -> None:
    loopback.reply = reply
    provider = create_provider(spec(), loopback.url)
    with pytest.raises(UpstreamBadResponse, match=pattern):
        await provider.complete(conversation(), deadline())
    await provider.aclose()


async def test_sim_answers_the_same_text_and_usage_whole_or_streamed(fleet: RunningFleet) -> None:
    provider = create_provider(spec(), fleet.url + "/claude-sonnet-37")
    request = conversation(max_tokens=60)
    completion = await provider.complete(request, deadline())
    chunks = await drain(provider, request)
    await provider.aclose()

    assert completion.text and completion.text == "".join(c.text for c in chunks)
    assert chunks[-1].usage == completion.usage
    assert chunks[-1].finish_reason == completion.finish_reason
    assert 0 < completion.usage.completion_tokens <= 60
    # The fleet counts the prompt as it received it: the system prompt and the merged turns.
    sent = [{"role": "system", "content": "You are a support agent.\n\nBilling data is attached."},
            {"role": "user", "content": "My card was charged twice.Order 1182."},
            {"role": "assistant", "content": "Let me check."}, {"role": "user", "content": "Thanks."}]
    assert completion.usage.prompt_tokens == TokenCounter().count(sent)


async def test_sim_length_finish_when_max_tokens_caps_the_answer(fleet: RunningFleet) -> None:
    provider = create_provider(spec(), fleet.url + "/claude-sonnet-37")
    completion = await provider.complete(conversation(max_tokens=3), deadline())
    await provider.aclose()
    assert completion.finish_reason == "length"
    assert completion.usage.completion_tokens == 3


@pytest.mark.parametrize(("fault", "error", "streamed"), [
    ("error_529", UpstreamUnavailable, False),
    ("error_500", UpstreamUnavailable, True),
    ("overflow", UpstreamContextOverflow, False),
    ("overflow", UpstreamContextOverflow, True),
    ("malformed_json", UpstreamBadResponse, False),
    ("wrong_content_type", UpstreamBadResponse, False),
    ("wrong_content_type", UpstreamBadResponse, True),
    ("cut_mid_stream", UpstreamBadResponse, True),
])
async def test_sim_faults(fleet: RunningFleet, fault: str, error: type[UpstreamError],
                          streamed: bool) -> None:
    provider = create_provider(spec(f"claude-3-7-sonnet-20250219@{fault}"), fleet.url + "/claude-sonnet-37")
    with pytest.raises(error):
        if streamed:
            await drain(provider, conversation())
        else:
            await provider.complete(conversation(), deadline())
    await provider.aclose()


async def test_sim_rate_limit_with_retry_after(fleet: RunningFleet) -> None:
    model = spec("claude-3-7-sonnet-20250219@error_429_retry_4")
    provider = create_provider(model, fleet.url + "/claude-sonnet-37")
    with pytest.raises(UpstreamRateLimited) as caught:
        await provider.complete(conversation(), deadline())
    await provider.aclose()
    assert caught.value.retry_after_s == 4.0
    assert caught.value.upstream_status == 429


async def test_tool_choice_and_parallel_calls_map_and_malformed_calls_are_refused_unsent(loopback: Loopback) -> None:
    loopback.reply = Reply(body=DOCUMENTED_MESSAGE)
    provider = create_provider(spec(key_env=None), loopback.url)
    tools = [{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}]
    hi = [{"role": "user", "content": "hi"}]
    named = {"type": "function", "function": {"name": "refund"}}
    await provider.complete(ChatRequest("m", hi, {"tools": tools, "tool_choice": named}), deadline())
    await provider.complete(ChatRequest("m", hi, {"tools": tools, "parallel_tool_calls": False}), deadline())
    await provider.complete(ChatRequest("m", hi, {"tools": tools, "tool_choice": "none"}), deadline())
    strict = [{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}, "strict": True}}]
    await provider.complete(ChatRequest("m", hi, {"tools": strict}), deadline())  # as `pydantic_function_tool` sends
    bad_arguments = [*hi, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "refund", "arguments": "not json"}}]}]
    with pytest.raises(InvalidRequest, match="`arguments` must be a JSON object"):
        await provider.complete(ChatRequest("m", bad_arguments, {"tools": tools}), deadline())
    with pytest.raises(InvalidRequest, match="tool_call_id"):
        await provider.complete(ChatRequest("m", [*hi, {"role": "tool", "content": "ok"}], {"tools": tools}),
                                deadline())
    with pytest.raises(InvalidRequest, match=r"tools\[0\]"):
        await provider.complete(ChatRequest("m", hi, {"tools": [{"type": "web_search"}]}), deadline())
    await provider.aclose()

    sent = [seen.body for seen in loopback.seen]
    assert len(sent) == 4  # the malformed requests were never sent
    assert sent[0]["tools"] == [{"name": "refund", "input_schema": {"type": "object"}}]
    assert sent[3]["tools"] == [{"name": "refund", "input_schema": {"type": "object"}, "strict": True}]
    assert sent[0]["tool_choice"] == {"type": "tool", "name": "refund"}
    assert sent[1]["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert sent[2]["tool_choice"] == {"type": "none"}


async def test_call_ids_of_other_servers_are_sent_as_the_api_accepts_them(loopback: Loopback) -> None:
    """The API takes `tool_use` ids of `[a-zA-Z0-9_-]` only; a conversation whose calls another server made
    (`functions.lookup_order:0`) fails over to Claude with ids it accepts, each call still matched to its result."""
    loopback.reply = Reply(body=DOCUMENTED_MESSAGE)
    provider = create_provider(spec(key_env=None), loopback.url)
    ids = ["functions.lookup_order:0", "functions.lookup_order_0", "toolu_01A"]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Where are orders 1 and 2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "lookup_order", "arguments": "{}"}} for i in ids]},
        *({"role": "tool", "tool_call_id": i, "content": "shipped"} for i in reversed(ids)),
    ]
    await provider.complete(ChatRequest("m", messages, {}), deadline())
    await provider.aclose()
    turns = loopback.seen[0].body["messages"]
    sent = [block["id"] for block in turns[1]["content"]]
    answered = [block["tool_use_id"] for block in turns[2]["content"]]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", i) for i in sent)
    assert len(set(sent)) == 3 and sent[2] == "toolu_01A"
    assert answered == sent[::-1]
