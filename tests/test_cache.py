"""The exact response cache: hits replay the stored answer (also as a stream), sampled answers (any
temperature but 0, an unset one included) are never cached unless allowed, and the modes are honoured."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from laneway.cache import MemoryStore, cache_key

CONFIG = """
routes:
- name: cached
  matcher: "metadata.mode == on"
  target: gpt-5-mini
  cache: {mode: on, ttl_s: 60}
- name: read-only
  matcher: "metadata.mode == read_only"
  target: gpt-5-mini
  cache: {mode: read_only}
- name: hot
  matcher: "metadata.mode == hot"
  target: gpt-5-mini
  cache: {mode: on, allow_temperature: true}
- name: plain
  target: gpt-5-mini
"""


def send(live: LiveGateway, content: str, mode: str, **body: Any) -> tuple[dict[str, str], bytes]:
    payload = {"model": "laneway", "messages": [{"role": "user", "content": content}],
               "metadata": {"mode": mode}, **body}
    request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(payload).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(response.headers), response.read()


def text_of(body: bytes) -> str:
    return str(json.loads(body)["choices"][0]["message"]["content"])


def streamed_text(body: bytes) -> str:
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: {")]
    return "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events
                   if json.loads(e)["choices"])


SINK = RecordingSink()


@pytest.fixture(scope="module")
def live(sim_url: str) -> Any:
    with live_gateway(CONFIG, sim_url, telemetry=SINK) as gateway:
        yield gateway


def test_second_identical_request_is_a_cache_hit(live: LiveGateway) -> None:
    first_headers, first = send(live, "where is my parcel", "on", temperature=0)
    second_headers, second = send(live, "where is my parcel", "on", temperature=0)
    assert first_headers["x-laneway-lane"] == "primary"
    assert second_headers["x-laneway-lane"] == "cache"
    assert second_headers["x-laneway-model"] == "gpt-5-mini"
    assert text_of(second) == text_of(first)
    assert float(second_headers["x-laneway-cost-usd"]) == 0.0 < float(first_headers["x-laneway-cost-usd"])
    stream_headers, streamed = send(live, "where is my parcel", "on", temperature=0, stream=True)
    assert stream_headers["x-laneway-lane"] == "cache"
    assert streamed_text(streamed) == text_of(first) and streamed.rstrip().endswith(b"[DONE]")
    # Lookups count against the model a hit saves a call to, not the route.
    assert {event for event in SINK.events if event[0].startswith("cache_")} >= {("cache_miss", "gpt-5-mini"),
                                                                                 ("cache_hit", "gpt-5-mini")}
    assert all(model == "gpt-5-mini" for event, model in SINK.events if event.startswith("cache_"))


def test_a_cache_hit_bills_no_tokens(live: LiveGateway) -> None:
    """The client gets the answer's usage; the metrics and the log count no billed tokens for it."""
    _, first = send(live, "what is my balance", "on", temperature=0)
    for stream in (False, True):
        headers, body = send(live, "what is my balance", "on", temperature=0, stream=stream,
                             **({"stream_options": {"include_usage": True}} if stream else {}))
        assert headers["x-laneway-lane"] == "cache"
        hit = SINK.by_id(headers["x-request-id"])
        assert (hit.prompt_tokens, hit.completion_tokens, hit.cost_usd) == (0, 0, 0.0)
        usage = (json.loads(body) if not stream else
                 json.loads([line[6:] for line in body.decode().splitlines() if '"usage"' in line][-1]))["usage"]
        assert usage == json.loads(first)["usage"]


def test_streamed_answers_are_cached_and_replayed(live: LiveGateway) -> None:
    _, first = send(live, "cancel my order", "on", temperature=0, stream=True)
    headers, second = send(live, "cancel my order", "on", temperature=0)
    assert headers["x-laneway-lane"] == "cache"
    assert text_of(second) == streamed_text(first)


def test_sampled_answers_are_not_cached_unless_allowed(live: LiveGateway) -> None:
    send(live, "reset my password", "on", temperature=0.7)
    headers, _ = send(live, "reset my password", "on", temperature=0.7)
    assert headers["x-laneway-lane"] == "primary"
    send(live, "reset my password", "hot", temperature=0.7)
    headers, _ = send(live, "reset my password", "hot", temperature=0.7)
    assert headers["x-laneway-lane"] == "cache"


def test_an_answer_at_the_apis_default_temperature_is_sampled_and_not_cached(live: LiveGateway) -> None:
    """`gpt-5-mini` has no profile temperature: a request that sets none is sampled at the API's default."""
    send(live, "track my refund", "on")
    headers, _ = send(live, "track my refund", "on")
    assert headers["x-laneway-lane"] == "primary"
    send(live, "track my refund", "hot")
    headers, _ = send(live, "track my refund", "hot")
    assert headers["x-laneway-lane"] == "cache"


def test_read_only_never_writes(live: LiveGateway) -> None:
    send(live, "update my address", "read_only", temperature=0)
    headers, _ = send(live, "update my address", "read_only", temperature=0)
    assert headers["x-laneway-lane"] == "primary"


async def test_memory_store_bounds_and_expiry() -> None:
    store = MemoryStore(max_entries=2)
    for key in ("a", "b", "c"):
        await store.set(key, key.encode(), ttl_s=60)
    assert await store.get("a") is None and await store.get("c") == b"c" and len(store) == 2
    await store.set("old", b"x", ttl_s=-1)
    assert await store.get("old") is None


def test_cache_key_ignores_what_does_not_change_the_answer() -> None:
    messages = [{"role": "user", "content": "hi "}]
    assert cache_key("r", messages, {"user": "a"}) == cache_key("r", [{"role": "user", "content": "hi"}], {})
    assert cache_key("r", messages, {"max_tokens": 5}) != cache_key("r", messages, {})
    assert cache_key("r", messages, {}) != cache_key("other", messages, {})
    called = [{"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                                    "function": {"name": "a", "arguments": "{}"}}]}]
    assert cache_key("r", called, {}) != cache_key("r", [{"role": "assistant", "content": None}], {})
