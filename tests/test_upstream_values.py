"""Values an upstream may send that no working model would: each is its attempt's failure (so the route's
fallback answers) or is read as harmless, never the client's 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from _loopback import Handler, completion_body, serving, sse_body
from laneway.cascade import from_logprobs
from laneway.chat import Completion, Usage
from laneway.providers._base import MAX_RETRY_AFTER_S, retry_after

ANSWER = "Your order ships today."
# What the odd model streams, by the last message's text: each is no event a model could send.
ODD_STREAMS = {
    "choice-not-an-object": {"choices": ["x"]},
    "delta-not-an-object": {"choices": [{"index": 0, "delta": [1, 2]}]},
    "content-not-text": {"choices": [{"index": 0, "delta": {"content": {"a": 1}}}]},
    "finish-not-text": {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": {"x": [1]}}]},
}


# An answer in parts, as Mistral's reasoning models give it: the reasoning, then the text in two parts.
IN_PARTS = [{"type": "thinking", "thinking": [{"type": "text", "text": "The customer wants a date."}]},
            {"type": "text", "text": "Your order "}, {"type": "text", "text": "ships today."}]


class _Handler(Handler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        asked = body["messages"][-1]["content"]
        if body["model"] == "odd-model" and asked == "wait-forever":
            data = b'{"error": {"message": "slow down"}}'
            self.send_response(429)
            self.send_header("retry-after", "inf")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if body["model"] == "odd-model" and body.get("stream") and asked in ODD_STREAMS:
            events = [ODD_STREAMS[asked], {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
            self.send(sse_body(events), "text/event-stream")
            return
        if body["model"] == "odd-model" and asked in ("ended-error", "ended-abort"):  # failed mid-generation
            finish, cut = asked.removeprefix("ended-"), "Hello there, how"
            if body.get("stream"):
                self.send(sse_body([{"choices": [{"index": 0, "delta": {"content": cut}}]},
                                    {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}]),
                          "text/event-stream")
            else:
                choice = {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": cut}}
                used = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
                self.send(completion_body(body["model"], choice, usage=used), "application/json")
            return
        if body["model"] == "odd-model" and asked == "usage-then-error" and body.get("stream"):
            usage = {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}  # on every event, as vLLM can
            self.send(sse_body([{"choices": [{"index": 0, "delta": {"role": "assistant"}}], "usage": usage},
                                {"error": {"message": "the engine is overloaded", "code": 503}}]), "text/event-stream")
            return
        if body["model"] == "odd-model" and asked == "in-parts" and body.get("stream"):
            events = [{"choices": [{"index": 0, "delta": {"content": [part]}}]} for part in IN_PARTS]
            self.send(sse_body([*events, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]),
                      "text/event-stream")
            return
        logprob = 710.0 if body["model"] == "odd-model" else -0.01  # a "log probability" past any number exp takes
        usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
        content = (({"in-parts": IN_PARTS, "content-an-object": {"text": ANSWER}}).get(asked, ANSWER)
                   if body["model"] == "odd-model" else ANSWER)
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content},
                  "logprobs": {"content": [{"token": "Your", "logprob": logprob, "bytes": None, "top_logprobs": []}]}}
        if body.get("stream"):
            events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ANSWER}}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}]
            self.send(sse_body(events), "text/event-stream")
            return
        self.send(completion_body(body["model"], choice, usage=usage), "application/json")


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[LiveGateway, RecordingSink]]:
    with serving(_Handler) as upstream:
        config = f"""
models:
  odd: {{provider: openai, base_url: "{upstream.url}", model: odd-model,
        price: {{input_per_mtok: 1, output_per_mtok: 2}},
        cooldown: {{failures: 1000}}}}  # every test fails it: it must not cool down for the next
  steady: {{provider: openai, base_url: "{upstream.url}", model: steady-model,
           price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
- name: graded
  matcher: "metadata.lane == graded"
  target: odd
  cascade: {{confidence: 0.7, source: logprobs, escalate_to: steady}}
- name: alone
  matcher: "metadata.lane == alone"
  target: odd
- name: backed
  target: odd
  fallbacks: [steady]
"""
        sink = RecordingSink()
        with live_gateway(config, None, telemetry=sink) as gateway:
            yield gateway, sink


def client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("asked", sorted(ODD_STREAMS))
def test_a_stream_event_no_model_could_send_fails_its_attempt_and_the_fallback_answers(
        live: tuple[LiveGateway, RecordingSink], asked: str) -> None:
    gateway, sink = live
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="laneway", messages=[{"role": "user", "content": asked}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in reply.parse() if chunk.choices)
    assert (reply.status_code, reply.headers["x-laneway-model"], text) == (200, "steady", ANSWER)
    *failed, answered = sink.by_id(reply.headers["x-request-id"]).attempts
    assert {(a.model, a.outcome) for a in failed} == {("odd", "upstream_bad_response")} and answered.model == "steady"


def test_an_upstreams_endless_retry_after_is_a_429_that_asks_for_an_hour_at_most(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, _ = live
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway).chat.completions.create(model="laneway", messages=[{"role": "user", "content": "wait-forever"}],
                                                metadata={"lane": "alone"})
    assert caught.value.status_code == 429 and int(caught.value.response.headers["retry-after"]) == 3600


@pytest.mark.parametrize(("header", "seconds"), [
    ("inf", MAX_RETRY_AFTER_S), ("1e300", MAX_RETRY_AFTER_S), ("Infinity", MAX_RETRY_AFTER_S), ("nan", None),
    ("-5", 0.0), ("12", 12.0), ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER_S)])
def test_a_retry_after_is_read_within_an_hour(header: str, seconds: float | None) -> None:
    assert retry_after(header) == seconds


def test_a_log_probability_past_any_number_is_read_as_no_confidence_and_the_answer_escalated(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, _ = live
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="laneway", messages=[{"role": "user", "content": "Where is my order?"}], metadata={"lane": "graded"})
    assert (reply.status_code, reply.headers["x-laneway-model"], reply.headers["x-laneway-lane"]) == (
        200, "steady", "cascade")


@pytest.mark.parametrize("logprob", ["x", None, [1], 710.0, float("nan"), True])
def test_a_logprob_that_is_not_a_log_probability_gives_no_confidence(logprob: Any) -> None:
    answer = Completion("Hi", "stop", Usage(), "m", logprobs=[{"token": "Hi", "logprob": logprob}])
    assert from_logprobs(answer) == 0.0
    fine = Completion("Hi", "stop", Usage(), "m", logprobs=[{"token": "Hi", "logprob": -0.5}])
    assert 0.6 < from_logprobs(fine) < 0.61


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_in_parts_reaches_the_client_as_the_text_of_its_text_parts(
        live: tuple[LiveGateway, RecordingSink], stream: bool) -> None:
    """A whole answer in parts reached the customer as a Python printout of them, reasoning included."""
    gateway, _ = live
    ask = client(gateway).chat.completions
    asked: Any = [{"role": "user", "content": "in-parts"}]
    if stream:
        chunks = list(ask.create(model="laneway", messages=asked, stream=True, metadata={"lane": "alone"}))
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    else:
        text = ask.create(model="laneway", messages=asked, metadata={"lane": "alone"}).choices[0].message.content
    assert text == ANSWER


def test_an_answer_whose_content_is_no_text_fails_its_attempt_and_the_fallback_answers(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, sink = live
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="laneway", messages=[{"role": "user", "content": "content-an-object"}])
    assert (reply.headers["x-laneway-model"], reply.parse().choices[0].message.content) == ("steady", ANSWER)
    *failed, answered = sink.by_id(reply.headers["x-request-id"]).attempts
    assert {(a.model, a.outcome) for a in failed} == {("odd", "upstream_bad_response")}
    assert (answered.model, answered.outcome) == ("steady", "ok")


@pytest.mark.parametrize("asked", ["ended-error", "ended-abort"])
def test_an_answer_its_upstream_ended_as_failed_is_no_answer(live: tuple[LiveGateway, RecordingSink],
                                                            asked: str) -> None:
    """Mistral's and OpenRouter's `finish_reason: "error"`, vLLM's `"abort"`: the cut answer was passed off as
    whole, logged `ok` (a success for the breaker) and cached. Whole, the fallback answers; streamed past the
    first byte, the stream ends with an error event, never a clean `[DONE]`."""
    gateway, sink = live
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="laneway", messages=[{"role": "user", "content": asked}])
    assert (reply.headers["x-laneway-model"], reply.parse().choices[0].message.content) == ("steady", ANSWER)
    *failed, answered = sink.by_id(reply.headers["x-request-id"]).attempts
    assert {(a.model, a.outcome) for a in failed} == {("odd", "upstream_unavailable")} and answered.model == "steady"
    assert all(f"finish_reason: {asked[6:]}" in (a.error or "") for a in failed)
    # what it generated before it gave up, and said it used, is billed, as a stream cut short is
    assert all((a.prompt_tokens, a.completion_tokens) == (1000, 500) and a.cost_usd > 0 for a in failed)
    with client(gateway).chat.completions.with_streaming_response.create(
            model="laneway", messages=[{"role": "user", "content": asked}], stream=True) as streamed:
        raw = b"".join(streamed.iter_bytes())
    assert b"Hello there, how" in raw and b"event: error" in raw and b"[DONE]" not in raw


def test_a_stream_whose_first_events_hold_only_usage_fails_over_on_an_error_before_any_token(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    """vLLM's `continuous_usage_stats` put the usage on every event: the first, with no token, began the stream,
    and an error before any token reached the client as a cut stream instead of going to the fallback."""
    gateway, sink = live
    reply = client(gateway).chat.completions.with_raw_response.create(
        model="laneway", messages=[{"role": "user", "content": "usage-then-error"}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in reply.parse() if chunk.choices)
    assert (reply.headers["x-laneway-model"], text) == ("steady", ANSWER)
    *failed, answered = sink.by_id(reply.headers["x-request-id"]).attempts
    assert {a.model for a in failed} == {"odd"} and answered.model == "steady"
