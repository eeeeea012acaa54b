"""`/metrics` under `laneway serve --workers N`: one exposition for every worker, each sample labelled
with its worker, each family declared once, and the workers that did not answer shown as such. The
live figures (`/admin/stats`, `/admin/shadow`, the dashboard) summarize every worker's window."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from _pg import make_exchange, samples, total
from laneway.server._peers import Peers, WorkerSockets, merge_metrics, serve_peers
from laneway.server._workers import _private_directory
from laneway.telemetry import Telemetry, TelemetrySettings
from laneway.telemetry._telemetry import Window
from test_comparison import exchange, shadow_of
from test_serve import ROUTES, chat, gone, serve, workers_of

HISTOGRAM = b"""# HELP laneway_queue_wait_seconds Time a request waited.
# TYPE laneway_queue_wait_seconds histogram
laneway_queue_wait_seconds_bucket{model="gpt-5",le="0.5"} 1
laneway_queue_wait_seconds_bucket{model="gpt-5",le="+Inf"} 2
laneway_queue_wait_seconds_sum{model="gpt-5"} 1.25
laneway_queue_wait_seconds_count{model="gpt-5"} 2
# HELP laneway_exchange_log_up 1 if the last write succeeded.
# TYPE laneway_exchange_log_up gauge
laneway_exchange_log_up 1
"""


def promtool_check(text: bytes) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus"
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def declarations(text: bytes) -> Counter[tuple[str, str]]:
    """How often each (`HELP` or `TYPE`, family) line appears."""
    return Counter((line.split()[1], line.split()[2]) for line in text.decode().splitlines() if line.startswith("# "))


def workers_up(text: bytes) -> dict[str, float]:
    return {labels["worker"]: value for name, labels, value in samples(text) if name == "laneway_worker_up"}


def test_merge_adds_the_worker_label_to_samples_with_and_without_labels() -> None:
    merged = merge_metrics({0: HISTOGRAM, 1: HISTOGRAM.replace(b"} 2\n", b"} 5\n")}, 2).decode().splitlines()
    assert merged[:2] == ["# HELP laneway_queue_wait_seconds Time a request waited.",
                          "# TYPE laneway_queue_wait_seconds histogram"]
    assert merged[2:10] == [
        'laneway_queue_wait_seconds_bucket{worker="0",model="gpt-5",le="0.5"} 1',
        'laneway_queue_wait_seconds_bucket{worker="0",model="gpt-5",le="+Inf"} 2',
        'laneway_queue_wait_seconds_sum{worker="0",model="gpt-5"} 1.25',
        'laneway_queue_wait_seconds_count{worker="0",model="gpt-5"} 2',
        'laneway_queue_wait_seconds_bucket{worker="1",model="gpt-5",le="0.5"} 1',
        'laneway_queue_wait_seconds_bucket{worker="1",model="gpt-5",le="+Inf"} 5',
        'laneway_queue_wait_seconds_sum{worker="1",model="gpt-5"} 1.25',
        'laneway_queue_wait_seconds_count{worker="1",model="gpt-5"} 5',
    ]
    assert merged[12:14] == ['laneway_exchange_log_up{worker="0"} 1', 'laneway_exchange_log_up{worker="1"} 1']
    assert merged[-2:] == ['laneway_worker_up{worker="0"} 1', 'laneway_worker_up{worker="1"} 1']


def test_merge_keeps_escaped_label_values_and_empty_label_sets() -> None:
    route = r'say \"hi\", then } \\ and\nbye'
    own = (f'# HELP laneway_retrieval_total Retrievals.\n# TYPE laneway_retrieval_total counter\n'
           f'laneway_retrieval_total{{route="{route}",result="hit"}} 3\n'
           'laneway_retrieval_total{} 4\n').encode()
    merged = merge_metrics({3: own}, 4)
    promtool_check(merged)
    assert [labels for name, labels, _ in samples(merged) if name == "laneway_retrieval_total"] == [
        {"worker": "3", "route": route, "result": "hit"}, {"worker": "3"}]
    assert workers_up(merged) == {"0": 0, "1": 0, "2": 0, "3": 1}


def test_merge_declares_a_family_once_even_when_only_one_worker_has_it() -> None:
    retrieval = b"# HELP laneway_retrieval_total Retrievals.\n# TYPE laneway_retrieval_total counter\n" \
                b'laneway_retrieval_total{route="billing",result="miss"} 2\n'
    merged = merge_metrics({0: HISTOGRAM, 1: HISTOGRAM + retrieval}, 3)
    promtool_check(merged)
    assert set(declarations(merged).values()) == {1}
    assert {family for _, family in declarations(merged)} == {
        "laneway_queue_wait_seconds", "laneway_exchange_log_up", "laneway_retrieval_total", "laneway_worker_up"}
    assert [labels["worker"] for name, labels, _ in samples(merged) if name == "laneway_retrieval_total"] == ["1"]
    assert workers_up(merged) == {"0": 1, "1": 1, "2": 0}


def test_merged_gateway_metrics_pass_promtool_and_add_up() -> None:
    first, second = Telemetry(TelemetrySettings(exchange_log=None)), Telemetry(TelemetrySettings(exchange_log=None))
    for i in range(120):
        (first if i % 3 else second).record(make_exchange(i))
    second.observe_queue_wait("gpt-5", 0.3)
    own = {0: first.render_metrics(), 1: second.render_metrics()}
    merged = merge_metrics(own, 2)
    promtool_check(merged)
    assert set(declarations(merged).values()) == {1}
    for name in ("laneway_requests_total", "laneway_cost_usd_total", "laneway_request_latency_seconds_bucket"):
        assert total(merged, name) == pytest.approx(total(own[0], name) + total(own[1], name))
        assert total(merged, name, worker="1") == pytest.approx(total(own[1], name))
    assert total(merged, "laneway_requests_total") == 120


def test_worker_sockets_leave_a_temporary_directory_too_deep_for_them(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    private = _private_directory(16)
    try:
        assert os.path.dirname(private) == "/tmp" and list(deep.iterdir()) == []
        assert len(WorkerSockets(private, 0, 16).path(15)) <= 103
        assert os.stat(private).st_mode & 0o777 == 0o700
    finally:
        os.rmdir(private)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path.parent))  # short enough: kept where $TMPDIR says
    private = _private_directory(16)
    assert os.path.dirname(private) == str(tmp_path.parent)
    os.rmdir(private)


@pytest.fixture
def private() -> Iterator[str]:
    # Not `tmp_path`: a Unix socket's path must stay under about 100 bytes.
    directory = tempfile.mkdtemp(prefix="laneway-workers-")
    yield directory
    shutil.rmtree(directory)


@contextlib.asynccontextmanager
async def beside_a_hung_worker(private: str, count: int, telemetries: list[Telemetry]) -> AsyncIterator[list[Peers]]:
    """Workers 0 ... n-1 of `count`, one per telemetry, each serving its private socket; worker n
    accepts connections and never answers."""
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hung.bind(WorkerSockets(private, len(telemetries), count).path(len(telemetries)))
    hung.listen(8)
    async with AsyncExitStack() as stack:
        stack.callback(hung.close)
        yield [await stack.enter_async_context(serve_peers(WorkerSockets(private, i, count), telemetry))
               for i, telemetry in enumerate(telemetries)]


async def test_a_worker_fetches_its_peers_and_marks_the_silent_ones(private: str) -> None:
    telemetries = [Telemetry(TelemetrySettings(exchange_log=None)) for _ in range(2)]
    for i in range(30):
        telemetries[i % 2].record(make_exchange(i))
    async with beside_a_hung_worker(private, 4, telemetries) as peers:  # worker 2 hangs, 3 has no socket
        merged = await peers[0].metrics()
        connector = aiohttp.UnixConnector(WorkerSockets(private, 1, 4).path(1))
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.get("http://worker/metrics") as response:
            asked_privately = await response.read()
    promtool_check(merged)
    assert workers_up(merged) == {"0": 1, "1": 1, "2": 0, "3": 0}  # 2 hangs, 3 has no socket at all
    assert total(merged, "laneway_requests_total", worker="0") == 15
    assert total(merged, "laneway_requests_total", worker="1") == 15
    # A worker asked on its private socket answers with its own metrics only, as one process would.
    assert asked_privately == telemetries[1].render_metrics()


async def test_live_figures_summarize_every_worker_that_answers(private: str) -> None:
    everything = Telemetry(TelemetrySettings(exchange_log=None))  # one process that saw every exchange
    telemetries = [Telemetry(TelemetrySettings(exchange_log=None)) for _ in range(2)]
    for i in range(120):  # conversations `conv-0` ... `conv-39` each span both workers
        telemetries[i % 2].record(make_exchange(i))
        everything.record(make_exchange(i))
    primaries = [exchange(i) for i in range(40)]
    for i, primary in enumerate(primaries):
        telemetries[i % 2].record(shadow_of(primary, 0.5 * primary.latency_ms))
        everything.record(shadow_of(primary, 0.5 * primary.latency_ms))
    for telemetry in (telemetries[0], everything):  # worker 0 dropped them; worker 1 answers
        telemetry.count("shadow_dropped_queue", "gemini-2.5-flash-lite", 3)
    async with beside_a_hung_worker(private, 3, telemetries) as peers:
        stats = await peers[0].stats(None, None)
        window = await peers[0].stats(make_exchange(30).started_at, make_exchange(90).started_at)
        shadow = await peers[1].shadow_stats({})
    alone = telemetries[0].stats()
    assert alone["total"]["requests"] == 60  # what one worker knows
    expected = everything.stats()
    assert stats["total"]["requests"] == 120
    for part in ("total", "models", "routes"):
        assert json.dumps(stats[part]) == json.dumps(expected[part]), part  # percentiles and conversations too
    assert stats["workers"] == {"count": 3, "answered": [0, 1], "started_at": {
        "0": telemetries[0].started_at, "1": telemetries[1].started_at}}
    assert window["total"] == everything.stats(make_exchange(30).started_at, make_exchange(90).started_at)["total"]
    assert window["total"]["requests"] == 60
    candidate = shadow["candidates"]["gemini-2.5-flash-lite"]
    assert candidate == (await everything.shadow_stats())["candidates"]["gemini-2.5-flash-lite"]
    assert candidate["pairs"] == 40 and candidate["dropped"] == 3
    assert shadow["workers"] == stats["workers"]


async def test_a_window_that_is_not_one_is_refused_by_name() -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))
    for i in range(10):
        telemetry.record(make_exchange(i))
    snapshot = await telemetry.window_snapshot()
    decoded = Window.decode(snapshot)
    assert decoded.rows == telemetry.window().rows  # through JSON and back, tuples included
    assert any(row.failed_models for row in decoded.rows)
    for bad in (b"[1, 2]", b'{"rows": []}', b"not json", snapshot.replace(b'"rows":[', b'"rows":[[],')):
        with pytest.raises(ValueError, match=r"not a telemetry window snapshot|expected 22 columns"):
            Window.decode(bad)


def stats_of(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/admin/stats", timeout=10) as response:
        assert response.status == 200
        figures: dict[str, Any] = json.loads(response.read())
        return figures


def test_every_poll_of_the_live_figures_counts_every_worker(tmp_path: Path) -> None:
    process, url, sent = two_workers_that_answered(tmp_path)
    try:
        scrape_until_counted(url, sent)
        polls = [stats_of(url) for _ in range(6)]  # on fresh connections: each may reach either worker
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    for figures in polls:
        assert figures["total"]["requests"] == sent
        assert figures["models"]["gpt-5-mini"]["requests"] == sent
        assert figures["workers"]["count"] == 2 and figures["workers"]["answered"] == [0, 1]
        assert set(figures["workers"]["started_at"]) == {"0", "1"}


def scrape(url: str) -> bytes:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        assert response.status == 200
        return bytes(response.read())


def requests_by_worker(text: bytes) -> dict[str, float]:
    counts: dict[str, float] = {}
    for name, labels, value in samples(text):
        if name == "laneway_requests_total":
            counts[labels["worker"]] = counts.get(labels["worker"], 0) + value
    return counts


def counters(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample that may never go down: counters, and histograms' buckets, sums and counts."""
    kinds = {family: kind for (what, family), kind in _types(text).items() if what == "TYPE"}
    monotonic = {f for f, kind in kinds.items() if kind in ("counter", "histogram")}
    return {(name, frozenset(labels.items())): value for name, labels, value in samples(text)
            if name in monotonic or name.rsplit("_", 1)[0] in monotonic}


def _types(text: bytes) -> dict[tuple[str, str], str]:
    return {(line.split()[1], line.split()[2]): line.split()[3]
            for line in text.decode().splitlines() if line.startswith("# TYPE ")}


def chat_until_every_worker_answered(url: str, workers: int) -> int:
    """Chat requests, eight at a time on fresh connections, until each worker has served some; how many."""
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        while len(requests_by_worker(scrape(url))) < workers:
            assert sent < 400, f"after {sent} requests, some worker never served one"
            assert list(pool.map(lambda _: chat(url), range(8))) == ["gpt-5-mini"] * 8
            sent += 8
    return sent


def scrape_until_counted(url: str, sent: int) -> list[bytes]:
    """Scrapes until the requests counted add up to `sent` (each is counted just after its answer)."""
    scrapes = [scrape(url)]
    deadline = time.monotonic() + 10
    while sum(requests_by_worker(scrapes[-1]).values()) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
        scrapes.append(scrape(url))
    return scrapes


def two_workers_that_answered(tmp_path: Path) -> tuple[subprocess.Popen[str], str, int]:
    """`laneway serve --workers 2`, its URL, and how many chats it took until both had answered."""
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=tmp_path / "exchanges.sqlite3", target="gpt-5-mini"))
    process, url = serve(config, "--workers", "2")
    try:
        return process, url, chat_until_every_worker_answered(url, 2)
    except BaseException:
        process.kill()
        process.communicate(timeout=60)
        raise


def test_one_scrape_describes_every_worker(tmp_path: Path) -> None:
    process, url, sent = two_workers_that_answered(tmp_path)
    try:
        scrapes = scrape_until_counted(url, sent) + [scrape(url) for _ in range(4)]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert output.count("no client keys configured") == 1, output  # not once per worker
    for text in scrapes[-4:]:
        assert workers_up(text) == {"0": 1, "1": 1}
        assert set(requests_by_worker(text)) == {"0", "1"}
        assert sum(requests_by_worker(text).values()) == sent  # nobody left out, nobody counted twice
        assert all("worker" in labels for _, labels, _ in samples(text))
        assert set(declarations(text).values()) == {1}
        promtool_check(text)
    assert len(counters(scrapes[-1])) > 20
    for before, after in itertools.pairwise(scrapes):
        now = counters(after)
        assert all(now[series] >= value for series, value in counters(before).items()), "a counter went down"


def test_a_killed_worker_is_missing_from_the_scrape_until_it_is_replaced(tmp_path: Path) -> None:
    process, url, sent = two_workers_that_answered(tmp_path)
    try:
        before = requests_by_worker(scrape_until_counted(url, sent)[-1])
        victim = workers_of(process)[0]
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        assert gone(victim, 5)
        after = scrape(url)
        [(missing, _)] = [(w, up) for w, up in workers_up(after).items() if up == 0]
        [survivor] = {"0", "1"} - {missing}
        promtool_check(after)
        assert workers_up(after)[survivor] == 1
        assert {labels["worker"] for name, labels, _ in samples(after) if name != "laneway_worker_up"} == {survivor}
        assert requests_by_worker(after) == {survivor: before[survivor]}
        deadline = time.monotonic() + 30
        while workers_up(replaced := scrape(url)) != {"0": 1, "1": 1}:
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.1)
        assert requests_by_worker(replaced).get(missing, 0) == 0  # its replacement starts from zero
        # The live figures say which worker holds nothing from before its start.
        started = stats_of(url)["workers"]["started_at"]
        assert started[missing] > killed_at > started[survivor]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output


def test_a_worker_killed_outright_leaks_no_lock_of_the_knowledge_base_index(tmp_path: Path) -> None:
    (tmp_path / "policies.md").write_text("# Refunds\n\nRefunds take five business days.\n\n"
                                          "# Double charges\n\nA double charge is reversed within a day.\n")
    config = tmp_path / "routes.yaml"
    config.write_text("knowledge:\n  billing:\n    sources: [policies.md]\nroutes:\n- name: only\n"
                      "  target: gpt-5-mini\n  retrieval: {knowledge: billing}\n")
    process, url = serve(config, "--workers", "2")
    try:
        assert chat(url) == "gpt-5-mini"
        victim = workers_of(process)[0]
        os.kill(victim, signal.SIGKILL)
        assert gone(victim, 5)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "leaked" not in output, output  # the resource tracker's report of a lock nobody released
