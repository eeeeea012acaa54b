"""Tool calls through the gateway, with the official `openai` client: the `tool_calls` of an
OpenAI-compatible upstream, and the `tool_use` blocks of an Anthropic one, reach the client whole
and streamed; models whose adapter cannot carry `tools` (Gemini) are skipped, and a request no
model can carry is a 400 that says why."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from _loopback import Handler, LoopbackUpstream

TOOLS = [{"type": "function", "function": {
    "name": "lookup_order", "description": "Find an order by its number",
    "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}}}]
CALL = {"id": "call_7Qx", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order": "1182"}'}}
ANSWER = {
    "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "tool-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [CALL]},
                 "finish_reason": "tool_calls"}],
    "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
}
# As OpenAI streams a call: the id and name first, then the arguments in pieces.
STREAM = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_7Qx", "type": "function", "function": {"name": "lookup_order", "arguments": ""}}]},
        "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"order": '}}]},
                  "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"1182"}'}}]},
                  "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}},
]


# The same call as the Messages API makes it.
ANTHROPIC_ANSWER = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4", "stop_reason": "tool_use",
    "content": [{"type": "text", "text": "Let me look that up."},
                {"type": "tool_use", "id": "toolu_01A", "name": "lookup_order", "input": {"order": "1182"}}],
    "usage": {"input_tokens": 40, "output_tokens": 12},
}
ANTHROPIC_STREAM = [
    {"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant", "content": [],
                                          "usage": {"input_tokens": 40, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me look that up."}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "toolu_01A", "name": "lookup_order", "input": {}}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"order":'}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ' "1182"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
    {"type": "message_stop"},
]


class ToolUpstream(LoopbackUpstream):
    """A server on a loopback port that answers every request with a tool call: in the Messages API's
    format on `/v1/messages`, else in OpenAI's."""

    def __init__(self) -> None:
        super().__init__(_Handler)
        self.seen: list[dict[str, Any]] = []


class _Handler(Handler):
    server: ToolUpstream

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.seen.append(body)
        if self.path == "/v1/messages":
            if body.get("stream"):
                events = b"".join(b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(event).encode()
                                  + b"\n\n" for event in ANTHROPIC_STREAM)
                self.send(events, "text/event-stream")
            else:
                self.send(json.dumps(ANTHROPIC_ANSWER).encode(), "application/json")
        elif body.get("stream"):
            data = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in STREAM)
            self.send(data + b"data: [DONE]\n\n", "text/event-stream")
        else:
            self.send(json.dumps({**ANSWER, "model": body["model"]}).encode(), "application/json")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[ToolUpstream]:
    server = ToolUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def live(upstream: ToolUpstream) -> Iterator[tuple[LiveGateway, RecordingSink]]:
    # `gemini-flash` is never reached: its adapter cannot carry tools, so dispatch skips it unsent.
    config = f"""
models:
  tools-capable:
    provider: openai
    base_url: {upstream.url}
    model: tool-model
    context_window: 100000
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
  gemini-flash:
    provider: gemini
    base_url: http://127.0.0.1:{closed_port()}
    model: gemini-2.5-flash
    context_window: 200000
    price: {{input_per_mtok: 0.3, output_per_mtok: 2.5}}
  claude:
    provider: anthropic
    base_url: {upstream.url.removesuffix("/v1")}
    model: claude-sonnet-4
    context_window: 200000
    price: {{input_per_mtok: 3.0, output_per_mtok: 15.0}}
    gate: {{max_concurrency: 1, queue_timeout_ms: {{escalation: 200, chat: 200, triage: 200}}}}
routes:
- name: cached
  matcher: "metadata.lane == cached"
  target: tools-capable
  cache: {{mode: on, ttl_s: 60}}
- name: anthropic
  matcher: "metadata.lane == anthropic"
  target: claude
- name: gemini-only
  matcher: "metadata.lane == gemini"
  target: gemini-flash
- name: support
  target: gemini-flash
  fallbacks: [tools-capable]
"""
    sink = RecordingSink()
    with live_gateway(config, None, telemetry=sink) as gateway:
        yield gateway, sink


def client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


MESSAGES: list[Any] = [{"role": "user", "content": "Where is order 1182?"}]


def test_a_tool_call_reaches_the_client_and_the_model_that_cannot_carry_tools_is_skipped(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    gateway, sink = live
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="laneway", messages=MESSAGES, tools=TOOLS, tool_choice="auto", user="agent-7")
    answer = reply.parse()

    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("call_7Qx", "lookup_order", '{"order": "1182"}')]
    assert reply.headers["x-laneway-model"] == "tools-capable"
    assert upstream.seen[-1]["tools"] == TOOLS and upstream.seen[-1]["tool_choice"] == "auto"
    assert upstream.seen[-1]["user"] == "agent-7"
    exchange = sink.by_id(reply.headers["x-request-id"])
    assert [(a.model, a.outcome) for a in exchange.attempts] == [("gemini-flash", "skipped"), ("tools-capable", "ok")]
    assert "tools" in exchange.attempts[0].error
    assert (exchange.prompt_tokens, exchange.completion_tokens) == (40, 12)


def test_a_streamed_tool_call_arrives_in_pieces_the_client_can_join(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, _ = live
    stream = client(gateway).chat.completions.create(
        model="laneway", messages=MESSAGES, tools=TOOLS, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    pieces = [call for d in deltas for call in (d.tool_calls or [])]
    assert {p.index for p in pieces} == {0}
    assert pieces[0].id == "call_7Qx" and pieces[0].function is not None
    assert pieces[0].function.name == "lookup_order"
    assert "".join(p.function.arguments or "" for p in pieces if p.function) == '{"order": "1182"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and (usage[-1].prompt_tokens, usage[-1].completion_tokens) == (40, 12)


def test_the_tool_results_of_a_conversation_are_passed_on_as_the_client_sent_them(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    gateway, _ = live
    history: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_7Qx", "content": '{"status": "shipped"}'},
    ]
    client(gateway).chat.completions.create(model="laneway", messages=history, tools=TOOLS)

    assert upstream.seen[-1]["messages"] == history


def test_tools_for_a_route_with_no_model_that_can_carry_them_are_a_clear_400(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, _ = live
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).chat.completions.create(model="laneway", messages=MESSAGES, tools=TOOLS,
                                                metadata={"lane": "gemini"})
    message = str(caught.value)
    assert "`tools`" in message and "`gemini-flash` (gemini)" in message and "fallback" in message


def test_a_cached_tool_call_is_replayed_whole_and_as_a_stream(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    gateway, _ = live
    messages: list[Any] = [{"role": "user", "content": "Where is order 5531?"}]
    ask = client(gateway).chat.completions.with_raw_response.create
    first = ask(model="laneway", messages=messages, tools=TOOLS, metadata={"lane": "cached"})
    sent = len(upstream.seen)
    again = ask(model="laneway", messages=messages, tools=TOOLS, metadata={"lane": "cached"})
    replayed = list(client(gateway).chat.completions.create(model="laneway", messages=messages, tools=TOOLS,
                                                             metadata={"lane": "cached"}, stream=True))

    assert len(upstream.seen) == sent  # both answered from the cache
    assert (first.headers["x-laneway-lane"], again.headers["x-laneway-lane"]) == ("primary", "cache")
    calls = again.parse().choices[0].message.tool_calls
    assert calls is not None and [(c.id, c.function.arguments) for c in calls] == [("call_7Qx", '{"order": "1182"}')]
    pieces = [call for c in replayed if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert [(p.index, p.id, p.function and p.function.arguments) for p in pieces] == [
        (0, "call_7Qx", '{"order": "1182"}')]
    assert [c.choices[0].finish_reason for c in replayed if c.choices][-1] == "tool_calls"


def test_an_anthropic_model_calls_tools_for_an_openai_client_whole_and_streamed(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    gateway, _ = live
    history: list[Any] = [
        {"role": "user", "content": "Where is order 77?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_7Qx", "content": '{"status": "shipped"}'},
        {"role": "user", "content": "And order 1182?"},
    ]
    ask = client(gateway).chat.completions
    whole = ask.create(model="laneway", messages=history, tools=TOOLS, tool_choice="required",
                       metadata={"lane": "anthropic"})
    sent = upstream.seen[-1]
    streamed = list(ask.create(model="laneway", messages=history, tools=TOOLS, stream=True,
                               metadata={"lane": "anthropic"}))

    assert sent["tools"] == [{"name": "lookup_order", "description": "Find an order by its number",
                              "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Where is order 77?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_7Qx", "name": "lookup_order",
                                           "input": {"order": "1182"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_7Qx",
                                      "content": '{"status": "shipped"}'},
                                     {"type": "text", "text": "And order 1182?"}]},
    ]
    message = whole.choices[0].message
    assert (message.content, whole.choices[0].finish_reason) == ("Let me look that up.", "tool_calls")
    assert message.tool_calls is not None
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("toolu_01A", "lookup_order", {"order": "1182"})]
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Let me look that up."
    pieces = [call for d in deltas for call in (d.tool_calls or [])]
    assert {p.index for p in pieces} == {0} and pieces[0].id == "toolu_01A"
    assert json.loads("".join(p.function.arguments or "" for p in pieces if p.function)) == {"order": "1182"}
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"


def test_a_stream_the_adapter_refuses_is_a_400_that_gives_its_gate_slot_back(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    # `claude` admits one request at a time: a slot kept by the refused stream would turn the
    # next request into a 429 once its queue wait ran out.
    gateway, _ = live
    broken: list[Any] = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": "{not json"}}]}]
    ask = client(gateway).chat.completions
    for _ in range(2):
        with pytest.raises(openai.BadRequestError, match="must be a JSON object"):
            list(ask.create(model="laneway", messages=broken, tools=TOOLS, stream=True,
                            metadata={"lane": "anthropic"}))
    answer = ask.create(model="laneway", messages=MESSAGES, tools=TOOLS, metadata={"lane": "anthropic"})
    assert answer.choices[0].finish_reason == "tool_calls"
