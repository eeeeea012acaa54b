"""Migration lanes and grounding: canary stickiness and weights, the confidence cascade, shadow
copies that never touch the primary answer, and retrieval with `on_miss`."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from laneway.config import parse_config
from laneway.routing import canary_target
from laneway.telemetry import Telemetry, TelemetrySettings

ROOT = Path(__file__).resolve().parents[1]




def send(live: LiveGateway, content: str, **body: Any) -> tuple[dict[str, str], bytes]:
    payload = {"model": "laneway", "messages": [{"role": "user", "content": content}], **body}
    request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(payload).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(response.headers), response.read()


def test_canary_assignment_is_sticky_and_weighted() -> None:
    route = parse_config("""
routes:
- name: chat
  target: gpt-5-mini
  canary: [{target: gemini-2.5-flash-lite, weight: 0.05}, {target: claude-sonnet-37, weight: 0.10}]
""").routes[0]
    keys = [f"conversation-{i}" for i in range(20_000)]
    lanes = Counter(canary_target(route, key) for key in keys)
    assert abs(lanes["gemini-2.5-flash-lite"] / len(keys) - 0.05) < 0.006
    assert abs(lanes["claude-sonnet-37"] / len(keys) - 0.10) < 0.008
    assert all(canary_target(route, key) == canary_target(route, key) for key in keys[:500])


CANARY = """
routes:
- name: chat
  target: gpt-5-mini
  canary: {target: gemini-2.5-flash-lite, weight: 0.5}
"""


CACHED_CANARY = """
routes:
- name: chat
  target: gpt-5-mini
  canary: {target: gemini-2.5-flash-lite, weight: 0.5}
  cache: {mode: on}
"""


def test_the_cache_keeps_each_lanes_answers_to_that_lane(sim_url: str) -> None:
    """A canary's cached answer is never served to a primary conversation (nor the other way round), and
    the canary comparison counts neither lane for a cache hit: no model was called."""
    route = parse_config(CACHED_CANARY).routes[0]
    keys = [f"c{i}" for i in range(40)]
    canary = [k for k in keys if canary_target(route, k)][:2]
    primary = [k for k in keys if not canary_target(route, k)][:2]
    sink = RecordingSink()
    with live_gateway(CACHED_CANARY, sim_url, telemetry=sink) as live:
        served = {key: send(live, "Where is my refund?", temperature=0, metadata={"conversation_id": key})[0]
                  for key in (canary[0], primary[0], canary[1], primary[1])}
    got = {key: (h["x-laneway-lane"], h["x-laneway-model"]) for key, h in served.items()}
    assert got[canary[0]] == ("canary", "gemini-2.5-flash-lite") and got[primary[0]] == ("primary", "gpt-5-mini")
    assert got[canary[1]] == ("cache", "gemini-2.5-flash-lite") and got[primary[1]] == ("cache", "gpt-5-mini")
    from laneway.telemetry._canary_comparison import canary_comparison
    from laneway.telemetry._window import rows_of

    lanes = canary_comparison(rows_of(sink.exchanges, simulated=True))["routes"]["chat"]
    assert lanes["primary"]["requests"] == 1 and lanes["canaries"]["gemini-2.5-flash-lite"]["requests"] == 1


def test_a_conversation_never_flips_lanes(sim_url: str) -> None:
    sink = RecordingSink()
    with live_gateway(CANARY, sim_url, telemetry=sink) as live:
        seen: dict[str, set[tuple[str, str]]] = {}
        for turn in range(3):
            for conversation in range(12):
                headers, _ = send(live, f"turn {turn}", metadata={"conversation_id": f"c{conversation}"})
                seen.setdefault(f"c{conversation}", set()).add((headers["x-laneway-lane"],
                                                                headers["x-laneway-model"]))
    assert all(len(lanes) == 1 for lanes in seen.values())
    assert {lane for lanes in seen.values() for lane, _ in lanes} == {"canary", "primary"}
    assert ("canary", "gemini-2.5-flash-lite") in set().union(*seen.values())


@pytest.mark.parametrize("source", ["logprobs", "self_report", "verifier"])
def test_cascade_escalates_exactly_under_threshold(sim_url: str, source: str) -> None:
    verifier = "\n    verifier: gemini-2.5-pro" if source == "verifier" else ""
    text = f"""
routes:
- name: chat
  target: gpt-5-mini
  cascade:
    confidence: 0.6
    source: {source}
    escalate_to: gpt-5{verifier}
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: send(live, f"question number {i} about my bill"), range(24)))
    lanes = Counter()
    for headers, body in answers:
        exchange = sink.by_id(headers["x-request-id"])
        assert exchange.cascade_confidence is not None
        escalated = exchange.cascade_confidence < 0.6
        lanes[headers["x-laneway-lane"]] += 1
        assert headers["x-laneway-lane"] == ("cascade" if escalated else "primary")
        assert headers["x-laneway-model"] == ("gpt-5" if escalated else "gpt-5-mini")
        graders = ["gemini-2.5-pro"] if source == "verifier" else []
        expected = ["gpt-5-mini", *graders, *(["gpt-5"] if escalated else [])]
        assert [a.model for a in exchange.attempts] == expected
        assert "[confidence" not in json.loads(body)["choices"][0]["message"]["content"]
        cost = sum(a.cost_usd for a in exchange.attempts)  # the grader's call is billed too
        assert float(headers["x-laneway-cost-usd"]) == pytest.approx(cost, abs=1e-8)
    assert lanes["cascade"] > 0 and lanes["primary"] > 0


def test_a_self_report_cascade_asks_for_the_confidence_through_a_profile_that_replaces_the_system_prompt(
        sim_url: str) -> None:
    """`system_mode: replace` dropped the request for a confidence with the client's system prompt: no answer
    said one, each scored 0, and every request paid for both models."""
    text = """
models:
  replacer:
    provider: openai
    base_url: sim:///gpt-5-mini/v1
    model: gpt-5-mini
    profile: {system: "You are Acme's support assistant.", system_mode: replace}
routes:
- name: chat
  target: replacer
  cascade: {confidence: 0.6, source: self_report, escalate_to: gpt-5}
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live:
        answers = [send(live, f"question number {i} about my bill",
                        messages=[{"role": "system", "content": "Answer in French."},
                                  {"role": "user", "content": f"question number {i} about my bill"}])
                   for i in range(12)]
    confidences = [sink.by_id(headers["x-request-id"]).cascade_confidence for headers, _ in answers]
    assert all(c is not None and c > 0 for c in confidences), confidences
    assert Counter(headers["x-laneway-lane"] for headers, _ in answers)["primary"] > 0


def test_a_verifier_that_hangs_leaves_the_escalation_time_and_one_that_fails_opens_its_breaker(
        sim_url: str) -> None:
    """The verifier was called with the whole deadline and past its breaker: one that hung took all of it, and
    the unsure first answer went out; one that failed was waited for on every request."""
    text = """
models:
  hanging: {provider: openai, base_url: "sim:///gpt-5-mini/v1", model: "gpt-5-mini@silent"}
  failing:
    provider: openai
    base_url: sim:///gpt-5-mini/v1
    model: gpt-5-mini@error_500
    cooldown: {failures: 3, cooldown_ms: 60000}
routes:
- name: hangs
  matcher: "metadata.verifier == hanging"
  target: gpt-5-mini
  deadline_ms: 3000
  cascade: {confidence: 0.5, source: verifier, verifier: hanging, escalate_to: gpt-5}
- name: fails
  target: gpt-5-mini
  cascade: {confidence: 0.5, source: verifier, verifier: failing, escalate_to: gpt-5}
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live:
        started = time.monotonic()
        hung, _ = send(live, "is my refund on its way?", metadata={"verifier": "hanging"})
        took = time.monotonic() - started
        failed = [send(live, f"question {i} about my bill")[0] for i in range(4)]
    assert (hung["x-laneway-lane"], hung["x-laneway-model"]) == ("cascade", "gpt-5") and took < 3.0
    graded = sink.by_id(hung["x-request-id"]).attempts[1]
    assert graded.lane == "verifier" and 1300 < graded.latency_ms < 1700  # half of what was left
    outcomes = [sink.by_id(h["x-request-id"]).attempts[1].outcome for h in failed]
    assert outcomes == ["upstream_unavailable"] * 3 + ["skipped"]  # the breaker opens after 3 failures
    assert all(h["x-laneway-lane"] == "cascade" for h in failed)


def test_cascade_stream_replays_the_accepted_answer(sim_url: str) -> None:
    text = """
routes:
- target: gpt-5-mini
  cascade: {confidence: 0.5, source: self_report, escalate_to: gpt-5}
"""
    with live_gateway(text, sim_url) as live:
        headers, body = send(live, "stream me", stream=True, stream_options={"include_usage": True})
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content and "[confidence" not in content
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert {c["model"] for c in chunks} == {headers["x-laneway-model"]}


# An escalation model nothing answers for (port 9 refuses connections).
HEAVY_DOWN = """
models:
  heavy-down:
    provider: openai
    base_url: http://127.0.0.1:9/v1
    model: heavy
    price: {input_per_mtok: 5, output_per_mtok: 15}"""


@pytest.mark.parametrize("stream", [False, True])
def test_a_first_answer_kept_only_because_the_escalation_failed_is_not_cached(sim_url: str, stream: bool) -> None:
    """It was served from the cache for the whole TTL: the cascade never ran on that prompt again, even with
    the escalation model back. A confident first answer is cached as before."""
    text = HEAVY_DOWN + """
routes:
- name: unsure
  matcher: "metadata.sure == no"
  target: gpt-5-mini
  cascade: {confidence: 1, source: logprobs, escalate_to: heavy-down}
  cache: {mode: on, ttl_s: 300}
- name: sure
  target: gpt-5-mini
  cascade: {confidence: 0, source: logprobs, escalate_to: heavy-down}
  cache: {mode: on, ttl_s: 300}
"""
    with live_gateway(text, sim_url) as live:
        unsure = [send(live, "is my refund on its way?", stream=stream, temperature=0, metadata={"sure": "no"})[0]
                  for _ in range(2)]
        sure = [send(live, "is my refund on its way?", stream=stream, temperature=0)[0] for _ in range(2)]
    assert [h["x-laneway-lane"] for h in unsure] == ["primary", "primary"]
    assert [h["x-laneway-lane"] for h in sure] == ["primary", "cache"]


def test_a_failed_escalation_keeps_the_first_answer_and_is_counted(sim_url: str) -> None:
    from laneway.telemetry._cascade_savings import cascade_savings
    from laneway.telemetry._window import RecentExchanges

    text = HEAVY_DOWN + """
routes:
- name: chat
  target: gpt-5-mini
  cascade: {confidence: 1, source: logprobs, escalate_to: heavy-down}
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live:
        answers = [send(live, f"question {i} about my bill") for i in range(3)]
    window = RecentExchanges(10)
    for headers, body in answers:
        assert headers["x-laneway-lane"] == "primary" and headers["x-laneway-model"] == "gpt-5-mini"
        assert json.loads(body)["choices"][0]["message"]["content"]
        exchange = sink.by_id(headers["x-request-id"])
        first, *escalations = [(a.model, a.lane, a.outcome) for a in exchange.attempts]
        assert first == ("gpt-5-mini", "primary", "ok") and escalations  # the route's retries, then the first answer
        assert set(escalations) == {("heavy-down", "cascade", "upstream_unavailable")}
        window.add(exchange, 0, True)
    figures = cascade_savings(window.rows(), {"chat": "heavy-down"})["routes"]["chat"]
    assert (figures["escalated"], figures["escalations_failed"]) == (0, 3)


@pytest.mark.parametrize("target", ["gpt-5-mini", "gemini-2.5-flash-lite"])
def test_a_cascade_answer_streamed_carries_the_logprobs_the_client_asked_for(sim_url: str, target: str) -> None:
    """The accepted answer is held whole and replayed as a stream: its logprobs go with it, as they do whole."""
    text = f"routes:\n- target: {target}\n  cascade: {{confidence: 0.0, source: logprobs, escalate_to: gpt-5}}\n"
    with live_gateway(text, sim_url) as live:
        _, whole = send(live, "where is my refund", logprobs=True, temperature=0)
        headers, streamed = send(live, "where is my refund", logprobs=True, temperature=0, stream=True)
    expected = json.loads(whole)["choices"][0]["logprobs"]["content"]
    pieces = [json.loads(line[6:]) for line in streamed.decode().splitlines() if line.startswith("data: {")]
    got = [t for p in pieces if p["choices"] and p["choices"][0].get("logprobs")
           for t in p["choices"][0]["logprobs"]["content"]]
    assert headers["x-laneway-lane"] == "primary" and expected and got == expected


def test_logprob_cascade_on_a_provider_without_logprobs_is_a_config_error() -> None:
    from laneway.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config("""
models:
  claude:
    provider: anthropic
    base_url: https://api.anthropic.com
routes:
- target: claude
  cascade: {confidence: 0.7, source: logprobs, escalate_to: gpt-5}
""")
    assert "routes[0].cascade.source" in str(caught.value) and "self_report" in str(caught.value)


SHADOW = """
routes:
- name: chat
  target: gpt-5-mini
  shadow: [{target: gemini-2.5-flash-lite, sample: 1.0}]
"""


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_shadow_never_changes_the_primary_answer(sim_url: str) -> None:
    plain = "routes:\n- name: chat\n  target: gpt-5-mini\n"
    with live_gateway(plain, sim_url) as live:
        expected = [json.loads(send(live, f"shadowed {i}")[1])["choices"][0]["message"]["content"] for i in range(6)]
    sink = RecordingSink()
    with live_gateway(SHADOW, sim_url, telemetry=sink) as live:
        got = [send(live, f"shadowed {i}") for i in range(6)]
        wait_for(lambda: sum(e.lane == "shadow" for e in sink.exchanges) == 6)
    assert [json.loads(body)["choices"][0]["message"]["content"] for _, body in got] == expected
    for headers, _ in got:
        primary = sink.by_id(headers["x-request-id"])
        shadow = sink.by_id(headers["x-request-id"] + "/shadow/gemini-2.5-flash-lite")
        assert primary.model == "gpt-5-mini" and primary.lane == "primary"
        assert float(headers["x-laneway-cost-usd"]) == pytest.approx(primary.cost_usd)
        assert shadow.signals["shadow_of"] == primary.request_id and shadow.lane == "shadow"
        assert shadow.cost_usd > 0 and shadow.ttft_ms is not None
        assert 0 <= shadow.signals["similarity"] <= 1 and shadow.signals["exact"] is False


def test_a_shadow_candidate_that_reports_no_usage_is_billed_what_it_was_sent_and_said(sim_url: str) -> None:
    """Its stream had no usage, and the shadow was logged free: the candidate looked 100 % cheaper than the
    primary, and its spend never counted toward the shadow's `usd_per_hour` cap."""
    from _loopback import Handler, serving, sse_body

    class NoUsage(Handler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            events = [{"choices": [{"index": 0, "delta": {"content": piece}}]}
                      for piece in ("Your refund ", "is on its way")]
            done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.send(sse_body([*events, done]), "text/event-stream")

    with serving(NoUsage) as upstream:
        config = f"""
models:
  candidate: {{provider: openai, base_url: "{upstream.url}", model: m,
              price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
routes:
- name: chat
  target: gpt-5-mini
  shadow: [{{target: candidate, sample: 1.0}}]
"""
        sink = RecordingSink()
        with live_gateway(config, sim_url, telemetry=sink) as live:
            headers, _ = send(live, "Where is my refund?")
            shadow_id = headers["x-request-id"] + "/shadow/candidate"
            wait_for(lambda: any(e.request_id == shadow_id for e in sink.exchanges))
    shadow = sink.by_id(shadow_id)
    assert shadow.outcome == "ok" and shadow.prompt_tokens > 0 and shadow.completion_tokens > 0
    assert shadow.cost_usd == pytest.approx((shadow.prompt_tokens * 1 + shadow.completion_tokens * 2) / 1e6)


def test_long_answers_are_compared_by_their_first_words_off_the_event_loop(
        sim_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The word diff grows with the product of the two lengths: two answers of 3,000 words held the event loop,
    and every client's request, for 66-190 ms."""
    from laneway import shadow as shadow_module

    same = " ".join(f"word{i % 40}" for i in range(shadow_module.SIMILARITY_WORDS))
    compared = shadow_module.compare(same + " yes" * 3000, same + " no" * 3000)
    assert compared == {"exact": False, "similarity": 1.0}
    on_loop: list[bool] = []

    def watched(primary: str, candidate: str) -> dict[str, Any]:
        on_loop.append(asyncio._get_running_loop() is not None)
        return compared

    monkeypatch.setattr(shadow_module, "compare", watched)
    sink = RecordingSink()
    with live_gateway(SHADOW, sim_url, telemetry=sink) as live:
        send(live, "shadowed")
        wait_for(lambda: any(e.lane == "shadow" for e in sink.exchanges))
    assert on_loop == [False]


def test_a_shadow_whose_window_cannot_hold_the_prompt_is_dropped_and_counted(sim_url: str) -> None:
    text = """
models:
  small:
    provider: openai
    base_url: sim:///gemini-2.5-flash-lite/v1
    model: gemini-2.5-flash-lite
    context_window: 100
routes:
- name: chat
  target: gpt-5-mini
  shadow: [{target: small, sample: 1.0}]
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live:
        send(live, "short question")
        send(live, "a long question " * 60)
        wait_for(lambda: sum(e.lane == "shadow" for e in sink.exchanges) == 1)
        time.sleep(0.2)
    shadows = [e for e in sink.exchanges if e.lane == "shadow"]
    assert len(shadows) == 1 and shadows[0].outcome == "ok"  # the short one ran; the long one was never sent
    assert sink.events.count(("shadow_dropped_context", "small")) == 1


def test_full_shadow_queue_drops_and_counts_without_blocking(sim_url: str) -> None:
    text = """
models:
  slow:
    provider: openai
    base_url: sim:///gpt-5/v1
    model: "gpt-5@slow_2000"
shadow:
  queue: 1
  concurrency: 1
routes:
- target: gpt-5-mini
  shadow: [{target: slow, sample: 1.0}]
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live:
        started = time.perf_counter()
        for i in range(5):
            send(live, f"burst {i}")
        elapsed = time.perf_counter() - started
        assert live.gateway is not None
        counters = live.gateway.shadows.counters
    assert elapsed < 5  # five primaries, none waited for a 2 s shadow
    assert counters.dropped_queue >= 3 and counters.submitted == 5
    assert sink.events.count(("shadow_dropped_queue", "slow")) == counters.dropped_queue


def test_the_shadow_spend_cap_holds_the_cost_of_queued_jobs(sim_url: str) -> None:
    """The cap counted a call's cost when it finished: a burst queued before any finished ran over it."""
    text = """
models:
  slow:
    provider: openai
    base_url: sim:///gpt-5/v1
    model: "gpt-5@slow_300"
    price: {input_per_mtok: 1000.0, output_per_mtok: 1000.0}
    profile: {max_tokens: 50}
shadow:
  queue: 100
  concurrency: 2
  usd_per_hour: 0.5
routes:
- target: gpt-5-mini
  shadow: [{target: slow, sample: 1.0}]
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live:
        # About 400 prompt tokens: each shadow call costs $0.4 or more whatever its answer's length, and is
        # held at its estimate (with `max_tokens` of answer) while it is queued or running. Only one fits.
        for i in range(12):
            send(live, f"burst {i} " + "word " * 400)
        assert live.gateway is not None
        runner = live.gateway.shadows
        wait_for(lambda: runner.counters.completed + runner.counters.dropped_budget == 12)
    spent = sum(e.cost_usd for e in sink.exchanges if e.lane == "shadow")
    assert runner.counters.completed == 1 and runner.counters.dropped_budget == 11
    assert 0.4 <= spent <= 0.5


GATED_SHADOW = """
models:
  heavy:
    provider: openai
    base_url: sim:///heavy-foundation/v1
    model: "heavy-foundation@slow_1500"
    gate: {max_concurrency: 1, queue_timeout_ms: 3000}
routes:
- name: heavy
  matcher: "metadata.to == heavy"
  target: heavy
- name: chat
  target: gpt-5-mini
  shadow: [{target: heavy, sample: 1.0}]
"""


def test_a_shadow_takes_no_gate_slot_real_traffic_holds_nor_a_cooling_model(sim_url: str) -> None:
    sink = RecordingSink()
    with live_gateway(GATED_SHADOW, sim_url, telemetry=sink) as live, ThreadPoolExecutor(1) as pool:
        heavy = pool.submit(send, live, "escalated", metadata={"to": "heavy"})  # holds the gate's one slot 1.5 s
        time.sleep(0.3)
        send(live, "copied while the slot is taken")
        assert heavy.result(timeout=30) is not None
        assert live.gateway is not None
        runner = live.gateway.shadows
        wait_for(lambda: runner.counters.dropped_gate == 1)
        live.gateway.runtime.breakers["heavy"].open_until = time.monotonic() + 3600  # as after failures
        send(live, "copied while the model cools down")
        wait_for(lambda: runner.counters.dropped_cooling == 1)
    assert not [e for e in sink.exchanges if e.lane == "shadow"]
    assert ("shadow_dropped_gate", "heavy") in sink.events and ("shadow_dropped_cooling", "heavy") in sink.events


RETRIEVAL = f"""
knowledge:
  billing:
    sources: [{ROOT / "knowledge" / "billing" / "policies.md"}]
routes:
- name: billing
  target: gemini-2.5-pro
  retrieval: {{knowledge: billing, top_k: 3, min_score: 2.0, on_miss: gpt-5}}
"""


def test_retrieval_grounds_the_prompt_and_misses_go_to_on_miss(sim_url: str) -> None:
    sink = RecordingSink()
    with live_gateway(RETRIEVAL, sim_url, telemetry=sink) as live:
        hit, _ = send(live, "I was charged twice on my credit card, I want a refund for the extra charge")
        miss, _ = send(live, "xyzzy plugh")
    grounded = sink.by_id(hit["x-request-id"])
    assert hit["x-laneway-model"] == "gemini-2.5-pro"
    assert grounded.retrieval_hits == 3 and grounded.retrieval_ms is not None
    assert grounded.prompt_tokens > 200  # the passages reached the model
    missed = sink.by_id(miss["x-request-id"])
    assert missed.retrieval_hits == 0 and miss["x-laneway-model"] == "gpt-5"
    assert missed.prompt_tokens < 60


def test_a_profile_that_replaces_the_system_prompt_keeps_the_retrieved_passages(sim_url: str) -> None:
    """`system_mode: replace` replaces the client's system prompt; the knowledge block is the route's, and
    stays (metrics and the log count it as injected)."""
    replacing = RETRIEVAL.replace("routes:", """models:
  replacer:
    provider: openai
    base_url: sim:///gpt-5/v1
    model: gpt-5
    profile: {system: "You are Acme's billing assistant.", system_mode: replace}
routes:""").replace("target: gemini-2.5-pro", "target: replacer")
    sink = RecordingSink()
    question = "I was charged twice on my credit card, I want a refund for the extra charge"
    with live_gateway(replacing, sim_url, telemetry=sink) as live:
        hit, _ = send(live, question, messages=[{"role": "system", "content": "Answer in French."},
                                                {"role": "user", "content": question}])
    grounded = sink.by_id(hit["x-request-id"])
    assert hit["x-laneway-model"] == "replacer" and grounded.retrieval_hits == 3
    assert grounded.prompt_tokens > 200  # the passages reached the model


def test_a_miss_goes_to_on_miss_then_the_fallbacks_never_the_target_nor_a_canary(sim_url: str) -> None:
    config = RETRIEVAL.replace("routes:", """models:
  broken:
    provider: openai
    base_url: sim:///gpt-5/v1
    model: "gpt-5@error_500"
routes:""").replace("on_miss: gpt-5}", "on_miss: broken}\n  canary: {target: gemini-2.5-flash-lite, weight: 1.0}\n"
                    "  fallbacks: [gpt-5-mini]")
    sink = RecordingSink()
    with live_gateway(config, sim_url, telemetry=sink) as live:
        miss, _ = send(live, "xyzzy plugh")
    assert (miss["x-laneway-lane"], miss["x-laneway-model"]) == ("fallback", "gpt-5-mini")
    attempts = sink.by_id(miss["x-request-id"]).attempts
    assert [a.model for a in attempts] == ["broken", "broken", "gpt-5-mini"]
    # `on_miss` got the conversation as it came; the route's fallback, the block that says nothing matched (about
    # 50 tokens: 81 in all, against 28 when it answered with neither passages nor that block).
    assert attempts[-1].prompt_tokens > 70, attempts[-1]


def test_trimming_keeps_the_passages_in_a_user_message_and_a_prompt_they_overflow_says_so(sim_url: str) -> None:
    """With `style: user`, `trim: oldest` took the passages for an old turn of the dialog: when the rest of the
    dialog was not enough, it dropped them too, and the model answered ungrounded while the exchange counted a
    hit. The passages stay, as the system prompt does; a prompt too long even so is refused, and says what of
    it the passages are (the client sent none of them)."""
    def config(window: int) -> str:
        return RETRIEVAL.replace("routes:", f"""models:
  small: {{provider: openai, base_url: "sim:///gpt-5-mini/v1", model: gpt-5-mini, context_window: {window}}}
routes:""").replace("target: gemini-2.5-pro", "target: small\n  trim: oldest").replace(
            "on_miss: gpt-5}", "style: user}") + "telemetry: {store_bodies: true}\n"

    question = "I was charged twice on my credit card, I want a refund for the extra charge"
    dialog = [message for turn in range(20) for message in (
        {"role": "user", "content": f"turn {turn}: my parcel {turn} came late " + "again " * 30},
        {"role": "assistant", "content": f"sorry about parcel {turn}, " + "we will look into it " * 6})]
    sink = RecordingSink()
    with live_gateway(config(1800), sim_url, telemetry=sink) as live:  # the passages, the question, the answer
        headers, _ = send(live, question, messages=[*dialog, {"role": "user", "content": question}])
    exchange = sink.by_id(headers["x-request-id"])
    assert int(headers["x-laneway-trimmed"]) > 0 and exchange.retrieval_hits == 3
    assert exchange.prompt_body is not None
    prompt = json.loads(exchange.prompt_body)
    assert prompt[-1] == {"role": "user", "content": question}
    assert prompt[-2]["role"] == "user" and prompt[-2]["content"].startswith("Reference material")

    with live_gateway(config(1200), sim_url) as live, pytest.raises(urllib.error.HTTPError) as refused:
        send(live, question)
    error = json.loads(refused.value.read())["error"]
    assert refused.value.code == 400 and error["code"] == "context_length_exceeded"
    share = re.search(r"Of the prompt's tokens, (\d+) are the passages the route's `retrieval:` added",
                      error["message"])
    assert share is not None and int(share.group(1)) > 1000
    with live_gateway(config(1200), sim_url) as live, pytest.raises(urllib.error.HTTPError) as refused:
        send(live, question + " again" * 3000)  # too long without any passage: fewer would not help
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == "context_length_exceeded" and "are the passages" not in error["message"]
    with live_gateway(config(600), sim_url) as live, pytest.raises(urllib.error.HTTPError) as refused:
        send(live, question, max_tokens=4000)  # without passages the prompt fits, not with its output
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == "context_length_exceeded" and "are the passages" not in error["message"], error


async def _on_loop(work: Any) -> Any:
    """Run `work()` on the gateway's event loop, where telemetry is read."""
    return work()


def test_retrieval_hits_misses_and_latency_are_in_metrics_and_stats(sim_url: str) -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))
    with live_gateway(RETRIEVAL, sim_url, telemetry=telemetry) as live:
        send(live, "I was charged twice on my credit card, I want a refund for the extra charge")
        send(live, "xyzzy plugh")
        metrics, stats = live.call(_on_loop(lambda: (telemetry.render_metrics().decode(), telemetry.stats())))
    assert 'laneway_retrieval_total{route="billing",result="hit"} 1' in metrics
    assert 'laneway_retrieval_total{route="billing",result="miss"} 1' in metrics
    assert 'laneway_retrieval_seconds_count{route="billing"} 2' in metrics
    billing = stats["routes"]["billing"]
    assert billing["retrievals"] == 2 and billing["retrieval_hit_rate"] == 0.5
    assert billing["retrieval_p95_ms"] is not None and billing["retrieval_p95_ms"] < 50


def test_stored_bodies_show_the_prompt_the_model_got_and_the_answer(sim_url: str) -> None:
    sink = RecordingSink()
    question = "I was charged twice on my credit card, I want a refund for the extra charge"
    with live_gateway(RETRIEVAL + "telemetry: {store_bodies: true}\n", sim_url, telemetry=sink) as live:
        whole, body = send(live, question)
        streamed, events = send(live, question, stream=True)
    exchange = sink.by_id(whole["x-request-id"])
    assert exchange.prompt_body is not None
    prompt = json.loads(exchange.prompt_body)
    assert prompt[-1] == {"role": "user", "content": question}
    grounding = " ".join(str(m["content"]) for m in prompt[:-1])
    assert len(grounding) > 500  # the retrieved passages, as the model got them
    assert exchange.answer_body == json.loads(body)["choices"][0]["message"]["content"]
    pieces = [json.loads(line[6:]) for line in events.decode().splitlines() if line.startswith("data: {")]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in pieces if p["choices"])
    assert sink.by_id(streamed["x-request-id"]).answer_body == text
    with live_gateway(RETRIEVAL, sim_url, telemetry=sink) as live:
        plain, _ = send(live, question)
    assert sink.by_id(plain["x-request-id"]).prompt_body is None  # not kept unless asked for


def test_retrieval_unknown_knowledge_base_is_a_config_error() -> None:
    from laneway.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config("routes:\n- target: gpt-5\n  retrieval: {knowledge: billing}\n")
    assert "routes[0].retrieval.knowledge" in str(caught.value) and "add a `knowledge:` section" in str(caught.value)


def test_streamed_primary_is_shadowed_after_it_ends(sim_url: str) -> None:
    sink = RecordingSink()
    with live_gateway(SHADOW, sim_url, telemetry=sink) as live:
        headers, body = send(live, "stream and shadow", stream=True)
        wait_for(lambda: any(e.lane == "shadow" for e in sink.exchanges))
    assert body.rstrip().endswith(b"[DONE]")
    shadow = sink.by_id(headers["x-request-id"] + "/shadow/gemini-2.5-flash-lite")
    assert shadow.signals["shadow_of"] == headers["x-request-id"] and shadow.outcome == "ok"


FAULTY_LANES = """
models:
  broken:
    provider: openai
    base_url: sim:///gpt-5/v1
    model: "gpt-5@error_500"
  silent:
    provider: openai
    base_url: sim:///gpt-5/v1
    model: "gpt-5@silent"
  quick:
    provider: openai
    base_url: sim:///gpt-5/v1
    model: "gpt-5@silent"
    deadline_ms: 400
  steady:
    provider: openai
    base_url: sim:///gpt-5-mini/v1
    model: gpt-5-mini
    deadline_ms: 4000
routes:
- name: quick-canary
  matcher: "metadata.lane == quick"
  target: steady
  canary: {target: quick, weight: 1.0}
- name: canary
  matcher: "metadata.lane == canary"
  target: gpt-5-mini
  canary: {target: broken, weight: 1.0}
- name: silent-canary
  matcher: "metadata.lane == silent"
  target: gpt-5-mini
  deadline_ms: 2000
  canary: {target: silent, weight: 1.0}
- name: shadow
  matcher: "metadata.lane == shadow"
  target: gpt-5-mini
  shadow: [{target: broken, sample: 1.0}]
- name: cascade
  target: gpt-5-mini
  cascade: {confidence: 1.0, source: self_report, escalate_to: broken}
"""


@pytest.mark.parametrize(("lane", "expected_lane", "models"), [
    ("canary", "primary", ["broken", "broken", "gpt-5-mini"]),  # a failing canary falls back to the primary
    ("silent", "primary", ["silent", "gpt-5-mini"]),  # a hung canary leaves the primary half the deadline
    ("shadow", "primary", ["gpt-5-mini"]),  # a failing shadow changes nothing
    ("cascade", "primary", ["gpt-5-mini", "broken", "broken"]),  # a failed escalation keeps the first answer
])
def test_a_faulty_lane_never_costs_the_client_its_answer(sim_url: str, lane: str, expected_lane: str,
                                                         models: list[str]) -> None:
    sink = RecordingSink()
    with live_gateway(FAULTY_LANES, sim_url, telemetry=sink) as live:
        headers, body = send(live, "help", metadata={"lane": lane})
        if lane == "shadow":
            wait_for(lambda: any(e.lane == "shadow" for e in sink.exchanges))
    assert headers["x-laneway-lane"] == expected_lane and headers["x-laneway-model"] == "gpt-5-mini"
    assert json.loads(body)["choices"][0]["message"]["content"]
    assert [a.model for a in sink.by_id(headers["x-request-id"]).attempts] == models
    if lane == "shadow":
        shadow = sink.by_id(headers["x-request-id"] + "/shadow/broken")
        assert shadow.outcome == "upstream_unavailable"
        assert (shadow.status, shadow.attempts[0].upstream_status) == (502, 500)  # as a primary's failure records
    if lane == "silent":
        hung = sink.by_id(headers["x-request-id"]).attempts[0]
        assert hung.outcome == "model_inference_deadline_exceeded" and 900 < hung.latency_ms < 1300


def test_a_hung_canary_stream_leaves_the_primary_time_to_answer(sim_url: str) -> None:
    sink = RecordingSink()
    with live_gateway(FAULTY_LANES, sim_url, telemetry=sink) as live:
        headers, body = send(live, "help", metadata={"lane": "silent"}, stream=True)
    assert headers["x-laneway-model"] == "gpt-5-mini" and body.rstrip().endswith(b"data: [DONE]")
    hung, answered = sink.by_id(headers["x-request-id"]).attempts
    assert (hung.model, hung.outcome) == ("silent", "model_inference_deadline_exceeded")
    assert "share of the deadline" in hung.error and answered.outcome == "ok"


def test_a_canary_gets_the_targets_budget_and_its_own_cap(sim_url: str) -> None:
    """The request's budget is the route target's `deadline_ms`, not the canary's: a canary capped at 400 ms
    that hangs leaves the target the rest of its 4 s."""
    sink = RecordingSink()
    with live_gateway(FAULTY_LANES, sim_url, telemetry=sink) as live:
        headers, body = send(live, "help", metadata={"lane": "quick"})
    assert headers["x-laneway-model"] == "steady" and json.loads(body)["choices"][0]["message"]["content"]
    hung, answered = sink.by_id(headers["x-request-id"]).attempts
    assert (hung.model, hung.outcome, answered.outcome) == ("quick", "model_inference_deadline_exceeded", "ok")
    assert 300 < hung.latency_ms < 900


async def test_an_escalation_queues_at_its_gate_with_the_requests_priority() -> None:
    """An urgent conversation's escalation waits in the urgent queue of the heavy model's gate, not in chat's."""
    from laneway.cascade import complete_with_cascade
    from laneway.chat import Completion, Usage
    from laneway.config import Cascade
    from laneway.dispatch import Plan
    from laneway.exchange import Exchange

    plans: list[Plan] = []

    class Recording:
        async def complete(self, plan: Plan, messages: Any, params: Any, exchange: Exchange) -> Completion:
            plans.append(plan)
            exchange.lane = plan.lanes[0][0]
            return Completion("an answer", "stop", Usage(5, 2), plan.lanes[0][1])

    plan = Plan(None, [("primary", "cheap")], deadline=time.monotonic() + 10, priority=0)
    messages = [{"role": "user", "content": "my account was charged twice"}]
    await complete_with_cascade(Recording(), Cascade(0.9, "logprobs", "heavy"),  # type: ignore[arg-type]
                                plan, messages, {}, Exchange("r1", time.time()))
    assert [(p.lanes[0], p.priority, p.deadline) for p in plans] == [
        (("primary", "cheap"), 0, plan.deadline), (("cascade", "heavy"), 0, plan.deadline)]
