from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import pty
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from _loopback import Handler as UpstreamHandler
from _loopback import LoopbackUpstream
from laneway.cli import main
from laneway.loadtest import (
    LoadPlan,
    Payload,
    render_html,
    render_text,
    run_load,
    summarize,
    write_csv,
    write_json,
)
from laneway.loadtest._checks import unreachable

# --- histogram -------------------------------------------------------------------------------


# --- Poisson arrivals ------------------------------------------------------------------------


# --- payloads --------------------------------------------------------------------------------


# --- driving a loopback server ---------------------------------------------------------------

_MODELS = {"alpha": ("fast", "primary", "0.00010000"), "beta": ("mid", "fallback", "0.00100000")}


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    text = body["messages"][-1]["content"]
    if text == "fail":
        return web.json_response({"error": {"code": "upstream_unavailable", "message": "down"}}, status=502)
    if text == "slow":
        await asyncio.sleep(0.02)
    model, lane, cost = _MODELS.get(text, ("fast", "primary", "0"))
    headers = {"x-laneway-model": model, "x-laneway-lane": lane}
    if not body.get("stream"):
        return web.json_response({"choices": []}, headers={**headers, "x-laneway-cost-usd": cost})
    response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
    await response.prepare(request)
    for word in ("a", "b", "c"):
        await response.write(b'data: {"choices":[{"delta":{"content":"' + word.encode() + b'"}}]}\n\n')
        await asyncio.sleep(0.005)
    if text != "cut":
        await response.write(f": laneway cost_usd={cost}\n\ndata: [DONE]\n\n".encode())
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def _serving(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        await runner.cleanup()


@pytest.fixture
async def endpoint() -> AsyncIterator[str]:
    async with _serving(_chat) as url:
        yield url


def _payloads(*texts: str) -> list[Payload]:
    return [Payload({"model": "laneway", "messages": [{"role": "user", "content": t}]}) for t in texts]


async def test_closed_loop_counts_errors_by_kind_and_splits_by_model_header(endpoint: str) -> None:
    plan = LoadPlan(url=endpoint, concurrency=4, requests=40)
    tally = await run_load(plan, _payloads("alpha", "beta", "fail", "alpha"))
    assert tally.all.requests == 40
    assert dict(tally.errors) == {"HTTP 502 upstream_unavailable": 10}
    assert tally.error_samples == {"HTTP 502 upstream_unavailable": "down"}  # what the answer said
    assert "error HTTP 502 upstream_unavailable: 10 (first: down)" in render_text(summarize(tally))
    groups = {key: (g.requests, g.errors) for key, g in tally.by_model.items()}
    assert groups == {("fast", "primary"): (20, 0), ("mid", "fallback"): (10, 0), ("-", "-"): (10, 10)}
    assert tally.all.cost_usd == pytest.approx(20 * 0.0001 + 10 * 0.001)
    assert tally.all.latency.count == 30 and tally.all.ttft.count == 0


async def test_streams_report_ttft_chunk_gaps_cost_and_cut_streams(endpoint: str) -> None:
    plan = LoadPlan(url=endpoint, concurrency=2, requests=8, stream=True)
    tally = await run_load(plan, _payloads("beta", "cut"))
    assert dict(tally.errors) == {"stream cut": 4}
    assert tally.all.ttft.count == 4
    assert tally.all.ttft.max < tally.all.latency.max
    assert tally.all.cost_usd == pytest.approx(4 * 0.001)
    assert tally.chunk_gaps.count == 4 * 2  # between the three content events of each whole stream


async def _stream_of(events: bytes) -> AsyncIterator[str]:
    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for part in events.split(b"|"):
            await response.write(part)
            await asyncio.sleep(0.03)
        return response

    async with _serving(chat) as url:
        yield url


_CONTENT = b'data: {"choices":[{"delta":{"content":"hi"}}]}'


@pytest.mark.parametrize("events", [
    _CONTENT + b"\r\n\r\n|data: [DONE]\r\n\r\n",  # CRLF line ends, as the SSE standard allows
    _CONTENT + b"\n\n|data:[DONE]\n\n",  # no space after the colon
    _CONTENT + b"\r\n\r|\ndata: [DONE]\r\n\r\n",  # a CRLF split between two reads
], ids=["crlf", "no-space", "split-crlf"])
async def test_streams_in_every_standard_spelling_are_read_whole(events: bytes) -> None:
    async with contextlib.asynccontextmanager(_stream_of)(events) as url:
        tally = await run_load(LoadPlan(url=url, requests=2, stream=True), _payloads("x"))
    assert tally.all.errors == 0 and tally.all.ttft.count == 2


@pytest.mark.parametrize(("events", "kind", "detail"), [
    # an error in the data of an event, as some servers send one mid-stream (the `openai` client raises it)
    (_CONTENT + b'\n\n|data: {"error": {"message": "upstream overloaded", "code": "overloaded"}}\n\n'
     b"|data: [DONE]\n\n", "stream error overloaded", "upstream overloaded"),
    (_CONTENT + b"\n\n|data: {not json\n\n|data: [DONE]\n\n", "stream bad event", "not JSON: {not json"),
    (_CONTENT + b"\n\n|event: error\ndata: upstream went away\n\n", "stream error", "upstream went away"),
], ids=["error-in-data", "not-json", "error-event-in-words"])
async def test_a_stream_that_carries_an_error_or_garbage_is_an_error(events: bytes, kind: str, detail: str) -> None:
    async with contextlib.asynccontextmanager(_stream_of)(events) as url:
        tally = await run_load(LoadPlan(url=url, requests=2, stream=True), _payloads("x"))
    assert dict(tally.errors) == {kind: 2} and tally.error_samples[kind] == detail


async def test_a_stream_whose_connection_breaks_is_cut() -> None:
    async def breaks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_CONTENT + b"\n\n")
        await asyncio.sleep(0.02)
        assert request.transport is not None
        request.transport.close()  # mid-way through a chunked body
        return response

    async with _serving(breaks) as url:
        tally = await run_load(LoadPlan(url=url, requests=3, stream=True), _payloads("x"))
    assert dict(tally.errors) == {"stream cut": 3}


@pytest.mark.parametrize(("answer", "kind", "detail"), [
    (web.Response(text="<html>Bad gateway page</html>", content_type="text/html"), "bad answer",
     "no chat completion (a JSON object with `choices`): <html>Bad gateway page</html>"),
    (web.Response(body=b""), "bad answer", "no chat completion (a JSON object with `choices`): an empty body"),
    (web.json_response({"error": {"code": "quota", "message": "over quota"}}), "answer error quota", "over quota"),
], ids=["html", "empty", "error-object"])
async def test_a_whole_answer_that_is_no_chat_completion_is_an_error(answer: web.Response, kind: str,
                                                                     detail: str) -> None:
    """Such answers under 400 counted as successes: a run against a proxy's error page passed."""
    async def odd(request: web.Request) -> web.StreamResponse:
        return answer

    async with _serving(odd) as url:
        tally = await run_load(LoadPlan(url=url, requests=1), _payloads("x"))
    assert dict(tally.errors) == {kind: 1} and tally.error_samples[kind] == detail


async def test_a_failure_after_the_answers_head_keeps_its_model_lane_and_cost() -> None:
    """A stream that stalled past `--timeout` was counted under no model, and said no answer had come."""
    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "x-laneway-model": "heavy",
                                               "x-laneway-lane": "primary", "x-laneway-cost-usd": "0.5"})
        await response.prepare(request)
        await response.write(_CONTENT + b"\n\n")
        await asyncio.sleep(1)
        return response

    async with _serving(stalls) as url:
        tally = await run_load(LoadPlan(url=url, requests=1, stream=True, timeout_s=0.3), _payloads("x"))
    assert dict(tally.errors) == {"timeout": 1}
    assert tally.error_samples["timeout"] == "the answer not whole within 0.3 s"
    assert {key: (g.requests, g.errors) for key, g in tally.by_model.items()} == {("heavy", "primary"): (1, 1)}


async def test_ttft_waits_for_output_not_for_a_keep_alive_or_a_role() -> None:
    role = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    events = b": keep-alive\n\n|" + role + b"|" + _CONTENT + b"\n\ndata: [DONE]\n\n"
    async with contextlib.asynccontextmanager(_stream_of)(events) as url:
        tally = await run_load(LoadPlan(url=url, requests=2, stream=True), _payloads("x"))
    assert tally.all.errors == 0
    # the content is written two pauses of 30 ms after the first bytes
    assert tally.all.ttft.min > 0.05 and tally.chunk_gaps.count == 0


async def test_a_streamed_request_answered_as_json_is_not_a_stream(endpoint: str) -> None:
    async def json_only(request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": []})

    async with _serving(json_only) as url:
        tally = await run_load(LoadPlan(url=url, requests=2, stream=True), _payloads("x"))
    assert dict(tally.errors) == {"not a stream": 2}


async def test_the_measured_run_goes_on_the_warm_up_connections(tmp_path: Path) -> None:
    peers: set[object] = set()

    async def chat(request: web.Request) -> web.StreamResponse:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"choices": []})

    async with _serving(chat) as url:
        run = await _loadtest("--url", url, "--concurrency", "2", "--warmup", "0.3", "--requests", "20",
                              "--json", str(tmp_path / "r.json"))
        _, err = await asyncio.wait_for(run.communicate(), 60)
    assert run.returncode == 0, err.decode()
    assert len(peers) == 2


async def test_a_body_that_asks_for_a_stream_is_read_as_a_stream(endpoint: str) -> None:
    streamed = Payload({"model": "laneway", "stream": True, "messages": [{"role": "user", "content": "beta"}]})
    plan = LoadPlan(url=endpoint, concurrency=2, requests=8)
    tally = await run_load(plan, [streamed, *_payloads("alpha")])
    assert tally.all.errors == 0
    assert tally.all.ttft.count == 4
    assert tally.all.cost_usd == pytest.approx(4 * 0.001 + 4 * 0.0001)
    assert tally.chunk_gaps.count >= 4 * 2
    assert summarize(tally)["all"]["ttft_ms"] is not None


async def test_open_loop_sends_the_asked_number_and_counts_queueing(endpoint: str) -> None:
    # Arrivals (200/s) outpace one connection serving 20 ms requests (50/s): latency from the due
    # time must grow well past the service time, as it does for real callers.
    plan = LoadPlan(url=endpoint, rate=200, requests=30, max_inflight=1, seed=4)
    tally = await run_load(plan, _payloads("slow"))
    assert tally.all.requests == 30 and tally.all.errors == 0
    assert tally.all.latency.max > 0.1
    assert tally.all.latency.quantile(0.1) < tally.all.latency.max / 2


async def test_an_open_loop_faster_than_the_client_can_send_is_bounded_says_so_and_stops_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind its schedule the sender never yielded: requests piled up without bound (1.9 GB), a stop was noticed
    20 s late, and "sent at" counted requests that had not left. A slow endpoint behind 4 connections stands
    for a load generator that cannot keep up."""
    from laneway.loadtest import _drive

    monkeypatch.setattr(_drive, "WAITING_MAX", 40)
    busy, peak = 0, 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        await asyncio.sleep(0.2)
        busy -= 1
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    stop = asyncio.Event()
    async with _serving(slow) as url:
        asyncio.get_running_loop().call_later(1.0, stop.set)
        began = asyncio.get_running_loop().time()
        tally = await run_load(LoadPlan(url=url, rate=5000, duration_s=5, seed=1, max_inflight=4),
                               _payloads("alpha"), stop=stop)
        took = asyncio.get_running_loop().time() - began
    summary = summarize(tally)
    assert took < 1.0 + _drive.DRAIN_S + 0.5 and tally.interrupted_s == pytest.approx(1.0, abs=0.1)
    assert peak <= 4 and 0 < tally.cancelled <= 4 + 40  # at the stop, no more were waiting than room for
    assert summary["sent_rps"] < summary["offered_rps"] / 10
    assert summary["start_lag_ms"]["p99"] > 100
    assert "warning: requests left the load generator up to" in render_text(summary)


async def test_a_request_waiting_for_one_of_max_inflight_connections_is_late_not_timed_out() -> None:
    """The timeout covered the wait for a connection: requests the endpoint answered in 0.5 s, or never saw,
    were reported as its timeouts ("no answer within 1 s")."""
    async def half_a_second(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    async with _serving(half_a_second) as url:
        tally = await run_load(LoadPlan(url=url, rate=10, requests=8, seed=5, max_inflight=1, timeout_s=1.0),
                               _payloads("alpha"))
    summary = summarize(tally)
    assert tally.all.requests == 8 and tally.all.errors == 0, dict(tally.errors)
    assert tally.all.latency.max > 1.5  # timed from when each was due: the queue in front of the one connection
    assert summary["start_lag_ms"]["max"] > 1000


async def test_the_timeline_has_every_second_of_the_run_those_with_no_answer_too() -> None:
    """Seconds in which nothing ended were left out: a stall did not show in the JSON or the plot."""
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.3)
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    async with _serving(slow) as url:
        tally = await run_load(LoadPlan(url=url, concurrency=1, requests=2), _payloads("alpha"))
    timeline = summarize(tally)["timeline"]
    assert [t["second"] for t in timeline] == [0, 1, 2]
    assert [t["requests"] for t in timeline] == [0, 1, 1] and timeline[0]["p50_ms"] is None


async def test_an_open_loop_never_sends_before_a_requests_due_time(endpoint: str) -> None:
    """Under uvloop, as the command runs, a timer can fire up to a millisecond early: a request sent then,
    timed from its due time, reported less than the server alone took (down to 0)."""
    import uvloop

    plan = LoadPlan(url=endpoint, rate=300, requests=150, seed=5)
    tally = await asyncio.to_thread(uvloop.run, run_load(plan, _payloads("slow")))
    assert tally.all.requests == 150 and tally.all.errors == 0
    assert tally.all.latency.min >= 0.020  # the server sleeps 20 ms before it answers


async def test_an_open_loop_reports_the_rate_it_sent_at_apart_from_the_answers_that_came_later() -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.json_response({"choices": []})

    async with _serving(slow) as url:
        tally = await run_load(LoadPlan(url=url, rate=40, duration_s=0.5, seed=3), _payloads("alpha"))
    summary = summarize(tally)
    assert tally.all.requests > 5 and summary["sending_s"] == pytest.approx(0.5, abs=0.01)
    assert summary["sent_rps"] == pytest.approx(tally.all.requests / 0.5, rel=0.03)
    assert summary["wall_s"] > 1.4 and summary["all"]["throughput_rps"] < summary["sent_rps"] / 2  # the wait counts
    assert summary["offered_rps"] == summary["sent_rps"]  # the load generator kept up
    assert (f"(offered at {summary['offered_rps']:.1f} req/s over 0.50 s, sent at {summary['sent_rps']:.1f})"
            in render_text(summary))
    closed = summarize(await run_load(LoadPlan(url=url.replace("/v1", "/v0"), concurrency=1, requests=1),
                                      _payloads("alpha")))
    assert closed["sent_rps"] is None and "sent at" not in render_text(closed)


async def test_a_refused_connection_is_its_own_error_kind() -> None:
    plan = LoadPlan(url="http://127.0.0.1:9/v1/chat/completions", concurrency=1, requests=3)
    tally = await run_load(plan, _payloads("alpha"))
    assert dict(tally.errors) == {"connect": 3}
    assert "127.0.0.1:9" in tally.error_samples["connect"]  # the client's own words, naming the address


# --- output shapes ---------------------------------------------------------------------------


async def test_json_csv_and_html_outputs_have_their_shape(endpoint: str, tmp_path: Path) -> None:
    plan = LoadPlan(url=endpoint, concurrency=2, requests=12)
    tally = await run_load(plan, _payloads("alpha", "beta", "fail"))
    summary = summarize(tally, {"mode": "closed"})
    write_json(summary, tmp_path / "r.json")
    write_csv(summary, tmp_path / "r.csv")
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data["all"]["latency_ms"]) == {"p50", "p90", "p95", "p99", "max", "mean", "min"}
    latency = data["all"]["latency_ms"]
    assert latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]
    assert data["errors"] == {"HTTP 502 upstream_unavailable": 4}
    assert sum(s["requests"] for s in data["timeline"]) == 12
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [(r["scope"], r["model"], r["lane"], r["requests"]) for r in rows] == [
        ("all", "", "", "12"), ("model", "-", "-", "4"), ("model", "fast", "primary", "4"),
        ("model", "mid", "fallback", "4")]
    page = render_html(summary)
    assert page.count("<svg") == 2 and "<script" not in page and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", "").replace(endpoint, "")


async def test_another_endpoint_has_no_model_rows_and_the_settings_say_how_to_run_it_again(tmp_path: Path) -> None:
    async def plain(request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": []})

    out = tmp_path / "r.json"
    async with _serving(plain) as url:
        run = await _loadtest("--url", url, "--requests", "3", "--seed", "7", "--timeout", "5",
                              "--header", "authorization: Bearer secret", "--quiet", "--json", str(out))
        _, err = await asyncio.wait_for(run.communicate(), 60)
    assert run.returncode == 0, err.decode()
    summary = json.loads(out.read_text())
    assert summary["models"] == []
    assert summary["settings"] == {
        "url": url, "payloads": None, "model": "laneway", "mode": "closed", "concurrency": 1, "rate": None,
        "duration_s": None, "requests": 3, "stream": False, "warmup_s": 0.0, "timeout_s": 5.0,
        "max_inflight": 4096, "seed": 7, "headers": ["authorization"]}
    assert "secret" not in out.read_text()


async def test_an_open_loop_without_a_seed_reports_the_one_it_drew(tmp_path: Path) -> None:
    async def plain(request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": []})

    outs = [tmp_path / "first.json", tmp_path / "again.json"]
    async with _serving(plain) as url:
        run = await _loadtest("--url", url, "--rate", "200", "--requests", "5", "--quiet", "--json", str(outs[0]))
        _, err = await asyncio.wait_for(run.communicate(), 60)
        assert run.returncode == 0, err.decode()
        seed = json.loads(outs[0].read_text())["settings"]["seed"]
        assert isinstance(seed, int)
        run = await _loadtest("--url", url, "--rate", "200", "--requests", "5", "--quiet", "--json", str(outs[1]),
                              "--seed", str(seed))  # the same arrivals again
        await asyncio.wait_for(run.communicate(), 60)
    assert json.loads(outs[1].read_text())["settings"] == json.loads(outs[0].read_text())["settings"]


async def test_no_more_clients_start_than_there_are_requests_to_send(tmp_path: Path) -> None:
    in_flight, most = 0, 0

    async def counted(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.json_response({"choices": []})

    out = tmp_path / "r.json"
    async with _serving(counted) as url:
        run = await _loadtest("--url", url, "--concurrency", "1000000", "--requests", "3", "--warmup", "0.2",
                              "--quiet", "--json", str(out))
        _, err = await asyncio.wait_for(run.communicate(), 60)
    assert run.returncode == 0, err.decode()
    summary = json.loads(out.read_text())
    assert summary["settings"]["concurrency"] == 3 and summary["all"]["requests"] == 3
    assert most <= 3


@pytest.mark.parametrize(("limit", "code"), [([], 1), (["--max-error-rate", "0.4"], 1),
                                              (["--max-error-rate", "0.5"], 0)])
async def test_the_exit_code_says_whether_errors_passed_the_allowed_share(
        endpoint: str, limit: list[str], code: int, tmp_path: Path) -> None:
    payloads = tmp_path / "p.jsonl"
    payloads.write_text("".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n"
                                for t in ("alpha", "fail")))
    run = await _loadtest("--url", endpoint, "--requests", "4", "--quiet", "--payloads", str(payloads), *limit)
    _, err = await asyncio.wait_for(run.communicate(), 60)
    assert run.returncode == code, err.decode()
    assert ("2 of 4 requests failed (50.0%), more than `--max-error-rate`" in err.decode()) is (code == 1)


async def test_rows_and_seconds_without_a_success_have_no_percentiles(endpoint: str, tmp_path: Path) -> None:
    mixed = summarize(await run_load(LoadPlan(url=endpoint, requests=4), _payloads("alpha", "fail")))
    text = render_text(mixed)
    failed_row = next(line.split() for line in text.splitlines() if line.split()[:2] == ["-", "-"])
    assert failed_row[2:6] == ["2", "2", "-", "-"]
    assert text.count("latency percentiles are of successful requests") == 1
    assert "latency percentiles are of successful requests; 2 failed" in text
    only_failures = summarize(await run_load(LoadPlan(url=endpoint, requests=3), _payloads("fail")))
    write_json(only_failures, tmp_path / "r.json")
    timeline = json.loads((tmp_path / "r.json").read_text())["timeline"]
    assert timeline and all(s["p50_ms"] is None and s["p99_ms"] is None for s in timeline)
    assert "(no successful requests)" in render_html(only_failures)


# --- the command -----------------------------------------------------------------------------


def _closed_port_url() -> tuple[str, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    return f"http://127.0.0.1:{port}/v1/chat/completions", port


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The last stderr line of a command line that argparse refuses."""
    with pytest.raises(SystemExit) as refusal:
        main(["loadtest", *args])
    assert refusal.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("option", ["--json", "--csv", "--html"])
@pytest.mark.parametrize("place", ["in a missing directory", "a directory", "where nothing can be written"])
def test_an_unwritable_output_path_is_refused_before_the_run(option: str, place: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = {"in a missing directory": tmp_path / "missing" / "report", "a directory": tmp_path,
           "where nothing can be written": Path("/proc/laneway-report")}[place]
    outputs = [arg for other in ("--json", "--csv", "--html") if other != option
               for arg in (other, str(tmp_path / other.strip("-")))]
    url, _ = _closed_port_url()
    assert main(["loadtest", "--url", url, "--requests", "1", *outputs, option, str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"laneway: `{option} {bad}`: ") and err.count("\n") == 1
    assert not any((tmp_path / name).exists() for name in ("json", "csv", "html"))


def test_an_output_that_is_an_input_or_another_output_is_refused_before_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payloads = tmp_path / "traffic.jsonl"
    payloads.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    url, _ = _closed_port_url()
    assert main(["loadtest", "--url", url, "--payloads", str(payloads), "--csv", str(payloads)]) == 2
    assert f"`--csv {payloads}` is the file of `--payloads {payloads}` too" in capsys.readouterr().err
    same = tmp_path / "figures"
    assert main(["loadtest", "--url", url, "--json", str(same), "--html", str(same)]) == 2
    assert f"`--html {same}` is the file of `--json {same}` too" in capsys.readouterr().err
    assert main(["loadtest", "--url", url, "--json", ""]) == 2
    assert "`--json` is empty" in capsys.readouterr().err
    assert payloads.read_text().startswith('{"messages"') and not same.exists()


class _Answers(UpstreamHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send(json.dumps({"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]}).encode(),
            "application/json")


def test_an_output_that_fails_after_the_run_costs_neither_the_summary_nor_the_other_outputs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = LoopbackUpstream(_Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = main(["loadtest", "--url", server.url + "/chat/completions", "--requests", "3", "--quiet",
                     "--json", "/dev/full", "--csv", str(tmp_path / "r.csv"), "--html", str(tmp_path / "r.html")])
    finally:
        server.shutdown()
        server.server_close()
    out, err = capsys.readouterr()
    assert code == 2 and "3 requests" in out
    assert err == "laneway loadtest: cannot write `--json /dev/full`: No space left on device; choose another path\n"
    assert (tmp_path / "r.csv").read_text().startswith("scope,") and "<svg" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("url", ["127.0.0.1:9301", "http://127.0.0.1:99999/v1/chat/completions",
                                 "http:///v1/chat/completions"])
def test_a_malformed_url_is_refused_before_anything_is_sent(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _refused(["--url", url, "--requests", "1"], capsys).startswith(
        f"laneway loadtest: error: argument --url: `{url}` ")


def test_a_port_where_nothing_listens_stops_the_command_before_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    url, port = _closed_port_url()
    assert main(["loadtest", "--url", url, "--requests", "1"]) == 2
    assert capsys.readouterr().err == (f"laneway: cannot connect to 127.0.0.1:{port}: connection refused; "
                                       "is the gateway running?\n")


def test_a_connection_nobody_answers_is_reported_once_the_connect_timeout_runs_out() -> None:
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Nothing accepts: once the accept queue is full the kernel leaves new handshakes unanswered.
        for _ in range(3):
            waiting = stack.enter_context(socket.socket())
            waiting.setblocking(False)
            waiting.connect_ex(("127.0.0.1", port))
        problem = unreachable(f"http://127.0.0.1:{port}/v1/chat/completions", timeout_s=0.3)
    assert problem == f"cannot connect to 127.0.0.1:{port}: no answer within 0.3 s; is the gateway running?"


@pytest.mark.parametrize(("option", "value"), [
    ("--duration", "nan"), ("--duration", "inf"), ("--rate", "nan"), ("--rate", "inf"), ("--timeout", "nan"),
    ("--warmup", "-2"), ("--warmup", "nan")])
def test_non_finite_and_negative_numbers_are_refused(option: str, value: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = _closed_port_url()
    line = _refused(["--url", url, "--requests", "1", option, value], capsys)
    assert line.startswith(f"laneway loadtest: error: argument {option}: must be ") and line.endswith(f"got {value}")


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--rate", "abc", "must be a positive number, got 'abc'"),
    ("--concurrency", "2.5", "must be a positive whole number, got '2.5'"),
    ("--max-error-rate", "2", "must be a share from 0 to 1, got 2"),
    ("--seed", "-1", "must be a whole number from 0 to 4294967295, got -1"),
    ("--seed", "1.5", "expected a whole number, got '1.5'"),
])
def test_a_number_that_does_not_parse_is_named_as_such(option: str, value: str, words: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = _closed_port_url()
    line = _refused(["--url", url, "--requests", "1", option, value], capsys)
    assert line == f"laneway loadtest: error: argument {option}: {words}"


def test_a_header_without_a_colon_says_what_a_header_looks_like(capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = _closed_port_url()
    line = _refused(["--url", url, "--requests", "1", "--header", "foo"], capsys)
    assert line.startswith("laneway loadtest: error: argument --header: `foo` is not `NAME: VALUE`")
    assert "routing config" not in line


async def _loadtest(*args: str, stderr: int = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "laneway", "loadtest", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=stderr)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
@pytest.mark.parametrize(("answers", "cancelled"), [(True, 0), (False, 2)], ids=["answered", "unanswered"])
async def test_ctrl_c_or_sigterm_stops_sending_and_reports_what_ran(answers: bool, cancelled: int, sig: int,
                                                                    tmp_path: Path) -> None:
    arrived = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.sleep(0.05 if answers else 3600)
        return web.json_response({"choices": []})

    async with _serving(chat) as url:
        run = await _loadtest("--url", url, "--concurrency", "2", "--duration", "600",
                              "--json", str(tmp_path / "r.json"))
        await asyncio.wait_for(arrived.wait(), 60)
        run.send_signal(sig)
        out, err = await asyncio.wait_for(run.communicate(), 60)
    assert run.returncode == 128 + sig, err.decode()
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["interrupted"] is True and summary["cancelled"] == cancelled
    assert (summary["all"]["requests"] > 0) is answers
    assert f"interrupted after {summary['interrupted_after_s']:.1f} s" in out.decode()


async def test_ctrl_c_during_the_warm_up_says_how_far_into_it_the_run_was(tmp_path: Path) -> None:
    """It said "interrupted after 0.0 s", though the warm-up's load had run for a while."""
    answered = 0

    async def chat(request: web.Request) -> web.StreamResponse:
        nonlocal answered
        answered += 1
        await asyncio.sleep(0.01)
        return web.json_response({"choices": []})

    async with _serving(chat) as url:
        run = await _loadtest("--url", url, "--concurrency", "2", "--duration", "5", "--warmup", "600",
                              "--json", str(tmp_path / "r.json"))
        while answered < 20:
            await asyncio.sleep(0.05)
        run.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(run.communicate(), 60)
    assert run.returncode == 130, err.decode()
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["all"]["requests"] == 0 and summary["interrupted_in_warmup_after_s"] > 0.1
    assert f"interrupted {summary['interrupted_in_warmup_after_s']:.1f} s into the warm-up: nothing measured" in (
        out.decode())


# Sends the child SIGINT the moment it starts importing `module`, wherever in start-up that falls.
_CTRL_C_DURING_IMPORT = """
import importlib.abc, os, signal, sys

class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
sys.argv = ["laneway", *{argv!r}]
"""
_LAUNCHES = {
    "python -m laneway": "import runpy\nrunpy.run_module('laneway', run_name='__main__', alter_sys=True)\n",
    # as the console script pip writes for pyproject.toml's `[project.scripts]` entry calls it
    "the console script": "from {entry_module} import {entry_function}\nsys.exit({entry_function}())\n",
}


def _console_entry() -> tuple[str, str]:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    module, _, function = pyproject["project"]["scripts"]["laneway"].partition(":")
    return module, function


@pytest.mark.parametrize("launch", list(_LAUNCHES))
@pytest.mark.parametrize("module", ["laneway.errors", "laneway.config", "laneway.loadtest"])
async def test_ctrl_c_while_the_command_starts_ends_it_quietly_with_130(launch: str, module: str) -> None:
    url, _ = _closed_port_url()
    entry_module, entry_function = _console_entry()
    code = (_CTRL_C_DURING_IMPORT.format(module=module, argv=["loadtest", "--url", url, "--requests", "1"])
            + _LAUNCHES[launch].format(entry_module=entry_module, entry_function=entry_function))
    run = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
                                               stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(run.communicate(), 60)
    assert (run.returncode, out, err) == (130, b"", b""), err.decode()


def _read_terminal(terminal: int) -> str:
    shown = []
    with contextlib.suppress(OSError):  # EIO once the command has exited
        while piece := os.read(terminal, 4096):
            shown.append(piece)
    os.close(terminal)
    return b"".join(shown).decode()


async def test_after_the_duration_the_progress_line_says_what_it_waits_for_and_ends_once() -> None:
    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("never answers")

    async with _serving(silent) as url:
        terminal, screen = pty.openpty()
        run = await _loadtest("--url", url, "--concurrency", "2", "--duration", "0.5", "--timeout", "1.5",
                              stderr=screen)
        os.close(screen)
        shown, _ = await asyncio.gather(asyncio.to_thread(_read_terminal, terminal), run.communicate())
    assert "waiting for 2 requests in flight (timeout 1.5 s)" in shown
    lines = [line.split("\r")[-1] for line in shown.replace("\r\n", "\n").split("\n")]
    assert sum("100%" in line for line in lines) == 1


def test_an_open_loop_whose_arrivals_would_take_long_is_warned_about() -> None:
    from laneway.loadtest._cli import long_open_loop

    url = "http://127.0.0.1:9/v1/chat/completions"
    warning = long_open_loop(LoadPlan(url=url, rate=0.0001, requests=1))
    assert warning is not None and "about 10,000 s" in warning and "--duration" in warning
    assert long_open_loop(LoadPlan(url=url, rate=100, requests=1000)) is None  # 10 s
    assert long_open_loop(LoadPlan(url=url, rate=0.0001, requests=1, duration_s=5)) is None  # bounded


_ROOM_FOR_CONNECTIONS = """
import json, resource, sys
from laneway.loadtest._cli import FILES_BESIDES, room_for_connections
from laneway.loadtest._drive import LoadPlan

rate = float(sys.argv[1]) or None
plan = LoadPlan(url="http://127.0.0.1:9/v1/chat/completions", concurrency=600, requests=600, rate=rate,
                max_inflight=600)
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
raised = room_for_connections(plan), resource.getrlimit(resource.RLIMIT_NOFILE)[0]
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 300))  # a hard limit under what they need
print(json.dumps({"raised": raised, "warning": room_for_connections(plan), "needed": 600 + FILES_BESIDES}))
"""


@pytest.mark.parametrize("rate", [0.0, 100.0])
def test_the_limit_of_open_files_is_raised_to_what_the_connections_need(rate: float) -> None:
    """Under the usual soft limit (1,024; the default `--max-inflight` is 4,096), the connections past it
    failed as the endpoint's `connect` errors, which the endpoint never saw. (In a process of its own: a
    hard limit lowered is lowered for good.)"""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1000:
        pytest.fail(f"this machine's hard limit of open files is {hard}: too low for this test")
    done = subprocess.run([sys.executable, "-c", _ROOM_FOR_CONNECTIONS, str(rate)], capture_output=True, text=True,
                          check=True, timeout=60)
    figures = json.loads(done.stdout)
    assert figures["raised"] == [None, figures["needed"]]
    assert figures["warning"].startswith("this process may open 300 files (`ulimit -n`)")
    assert ("--max-inflight" if rate else "--concurrency") in figures["warning"]
