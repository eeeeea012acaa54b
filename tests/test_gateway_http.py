"""The gateway over real HTTP, driven by the official `openai` client and raw requests."""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from _live import LiveGateway, RecordingSink, live_gateway

ROOT = Path(__file__).resolve().parents[1]
SEED = (ROOT / "examples" / "model-routing.yaml").read_text()


@pytest.fixture(scope="module")
def seed_gateway(sim_url: str) -> Iterator[LiveGateway]:
    with live_gateway(SEED, sim_url) as live:
        yield live


@pytest.fixture(scope="module")
def default_gateway(sim_url: str) -> Iterator[LiveGateway]:
    from laneway.config import default_config_text

    with live_gateway(default_config_text(), sim_url) as live:
        yield live


@pytest.fixture(scope="module", params=["laneway", "uvicorn"])
def any_server_gateway(sim_url: str, request: pytest.FixtureRequest) -> Iterator[LiveGateway]:
    """The default config on the server `laneway serve` runs, and on uvicorn: `App` is plain ASGI."""
    from laneway.config import default_config_text

    with live_gateway(default_config_text(), sim_url, server=request.param) as live:
        yield live


def chat(n: int) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": f"message {i} about my invoice"} for i in range(n)]


def client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


def post(live: LiveGateway, body: Any, headers: dict[str, str] | None = None,
         path: str = "/v1/chat/completions") -> tuple[int, dict[str, str], dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(live.url + path, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.mark.parametrize(("messages", "metadata", "model"), [
    (3, {"priority": "normal"}, "claude-sonnet-37"),
    (10, {}, "heavy-foundation"),
    (3, {"priority": "high", "escalation": "true"}, "heavy-foundation"),
    (3, {"escalation": True}, "claude-sonnet-37"),  # overlap: the first route wins
])
def test_seed_table_routes(seed_gateway: LiveGateway, messages: int, metadata: dict[str, Any], model: str) -> None:
    raw = client(seed_gateway).chat.completions.with_raw_response.create(
        model="laneway", messages=chat(messages), metadata=metadata)  # type: ignore[arg-type]
    completion = raw.parse()
    assert raw.headers["x-laneway-model"] == model
    assert completion.model == model
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert float(raw.headers["x-laneway-cost-usd"]) > 0
    assert raw.headers["x-laneway-lane"] == "primary"


def test_seed_gap_is_no_route(seed_gateway: LiveGateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(seed_gateway).chat.completions.create(model="laneway", messages=chat(3),  # type: ignore[arg-type]
                                                     metadata={"priority": "high"})
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "no_route"
    assert "priority=high" in body["message"]


def test_a_path_no_route_serves_is_named_as_the_thing_to_fix(seed_gateway: LiveGateway) -> None:
    request = urllib.request.Request(seed_gateway.url + "/v1/chatty/completions", method="POST",
                                     data=json.dumps({"model": "laneway", "messages": chat(1)}).encode())
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    error = json.loads(caught.value.read())["error"]
    assert (caught.value.code, error["code"]) == (404, "no_route")
    assert error["message"].startswith("no route serves the path `/v1/chatty/completions` (the routes serve `/v1/")
    assert "default route" not in error["message"]


def test_header_signal_wins_over_metadata(seed_gateway: LiveGateway) -> None:
    status, headers, _ = post(seed_gateway, {"model": "laneway", "messages": chat(3),
                                             "metadata": {"priority": "high"}},
                              {"x-laneway-priority": "normal"})
    assert status == 200 and headers["x-laneway-model"] == "claude-sonnet-37"
    # The value the header replaces is not read, so it cannot fail the request either.
    status, headers, _ = post(seed_gateway, {"model": "laneway", "messages": chat(3),
                                             "metadata": {"priority": "bogus", "escalation": "maybe"}},
                              {"x-laneway-priority": "normal", "x-laneway-escalation": "no"})
    assert status == 200 and headers["x-laneway-model"] == "claude-sonnet-37"


@pytest.mark.parametrize("header", ["x-laneway-conversation-id", "x-laneway-conversation_id"])
def test_the_conversation_header_is_read_in_either_spelling(header: str) -> None:
    from laneway.request import decode, read_signals

    request = decode(json.dumps({"model": "laneway", "messages": chat(1),
                                 "metadata": {"conversation_id": "from-body"}}).encode(), 100)
    assert read_signals(request, {header: "c-42"}).conversation_id == "c-42"
    both = {"x-laneway-conversation-id": "hyphen", "x-laneway-conversation_id": "underscore"}
    assert read_signals(request, both).conversation_id == "hyphen"



def test_a_request_refused_before_its_signals_were_read_keeps_the_conversation_its_header_names(
        sim_url: str) -> None:
    """Recorded without it, each such request counted as a conversation of its own in the cost per conversation."""
    sink = RecordingSink()
    with live_gateway(SEED, sim_url, telemetry=sink) as live:
        refused = [post(live, {"model": "laneway", "messages": chat(1), "temperature": 5}, {header: value})
                   for header, value in (("x-laneway-conversation-id", "conv-400"),
                                         ("x-laneway-conversation_id", "conv-400"),
                                         ("x-laneway-conversation-id", "x" * 600))]  # past the bound: none
    assert [status for status, _, _ in refused] == [400, 400, 400]
    ids = [sink.by_id(headers["x-request-id"]).conversation_id for _, headers, _ in refused]
    assert ids == ["conv-400", "conv-400", None]


LOOKUP = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}
OPENAI_FIELDS = {"safety_identifier": "hashed-user-42", "prompt_cache_key": "support-v3",
                 "prompt_cache_retention": "24h", "prediction": {"type": "content", "content": "Your order"},
                 "modalities": ["text"], "web_search_options": {}, "store": True}


@pytest.mark.parametrize("model", ["gpt-5", "claude-sonnet-37", "gemini-2.5-flash-lite"])
def test_the_openai_clients_other_fields_are_taken_on_every_provider(default_gateway: LiveGateway,
                                                                       model: str) -> None:
    """A drop-in switch: fields OpenAI's API takes are not refused (`openai` models get them, the others
    leave them out), and `stream: null` is the default."""
    reply = client(default_gateway).chat.completions.with_raw_response.create(
        model=model, messages=chat(1), stream=None, **OPENAI_FIELDS)  # type: ignore[call-overload]
    assert reply.http_response.status_code == 200 and reply.parse().choices[0].message.content


def test_fields_the_openai_adapter_passes_on_and_anthropic_reads_safety_identifier() -> None:
    from laneway.chat import ChatRequest
    from laneway.config import parse_config
    from laneway.providers import anthropic
    from laneway.providers import openai as openai_provider

    spec = parse_config("models:\n  m:\n    provider: openai\n    base_url: http://127.0.0.1:9/v1\n"
                        "routes:\n- target: m\n").models["m"]
    request = ChatRequest("m", chat(1), dict(OPENAI_FIELDS))
    body = openai_provider.create(spec, spec.base_url).body(request, False)
    assert {key: body[key] for key in OPENAI_FIELDS} == OPENAI_FIELDS
    assert anthropic.request_body("claude", request, False)["metadata"] == {"user_id": "hashed-user-42"}


@pytest.mark.parametrize(("body", "headers", "status", "code", "needle"), [
    ({"model": "laneway", "messages": chat(1), "metadata": {"priority": "banana"}}, {}, 400,
     "invalid_request", '`metadata.priority`: invalid value "banana"'),
    ({"model": "laneway", "messages": chat(1)}, {"x-laneway-escalation": "maybe"}, 400,
     "invalid_request", '`x-laneway-escalation`: invalid value "maybe"; expected true or false (also yes/no, 1/0)'),
    ({"model": "laneway", "messages": []}, {}, 400, "invalid_request", "`messages` must be a non-empty list"),
    ({"model": "laneway", "messages": chat(1), "n": 3}, {}, 400, "invalid_request", "`n` must be 1"),
    # accepted and forwarded, the audio an upstream answered with was dropped
    ({"model": "laneway", "messages": chat(1), "modalities": ["text", "audio"]}, {}, 400, "invalid_request",
     "audio output is not supported"),
    ({"model": "laneway", "messages": chat(1), "n": True}, {}, 400, "invalid_request", "`n` must be 1"),
    ({"model": "laneway", "messages": chat(1), "temperature": 7}, {}, 400, "invalid_request", "`temperature`"),
    ({"model": "laneway", "messages": chat(1), "max_tokens": 10**9}, {}, 400, "invalid_request", "`max_tokens`"),
    ({"model": "laneway", "messages": chat(1), "bogus": 1}, {}, 400, "invalid_request", "unknown field `bogus`"),
    ({"model": "laneway", "messages": chat(1), "reasoning_effort": "bogus"}, {}, 400, "invalid_request",
     '`reasoning_effort` must be one of none, minimal, low, medium, high, xhigh, got "bogus"'),
    ({"messages": chat(1)}, {}, 400, "invalid_request", "`model` is required"),
    ({"model": "laneway", "messages": chat(1), "max_tokens": True}, {}, 400, "invalid_request",
     "`max_tokens` must be a whole number from 1 to 1000000, got true"),
    ({"model": "laneway", "messages": chat(1), "metadata": {"escalation": None}}, {}, 400, "invalid_request",
     "`metadata.escalation`: invalid value null"),
    ({"model": "laneway", "messages": chat(1), "metadata": {"priority": {"x": 1}}}, {}, 400, "invalid_request",
     '`metadata.priority`: invalid value {"x":1}'),
    # a header's UTF-8 bytes, as a client sends them (urllib writes a header's text as Latin-1)
    ({"model": "laneway", "messages": chat(1)}, {"x-laneway-priority": "hïgh".encode().decode("latin-1")}, 400,
     "invalid_request", '`x-laneway-priority`: invalid value "hïgh"'),
    ({"model": "laneway", "messages": chat(1), "stream_options": {"include_usage": True}}, {}, 400,
     "invalid_request", "`stream_options` is only allowed when `stream` is true"),
    ({"model": "laneway", "messages": chat(1), "stream": True, "stream_options": {"include_usage": "yes"}}, {},
     400, "invalid_request", "`stream_options.include_usage` must be true or false"),
    ({"model": "laneway", "messages": chat(1), "tool_choice": "required"}, {}, 400, "invalid_request",
     '`tool_choice` "required" is only allowed when `tools` are given'),
    ({"model": "laneway", "messages": chat(1), "tools": [LOOKUP],
      "tool_choice": {"type": "function", "function": {"name": "refund"}}}, {}, 400, "invalid_request",
     '`tool_choice.function.name` must name a function in `tools` ("lookup_order"), got "refund"'),
    ({"model": "laneway", "messages": chat(1), "functions": [{"name": "lookup_order"}]}, {}, 400, "invalid_request",
     "`functions` is OpenAI's deprecated function calling; send `tools` instead"),
    ({"model": "laneway", "messages": chat(1), "function_call": "auto"}, {}, 400, "invalid_request",
     "`function_call` is OpenAI's deprecated function calling; send `tool_choice` instead"),
    ({"model": "gpt-6", "messages": chat(1)}, {}, 404, "model_not_found", "unknown model `gpt-6`"),
    (b"{not json", {}, 400, "invalid_request", "not valid JSON"),
    (b"\xff\xfe", {}, 400, "invalid_request", "request body is not UTF-8"),
])
def test_bad_requests_get_clear_errors(seed_gateway: LiveGateway, body: Any, headers: dict[str, str],
                                       status: int, code: str, needle: str) -> None:
    got, response_headers, payload = post(seed_gateway, body, headers)
    assert got == status
    assert payload["error"]["code"] == code
    assert needle in payload["error"]["message"]
    assert payload["error"]["request_id"] == response_headers["x-request-id"]
    # Refused before routing: no lane, as no route or model, is named.
    assert [response_headers[f"x-laneway-{name}"] for name in ("route", "model", "lane")] == ["", "", ""]


@pytest.mark.parametrize("model", ["laneway", "claude-sonnet-37"])  # through the Gemini and Anthropic adapters
@pytest.mark.parametrize(("field", "value", "param"), [
    ("stop", 5, "stop"),
    ("stop", ["a", "b", "c", "d", "e"], "stop"),
    ("tools", 5, "tools"),
    ("tools", [5], "tools"),
    ("tool_choice", "sometimes", "tool_choice"),
    ("seed", "x", "seed"),
    ("logprobs", "x", "logprobs"),
    ("top_logprobs", 2.5, "top_logprobs"),
    ("logit_bias", "x", "logit_bias"),
    ("parallel_tool_calls", "x", "parallel_tool_calls"),
    ("messages", [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": 5},
                  {"role": "user", "content": "y"}], "messages[1].tool_calls"),
])
def test_a_parameter_of_the_wrong_type_is_a_400_that_names_it(default_gateway: LiveGateway, model: str, field: str,
                                                              value: Any, param: str) -> None:
    body = {"model": model, "messages": chat(1), field: value}
    for stream in (False, True):
        status, _, payload = post(default_gateway, {**body, "stream": stream})
        assert (status, payload["error"]["code"], payload["error"]["param"]) == (400, "invalid_request", param)
        assert f"`{param}` must be" in payload["error"]["message"]


def test_the_error_of_a_model_that_found_the_request_malformed_wins_over_the_routes(
        default_gateway: LiveGateway) -> None:
    """A tool without a name is what the client must fix, whichever model of the route reads it first."""
    status, _, payload = post(default_gateway, {"model": "laneway", "messages": chat(1),
                                                "tools": [{"type": "function"}]})
    assert (status, payload["error"]["code"]) == (400, "invalid_request")
    assert payload["error"]["param"].startswith("tools[0]")
    assert "no model of the route can carry" not in payload["error"]["message"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_an_output_limit_no_model_has_room_for_is_named_as_the_field_to_lower(default_gateway: LiveGateway,
                                                                              field: str) -> None:
    status, _, payload = post(default_gateway, {"model": "gpt-5", "messages": chat(1), field: 1_000_000})
    error = payload["error"]
    assert (status, error["code"], error["param"]) == (400, "context_length_exceeded", field)
    assert error["message"].startswith(f"`{field}` is too large: 1000000 tokens of output do not fit")
    assert "Ask for at most 3999" in error["message"]  # gpt-5 holds 400,000 tokens; the prompt takes a few
    assert "in `gpt-5`" in error["message"] and "route" not in error["message"]  # a model asked for by name


def test_a_prompt_too_long_for_a_model_asked_for_by_name_is_not_told_of_routes(default_gateway: LiveGateway) -> None:
    status, _, payload = post(default_gateway, {"model": "gpt-5-mini",
                                                "messages": [{"role": "user", "content": "word " * 500_000}]})
    error = payload["error"]
    assert (status, error["code"]) == (400, "context_length_exceeded")
    assert "send it to a model with a larger context window" in error["message"]
    assert "give the route" not in error["message"]


def test_the_legacy_completions_path_is_named_as_not_served(seed_gateway: LiveGateway) -> None:
    status, _, payload = post(seed_gateway, {"model": "laneway", "prompt": "hello"}, path="/v1/completions")
    assert status == 404 and payload["error"]["code"] == "not_found"
    assert "send `messages` to `/v1/chat/completions`" in payload["error"]["message"]


def test_body_limit(seed_gateway: LiveGateway) -> None:
    big = {"model": "laneway", "messages": [{"role": "user", "content": "x" * (21 * 1024 * 1024)}]}
    status, _, payload = post(seed_gateway, big)
    assert status == 413 and payload["error"]["code"] == "payload_too_large"
    assert "server.max_body_bytes" in payload["error"]["message"]
    # a photo of a few MB, as a `data:` URL, is an ordinary request
    photo = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + "A" * (3 * 1024 * 1024)}}
    status, _, payload = post(seed_gateway, {"model": "laneway", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is on this receipt?"}, photo]}]})
    assert status != 413, payload


def test_a_body_declared_over_the_limit_is_refused_before_the_client_sends_it(any_server_gateway: LiveGateway) -> None:
    """With `Expect: 100-continue` the client waits to be asked for the body: it is told 413 instead."""
    host, port = any_server_gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 30000000\r\nexpect: 100-continue\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]


def test_request_id_is_echoed(seed_gateway: LiveGateway) -> None:
    _, headers, _ = post(seed_gateway, {"model": "laneway", "messages": chat(3)}, {"x-request-id": "abc-123"})
    assert headers["x-request-id"] == "abc-123"
    for unusable in ("x" * 129, "abc def\t"):  # too long, or not printable: the gateway makes its own
        _, headers, payload = post(seed_gateway, {"model": "laneway", "messages": chat(3)}, {"x-request-id": unusable})
        assert len(headers["x-request-id"]) == 24 and payload["id"] == f"chatcmpl-{headers['x-request-id']}"


def test_answers_to_requests_that_send_one_request_id_have_ids_of_their_own(seed_gateway: LiveGateway) -> None:
    """A client's request id (a trace's, sent with every call of it) was each answer's `id`: answers with one
    id, where OpenAI's each have their own."""
    traced = client(seed_gateway).with_options(default_headers={"x-request-id": "trace-7f3a"}).chat.completions
    whole = [traced.with_raw_response.create(model="laneway", messages=chat(3)) for _ in range(2)]  # type: ignore[arg-type]
    streamed = [next(iter(traced.create(model="laneway", messages=chat(3), stream=True))).id  # type: ignore[arg-type]
                for _ in range(2)]
    assert [reply.headers["x-request-id"] for reply in whole] == ["trace-7f3a"] * 2
    ids = [reply.parse().id for reply in whole] + streamed
    assert len(set(ids)) == 4 and all(i.startswith("chatcmpl-") for i in ids)


def test_openai_client_sync_and_streaming(any_server_gateway: LiveGateway) -> None:
    c = client(any_server_gateway)
    completion = c.chat.completions.create(model="laneway", messages=chat(1), max_tokens=40)  # type: ignore[arg-type]
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.model == "gemini-2.5-flash-lite"
    pieces: list[str] = []
    usage = None
    stream = c.chat.completions.create(model="laneway", messages=chat(1), stream=True,  # type: ignore[arg-type]
                                       stream_options={"include_usage": True})
    finish = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces).strip()
    assert finish in ("stop", "length")
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0


async def test_openai_client_async(default_gateway: LiveGateway) -> None:
    c = openai.AsyncOpenAI(base_url=default_gateway.url + "/v1", api_key="unused", max_retries=0)
    completion = await c.chat.completions.create(model="gpt-5-mini", messages=chat(1))  # type: ignore[arg-type]
    assert completion.model == "gpt-5-mini"
    stream = await c.chat.completions.create(model="laneway", messages=chat(1), stream=True,  # type: ignore[arg-type]
                                             extra_headers={"x-laneway-escalation": "true"})
    models = {chunk.model async for chunk in stream}
    assert models == {"gpt-5"}
    await c.close()


def test_the_request_path_leaves_no_async_generator_for_the_event_loop_to_close(
        sim_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One the garbage collector finds still open is closed by the event loop in a task of its own: one
    more task (and wake-up) per request, and its clean-up, such as giving an upstream connection back,
    comes late."""
    from laneway.config import default_config_text

    left: list[str] = []
    finalizer = asyncio.BaseEventLoop._asyncgen_finalizer_hook

    def recorded(loop: asyncio.BaseEventLoop, agen: Any) -> None:
        left.append(agen.ag_code.co_qualname)
        finalizer(loop, agen)

    monkeypatch.setattr(asyncio.BaseEventLoop, "_asyncgen_finalizer_hook", recorded)
    with live_gateway(default_config_text(), sim_url) as live:
        c = client(live)
        for model in ("heavy-foundation", "claude-sonnet-37", "laneway"):  # OpenAI, Anthropic and Gemini wires
            assert c.chat.completions.create(model=model, messages=chat(1), max_tokens=20).choices  # type: ignore[arg-type]
            stream = c.chat.completions.create(model=model, messages=chat(1), max_tokens=20,  # type: ignore[arg-type]
                                               stream=True)
            assert "".join(choice.delta.content or "" for chunk in stream for choice in chunk.choices)
        live.call(asyncio.sleep(0.2))  # a finalizer's task would have run by now
    assert left == []


def test_a_huge_prompt_is_counted_without_holding_up_other_requests(default_gateway: LiveGateway) -> None:
    """Counting a 15 MB prompt takes the tokenizer about a second: meanwhile the gateway answers others."""
    import threading
    import time

    body = {"model": "laneway", "messages": [{"role": "user", "content": "word " * 3_000_000}]}
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(post(default_gateway, body)))
    worker.start()
    waits = []
    while worker.is_alive():
        began = time.perf_counter()
        with urllib.request.urlopen(default_gateway.url + "/healthz", timeout=30) as response:
            assert response.status == 200
        waits.append(time.perf_counter() - began)
        time.sleep(0.02)
    worker.join()
    status, _, payload = outcome[0]
    assert (status, payload["error"]["code"]) == (400, "context_length_exceeded")
    assert len(waits) >= 5 and max(waits) < 0.3, waits


def test_models_health_ready(default_gateway: LiveGateway) -> None:
    c = client(default_gateway)
    models = [m.id for m in c.models.list()]
    assert models[:2] == ["laneway", "auto"] and "heavy-foundation" in models
    assert [(m.id, m.owned_by) for m in map(c.models.retrieve, ("auto", "heavy-foundation"))] == [
        ("auto", "laneway"), ("heavy-foundation", "openai")]
    with pytest.raises(openai.NotFoundError, match="unknown model `gpt-6`; the models are: laneway, auto"):
        c.models.retrieve("gpt-6")
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(default_gateway.url + path, timeout=5) as response:
            assert response.status == 200


def test_unknown_endpoint(default_gateway: LiveGateway) -> None:
    status, _, payload = post(default_gateway, {}, path="/v2/whatever")
    assert status == 404 and "no endpoint `POST /v2/whatever`" in payload["error"]["message"]


def test_head_reads_like_get_and_a_wrong_method_is_told_what_the_path_allows(default_gateway: LiveGateway) -> None:
    request = urllib.request.Request(default_gateway.url + "/healthz", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["content-length"]) > 0  # the length GET's body has
    status, headers, payload = post(default_gateway, {}, path="/healthz")
    assert status == 405 and headers["allow"] == "GET, HEAD" and "use GET, HEAD" in payload["error"]["message"]
    request = urllib.request.Request(default_gateway.url + "/admin/reload", method="GET")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 405 and caught.value.headers["allow"] == "POST"
    request = urllib.request.Request(default_gateway.url + "/v1/chat/completions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 405 and caught.value.headers["allow"] == "POST"
    for method in ("DELETE", "POST"):  # a model is read, not deleted nor written (it answered 404)
        request = urllib.request.Request(default_gateway.url + "/v1/models/laneway", method=method)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 405 and caught.value.headers["allow"] == "GET, HEAD"


def test_reload_keeps_running_config_on_error(sim_url: str, tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(SEED)
    with live_gateway(SEED, sim_url, config_path=path) as live:
        path.write_text("routes:\n- target: gpt-6\n")
        status, _, payload = post(live, {}, path="/admin/reload")
        assert status == 400 and payload["reloaded"] is False
        assert "routes[0].target (line 2, column 11): unknown model `gpt-6`" in payload["errors"][0]
        _, headers, _ = post(live, {"model": "laneway", "messages": chat(3)})
        assert headers["x-laneway-model"] == "claude-sonnet-37"
        path.write_text(textwrap.dedent("""
        routes:
        - target: gpt-5-mini
        """))
        status, _, payload = post(live, {}, path="/admin/reload")
        assert status == 200 and payload["reloaded"] is True
        _, headers, _ = post(live, {"model": "laneway", "messages": chat(3)})
        assert headers["x-laneway-model"] == "gpt-5-mini"


@pytest.mark.parametrize("model", ["gpt-5-mini", "gemini-2.5-flash-lite"])
def test_token_logprobs_reach_a_client_that_asks_for_them_whole_and_streamed(default_gateway: LiveGateway,
                                                                             model: str) -> None:
    c = client(default_gateway)
    asked = c.chat.completions.create(model=model, messages=chat(1), logprobs=True,  # type: ignore[arg-type]
                                      max_tokens=40)
    plain = c.chat.completions.create(model=model, messages=chat(1), max_tokens=40)  # type: ignore[arg-type]
    stream = list(c.chat.completions.create(model=model, messages=chat(1), logprobs=True,  # type: ignore[arg-type]
                                            max_tokens=40, stream=True))

    logprobs = asked.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert all(token.logprob <= 0 for token in logprobs.content)
    assert "".join(token.token for token in logprobs.content) == asked.choices[0].message.content
    assert plain.choices[0].logprobs is None  # not asked for, not sent
    streamed = [token for chunk in stream if chunk.choices and chunk.choices[0].logprobs
                for token in chunk.choices[0].logprobs.content or []]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed and "".join(token.token for token in streamed) == text


def test_a_predictions_accepted_and_rejected_tokens_reach_the_client() -> None:
    """`prediction` was passed on, and the counts that say whether it helped (rejected ones are billed) were
    dropped from the usage the client saw."""
    from laneway.providers.openai import usage_of
    from laneway.server._chat import usage_body

    upstream = {"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70,
                "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": 12,
                                              "rejected_prediction_tokens": 5, "audio_tokens": 0}}
    assert usage_body(usage_of(upstream)) == {
        "prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70,
        "completion_tokens_details": {"accepted_prediction_tokens": 12, "rejected_prediction_tokens": 5}}


CITATION = {"type": "url_citation", "url_citation": {"start_index": 0, "end_index": 6, "title": "Refunds",
                                                     "url": "https://example.com/refunds"}}


def test_a_web_searchs_citations_reach_the_client_whole_streamed_and_from_the_cache() -> None:
    """`web_search_options` was passed on, and the URL citations it makes (`message.annotations`, streamed as
    `delta.annotations`) were dropped: the client got web content without its sources."""
    from _loopback import Handler, completion_body, serving, sse_body

    class Searching(Handler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            assert body["web_search_options"] == {}
            if body.get("stream"):
                events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Refund"}}]},
                          {"choices": [{"index": 0, "delta": {"annotations": [CITATION]}}]},
                          {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}]
                self.send(sse_body(events), "text/event-stream")
                return
            message = {"role": "assistant", "content": "Refund", "annotations": [CITATION]}
            self.send(completion_body("m", {"index": 0, "message": message, "finish_reason": "stop"},
                                      usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}),
                      "application/json")

    with serving(Searching) as upstream:
        config = f"""
models:
  searcher: {{provider: openai, base_url: "{upstream.url}", model: m}}
routes:
- target: searcher
  cache: {{mode: on, ttl_s: 60}}
"""
        with live_gateway(config, None) as gw:
            sdk = client(gw)
            for question in ("whole", "whole"):  # the second from the cache
                answer = sdk.chat.completions.create(model="laneway", messages=[{"role": "user", "content": question}],
                                                     web_search_options={})
                assert answer.choices[0].message.annotations is not None
                assert answer.choices[0].message.annotations[0].url_citation.url == CITATION["url_citation"]["url"]
            for question in ("streamed", "streamed"):
                chunks = list(sdk.chat.completions.create(model="laneway", stream=True, web_search_options={},
                                                          messages=[{"role": "user", "content": question}]))
                cited = [c.choices[0].delta.annotations for c in chunks  # type: ignore[attr-defined]
                         if c.choices and getattr(c.choices[0].delta, "annotations", None)]
                assert cited == [[CITATION]], chunks
