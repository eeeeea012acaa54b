"""The shadow lane against what it must never do to real traffic: fail it after a reload, hold it up with a
long prompt's count, or the gateway's exit with copies still queued; and what its figures must say: a
candidate that calls other tools disagrees, a target named twice is copied once, the spend cap is the
whole server's."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from _loopback import Handler, completion_body, serving, sse_body
from laneway.chat import said
from laneway.config import ShadowSettings, parse_config
from laneway.context import TokenCounter
from laneway.errors import ConfigError
from laneway.shadow import ShadowRunner, compare
from test_lanes import send, wait_for

CANDIDATES = """
models:
  first: {provider: openai, base_url: "sim:///gemini-2.5-flash-lite/v1", model: gemini-2.5-flash-lite}
  second: {provider: openai, base_url: "sim:///claude-sonnet-37/v1", model: claude-sonnet-37}
"""


def test_a_reload_that_drops_a_global_shadow_target_and_its_model_leaves_requests_answered(
        sim_url: str, tmp_path: Path) -> None:
    """The reload kept the running `shadow:` section, whose target no longer had a model: every request was
    answered 500 after its primary was called and billed. Targets now follow the reload."""
    path = tmp_path / "routes.yaml"
    with_first = CANDIDATES + "shadow: {targets: [{target: first, sample: 1.0}]}\nroutes:\n- target: gpt-5-mini\n"
    path.write_text(with_first)
    sink = RecordingSink()
    with live_gateway(with_first, sim_url, config_path=path, telemetry=sink) as live:
        assert live.gateway is not None
        send(live, "before")
        wait_for(lambda: any(e.request_id.endswith("/shadow/first") for e in sink.exchanges))
        path.write_text("models:\n  second: {provider: openai, base_url: \"sim:///claude-sonnet-37/v1\", "
                        "model: claude-sonnet-37}\nshadow: {targets: [{target: second, sample: 1.0}]}\n"
                        "routes:\n- target: gpt-5-mini\n")
        config = live.call(live.gateway.reload())
        assert not [w for w in config.warnings if "restart" in w.message]
        headers, body = send(live, "after", stream=False)
        assert json.loads(body)["choices"][0]["message"]["content"]
        wait_for(lambda: any(e.request_id == headers["x-request-id"] + "/shadow/second" for e in sink.exchanges))
    assert not any(e.request_id == headers["x-request-id"] + "/shadow/first" for e in sink.exchanges)


def test_a_target_named_globally_and_by_the_route_is_copied_once(sim_url: str) -> None:
    text = CANDIDATES + """shadow: {targets: [{target: first, sample: 1.0}]}
routes:
- target: gpt-5-mini
  shadow: [{target: first, sample: 1.0}]
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live:
        for i in range(3):
            send(live, f"copied {i}")
        wait_for(lambda: sum(e.lane == "shadow" for e in sink.exchanges) >= 3)
        time.sleep(0.3)
        assert live.gateway is not None
        assert live.gateway.shadows.counters.submitted == 3
    shadows = [e.request_id for e in sink.exchanges if e.lane == "shadow"]
    assert len(shadows) == len(set(shadows)) == 3


def test_a_long_prompt_is_counted_for_its_copy_off_the_event_loop(sim_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy's fit and estimate were worked out as the answer was sent: a 3.7 MB prompt's count held that
    answer, and every other client, for 190 ms."""
    on_loop: list[bool] = []
    count = TokenCounter.count

    def watched(self: TokenCounter, *args: Any, **kwargs: Any) -> int:
        on_loop.append(asyncio._get_running_loop() is not None)
        return count(self, *args, **kwargs)

    monkeypatch.setattr(TokenCounter, "count", watched)
    text = CANDIDATES.replace("model: gemini-2.5-flash-lite}", "model: gemini-2.5-flash-lite, "
                              "context_window: 1000000}") + """routes:
- target: gpt-5-mini
  shadow: [{target: first, sample: 1.0}]
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live:
        send(live, "a long question " * 20_000)  # 320 KB, some 60,000 tokens
        wait_for(lambda: any(e.lane == "shadow" for e in sink.exchanges))
    assert on_loop and not any(on_loop)


class _Tools(Handler):
    """Calls `refund_order` on the order the path names: `/a/v1` A1, `/b/v1` Z9; whole or streamed."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        order = "A1" if self.path.startswith("/a/") else "Z9"
        call = {"id": "call_1", "type": "function",
                "function": {"name": "refund_order", "arguments": json.dumps({"order": order})}}
        usage = {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}
        if not request.get("stream"):
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            self.send(completion_body("m", {"index": 0, "message": message, "finish_reason": "tool_calls"},
                                      usage=usage), "application/json")
            return
        arguments = call["function"]["arguments"]
        pieces = [{"index": 0, "id": "call_1", "type": "function",
                   "function": {"name": "refund_order", "arguments": arguments[:5]}},
                  {"index": 0, "function": {"arguments": arguments[5:]}}]
        events = [{"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]} for piece in pieces]
        events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
                   {"choices": [], "usage": usage}]
        self.send(sse_body(events), "text/event-stream")


@pytest.mark.parametrize("stream", [False, True])
def test_a_candidate_that_calls_another_tool_disagrees_with_the_primary(sim_url: str, stream: bool) -> None:
    """Both answers had no text: the comparison scored them an exact match, similarity 1.0, whatever they
    called."""
    with serving(_Tools) as upstream:
        base = upstream.url.removesuffix("/v1")
        text = f"""
models:
  primary: {{provider: openai, base_url: "{base}/a/v1", model: m}}
  same: {{provider: openai, base_url: "{base}/a/v1", model: m}}
  other: {{provider: openai, base_url: "{base}/b/v1", model: m}}
routes:
- target: primary
  shadow: [{{target: same, sample: 1.0}}, {{target: other, sample: 1.0}}]
"""
        sink = RecordingSink()
        tools = [{"type": "function", "function": {"name": "refund_order", "parameters": {"type": "object"}}}]
        with live_gateway(text, sim_url, telemetry=sink) as live:
            headers, _ = send(live, "refund order A1", tools=tools, stream=stream)
            wait_for(lambda: sum(e.lane == "shadow" for e in sink.exchanges) == 2)
    request_id = headers["x-request-id"]
    same, other = sink.by_id(request_id + "/shadow/same"), sink.by_id(request_id + "/shadow/other")
    assert same.signals["exact"] is True and same.signals["similarity"] == 1.0
    assert other.signals["exact"] is False and other.signals["similarity"] < 1.0
    assert same.ttft_ms is not None and other.ttft_ms is not None  # a first tool-call piece is a first token


def test_what_an_answer_said_holds_its_calls_whole_or_in_pieces() -> None:
    whole = [{"id": "c", "type": "function", "function": {"name": "refund", "arguments": '{"b": 2, "a": 1}'}}]
    pieces = [{"index": 0, "id": "c", "function": {"name": "refund", "arguments": '{"a":1,'}},
              {"index": 0, "function": {"arguments": ' "b":2}'}}]
    assert said("", whole) == said("", pieces) == 'refund({"a":1,"b":2})'
    assert said("Done.", None) == "Done."
    assert compare(said("", whole), said("", [{"function": {"name": "cancel", "arguments": "{}"}}]))["exact"] is False


def test_the_gateway_stops_soon_after_its_grace_with_shadow_copies_queued(sim_url: str) -> None:
    """Copies left in the queue held their requests' runtime open: the exit waited 10 s for the queue and
    30 s more for the runtime, past any orchestrator's patience."""
    text = """
models:
  slow: {provider: openai, base_url: "sim:///gpt-5/v1", model: "gpt-5@slow_8000"}
shadow: {concurrency: 1}
routes:
- target: gpt-5-mini
  shadow: [{target: slow, sample: 1.0}]
"""
    sink = RecordingSink()
    live = LiveGateway(text, sim_url, telemetry=sink).start()
    try:
        for i in range(5):
            send(live, f"copied {i}")
        assert live.gateway is not None
        gateway = live.gateway
    finally:
        started = time.perf_counter()
        live.stop()
        stopped = time.perf_counter() - started
    assert stopped < 8  # 2 s for the copies, against 40 s
    assert gateway.shadows.counters.dropped_shutdown == 4  # one ran, four were still queued
    assert sink.events.count(("shadow_dropped_shutdown", "slow")) == 4
    assert gateway.runtime.inflight == 0


def test_each_worker_keeps_to_its_part_of_the_shadow_spend_cap() -> None:
    runner = ShadowRunner(ShadowSettings(usd_per_hour=1.0), None)
    assert not runner._over_budget(0.8)
    runner.share = 1 / 2  # `laneway serve --workers 2`
    assert runner._over_budget(0.8) and not runner._over_budget(0.4)


def test_shadow_concurrency_has_a_ceiling() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("shadow: {concurrency: 300000}\nroutes:\n- target: gpt-5-mini\n")
    assert "shadow.concurrency" in str(caught.value)


@pytest.mark.parametrize("stream", [False, True])
def test_a_fault_in_copying_never_fails_the_clients_request(sim_url: str, monkeypatch: pytest.MonkeyPatch,
                                                            stream: bool) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("a bug in the shadow lane")

    monkeypatch.setattr(ShadowRunner, "submit", broken)
    with live_gateway(CANDIDATES + "routes:\n- target: gpt-5-mini\n  shadow: [{target: first, sample: 1.0}]\n",
                      sim_url) as live:
        _, body = send(live, "copied", stream=stream)
    if stream:
        assert body.rstrip().endswith(b"data: [DONE]")
    else:
        assert json.loads(body)["choices"][0]["message"]["content"]


class _Failing(Handler):
    """Answers 500 after 0.2 s: a candidate that fails every copy."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        time.sleep(0.2)
        body = b'{"error": {"message": "overloaded", "type": "server_error"}}'
        self.send_response(500)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_failed_shadow_copies_do_not_bring_an_adaptive_gates_limit_down(sim_url: str) -> None:
    """A failed copy's latency was read by the candidate's adaptive gate, as a primary's failure never is: ten
    failed copies took the limit from 8 to 3 for the real traffic the model also served."""
    with serving(_Failing) as upstream:
        text = f"""
models:
  cand:
    provider: openai
    base_url: "{upstream.url}"
    model: m
    gate: {{max_concurrency: 8, adaptive: {{target_p95_ms: 50, window: 5}}}}
routes:
- target: gpt-5-mini
  shadow: [{{target: cand, sample: 1.0}}]
"""
        sink = RecordingSink()
        with live_gateway(text, sim_url, telemetry=sink) as live:
            for i in range(10):
                send(live, f"copied {i}")
            wait_for(lambda: sum(e.lane == "shadow" for e in sink.exchanges) == 10)
            assert live.gateway is not None
            limit = live.gateway.runtime.gates["cand"].limit
    assert all(e.outcome != "ok" for e in sink.exchanges if e.lane == "shadow")
    assert limit == 8
