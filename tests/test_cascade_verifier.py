"""A cascade's verifier is a model like any other: its call keeps to the verifier's gate, and an answer that
reports no usage is counted, not free."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from _live import RecordingSink, live_gateway
from _loopback import Handler, completion_body, serving
from test_lanes import send


class _Grader(Handler):
    """Grades every answer 0.9 after 0.3 s, with usage or none (`/bare`); counts the calls it serves at once."""

    lock = threading.Lock()
    now: ClassVar[list[int]] = [0]
    most: ClassVar[list[int]] = [0]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        with self.lock:
            self.now[0] += 1
            self.most[0] = max(self.most[0], self.now[0])
        time.sleep(0.3)
        with self.lock:
            self.now[0] -= 1
        usage = {} if self.path.startswith("/bare") else {
            "usage": {"prompt_tokens": 50, "completion_tokens": 2, "total_tokens": 52}}
        message = {"role": "assistant", "content": "0.9"}
        self.send(completion_body("grader", {"index": 0, "message": message, "finish_reason": "stop"}, **usage),
                  "application/json")


def _config(base: str, gate: str = "") -> str:
    return f"""
models:
  grader:
    provider: openai
    base_url: "{base}/v1"
    model: grader
    price: {{input_per_mtok: 10, output_per_mtok: 10}}{gate}
routes:
- target: gpt-5-mini
  deadline_ms: 20000
  cascade: {{confidence: 0.5, source: verifier, verifier: grader, escalate_to: gpt-5}}
"""


def test_the_verifiers_calls_keep_to_its_gate(sim_url: str) -> None:
    """They went round it: six cascaded requests at once put six grader calls in flight behind a gate of one."""
    _Grader.most[0] = 0
    with serving(_Grader) as upstream:
        base = upstream.url.removesuffix("/v1")
        gate = "\n    gate: {max_concurrency: 1, queue_timeout_ms: 8000}"
        sink = RecordingSink()
        with live_gateway(_config(base, gate), sim_url, telemetry=sink) as live, ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: send(live, f"where is my refund {i}?"), range(6)))
    assert _Grader.most[0] == 1
    graded = [a for e in sink.exchanges for a in e.attempts if a.lane == "verifier"]
    assert len(graded) == 6 and all(a.outcome == "ok" for a in graded)
    # Each call's latency is the grader's 0.3 s, not its wait in the queue too (0.3, 0.6, ... 1.8 s): an adaptive
    # gate read the queue as the model's latency, and brought its limit down to 1. The waits are counted apart.
    assert max(a.latency_ms for a in graded) < 1000
    waits = [seconds for model, seconds in sink.queue_waits if model == "grader"]
    assert len(waits) == 6 and max(waits) > 1.0
    assert all(headers["x-laneway-model"] == "gpt-5-mini" for headers, _ in answers)  # graded 0.9: kept


def test_a_verifier_that_reports_no_usage_is_billed_what_it_was_sent_and_said(sim_url: str) -> None:
    with serving(_Grader) as upstream:
        base = upstream.url.removesuffix("/v1") + "/bare"
        sink = RecordingSink()
        with live_gateway(_config(base), sim_url, telemetry=sink) as live:
            headers, _ = send(live, "where is my refund?")
    exchange = sink.by_id(headers["x-request-id"])
    graded = [a for a in exchange.attempts if a.lane == "verifier"]
    assert len(graded) == 1 and graded[0].prompt_tokens > 0 and graded[0].completion_tokens > 0
    assert graded[0].cost_usd > 0 and exchange.cost_usd >= graded[0].cost_usd
