"""Throughput of `laneway serve --workers N` against N = 1, in one run.

Laneway runs the overhead benchmark's full config (ten routes, metrics and the SQLite exchange log
on) in front of `bench/upstream.py`; wrk drives it at 64 connections. Nothing is pinned: the
workers, the upstream and wrk share every core of the machine, so on a 2-core machine the ideal
is less than 2x (the upstream and wrk need CPU too). The CPU columns say where the cores went.
Rounds alternate the worker counts; the report gives medians.

Run (from the repository root):
    .venv/bin/python bench/bench_workers.py [--workers 1 2] [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import ROOT, UPSTREAM_PORT, VENV_PYTHON, WORK, _answers, process_cpu_seconds, process_tree
from measure import LUA, PAYLOADS

PORT = 9020


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", default="var/bench/workers.json")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    upstream = _spawn([VENV_PYTHON, str(ROOT / "bench" / "upstream.py"), "--port", str(UPSTREAM_PORT)], "upstream")
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in args.workers}
    try:
        _wait(f"http://127.0.0.1:{UPSTREAM_PORT}/v1/chat/completions")
        for round_no in range(args.rounds):
            for n in args.workers if round_no % 2 == 0 else args.workers[::-1]:
                results[n].append(_measure(n, args.connections, args.seconds, upstream.pid))
                print(f"round {round_no + 1}, {n} worker(s): {results[n][-1]['rps']:.0f} req/s", flush=True)
    finally:
        _kill(upstream)
    report = _report(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rounds": results, "medians": report}, indent=2) + "\n")
    base = report[args.workers[0]]["rps"]
    for n, row in report.items():
        print(f"{n} worker(s): {row['rps']:.0f} req/s ({row['rps'] / base:.2f}x), p50 {row['p50_ms']:.2f} ms, "
              f"p99 {row['p99_ms']:.2f} ms, CPU: laneway {row['laneway_cores']:.2f} cores, "
              f"upstream {row['upstream_cores']:.2f}, errors {row['errors']:.0f}")
        last = results[n][-1]["per_process_cores"]
        print(f"  last round, cores per gateway process (parent, workers, fleet): {last}")
    return 0


def _measure(workers: int, connections: int, seconds: float, upstream_pid: int) -> dict[str, Any]:
    database = WORK / f"workers-{workers}.sqlite3"
    for stale in WORK.glob(f"workers-{workers}.sqlite3*"):
        stale.unlink()
    config = WORK / f"workers-{workers}.yaml"
    text = (ROOT / "bench" / "configs" / "laneway-full.yaml").read_text()
    config.write_text(text.replace("sqlite:///var/bench/exchanges.sqlite3", f"sqlite:///{database}"))
    gateway = _spawn([VENV_PYTHON, "-m", "laneway", "serve", "--config", str(config), "--host", "127.0.0.1",
                      "--port", str(PORT), "--workers", str(workers)], f"workers-{workers}")
    try:
        url = f"http://127.0.0.1:{PORT}/v1/chat/completions"
        _wait(url)
        _wrk(url, connections, 2.0)  # warm-up: connections, pools, first-call caches
        laneway_before, upstream_before = _cpu_by_pid(gateway.pid), _cpu_by_pid(upstream_pid)
        started = time.monotonic()
        result = _wrk(url, connections, seconds)
        wall = time.monotonic() - started
        laneway = {pid: cpu - laneway_before.get(pid, 0.0) for pid, cpu in _cpu_by_pid(gateway.pid).items()}
        result["laneway_cores"] = sum(laneway.values()) / wall
        result["per_process_cores"] = sorted((round(cpu / wall, 2) for cpu in laneway.values()), reverse=True)
        result["upstream_cores"] = (sum(_cpu_by_pid(upstream_pid).values()) - sum(upstream_before.values())) / wall
        return result
    finally:
        _kill(gateway)


def _wrk(url: str, connections: int, seconds: float) -> dict[str, Any]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(LUA), url]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT,
                          env={"BENCH_PAYLOADS": str(PAYLOADS), "PATH": "/usr/bin:/bin"})
    data = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    return {"rps": data["requests"] / (data["duration_us"] / 1e6), "errors": data["errors"] + data["non2xx"],
            "p50_ms": data["p50_us"] / 1000, "p99_ms": data["p99_us"] / 1000}


def _report(results: dict[int, list[dict[str, Any]]]) -> dict[int, dict[str, float]]:
    keys = ("rps", "p50_ms", "p99_ms", "laneway_cores", "upstream_cores", "errors")
    return {n: {k: statistics.median(r[k] for r in runs) for k in keys} for n, runs in results.items()}


def _spawn(command: list[str], name: str) -> subprocess.Popen[bytes]:
    log = (WORK / f"{name}.log").open("wb")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def _wait(url: str) -> None:
    deadline = time.monotonic() + 60
    while not _answers(url):
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} is not answering after 60 s; see the logs in {WORK}")
        time.sleep(0.3)


def _cpu_by_pid(root: int) -> dict[int, float]:
    """CPU seconds of each process in `root`'s tree."""
    return {pid: process_cpu_seconds(pid) for pid in process_tree(root)}


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


if __name__ == "__main__":
    raise SystemExit(main())
