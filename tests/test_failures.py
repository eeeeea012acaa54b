"""Every failure path through real loopback sockets: each request ends in an answer or a documented
error within its deadline plus a small margin, and exactly one exchange records every attempt."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from _loopback import Handler, serving
from laneway.breaker import CircuitBreaker
from laneway.config import Breaker, parse_config
from laneway.exchange import Exchange

MARGIN_S = 0.5




def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(faults: dict[str, str], routes: str, extra: str = "") -> str:
    models = "\n".join(
        f"""  {name}:
    provider: openai
    base_url: {"sim:///gpt-5-mini/v1" if not fault.startswith("http") else fault}
    model: "gpt-5-mini@{fault}"
    context_window: 100000
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
    stream_idle_ms: 400
    max_response_bytes: 1048576
    cooldown: {{failures: 3, cooldown_ms: 60000}}{extra}"""
        for name, fault in faults.items())
    return f"models:\n{models}\nroutes:\n{routes}"


FAULTS = {
    "ok": "", "e500": "error_500", "e503": "error_503", "r429": "error_429", "r429_1": "error_429_retry_1",
    "r429_30": "error_429_retry_30", "silent": "silent", "slow": "slow_3000", "reset": "reset",
    "json": "malformed_json", "ctype": "wrong_content_type", "big": "oversized", "overflow": "overflow",
    "cut": "cut_mid_stream", "stall": "stall_mid_stream", "badsse": "bad_sse", "e400": "error_400",
    "refused": f"http://127.0.0.1:{closed_port()}/v1",
}
ROUTES = """\
- name: main
  matcher: "metadata.primary == ok"
  target: ok
- name: chain
  target: e500
  fallbacks: [ok]
  deadline_ms: 1500
"""


@pytest.fixture(scope="module")
def live(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveGateway, RecordingSink]]:
    sink = RecordingSink()
    path = tmp_path_factory.mktemp("faults") / "routes.yaml"
    path.write_text(config(FAULTS, ROUTES))
    with live_gateway(config(FAULTS, ROUTES), sim_url, telemetry=sink, config_path=path) as gateway:
        yield gateway, sink


def send(live: LiveGateway, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes, float]:
    request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read(), time.perf_counter() - started
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read(), time.perf_counter() - started


def reconfigure(gw: LiveGateway, routes: str, faults: dict[str, str] = FAULTS, fresh_breakers: bool = True) -> None:
    """Rewrite the routing file and hot-reload it, as an operator would. A reload keeps the breakers of
    unchanged models; with `fresh_breakers`, every case starts with them closed, as in a new gateway."""
    assert gw.gateway is not None and gw.config_path is not None
    gw.config_path.write_text(config(faults, routes))
    gw.call(gw.gateway.reload())
    if fresh_breakers:
        for breaker in gw.gateway.runtime.breakers.values():
            breaker.success()


def one(sink: RecordingSink, request_id: str) -> Exchange:
    return sink.by_id(request_id)


CASES = [
    # (primary, fallbacks, stream, expected status, lane, outcome codes of the attempts)
    ("e500", ["ok"], False, 200, "fallback", ["upstream_unavailable", "upstream_unavailable", "ok"]),
    ("e503", ["ok"], True, 200, "fallback", ["upstream_unavailable", "upstream_unavailable", "ok"]),
    ("r429", ["ok"], False, 200, "fallback", ["rate_limited", "rate_limited", "ok"]),
    ("r429_30", ["ok"], False, 200, "fallback", ["rate_limited", "ok"]),
    ("reset", ["ok"], False, 200, "fallback", ["upstream_unavailable", "upstream_unavailable", "ok"]),
    ("reset", ["ok"], True, 200, "fallback", ["upstream_unavailable", "upstream_unavailable", "ok"]),
    ("refused", ["ok"], False, 200, "fallback", ["upstream_unavailable", "upstream_unavailable", "ok"]),
    ("refused", ["ok"], True, 200, "fallback", ["upstream_unavailable", "upstream_unavailable", "ok"]),
    ("json", ["ok"], False, 200, "fallback", ["upstream_bad_response", "upstream_bad_response", "ok"]),
    ("ctype", ["ok"], False, 200, "fallback", ["upstream_bad_response", "upstream_bad_response", "ok"]),
    ("ctype", ["ok"], True, 200, "fallback", ["upstream_bad_response", "upstream_bad_response", "ok"]),
    ("big", ["ok"], False, 200, "fallback", ["upstream_bad_response", "upstream_bad_response", "ok"]),
    ("overflow", ["ok"], False, 200, "fallback", ["context_length_exceeded", "ok"]),
    ("overflow", ["ok"], True, 200, "fallback", ["context_length_exceeded", "ok"]),
    ("e400", ["ok"], False, 200, "fallback", ["upstream_rejected", "ok"]),
    ("silent", ["ok"], False, 504, None, ["model_inference_deadline_exceeded"]),
    ("silent", ["ok"], True, 504, None, ["model_inference_deadline_exceeded"]),
    ("e500", ["slow"], False, 504, None,
     ["upstream_unavailable", "upstream_unavailable", "model_inference_deadline_exceeded"]),
    ("e500", ["e503"], False, 502, None, ["upstream_unavailable"] * 4),
    ("e500", ["r429"], True, 429, None, ["upstream_unavailable", "upstream_unavailable", "rate_limited",
                                         "rate_limited"]),
]


@pytest.mark.parametrize("stream", [False, True])
def test_a_retry_after_pause_is_a_wait_for_the_upstream_not_overhead(live: tuple[LiveGateway, RecordingSink],
                                                                     stream: bool) -> None:
    """`laneway_gateway_overhead_seconds` is the gateway's own time: the second the upstream asked to be left
    before the retry is not in it."""
    gw, sink = live
    reconfigure(gw, "- target: r429_1\n  fallbacks: [ok]\n  deadline_ms: 4000\n"
                    "  retry: {attempts: 2, backoff_ms: 20}\n")
    got, headers, _, elapsed = send(gw, {"model": "laneway", "stream": stream,
                                         "messages": [{"role": "user", "content": f"pause {stream}"}]})
    exchange = one(sink, headers["x-request-id"])
    assert got == 200 and elapsed >= 1.0
    assert [a.outcome for a in exchange.attempts] == ["rate_limited", "rate_limited", "ok"]
    assert exchange.latency_ms >= 1000 and exchange.overhead_ms < 300


@pytest.mark.parametrize(("primary", "fallbacks", "stream", "status", "lane", "outcomes"), CASES)
def test_fault_before_first_byte(live: tuple[LiveGateway, RecordingSink], primary: str, fallbacks: list[str],
                                 stream: bool, status: int, lane: str | None, outcomes: list[str]) -> None:
    gw, sink = live
    reconfigure(gw, f"- target: {primary}\n  fallbacks: {json.dumps(fallbacks)}\n  deadline_ms: 1500\n"
                    f"  retry: {{attempts: 2, backoff_ms: 20}}\n")
    got, headers, body, elapsed = send(gw, {"model": "laneway", "stream": stream,
                                            "messages": [{"role": "user", "content": f"{primary} {stream}"}]})
    assert got == status, body
    assert elapsed < 1.5 + MARGIN_S
    exchange = one(sink, headers["x-request-id"])
    assert [a.outcome for a in exchange.attempts] == outcomes
    if status == 200:
        assert headers["x-laneway-lane"] == lane
        assert exchange.cost_usd > 0
        if stream:
            assert body.rstrip().endswith(b"data: [DONE]")
    else:
        error = json.loads(body)["error"]
        assert error["request_id"] == headers["x-request-id"]
        assert [a["model"] for a in error["attempts"]] == [a.model for a in exchange.attempts]
        assert exchange.status == status
        # A failure counts against the last model it was sent to, so per-model error rates show it.
        assert exchange.model == exchange.attempts[-1].model and headers["x-laneway-model"] == exchange.model


@pytest.mark.parametrize("fault", ["cut", "stall", "badsse"])
def test_fault_after_first_byte_ends_with_error_event(live: tuple[LiveGateway, RecordingSink], fault: str) -> None:
    gw, sink = live
    reconfigure(gw, f"- target: {fault}\n  fallbacks: [ok]\n")
    got, headers, body, elapsed = send(gw, {"model": "laneway", "stream": True,
                                            "messages": [{"role": "user", "content": "tell me"}]})
    assert got == 200 and elapsed < 5 + MARGIN_S
    text = body.decode()
    assert text.count("data: {") >= 2  # the first chunks reached the client
    assert "event: error" in text
    assert "[DONE]" not in text
    exchange = one(sink, headers["x-request-id"])
    assert exchange.outcome == "stream_interrupted"
    assert [a.model for a in exchange.attempts] == [fault]  # no failover after the first byte
    # What was generated before the cut is billed: the prompt, and the pieces the client got.
    attempt = exchange.attempts[0]
    assert attempt.prompt_tokens > 0 and attempt.completion_tokens >= 2
    assert exchange.cost_usd == attempt.cost_usd > 0
    assert text.endswith(f": laneway cost_usd={exchange.cost_usd:.8f}\n\n")  # told to the client too


def test_retry_after_is_honoured_within_budget(live: tuple[LiveGateway, RecordingSink]) -> None:
    gw, sink = live
    reconfigure(gw, "- target: r429_1\n  fallbacks: [ok]\n  deadline_ms: 4000\n")
    got, headers, _, elapsed = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]})
    assert got == 200 and headers["x-laneway-lane"] == "fallback"
    assert 1.0 <= elapsed < 4 + MARGIN_S  # waited out Retry-After: 1 once, then fell back
    assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == ["rate_limited"] * 2 + ["ok"]


def test_flaky_upstream_is_retried_on_the_same_model(live: tuple[LiveGateway, RecordingSink]) -> None:
    gw, sink = live
    reconfigure(gw, "- target: flaky\n  fallbacks: [ok]\n", {**FAULTS, "flaky": f"flaky_1_{time.time_ns()}"})
    got, headers, _, _ = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]})
    assert got == 200 and headers["x-laneway-lane"] == "primary" and headers["x-laneway-model"] == "flaky"
    assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == ["upstream_unavailable", "ok"]


def test_breaker_opens_then_skips_the_model(live: tuple[LiveGateway, RecordingSink]) -> None:
    gw, sink = live
    reconfigure(gw, "- target: e500\n  fallbacks: [ok]\n  retry: {attempts: 1}\n")
    ids = []
    for _ in range(4):
        got, headers, _, _ = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]})
        assert got == 200
        ids.append(headers["x-request-id"])
    outcomes = [[a.outcome for a in one(sink, i).attempts] for i in ids]
    assert outcomes[:3] == [["upstream_unavailable", "ok"]] * 3
    assert outcomes[3] == ["skipped", "ok"]  # breaker open after 3 consecutive failures
    assert ("cooldown", "e500") in sink.events
    # The reload keeps the open breaker; with no model left to try, the client learns why and when to come back.
    reconfigure(gw, "- target: e500\n  retry: {attempts: 1}\n", fresh_breakers=False)
    got, headers, body, _ = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]})
    error = json.loads(body)["error"]
    assert got == 503, body
    assert 50 <= int(headers["retry-after"]) <= 60
    assert headers["x-should-retry"] == "false"  # an SDK would sleep out the wait, then get the same 503
    assert "cooling down after repeated failures (`e500`: breaker open" in error["message"]
    assert "``" not in error["message"] and error["code"] == "upstream_unavailable"
    assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == ["skipped"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_probe_or_the_failure_that_opens_the_breaker_is_not_retried(
        live: tuple[LiveGateway, RecordingSink], stream: bool) -> None:
    """A half-open breaker lets one call through: its retry is not another. Nor is the retry of the failure
    that opened the breaker: the model goes to its cooldown, and the request to the next model."""
    gw, sink = live
    reconfigure(gw, "- target: e500\n  fallbacks: [ok]\n  retry: {attempts: 2, backoff_ms: 10}\n")
    assert gw.gateway is not None
    breaker = gw.gateway.runtime.breakers["e500"]
    breaker.failures, breaker.open_until = 3, 1.0  # cooled down long ago: the next request is the probe
    body = {"model": "laneway", "stream": stream, "messages": [{"role": "user", "content": f"probe {stream}"}]}
    got, headers, _, _ = send(gw, body)
    assert got == 200
    assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == ["upstream_unavailable", "ok"]
    breaker.success()
    breaker.failures = 2  # the next failure is the third in a row: it opens the breaker
    got, headers, _, _ = send(gw, body)
    assert got == 200
    assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == ["upstream_unavailable", "ok"]
    assert not breaker.closed


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_a_model_that_breaks_every_stream_after_its_first_chunk_opens_its_breaker(
        live: tuple[LiveGateway, RecordingSink], fault: str) -> None:
    """Its first chunk counted as a success, so such failures never added up: every stream went on to it and
    broke, the fallback never got one."""
    gw, sink = live
    reconfigure(gw, f"- target: {fault}\n  fallbacks: [ok]\n")
    assert gw.gateway is not None
    breaker = gw.gateway.runtime.breakers[fault]
    body = {"model": "laneway", "stream": True, "messages": [{"role": "user", "content": f"break {fault}"}]}
    for _ in range(3):  # the breaker opens after 3 failures in a row
        got, headers, answer, _ = send(gw, body)
        assert got == 200 and b"event: error" in answer and b"[DONE]" not in answer
        assert headers["x-laneway-model"] == fault
    assert not breaker.closed
    got, headers, answer, _ = send(gw, body)
    assert (got, headers["x-laneway-lane"], headers["x-laneway-model"]) == (200, "fallback", "ok")
    assert answer.rstrip().endswith(b"data: [DONE]")
    assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == ["skipped", "ok"]


def test_a_stream_that_ends_whole_clears_the_failures_before_it(live: tuple[LiveGateway, RecordingSink]) -> None:
    gw, _ = live
    reconfigure(gw, "- target: ok\n")
    assert gw.gateway is not None
    breaker = gw.gateway.runtime.breakers["ok"]
    breaker.failures = 2
    got, _, answer, _ = send(gw, {"model": "laneway", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert got == 200 and answer.rstrip().endswith(b"data: [DONE]")
    assert breaker.failures == 0 and breaker.closed


def test_rate_limits_do_not_open_the_breaker(live: tuple[LiveGateway, RecordingSink]) -> None:
    """A 429 is the upstream saying when to come back: the client keeps getting 429s with `Retry-After`
    (which it handles), not a breaker's 503 for a cooldown of its own."""
    gw, sink = live
    reconfigure(gw, "- target: r429_1\n  retry: {attempts: 1}\n")
    for _ in range(5):  # the breaker opens after 3 failures in a row
        got, headers, body, _ = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]})
        assert got == 429, body
        assert headers["retry-after"] == "1"
    assert gw.gateway is not None and gw.gateway.runtime.breakers["r429_1"].closed
    assert ("cooldown", "r429_1") not in sink.events


def test_a_probe_that_ends_without_a_verdict_frees_the_probe_slot(live: tuple[LiveGateway, RecordingSink]) -> None:
    """A half-open breaker lets one probe through. A probe that says nothing of the model's health (here a
    request the upstream calls malformed) must not keep the slot, or the model stays out for good."""
    gw, sink = live
    reconfigure(gw, "- target: flaky\n  retry: {attempts: 1}\n", {**FAULTS, "flaky": "error_400"})
    assert gw.gateway is not None
    breaker = gw.gateway.runtime.breakers["flaky"]
    breaker.open_until = 1.0  # cooled down long ago: the next request is the probe
    for _ in range(2):
        got, headers, _, _ = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]})
        assert got == 400
        # each one reached the model: the first probe's slot was freed for the second
        assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == ["upstream_rejected"]
    assert not breaker.probing


@pytest.mark.parametrize("stream", [False, True])
def test_a_slow_model_with_its_own_deadline_leaves_the_fallback_the_rest(sim_url: str, stream: bool) -> None:
    slow = config({"slow": "slow_3000"}, "", "\n    deadline_ms: 600").split("routes:")[0]
    text = (slow.rstrip("\n") + "\n  ok:\n    provider: openai\n    base_url: sim:///gpt-5-mini/v1\n"
            "    model: gpt-5-mini\nroutes:\n- target: slow\n  fallbacks: [ok]\n  deadline_ms: 2500\n")
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as gw:
        got, headers, body, elapsed = send(gw, {"model": "laneway", "stream": stream,
                                                "messages": [{"role": "user", "content": "hi"}]})
    assert got == 200, body
    assert headers["x-laneway-lane"] == "fallback" and elapsed < 2.0
    attempts = one(sink, headers["x-request-id"]).attempts
    assert [a.outcome for a in attempts] == ["model_inference_deadline_exceeded", "ok"]
    assert 0.55 <= attempts[0].latency_ms / 1000 < 1.0  # the slow model's own 600 ms, not the route's 2.5 s


def test_a_lost_probe_frees_its_slot_after_a_cooldown() -> None:
    breaker = CircuitBreaker(Breaker(failures=3, cooldown_ms=10_000), open_until=100.0)
    assert breaker.allows(101.0)  # the probe
    assert not breaker.allows(105.0)  # one at a time
    assert breaker.allows(111.5)  # never heard of again: another request probes


def test_context_fit_skips_small_model_and_takes_long_context(sim_url: str) -> None:
    text = """
models:
  small:
    provider: openai
    base_url: sim:///gpt-5-mini/v1
    context_window: 64
  large:
    provider: openai
    base_url: sim:///gpt-5/v1
routes:
- name: fit
  target: small
  long_context: large
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as gw:
        got, headers, _, _ = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "word " * 200}]})
        assert got == 200 and headers["x-laneway-model"] == "large"
        attempts = one(sink, headers["x-request-id"]).attempts
        assert [(a.model, a.outcome) for a in attempts] == [("small", "skipped"), ("large", "ok")]
        assert attempts[0].prompt_tokens > 64
        got, headers, body, _ = send(gw, {"model": "small", "messages": [{"role": "user", "content": "word " * 200}]})
        error = json.loads(body)["error"]
        assert got == 400 and error["code"] == "context_length_exceeded" and error["param"] == "messages"
        assert "`small` holds 64" in error["message"] and "long_context" in error["message"]
        # Sent to no model, billed by none: the prompt's count stays with the skipped attempt, out of the totals.
        refused = one(sink, headers["x-request-id"])
        assert refused.prompt_tokens == 0 and refused.attempts[0].prompt_tokens > 64
        assert refused.lane == "direct" and refused.route is None  # a model named, not refused before routing
        assert f"the prompt has {refused.attempts[0].prompt_tokens} tokens" in error["message"]


def test_nothing_leaks_after_the_fault_runs(live: tuple[LiveGateway, RecordingSink]) -> None:
    """Run last in this module: every fault above has ended, so nothing may still be held."""
    gw, _ = live

    async def held() -> tuple[int, int, list[str]]:
        import asyncio

        assert gw.gateway is not None
        runtime = gw.gateway.runtime
        acquired = 0
        for provider in runtime.providers.values():
            acquired += provider.upstream.held_connections()  # type: ignore[attr-defined]
        names = sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task())
        return runtime.inflight, acquired, names

    deadline = time.monotonic() + 5
    while True:
        inflight, acquired, tasks = gw.call(held())
        laneway_tasks = [name for name in tasks if "shadow" in name]
        if (inflight, acquired) == (0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (inflight, acquired) == (0, 0)
    assert not laneway_tasks
    assert len(tasks) < 10, tasks  # the server's own tasks only


@pytest.mark.parametrize("stream", [False, True])
def test_a_bug_in_an_adapter_is_a_500_and_its_attempt_is_recorded_as_an_internal_error(
        sim_url: str, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    from laneway.config import default_config_text
    from laneway.providers.openai import OpenAIProvider

    def broken(self: OpenAIProvider, request: Any, stream: bool) -> dict[str, Any]:
        raise TypeError("a bug in the adapter")

    monkeypatch.setattr(OpenAIProvider, "body", broken)
    sink = RecordingSink()
    with live_gateway(default_config_text(), sim_url, telemetry=sink) as gw:
        status, headers, _, _ = send(gw, {"model": "heavy-foundation", "stream": stream,
                                          "messages": [{"role": "user", "content": "hi"}]})
        assert status == 500
        gw.call(asyncio.sleep(0.05))
    exchange = sink.by_id(headers["x-request-id"])
    assert [(a.model, a.outcome, a.error) for a in exchange.attempts] == [
        ("heavy-foundation", "internal_error", "TypeError: a bug in the adapter")]


def test_a_request_that_fails_for_its_own_fault_before_reaching_a_model_is_no_models_error(sim_url: str) -> None:
    from laneway.config import default_config_text

    sink = RecordingSink()
    with live_gateway(default_config_text(), sim_url, telemetry=sink) as gw:
        # An Anthropic model has no JSON mode without a schema.
        carried, headers, _, _ = send(gw, {"model": "claude-sonnet-37", "response_format": {"type": "json_object"},
                                           "messages": [{"role": "user", "content": "hi"}]})
        too_long, long_headers, _, _ = send(gw, {"model": "gpt-5-mini", "messages": [
            {"role": "user", "content": "word " * 500_000}]})
        gw.call(asyncio.sleep(0.05))
    assert (carried, too_long) == (400, 400)
    for response in (headers, long_headers):
        exchange = sink.by_id(response["x-request-id"])
        assert exchange.attempts and all(a.outcome == "skipped" for a in exchange.attempts)
        assert exchange.model is None and response["x-laneway-model"] == ""


@pytest.mark.parametrize("stream", [False, True])
async def test_a_deadline_gone_before_the_first_model_is_sent_still_names_it(sim_url: str, stream: bool) -> None:
    """A gate can hand its slot over just as the deadline runs out: the 504 names the model it was for, so
    that the model's timeout rate counts it."""
    from laneway.context import TokenCounter
    from laneway.dispatch import Dispatcher, Plan
    from laneway.errors import AllAttemptsFailed
    from laneway.runtime import Runtime

    runtime = Runtime.build(parse_config("routes:\n- target: gpt-5-mini\n"), sim_url)
    dispatcher = Dispatcher(runtime, TokenCounter())
    exchange = Exchange("late", time.time())
    plan = Plan(None, [("primary", "gpt-5-mini")], asyncio.get_running_loop().time() - 0.001)
    messages = [{"role": "user", "content": "where is my order?"}]
    try:
        with pytest.raises(AllAttemptsFailed) as caught:
            await (dispatcher.stream if stream else dispatcher.complete)(plan, messages, {}, exchange)
    finally:
        await runtime.aclose(1.0)
    assert caught.value.status == 504 and "before any model was sent the request" in caught.value.message
    assert [(a.model, a.lane, a.outcome) for a in exchange.attempts] == [("gpt-5-mini", "primary", "skipped")]


class _SlowToSpeak(Handler):
    """A stream whose head and first event come at once, but whose first word comes 3 s later: OpenAI's
    role chunk, or reasoning deltas every 0.1 s, as reasoning models on OpenAI-compatible servers send."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()

        def event(delta: dict[str, Any], finish: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            self.wfile.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
            self.wfile.flush()

        try:
            event({"role": "assistant"})
            for _ in range(30):
                if body["messages"][-1]["content"] == "think":
                    event({"reasoning_content": "hmm "})
                time.sleep(0.1)
            event({"content": "late"})
            event({}, "stop")
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:  # the gateway gave up and closed
            pass
        self.close_connection = True


@pytest.mark.parametrize("first", ["role", "think"])
def test_a_stream_whose_first_events_hold_no_answer_still_ends_at_the_deadline(first: str) -> None:
    """The deadline bounded a stream up to its first event of any kind; past one that held nothing for the
    client, the wait went on with no bound but `stream_idle_ms` (reasoning deltas every 0.1 s renewed it)."""
    with serving(_SlowToSpeak) as upstream:
        text = f"""
models:
  thinker: {{provider: openai, base_url: "{upstream.url}", model: thinker}}
routes:
- target: thinker
  deadline_ms: 800
"""
        sink = RecordingSink()
        with live_gateway(text, None, telemetry=sink) as gw:
            got, headers, body, elapsed = send(gw, {"model": "laneway", "stream": True,
                                                    "messages": [{"role": "user", "content": first}]})
    assert got == 504 and json.loads(body)["error"]["code"] == "model_inference_deadline_exceeded", body
    assert elapsed < 0.8 + MARGIN_S
    assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == ["model_inference_deadline_exceeded"]


def test_a_stream_s_first_word_is_bounded_by_the_deadline_not_the_idle_time_after_its_role_chunk() -> None:
    """The role chunk, which holds nothing for the client, started the `stream_idle_ms` clock: a model slow to
    its first token was cut as stalled after 0.5 s of a 5 s deadline, and charged a failure."""
    with serving(_SlowToSpeak) as upstream:
        text = f"""
models:
  thinker: {{provider: openai, base_url: "{upstream.url}", model: thinker, stream_idle_ms: 500}}
routes:
- target: thinker
  deadline_ms: 5000
"""
        with live_gateway(text, None) as gw:
            got, _, body, elapsed = send(gw, {"model": "laneway", "stream": True,
                                              "messages": [{"role": "user", "content": "role"}]})
    assert got == 200 and b'"late"' in body and b"[DONE]" in body, body
    assert 2.5 < elapsed < 5


class _CutAnthropicStream(Handler):
    """Anthropic's Messages stream, its prompt counted at once (20 of 50 tokens read from the prompt cache),
    broken off by an `overloaded_error` after two pieces of text."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        usage = {"input_tokens": 30, "cache_read_input_tokens": 20, "output_tokens": 1}
        events = [("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message",
                                                                          "role": "assistant", "content": [],
                                                                          "usage": usage}}),
                  ("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}),
                  *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": piece}})
                    for piece in ("Your refund ", "is on its way")],
                  ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
        body = b"".join(b"event: %s\ndata: %s\n\n" % (kind.encode(), json.dumps(data).encode())
                        for kind, data in events)
        self.send(body, "text/event-stream")


def test_a_stream_cut_mid_way_is_billed_the_prompt_its_upstream_counted() -> None:
    """The prompt was estimated instead, and its prompt-cache reads billed at the full input price."""
    with serving(_CutAnthropicStream) as upstream:
        text = f"""
models:
  claude:
    provider: anthropic
    base_url: "{upstream.url.removesuffix('/v1')}"
    model: claude-sonnet
    price: {{input_per_mtok: 3.0, output_per_mtok: 15.0, cached_input_per_mtok: 0.3}}
routes:
- target: claude
"""
        sink = RecordingSink()
        with live_gateway(text, None, telemetry=sink) as gw:
            got, headers, body, _ = send(gw, {"model": "laneway", "stream": True,
                                              "messages": [{"role": "user", "content": "where is my refund?"}]})
    assert got == 200 and b"event: error" in body
    exchange = one(sink, headers["x-request-id"])
    attempt = exchange.attempts[-1]
    assert exchange.outcome == "stream_interrupted"
    assert (exchange.prompt_tokens, attempt.cached_tokens) == (50, 20)
    assert exchange.completion_tokens >= 4  # the two pieces forwarded, estimated
    assert exchange.cost_usd == pytest.approx((30 * 3.0 + 20 * 0.3 + exchange.completion_tokens * 15.0) / 1e6)


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_s_own_deadline_with_time_left_after_it_does_not_make_the_request_a_timeout(
        sim_url: str, stream: bool) -> None:
    """A timeout anywhere in the attempts made the answer a 504 "deadline exceeded", though the request had
    time left and the models after it failed otherwise: read as "raise the deadline", and counted so."""
    faults = {"e500": "error_500", "silent": "silent", "e503": "error_503"}
    text = config(faults, "- target: e500\n  fallbacks: [silent, e503]\n  deadline_ms: 3000\n")
    text = text.replace('model: "gpt-5-mini@silent"', 'model: "gpt-5-mini@silent"\n    deadline_ms: 400')
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as gw:
        got, headers, body, elapsed = send(gw, {"model": "laneway", "stream": stream,
                                                "messages": [{"role": "user", "content": "hi"}]})
    assert got == 502 and json.loads(body)["error"]["code"] == "upstream_unavailable", body
    assert elapsed < 2.0
    exchange = one(sink, headers["x-request-id"])
    assert exchange.outcome == "upstream_unavailable"
    assert "model_inference_deadline_exceeded" in [a.outcome for a in exchange.attempts]


def test_a_fallback_left_the_last_moments_of_the_deadline_is_not_charged_its_timeout(sim_url: str) -> None:
    """A healthy fallback given the 0.1 s the model before it left timed out, and each such request counted a
    failure against it: three opened its breaker, and every route skipped the healthy model for a minute."""
    routes = "- target: first\n  fallbacks: [spare]\n  deadline_ms: 1000\n"
    text = config({"first": "silent", "spare": "slow_300"}, routes)
    text = text.replace('model: "gpt-5-mini@silent"', 'model: "gpt-5-mini@silent"\n    deadline_ms: 850')
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as gw:
        assert gw.gateway is not None
        for _ in range(3):
            got, headers, body, _ = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]})
            assert got == 504, body
            assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == [
                "model_inference_deadline_exceeded"] * 2
        breakers = gw.gateway.runtime.breakers
        assert breakers["spare"].failures == 0 and breakers["first"].failures == 3  # its own 850 ms: a verdict
        got, headers, body, _ = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]})
    assert got == 200 and headers["x-laneway-model"] == "spare", body  # the first cools down, not the spare


@pytest.mark.parametrize("deadline_of", ["route", "target"])
def test_a_canary_that_hangs_through_its_share_of_the_deadline_is_charged_its_timeout(sim_url: str,
                                                                                      deadline_of: str) -> None:
    """A canary is given half of what is left: its timeout is a verdict on it, so that a hanging canary cools
    down and stops taking half of every sampled request's time. With the deadline the target model's own
    (`deadline_ms` on it, none on the route), the canary was judged by the server's 30 s instead, and spared."""
    routes = "- target: ok\n  canary: {target: silent, weight: 1.0}\n"
    text = config({"ok": "", "silent": "silent"}, routes)
    if deadline_of == "route":
        text += "  deadline_ms: 1000\n"
    else:
        text = text.replace('model: "gpt-5-mini@"', 'model: "gpt-5-mini@"\n    deadline_ms: 1000')
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as gw:
        assert gw.gateway is not None
        for _ in range(3):
            got, headers, body, _ = send(gw, {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]})
            assert got == 200 and headers["x-laneway-model"] == "ok", body
            assert [a.outcome for a in one(sink, headers["x-request-id"]).attempts] == [
                "model_inference_deadline_exceeded", "ok"]
        assert gw.gateway.runtime.breakers["silent"].failures == 3


class _StallsWithPings(Handler):
    """Anthropic's stream: a first word, then `ping` events every 0.1 s and nothing else for 5 s."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()

        def event(kind: str, data: dict[str, Any]) -> None:
            self.wfile.write(b"event: %s\ndata: %s\n\n" % (kind.encode(), json.dumps(data).encode()))
            self.wfile.flush()

        try:
            event("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                "usage": {"input_tokens": 10, "output_tokens": 1}}})
            event("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}})
            event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": "First"}})
            for _ in range(50):
                time.sleep(0.1)
                event("ping", {"type": "ping"})
        except OSError:  # the gateway gave up and closed
            pass
        self.close_connection = True


def test_events_that_hold_nothing_for_the_client_do_not_keep_a_stalled_stream_alive() -> None:
    """Every event restarted the `stream_idle_ms` clock: Anthropic's pings every 0.1 s kept a stream that had
    stalled after its first word open for as long as they came."""
    with serving(_StallsWithPings) as upstream:
        text = f"""
models:
  claude: {{provider: anthropic, base_url: "{upstream.url.removesuffix('/v1')}", model: c, stream_idle_ms: 600}}
routes:
- target: claude
  deadline_ms: 10000
"""
        sink = RecordingSink()
        with live_gateway(text, None, telemetry=sink) as gw:
            got, headers, body, elapsed = send(gw, {"model": "laneway", "stream": True,
                                                    "messages": [{"role": "user", "content": "hi"}]})
    assert got == 200 and b"First" in body and b"event: error" in body and b"[DONE]" not in body, body
    assert elapsed < 2.5  # the idle limit after the first word, not the 5 s of pings
    assert "nothing for the client for 0.6s" in one(sink, headers["x-request-id"]).error


async def test_a_fractional_wait_an_upstream_asked_for_is_told_the_client_rounded_up() -> None:
    """Told 2 for an upstream's 2.45 s, a client came back before the upstream's window and was refused again."""
    from laneway.errors import AllAttemptsFailed, UpstreamRateLimited
    from laneway.server._asgi import respond_error

    sent: list[dict[str, Any]] = []

    async def send_(message: dict[str, Any]) -> None:
        sent.append(message)

    error = AllAttemptsFailed([UpstreamRateLimited("slow down", model="m", retry_after_s=2.45)])
    await respond_error(send_, error, "req-1", [])
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 429 and headers[b"retry-after"] == b"3"
