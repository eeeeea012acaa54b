"""Cassettes: for prompts it knows, the simulated fleet answers with recorded real outputs, and a
cascade's decisions can be scored against the recordings' real correctness."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _live import RecordingSink, live_gateway
from laneway.sim._cassettes import default_cassette_path, load_cassette, normalise

CASSETTE = load_cassette(default_cassette_path() or Path("missing"))
PROMPTS = sorted(CASSETTE)[:60]


def ask(url: str, prompt: str, model: str = "laneway") -> tuple[dict[str, str], str]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1000}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        return dict(response.headers), json.loads(response.read())["choices"][0]["message"]["content"]


def test_known_prompts_get_the_recorded_real_answers(sim_url: str) -> None:
    assert len(CASSETTE) == 1319
    prompt = PROMPTS[0]
    with live_gateway("routes:\n- target: gpt-5\n  fallbacks: [gpt-5-mini]\n", sim_url) as live:
        _, strong = ask(live.url, prompt, "gpt-5")
        _, weak = ask(live.url, prompt, "gpt-5-mini")
    assert normalise(strong) == normalise(CASSETTE[prompt]["strong"].text)
    assert normalise(weak) == normalise(CASSETTE[prompt]["weak"].text)


def test_cascade_accepts_mostly_correct_answers_on_real_outputs(sim_url: str) -> None:
    text = """
routes:
- target: gpt-5-mini
  cascade: {confidence: 0.5, source: logprobs, escalate_to: gpt-5}
"""
    sink = RecordingSink()
    with live_gateway(text, sim_url, telemetry=sink) as live, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: (p, ask(live.url, p)[0]), PROMPTS))
    accepted = [p for p, headers in answers if headers["x-laneway-lane"] == "primary"]
    escalated = [p for p, headers in answers if headers["x-laneway-lane"] == "cascade"]
    weak_right = {p for p in PROMPTS if CASSETTE[p]["weak"].correct}
    assert accepted and escalated
    precision = sum(p in weak_right for p in accepted) / len(accepted)
    assert precision > len(weak_right) / len(PROMPTS)  # better than always trusting the weak model
    assert sum(p not in weak_right for p in escalated) > sum(p in weak_right for p in escalated)
