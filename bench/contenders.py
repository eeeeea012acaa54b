"""The processes of the overhead benchmark: the fake upstream and each contender, started pinned
to their cores, checked for readiness, measured (CPU time and RSS of the process tree), stopped."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python")
WORK = Path("/tmp/laneway-bench")
LITELLM_VENV = Path("/tmp/litellm-venv")
UPSTREAM_PORT = 9001
CONTENDER_CORE = "0"
LOAD_CORE = "1"  # shared by the upstream and the load generators
BODY = b'{"model":"laneway","messages":[{"role":"user","content":"ping"}],"max_tokens":8}'
_TICK = os.sysconf("SC_CLK_TCK")

# `laneway serve --config FILE --host H --port P` without going through the CLI's other commands.
LANEWAY_SERVE = ("import sys, uvloop; from laneway.server import serve; "
                 "uvloop.run(serve(sys.argv[1], '127.0.0.1', int(sys.argv[2])))")


@dataclass
class Contender:
    name: str
    port: int
    path: str = "/v1/chat/completions"
    process: subprocess.Popen[bytes] | None = None
    peak_rss_mb: float = 0.0
    log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def command(self) -> list[str]:
        return _COMMANDS[self.name](self)

    def pids(self) -> list[int]:
        return process_tree(self.process.pid) if self.process else []

    def cpu_seconds(self) -> float:
        """CPU time of the process tree, from the scheduler's own accounting (`schedstat`, in ns).

        `utime + stime` in `/proc/PID/stat` are charged a clock tick (10 ms) at a time; the
        scheduler's runtime is exact. On the 2-core machine the two agreed within 1-2 µs per
        request over 6 s rounds (`sampled_cpu_seconds` is kept to show it)."""
        return sum(process_cpu_seconds(pid) for pid in self.pids())

    def sampled_cpu_seconds(self) -> float:
        """`utime + stime` of the process tree: the clock-tick sampled figure `ps` and `top` show,
        kept to compare with `cpu_seconds`."""
        return sum(_cpu_ticks(pid) for pid in self.pids()) / _TICK

    def main_thread_cpu_seconds(self) -> float:
        """CPU of the root process's main thread alone: the event loop, for the Python contenders."""
        pid = self.process.pid if self.process else 0
        return _runtime_ns(pid, pid) / 1e9

    def sample_rss(self) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, sum(_rss_kb(pid) for pid in self.pids()) / 1024)


CONTENDERS = [Contender("direct", UPSTREAM_PORT), Contender("nginx", 9002), Contender("passthrough", 9003),
              Contender("litellm", 9004), Contender("laneway-full", 9005), Contender("laneway-bare", 9006)]


def _upstream(c: Contender) -> list[str]:
    return [VENV_PYTHON, str(ROOT / "bench" / "upstream.py"), "--port", str(c.port), "--chunks", "6",
            "--gap-ms", "5"]


def _nginx(c: Contender) -> list[str]:
    home = WORK / "nginx"
    home.mkdir(parents=True, exist_ok=True)
    (home / "nginx.conf").write_text(NGINX_CONF.format(home=home, port=c.port, upstream=UPSTREAM_PORT))
    return ["nginx", "-c", str(home / "nginx.conf"), "-p", str(home)]


def _passthrough(c: Contender) -> list[str]:
    return [VENV_PYTHON, str(ROOT / "bench" / "passthrough.py"), "--port", str(c.port), "--upstream",
            f"http://127.0.0.1:{UPSTREAM_PORT}/v1/chat/completions"]


def _litellm(c: Contender) -> list[str]:
    home = WORK / "litellm"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(LITELLM_CONF.format(upstream=UPSTREAM_PORT))
    return [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(home / "config.yaml"),
            "--host", "127.0.0.1", "--port", str(c.port), "--num_workers", "1"]


def _laneway(config: str) -> Callable[[Contender], list[str]]:
    def command(c: Contender) -> list[str]:
        return [VENV_PYTHON, "-c", LANEWAY_SERVE, str(ROOT / "bench" / "configs" / config), str(c.port)]
    return command


_COMMANDS: dict[str, Callable[[Contender], list[str]]] = {
    "direct": _upstream, "nginx": _nginx, "passthrough": _passthrough, "litellm": _litellm,
    "laneway-full": _laneway("laneway-full.yaml"), "laneway-bare": _laneway("laneway-bare.yaml"),
}

NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {home}/body;
  proxy_temp_path {home}/proxy;
  fastcgi_temp_path {home}/fastcgi;
  uwsgi_temp_path {home}/uwsgi;
  scgi_temp_path {home}/scgi;
  upstream fake {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""

LITELLM_CONF = """model_list:
  - model_name: laneway
    litellm_params:
      model: openai/fast
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: unused
litellm_settings:
  drop_params: true
  set_verbose: false
  turn_off_message_logging: true
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
  dangerously_permit_weak_or_unset_master_key: true
"""
_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "PYTHONPATH": str(ROOT / "src")}


class Fleet:
    """Starts the upstream and the contenders; `failed` maps a contender that could not start to why."""

    def __init__(self, contenders: list[Contender]) -> None:
        self.contenders = {c.name: c for c in contenders}
        self.upstream = Contender("upstream", UPSTREAM_PORT)
        self.failed: dict[str, str] = {}

    def get(self, name: str) -> Contender:
        return self.upstream if name == "direct" else self.contenders[name]

    def __enter__(self) -> Fleet:
        (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
        for stale in (ROOT / "var" / "bench").glob("exchanges.sqlite3*"):
            stale.unlink()
        _start(self.upstream, _upstream(self.upstream), LOAD_CORE)
        for contender in self.contenders.values():
            if contender.name == "direct":
                continue
            why = _unavailable(contender.name)
            if why is None:
                why = _start(contender, contender.command(), CONTENDER_CORE)
            if why is not None:
                self.failed[contender.name] = why
        return self

    def __exit__(self, *exc: object) -> None:
        for contender in [*self.contenders.values(), self.upstream]:
            _stop(contender)


def _unavailable(name: str) -> str | None:
    if name == "nginx" and shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install -y nginx)"
    if name == "litellm" and not (LITELLM_VENV / "bin" / "litellm").exists():
        return install_litellm()
    return None


def install_litellm() -> str | None:
    print(f"installing the latest LiteLLM into {LITELLM_VENV} ...", file=sys.stderr, flush=True)
    steps = [[sys.executable, "-m", "venv", str(LITELLM_VENV)],
             [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"`{' '.join(step)}` failed: {done.stderr.strip()[-400:]}"
    return None


def _start(contender: Contender, command: list[str], core: str) -> str | None:
    WORK.mkdir(parents=True, exist_ok=True)
    contender.log = (WORK / f"{contender.name}.log").open("wb")
    contender.process = subprocess.Popen(["taskset", "-c", core, *command], cwd=ROOT, stdout=contender.log,
                                         stderr=subprocess.STDOUT, env={**os.environ, **_ENV},
                                         start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if contender.process.poll() is not None:
            return f"exited with {contender.process.returncode}; see {WORK / contender.name}.log"
        if _answers(contender.url):
            return None
        time.sleep(0.5)
    return f"not answering after 90 s; see {WORK / contender.name}.log"


def _answers(url: str) -> bool:
    request = urllib.request.Request(url, data=BODY, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _stop(contender: Contender) -> None:
    process = contender.process
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # its own session: the process and its workers only
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def process_cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, from the scheduler's accounting."""
    try:
        tasks = [int(task) for task in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return 0.0
    return sum(_runtime_ns(pid, task) for task in tasks) / 1e9


def _runtime_ns(pid: int, task: int) -> int:
    """Time the thread has run on a CPU, in ns (first field of its `schedstat`); 0 once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def ensure_tools() -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install -y wrk util-linux")
