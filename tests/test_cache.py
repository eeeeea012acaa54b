"""The exact response cache: hits replay the stored answer (also as a stream), sampled answers (any
temperature but 0, an unset one included) are never cached unless allowed, and the modes are honoured."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from dataclasses import replace
from typing import Any

import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from _loopback import Handler, LoopbackUpstream
from laneway.cache import MemoryStore, cache_key, lookup, model_scope, remember
from laneway.chat import Completion, Usage
from laneway.config import parse_config

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


@pytest.mark.parametrize("stream_first", [False, True])
def test_a_hit_gives_the_log_probabilities_the_answer_had(live: LiveGateway, stream_first: bool) -> None:
    """A hit answered `logprobs: null` to a request that asked for them, as the first answer had them."""
    question = f"how long do refunds take ({stream_first})"
    _, first = send(live, question, "on", temperature=0, logprobs=True, stream=stream_first)
    headers, hit = send(live, question, "on", temperature=0, logprobs=True)
    assert headers["x-laneway-lane"] == "cache"
    if stream_first:
        events = [json.loads(line[6:]) for line in first.decode().splitlines() if line.startswith("data: {")]
        given = [token for e in events if e["choices"] and e["choices"][0].get("logprobs")
                 for token in e["choices"][0]["logprobs"]["content"]]
    else:
        given = json.loads(first)["choices"][0]["logprobs"]["content"]
    assert given and json.loads(hit)["choices"][0]["logprobs"]["content"] == given


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
    # Set per end user, or for the provider's prompt cache: a hit for every customer asking the same.
    per_user = {"safety_identifier": "customer-8", "prompt_cache_key": "support", "prompt_cache_retention": "24h"}
    assert cache_key("r", messages, per_user) == cache_key("r", messages, {})
    assert cache_key("r", messages, {"max_tokens": 5}) != cache_key("r", messages, {})
    assert cache_key("r", messages, {}) != cache_key("other", messages, {})
    called = [{"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                                    "function": {"name": "a", "arguments": "{}"}}]}]
    assert cache_key("r", called, {}) != cache_key("r", [{"role": "assistant", "content": None}], {})


def test_the_key_holds_the_speakers_name_and_reads_one_setting_spelled_two_ways_as_one() -> None:
    alice = [{"role": "user", "name": "alice", "content": "What is my name?"}]
    bob = [{"role": "user", "name": "bob", "content": "What is my name?"}]
    assert cache_key("r", alice, {}) != cache_key("r", bob, {})  # the model reads the name
    assert cache_key("r", alice, {"temperature": 0}) == cache_key("r", alice, {"temperature": 0.0})
    assert cache_key("r", alice, {"max_tokens": 7}) == cache_key("r", alice, {"max_completion_tokens": 7})


def test_a_models_scope_changes_with_what_shapes_its_answers_and_with_nothing_else() -> None:
    config = parse_config("models:\n  m: {provider: openai, base_url: 'sim:///gpt-5/v1', model: gpt-5, "
                          "profile: {system: Be brief.}}\nroutes:\n- target: m\n")
    spec = config.models["m"]
    assert model_scope(spec) == model_scope(replace(spec, deadline_ms=900))  # how long it may take: the same
    for changed in (replace(spec, model="gpt-5-2026"), replace(spec, profile=replace(spec.profile, system="Hi!")),
                    replace(spec, base_url="sim:///gpt-5-mini/v1")):
        assert model_scope(changed) != model_scope(spec)


async def test_an_entry_keeps_the_answers_log_probabilities_and_fingerprint() -> None:
    store = MemoryStore()
    logprobs = [{"token": "Hi", "logprob": -0.01, "bytes": [72, 105], "top_logprobs": []}]
    answer = Completion("Hi", "stop", Usage(3, 1), "m", logprobs=logprobs, system_fingerprint="fp_44709d6fcb")
    await remember(store, "k", answer, "m", 60)
    kept = await lookup(store, "k")
    assert kept is not None and (kept.logprobs, kept.system_fingerprint) == (logprobs, "fp_44709d6fcb")


async def test_an_answer_replayed_as_a_stream_keeps_its_fingerprint_and_service_tier() -> None:
    """Whole from the cache it had them; replayed as a stream (a cache hit, a cascade's accepted answer) it lost
    both, which an OpenAI-compatible upstream's answers carry on every chunk."""
    from laneway.dispatch import replay_stream
    from laneway.exchange import Exchange

    answer = Completion("It is on its way", "stop", Usage(3, 5), "m", system_fingerprint="fp_44709d6fcb",
                        service_tier="default")
    started = replay_stream(answer, Exchange("r", 0.0, model="m"))
    assert (started.first.system_fingerprint, started.first.service_tier) == ("fp_44709d6fcb", "default")
    assert "".join([started.first.text, *[c.text async for c in started.rest]]) == "It is on its way"


async def test_an_entry_this_release_cannot_read_is_a_miss() -> None:
    store = MemoryStore()
    for raw in (b'{"text": "hi"}', b"not json", b'{"text": "hi", "finish_reason": "stop", "model": "m", '
                                                b'"prompt_tokens": "many", "completion_tokens": 1}'):
        await store.set("k", raw, ttl_s=60)
        assert await lookup(store, "k") is None


REFUSING = """
models:
  echo: {{provider: openai, base_url: "{url}", model: echo, profile: {{temperature: 0}}}}
  down: {{provider: openai, base_url: "http://127.0.0.1:{dead}/v1", model: down, connect_timeout_ms: 200,
         profile: {{temperature: 0}}}}
routes:
- name: fallen
  matcher: "metadata.mode == fallen"
  target: down
  fallbacks: [gpt-5-mini]
  cache: {{mode: on, allow_temperature: true}}
- name: refusing
  target: echo
  cache: {{mode: on}}
"""


class Refuser(Handler):
    """Refuses every request, streamed in two pieces or whole."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
        if not body.get("stream"):
            self.send(json.dumps({"id": "x", "object": "chat.completion", "model": "echo", "usage": usage,
                                  "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                      "role": "assistant", "content": None, "refusal": "I cannot help."}}]}).encode(),
                      "application/json")
            return
        events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "refusal": "I cannot "}}]},
                  {"choices": [{"index": 0, "delta": {"refusal": "help."}}]},
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                  {"choices": [], "usage": usage}]
        data = "".join(f"data: {json.dumps({'id': 'x', 'object': 'chat.completion.chunk', 'model': 'echo', **e})}\n\n"
                       for e in events) + "data: [DONE]\n\n"
        self.send(data.encode(), "text/event-stream")


@pytest.fixture(scope="module")
def refusing(sim_url: str) -> Any:
    upstream = LoopbackUpstream(Refuser)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = unused.getsockname()[1]
    with live_gateway(REFUSING.format(url=upstream.url, dead=dead), sim_url) as gateway:
        yield gateway
    upstream.shutdown()


def test_a_streamed_refusal_is_cached_as_a_refusal(refusing: LiveGateway) -> None:
    headers, _ = send(refusing, "please refuse", "any", stream=True)
    assert headers["x-laneway-lane"] == "primary"
    headers, body = send(refusing, "please refuse", "any")
    assert headers["x-laneway-lane"] == "cache"
    message = json.loads(body)["choices"][0]["message"]
    assert message["refusal"] == "I cannot help." and not message["content"]


def test_only_the_answer_of_the_model_the_entry_is_keyed_by_is_cached(refusing: LiveGateway) -> None:
    """A fallback's answer (sampled, maybe) would be served for a whole TTL after the target is back."""
    for _ in range(2):
        headers, _ = send(refusing, "where is my parcel", "fallen")
        assert (headers["x-laneway-model"], headers["x-laneway-lane"]) == ("gpt-5-mini", "fallback")


def test_a_cached_answer_of_a_model_no_longer_in_the_config_is_replayed_whole(live: LiveGateway) -> None:
    """After a reload that dropped it, or written by a replica that runs another routing file."""
    assert live.gateway is not None
    gateway = live.gateway
    messages = [{"role": "user", "content": "is my order late"}]
    spec = gateway.config.models["gpt-5-mini"]
    key = cache_key(f"cached|{model_scope(spec)}", messages, {"temperature": 0})
    answer = Completion("It ships today.", "stop", Usage(9, 4), "retired-model")
    live.call(remember(gateway.cache, key, answer, "retired-model", 60))
    headers, body = send(live, "is my order late", "on", temperature=0, stream=True)
    assert headers["x-laneway-lane"] == "cache" and headers["x-laneway-model"] == "retired-model"
    assert streamed_text(body) == "It ships today." and body.rstrip().endswith(b"data: [DONE]")
