"""Tool calls through the gateway, with the official `openai` client: the `tool_calls` of an
OpenAI-compatible upstream, the `tool_use` blocks of an Anthropic one and the `functionCall` parts of
a Gemini one reach the client whole and streamed, and the conversation that follows reaches each
upstream in its own terms (a Gemini call with its thought signature)."""

from __future__ import annotations

import json
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


# The same call as the Gemini API makes it, signed; in a stream, a second call comes unsigned (a parallel call).
SIGNATURE = "c2lnbmVkLWJ5LWdlbWluaQ=="
GEMINI_CALL = {"functionCall": {"name": "lookup_order", "args": {"order": "1182"}}, "thoughtSignature": SIGNATURE}
GEMINI_ANSWER = {
    "candidates": [{"content": {"role": "model", "parts": [{"text": "Let me look that up."}, GEMINI_CALL]},
                    "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 12}, "modelVersion": "gemini-2.5-flash",
}
GEMINI_STREAM = [
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Let me look that up."}]}}]},
    {"candidates": [{"content": {"role": "model", "parts": [
        GEMINI_CALL, {"functionCall": {"name": "lookup_order", "args": {"order": "77"}}}]}, "finishReason": "STOP"}],
     "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 20}},
]
# Two calls of one function at once, each with the id the API gives it.
GEMINI_PARALLEL = {
    "candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"id": "fc-a", "name": "lookup_order", "args": {"order": "1182"}},
         "thoughtSignature": SIGNATURE},
        {"functionCall": {"id": "fc-b", "name": "lookup_order", "args": {"order": "77"}}}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 20},
}
# What a Gemini model answers when it got its own function call wrong.
GEMINI_MALFORMED = {
    "candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "MALFORMED_FUNCTION_CALL"}],
    "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 0},
}


class ToolUpstream(LoopbackUpstream):
    """A server on a loopback port that answers every request with a tool call: in the Messages API's
    format on `/v1/messages`, in the Gemini API's on `/v1beta/models/...`, else in OpenAI's."""

    def __init__(self) -> None:
        super().__init__(_Handler)
        self.seen: list[dict[str, Any]] = []


class _Handler(Handler):
    server: ToolUpstream

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.seen.append(body)
        if self.path.startswith("/v1beta/models/"):
            if self.path.endswith(":streamGenerateContent?alt=sse"):
                self.send(b"".join(b"data: " + json.dumps(event).encode() + b"\r\n\r\n" for event in GEMINI_STREAM),
                          "text/event-stream")
            else:
                last = json.dumps(body["contents"][-1])
                answer = (GEMINI_MALFORMED if "malformed" in last else GEMINI_PARALLEL if "both" in last
                          else GEMINI_ANSWER)
                self.send(json.dumps(answer).encode(), "application/json")
        elif self.path == "/v1/messages":
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


@pytest.fixture(scope="module")
def upstream() -> Iterator[ToolUpstream]:
    server = ToolUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def tool_config(upstream: ToolUpstream) -> str:
    return f"""
models:
  tools-capable:
    provider: openai
    base_url: {upstream.url}
    model: tool-model
    context_window: 100000
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
  gemini-flash:
    provider: gemini
    base_url: {upstream.url.removesuffix("/v1")}
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
  claude-profiled:
    provider: anthropic
    base_url: {upstream.url.removesuffix("/v1")}
    model: claude-sonnet-4
    profile: {{system: "Answer as the support team."}}
  gemini-profiled:
    provider: gemini
    base_url: {upstream.url.removesuffix("/v1")}
    model: gemini-2.5-flash
    profile: {{system: "Answer as the support team."}}
routes:
- name: cached
  matcher: "metadata.lane == cached"
  target: tools-capable
  cache: {{mode: on, ttl_s: 60}}
- name: anthropic
  matcher: "metadata.lane == anthropic"
  target: claude
- name: gemini
  matcher: "metadata.lane == gemini"
  target: gemini-flash
  fallbacks: [tools-capable]
- name: support
  target: tools-capable
"""


@pytest.fixture(scope="module")
def live(upstream: ToolUpstream) -> Iterator[tuple[LiveGateway, RecordingSink]]:
    sink = RecordingSink()
    with live_gateway(tool_config(upstream), None, telemetry=sink) as gateway:
        yield gateway, sink


def client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


MESSAGES: list[Any] = [{"role": "user", "content": "Where is order 1182?"}]


def test_a_tool_call_reaches_the_client(
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
    assert [(a.model, a.outcome) for a in exchange.attempts] == [("tools-capable", "ok")]
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


def test_a_cached_tool_call_is_replayed_whole_and_as_a_stream(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    gateway, _ = live
    messages: list[Any] = [{"role": "user", "content": "Where is order 5531?"}]
    ask = client(gateway).chat.completions.with_raw_response.create
    first = ask(model="laneway", messages=messages, tools=TOOLS, metadata={"lane": "cached"}, temperature=0)
    sent = len(upstream.seen)
    again = ask(model="laneway", messages=messages, tools=TOOLS, metadata={"lane": "cached"}, temperature=0)
    replayed = list(client(gateway).chat.completions.create(model="laneway", messages=messages, tools=TOOLS,
                                                             metadata={"lane": "cached"}, stream=True, temperature=0))

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


GEMINI_HISTORY: list[Any] = [
    {"role": "user", "content": "Where is order 77?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_7Qx", "content": '{"status": "shipped"}'},
    {"role": "user", "content": "And order 1182?"},
]


def test_a_gemini_model_calls_tools_for_an_openai_client_whole_and_streamed(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    gateway, _ = live
    ask = client(gateway).chat.completions
    whole = ask.create(model="laneway", messages=GEMINI_HISTORY, tools=TOOLS, tool_choice="required",
                       metadata={"lane": "gemini"})
    sent = upstream.seen[-1]
    streamed = list(ask.create(model="laneway", messages=GEMINI_HISTORY, tools=TOOLS, stream=True,
                               stream_options={"include_usage": True}, metadata={"lane": "gemini"}))
    named = ask.create(model="laneway", messages=GEMINI_HISTORY, tools=TOOLS, metadata={"lane": "gemini"},
                       tool_choice={"type": "function", "function": {"name": "lookup_order"}})

    assert sent["tools"] == [{"functionDeclarations": [{
        "name": "lookup_order", "description": "Find an order by its number",
        "parametersJsonSchema": TOOLS[0]["function"]["parameters"]}]}]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert upstream.seen[-1]["toolConfig"] == {"functionCallingConfig": {"mode": "ANY",
                                                                        "allowedFunctionNames": ["lookup_order"]}}
    # The earlier call, made by another model in an earlier turn, goes back unsigned: only the current
    # turn's calls need a signature.
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "Where is order 77?"}]},
        {"role": "model", "parts": [{"functionCall": {"id": "call_7Qx", "name": "lookup_order",
                                                      "args": {"order": "1182"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"id": "call_7Qx", "name": "lookup_order",
                                                         "response": {"status": "shipped"}}},
                                   {"text": "And order 1182?"}]},
    ]
    message = whole.choices[0].message
    assert (message.content, whole.choices[0].finish_reason) == ("Let me look that up.", "tool_calls")
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    made = message.tool_calls[0]
    assert made.id.startswith("call_") and (made.function.name, json.loads(made.function.arguments)) == (
        "lookup_order", {"order": "1182"})
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Let me look that up."
    pieces = [call for d in deltas for call in (d.tool_calls or [])]
    assert [(p.index, p.function and p.function.name, p.function and json.loads(p.function.arguments or ""))
            for p in pieces] == [(0, "lookup_order", {"order": "1182"}), (1, "lookup_order", {"order": "77"})]
    assert len({p.id for p in pieces}) == 2 and all((p.id or "").startswith("call_") for p in pieces)
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"
    usage = [c.usage for c in streamed if c.usage is not None]
    assert usage and (usage[-1].prompt_tokens, usage[-1].completion_tokens) == (40, 20)
    assert named.choices[0].finish_reason == "tool_calls"


def test_a_gemini_call_goes_back_with_its_thought_signature(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    gateway, _ = live
    ask = client(gateway).chat.completions
    question: list[Any] = [{"role": "user", "content": "Where is order 1182?"}]
    made = ask.create(model="laneway", messages=question, tools=TOOLS, metadata={"lane": "gemini"})
    calls = made.choices[0].message.tool_calls
    assert calls is not None
    # The client sends the call back as OpenAI's API has it (no signature), with its result.
    ours = {"id": calls[0].id, "type": "function",
            "function": {"name": "lookup_order", "arguments": calls[0].function.arguments}}
    others = {"id": "call_from_elsewhere", "type": "function",
              "function": {"name": "lookup_order", "arguments": '{"order": "9"}'}}
    google = {**others, "id": "call_google", "extra_content": {"google": {"thought_signature": "Z29vZ2xl"}}}
    for assistant, signature in ((ours, SIGNATURE), (others, "skip_thought_signature_validator"),
                                 (google, "Z29vZ2xl")):
        follow_up = [*question, {"role": "assistant", "content": None, "tool_calls": [assistant]},
                     {"role": "tool", "tool_call_id": assistant["id"], "content": "shipped on Monday"}]
        ask.create(model="laneway", messages=follow_up, tools=TOOLS, metadata={"lane": "gemini"})
        model_turn, results = upstream.seen[-1]["contents"][1:]
        # The id made here for a call the API gave none goes back as the call came: without one.
        given = {} if assistant is ours else {"id": assistant["id"]}
        assert model_turn["parts"] == [{"functionCall": {**given, "name": "lookup_order",
                                                         "args": json.loads(assistant["function"]["arguments"])},
                                        "thoughtSignature": signature}]
        assert results == {"role": "user", "parts": [{"functionResponse": {
            **given, "name": "lookup_order", "response": {"result": "shipped on Monday"}}}]}


def test_the_ids_of_a_gemini_models_parallel_calls_reach_the_client_and_come_back_with_each_result(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    """The API asks for a call's id back in its response; without the ids, two results of one function
    told the model nothing of which call each answered."""
    gateway, _ = live
    ask = client(gateway).chat.completions
    question: list[Any] = [{"role": "user", "content": "Where are both of my orders?"}]
    made = ask.create(model="laneway", messages=question, tools=TOOLS, metadata={"lane": "gemini"})
    calls = made.choices[0].message.tool_calls
    assert calls is not None and [(c.id, c.function.arguments) for c in calls] == [
        ("fc-a", '{"order":"1182"}'), ("fc-b", '{"order":"77"}')]

    follow_up = [*question, made.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "fc-b", "content": "order 77 was delivered"},
                 {"role": "tool", "tool_call_id": "fc-a", "content": "order 1182 ships on Monday"}]
    ask.create(model="laneway", messages=follow_up, tools=TOOLS, metadata={"lane": "gemini"})
    model_turn, results = upstream.seen[-1]["contents"][1:]
    assert [part["functionCall"]["id"] for part in model_turn["parts"]] == ["fc-a", "fc-b"]
    assert [(part["functionResponse"]["id"], part["functionResponse"]["response"]["result"])
            for part in results["parts"]] == [("fc-b", "order 77 was delivered"),
                                              ("fc-a", "order 1182 ships on Monday")]


def test_a_gemini_signature_reaches_the_client_and_comes_back_through_another_gateway(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    """As Google's OpenAI-compatible endpoint does, a signed call carries its signature in
    `extra_content`: a follow-up answered by another gateway process (another worker of `serve
    --workers N`, or after a restart), which never saw the call, still sends the model its signature."""
    gateway, _ = live
    ask = client(gateway).chat.completions
    question: list[Any] = [{"role": "user", "content": "Where is order 1182?"}]
    whole = ask.create(model="laneway", messages=question, tools=TOOLS, metadata={"lane": "gemini"})
    streamed = list(ask.create(model="laneway", messages=question, tools=TOOLS, stream=True,
                               metadata={"lane": "gemini"}))

    signed = {"google": {"thought_signature": SIGNATURE}}
    calls = whole.choices[0].message.tool_calls
    assert calls is not None and calls[0].model_dump().get("extra_content") == signed
    # Only the first of parallel calls is signed (the Gemini API signs the first call of a step).
    pieces = [piece for c in streamed if c.choices for piece in (c.choices[0].delta.tool_calls or [])]
    assert [piece.model_dump().get("extra_content") for piece in pieces] == [signed, None]

    echoed = whole.choices[0].message.model_dump(exclude_none=True)  # the assistant message, as received
    follow_up = [*question, echoed, {"role": "tool", "tool_call_id": calls[0].id, "content": "shipped on Monday"}]
    with live_gateway(tool_config(upstream), None) as other:
        client(other).chat.completions.create(model="laneway", messages=follow_up, tools=TOOLS,
                                              metadata={"lane": "gemini"})
    model_turn = upstream.seen[-1]["contents"][1]
    assert model_turn["parts"] == [{"text": "Let me look that up."}, {
        "functionCall": {"name": "lookup_order", "args": {"order": "1182"}}, "thoughtSignature": SIGNATURE}]


def test_a_signature_in_extra_content_goes_only_to_googles_openai_compatible_endpoint(
        live: tuple[LiveGateway, RecordingSink], upstream: ToolUpstream) -> None:
    """Strict OpenAI-compatible servers refuse `extra_content` (HTTP 400): a conversation with a Gemini
    model's signed call that moves to another model on the OpenAI wire goes there without it."""
    from laneway.chat import ChatRequest
    from laneway.config import ModelSpec
    from laneway.providers.openai import OpenAIProvider

    signed = {**CALL, "extra_content": {"google": {"thought_signature": SIGNATURE}}}
    follow_up: list[Any] = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [signed]},
                            {"role": "tool", "tool_call_id": CALL["id"], "content": "shipped on Monday"}]
    client(live[0]).chat.completions.create(model="laneway", messages=follow_up, tools=TOOLS)
    sent = upstream.seen[-1]
    assert sent["model"] == "tool-model" and sent["messages"][1]["tool_calls"] == [CALL]
    assert sent["messages"][2] == follow_up[2]

    def body(base_url: str) -> dict[str, Any]:
        spec = ModelSpec(name="g", provider="openai", base_url=base_url, model="gemini-3-flash")
        return OpenAIProvider(spec, base_url).body(ChatRequest("gemini-3-flash", follow_up), False)

    assert body("https://generativelanguage.googleapis.com/v1beta/openai")["messages"] is follow_up
    assert body("https://api.openai.com/v1")["messages"][1]["tool_calls"] == [CALL]
    assert follow_up[1]["tool_calls"] == [signed]  # the client's own messages are left as they were


def test_a_tool_result_for_a_call_no_message_made_is_a_400_for_a_gemini_model(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, _ = live
    orphan: list[Any] = [{"role": "system", "content": "Be brief."}, *MESSAGES,
                         {"role": "tool", "tool_call_id": "call_nowhere", "content": "{}"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).chat.completions.create(model="gemini-flash", messages=orphan, tools=TOOLS)
    assert "call_nowhere" in caught.value.message and caught.value.param == "messages[2].tool_call_id"


@pytest.mark.parametrize("model", ["gemini-flash", "claude", "gemini-profiled", "claude-profiled"])
@pytest.mark.parametrize(("broken", "param"), [
    ({"id": "call_2", "type": "function", "function": {"name": "lookup_order", "arguments": "not json"}},
     "messages[4].tool_calls[0].function.arguments"),
    ({"type": "function", "function": {"name": "lookup_order", "arguments": "{}"}}, "messages[4].tool_calls[0]"),
])
def test_a_malformed_tool_call_is_named_by_the_message_that_holds_it(
        live: tuple[LiveGateway, RecordingSink], model: str, broken: dict[str, Any], param: str) -> None:
    """The adapters that read the calls name the message as well as the call, as for the other fields."""
    gateway, _ = live
    conversation: list[Any] = [
        {"role": "system", "content": "Be brief."}, *MESSAGES, {"role": "assistant", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": CALL["id"], "content": "{}"}, {"role": "assistant", "tool_calls": [broken]},
        {"role": "tool", "tool_call_id": "call_2", "content": "{}"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).chat.completions.create(model=model, messages=conversation, tools=TOOLS)
    assert caught.value.param == param


@pytest.mark.parametrize("model", ["gemini-flash", "claude", "gemini-profiled", "claude-profiled"])
def test_a_tool_message_without_its_call_id_is_named_by_its_place(
        live: tuple[LiveGateway, RecordingSink], model: str) -> None:
    """By its place in the client's messages: the adapter counted in what it was sent, a profile's system
    prompt first, and named the client's `messages[3]` `messages[4]`."""
    gateway, _ = live
    conversation: list[Any] = [{"role": "system", "content": "Be brief."}, *MESSAGES,
                               {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "content": "{}"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).chat.completions.create(model=model, messages=conversation, tools=TOOLS)
    assert caught.value.param == "messages[3].tool_call_id"


def test_a_malformed_gemini_function_call_fails_over_to_the_next_model(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, sink = live
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="laneway", messages=[{"role": "user", "content": "malformed please"}], tools=TOOLS,
        metadata={"lane": "gemini"})

    assert reply.headers["x-laneway-model"] == "tools-capable"
    assert reply.parse().choices[0].finish_reason == "tool_calls"
    exchange = sink.by_id(reply.headers["x-request-id"])
    *failed, answered = exchange.attempts
    assert failed and answered.model == "tools-capable"  # after the route's retries of gemini-flash
    assert all(a.model == "gemini-flash" and "MALFORMED_FUNCTION_CALL" in (a.error or "") for a in failed)


def test_the_signatures_kept_are_bounded_in_number_and_in_size() -> None:
    from laneway.providers._gemini_tools import Signatures
    from laneway.providers._tools import Call

    def made(call_id: str) -> Call:
        return Call(call_id, "lookup_order", {}, {})

    by_number = Signatures(limit=2, limit_bytes=1000)
    for name in ("a", "b", "c"):
        by_number.keep(name, "sig-" + name)
    assert [by_number.of(made(name)) for name in ("a", "b", "c")] == [None, "sig-b", "sig-c"]
    by_size = Signatures(limit=100, limit_bytes=10)
    by_size.keep("a", "x" * 6)
    by_size.keep("a", "y" * 6)  # kept again: counted once
    assert by_size.of(made("a")) == "y" * 6
    by_size.keep("b", "z" * 6)
    assert (by_size.of(made("a")), by_size.of(made("b"))) == (None, "z" * 6)


def test_a_tool_call_answer_is_stored_as_its_calls_whole_or_streamed(upstream: ToolUpstream) -> None:
    """With `store_bodies`, a streamed answer's calls were stored run together (`lookup_order{"order": ...}`)
    and a whole answer's not at all (an empty body)."""
    sink = RecordingSink()
    config = tool_config(upstream) + "telemetry: {store_bodies: true}\n"
    with live_gateway(config, None, telemetry=sink) as gateway:
        whole = client(gateway).chat.completions.with_raw_response.create(
            model="laneway", messages=MESSAGES, tools=TOOLS)
        streamed = client(gateway).chat.completions.with_raw_response.create(
            model="laneway", messages=MESSAGES, tools=TOOLS, stream=True)
        list(streamed.parse())
    bodies = [sink.by_id(reply.headers["x-request-id"]).answer_body for reply in (whole, streamed)]
    assert bodies == ['lookup_order({"order":"1182"})'] * 2


async def test_a_streams_pieces_count_its_tool_call_pieces() -> None:
    """A stream cut after tool-call pieces only was logged as cut "after 0 pieces"."""
    from laneway.chat import Chunk
    from laneway.exchange import Exchange
    from laneway.server._chat import _ChunkEncoder, _forward, _StreamState

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    first = Chunk(tool_calls=[{"index": 0, "id": "c", "function": {"name": "lookup_order", "arguments": ""}}])
    state = _StreamState(False)
    encoder = _ChunkEncoder(Exchange("r", 0.0), "chatcmpl-r", first)
    for chunk in (first, Chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"order": 1}'}}])):
        await _forward(send, encoder, chunk, state)
    assert state.pieces() == 2 and len(sent) == 2
