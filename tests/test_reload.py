"""Hot reload under a steady load: no request fails while the routing file changes under it."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from _live import live_gateway
from laneway.config import load_config
from laneway.server._serve import _on_sighup, check_exposure

A = "routes:\n- name: a\n  target: gpt-5-mini\n"
B = "routes:\n- name: b\n  target: gemini-2.5-flash-lite\n  fallbacks: [gpt-5-mini]\n"


def test_reload_while_serving_loses_nothing(sim_url: str, tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(A)
    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def client(url: str) -> None:
        body = json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hi"}],
                           "max_tokens": 16}).encode()
        while not stop.is_set():
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as r:
                    results.append((r.status, r.headers["x-laneway-route"]))
            except urllib.error.HTTPError as error:
                results.append((error.code, ""))

    with live_gateway(A, sim_url, config_path=path) as live, ThreadPoolExecutor(6) as pool:
        for _ in range(6):
            pool.submit(client, live.url + "/v1/chat/completions")
        assert live.gateway is not None
        for i in range(8):
            time.sleep(0.3)
            path.write_text(B if i % 2 == 0 else A)
            live.call(live.gateway.reload())
        time.sleep(0.3)
        stop.set()
    assert len(results) > 30
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:5]
    assert {route for _, route in results} == {"a", "b"}


def _reload(url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url + "/admin/reload", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_reload_that_would_expose_the_gateway_without_keys_is_refused(sim_url: str, tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(A)
    with live_gateway(A, sim_url, config_path=path) as live:
        assert live.gateway is not None
        # As `laneway serve --host 0.0.0.0` with client keys would set it.
        live.gateway.vet = lambda config: check_exposure(config, "0.0.0.0", allow_unauthenticated=False)
        path.write_text(B)
        status, body = _reload(live.url)
        assert status == 400 and body["reloaded"] is False
        assert any("no client keys are configured" in error for error in body["errors"])
        assert [route.name for route in live.gateway.config.routes] == ["a"]  # the running config stays


def test_a_reload_that_fails_for_anything_but_the_file_says_so_and_keeps_the_running_config(
        sim_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Only a file's mistakes were caught: anything else (a port the new config's fleet could not take)
    answered an HTTP 500 with no word of the reload, or left a traceback of a task no one awaited."""
    path = tmp_path / "routes.yaml"
    path.write_text(A)

    def fails(config: Any) -> Any:
        raise OSError(98, "Address already in use")

    async def by_signal(gateway: Any) -> None:
        tasks: set[asyncio.Task[None]] = set()
        _on_sighup(gateway, tasks)()
        await asyncio.gather(*tasks)

    with live_gateway(A, sim_url, config_path=path) as live, caplog.at_level(logging.ERROR, logger="laneway"):
        assert live.gateway is not None
        live.gateway.vet = fails
        path.write_text(B)
        status, body = _reload(live.url)
        live.call(by_signal(live.gateway))
        assert [route.name for route in live.gateway.config.routes] == ["a"]
    assert status == 500 and body["reloaded"] is False
    assert body["errors"] == ["the new config could not be put to work: OSError: [Errno 98] Address already in use"]
    said = [r.getMessage() for r in caplog.records if "reload failed, keeping the running config" in r.getMessage()]
    assert len(said) == 2 and "OSError: [Errno 98] Address already in use" in said[1]


def test_a_reload_says_which_changes_need_a_restart(sim_url: str, tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(A)
    with live_gateway(A, sim_url, config_path=path) as live:
        path.write_text(B + "state: redis://127.0.0.1:1/0\nshadow: {queue: 5}\n")
        status, body = _reload(live.url)
        assert status == 200 and body["reloaded"] is True
        restart = [w for w in body["warnings"] if "takes effect only when Laneway restarts" in w]
        assert [w.split(":")[0] for w in restart] == ["state", "shadow.queue"]
        assert live.gateway is not None and live.gateway.state is None  # not connected to the new store
        assert live.gateway.config.state is None  # the config says what runs
        path.write_text(A)  # back to the file it runs: nothing it cannot apply
        status, body = _reload(live.url)
        assert status == 200 and not [w for w in body["warnings"] if "takes effect only when" in w], body


def test_a_reload_says_which_variables_the_environment_lacks(sim_url: str, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(A)
    with live_gateway(A, sim_url, config_path=path) as live:
        path.write_text("admin: {key_env: LANEWAY_TEST_UNSET_ADMIN_KEY}\n" + A)
        status, body = _reload(live.url)
    assert status == 200 and body["warnings"] == [
        "admin.key_env: `LANEWAY_TEST_UNSET_ADMIN_KEY` is not set; the admin endpoints stay closed until it is"]
    assert "LANEWAY_TEST_UNSET_ADMIN_KEY` is not set" in caplog.text  # and in the server's log


def test_the_gateway_keeps_serving_while_a_reload_reads_the_file(sim_url: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import laneway.gateway

    path = tmp_path / "routes.yaml"
    path.write_text(A)
    reading, release = threading.Event(), threading.Event()

    def slow_load(source: Path) -> Any:  # a routing file that takes long to read and analyse
        reading.set()
        release.wait(30)
        return load_config(source)

    monkeypatch.setattr(laneway.gateway, "load_config", slow_load)
    with live_gateway(A, sim_url, config_path=path) as live, ThreadPoolExecutor(1) as pool:
        path.write_text(B)
        reloaded = pool.submit(_reload, live.url)
        assert reading.wait(10)
        try:
            with urllib.request.urlopen(live.url + "/healthz", timeout=5) as r:
                status = r.status
        finally:
            release.set()
        assert status == 200
        assert reloaded.result(timeout=30) == (200, {"reloaded": True, "routes": 1, "warnings": []})


def test_a_reload_whose_simulated_fleet_cannot_take_its_port_is_a_500_naming_sim_port(tmp_path: Path) -> None:
    """The fleet's port taken is no mistake of the file (`laneway check` passes it): the reload answered 400,
    blaming `host`, where the README promises a 500 that says what stopped it."""
    import socket

    real = "models:\n  m: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\nroutes:\n- target: m\n"
    path = tmp_path / "routes.yaml"
    path.write_text(real)
    with socket.socket() as taken, live_gateway(real, None, config_path=path) as live:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path.write_text(f"sim: {{port: {taken.getsockname()[1]}}}\n" + A)
        status, body = _reload(live.url)
        assert live.gateway is not None and [r.target for r in live.gateway.config.routes] == ["m"]
    assert status == 500 and body["reloaded"] is False
    assert "`sim.port`" in body["errors"][0] and "cannot listen on 127.0.0.1:" in body["errors"][0]


def test_a_worker_refuses_a_reload_that_would_start_the_simulated_fleet(tmp_path: Path) -> None:
    """Each worker of `serve --workers N` started its own fleet on the same port: one switched, the others kept
    the old routes, and the answer said `reloaded: true` while workers ran different tables."""
    real = "models:\n  m: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\nroutes:\n- target: m\n"
    path = tmp_path / "routes.yaml"
    path.write_text(real)
    with live_gateway(real, None, config_path=path) as live:
        assert live.gateway is not None
        live.gateway.starts_fleet_on_reload = False  # as `serve` sets it in a worker
        path.write_text(A)
        status, body = _reload(live.url)
        assert [r.target for r in live.gateway.config.routes] == ["m"] and live.gateway.sim_url is None
    assert status == 500 and "Restart the server to run simulated models" in body["errors"][0]
