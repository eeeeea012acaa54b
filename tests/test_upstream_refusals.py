"""What a client gets when an upstream refuses: its own mistakes as 400s that name the field, the
upstream's requested wait, no second round of retries from an SDK after Laneway's own, and a model's
refusal as OpenAI gives it (`message.refusal`, `delta.refusal`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import openai
import pytest

from _live import LiveGateway, RecordingSink, live_gateway

INVALID_SCHEMA = {"error": {"message": "Invalid schema for response_format 'ticket': 'additionalProperties' is "
                                       "required to be supplied and to be false.",
                            "type": "invalid_request_error", "param": "response_format", "code": None}}
GEMINI_429 = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded.",
                        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "40s"}]}}
REFUSAL = "I'm sorry, I can't help with that request."
# path prefix -> (status, headers, body)
ANSWERS: dict[str, tuple[int, dict[str, str], object]] = {
    "/schema": (400, {}, INVALID_SCHEMA),
    "/busy": (429, {"retry-after": "30"}, {"error": {"message": "Rate limit reached", "type": "requests"}}),
    "/nowait": (429, {}, {"error": {"message": "Rate limit reached", "type": "requests"}}),
    # Azure OpenAI's header (OpenAI's SDK reads it too), more precise than `retry-after`, which is then absent
    "/busyms": (429, {"retry-after-ms": "2300"}, {"error": {"message": "Rate limit reached", "type": "requests"}}),
    "/both": (429, {"retry-after-ms": "4100", "retry-after": "4"}, {"error": {"message": "Rate limit", "type": "x"}}),
    "/quota": (429, {}, GEMINI_429),
    "/down": (500, {}, {"error": {"message": "The server had an error", "type": "server_error"}}),
    # OpenAI's refusal of one message's content, counted in the messages it was sent (a profile's system first)
    "/badmsg": (400, {}, {"error": {"message": "Invalid content", "type": "invalid_request_error",
                                    "param": "messages[1].content", "code": None}}),
    "/badmsgold": (400, {}, {"error": {"message": "Invalid content", "type": "invalid_request_error",
                                       "param": "messages.[1].content", "code": None}}),
    "/badsys": (400, {}, {"error": {"message": "Invalid content", "type": "invalid_request_error",
                                    "param": "messages[0].content", "code": None}}),
}


class _Upstream(BaseHTTPRequestHandler):
    calls: ClassVar[dict[str, int]] = {}  # requests per path prefix, all servers of the module
    lock = threading.Lock()

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        prefix = "/" + self.path.split("/")[1]
        with self.lock:
            self.calls[prefix] = self.calls.get(prefix, 0) + 1
        if prefix == "/refuse":
            self._refuse(bool(request.get("stream")))
            return
        status, headers, body = ANSWERS[prefix]
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"content-type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _refuse(self, stream: bool) -> None:
        usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
        if not stream:
            message = {"role": "assistant", "content": None, "refusal": REFUSAL}
            payload = json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "usage": usage,
                                  "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
        else:
            deltas = [{"role": "assistant", "refusal": ""}, {"refusal": REFUSAL[:10]}, {"refusal": REFUSAL[10:]}]
            events = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
            events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                       {"choices": [], "usage": usage}]
            payload = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _model(name: str, url: str, provider: str = "openai") -> str:
    return (f"  {name}:\n    provider: {provider}\n    base_url: {url}\n    model: m\n    context_window: 100000\n"
            "    price: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n    cooldown: {failures: 3, cooldown_ms: 60000}\n")


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[LiveGateway, RecordingSink]]:
    with upstream() as url:
        models = (_model("schema", f"{url}/schema") + _model("busy", f"{url}/busy")
                  + _model("quota", f"{url}/quota", "gemini") + _model("down", f"{url}/down")
                  + _model("refuse", f"{url}/refuse") + _model("nowait", f"{url}/nowait")
                  + _model("busyms", f"{url}/busyms") + _model("both", f"{url}/both")
                  + _model("badmsg", f"{url}/badmsg") + "    profile: {system: 'Answer briefly.'}\n"
                  + _model("badmsgold", f"{url}/badmsgold") + "    profile: {system: 'Answer briefly.'}\n"
                  + _model("badsys", f"{url}/badsys") + "    profile: {system: 'Answer briefly.'}\n")
        routes = "".join(f"- name: {name}\n  matcher: \"metadata.to == {name}\"\n  target: {name}\n"
                         "  retry: {attempts: 1}\n  deadline_ms: 5000\n"
                         for name in ("schema", "busy", "quota", "down", "refuse", "nowait", "busyms", "both", "badmsg",
                                      "badmsgold", "badsys"))
        sink = RecordingSink()
        config = f"models:\n{models}routes:\n{routes}"
        with live_gateway(config, None, telemetry=sink) as live:
            yield live, sink


def _client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=2)


def _ask(client: openai.OpenAI, to: str) -> None:
    client.chat.completions.create(model="laneway", messages=[{"role": "user", "content": "hi"}],
                                   metadata={"to": to})


def test_a_request_the_upstream_calls_malformed_is_the_clients_400_naming_the_field(
        gateway: tuple[LiveGateway, RecordingSink]) -> None:
    live, sink = gateway
    before = _Upstream.calls.get("/schema", 0)
    for _ in range(4):  # more than the breaker's 3 failures: the model stays open to everyone else
        with pytest.raises(openai.BadRequestError) as refused:
            _ask(_client(live), "schema")
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "upstream_rejected" and error["param"] == "response_format"
    assert "'additionalProperties' is required" in error["message"]
    assert _Upstream.calls["/schema"] - before == 4  # one call each: no SDK retry, no breaker skip
    assert all(a.outcome == "upstream_rejected" for e in sink.exchanges[-4:] for a in e.attempts)


@pytest.mark.parametrize(("to", "wait"), [("busy", "30"), ("quota", "40"), ("busyms", "3"), ("both", "5")])
def test_a_rate_limited_answer_carries_the_upstreams_wait(gateway: tuple[LiveGateway, RecordingSink], to: str,
                                                          wait: str) -> None:
    live, _ = gateway
    client = _client(live).with_options(max_retries=0)
    with pytest.raises(openai.RateLimitError) as limited:
        _ask(client, to)
    assert limited.value.response.headers["retry-after"] == wait


def test_a_rate_limit_that_asked_for_no_wait_is_answered_with_none(gateway: tuple[LiveGateway, RecordingSink]) -> None:
    """A `Retry-After: 1` of the gateway's own making sent SDKs back within the second, against an upstream
    that had set no time; without one, they back off as they would from the upstream itself."""
    live, _ = gateway
    with pytest.raises(openai.RateLimitError) as limited:
        _ask(_client(live).with_options(max_retries=0), "nowait")
    assert "retry-after" not in limited.value.response.headers


def test_after_the_routes_own_attempts_an_sdk_does_not_retry(gateway: tuple[LiveGateway, RecordingSink]) -> None:
    live, _ = gateway
    before = _Upstream.calls.get("/down", 0)
    with pytest.raises(openai.InternalServerError) as failed:
        _ask(_client(live), "down")
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert _Upstream.calls["/down"] - before == 1  # max_retries=2 would have made it 3


def test_a_models_refusal_reaches_the_client_as_openai_gives_it(gateway: tuple[LiveGateway, RecordingSink]) -> None:
    live, _ = gateway
    client = _client(live)
    ask = {"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "metadata": {"to": "refuse"}}
    message = client.chat.completions.create(**ask).choices[0].message  # type: ignore[call-overload]
    assert (message.refusal, message.content) == (REFUSAL, None)
    pieces = [chunk.choices[0].delta.refusal for chunk in client.chat.completions.create(**ask, stream=True)
              if chunk.choices and chunk.choices[0].delta.refusal]
    assert "".join(pieces) == REFUSAL


@pytest.mark.parametrize("to", ["badmsg", "badmsgold"])
def test_an_upstreams_400_names_the_clients_own_message(gateway: tuple[LiveGateway, RecordingSink], to: str) -> None:
    """The upstream counts in the messages it was sent, the model profile's system prompt first: the client was
    told its `messages[1]` was at fault, past its last message."""
    live, _ = gateway
    with pytest.raises(openai.BadRequestError) as refused:
        _client(live).chat.completions.create(model="laneway", messages=[{"role": "user", "content": "hi"}],
                                              metadata={"to": to})
    assert refused.value.body["param"] == "messages[0].content"  # type: ignore[index]


def test_an_upstreams_400_about_the_profiles_system_prompt_names_none_of_the_clients_messages(
        gateway: tuple[LiveGateway, RecordingSink]) -> None:
    """The profile's system prompt, which the client never sent, was pinned on the client's `messages[0]`."""
    live, _ = gateway
    with pytest.raises(openai.BadRequestError) as refused:
        _client(live).chat.completions.create(model="laneway", messages=[{"role": "user", "content": "hi"}],
                                              metadata={"to": "badsys"})
    assert refused.value.body["param"] is None  # type: ignore[index]
