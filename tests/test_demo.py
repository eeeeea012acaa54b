"""`laneway demo`: figure functions, traces, the two architectures, and a short real replay."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from laneway.cli import main
from laneway.errors import ConfigError
from laneway.replay import (
    DemoSettings,
    Phase,
    Record,
    _cli,
    add_commands,
    architecture_config,
    arrivals,
    cost_per_conversation,
    default_trace_path,
    escalation_throughput,
    figures,
    load_trace,
    percentile,
    schedule,
    timeouts,
    traffic_share,
)
from laneway.replay._table import percent
from laneway.routing import decide
from laneway.signals import Signals

TIMEOUT = "model_inference_deadline_exceeded"


def record(conversation: str = "c1", *, model: str | None = "m", outcome: str = "ok", cost: float = 0.0,
           latency: float = 100.0, escalation: bool = False, phase: str = "normal") -> Record:
    return Record(phase, 0.0, conversation, "chat", escalation, latency, model, "primary", "r", outcome, cost)


# --- figures ------------------------------------------------------------------------------------

def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile(list(range(1, 101)), 50) == pytest.approx(50.5)
    assert percentile([4.0, 1.0, 3.0, 2.0], 95) == pytest.approx(3.85)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 95) == 0.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_traffic_share_counts_failed_requests_under_the_model_tried() -> None:
    shares = traffic_share([record(model="a"), record(model="a"), record(model="b", outcome=TIMEOUT),
                            record(model=None, outcome="no_route")])
    assert shares == {"a": 0.5, "b": 0.25, "none": 0.25}
    assert list(shares) == ["a", "b", "none"]


def test_cost_per_conversation_divides_by_distinct_conversations() -> None:
    records = [record("c1", cost=0.1), record("c1", cost=0.2), record("c2", cost=0.3)]
    assert cost_per_conversation(records) == pytest.approx(0.3)
    assert cost_per_conversation([]) == 0.0


def test_escalation_throughput_counts_escalations_answered_ok() -> None:
    records = [record(escalation=True), record(escalation=True, outcome=TIMEOUT), record(escalation=True),
               record(escalation=False)]
    throughput = escalation_throughput(records, duration_s=30.0)
    assert (throughput.offered, throughput.ok) == (3, 2)
    assert throughput.ok_per_min == pytest.approx(4.0)
    assert throughput.offered_per_min == pytest.approx(6.0)
    assert throughput.ok_ratio == pytest.approx(2 / 3)


def test_figures_count_timeouts_in_latency_and_errors() -> None:
    records = [record(latency=float(ms)) for ms in range(100, 1000, 10)] + [
        record("c9", latency=5000.0, outcome=TIMEOUT) for _ in range(10)]
    fig = figures(records, duration_s=60.0)
    assert fig.requests == 100
    assert fig.timeouts == timeouts(records) == 10
    assert fig.errors == 10
    assert fig.p99_ms == 5000.0
    assert fig.p50_ms == pytest.approx(595.0)
    assert fig.conversations == 2
    body = fig.to_json()
    assert body["outcomes"] == {"ok": 90, TIMEOUT: 10}
    assert body["escalation_throughput"]["ok_ratio"] is None  # none was offered: no share to show
    assert percent(fig.escalation.ok_ratio) == "-"


def test_an_answer_is_rated_by_the_fleets_quality_for_the_model_that_gave_it() -> None:
    """The demo's stand-in for accuracy: the fleet's own rule, per model; a model the fleet has not is never
    rated good."""
    from laneway.replay._driver import rated_good
    from laneway.sim import is_good, load_fleet

    fleet = load_fleet()
    texts = [f"answer number {i}" for i in range(400)]
    for model in ("heavy-foundation", "gemini-2.5-flash-lite"):
        rated = [rated_good(model, text) for text in texts]
        assert rated == [is_good(fleet[model], text) for text in texts]
        assert abs(sum(rated) / len(texts) - fleet[model].quality) < 0.06
    assert not any(rated_good(model, "answer") for model in ("not-in-the-fleet", None))


def test_arrivals_offer_exactly_the_expected_load_per_phase() -> None:
    phases = [Phase("normal", 6.0, 10.0), Phase("burst", 18.0, 5.0)]
    times = arrivals(phases, seed=3)
    normal = [t for t, p in times if p == "normal"]
    burst = [t for t, p in times if p == "burst"]
    assert (len(normal), len(burst)) == (60, 90)
    assert all(0 <= t < 10 for t in normal) and all(10 <= t < 15 for t in burst)
    assert [t for t, _ in times] == sorted(t for t, _ in times)
    assert arrivals(phases, seed=3) == times
    assert arrivals(phases, seed=4) != times


# --- traces -------------------------------------------------------------------------------------

def test_trace_holds_every_kind_and_long_dialogs_grow_turn_by_turn() -> None:
    trace = load_trace()
    kinds = {c.kind for c in trace.conversations}
    assert kinds == {"chat", "email", "escalation", "long"}
    for conversation in trace.of_kind("long"):
        lengths = [t.upto for t in conversation.turns]
        assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)
        assert sum(m["role"] in ("user", "assistant") for m in conversation.messages) > 8
    for conversation in trace.conversations:
        for turn in conversation.turns:
            assert conversation.messages[turn.upto - 1]["role"] == "user"
    assert all(c.channel == "email" for c in trace.of_kind("email"))
    assert all(t.escalation for c in trace.of_kind("escalation") for t in c.turns)


def test_schedule_is_deterministic_and_has_the_case_studys_mix() -> None:
    trace = load_trace()
    stream = schedule(trace, seed=5)
    requests = [next(stream) for _ in range(3000)]
    again = schedule(trace, seed=5)
    assert [r.conversation_id for r in requests[:200]] == [next(again).conversation_id for _ in range(200)]
    seen: dict[str, int] = {}
    for request in requests:
        size = len(request.messages)
        assert size > seen.get(request.conversation_id, 0)  # a conversation's turns come in order
        seen[request.conversation_id] = size
    dialog = sum(1 for r in requests if sum(m["role"] in ("user", "assistant") for m in r.messages) > 8)
    escalated = sum(r.escalation for r in requests)
    email = sum(r.metadata["channel"] == "email" for r in requests)
    assert 0.01 <= escalated / len(requests) <= 0.06
    assert 0.06 <= (dialog + escalated) / len(requests) <= 0.12
    assert 0.08 <= email / len(requests) <= 0.18


def test_trace_errors_say_how_to_fix_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"build_traces\.py"):
        load_trace(tmp_path / "missing.json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="laneway-traces/1"):
        load_trace(wrong)


# --- the two architectures ---------------------------------------------------------------------

def test_before_sends_everything_to_the_heavy_model_without_a_context_check() -> None:
    before = architecture_config("before")
    assert set(before.models) == {"heavy-foundation"}
    assert before.models["heavy-foundation"].context_window > 8192  # the window the old pipeline believed
    for signals in (Signals([], escalation=True), Signals([], channel="email"), Signals([])):
        decision = decide(before, "laneway", "/v1/chat/completions", signals)
        assert decision.lanes == (("primary", "heavy-foundation"),)


@pytest.mark.parametrize(("signals", "target"), [
    (Signals([{"role": "user", "content": "hi"}]), "gemini-2.5-flash-lite"),
    (Signals([{"role": "user", "content": "hi"}], metadata={"topic": "billing"}), "claude-sonnet-37"),
    (Signals([{"role": "user", "content": "hi"}], channel="email"), "gpt-5-mini"),
    (Signals([{"role": "user", "content": "hi"}], escalation=True), "heavy-foundation"),
    (Signals([{"role": "user", "content": "hi"}] * 9), "heavy-foundation"),
])
def test_after_routes_by_signal(signals: Signals, target: str) -> None:
    after = architecture_config("after")
    decision = decide(after, "laneway", "/v1/chat/completions", signals)
    assert decision.lanes[0] == ("primary", target)
    assert after.models["heavy-foundation"].context_window == 8192
    if target == "heavy-foundation":
        assert decision.route is not None and decision.route.long_context == "gpt-5"


def test_unknown_architecture_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="`before` or `after`"):
        architecture_config("sideways")


# --- a short real replay through the command ---------------------------------------------------

def test_demo_command_beats_the_heavy_model_under_burst(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(_cli, "QUICK", {"normal_s": 3.0, "burst_s": 8.0})
    parser = argparse.ArgumentParser(prog="laneway")
    add_commands(parser.add_subparsers())
    out_json, out_html = tmp_path / "demo.json", tmp_path / "demo.html"
    args = parser.parse_args(["demo", "--quick", "--json", str(out_json), "--html", str(out_html),
                              "--seed", "7"])
    assert args.func(args) == 0

    printed = capsys.readouterr()
    assert "SIMULATED" in printed.out and "case study" in printed.out
    assert "SIMULATED replay" in printed.err
    result = json.loads(out_json.read_text())
    assert set(result) == {"before", "after"}
    for fig in result.values():
        for key in ("p50_ms", "p95_ms", "p99_ms", "cost_per_conversation_usd", "traffic_share", "timeouts",
                    "escalation_throughput"):
            assert key in fig
        assert fig["simulated"] is True
        assert sum(fig["traffic_share"].values()) == pytest.approx(1.0, abs=1e-3)
    before, after = result["before"], result["after"]
    for fig in (before, after):  # answers rated by the fleet's quality model; a failed request has none
        assert fig["good_answer_share"] == pytest.approx(fig["good_answers"] / fig["requests"], abs=1e-4)
        assert fig["good_answers"] <= fig["outcomes"].get("ok", 0)
    assert "good answers (simulated quality)" in printed.out and "any traffic moved to a cheaper" in printed.out
    assert before["traffic_share"] == {"heavy-foundation": 1.0}
    assert after["phases"]["burst"]["p95_ms"] < before["phases"]["burst"]["p95_ms"]
    assert after["cost_per_conversation_usd"] < before["cost_per_conversation_usd"]
    assert 0.04 <= after["traffic_share"].get("heavy-foundation", 0.0) <= 0.15
    assert after["efficient_share"] >= 0.7
    assert after["timeouts"] == 0
    page = out_html.read_text()
    assert "<svg" in page and "SIMULATED" in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


@pytest.mark.parametrize("place", ["in a missing directory", "a directory", "where nothing can be written"])
@pytest.mark.parametrize("option", ["--json", "--html"])
def test_an_unwritable_output_path_is_refused_before_the_replay(
    option: str, place: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def replay(*_: object) -> None:
        raise AssertionError("the replay ran")

    monkeypatch.setattr(_cli, "run", replay)
    bad = {"in a missing directory": tmp_path / "missing" / "demo", "a directory": tmp_path,
           "where nothing can be written": Path("/proc/laneway-demo")}[place]
    other = "--html" if option == "--json" else "--json"
    assert main(["demo", "--quick", other, str(tmp_path / "other"), option, str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"laneway: `{option} {bad}`: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_settings_for_quick_and_full_runs() -> None:
    parser = argparse.ArgumentParser(prog="laneway")
    add_commands(parser.add_subparsers())
    quick = _cli.settings_for(parser.parse_args(["demo", "--quick", "--rate", "4"]))
    full = _cli.settings_for(parser.parse_args(["demo"]))
    assert quick.rate == 4.0 and quick.normal_s + quick.burst_s < full.normal_s + full.burst_s
    assert [p.rate for p in full.phases] == [full.rate, full.rate * 3]
    assert isinstance(full, DemoSettings)
    for rate in ("0", "1001", "1e9", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args(["demo", "--rate", rate])
    assert _cli.settings_for(parser.parse_args(["demo", "--rate", "1000"])).rate == 1000.0


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_the_fleet_cannot_take_is_refused_before_anything_starts(
    seed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refusal:
        main(["demo", "--quick", "--seed", seed])
    assert refusal.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line == f"laneway demo: error: argument --seed: must be a whole number from 0 to 4294967295, got {seed}"


def test_an_output_that_fails_after_the_replay_costs_neither_the_table_nor_the_other_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cli, "run", lambda *_: "result")
    monkeypatch.setattr(_cli, "render_table", lambda result: f"table of the {result}")
    monkeypatch.setattr(_cli, "render_html", lambda result: f"<p>{result}</p>")
    monkeypatch.setattr(_cli, "result_json", lambda result, quick: {"figures": result})
    page = tmp_path / "demo.html"
    assert main(["demo", "--quick", "--html", str(page), "--json", "/dev/full"]) == 2  # the disk is full
    out, err = capsys.readouterr()
    assert "table of the result" in out and page.read_text() == "<p>result</p>"
    assert err == "laneway demo: cannot write `--json /dev/full`: No space left on device; choose another path\n"


def test_an_output_path_that_is_the_trace_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.json"
    trace.write_text("{}")
    assert main(["demo", "--quick", "--traces", str(trace), "--json", str(trace)]) == 2
    assert f"`--json {trace}` is the file of `--traces {trace}` too" in capsys.readouterr().err
    assert trace.read_text() == "{}"


def test_the_default_trace_file_is_never_an_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "support.json"
    trace.write_text("{}")
    monkeypatch.setattr("laneway.replay._cli.default_trace_path", lambda: trace)
    for option in ("--json", "--html"):
        assert main(["demo", "--quick", option, str(trace)]) == 2
        assert f"`{option} {trace}` is the file of `--traces {trace}` too" in capsys.readouterr().err
    assert trace.read_text() == "{}"


@pytest.mark.parametrize(("argv", "words"), [
    (["--json", ""], "argument --json: is empty; name a file"),
    (["--html", ""], "argument --html: is empty; name a file"),
    (["--rate", "0.01"], "`--rate 0.01` offers no request in the normal phase (5 s); give more than 0.1 requests"),
])
def test_a_demo_that_could_not_say_anything_is_refused_before_it_starts(
        argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with contextlib.suppress(SystemExit):
        assert main(["demo", "--quick", *argv]) == 2
    assert words in capsys.readouterr().err


def test_a_trace_whose_mix_weighs_nothing_is_refused(tmp_path: Path) -> None:
    trace = json.loads(default_trace_path().read_text("utf-8"))
    trace["mix"] = {}
    broken = tmp_path / "nomix.json"
    broken.write_text(json.dumps(trace))
    with pytest.raises(ConfigError, match="no kind has a weight above 0"):
        load_trace(broken)


def test_the_fleets_end_with_a_demo_that_was_killed(tmp_path: Path) -> None:
    script = ("import sys, time; from laneway.replay._fleet import fleet_processes\n"
              "with fleet_processes(7, 2) as urls:\n"
              "    print(' '.join(urls), flush=True)\n"
              "    time.sleep(60)\n")
    demo = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert demo.stdout is not None
    urls = demo.stdout.readline().split()
    assert len(urls) == 2
    demo.kill()  # no chance to stop its children
    demo.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_listening(url) for url in urls):
        time.sleep(0.2)
    assert not any(_listening(url) for url in urls)


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True
