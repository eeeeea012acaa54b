"""The dashboard page in a real headless Chromium shows the numbers `stats()` returns, and behind an admin
key asks for it and sends it."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from _live import live_gateway
from _pg import MODELS, make_exchange
from laneway.keys import hash_key
from laneway.telemetry import Telemetry, TelemetrySettings

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@contextmanager
def serving(telemetry: Telemetry) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/dashboard":
                body, kind = telemetry.dashboard_html(), "text/html; charset=utf-8"
            elif self.path == "/admin/stats":
                body, kind = json.dumps(telemetry.stats()).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dashboard"
    finally:
        server.shutdown()
        server.server_close()


def chromium(*args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Chromium is missing: apt-get install -y chromium"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Page(HTMLParser):
    """The text of every element with an id (key `#id`) or with `data-model` and `data-field`."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}
        self.hidden: set[str] = set()
        self._open: list[tuple[str, str | None]] = []  # (tag, key of the text it feeds)
        self.feed(dom)
        self.close()

    def cell(self, model: str, field: str) -> str:
        return self.texts[f"{model}|{field}"]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        key = None
        if "data-model" in found and "data-field" in found:
            key = f"{found['data-model']}|{found['data-field']}"
        elif "id" in found:
            key = f"#{found['id']}"
            if "hidden" in found:
                self.hidden.add(found["id"])
        if key is not None:
            self.texts[key] = ""
        self._open.append((tag, key))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass  # void elements (meta, br) never see an end tag

    def handle_data(self, data: str) -> None:
        for _, key in self._open:
            if key is not None:
                self.texts[key] += data


def shown(text: str) -> float:
    return float(text.rstrip("%"))


def test_the_dashboard_in_chromium_shows_what_stats_returns() -> None:
    telemetry = Telemetry(TelemetrySettings(exchange_log=None), simulated=True)
    for i in range(400):
        telemetry.record(make_exchange(i))
    telemetry.count("cooldown", MODELS[1])
    stats = telemetry.stats()
    assert any(figures["failed_attempts"] for figures in stats["models"].values())
    ARTIFACTS.mkdir(exist_ok=True)
    with serving(telemetry) as url:
        page = Page(chromium("--dump-dom", url))
        chromium("--window-size=1400,700", f"--screenshot={ARTIFACTS / 'dashboard.png'}", url)
    assert page.texts["#total-requests"].strip() == "400"
    assert abs(shown(page.texts["#total-cost"]) - stats["total"]["cost_usd"]) <= 5e-5
    assert "simulated" not in page.hidden and "simulated fleet" in page.texts["#simulated"]
    assert {key.split("|")[0] for key in page.texts if "|" in key} == set(stats["models"]) == set(MODELS)
    for model, figures in stats["models"].items():
        assert int(page.cell(model, "requests")) == figures["requests"]
        assert int(page.cell(model, "errors")) == figures["errors"]
        assert int(page.cell(model, "fallbacks")) == figures["fallbacks"]
        assert int(page.cell(model, "failed_attempts")) == figures["failed_attempts"]
        for field in ("p50_ms", "p95_ms", "p99_ms", "ttft_p95_ms"):
            assert abs(shown(page.cell(model, field)) - figures[field]) <= 0.05 + 1e-9, field
        assert abs(shown(page.cell(model, "share")) - figures["share"] * 100) <= 0.05 + 1e-9
        assert (
            abs(shown(page.cell(model, "cost_per_conversation_usd")) - figures["cost_per_conversation_usd"])
            <= 5e-7
        )
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


ADMIN_KEY = "lw-dashboard-admin-key"
CLIENT_KEY = "lw-dashboard-client-key"


def test_behind_an_admin_key_the_dashboard_asks_for_it_and_sends_it(sim_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANEWAY_TEST_DASHBOARD_KEY", ADMIN_KEY)
    config = (f"admin: {{key_env: LANEWAY_TEST_DASHBOARD_KEY}}\nkeys:\n- name: web\n"
              f"  hash: \"{hash_key(CLIENT_KEY)}\"\nroutes:\n- name: chat\n  target: gpt-5-mini\n")
    with live_gateway(config, sim_url, telemetry=Telemetry(TelemetrySettings(exchange_log=None))) as live:
        body = json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hi"}]}).encode()
        for _ in range(3):
            request = urllib.request.Request(live.url + "/v1/chat/completions", data=body,
                                             headers={"authorization": f"Bearer {CLIENT_KEY}"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(live.url + "/admin/stats")
        assert refused.value.code == 401  # the figures stay behind the key
        keyless = Page(chromium("--dump-dom", live.url + "/dashboard"))
        wrong = Page(chromium("--dump-dom", live.url + "/dashboard#key=not-the-key"))
        keyed = Page(chromium("--dump-dom", live.url + f"/dashboard#key={ADMIN_KEY}"))
    assert "login" not in keyless.hidden and keyless.texts["#total-requests"].strip() == "-"
    assert "HTTP 401" in keyless.texts["#status"] and "Authorization: Bearer" in keyless.texts["#status"]
    assert "login" not in wrong.hidden and "the admin key given was refused" in wrong.texts["#status"]
    assert "login" in keyed.hidden and keyed.texts["#total-requests"].strip() == "3"
    assert keyed.cell("gpt-5-mini", "requests") == "3"
