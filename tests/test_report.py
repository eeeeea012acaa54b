"""`laneway report` windows, comparisons and HTML output, and the window of `GET /admin/stats`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from _live import live_gateway
from _pg import BASE_TIME, MODELS, SKIPPED_MODEL, long_context_exchange, make_exchange, report, samples
from laneway.cli import main
from laneway.exchange import Attempt, Exchange
from laneway.telemetry import Telemetry, TelemetrySettings
from laneway.telemetry._records import failed_models
from laneway.telemetry._summary import summarize
from laneway.telemetry._window import rows_of

NEWCOMER = "gpt-5-nano"  # answers only in the last seconds of the log, never in a baseline before them
USD_CHANGE = r"(-|\d+\.\d{6}) -> \d+\.\d{6}( \([+-]\d+\.\d{6}\))?"
PCT_CHANGE = r"(-|\d+\.\d%) -> \d+\.\d%( \([+-]\d+\.\d pp\))?"
MS_CHANGE = r"(-|\d+\.\d) -> \d+\.\d( \([+-]\d+\.\d\))?"
RATE_CHANGE = r"(-|\d+\.\d{2}) -> \d+\.\d{2}( \([+-]\d+\.\d{2}\))?"


async def _write_log(folder: Path) -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=f"sqlite:///{folder}/log.sqlite3"))
    await telemetry.start()
    for i in range(600):
        telemetry.record(make_exchange(i))
    for i in range(600, 610):
        telemetry.record(dataclasses.replace(make_exchange(i), model=NEWCOMER, request_id=f"new-{i}"))
    await telemetry.aclose()


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An exchange log of 610 exchanges, one every 0.5 s from `BASE_TIME`, written by `Telemetry`."""
    folder = tmp_path_factory.mktemp("log")
    asyncio.run(_write_log(folder))
    return f"sqlite:///{folder}/log.sqlite3"


def total_by_model(text: bytes, name: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample, labels, value in samples(text):
        if sample == name:
            totals[labels["model"]] = totals.get(labels["model"], 0.0) + value
    return totals


def iso(offset_s: float) -> str:
    return datetime.fromtimestamp(BASE_TIME + offset_s, UTC).isoformat()


def shown(offset_s: float) -> str:
    return datetime.fromtimestamp(BASE_TIME + offset_s, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line `laneway report *argv` gives when it refuses its arguments with exit status 2."""
    assert report(*argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("until", [240, 300])
def test_a_window_that_does_not_start_before_it_ends_is_refused(
    log: str, until: int, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refusal(capsys, "--db", log, "--since", iso(300), "--until", iso(until))
    assert f"`--since` {shown(300)} is not before `--until` {shown(until)}" in err


@pytest.mark.parametrize("lane", ["shadow", "canary"])
def test_lane_reports_refuse_a_window_that_does_not_start_before_it_ends(
    log: str, lane: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([lane, "report", "--db", log, "--since", iso(300), "--until", iso(240)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"laneway {lane} report: `--since` {shown(300)} is not before"), err


def test_a_comparison_without_its_end_ends_where_the_current_window_starts(
    log: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report("--db", log, "--json", "--since", iso(150), "--compare-since", iso(0)) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["window"]["since"] == BASE_TIME + 150
    assert figures["compare"]["window"]["since"] == BASE_TIME
    assert figures["compare"]["window"]["until"] == BASE_TIME + 150
    assert figures["compare"]["total"]["requests"] == 300
    assert figures["total"]["requests"] == 310


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("--since", iso(150), "--compare-since", iso(100), "--compare-until", iso(200)), "overlaps"),
        (("--until", iso(150), "--compare-since", iso(100), "--compare-until", iso(200)), "overlaps"),
        (("--since", iso(150), "--compare-since", iso(200)), "`--compare-since`"),
        (("--since", iso(150), "--compare-until", iso(100)), "`--compare-until` needs `--compare-since`"),
        (("--compare-since", iso(0)), "needs `--since` or `--last`"),
    ],
)
def test_a_comparison_that_is_half_given_or_overlaps_is_refused(
    log: str, options: tuple[str, ...], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert named in refusal(capsys, "--db", log, *options)


def test_comparison_lines_format_both_sides_alike(log: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert report("--db", log, "--since", iso(150), "--compare-since", iso(0)) == 0
    text = capsys.readouterr().out
    changes = re.findall(r"^  (\S+): (.*)$", text.split("change vs baseline", 1)[1], re.M)
    assert [name for name, _ in changes] == sorted([*MODELS, NEWCOMER])
    for name, line in changes:
        # traffic as a rate, p95, error rate, $/conversation, $/1k tokens, cost
        assert re.fullmatch(f"{RATE_CHANGE}, {MS_CHANGE}, {PCT_CHANGE}, {USD_CHANGE}, {USD_CHANGE}, {USD_CHANGE}",
                            line), line
        # A model new to the current window had no traffic and spent nothing before it; its rates had no value.
        assert line.startswith("0.00 -> ") == (name == NEWCOMER), line
        assert (line.split(", ")[1].startswith("- -> ")) == (name == NEWCOMER), line


def test_the_html_report_shows_both_windows_and_the_changes(
    log: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "report.html"
    argv = ("--since", iso(150), "--compare-since", iso(0), "--compare-until", iso(120), "--html", str(page))
    before = int(time.time())
    assert report("--db", log, *argv) == 0
    html = page.read_text()
    # `--since` alone ends now, not at the last exchange (304.5 s)
    ends = re.search(re.escape(shown(150)) + r" \.\. (\S+ \S+Z): 310 requests", html)
    assert ends is not None
    assert before <= datetime.strptime(ends[1], "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=UTC).timestamp() <= time.time()
    assert f"{shown(0)} .. {shown(120)}: 240 requests" in html
    baseline = html.split("<h2>Baseline</h2>", 1)[1].split("<h2>", 1)[0]
    rows = re.findall(r"<tr><td>([^<]+)</td>" + r"<td>([^<]+)</td>" * 6 + "</tr>", baseline)
    assert [row[0] for row in rows] == sorted([*MODELS, NEWCOMER])
    patterns = (RATE_CHANGE, MS_CHANGE, PCT_CHANGE, USD_CHANGE, USD_CHANGE, USD_CHANGE)
    for _, *cells in rows:
        for cell, pattern in zip(cells, patterns, strict=True):
            assert re.fullmatch(pattern, cell.replace("&gt;", ">")), cell
    models = html.split("<h2>Models</h2>", 1)[1].split("<h2>", 1)[0]
    assert re.search(r"<td>claude-sonnet-37</td><td>\d+\.\d%</td><td>100</td>", models), models
    for cost in re.findall(r"<td>(\d+\.\d+)</td><td>\d+\.\d+</td><td>\d+\.\d+</td><td>\d+\.\d\d</td></tr>", models):
        assert re.fullmatch(r"\d+\.\d{6}", cost), cost
    assert not re.search(r"\de-\d", html.split("<svg", 1)[0])


@pytest.mark.parametrize("target", ["missing/report.html", ".", "/proc/report.html"])
def test_an_html_path_that_cannot_be_written_is_refused_before_the_log_is_read(
    log: str, tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / target
    for db in (log, f"sqlite:///{tmp_path}/no-log.sqlite3"):
        assert f"`--html {page}`" in refusal(capsys, "--db", db, "--html", str(page))


@pytest.fixture(scope="module")
def stats_url(sim_url: str) -> Iterator[str]:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))
    with live_gateway("routes:\n- name: chat\n  target: gpt-5-mini\n", sim_url, telemetry=telemetry) as live:
        yield live.url + "/admin/stats"


@pytest.mark.parametrize("query", ["since=500&until=400", "since=400&until=400"])
def test_stats_refuse_a_window_that_does_not_start_before_it_ends(stats_url: str, query: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{stats_url}?{query}")
    assert refused.value.code == 400
    error = json.loads(refused.value.read())["error"]
    since, until = re.findall(r"=(\d+)", query)
    assert error["code"] == "invalid_request" and error["param"] == "since"
    assert f"`since` ({since}) is not before `until` ({until})" in error["message"]


@pytest.mark.parametrize(("query", "words"), [
    ("since=nan", "unix times in seconds, not `nan` or `inf`"), ("until=inf", "not `nan` or `inf`"),
    ("since=abc", "`since` ('abc') is neither unix seconds nor an ISO 8601 time"),
])
def test_stats_refuse_a_time_that_is_neither_seconds_nor_iso(stats_url: str, query: str, words: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{stats_url}?{query}")
    assert refused.value.code == 400
    assert words in json.loads(refused.value.read())["error"]["message"]


def test_stats_read_iso_times_as_the_report_does(stats_url: str) -> None:
    with urllib.request.urlopen(f"{stats_url}?since=1970-01-01T00:06:40Z&until=1970-01-01T00:08:20") as answer:
        window = json.loads(answer.read())["window"]
    assert (window["since"], window["until"]) == (400.0, 500.0)


def test_stats_since_a_time_alone_end_now_as_the_report_does(stats_url: str) -> None:
    """Ended at the last exchange instead, the per-minute rates left out the idle time since, and differed
    from `laneway report --since`'s for the same window."""
    before = time.time()
    with urllib.request.urlopen(f"{stats_url}?since=400") as answer:
        window = json.loads(answer.read())["window"]
    assert window["since"] == 400.0 and before <= window["until"] <= time.time()
    future = before + 3600  # a start still to come has no now to end at: the window is left open
    with urllib.request.urlopen(f"{stats_url}?since={future}") as answer:
        assert json.loads(answer.read())["window"]["since"] == future


def test_stats_answer_a_window_that_starts_before_it_ends(stats_url: str) -> None:
    with urllib.request.urlopen(f"{stats_url}?since=400&until=500") as answer:
        assert json.loads(answer.read())["window"] == {"since": 400.0, "until": 500.0, "minutes": 1.6667,
                                                          "rolled_up_requests": 0, "truncated": False}


@pytest.mark.parametrize(("content", "words"), [
    ("users", "is not a Laneway exchange log (it has no `exchanges` table)"),
    ("", "is not a Laneway exchange log"),
    ("text", "cannot be read as SQLite"),
    (None, "does not exist"),
    ("directory", "is a directory; name the log file in it"),
])
def test_a_file_that_is_not_an_exchange_log_is_refused_and_left_as_it_was(
    tmp_path: Path, content: str | None, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.db"
    if content == "directory":
        path.mkdir()
    elif content == "users":
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE users (name TEXT)")
            db.commit()
    elif content is not None:
        path.write_text(content)
    before = path.read_bytes() if path.is_file() else None
    assert report("--db", f"sqlite:///{path}") == 1
    out, err = capsys.readouterr()
    assert out == "" and words in err and err.count("\n") == 1, err
    assert (path.read_bytes() if path.is_file() else None) == before  # not turned into a log


def test_a_reader_that_goes_away_ends_the_report_without_a_traceback(log: str) -> None:
    process = subprocess.Popen([sys.executable, "-m", "laneway", "report", "--db", log, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # as `| head` does once it has what it wants
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_failed_attempts_count_against_their_model_in_the_report_as_in_the_live_window(
    log: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exchanges = [make_exchange(i) for i in range(600)]
    expected: dict[str, int] = {}
    for exchange in exchanges:
        for model in failed_models(exchange) or ():
            expected[model] = expected.get(model, 0) + 1
    assert sum(expected.values()) > 50  # the log has fallbacks and timeouts to count

    assert report("--db", log, "--json", "--until", iso(300)) == 0
    reported = json.loads(capsys.readouterr().out)["models"]
    live = summarize(rows_of(exchanges, simulated=False))["models"]
    for model in MODELS:
        assert reported[model]["failed_attempts"] == live[model]["failed_attempts"] == expected.get(model, 0)


def test_a_model_whose_every_attempt_failed_over_still_shows_its_failures() -> None:
    exchange = Exchange("r1", BASE_TIME, model="backup", lane="fallback", attempts=[
        Attempt("dying", "upstream_unavailable"), Attempt("dying", "upstream_unavailable"),
        Attempt("backup", "ok", lane="fallback")])
    models = summarize(rows_of([exchange], simulated=False))["models"]
    assert models["dying"]["requests"] == 0 and models["dying"]["failed_attempts"] == 2
    assert models["backup"]["requests"] == 1 and models["backup"]["failed_attempts"] == 0


def test_retrieval_p95_is_the_95th_percentile_of_the_searches_whatever_their_order() -> None:
    times = [0.15, 0.019, 0.116, 0.646, 0.131, 0.174, 0.122]  # as they came, not sorted
    exchanges = [Exchange(f"r{i}", BASE_TIME + i, model="gpt-5", route="billing", retrieval_hits=2, retrieval_ms=ms,
                          attempts=[Attempt("gpt-5", "ok")]) for i, ms in enumerate(times)]
    figures = summarize(rows_of(exchanges, simulated=False))
    assert figures["routes"]["billing"]["retrieval_p95_ms"] == pytest.approx(float(np.percentile(times, 95)), abs=1e-3)


def test_a_gate_that_turned_a_request_away_is_no_failed_attempt_of_its_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gated model was never sent the request: like a model skipped for an open breaker, nothing failed."""
    exchange = Exchange("r1", BASE_TIME, model="gpt-5-mini", route="heavy", lane="degraded", attempts=[
        Attempt("heavy", "gated", error="`heavy` is at its concurrency limit (1)"),
        Attempt("gpt-5-mini", "ok", lane="degraded")])

    async def logged() -> str:
        telemetry = Telemetry(TelemetrySettings(exchange_log=f"sqlite:///{tmp_path}/gated.sqlite3"))
        await telemetry.start()
        telemetry.record(exchange)
        await telemetry.aclose()
        return f"sqlite:///{tmp_path}/gated.sqlite3"

    assert report("--db", asyncio.run(logged()), "--json") == 0
    for figures in (summarize(rows_of([exchange], simulated=False)), json.loads(capsys.readouterr().out)):
        assert figures["total"]["failed_attempts"] == 0
        assert figures["models"].get("heavy", {}).get("failed_attempts", 0) == 0


async def _cascaded(folder: Path) -> tuple[Exchange, str, Telemetry]:
    """One exchange whose cheap first answer was escalated: the client got the strong model's answer."""
    exchange = Exchange("cascaded", BASE_TIME, model="strong", route="triage", lane="cascade", cost_usd=0.06,
                        prompt_tokens=120, completion_tokens=60,  # the answer's, the strong model's
                        attempts=[Attempt("cheap", "ok", cost_usd=0.01, prompt_tokens=120, completion_tokens=50),
                                  Attempt("grader", "ok", cost_usd=0.002, lane="verifier", prompt_tokens=200,
                                          completion_tokens=2),
                                  Attempt("strong", "ok", cost_usd=0.048, lane="cascade", prompt_tokens=120,
                                          completion_tokens=60)])
    telemetry = Telemetry(TelemetrySettings(exchange_log=f"sqlite:///{folder}/cascade.sqlite3"))
    await telemetry.start()
    telemetry.record(exchange)
    await telemetry.aclose()
    return exchange, f"sqlite:///{folder}/cascade.sqlite3", telemetry


def test_each_model_is_charged_what_it_billed_in_stats_report_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exchange, db, telemetry = asyncio.run(_cascaded(tmp_path))
    billed = {"cheap": 0.01, "grader": 0.002, "strong": 0.048}
    live = summarize(rows_of([exchange], simulated=False))
    assert report("--db", db, "--json") == 0
    logged = json.loads(capsys.readouterr().out)
    tokens = {"cheap": (120, 50), "grader": (200, 2), "strong": (120, 60)}  # what each model billed
    for figures in (live, logged):
        assert {m: f["cost_usd"] for m, f in figures["models"].items()} == pytest.approx(billed)
        assert {m: (f["tokens_in"], f["tokens_out"]) for m, f in figures["models"].items()} == tokens
        assert figures["total"]["cost_usd"] == pytest.approx(0.06)
        assert (figures["total"]["tokens_in"], figures["total"]["tokens_out"]) == (440, 112)
        assert (figures["routes"]["triage"]["tokens_in"], figures["routes"]["triage"]["tokens_out"]) == (440, 112)
        assert figures["models"]["strong"]["requests"] == 1 and figures["models"]["cheap"]["requests"] == 0
    metrics = telemetry.render_metrics()
    assert total_by_model(metrics, "laneway_cost_usd_total") == pytest.approx(billed)
    assert total_by_model(metrics, "laneway_prompt_tokens_total") == {m: t[0] for m, t in tokens.items()}
    assert total_by_model(metrics, "laneway_completion_tokens_total") == {m: t[1] for m, t in tokens.items()}


def test_a_model_skipped_for_its_window_is_billed_nothing_in_stats_report_and_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The skipped attempt keeps the prompt's count, which the metrics and the log's readers took for tokens
    billed: a client could add millions to any model's figures with requests refused as too long."""
    exchanges = [long_context_exchange(i) for i in range(3)]
    db = asyncio.run(_logged(tmp_path, exchanges))
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))
    for exchange in exchanges:
        telemetry.record(exchange)
    assert report("--db", db, "--json") == 0
    for figures in (summarize(rows_of(exchanges, simulated=False)), json.loads(capsys.readouterr().out)):
        assert SKIPPED_MODEL not in figures["models"]
        assert figures["total"]["tokens_in"] == 3 * 9000
    metrics = telemetry.render_metrics()
    assert SKIPPED_MODEL not in total_by_model(metrics, "laneway_prompt_tokens_total")
    assert total_by_model(metrics, "laneway_prompt_tokens_total")[MODELS[2]] == 3 * 9000


def test_since_alone_ends_now_as_a_comparison_reads_it(log: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--since T --compare-since S` compares S..T with T..now: the rates of the second are per minute of it
    up to now, as `--last` counts them, not up to the last exchange."""
    before = time.time()
    assert report("--db", log, "--since", iso(150), "--compare-since", iso(0), "--json") == 0
    figures = json.loads(capsys.readouterr().out)
    window = figures["window"]
    assert window["since"] == BASE_TIME + 150 and before <= window["until"] <= time.time()
    assert window["minutes"] == pytest.approx((window["until"] - window["since"]) / 60)
    assert figures["total"]["requests"] == 310  # the log's exchanges from 150 s on


def test_the_html_cost_plot_charges_each_model_what_it_billed(tmp_path: Path) -> None:
    _, db, _ = asyncio.run(_cascaded(tmp_path))
    page = tmp_path / "cascade.html"
    assert report("--db", db, "--html", str(page)) == 0
    plot = page.read_text().split("cost over time per model", 1)[1]
    assert "peak 0.048000 USD" in plot  # the strong model's own 0.048, not the exchange's 0.06
    assert all(name in plot for name in ("cheap", "grader", "strong"))


def test_the_html_cost_plot_leaves_shadow_spend_out_once_rolled_up_too(tmp_path: Path) -> None:
    """Rolled-up shadow hours were added to their candidate's line (and raw shadow rows were not)."""
    async def rolled_up() -> str:
        url = f"sqlite:///{tmp_path}/shadowed.sqlite3"
        telemetry = Telemetry(TelemetrySettings(exchange_log=url))
        await telemetry.start()
        telemetry.record(Exchange("answered", BASE_TIME, model="answer", route="chat", cost_usd=0.01,
                                  attempts=[Attempt("answer", "ok", cost_usd=0.01)]))
        telemetry.record(Exchange("answered/shadow/candidate", BASE_TIME, model="candidate", route="chat",
                                  lane="shadow", cost_usd=0.05,
                                  attempts=[Attempt("candidate", "ok", cost_usd=0.05, lane="shadow")]))
        assert await telemetry.roll_up(BASE_TIME + 400 * 86_400) == 2
        await telemetry.aclose()
        return url

    db = asyncio.run(rolled_up())
    page = tmp_path / "shadowed.html"
    assert report("--db", db, "--html", str(page)) == 0
    plot = page.read_text().split("cost over time per model", 1)[1]
    assert "peak 0.010000 USD" in plot and "candidate" not in plot


def test_last_ends_now_and_takes_only_a_positive_duration(log: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = time.time()
    assert report("--db", log, "--last", "2d", "--json") == 0
    window = json.loads(capsys.readouterr().out)["window"]
    # the log's exchanges are a day old: the window still ends now, and its rates count both days
    assert before <= window["until"] <= time.time() and window["minutes"] == pytest.approx(2 * 24 * 60)
    assert report("--db", log, "--last", "1d", "--until", iso(100), "--json") == 0
    window = json.loads(capsys.readouterr().out)["window"]
    assert (window["since"], window["until"]) == (BASE_TIME + 100 - 86_400, BASE_TIME + 100)
    with pytest.raises(SystemExit):
        report("--db", log, "--last", "0m")
    assert "argument --last: `0m` is an empty window; give a positive duration" in capsys.readouterr().err


def test_a_relative_log_path_that_exists_from_the_root_says_how_to_name_it(
    tmp_path: Path, log: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where `<the log's path without its leading />` does not exist
    absolute = log.removeprefix("sqlite:///")
    assert report("--db", "sqlite:///" + absolute.lstrip("/")) == 1
    err = capsys.readouterr().err
    assert f"is relative to the current directory; for `{absolute}`, `sqlite:///{absolute}`" in err


@pytest.mark.parametrize("last", ["99999999999d", "1000000w", "99999999999999999999999s", "9" * 400 + "s"])
def test_a_last_window_longer_than_the_time_since_the_epoch_starts_at_the_log_s_beginning(
    log: str, last: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report("--db", log, "--last", last, "--json") == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["window"]["since"] == BASE_TIME and figures["total"]["requests"] == 610
    assert report("--db", log, "--last", last) == 0
    assert capsys.readouterr().out.startswith(f"{shown(0)} .. ")
    for lane in ("shadow", "canary"):
        assert main([lane, "report", "--db", log, "--last", last]) == 0
        assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_a_time_outside_the_years_a_report_can_print_is_an_argument_error(
    log: str, moment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        report("--db", log, "--until", moment)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --until: `{moment}` is outside the years 1 to 9999 in UTC" in err, err


def test_an_html_path_that_is_the_log_itself_is_refused_and_the_log_kept(
    log: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(log.removeprefix("sqlite:///"))
    before = path.read_bytes()
    assert f"`--html {path}` is the file of `--db {path}` too" in refusal(capsys, "--db", log, "--html", str(path))
    assert path.read_bytes() == before


def test_an_html_page_that_cannot_be_written_after_the_read_costs_not_the_report(
    log: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report("--db", log, "--html", "/dev/full") == 2  # the disk is full
    out, err = capsys.readouterr()
    assert "claude-sonnet-37" in out
    assert err == "laneway report: cannot write `--html /dev/full`: No space left on device; choose another path\n"


def test_a_model_that_lost_all_its_traffic_shows_the_drop_to_zero() -> None:
    from laneway.telemetry._log_args import change_figures, changes

    before = {"old": {"requests_per_min": 20.0, "p95_ms": 800.0, "error_rate": 0.1, "cost_per_conversation_usd": 0.02,
                      "cost_per_1k_tokens_usd": 0.5, "cost_usd": 0.001325}}
    figures = change_figures({}, before)["old"]
    assert figures["requests_per_min"] == {"before": 20.0, "after": 0.0, "change": -20.0}
    assert figures["cost_usd"]["after"] == 0.0 and figures["cost_usd"]["change"] == pytest.approx(-0.001325)
    assert figures["p95_ms"] == {"before": 800.0, "after": None, "change": None}  # no traffic, no percentile
    text = changes({}, before)["old"]
    assert text[0] == "20.00 -> 0.00 (-20.00)" and text[1].endswith("-> -")


def test_a_comparison_in_json_carries_each_models_changes(log: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert report("--db", log, "--json", "--since", iso(150), "--compare-since", iso(0)) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures["changes"]) == set(figures["models"]) | set(figures["compare"]["models"])
    for name, fields in figures["changes"].items():
        now, then = (window["models"].get(name, {}).get("requests_per_min", 0.0)
                     for window in (figures, figures["compare"]))
        assert fields["requests_per_min"]["change"] == pytest.approx(now - then)


async def _logged(folder: Path, exchanges: list[Exchange]) -> str:
    db = f"sqlite:///{folder}/routes.sqlite3"
    telemetry = Telemetry(TelemetrySettings(exchange_log=db))
    await telemetry.start()
    for exchange in exchanges:
        telemetry.record(exchange)
    await telemetry.aclose()
    return db


def test_requests_that_named_a_model_are_apart_from_those_refused_before_routing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exchanges = [
        Exchange("routed", BASE_TIME, model="gpt-5-mini", route="chat", lane="primary"),
        Exchange("named", BASE_TIME + 1, model="gpt-5", lane="direct"),
        Exchange("named, its gate full", BASE_TIME + 1.5, model="gpt-5-mini", lane="degraded"),
        Exchange("refused", BASE_TIME + 2, lane="", status=400, outcome="invalid_request"),
    ]
    db = asyncio.run(_logged(tmp_path, exchanges))
    assert report("--db", db, "--json") == 0
    for figures in (summarize(rows_of(exchanges, simulated=False)), json.loads(capsys.readouterr().out)):
        assert {route: f["requests"] for route, f in figures["routes"].items()} == {
            "chat": 1, "(direct)": 2, "(none)": 1}


def test_answers_from_the_cache_are_the_caches_figures_not_the_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cache hit takes a millisecond: counted under the model that once answered, it would make that model
    look faster the more the cache answers. The route, which the client saw answer, keeps it."""
    calls = [Exchange(f"call-{i}", BASE_TIME + i, model="gpt-5", route="billing", lane="primary", latency_ms=800.0,
                      attempts=[Attempt("gpt-5", "ok", latency_ms=800.0)]) for i in range(4)]
    hits = [Exchange(f"hit-{i}", BASE_TIME + 10 + i, model="gpt-5", route="billing", lane="cache", latency_ms=1.0)
            for i in range(6)]
    db = asyncio.run(_logged(tmp_path, calls + hits))
    assert report("--db", db, "--json") == 0
    for figures in (summarize(rows_of(calls + hits, simulated=False)), json.loads(capsys.readouterr().out)):
        models, route = figures["models"], figures["routes"]["billing"]
        assert (models["gpt-5"]["requests"], models["gpt-5"]["p50_ms"]) == (4, 800.0)
        assert (models["(cache)"]["requests"], models["(cache)"]["p50_ms"]) == (6, 1.0)
        assert (route["requests"], route["p50_ms"]) == (10, 1.0)
    page = tmp_path / "report.html"
    assert report("--db", db, "--html", str(page)) == 0
    assert "gpt-5: 4 requests" in page.read_text(encoding="utf-8")
    assert "(cache): 6 requests" in page.read_text(encoding="utf-8")


def test_the_html_cost_plot_counts_a_rolled_up_hour_as_an_hour_not_a_minute(tmp_path: Path) -> None:
    """Bucketed by the minute, a rolled-up hour's whole spend showed as one minute's, a spike among the raw
    rows' minutes, and the axis read "USD per 1 min"."""
    async def mixed() -> str:
        url = f"sqlite:///{tmp_path}/mixed.sqlite3"
        telemetry = Telemetry(TelemetrySettings(exchange_log=url, retention_days=1))
        await telemetry.start()
        for minute in range(60):  # an hour at $0.001 a minute, rolled up: $0.06
            telemetry.record(Exchange(f"old{minute}", BASE_TIME + minute * 60, model="m", route="chat",
                                      cost_usd=0.001, attempts=[Attempt("m", "ok", cost_usd=0.001)]))
        assert await telemetry.roll_up(BASE_TIME + 2 * 86_400) == 60
        for minute in range(30):  # half an hour, raw, a day later, at the same rate
            telemetry.record(Exchange(f"new{minute}", BASE_TIME + 86_400 + minute * 60, model="m", route="chat",
                                      cost_usd=0.001, attempts=[Attempt("m", "ok", cost_usd=0.001)]))
        await telemetry.aclose()
        return url

    db = asyncio.run(mixed())
    page = tmp_path / "mixed.html"
    assert report("--db", db, "--html", str(page)) == 0
    plot = page.read_text().split("cost over time per model", 1)[1]
    assert "USD per 60 min; peak 0.060000 USD" in plot, plot[-300:]
