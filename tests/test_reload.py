"""Hot reload under a steady load: no request fails while the routing file changes under it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _live import live_gateway

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
