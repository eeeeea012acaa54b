"""The load generators of the overhead benchmark: wrk (non-streaming POSTs, closed loop),
`laneway loadtest --stream` (time to first byte, and the gaps between forwarded chunks) and
`stream_probe.py` (time to first byte on a bare socket, the cross-check of the latter)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contenders import LOAD_CORE, ROOT, VENV_PYTHON

PAYLOADS = ROOT / "bench" / "payloads.jsonl"
LUA = ROOT / "bench" / "wrk_post.lua"


def wrk_run(url: str, connections: int, seconds: float,
            on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    command = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
               "--timeout", "10s", "-s", str(LUA), url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                               env={"BENCH_PAYLOADS": str(PAYLOADS), "PATH": "/usr/bin:/bin"})
    while process.poll() is None:
        if on_tick is not None:
            on_tick()
        time.sleep(0.5)
    out = process.stdout.read().decode() if process.stdout else ""
    line = next((raw for raw in out.splitlines() if raw.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out[-500:]}")
    data = json.loads(line)
    seconds_run = data["duration_us"] / 1e6
    return {"requests": data["requests"], "rps": data["requests"] / seconds_run,
            "errors": data["errors"] + data["non2xx"], "p50_ms": data["p50_us"] / 1000,
            "p90_ms": data["p90_us"] / 1000, "p99_ms": data["p99_us"] / 1000, "max_ms": data["max_us"] / 1000}


def stream_run(url: str, seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = ["taskset", "-c", LOAD_CORE, VENV_PYTHON, "-m", "laneway.loadtest", "--url", url,
                   "--stream", "--concurrency", "1", "--duration", f"{seconds:g}", "--warmup", "1",
                   "--payloads",
                   str(PAYLOADS), "--quiet", "--json", out.name]
        subprocess.run(command, cwd=ROOT, capture_output=True, check=False,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
        data = json.loads(Path(out.name).read_text() or "{}")
    everything = data.get("all", {})
    ttft = everything.get("ttft_ms") or {}
    gaps = data.get("chunk_gap_ms") or {}
    return {"ttft_p50_ms": ttft.get("p50"), "ttft_p99_ms": ttft.get("p99"),
            "chunk_gap_p50_ms": gaps.get("p50"),
            "errors": everything.get("errors"), "requests": everything.get("requests")}


def probe_run(url: str, seconds: float) -> dict[str, Any]:
    """`stream_probe.py` pinned like the other load generators: its JSON figures. A contender that
    fails the probe gets no figure (and a line on stderr saying why) instead of ending the run."""
    command = ["taskset", "-c", LOAD_CORE, VENV_PYTHON, str(ROOT / "bench" / "stream_probe.py"), "--url", url,
               "--seconds", f"{seconds:g}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, check=False, env={"PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        print(f"stream_probe failed on {url}: {done.stderr.decode()[-300:]}", file=sys.stderr, flush=True)
        return {"first_event_p50_ms": None}
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures
