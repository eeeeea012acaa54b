"""What `laneway loadtest` is built on: its latency histograms, its Poisson arrivals, and the payload files it reads."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest

from laneway.errors import ConfigError
from laneway.loadtest import (
    RELATIVE_ERROR,
    LatencyHistogram,
    load_payloads,
    poisson_arrivals,
)
from laneway.loadtest._histogram import bucket_bounds, bucket_of


def _exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_histogram_quantiles_are_within_the_stated_relative_error(seed: int) -> None:
    draw = random.Random(seed)
    values = [draw.lognormvariate(-6, 1.2) for _ in range(20_000)]
    values += [draw.uniform(0, 2e-6) for _ in range(50)]
    histogram = LatencyHistogram()
    histogram.record_all(values)
    for q in (0.001, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = _exact(values, q)
        assert abs(histogram.quantile(q) - exact) <= exact * RELATIVE_ERROR + 1e-9, q
    assert histogram.count == len(values)
    assert histogram.max == pytest.approx(max(values), abs=1e-9)
    assert histogram.min == pytest.approx(min(values), abs=1e-9)
    assert histogram.mean == pytest.approx(statistics.fmean(values), rel=1e-6)


def test_every_value_falls_inside_its_bucket_and_buckets_are_narrow() -> None:
    draw = random.Random(7)
    for value in [0, 1, 2047, 2048, 2049, 4095, 4096, *(draw.randrange(1, 10**12) for _ in range(5000))]:
        low, high = bucket_bounds(bucket_of(value))
        assert low <= value < high
        assert high - low <= max(1, low * 2 * RELATIVE_ERROR)


def test_merged_histograms_equal_one_histogram_of_all_values() -> None:
    draw = random.Random(11)
    first, second = [draw.expovariate(100) for _ in range(3000)], [draw.expovariate(10) for _ in range(3000)]
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    a.record_all(first)
    b.record_all(second)
    both.record_all(first + second)
    a.merge(b)
    assert [a.quantile(q) for q in (0.5, 0.9, 0.99)] == [both.quantile(q) for q in (0.5, 0.9, 0.99)]
    assert (a.count, a.max, a.min) == (both.count, both.max, both.min)


def test_an_empty_histogram_reports_zero() -> None:
    assert LatencyHistogram().quantile(0.99) == 0.0


def test_poisson_arrivals_have_exponential_gaps_at_the_asked_rate() -> None:
    rate = 250.0
    schedule = poisson_arrivals(rate, seed=5)
    offsets = [next(schedule) for _ in range(50_000)]
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    assert all(gap > 0 for gap in gaps)
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, abs=0.05)  # exponential: CV = 1
    # Counts per 100 ms window are Poisson: variance equals the mean.
    windows = [0] * int(offsets[-1] / 0.1)
    for at in offsets:
        if int(at / 0.1) < len(windows):
            windows[int(at / 0.1)] += 1
    assert statistics.fmean(windows) == pytest.approx(rate * 0.1, rel=0.05)
    assert statistics.pvariance(windows) / statistics.fmean(windows) == pytest.approx(1.0, abs=0.15)


def test_poisson_arrivals_repeat_with_a_seed_and_refuse_a_bad_rate() -> None:
    a, b = poisson_arrivals(10, seed=3), poisson_arrivals(10, seed=3)
    assert [next(a) for _ in range(5)] == [next(b) for _ in range(5)]
    with pytest.raises(ValueError, match="positive"):
        next(poisson_arrivals(0))


def test_conversations_are_replayed_turn_by_turn_with_their_signals(tmp_path: Path) -> None:
    line = {"conversation": "c-9", "signals": {"priority": "high", "channel": "email"},
            "params": {"max_tokens": 50},
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"},
                         {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": "two", "signals": {"escalation": True}}]}
    path = tmp_path / "p.jsonl"
    plain = {"messages": [{"role": "user", "content": "x"}]}
    path.write_text(json.dumps(line) + "\n\n" + json.dumps(plain) + "\n")
    payloads = load_payloads(path, model="table")
    assert [len(p.body["messages"]) for p in payloads] == [2, 4, 1]
    first, second, replayed = payloads
    assert first.body["metadata"] == {"priority": "high", "channel": "email", "conversation_id": "c-9"}
    assert second.body["metadata"]["escalation"] is True
    assert all("signals" not in m for m in second.body["messages"])
    assert first.body["max_tokens"] == 50 and first.body["model"] == "table"
    assert (first.conversation, replayed.conversation) == ("c-9", None)
    assert replayed.body == {"model": "table", **plain}


def test_a_conversations_params_metadata_joins_its_signals_and_a_null_model_takes_the_default(
        tmp_path: Path) -> None:
    line = {"conversation": "c-9", "model": None, "signals": {"priority": "high"},
            "params": {"metadata": {"tier": "gold", "priority": "low"}},
            "messages": [{"role": "user", "content": "one"}]}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(line) + "\n" + json.dumps({"model": None, "messages": []}) + "\n")
    conversation, plain = load_payloads(path, model="table")
    assert conversation.body["metadata"] == {"tier": "gold", "priority": "high", "conversation_id": "c-9"}
    assert conversation.body["model"] == plain.body["model"] == "table"


@pytest.mark.parametrize(("line", "words"), [
    ({"conversation": "c", "messages": [{"role": "user", "content": "x", "signals": "high"}]},
     r"p\.jsonl:1\.messages\[0\]\.signals: must be an object"),
    ({"conversation": "c", "messages": [{"role": "system", "content": "x"}]},
     r"p\.jsonl:1\.messages: has no `user` message"),
    ({"conversation": "c", "params": {"metadata": "gold"}, "messages": [{"role": "user", "content": "x"}]},
     r"p\.jsonl:1\.params\.metadata: must be an object"),
    ({"conversation": None, "messages": [{"role": "user", "content": "x"}]},  # was replayed as conversation "None"
     r"p\.jsonl:1\.conversation: must be the conversation's id \(text or a number\), got null"),
])
def test_a_conversation_in_the_wrong_shape_is_named(tmp_path: Path, line: dict[str, object], words: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ConfigError, match=words):
        load_payloads(path)


def test_a_bad_payload_line_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\n{"nope": 1}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2"):
        load_payloads(path)
    # U+2028 and U+0085 are valid inside a JSON string (`json.dumps(..., ensure_ascii=False)` writes them)
    good = '{"messages": [{"role": "user", "content": "a\u2028b\u0085c"}]}'
    path.write_text(f"{good}\n{good}\n{{bad\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.jsonl:3"):
        load_payloads(path)
    path.write_text(f"{good}\n", encoding="utf-8")
    assert load_payloads(path)[0].body["messages"][0]["content"] == "a\u2028b\u0085c"
