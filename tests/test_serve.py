"""`laneway serve` as a user runs it: a real process with its simulated fleet, SIGHUP reload,
and a clean stop that flushes the exchange log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from laneway import cli
from laneway.cli import main

ROUTES = """
telemetry: {{exchange_log: "sqlite:///{db}"}}
routes:
- name: only
  target: {target}
"""

UNPRICED = """models:
  unpriced: {provider: openai, base_url: "sim:///gpt-5/v1", model: gpt-5}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def chat(url: str, key: str | None = None) -> str:
    body = json.dumps({"model": "laneway", "messages": [{"role": "user", "content": "hello"}]}).encode()
    headers = {"authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url + "/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as r:
        return str(r.headers["x-laneway-model"])


def send_chat(sock: socket.socket, body: dict[str, Any]) -> None:
    """A chat request written on a raw socket, whose answer the test reads itself."""
    payload = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(payload), payload))


def serve(config: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """`laneway serve` on a free port in a child process; returns it and its URL once it is ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "laneway", "serve", "--config", str(config), "--port", str(port),
                                *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while get(url + "/readyz") != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(process.communicate()[0])
        time.sleep(0.1)
    return process, url


def test_serve_reloads_on_sighup_and_flushes_on_stop(tmp_path: Path) -> None:
    db = tmp_path / "exchanges.sqlite3"
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=db, target="gpt-5-mini"))
    process, url = serve(config)
    try:
        assert chat(url) == "gpt-5-mini"
        # a model without a price: the reload says so, as `laneway check` and start-up would
        config.write_text(ROUTES.format(db=db, target="gpt-5") + UNPRICED)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while chat(url) != "gpt-5":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        config.write_text("routes: [oops")
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert chat(url) == "gpt-5"  # an invalid file keeps the running config
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "simulated fleet" in output and "reload failed, keeping the running config" in output
    assert output.count("no client keys configured") == 1, output  # said at start, not again at each reload
    reloaded = output.index("laneway: reloaded")
    assert "models.unpriced.price: no `price`" in output[reloaded:], output
    assert "models.unpriced.price: no `price`" not in output[:reloaded], output
    with sqlite3.connect(db) as connection:
        logged = connection.execute("select count(*) from exchanges").fetchone()[0]
    assert logged >= 3


def test_start_up_states_each_warning_of_the_routing_file_and_counts_the_overlaps(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(UNPRICED + """routes:
- {name: urgent, matcher: "priority == high", target: unpriced}
- {name: escalated, matcher: "escalation == true", target: gpt-5}
- {name: rest, target: gpt-5-mini}
""")
    process, _ = serve(config)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert output.count("laneway: models.unpriced.price: no `price`: its requests cost $0") == 1, output
    assert output.count("laneway: 1 warning(s) of routes that overlap; `laneway check` lists them") == 1, output
    assert "overlaps `urgent`" not in output, output


def test_workers_share_one_port_and_stop_gracefully(tmp_path: Path) -> None:
    db = tmp_path / "exchanges.sqlite3"
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=db, target="gpt-5-mini"))
    process, url = serve(config, "--workers", "2")
    try:
        assert [chat(url) for _ in range(20)] == ["gpt-5-mini"] * 20
        # A reload through one worker's endpoint reaches the other one too (through the supervisor).
        config.write_text(ROUTES.format(db=db, target="gpt-5"))
        request = urllib.request.Request(url + "/admin/reload", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["reloaded"] is True
        deadline = time.monotonic() + 15
        sent = 20
        while [chat(url) for _ in range(10)] != ["gpt-5"] * 10:
            sent += 10
            assert time.monotonic() < deadline, "a worker kept the old routes"
        sent += 10
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "2 workers serving" in output and "Traceback" not in output
    # The workers' own log lines reach the terminal: each reloaded once, the one that answered too.
    assert output.count("laneway: reloaded") == 2, output
    with sqlite3.connect(db) as connection:
        assert connection.execute("select count(*) from exchanges").fetchone()[0] == sent


def workers_of(process: subprocess.Popen[str]) -> list[int]:
    """The pids of `laneway serve --workers`' worker processes (not its simulated fleet)."""
    try:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        return [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    except FileNotFoundError:  # the supervisor, or a worker, exited meanwhile
        return []


def test_a_worker_that_dies_is_replaced_and_one_that_keeps_dying_stops_the_server(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=tmp_path / "exchanges.sqlite3", target="gpt-5-mini"))
    process, url = serve(config, "--workers", "2")
    try:
        first = workers_of(process)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(now := workers_of(process)) != 2 or first[0] in now:
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.1)
        assert chat(url) == "gpt-5-mini"
        seen = set(first)
        deadline = time.monotonic() + 90
        while process.poll() is None:  # every new worker dies right after it starts: a crash loop
            assert time.monotonic() < deadline, "the supervisor kept starting workers that die at once"
            for pid in set(workers_of(process)) - seen:
                seen.add(pid)
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, output
    assert "exited with code -9; starting a new one" in output
    assert "workers keep exiting right after they start" in output


def _replace_a_worker(process: subprocess.Popen[str], poll_s: float = 0.1) -> int:
    """Kill one worker and wait for the supervisor to start its replacement; the replacement's pid."""
    first = workers_of(process)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(now := workers_of(process)) != 2 or first[0] in now:
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        time.sleep(poll_s)
    [replacement] = set(now) - set(first)
    return replacement


def test_a_worker_that_replaces_a_dead_one_runs_what_its_peers_run_not_the_file_edited_since(
        tmp_path: Path) -> None:
    db, config = tmp_path / "exchanges.sqlite3", tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=db, target="gpt-5-mini"))
    process, url = serve(config, "--workers", "2")
    try:
        config.write_text("routes: [oops")  # broken, and never reloaded
        _replace_a_worker(process)
        config.write_text(ROUTES.format(db=db, target="gpt-5"))  # valid, and never reloaded either
        _replace_a_worker(process)
        time.sleep(3)  # the replacements start serving
        assert process.poll() is None
        assert {chat(url) for _ in range(20)} == {"gpt-5-mini"}
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert "Traceback" not in output and output.count("starting a new one") == 2, output


def test_a_replacement_keeps_what_a_reload_could_not_change_and_the_keys_its_peers_accept(tmp_path: Path) -> None:
    """`state:`, `telemetry:` and the like stay as the server started, in a replacement too; the keys are those
    its peers loaded, though the keys file broke since."""
    from laneway.keys import hash_key

    first, second = tmp_path / "first.sqlite3", tmp_path / "second.sqlite3"
    keys, config = tmp_path / "keys.yaml", tmp_path / "routes.yaml"
    keys.write_text(f'- {{name: web, hash: "{hash_key("lw-web")}"}}\n')
    config.write_text("keys_file: keys.yaml\n" + ROUTES.format(db=first, target="gpt-5-mini"))
    process, url = serve(config, "--workers", "2")
    try:
        config.write_text("keys_file: keys.yaml\n" + ROUTES.format(db=second, target="gpt-5"))
        process.send_signal(signal.SIGHUP)  # the route applies; the exchange log stays where it is
        deadline = time.monotonic() + 30
        while {chat(url, "lw-web") for _ in range(10)} != {"gpt-5"}:
            assert time.monotonic() < deadline, "the reload did not apply"
            time.sleep(0.2)
        keys.write_text("- name: [broken\n")  # mid-edit, never reloaded
        _replace_a_worker(process)
        _replace_a_worker(process)  # both workers are replacements now
        deadline = time.monotonic() + 60
        while get(url + "/readyz") != 200:
            assert time.monotonic() < deadline and process.poll() is None, "the replacements did not start"
            time.sleep(0.2)
        assert {chat(url, "lw-web") for _ in range(20)} == {"gpt-5"}
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and "Traceback" not in output, output
    assert output.count("telemetry: changed") == 1, output  # said by worker 0 alone
    with sqlite3.connect(first) as db:
        rows = db.execute("SELECT model, count(*) FROM exchanges GROUP BY model").fetchall()
    assert dict(rows).get("gpt-5", 0) >= 20, (rows, second.exists())
    assert not second.exists()


def test_a_sighup_that_comes_while_a_replacement_starts_reloads_it_once_it_serves(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=tmp_path / "exchanges.sqlite3", target="gpt-5-mini"))
    process, url = serve(config, "--workers", "2")
    try:
        replacement = _replace_a_worker(process, poll_s=0.02)
        deadline = time.monotonic() + 30
        # It has read the routing file its peers run once it opens the exchange log, and is still starting.
        while not any(str(p).endswith("exchanges.sqlite3") for p in _open_files(replacement)):
            assert time.monotonic() < deadline, "the replacement did not open the exchange log"
            time.sleep(0.005)
        config.write_text(ROUTES.format(db=tmp_path / "exchanges.sqlite3", target="gpt-5"))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while get(url + "/readyz") != 200:
            assert time.monotonic() < deadline and process.poll() is None, "the replacement did not start"
            time.sleep(0.2)
        time.sleep(1)
        assert {chat(url) for _ in range(30)} == {"gpt-5"}
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def _open_files(pid: int) -> list[Path]:
    files = []
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        with contextlib.suppress(OSError):  # closed meanwhile
            files.append(fd.readlink())
    return files


def fleet_of(process: subprocess.Popen[str]) -> int:
    """The pid of the simulated fleet `laneway serve` started."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    [pid] = [int(p) for p in children if b"\0sim\0" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return pid


def gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_the_fleet_is_out_of_reach_of_ctrl_c_and_stops_with_its_gateway(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=tmp_path / "exchanges.sqlite3", target="gpt-5-mini"))
    process, url = serve(config)
    fleet = fleet_of(process)
    # The terminal's Ctrl-C goes to the foreground process group: the gateway's, not the fleet's.
    assert os.getpgid(fleet) != os.getpgid(process.pid)
    assert chat(url) == "gpt-5-mini"
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode == 0 and gone(fleet, 5)  # the gateway stopped it on its way out

    process, url = serve(config)
    fleet = fleet_of(process)
    process.kill()  # a gateway that dies without stopping its fleet
    process.communicate(timeout=30)
    assert gone(fleet, 5), "the fleet outlived its gateway"


def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    db = tmp_path / "exchanges.sqlite3"
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=db, target="gpt-5-mini"))
    before = {*Path(tempfile.gettempdir()).glob("laneway-workers-*"), *Path("/tmp").glob("laneway-workers-*")}
    process, url = serve(config, "--workers", "2")
    private = {*Path(tempfile.gettempdir()).glob("laneway-workers-*"), *Path("/tmp").glob("laneway-workers-*")}
    private -= before
    deadline = time.monotonic() + 15
    while len(workers := workers_of(process)) < 2:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.1)
    assert [chat(url) for _ in range(6)] == ["gpt-5-mini"] * 6
    process.kill()  # SIGKILL: the supervisor forwards nothing
    process.communicate(timeout=30)
    deadline = time.monotonic() + 20
    while alive := [pid for pid in workers if Path(f"/proc/{pid}").exists()
                    and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]:
        assert time.monotonic() < deadline, f"workers {alive} outlived their parent"
        time.sleep(0.1)
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as again:  # the port is free for the next start
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
    with sqlite3.connect(db) as connection:  # they stopped gracefully: what they served is in the log
        assert connection.execute("select count(*) from exchanges").fetchone()[0] == 6
    # and their private directory (sockets, the routing file they ran, key hashes in it) went with them
    assert len(private) == 1 and not any(path.exists() for path in private), private


CUT_SHORT = """
server: {{shutdown_grace_ms: 1000}}
telemetry: {{exchange_log: "sqlite:///{db}"}}
models:
  stall:
    provider: openai
    base_url: sim:///gpt-5-mini/v1
    model: "gpt-5-mini@stall_mid_stream"
    stream_idle_ms: 60000
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
  silent:
    provider: openai
    base_url: sim:///gpt-5-mini/v1
    model: "gpt-5-mini@silent"
routes:
- name: stream
  matcher: "metadata.to == stall"
  target: stall
  deadline_ms: 60000
- name: whole
  target: silent
  deadline_ms: 60000
"""


def test_a_stop_past_the_grace_period_cuts_requests_in_flight_and_records_them(tmp_path: Path) -> None:
    db = tmp_path / "exchanges.sqlite3"
    config = tmp_path / "routes.yaml"
    config.write_text(CUT_SHORT.format(db=db).replace("shutdown_grace_ms: 1000", "shutdown_grace_ms: 60000"))
    process, url = serve(config)
    config.write_text(CUT_SHORT.format(db=db))  # the grace period a reload sets is the one the stop uses
    with urllib.request.urlopen(urllib.request.Request(url + "/admin/reload", data=b""), timeout=30) as response:
        assert json.loads(response.read())["reloaded"] is True
    streaming = {"model": "laneway", "stream": True, "metadata": {"to": "stall"},
                 "messages": [{"role": "user", "content": "tell me a long story"}]}
    whole = {"model": "laneway", "messages": [{"role": "user", "content": "hello"}]}
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as stream, \
            socket.create_connection(("127.0.0.1", port), timeout=30) as plain, \
            socket.create_connection(("127.0.0.1", port), timeout=30) as partial:
        for sock, body in ((stream, streaming), (plain, whole)):
            send_chat(sock, body)
        # a request whose body is still arriving at the stop: it had no request id, and no record
        partial.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-request-id: cut-partial\r\n"
                        b"x-laneway-conversation-id: c-cut\r\ncontent-length: 100\r\n\r\n{\"model\": \"laneway\"")
        received = b""
        while received.count(b"data: {") < 3:  # the stream's three chunks came; it stalls from here
            received += stream.recv(65536)
        time.sleep(0.3)  # the whole request is waiting on its silent upstream
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        took = time.monotonic() - stopped
        answer = plain.recv(65536)
        cut = partial.recv(65536)
    assert process.returncode == 0, output
    assert took < 10, took  # the 1 s grace, then the cut: not the 60 s the requests could still take
    assert answer.startswith(b"HTTP/1.1 503 ") and b"connection: close" in answer  # told, so it can retry
    head, _, body = answer.partition(b"\r\n\r\n")
    error = json.loads(body)["error"]  # as OpenAI's errors are shaped, with the id the log knows it by
    assert error["code"] == "shutting_down" and "send the request again" in error["message"]
    assert f"x-request-id: {error['request_id']}".encode() in head
    assert cut.startswith(b"HTTP/1.1 503 ") and b"x-request-id: cut-partial" in cut
    with sqlite3.connect(db) as connection:
        rows = connection.execute("select route, status, outcome, error, completion_tokens, cost_usd, attempts "
                                  "from exchanges where request_id != 'cut-partial' order by route").fetchall()
        partial_rows = connection.execute("select status, outcome, error, conversation_id from exchanges "
                                          "where request_id = 'cut-partial'").fetchall()
    assert len(partial_rows) == 1 and partial_rows[0][:2] == (503, "cancelled")
    assert "before the request's body arrived" in partial_rows[0][2] and partial_rows[0][3] == "c-cut"
    assert [(r[0], r[1], r[2]) for r in rows] == [("stream", 503, "cancelled"), ("whole", 503, "cancelled")]
    # the stop, not a client that left (the attempt in flight took the cancel for one)
    assert [[a["outcome"] for a in json.loads(r[6])] for r in rows] == [["cancelled"], ["cancelled"]]
    assert "after 3 pieces of the stream" in rows[0][3] and "server.shutdown_grace_ms" in rows[1][3]
    assert rows[0][4] >= 3 and rows[0][5] > 0  # what the stream had sent is billed


def test_workers_refuse_new_connections_once_stopping_and_a_second_ctrl_c_cuts_the_grace_short(
        tmp_path: Path) -> None:
    db = tmp_path / "exchanges.sqlite3"
    config = tmp_path / "routes.yaml"
    config.write_text(CUT_SHORT.format(db=db).replace("shutdown_grace_ms: 1000", "shutdown_grace_ms: 60000"))
    process, url = serve(config, "--workers", "2")
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as plain:
        send_chat(plain, {"model": "laneway", "messages": [{"role": "user", "content": "hello"}]})
        time.sleep(0.5)  # waiting on its silent upstream
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        with socket.socket() as late:
            late.settimeout(5)
            assert late.connect_ex(("127.0.0.1", port)) != 0  # refused, not left waiting in the backlog
        assert process.poll() is None  # the first Ctrl-C waits for the request in flight (60 s of grace)
        stopped = time.monotonic()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        took = time.monotonic() - stopped
        answer = plain.recv(65536)
    assert process.returncode == 0, output
    assert took < 10, (took, output)
    assert answer.startswith(b"HTTP/1.1 503 ")
    with sqlite3.connect(db) as connection:
        rows = connection.execute("select status, outcome from exchanges").fetchall()
    assert rows == [(503, "cancelled")]


@pytest.mark.parametrize("sigint", ["ignored", "default"])
def test_a_stop_while_workers_start_stops_them_once_they_serve(tmp_path: Path, sigint: str) -> None:
    """Passed on while a worker started, the stop was lost where SIGINT was ignored (`laneway serve &` in a
    script): the server ran on until killed; where it was not, it broke the start off with a traceback."""
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=tmp_path / "exchanges.sqlite3", target="gpt-5-mini"))

    def inherit() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL)

    process = subprocess.Popen([sys.executable, "-m", "laneway", "serve", "--config", str(config), "--port",
                                str(free_port()), "--workers", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, preexec_fn=inherit)
    assert process.stdout is not None
    while "workers serving" not in (line := process.stdout.readline()):  # the workers start from here
        assert line, process.communicate()[0]
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running 30 s after SIGTERM: {process.communicate()[0]}") from None
    assert process.returncode == 0 and "Traceback" not in output and "KeyboardInterrupt" not in output, output


def test_reloads_asked_for_while_workers_start_do_not_kill_them(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(ROUTES.format(db=tmp_path / "exchanges.sqlite3", target="gpt-5-mini"))
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "laneway", "serve", "--config", str(config), "--port", str(port),
                                "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        while "2 workers serving" not in process.stdout.readline():  # then the workers are starting
            assert process.poll() is None
        ready = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            process.send_signal(signal.SIGHUP)  # while they start, as a deploy script might
            time.sleep(0.1)
            ready = get(f"http://127.0.0.1:{port}/readyz") == 200
            if ready:
                break
        assert ready and chat(f"http://127.0.0.1:{port}") == "gpt-5-mini"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "exited with code" not in output, output


def test_a_simulated_fleet_that_cannot_start_stops_serve_with_one_line_that_names_the_sim_settings(
        tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        config = tmp_path / "laneway.yaml"
        config.write_text(f"sim: {{port: {taken}}}\nroutes:\n- target: gpt-5\n")
        done = subprocess.run([sys.executable, "-m", "laneway", "serve", "--config", str(config), "--port",
                               str(free_port())], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{taken}" in done.stderr  # the fleet's own word
    assert done.stderr.rstrip().endswith("sim: the simulated fleet did not start (its own message is above); check "
                                         "`sim.host`, `sim.port` and `sim.fleet`")


def test_serve_on_port_0_announces_the_port_it_got_and_an_ipv6_address_in_brackets(tmp_path: Path) -> None:
    config = tmp_path / "laneway.yaml"
    config.write_text(ROUTES.format(db=tmp_path / "log.sqlite3", target="gpt-5"))
    for host, shown in (("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")):
        process = subprocess.Popen([sys.executable, "-m", "laneway", "serve", "--config", str(config), "--host", host,
                                    "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert process.stdout is not None
            line = next(line for line in process.stdout if "serving" in line)
            url = line.split(" on ", 1)[1].split(" - ", 1)[0]
            assert url.startswith(f"http://{shown}:") and not url.endswith(":0")
            deadline = time.monotonic() + 30
            while get(url + "/healthz") != 200:
                assert time.monotonic() < deadline, url
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=30)


def test_the_simulated_fleet_refuses_a_negative_seed_as_its_routing_file_does(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def serve(_: object) -> None:
        raise AssertionError("the fleet started")

    monkeypatch.setattr(cli, "_run", serve)
    with pytest.raises(SystemExit) as refusal:
        main(["sim", "--port", "0", "--seed", "-1"])
    assert refusal.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line == "laneway sim: error: argument --seed: must be a whole number from 0 to 4294967295, got -1"


def test_the_keep_alive_and_the_time_a_request_has_to_arrive_are_the_config_s(tmp_path: Path) -> None:
    """Both were fixed (30 s, 300 s): an operator behind a load balancer whose idle timeout is shorter could not
    match it, nor cut a slow upload sooner. A reload that changes them says it takes a restart."""
    config = tmp_path / "routes.yaml"
    base = ROUTES.format(db=tmp_path / "x.sqlite3", target="gpt-5-mini")
    config.write_text(base + "server: {keep_alive_ms: 400, read_timeout_ms: 1200}\n")
    process, url = serve(config)
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as idle:
            began = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server, without a request
            assert 0.3 < time.monotonic() - began < 3
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{")
            began = time.monotonic()
            answer = b""
            while not answer:  # a byte every 0.2 s: never idle for the keep-alive time, too slow to arrive whole
                with contextlib.suppress(OSError):
                    slow.sendall(b" ")
                slow.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert 1.0 < time.monotonic() - began < 4
        config.write_text(base + "server: {keep_alive_ms: 5000}\n")
        request = urllib.request.Request(url + "/admin/reload", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as reloaded:
            warnings = json.load(reloaded)["warnings"]
        assert [w for w in warnings if w.startswith("server.keep_alive_ms") and "restart" in w], warnings
        assert [w for w in warnings if w.startswith("server.read_timeout_ms") and "restart" in w], warnings
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_a_reload_asked_for_while_serve_starts_does_not_stop_it(tmp_path: Path, workers: list[str]) -> None:
    """A SIGHUP while the modules loaded took the signal's default, and the server (its supervisor, with
    `--workers`) stopped with 129 where `systemctl reload` meant a reload."""
    config = tmp_path / "routes.yaml"
    config.write_text("routes:\n- target: gpt-5-mini\n")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "laneway", "serve", "--config", str(config), "--port",
                                str(port), *workers], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.3)  # the interpreter runs; `laneway.cli` and what it imports are loading
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while get(f"http://127.0.0.1:{port}/readyz") != 200:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        process.terminate()
        process.communicate(timeout=30)
