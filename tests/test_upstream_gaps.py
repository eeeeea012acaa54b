"""What the gateway fills in when an OpenAI-compatible upstream leaves it out: the usage of an answer
(counted locally, whole or streamed alike, so that no answer costs $0), and the assistant's role in a
stream with no text at all (a reasoning model whose budget ran out before it wrote a word)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from _loopback import Handler, completion_body, serving, sse_body

TEXT = ["Your order", " ships", " today."]
UPSTREAM_FIELDS = {"system_fingerprint": "fp_abc123", "service_tier": "default"}


class _Handler(Handler):
    """Answers without `usage`; a request whose last message is `empty` gets an answer with no text."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        pieces = [""] if body["messages"][-1]["content"] == "empty" else TEXT
        # a request whose last message is `fingerprint` gets OpenAI's backend fields on every chunk
        extra = UPSTREAM_FIELDS if body["messages"][-1]["content"] == "fingerprint" else {}
        if body["messages"][-1]["content"] == "absurd":  # a broken server's figures, past any 64-bit count
            extra = {"usage": {"prompt_tokens": 10**20, "completion_tokens": -3, "total_tokens": "many"}}
        if body.get("stream"):
            events = [{**extra, "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece},
                                             "finish_reason": None}]} for piece in pieces]
            events.append({**extra, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            self.send(sse_body(events), "text/event-stream")
        else:
            choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "".join(pieces)}}
            self.send(completion_body(body["model"], choice, **extra), "application/json")


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[LiveGateway, RecordingSink]]:
    with serving(_Handler) as upstream:
        config = f"""
models:
  vllm:
    provider: openai
    base_url: {upstream.url}
    model: served-model
    context_window: 32000
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
routes:
- name: all
  target: vllm
"""
        sink = RecordingSink()
        with live_gateway(config, None, telemetry=sink) as gateway:
            yield gateway, sink


def client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


MESSAGES: list[Any] = [{"role": "system", "content": "You answer customers of a web shop."},
                       {"role": "user", "content": "When does order 1182 ship?"}]


def test_an_answer_without_usage_is_counted_and_billed_alike_whole_and_streamed(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, sink = live
    whole = client(gateway).chat.completions.with_raw_response.create(model="laneway", messages=MESSAGES)
    answer = whole.parse()
    assert answer.choices[0].message.content == "".join(TEXT)
    assert answer.usage is not None and answer.usage.prompt_tokens > 10 and answer.usage.completion_tokens > 2
    stream = client(gateway).chat.completions.create(model="laneway", messages=MESSAGES, stream=True,
                                                     stream_options={"include_usage": True})
    streamed = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert [(u.prompt_tokens, u.completion_tokens) for u in streamed] == [
        (answer.usage.prompt_tokens, answer.usage.completion_tokens)]
    expected = (answer.usage.prompt_tokens * 1.0 + answer.usage.completion_tokens * 2.0) / 1e6
    assert float(whole.headers["x-laneway-cost-usd"]) == pytest.approx(expected, abs=1e-8)
    recorded = sink.by_id(whole.headers["x-request-id"])
    assert (recorded.prompt_tokens, recorded.completion_tokens) == (answer.usage.prompt_tokens,
                                                                    answer.usage.completion_tokens)
    assert recorded.cost_usd == pytest.approx(expected)


def test_a_stream_with_no_text_still_says_the_answer_is_the_assistants(live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, _ = live
    with client(gateway).chat.completions.stream(model="laneway",
                                                 messages=[{"role": "user", "content": "empty"}]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert (choice.message.role, choice.message.content or "", choice.finish_reason) == ("assistant", "", "stop")


def test_an_openai_upstreams_fingerprint_and_service_tier_reach_the_client(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, _ = live
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "fingerprint"}]
    whole = client.chat.completions.create(model="laneway", messages=messages)
    assert (whole.system_fingerprint, whole.service_tier) == ("fp_abc123", "default")
    chunks = list(client.chat.completions.create(model="laneway", messages=messages, stream=True))
    assert chunks and all((c.system_fingerprint, c.service_tier) == ("fp_abc123", "default") for c in chunks)
    plain = client.chat.completions.create(model="laneway", messages=[{"role": "user", "content": "hello"}])
    assert (plain.system_fingerprint, plain.service_tier) == (None, None)  # none given, none made up


def test_usage_figures_no_model_could_have_are_counted_here_instead(live: tuple[LiveGateway, RecordingSink]) -> None:
    """10**20 tokens overflowed the metrics' and the log's 64-bit counts, and stopped the telemetry."""
    gateway, sink = live
    messages: Any = [{"role": "user", "content": "absurd"}]
    whole = client(gateway).chat.completions.with_raw_response.create(model="laneway", messages=messages)
    usage = whole.parse().usage
    assert usage is not None and 0 < usage.prompt_tokens < 100 and 0 < usage.completion_tokens < 100
    recorded = sink.by_id(whole.headers["x-request-id"])
    assert (recorded.prompt_tokens, recorded.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    stream = client(gateway).chat.completions.create(model="laneway", messages=messages, stream=True,
                                                     stream_options={"include_usage": True})
    assert [(u.prompt_tokens, u.completion_tokens) for u in (c.usage for c in stream) if u is not None] == [
        (usage.prompt_tokens, usage.completion_tokens)]


@pytest.mark.parametrize(("size", "on_the_loop"), [(1000, True), (200_000, False)])
async def test_a_large_answer_without_usage_is_counted_off_the_event_loop(size: int, on_the_loop: bool) -> None:
    """A 50 MB answer counted on the loop held every other request for 1.9 s."""
    from laneway.chat import ChatRequest
    from laneway.config import ModelSpec
    from laneway.context import TokenCounter
    from laneway.dispatch import estimate_usage

    threads: list[threading.Thread] = []

    class Recording(TokenCounter):
        def text_tokens(self, text: str) -> int:
            threads.append(threading.current_thread())
            return super().text_tokens(text)

    spec = ModelSpec(name="m", provider="openai", base_url="http://127.0.0.1:1/v1", model="m")
    usage = await estimate_usage(Recording(), spec, ChatRequest("m", [{"role": "user", "content": "hi"}], {}),
                                 ["word " * (size // 5)])
    assert usage.completion_tokens >= size // 10 and usage.prompt_tokens > 0
    assert (threads == [threading.main_thread()]) == on_the_loop
