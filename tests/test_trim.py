"""`trim: oldest`: a conversation a model's window cannot hold loses its oldest messages, not the
request; the latest customer message, the system prompt and tool-call pairs are kept whole."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from _loopback import Handler, LoopbackUpstream
from laneway.config import parse_config
from laneway.context import TokenCounter, upper_bound
from laneway.errors import ConfigError

WINDOW = 400


def dialog(turns: int) -> list[dict[str, Any]]:
    """A system prompt, then `turns` customer/agent exchanges of about 30 tokens each, ending with the customer."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You answer for the Acme support desk."}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"turn {turn}: my order {turn} arrived damaged " + "again " * 20})
        messages.append({"role": "assistant", "content": f"sorry about order {turn}, " + "we will help " * 8})
    messages.append({"role": "user", "content": "so what happens with the refund now?"})
    return messages


def test_the_oldest_messages_go_first_and_the_latest_turn_stays() -> None:
    counter = TokenCounter()
    messages = dialog(10)
    whole = counter.count(messages)
    assert whole > WINDOW
    cut = counter.trim_oldest(messages, "cl100k_base", WINDOW)
    assert cut is not None
    kept, dropped, tokens = cut
    assert tokens == counter.count(kept) <= WINDOW
    assert dropped == len(messages) - len(kept) > 0
    assert kept[0] == messages[0]  # the system prompt
    assert kept[1]["role"] == "user" and kept[-1] == messages[-1]
    assert kept[1:] == messages[len(messages) - len(kept) + 1:]  # a suffix of the dialog: nothing skipped inside
    # Dropping one message fewer would not have fitted, or would have left the dialog on an agent's message.
    longer = [messages[0], *messages[len(messages) - len(kept) - 1:]]
    assert counter.count(longer) > WINDOW or longer[1]["role"] != "user"
    approx = counter.trim_oldest(messages, "approx", WINDOW)
    assert approx is not None and approx[1] > dropped  # the approximate count errs towards less


def test_a_tool_result_never_loses_its_call() -> None:
    counter = TokenCounter()
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "order", "arguments": "{}"}}]}
    messages = [
        {"role": "user", "content": "where is order 1? " + "please " * 60},
        call,
        {"role": "tool", "tool_call_id": "c1", "content": "shipped " * 60},
        {"role": "assistant", "content": "it shipped"},
        {"role": "user", "content": "and order 2?"},
    ]
    cut = counter.trim_oldest(messages, "cl100k_base", 60)
    assert cut is not None
    assert cut[0] == messages[4:]  # the call, its result and the answer go together with the turn they served


def test_nothing_to_keep_is_no_trim() -> None:
    counter = TokenCounter()
    too_long = [{"role": "user", "content": "refund " * 500}]
    assert counter.trim_oldest(too_long, "cl100k_base", WINDOW) is None
    assert counter.trim_oldest([{"role": "system", "content": "x " * 500}], "cl100k_base", WINDOW) is None


CONFIG = f"""
models:
  small:
    provider: openai
    base_url: sim:///gpt-5-mini/v1
    model: gpt-5-mini
    context_window: {WINDOW}
  large:
    provider: openai
    base_url: sim:///gpt-5/v1
    model: gpt-5
  claude:
    provider: anthropic
    base_url: sim:///claude-sonnet-37
    model: claude-sonnet-37
    context_window: {WINDOW * 4}
    reasoning: {{high: 1024}}
routes:
- name: trimmed
  path: /v1/chat
  matcher: "metadata.plan == trim"
  target: small
  trim: oldest
- name: long
  path: /v1/chat
  matcher: "metadata.plan == long"
  target: small
  long_context: large
  trim: oldest
- name: thinking
  path: /v1/chat
  matcher: "metadata.plan == think"
  target: claude
  trim: oldest
- name: strict
  path: /v1/chat
  target: small
"""


def send(live: LiveGateway, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.fixture(scope="module")
def trimming(sim_url: str) -> Any:
    sink = RecordingSink()
    with live_gateway(CONFIG, sim_url, telemetry=sink) as live:
        yield live, sink


def test_a_long_dialog_is_trimmed_to_the_window_instead_of_refused(trimming: Any) -> None:
    live, sink = trimming
    messages = dialog(10)
    status, headers, body = send(live, {"model": "laneway", "messages": messages, "metadata": {"plan": "trim"}})
    assert status == 200 and headers["x-laneway-model"] == "small"
    dropped = int(headers["x-laneway-trimmed"])
    attempt = sink.by_id(headers["x-request-id"]).attempts[-1]
    assert attempt.trimmed_messages == dropped > 0
    # What the model was sent fits its window with room for the answer: a quarter of it, as the
    # request names no `max_tokens` (the fleet counts what it received).
    assert body["usage"]["prompt_tokens"] <= WINDOW - WINDOW // 4
    assert body["usage"]["completion_tokens"] <= WINDOW // 4  # and the answer is held to that room
    assert body["usage"]["prompt_tokens"] < TokenCounter().count(messages)


def test_without_trim_the_same_dialog_is_a_clear_error(trimming: Any) -> None:
    live, _ = trimming
    status, headers, body = send(live, {"model": "laneway", "messages": dialog(10)})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert "x-laneway-trimmed" not in headers
    assert "give the route `trim: oldest`" in body["error"]["message"]


def test_a_latest_message_too_long_to_keep_says_what_trimming_cannot_do(trimming: Any) -> None:
    live, _ = trimming
    messages = [*dialog(3)[:-1], {"role": "user", "content": "please read this: " + "refund " * 400}]
    status, _, body = send(live, {"model": "laneway", "messages": messages, "metadata": {"plan": "trim"},
                                  "max_tokens": 50})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    message = body["error"]["message"]
    assert f"`small` holds {WINDOW} with 50 for the output" in message
    assert "even `trim: oldest` cannot make it fit" in message


def test_a_long_context_model_gets_the_whole_dialog_before_anything_is_trimmed(trimming: Any) -> None:
    live, _ = trimming
    status, headers, _ = send(live, {"model": "laneway", "messages": dialog(10), "metadata": {"plan": "long"}})
    assert status == 200 and headers["x-laneway-model"] == "large"
    assert "x-laneway-trimmed" not in headers


def test_a_short_dialog_is_sent_whole_and_a_stream_says_what_was_trimmed(trimming: Any) -> None:
    live, _ = trimming
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    short = client.chat.completions.with_raw_response.create(
        model="laneway", messages=dialog(1), metadata={"plan": "trim"})  # type: ignore[arg-type]
    assert "x-laneway-trimmed" not in short.headers
    with client.chat.completions.with_streaming_response.create(
            model="laneway", messages=dialog(10), metadata={"plan": "trim"}, stream=True) as streamed:  # type: ignore[arg-type]
        assert int(streamed.headers["x-laneway-trimmed"]) > 0
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed.parse() if chunk.choices)
    assert text


def test_an_unknown_trim_policy_names_the_route() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("routes:\n- target: gpt-5\n  trim: newest\n")
    assert "routes[0].trim" in str(caught.value) and "none, oldest" in str(caught.value)


def test_a_thinking_budget_is_room_the_conversation_leaves(trimming: Any) -> None:
    live, _ = trimming
    body = {"model": "laneway", "messages": dialog(12), "metadata": {"plan": "think"}, "max_tokens": 100}
    status, headers, _ = send(live, body)
    assert status == 200
    status, thought_headers, thought = send(live, {**body, "reasoning_effort": "high"})
    assert status == 200
    # The thinking budget (1,024) is output too: the same dialog keeps fewer of its oldest messages.
    assert int(thought_headers["x-laneway-trimmed"]) > int(headers.get("x-laneway-trimmed", 0))
    assert thought["usage"]["prompt_tokens"] + 100 + 1024 <= WINDOW * 4


def test_the_running_config_shows_the_trim_policy_and_the_reasoning_map(trimming: Any) -> None:
    live, _ = trimming
    with urllib.request.urlopen(live.url + "/admin/config", timeout=10) as response:
        config = json.loads(response.read())
    routes = {route["name"]: route for route in config["routes"]}
    assert routes["trimmed"]["trim"] == "oldest" and routes["strict"]["trim"] == "none"
    assert config["models"]["claude"]["reasoning"] == {"high": 1024}


def test_tool_calls_and_tool_definitions_count_as_prompt_tokens() -> None:
    counter = TokenCounter()
    note = "the customer says the parcel was left at the wrong door " * 20
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "update_ticket", "arguments": json.dumps({"note": note})}}]}
    bare = [{"role": "user", "content": "update the ticket"}, {"role": "assistant", "content": None}]
    called = [bare[0], call]
    assert counter.count(called) - counter.count(bare) >= counter.text_tokens(note)
    tools = [{"type": "function", "function": {"name": "update_ticket", "description": note,
                                               "parameters": {"type": "object"}}}]
    assert counter.count(bare, tools=tools) - counter.count(bare) >= counter.text_tokens(note)
    assert upper_bound(called) >= counter.count(called) and upper_bound(bare, tools) >= counter.count(bare, tools=tools)
    # Trimming makes room for them: what is kept, with the tools, fits.
    messages = dialog(10)
    kept = counter.trim_oldest(messages, "cl100k_base", WINDOW, tools)
    assert kept is not None and kept[2] == counter.count(kept[0], tools=tools) <= WINDOW
    assert kept[1] > counter.trim_oldest(messages, "cl100k_base", WINDOW)[1]  # type: ignore[index]


def test_a_trimming_route_leaves_room_for_an_answer_before_the_window_is_full(trimming: Any) -> None:
    """A dialog that fits the window only with no room to answer is trimmed, not sent to be cut short."""
    live, _ = trimming
    counter = TokenCounter()
    messages = dialog(10)
    while counter.count(messages) > WINDOW - 5:
        messages = [messages[0], *messages[3:]]
    assert counter.count(messages) > WINDOW - WINDOW // 4
    status, headers, body = send(live, {"model": "laneway", "messages": messages, "metadata": {"plan": "trim"}})
    assert status == 200 and int(headers["x-laneway-trimmed"]) > 0
    assert body["usage"]["prompt_tokens"] <= WINDOW - WINDOW // 4


def test_an_anthropic_model_is_given_room_for_the_output_its_adapter_asks_for(sim_url: str) -> None:
    """Anthropic's API needs a `max_tokens`: the adapter sends 4,096 when the request names none."""
    config = ("models:\n  claude: {provider: anthropic, base_url: 'sim:///claude-sonnet-37', model: claude-sonnet-37,"
              " context_window: 5000}\nroutes:\n- {target: claude, long_context: gpt-5}\n")
    messages = dialog(20)
    assert 1000 < TokenCounter().count(messages) < 5000 - 4096 + 1000
    with live_gateway(config, sim_url) as live:
        status, headers, _ = send(live, {"model": "laneway", "messages": messages})
        assert status == 200 and headers["x-laneway-model"] == "gpt-5"  # 4,096 more would not fit `claude`
        status, headers, _ = send(live, {"model": "laneway", "messages": messages, "max_tokens": 500})
        assert status == 200 and headers["x-laneway-model"] == "claude"


class TooLong(Handler):
    """An upstream whose window the gateway cannot count (images, files): it refuses every prompt."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        data = json.dumps({"error": {"message": "This model's maximum context length is 2000 tokens. However, your "
                                                "messages resulted in 2216 tokens.", "type": "invalid_request_error",
                                     "param": "messages", "code": "context_length_exceeded"}}).encode()
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_an_upstream_that_says_the_prompt_is_too_long_hands_it_to_the_long_context_model(sim_url: str) -> None:
    upstream = LoopbackUpstream(TooLong)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    config = (f"models:\n  small: {{provider: openai, base_url: '{upstream.url}', model: small, context_window: 2000}}"
              "\nroutes:\n- {target: small, long_context: gpt-5}\n")
    try:
        with live_gateway(config, sim_url) as live:
            for stream in (False, True):
                status, headers, _ = send_raw(live, {"model": "laneway", "stream": stream, "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "what is on this receipt?"},
                                                 {"type": "image_url", "image_url": {"url": "https://x/r.png"}}]}]})
                assert (status, headers["x-laneway-model"], headers["x-laneway-lane"]) == (200, "gpt-5", "fallback")
    finally:
        upstream.shutdown()


def test_a_fallback_that_is_cooling_down_leaves_the_target_to_trim(sim_url: str) -> None:
    config = (f"models:\n  small: {{provider: openai, base_url: 'sim:///gpt-5-mini/v1', model: gpt-5-mini, "
              f"context_window: {WINDOW}}}\n  broken: {{provider: openai, base_url: 'sim:///gpt-5/v1', "
              "model: 'gpt-5@error_503', cooldown: {failures: 1, cooldown_ms: 60000}}\n"
              "routes:\n- {target: small, fallbacks: [broken], trim: oldest}\n")
    with live_gateway(config, sim_url) as live:
        status, headers, _ = send(live, {"model": "laneway", "messages": dialog(10)})
        assert status == 502  # `broken` had the room, and failed: its breaker opens
        status, headers, _ = send(live, {"model": "laneway", "messages": dialog(10)})
        assert status == 200 and headers["x-laneway-model"] == "small" and int(headers["x-laneway-trimmed"]) > 0


def send_raw(live: LiveGateway, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()
