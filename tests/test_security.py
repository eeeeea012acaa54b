"""Client keys, admin protection, and provider keys that never leak into any output."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from laneway.cli import main
from laneway.config import load_config, parse_config
from laneway.errors import ConfigError, RateLimited
from laneway.keys import KeyPolicy, KeyRing, hash_key

CLIENT_KEY = "lw-test-client-key"
OTHER_KEY = "lw-test-other-key"
ADMIN_KEY = "lw-test-admin-key"
PLANTED = "sk-planted-SECRET-4f9a1c"

KEYS = f"""
admin: {{key_env: LANEWAY_TEST_ADMIN_KEY}}
keys:
  - name: web
    hash: "{hash_key(CLIENT_KEY)}"
    routes: [chat]
    requests_per_minute: 3
  - name: tight
    hash: "{hash_key(OTHER_KEY)}"
    usd_budget: 0.0000001
routes:
- name: billing
  matcher: "metadata.topic == billing"
  target: gpt-5
- name: chat
  target: gpt-5-mini
"""


def call(live: LiveGateway, path: str, key: str | None = None, body: Any = None) -> tuple[int, dict[str, str], str]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(live.url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def chat(topic: str = "chat") -> dict[str, Any]:
    return {"model": "laneway", "messages": [{"role": "user", "content": "hi"}], "metadata": {"topic": topic}}


@pytest.fixture()
def keyed(sim_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveGateway]:
    monkeypatch.setenv("LANEWAY_TEST_ADMIN_KEY", ADMIN_KEY)
    with live_gateway(KEYS, sim_url) as live:
        yield live


def test_requests_refused_before_they_are_read_are_recorded(sim_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client without its key (401), a body over the limit (413), a web page (403): none left a trace in
    the metrics, the stats or the exchange log, and a client deployed with a revoked key was invisible."""
    monkeypatch.setenv("LANEWAY_TEST_ADMIN_KEY", ADMIN_KEY)
    sink = RecordingSink()
    small = KEYS + "server: {max_body_bytes: 2000}\n"
    with live_gateway(small, sim_url, telemetry=sink) as live:
        refused = [call(live, "/v1/chat/completions", None, chat()),
                   call(live, "/v1/chat/completions", "lw-wrong", chat()),
                   call(live, "/v1/chat/completions", CLIENT_KEY, {**chat(), "pad": "x" * 5000})]
    with live_gateway("routes:\n- target: gpt-5-mini\n", sim_url, telemetry=sink) as live:
        request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(chat()).encode(),
                                         headers={"origin": "http://evil.example"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
    assert [status for status, _, _ in refused] + [caught.value.code] == [401, 401, 413, 403]
    recorded = [sink.by_id(headers["x-request-id"]) for _, headers, _ in refused]
    recorded.append(sink.by_id(caught.value.headers["x-request-id"]))
    assert [(e.status, e.model, e.api_key) for e in recorded] == [(401, None, None), (401, None, None),
                                                                   (413, None, None), (403, None, None)]
    assert all(e.error for e in recorded)


def test_client_keys_are_required_and_scoped(keyed: LiveGateway) -> None:
    status, _, body = call(keyed, "/v1/chat/completions", None, chat())
    assert status == 401 and "Authorization: Bearer" in body
    status, _, body = call(keyed, "/v1/chat/completions", "lw-wrong", chat())
    assert status == 401 and "invalid API key" in body
    status, _, _ = call(keyed, "/v1/chat/completions", CLIENT_KEY, chat())
    assert status == 200
    status, _, body = call(keyed, "/v1/chat/completions", CLIENT_KEY, chat("billing"))
    assert status == 403 and "may not use route `billing`" in body
    direct = {**chat(), "model": "gpt-5-mini"}
    status, _, body = call(keyed, "/v1/chat/completions", CLIENT_KEY, direct)
    assert status == 403 and "not a model named directly" in body and "None" not in body


def test_with_client_keys_the_model_list_needs_one_and_shows_what_it_may_send(keyed: LiveGateway) -> None:
    for path in ("/v1/models", "/v1/models/laneway"):
        status, _, body = call(keyed, path)
        assert status == 401 and "Authorization: Bearer" in body
    status, _, body = call(keyed, "/v1/models", CLIENT_KEY)  # `web` may use the `chat` route only
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["laneway", "auto"]
    assert call(keyed, "/v1/models/gpt-5-mini", CLIENT_KEY)[0] == 404
    status, _, body = call(keyed, "/v1/models", OTHER_KEY)  # `tight` may use every route, and name models
    assert status == 200 and "gpt-5-mini" in [m["id"] for m in json.loads(body)["data"]]


def test_request_rate_and_budget_limits_answer_429_with_the_reason(keyed: LiveGateway) -> None:
    statuses = [call(keyed, "/v1/chat/completions", CLIENT_KEY, chat()) for _ in range(4)]
    assert [s for s, _, _ in statuses] == [200, 200, 200, 429]
    _, headers, body = statuses[-1]
    assert "over 3 requests per minute" in body and int(headers["retry-after"]) >= 1
    assert call(keyed, "/v1/chat/completions", OTHER_KEY, chat())[0] == 200  # spends past the tiny budget
    status, _, body = call(keyed, "/v1/chat/completions", OTHER_KEY, chat())
    assert status == 429 and "spent its month budget" in body


def test_admin_endpoints_need_the_admin_key(keyed: LiveGateway) -> None:
    assert call(keyed, "/admin/config")[0] == 401
    assert call(keyed, "/admin/config", CLIENT_KEY)[0] == 401
    status, _, body = call(keyed, "/admin/config", ADMIN_KEY)
    assert status == 200 and json.loads(body)["routes"][0]["name"] == "billing"
    assert call(keyed, "/admin/reload", None, {})[0] == 401
    # The scheme is case-insensitive, as for client keys (RFC 7235); the key itself is not.
    for authorization, expected in ((f"bearer {ADMIN_KEY}", 200), (f"BEARER  {ADMIN_KEY}", 200),
                                    (f"Bearer {ADMIN_KEY.upper()}", 401), (f"Basic {ADMIN_KEY}", 401), ("Bearer", 401)):
        request = urllib.request.Request(keyed.url + "/admin/config", headers={"authorization": authorization})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        assert status == expected, authorization


def test_an_admin_key_variable_that_is_not_set_keeps_the_admin_endpoints_closed(
        sim_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANEWAY_TEST_UNSET_ADMIN", raising=False)
    text = "admin: {key_env: LANEWAY_TEST_UNSET_ADMIN}\nroutes:\n- target: gpt-5-mini\n"  # no client keys
    with live_gateway(text, sim_url) as live:
        status, _, body = call(live, "/admin/config")
    assert status == 403 and "`LANEWAY_TEST_UNSET_ADMIN`, which is not set" in body


def test_keys_without_an_admin_key_close_the_admin_endpoints(sim_url: str) -> None:
    text = KEYS.replace("admin: {key_env: LANEWAY_TEST_ADMIN_KEY}\n", "")
    with live_gateway(text, sim_url) as live:
        status, _, body = call(live, "/admin/config", CLIENT_KEY)
    assert status == 403 and "admin.key_env" in body


class _EchoAuth(BaseHTTPRequestHandler):
    """An upstream that rejects the key and echoes it back, as some do."""

    def do_POST(self) -> None:
        """By the model asked for: a 401 that echoes it (`status`), at the end of a long message (`long`); a
        stream whose first event (`first`), or whose event after a first answer (`midstream`), does."""
        model = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))["model"]
        key = self.headers["authorization"]
        if model in ("status", "long"):
            body = json.dumps({"error": {"message": ("x" * 490 if model == "long" else "") +
                                         f"Incorrect API key provided: {key}"}})
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())
            return
        error = json.dumps({"error": {"message": f"invalid key {key}"}})
        answer = json.dumps({"id": "x", "object": "chat.completion.chunk", "model": model,
                             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}}]})
        events = [answer, error] if model == "midstream" else [error]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.write("".join(f"data: {event}\n\n" for event in events).encode())

    def log_message(self, *args: Any) -> None:
        pass




def _whatever_arrives(live: LiveGateway, body: dict[str, Any]) -> str:
    """The response's body, or as much as arrived of a stream cut after an error event."""
    try:
        return call(live, "/v1/chat/completions", None, body)[2]
    except http.client.IncompleteRead as cut:
        return cut.partial.decode()


def test_a_planted_provider_key_appears_in_no_output(sim_url: str, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PLANTED_PROVIDER_KEY", PLANTED)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoAuth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    models = "".join(f"""
  {name}:
    provider: openai
    base_url: http://127.0.0.1:{server.server_port}/v1
    model: {name}
    api_key_env: PLANTED_PROVIDER_KEY""" for name in ("status", "long", "first", "midstream"))
    text = f"models:{models}\nroutes:\n- target: status\n"
    sink = RecordingSink()
    caplog.set_level(logging.DEBUG)
    try:
        with live_gateway(text, sim_url, telemetry=sink) as live:
            outputs = [call(live, "/admin/config")[2], call(live, "/v1/chat/completions", None, chat())[2],
                       *(_whatever_arrives(live, {**chat(), "model": model, "stream": stream})
                         for model in ("status", "long", "first", "midstream") for stream in (False, True))]
    finally:
        server.shutdown()
    assert "Incorrect API key provided: Bearer [redacted]" in outputs[1]
    assert "invalid key Bearer [redacted]" in outputs[-1]  # the error event after the first answer
    assert "PLANTED_PROVIDER_KEY" in outputs[0]  # the variable's name is shown, never its value
    recorded = json.dumps([[e.error, [a.error for a in e.attempts], e.signals] for e in sink.exchanges])
    for output in [*outputs, recorded, caplog.text]:
        assert PLANTED not in output and PLANTED[:8] not in output, output


def test_serve_refuses_a_public_address_without_keys() -> None:
    done = subprocess.run([sys.executable, "-m", "laneway", "serve", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "listens on loopback only" in done.stderr and "--allow-unauthenticated" in done.stderr


@pytest.mark.parametrize("name", ["web", "a b: c", "#x", "yes", "123", "Support Team", "x\"y'z", "é-team", "- x"])
def test_the_entry_keys_new_prints_is_valid_config_with_that_name(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "new", name]) == 0
    out = capsys.readouterr().out
    key = out.splitlines()[0].rsplit(" ", 1)[1]
    entry = out.split("\n", 1)[1]
    config = tmp_path / "keys.yaml"
    config.write_text(f"{entry}routes:\n- target: gpt-5\n", encoding="utf-8")
    assert main(["check", str(config)]) == 0, capsys.readouterr().err
    [policy] = load_config(config).keys
    assert (policy.name, policy.digest) == (name, hash_key(key))


@pytest.mark.parametrize("name", ["", "  ", "a\nb", "tab\there"])
def test_keys_new_refuses_a_name_the_config_would_refuse(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", name]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("laneway keys new: ") and err.count("\n") == 1, err


@pytest.mark.parametrize(("name", "words"), [('""', "empty"), ('"  "', "blank"), ('"a\\nb"', "control character")])
def test_a_key_whose_name_is_empty_blank_or_unprintable_is_a_config_error(name: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'keys:\n  - name: {name}\n    hash: "{hash_key("k")}"\nroutes:\n- target: gpt-5\n')
    [issue] = caught.value.issues
    assert issue.path == "keys[0].name" and words in issue.message, issue


async def test_a_reload_applies_a_keys_changed_rate_limits_and_keeps_what_it_spent() -> None:
    def policies(**limits: int) -> tuple[KeyPolicy, ...]:
        return (KeyPolicy("web", hash_key(CLIENT_KEY), **limits),)

    ring = KeyRing(policies(requests_per_minute=2))
    [web] = ring.by_digest.values()
    await ring.admit(web, None, 10)
    await ring.admit(web, None, 10)
    ring.settle("web", 0, 0, 0.0, 0.25)
    with pytest.raises(RateLimited, match="over 2 requests per minute"):
        await ring.admit(web, None, 10)
    ring.update(policies(requests_per_minute=1000, tokens_per_minute=15))
    [web] = ring.by_digest.values()
    await ring.admit(web, None, 10)  # the new, higher limit
    with pytest.raises(RateLimited, match="over 15 tokens per minute"):
        await ring.admit(web, None, 10)
    assert ring.spent(web) == 0.25
    ring.update(policies())  # no limits at all
    [web] = ring.by_digest.values()
    for _ in range(5):
        await ring.admit(web, None, 10)


async def test_a_keys_token_rate_is_charged_what_a_request_used_beyond_its_estimate() -> None:
    """Only the estimate was charged (the prompt and 256 tokens without `max_tokens`): a key of 1,000 tokens a
    minute passed 6,370 in one. A request its token rate refuses took one of its requests a minute too."""
    ring = KeyRing((KeyPolicy("web", hash_key(CLIENT_KEY), requests_per_minute=3, tokens_per_minute=1000),))
    [web] = ring.by_digest.values()
    await ring.admit(web, None, 300)
    ring.settle("web", 300, 1200, 0.0, 0.0)  # the answer ran long: 900 tokens more than estimated
    with pytest.raises(RateLimited, match="over 1000 tokens per minute"):
        await ring.admit(web, None, 100)  # the bucket is in debt
    ring.update((KeyPolicy("web", hash_key(CLIENT_KEY), requests_per_minute=3, tokens_per_minute=100),))
    [web] = ring.by_digest.values()  # a new token limit: its bucket starts again, full; the requests' is kept
    await ring.admit(web, None, 40)
    with pytest.raises(RateLimited, match="over 100 tokens per minute"):
        await ring.admit(web, None, 90)
    await ring.admit(web, None, 10)  # its third request of the minute: the two refused were not counted


def test_two_keys_with_the_same_hash_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'keys:\n  - {{name: web, hash: "{hash_key("k")}", routes: [chat]}}\n'
                     f'  - {{name: web-copy, hash: "{hash_key("k")}"}}\nroutes:\n- {{name: chat, target: gpt-5}}\n')
    [issue] = caught.value.issues
    assert issue.path == "keys[1].hash" and "same hash as key `web`" in issue.message, issue
    assert "laneway keys new web-copy" in issue.message


def test_an_unknown_route_of_a_key_in_the_keys_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text(f'- {{name: ops, hash: "{hash_key("o")}", routes: [chatt]}}\n')
    (tmp_path / "routing.yaml").write_text(f'keys:\n  - {{name: web, hash: "{hash_key("k")}"}}\n'
                                           "keys_file: keys.yaml\nroutes:\n- {name: chat, target: gpt-5}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "routing.yaml")
    [issue] = caught.value.issues
    assert issue.path == "keys.yaml[0].routes" and "unknown route `chatt`" in issue.message, issue


def test_without_keys_a_web_page_can_neither_spend_nor_read_the_admin_figures(sim_url: str) -> None:
    """Loopback only trusts whoever reaches the gateway: a page in a browser there reaches it too."""
    with live_gateway("routes:\n- target: gpt-5-mini\n", sim_url) as live:
        def status(path: str, headers: dict[str, str], body: Any = None) -> tuple[int, str]:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(live.url + path, data=data, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        assert status("/v1/chat/completions", {}, chat())[0] == 200
        code, text = status("/v1/chat/completions", {"origin": "http://evil.example"}, chat())
        assert code == 403 and "a request from a web page (`Origin: http://evil.example`) is refused" in text
        assert status("/admin/reload", {"origin": "http://evil.example"}, {})[0] == 403
        port = live.url.rsplit(":", 1)[1]
        for host, expected in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200),
                               (f"rebound.example:{port}", 403)):
            assert status("/admin/config", {"host": host})[0] == expected, host
        assert status("/dashboard", {"host": f"rebound.example:{port}"})[0] == 403


def test_a_keys_token_rate_is_charged_what_a_trimmed_conversation_used(sim_url: str) -> None:
    """Admission estimates from the whole conversation; a route that trims it to a window sends far less."""
    text = f"""
keys:
  - {{name: support, hash: "{hash_key(CLIENT_KEY)}", tokens_per_minute: 6000}}
models:
  small: {{provider: openai, base_url: "sim:///gpt-5-mini/v1", model: gpt-5-mini, context_window: 400}}
routes:
- {{target: small, trim: oldest}}
"""
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "my parcel is late " * 6}
             for i in range(81)]
    body = {"model": "laneway", "messages": turns}
    with live_gateway(text, sim_url) as live:
        results = [call(live, "/v1/chat/completions", CLIENT_KEY, body) for _ in range(3)]
    assert [status for status, _, _ in results] == [200, 200, 200], results[-1][2]
    assert all(int(headers["x-laneway-trimmed"]) > 0 for _, headers, _ in results)


def test_requests_at_once_cannot_all_spend_a_keys_last_dollar(sim_url: str) -> None:
    """Each holds its estimated cost against the budget while it runs; one alone may still overshoot it."""
    text = f"""
keys:
  - {{name: tight, hash: "{hash_key(OTHER_KEY)}", usd_budget: 0.001}}
models:
  slow: {{provider: openai, base_url: "sim:///gpt-5-mini/v1", model: "gpt-5-mini@slow_400",
         price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}}}
routes:
- target: slow
"""
    body = {**chat(), "max_tokens": 200}  # held: about 200 x $2/M = $0.0004 each
    with live_gateway(text, sim_url) as live, ThreadPoolExecutor(12) as pool:
        statuses = sorted(status for status, _, _ in pool.map(
            lambda _: call(live, "/v1/chat/completions", OTHER_KEY, body), range(12)))
    served = statuses.count(200)
    assert 1 <= served <= 3 and set(statuses) <= {200, 429}, statuses


async def test_a_key_whose_secret_is_replaced_keeps_what_it_spent() -> None:
    """Counted by the key's hash, a key given a new secret under its name (by a reload) started its budget again,
    where the shared store, which counts by name, kept it; and a request that ended after its key was renamed
    kept its estimate held."""
    from laneway.errors import RateLimited
    from laneway.keys import KeyPolicy, KeyRing, hash_key

    old = KeyPolicy("team", hash_key("lw-old"), usd_budget=0.05, budget_period="day")
    ring = KeyRing((old,))
    await ring.admit(old, None, 10, 0.01)
    ring.settle("team", 10, 10, 0.01, 0.06)  # over the budget
    new = KeyPolicy("team", hash_key("lw-new"), usd_budget=0.05, budget_period="day")
    ring.update((new,))
    with pytest.raises(RateLimited, match="spent its day budget"):
        await ring.admit(new, None, 10, 0.01)
    await ring.admit(other := KeyPolicy("other", hash_key("lw-o"), usd_budget=1.0, budget_period="day"), None, 10,
                     0.5)
    ring.update((KeyPolicy("renamed", other.digest, usd_budget=1.0, budget_period="day"),))
    ring.settle("other", 10, 10, 0.5, 0.4)  # the request ends after the reload renamed its key
    assert ring._usage["other"].held == 0.0


@pytest.mark.parametrize(("method", "headers", "status"), [
    ("POST", {"origin": "http://page.example"}, 403),
    ("PUT", {}, 405),
    ("POST", {"content-length": str(30 * 1024 * 1024), "expect": "100-continue"}, 413),
])
def test_a_chat_request_refused_before_it_is_read_says_so_in_the_laneway_headers(
        sim_url: str, method: str, headers: dict[str, str], status: int) -> None:
    """Every chat answer carries the `x-laneway-*` headers, empty for a request refused before routing: these
    carried none, and a client reading `x-laneway-model` as the README shows failed on a KeyError."""
    with live_gateway("routes:\n- target: gpt-5-mini\n", sim_url) as live:
        host, port = live.url.removeprefix("http://").split(":")
        head = "".join(f"{name}: {value}\r\n" for name, value in {"content-length": "2", **headers}.items())
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"{method} /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{head}\r\n{{}}".encode())
            answer = sock.recv(65536).decode()
    assert answer.startswith(f"HTTP/1.1 {status} ")
    lines = answer.split("\r\n\r\n")[0].lower().split("\r\n")
    assert "x-laneway-route: " in lines and "x-laneway-model: " in lines and "x-laneway-lane: " in lines
    assert "x-laneway-cost-usd: 0.00000000" in lines and "x-laneway-attempts: 0" in lines


def test_get_of_a_models_path_ending_in_completions_is_the_model_lookups_404(sim_url: str) -> None:
    """It was taken for a chat path: a 405 that told the client to use the method it had used (`GET, HEAD`)."""
    with live_gateway("routes:\n- target: gpt-5-mini\n", sim_url) as live, \
            pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(live.url + "/v1/models/completions", timeout=30)
    assert caught.value.code == 404


def test_a_route_of_its_own_under_v1_models_still_takes_chat_requests(sim_url: str) -> None:
    with live_gateway("routes:\n- name: own\n  path: /v1/models/support\n  target: gpt-5-mini\n", sim_url) as live:
        request = urllib.request.Request(live.url + "/v1/models/support/chat/completions", data=json.dumps(
            {"model": "laneway", "messages": [{"role": "user", "content": "hi"}]}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200 and response.headers["x-laneway-route"] == "own"
        put = urllib.request.Request(live.url + "/v1/models/support/chat/completions", data=b"{}", method="PUT")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(put, timeout=30)
        assert refused.value.code == 405 and refused.value.headers["allow"] == "GET, HEAD, POST"
        with pytest.raises(urllib.error.HTTPError) as looked_up:  # a read is the model lookup's, no chat answer
            urllib.request.urlopen(live.url + "/v1/models/support/chat/completions", timeout=30)
        assert looked_up.value.code == 404 and "x-laneway-route" not in looked_up.value.headers
