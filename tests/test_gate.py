"""The throttled gate: AIMD and budgets as pure functions, admission order and bounds on a real
event loop, and degradation / 429 through a live gateway."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from _live import RecordingSink, live_gateway
from _loopback import Handler, serving, sse_body
from _pg import total
from laneway.config import parse_config
from laneway.errors import ConfigError
from laneway.exchange import Exchange
from laneway.gate import Adaptive, Budget, Gate, GatePolicy, GateRejected, next_limit
from laneway.telemetry import Telemetry, TelemetrySettings

ADAPTIVE = Adaptive(target_p95_ms=1000, min_concurrency=2)


@pytest.mark.parametrize(("limit", "p95", "busy", "expected"), [
    (10, 1500, True, 7),     # over target: multiplicative decrease
    (2, 5000, True, 2),      # never under the floor
    (7, 500, True, 8),       # comfortably under target and busy: additive increase
    (16, 500, True, 16),     # never over the ceiling
    (7, 500, False, 7),      # not busy: no reason to grow
    (7, 900, True, 7),       # near target: hold
])
def test_aimd_steps(limit: int, p95: float, busy: bool, expected: int) -> None:
    assert next_limit(limit, p95, busy, ADAPTIVE, ceiling=16) == expected


def test_budget_refills_per_minute() -> None:
    budget = Budget(per_minute=600)
    assert budget.take(500, now=0.0) == 0.0
    assert budget.take(200, now=0.0) == pytest.approx(10.0)  # 100 short at 10 per second
    assert budget.take(200, now=10.0) == 0.0


def test_a_request_larger_than_a_minutes_budget_waits_for_a_full_bucket_and_goes_alone() -> None:
    budget = Budget(per_minute=1000)
    assert budget.take(400, now=0.0) == 0.0
    assert budget.take(2000, now=0.0) == pytest.approx(24.0)  # 400 short of full at 1000 a minute
    assert budget.take(2000, now=24.0) == 0.0  # full: it goes, and leaves the bucket 1000 in debt
    # The requests after it wait for the debt to be paid off, however large they are.
    assert budget.take(2000, now=24.0) == pytest.approx(120.0)
    assert budget.take(100, now=24.0) == pytest.approx(66.0)
    assert budget.take(100, now=90.0) == 0.0


async def test_priority_order_and_concurrency_bound() -> None:
    gate = Gate("heavy", GatePolicy(max_concurrency=1, queue_timeout_ms=(5000, 5000, 5000)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    await gate.admit(1, 0, 0.0, deadline)
    order: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        await gate.admit(priority, 0, 0.0, deadline)
        order.append(name)
        assert gate.in_flight == 1
        await asyncio.sleep(0.01)
        gate.release(10.0)

    tasks = [asyncio.create_task(waiter("triage", 2)), asyncio.create_task(waiter("chat", 1))]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(waiter("escalation", 0)))
    await asyncio.sleep(0.01)
    gate.release(10.0)
    await asyncio.gather(*tasks)
    assert order == ["escalation", "chat", "triage"]
    assert gate.in_flight == 0


async def test_a_refusal_asks_to_come_back_after_the_refused_class_could_have_waited() -> None:
    gate = Gate("heavy", GatePolicy(max_concurrency=1, queue_timeout_ms=(6000, 3000, 50)))
    loop = asyncio.get_running_loop()
    await gate.admit(0, 0, 0.0, loop.time() + 10)
    with pytest.raises(GateRejected) as triage:
        await gate.admit(2, 0, 0.0, loop.time() + 10)
    with pytest.raises(GateRejected) as chat:
        await gate.admit(1, 0, 0.0, loop.time() + 0.05)  # its deadline ends the wait
    assert (triage.value.retry_after_s, chat.value.retry_after_s) == (1.0, 3.0)  # not the escalations' 6 s


async def test_queue_timeout_and_deadline_bound_the_wait() -> None:
    gate = Gate("heavy", GatePolicy(max_concurrency=1, queue_timeout_ms=(1000, 1000, 50)))
    loop = asyncio.get_running_loop()
    await gate.admit(0, 0, 0.0, loop.time() + 10)
    started = loop.time()
    with pytest.raises(GateRejected) as caught:
        await gate.admit(2, 0, 0.0, loop.time() + 10)
    assert 0.04 < loop.time() - started < 0.5 and caught.value.retry_after_s >= 1
    started = loop.time()
    with pytest.raises(GateRejected) as deadline_first:
        await gate.admit(0, 0, 0.0, loop.time() + 0.05)  # its deadline comes before its class's timeout
    assert loop.time() - started < 0.5
    assert (caught.value.out_of_time, deadline_first.value.out_of_time) == (False, True)
    assert "`queue_timeout_ms` for this priority: 50" in caught.value.reason
    assert gate.in_flight == 1 and gate.rejected == 2


async def test_abandoned_waiter_gives_its_slot_back() -> None:
    gate = Gate("heavy", GatePolicy(max_concurrency=1))
    loop = asyncio.get_running_loop()
    await gate.admit(0, 0, 0.0, loop.time() + 10)
    task = asyncio.create_task(gate.admit(0, 0, 0.0, loop.time() + 10))
    await asyncio.sleep(0.01)
    task.cancel()
    gate.release(5.0)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.in_flight == 0
    await gate.admit(0, 0, 0.0, loop.time() + 1)  # the slot is free again


async def test_token_budget_rejects_what_would_wait_too_long() -> None:
    gate = Gate("heavy", GatePolicy(tokens_per_minute=1000, queue_timeout_ms=(100, 100, 100)))
    loop = asyncio.get_running_loop()
    await gate.admit(1, 900, 0.0, loop.time() + 10)
    gate.release(1.0)
    with pytest.raises(GateRejected, match="tokens per minute"):
        await gate.admit(1, 900, 0.0, loop.time() + 10)
    assert gate.in_flight == 0


GATED = """
models:
  heavy:
    provider: openai
    base_url: sim:///heavy-foundation/v1
    model: "heavy-foundation@slow_600"
    gate:
      max_concurrency: 1
      queue_timeout_ms: {escalation: 3000, chat: 100, triage: 50}
      degrade_to: gpt-5-mini
  heavy-strict:
    provider: openai
    base_url: sim:///heavy-foundation/v1
    model: "heavy-foundation@slow_600"
    gate: {max_concurrency: 1, queue_timeout_ms: 50}
routes:
- name: strict
  matcher: "metadata.strict == yes"
  target: heavy-strict
- name: strict-with-fallback
  matcher: "metadata.strict == fallback"
  target: heavy-strict
  fallbacks: [gpt-5-mini]
- name: heavy
  target: heavy
"""


def post(url: str, metadata: dict[str, str]) -> tuple[int, dict[str, str]]:
    body = {"model": "laneway", "messages": [{"role": "user", "content": "help"}], "metadata": metadata}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_gate_degrades_low_priority_and_keeps_escalations(sim_url: str) -> None:
    with live_gateway(GATED, sim_url) as live, ThreadPoolExecutor(6) as pool:
        kinds = [{"escalation": "true"}] * 2 + [{"channel": "email"}] * 4
        results = list(pool.map(lambda m: (m, post(live.url, m)), kinds))
    lanes = {(m.get("escalation", "no"), h["x-laneway-lane"], h["x-laneway-model"]) for m, (_, h) in results}
    assert all(status == 200 for _, (status, _) in results)
    assert ("true", "primary", "heavy") in lanes  # escalations waited their turn at the gate
    assert ("no", "degraded", "gpt-5-mini") in lanes  # triage could not wait: it was degraded


def test_gate_without_degrade_answers_429_with_retry_after(sim_url: str) -> None:
    sink = RecordingSink()
    with live_gateway(GATED, sim_url, telemetry=sink) as live, ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: post(live.url, {"strict": "yes"}), range(3)))
    statuses = sorted(status for status, _ in results)
    assert statuses[0] == 200 and statuses[-1] == 429
    assert all(int(h["retry-after"]) >= 1 for status, h in results if status == 429)
    # every wait counts in `laneway_queue_wait_seconds`, the ones in vain too (a gate turning requests away)
    waits = [seconds for model, seconds in sink.queue_waits if model == "heavy-strict"]
    assert len(waits) == 3 and sum(seconds >= 0.04 for seconds in waits) == statuses.count(429)


def test_a_gate_that_turns_a_request_away_hands_it_to_the_routes_fallback(sim_url: str) -> None:
    with live_gateway(GATED, sim_url) as live, ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: post(live.url, {"strict": "fallback"}), range(3)))
    assert [status for status, _ in results] == [200] * 3  # none a 429: the fallback was there
    served = sorted((h["x-laneway-lane"], h["x-laneway-model"]) for _, h in results)
    assert ("primary", "heavy-strict") in served and ("fallback", "gpt-5-mini") in served


QUEUED = """
models:
  heavy:
    provider: openai
    base_url: sim:///heavy-foundation/v1
    model: "heavy-foundation@slow_1500"
    gate: {max_concurrency: 1, queue_timeout_ms: 3000, degrade_to: gpt-5-mini}
routes:
- name: hold
  matcher: "metadata.q == hold"
  target: heavy
  deadline_ms: 5000
- name: short
  target: heavy
  deadline_ms: 1000
"""


def test_a_wait_at_the_gate_leaves_the_degraded_model_half_the_deadline(sim_url: str) -> None:
    """The queue could take the whole deadline: the degraded model was then sent the request with
    nothing left, and answered a 504."""
    with live_gateway(QUEUED, sim_url) as live, ThreadPoolExecutor(1) as pool:
        holding = pool.submit(post, live.url, {"q": "hold"})  # takes the gate's one slot for 1.5 s
        time.sleep(0.2)
        started = time.monotonic()
        status, headers = post(live.url, {"q": "short"})
        took = time.monotonic() - started
        assert holding.result(timeout=30)[0] == 200
    assert status == 200 and (headers["x-laneway-lane"], headers["x-laneway-model"]) == ("degraded", "gpt-5-mini")
    assert took < 1.0  # within the route's deadline


def test_the_wait_a_gate_turned_away_at_the_end_is_the_gated_attempts_time(sim_url: str) -> None:
    """It was recorded as 0 ms: the exchange log's attempts showed no trace of half the deadline."""
    sink = RecordingSink()
    with live_gateway(QUEUED, sim_url, telemetry=sink) as live, ThreadPoolExecutor(1) as pool:
        holding = pool.submit(post, live.url, {"q": "hold"})  # takes the gate's one slot for 1.5 s
        time.sleep(0.2)
        status, headers = post(live.url, {"q": "short"})
        assert holding.result(timeout=30)[0] == 200
    gated, degraded = sink.by_id(headers["x-request-id"]).attempts
    assert status == 200 and (gated.outcome, degraded.lane) == ("gated", "degraded")
    assert 400 <= gated.latency_ms < 1000  # QUEUE_SHARE of the 1 s deadline, in the queue


def refused_while_held(config: str, sim_url: str) -> tuple[urllib.error.HTTPError, dict[str, Any]]:
    """The error answer to a request sent while another one holds the gate's one slot for 1.5 s."""
    with live_gateway(config, sim_url) as live, ThreadPoolExecutor(1) as pool:
        holding = pool.submit(post, live.url, {"q": "hold"})
        time.sleep(0.2)
        body = {"model": "laneway", "messages": [{"role": "user", "content": "help"}]}
        request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(body).encode())
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert holding.result(timeout=30)[0] == 200
    return caught.value, json.loads(caught.value.read())["error"]


def test_a_deadline_that_runs_out_in_a_fallbacks_gate_keeps_the_failures_before_it(sim_url: str) -> None:
    """The 504 said no model was sent the request, its `attempts` one entry with no model: the failing target
    the client most needs to hear of was left out."""
    after_a_failure = DEADLINE_IN_QUEUE.replace("models:\n", "models:\n  broken: {provider: openai, base_url: "
                                                "'sim:///gpt-5-mini/v1', model: 'gpt-5-mini@error_502'}\n", 1).replace(
        "- name: short\n  target: heavy\n", "- name: short\n  target: broken\n  fallbacks: [heavy]\n"
                                           "  retry: {attempts: 1}\n")
    assert "target: broken" in after_a_failure
    refused, error = refused_while_held(after_a_failure, sim_url)
    assert refused.code == 504 and error["code"] == "model_inference_deadline_exceeded"
    assert [(a["model"], a["code"]) for a in error["attempts"]] == [
        ("broken", "upstream_unavailable"), ("heavy", "model_inference_deadline_exceeded")]
    assert "before any model was sent" not in error["message"]
    assert "the deadline ran out in its gate's queue (`heavy` is at its concurrency limit (1)" in error["message"]


def test_a_wait_in_a_gates_queue_is_not_the_gateways_overhead(sim_url: str) -> None:
    sink = RecordingSink()
    with live_gateway(QUEUED, sim_url, telemetry=sink) as live, ThreadPoolExecutor(1) as pool:
        holding = pool.submit(post, live.url, {"q": "hold"})  # takes the gate's one slot for 1.5 s
        time.sleep(0.2)
        status, headers = post(live.url, {"q": "hold"})  # waits for it, then takes 1.5 s itself
        assert holding.result(timeout=30)[0] == 200
    exchange = sink.by_id(headers["x-request-id"])
    assert status == 200 and exchange.latency_ms > 2500
    assert exchange.overhead_ms < 300  # the queue's 1.3 s is in `laneway_queue_wait_seconds`, not here


# QUEUED without a model to degrade to, and a deadline (0.6 s) shorter than the queue's timeout (3 s)
DEADLINE_IN_QUEUE = QUEUED.replace(", degrade_to: gpt-5-mini", "").replace("deadline_ms: 1000", "deadline_ms: 600")


def test_a_deadline_that_runs_out_in_a_gates_queue_is_a_504_naming_the_gate(sim_url: str) -> None:
    """Not a 429 blaming the queue's timeout (3 s, never reached): a longer queue would not have helped."""
    refused, error = refused_while_held(DEADLINE_IN_QUEUE, sim_url)
    assert refused.code == 504 and error["code"] == "model_inference_deadline_exceeded"
    assert "`heavy` is at its concurrency limit (1); the request's time for it ran out in its queue" in error["message"]
    assert (refused.headers["x-laneway-model"], refused.headers["x-laneway-lane"]) == ("heavy", "primary")
    assert "retry-after" not in refused.headers


def test_metrics_show_each_gate_and_breaker_as_they_are_at_the_scrape(sim_url: str) -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))
    with live_gateway(QUEUED, sim_url, telemetry=telemetry) as live, ThreadPoolExecutor(2) as pool:
        assert live.gateway is not None
        live.gateway.runtime.breakers["gpt-5-mini"].open_until = time.monotonic() + 3600  # as after failures
        holding = [pool.submit(post, live.url, {"q": "hold"}) for _ in range(2)]  # one holds the slot, one waits
        time.sleep(0.3)
        with urllib.request.urlopen(live.url + "/metrics", timeout=10) as answer:
            text = answer.read()
        for future in holding:
            future.result(timeout=30)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus"
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert total(text, "laneway_gate_in_flight", model="heavy") == 1
    assert total(text, "laneway_gate_queued", model="heavy") == 1
    assert total(text, "laneway_gate_concurrency_limit", model="heavy") == 1
    assert total(text, "laneway_model_breaker_state", model="gpt-5-mini", state="open") == 1
    assert total(text, "laneway_model_breaker_state", model="gpt-5-mini", state="closed") == 0
    assert total(text, "laneway_model_breaker_state", model="heavy", state="closed") == 1


@pytest.mark.parametrize("chain", [["m1", "m2"], ["m1", "m2", "m3"]])
def test_a_degrade_to_cycle_is_refused_at_load_naming_each_model(chain: list[str]) -> None:
    """Two models that degrade to each other passed the check; once both gates turned a request away for
    its budget, the request went round them for ever and the process stopped answering."""
    models = "".join(
        f"  {name}: {{provider: openai, base_url: 'sim:///gpt-5-mini/v1', model: gpt-5-mini,"
        f" gate: {{tokens_per_minute: 10, degrade_to: {chain[(i + 1) % len(chain)]}}}}}\n"
        for i, name in enumerate(chain))
    with pytest.raises(ConfigError) as refused:
        parse_config(f"models:\n{models}routes:\n- target: m1\n")
    said = str(refused.value)
    loop = " -> ".join(f"`{name}`" for name in [*chain, chain[0]])
    assert re.search(rf"models\.m1\.gate\.degrade_to \(line \d+, column \d+\): {re.escape(loop)} is a cycle", said)
    assert all(f"models.{name}.gate.degrade_to" in said for name in chain)


def test_every_model_of_a_degrade_to_chain_is_loaded() -> None:
    """Only the first link was: a chain `a -> b -> gpt-5-mini` passed the check without `gpt-5-mini`, and every
    request that both gates turned away was answered 500 (the model was missing)."""
    config = parse_config("""
models:
  a: {provider: openai, base_url: 'sim:///gpt-5/v1', model: gpt-5, gate: {max_concurrency: 1, degrade_to: b}}
  b: {provider: openai, base_url: 'sim:///gpt-5/v1', model: gpt-5, gate: {max_concurrency: 1, degrade_to: c}}
  c: {provider: openai, base_url: 'sim:///gpt-5/v1', model: gpt-5, gate: {max_concurrency: 1, degrade_to: gpt-5-mini}}
routes:
- target: a
""")
    assert set(config.models) == {"a", "b", "c", "gpt-5-mini"}


def test_a_model_tried_already_is_not_degraded_to_again(sim_url: str) -> None:
    """A fallback's gate that degrades to the route's target, which its own gate turned away: the request
    is turned away (429), not handed to the target a second time."""
    config = """
models:
  target: {provider: openai, base_url: 'sim:///gpt-5/v1', model: gpt-5, gate: {tokens_per_minute: 10}}
  spare: {provider: openai, base_url: 'sim:///gpt-5-mini/v1', model: gpt-5-mini,
          gate: {tokens_per_minute: 10, degrade_to: target}}
routes:
- target: target
  fallbacks: [spare]
"""
    sink = RecordingSink()
    with live_gateway(config, sim_url, telemetry=sink) as live:
        for model in ("target", "spare"):  # each spends its budget on a request sent to it by name
            request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(
                {"model": model, "messages": [{"role": "user", "content": "help"}]}).encode())
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.headers["x-laneway-model"] == model
        status, headers = post(live.url, {})
    assert status == 429
    assert [(a.model, a.outcome) for a in sink.by_id(headers["x-request-id"]).attempts] == [
        ("target", "gated"), ("spare", "gated")]


async def test_a_stream_never_read_frees_its_gate_slot_and_its_breakers_probe(sim_url: str) -> None:
    """Its wrapper's cleanup ran only once it was read: a failure between the first chunk and the first read
    (a stop past the grace period) kept the gate slot for good, and the breaker's probe until a cooldown."""
    from laneway.context import TokenCounter
    from laneway.dispatch import Dispatcher, Plan
    from laneway.runtime import Runtime

    config = parse_config("""
models:
  gated: {provider: openai, base_url: "sim:///gpt-5-mini/v1", model: gpt-5-mini, gate: {max_concurrency: 1}}
routes:
- target: gated
""")
    runtime = Runtime.build(config, sim_url)
    try:
        breaker = runtime.breakers["gated"]
        breaker.open_until, breaker.failures = 1.0, 5  # cooled down long ago: this stream is the probe
        plan = Plan(config.routes[0], [("primary", "gated")], asyncio.get_running_loop().time() + 10)
        exchange = Exchange("never-read", time.time())
        started = await Dispatcher(runtime, TokenCounter()).stream(
            plan, [{"role": "user", "content": "hi"}], {}, exchange)
        assert runtime.gates["gated"].in_flight == 1 and started.let_go is not None
        await started.let_go()
        assert runtime.gates["gated"].in_flight == 0
        assert not breaker.probing and breaker.failures == 5  # no verdict either way
    finally:
        await runtime.aclose(1.0)


async def test_a_stream_cancelled_while_it_waits_to_try_again_gives_its_gate_slot_back() -> None:
    """A stream abandoned during the pause a 429's `Retry-After` asked for (its client left, the server stopped)
    kept the gate slot: the gated model took no other request until a restart. A whole answer gave it back."""
    from _loopback import Handler, serving
    from laneway.context import TokenCounter
    from laneway.dispatch import Dispatcher, Plan
    from laneway.runtime import Runtime

    class Busy(Handler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            body = b'{"error": {"message": "slow down", "type": "rate_limit_error"}}'
            self.send_response(429)
            self.send_header("retry-after", "2")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Busy) as upstream:
        config = parse_config(f"""
models:
  gated: {{provider: openai, base_url: "{upstream.url}", model: m, gate: {{max_concurrency: 1}},
          price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
routes:
- target: gated
  retry: {{attempts: 2}}
""")
        runtime = Runtime.build(config, None)
        try:
            gate = runtime.gates["gated"]
            for stream in (True, False):
                plan = Plan(config.routes[0], [("primary", "gated")], asyncio.get_running_loop().time() + 10)
                dispatcher = Dispatcher(runtime, TokenCounter())
                call = dispatcher.stream if stream else dispatcher.complete
                exchange = Exchange(f"left-{stream}", time.time())
                task = asyncio.create_task(call(plan, [{"role": "user", "content": "hi"}], {}, exchange))
                deadline = time.monotonic() + 5
                while gate.in_flight == 0:  # admitted, sent, and now waiting out the Retry-After
                    assert time.monotonic() < deadline and not task.done()
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert gate.in_flight == 0, f"stream={stream}"
                # the pause cut short was the upstream's time, not the gateway's overhead
                assert exchange.upstream_ms >= 300, exchange.upstream_ms
        finally:
            await runtime.aclose(1.0)


async def test_a_request_that_leaves_while_it_waits_for_the_budget_gives_its_slot_back() -> None:
    """It held a slot while it waited for the tokens a minute's budget had left; abandoned then (its client
    gone), the slot stayed taken for good."""
    gate = Gate("heavy", GatePolicy(max_concurrency=2, tokens_per_minute=60_000, queue_timeout_ms=(5000, 5000, 5000)))
    deadline = asyncio.get_running_loop().time() + 10
    await gate.admit(1, 60_000, 0.0, deadline)  # the minute's budget, spent: 1,000 tokens a second come back
    waiting = asyncio.create_task(gate.admit(1, 2_000, 0.0, deadline))
    await asyncio.sleep(0.05)
    assert gate.in_flight == 2 and not waiting.done()  # a slot held while the budget refills
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gate.in_flight == 1


async def test_a_whole_stream_settles_the_gates_budget_with_its_cost_and_its_latency_from_the_first_wait() -> None:
    """A stream settled the USD budget with its estimate, not its cost, and its latency from its first chunk: a
    $1 answer streamed let the next request through where the same answer whole did not, and an adaptive gate
    never saw a stream's wait for its first word."""
    from laneway.chat import Chunk, Usage
    from laneway.config import Price
    from laneway.dispatch import Ticket

    gate = Gate("heavy", GatePolicy(max_concurrency=4, usd_per_minute=1.5, adaptive=Adaptive(target_p95_ms=500)))
    await gate.admit(1, 100, 0.01, asyncio.get_running_loop().time() + 10)
    ticket = Ticket(gate)
    ticket.admitted, ticket.estimate = True, (100, 0.01)

    async def upstream() -> AsyncIterator[Chunk]:
        yield Chunk(text="It is on its way.")
        yield Chunk(finish_reason="stop", usage=Usage(prompt_tokens=1_000_000, completion_tokens=10))

    began = time.perf_counter() - 1.5  # sent 1.5 s ago: its first word took that long
    ended: list[BaseException | None] = []
    got = [chunk async for chunk in ticket.hold(upstream(), ended.append, Price(1.0, 2.0), began)]
    assert len(got) == 2 and ended == [None] and gate.in_flight == 0
    assert gate.dollars is not None and gate.dollars.level == pytest.approx(1.5 - 1.00002, abs=1e-3)
    assert gate._latencies and gate._latencies[-1] >= 1500


def test_a_reload_that_changes_a_gate_keeps_counting_the_calls_in_flight(sim_url: str, tmp_path: Path) -> None:
    """A changed gate was made afresh: the calls admitted by the old one went uncounted, and a throttled
    upstream got a whole limit's worth of calls more (9 at once behind a limit raised from 4 to 5)."""
    text = """
models:
  slow:
    provider: openai
    base_url: sim:///gpt-5/v1
    model: "gpt-5@slow_1500"
    gate: {max_concurrency: 2, queue_timeout_ms: 10000, tokens_per_minute: 100000}
routes:
- target: slow
"""
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    with live_gateway(text, sim_url, config_path=path) as live, ThreadPoolExecutor(6) as pool:
        assert live.gateway is not None
        before = live.gateway.runtime.gates["slow"]
        calls = [pool.submit(post, live.url, {}) for _ in range(6)]
        deadline = time.monotonic() + 10
        while not (before.in_flight == 2 and before.queued == 4):
            assert time.monotonic() < deadline, (before.in_flight, before.queued)
            time.sleep(0.02)
        path.write_text(text.replace("max_concurrency: 2", "max_concurrency: 3"))
        live.call(live.gateway.reload())
        gate = live.gateway.runtime.gates["slow"]
        in_flight, queued, limit = gate.in_flight, gate.queued, gate.limit
        left = gate.tokens.level if gate.tokens is not None else None
        assert [call.result(timeout=30)[0] for call in calls] == [200] * 6
    assert (in_flight, queued, limit) == (3, 3, 3)  # the two running, and one let in by the higher limit
    assert left is not None and left < 100000  # what the calls took of the budget stays taken


class _Wordy(Handler):
    """A stream of 200 words whatever `max_tokens` says, and no usage: what it cost is counted by the gateway."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        events = [{"choices": [{"index": 0, "delta": {"content": f"word{i} "}}]} for i in range(200)]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self.send(sse_body(events), "text/event-stream")


WORDY = """
models:
  wordy:
    provider: openai
    base_url: "{url}"
    model: m
    price: {{input_per_mtok: 1000, output_per_mtok: 1000}}
    gate: {{usd_per_minute: 0.05, queue_timeout_ms: 200}}
routes:
- name: copied
  matcher: "metadata.to == copied"
  target: gpt-5-mini
  shadow: [{{target: wordy, sample: 1.0}}]
- target: wordy
"""


@pytest.mark.parametrize("through", ["stream", "shadow"])
def test_a_gate_budget_is_charged_what_a_stream_was_billed_not_its_estimate(sim_url: str, through: str) -> None:
    """A stream whose upstream reported no usage (and one cut short, or a shadow's call) left the gate charged its
    admission estimate: $0.01 of a $0.20 answer, and a $0.05-a-minute model took request after request."""
    with serving(_Wordy) as upstream:
        sink = RecordingSink()
        with live_gateway(WORDY.format(url=upstream.url), sim_url, telemetry=sink) as live:
            assert live.gateway is not None
            body = {"model": "laneway", "stream": True, "max_tokens": 10,
                    "messages": [{"role": "user", "content": "tell me"}]}
            if through == "shadow":
                body["metadata"] = {"to": "copied"}
            request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(body).encode())
            with urllib.request.urlopen(request, timeout=30) as response:
                assert b"data: [DONE]" in response.read()
            deadline = time.monotonic() + 10
            while not any(e.model == "wordy" for e in sink.exchanges):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            billed = next(e.cost_usd for e in sink.exchanges if e.model == "wordy")
            gate = live.gateway.runtime.gates["wordy"]
            assert gate.dollars is not None and gate.dollars.level is not None
            left = gate.dollars.level
            status, _ = post(live.url, {})
    assert billed > 0.15  # 200 words at $1,000 per million tokens
    assert left < 0.05 - 0.15  # in debt by what the answer cost, not by its estimate
    assert status == 429  # the next request waits for the budget, past its queue time


async def test_a_ticket_billed_after_it_gave_its_slot_back_corrects_the_budgets_by_the_difference() -> None:
    """A stream cut short gives its slot back as it stops, before what it sent is billed."""
    from laneway.dispatch import Ticket

    gate = Gate("m", GatePolicy(usd_per_minute=1.0, tokens_per_minute=10_000))
    ticket = Ticket(gate)
    ticket.estimate = (100, 0.01)
    await gate.admit(1, *ticket.estimate, asyncio.get_running_loop().time() + 1)
    ticket.admitted = True
    ticket.release()  # cut: released at its estimate
    assert gate.in_flight == 0 and gate.dollars is not None and gate.tokens is not None
    assert gate.dollars.level == pytest.approx(0.99, abs=1e-3)
    ticket.bill(2_100, 0.21)  # what it had sent by then
    assert gate.dollars.level == pytest.approx(0.79, abs=1e-3) and gate.tokens.level == pytest.approx(7_900, abs=5)
    ticket.bill(2_100, 0.21)  # billed again the same: nothing more
    assert gate.dollars.level == pytest.approx(0.79, abs=1e-3)


class _Leases:
    """Replica-wide slots as `SharedState` keeps them: a lease per call, given back by id."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.ids = 0

    async def lease(self, model: str, limit: int) -> str | None:
        if len(self.held) >= limit:
            return None
        self.ids += 1
        self.held.add(f"lease-{self.ids}")
        return f"lease-{self.ids}"

    async def unlease(self, model: str, lease: str) -> None:
        self.held.discard(lease)

    async def take(self, *args: Any) -> float | None:
        return None


async def test_a_reload_that_drops_max_concurrency_still_gives_back_the_leases_of_the_calls_in_flight() -> None:
    """Leases were given back only while the policy leased: calls admitted before a reload that removed
    `max_concurrency` kept theirs for good, and once the limit was back every request was turned away."""
    shared = _Leases()
    gate = Gate("heavy", GatePolicy(max_concurrency=2, tokens_per_minute=100_000), shared)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    for _ in range(2):
        await gate.admit(1, 10, 0.0, loop.time() + 1)
    gate.adopt(GatePolicy(tokens_per_minute=100_000))
    gate.release(None)
    gate.release(None)
    await asyncio.sleep(0.01)  # the leases go back in tasks of their own
    assert shared.held == set()
    gate.adopt(GatePolicy(max_concurrency=2, tokens_per_minute=100_000))
    await gate.admit(1, 10, 0.0, loop.time() + 1)
    assert gate.in_flight == 1


def test_a_reload_moves_an_adaptive_gate_within_its_new_bounds() -> None:
    """A limit at its old ceiling takes the new one (it had not needed to come down), and one under a raised
    `min_concurrency` comes up to it; the budgets are the same buckets, so a request waiting on one sees the
    new rate."""
    adaptive = Adaptive(target_p95_ms=1000, min_concurrency=1)
    gate = Gate("m", GatePolicy(max_concurrency=4, adaptive=adaptive, tokens_per_minute=60_000))
    tokens = gate.tokens
    gate.adopt(GatePolicy(max_concurrency=32, adaptive=adaptive, tokens_per_minute=120_000))
    assert gate.limit == 32 and gate.tokens is tokens and tokens is not None and tokens.per_minute == 120_000
    gate.limit = 3  # where the adaptive steps brought it
    gate.adopt(GatePolicy(max_concurrency=32, adaptive=Adaptive(target_p95_ms=1000, min_concurrency=8)))
    assert gate.limit == 8
    gate.adopt(GatePolicy(max_concurrency=6, adaptive=Adaptive(target_p95_ms=1000, min_concurrency=1)))
    assert gate.limit == 6
