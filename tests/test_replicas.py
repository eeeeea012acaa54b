"""Several replicas sharing state through Redis.

The Lua scripts and the shared state against a real `redis-server`; gates of two "replicas" in
one process keeping one limit; then real `laneway serve` processes behind no balancer but the
test's round robin, measured at the simulated upstream, with a control run without Redis, and
Redis killed mid-run. Last, the deployment manifests in deploy/.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis.asyncio import Redis

from _redis import RedisServer, free_port, redis_server
from laneway.breaker import CircuitBreaker
from laneway.config import Breaker, parse_config
from laneway.gate import LOCAL_ONLY, Gate, GatePolicy, GateRejected
from laneway.state import SharedState, breaker_key, lease_key


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
async def store(redis: RedisServer) -> Any:
    client = Redis.from_url(redis.url)
    await client.flushdb()
    yield client
    await client.aclose()


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def count(self, event: str, model: str, n: int = 1) -> None:
        self.seen.append((event, model))


async def replicas(url: str, n: int = 2, **kwargs: Any) -> list[SharedState]:
    return [SharedState(url, **kwargs) for _ in range(n)]


async def close(*states: SharedState) -> None:
    for state in states:
        await state.aclose()


async def test_leases_hold_one_limit_across_replicas(redis: RedisServer, store: Redis) -> None:
    a, b = await replicas(redis.url)
    first, second = await a.lease("heavy", 2), await b.lease("heavy", 2)
    assert first and second and first != second
    assert await a.lease("heavy", 2) is None and await b.lease("heavy", 2) is None
    assert await store.zcard(lease_key("heavy")) == 2
    assert await a.lease("other", 2)  # limits are per model
    await b.unlease("heavy", second)
    assert await a.lease("heavy", 2) and await store.zcard(lease_key("heavy")) == 2
    await close(a, b)  # a replica that stops gives back what it still holds
    assert await store.zcard(lease_key("heavy")) == 0 and await store.zcard(lease_key("other")) == 0


async def test_dead_replicas_leases_expire_and_live_ones_are_kept(redis: RedisServer, store: Redis) -> None:
    dead, live, other = await replicas(redis.url, 3, lease_ttl_s=0.3)
    assert await dead.lease("heavy", 2) and await live.lease("heavy", 2)
    for _ in range(5):  # 0.5 s: longer than the TTL, but `live` renews
        await asyncio.sleep(0.1)
        await live.renew()
    assert await other.lease("heavy", 2)  # the slot of `dead` came back
    assert await other.lease("heavy", 2) is None  # that of `live` did not
    await store.flushdb()  # the store restarted and lost everything
    await live.renew()
    assert await store.zcard(lease_key("heavy")) == 1  # the running call is counted again
    await close(dead, live, other)


async def test_token_bucket_is_shared_and_refills_per_minute(redis: RedisServer, store: Redis) -> None:
    a, b = await replicas(redis.url)
    assert await a.take("heavy", "tokens", 500, 600) == 0
    wait = await b.take("heavy", "tokens", 200, 600)  # 100 short at 10 per second
    assert wait is not None and 9.9 < wait <= 10.0
    # Larger than a minute's budget: it waits for a full bucket (50 s more here), then goes alone.
    wait = await b.take("heavy", "tokens", 5000, 600)
    assert wait is not None and 49.9 < wait <= 50.0
    assert await a.take("light", "tokens", 5000, 600) == 0  # a full bucket
    wait = await b.take("light", "tokens", 10, 600)  # the debt of 4,400 is paid off first
    assert wait is not None and 440.9 < wait <= 441.0
    a.refund("light", "tokens", 5000, 600)  # the call used nothing after all
    await a.aclose()  # waits for the refund to land
    assert await b.take("light", "tokens", 90, 600) == 0
    assert await b.take("heavy", "usd", 0.5, 1.0) == 0  # units have separate buckets
    await close(b)


async def test_a_breaker_opened_on_one_replica_is_open_on_all(redis: RedisServer, store: Redis) -> None:
    policy = Breaker(failures=1, cooldown_ms=600)
    mine, theirs = {"heavy": CircuitBreaker(policy)}, {"heavy": CircuitBreaker(policy)}
    a = SharedState(redis.url, breakers=lambda: mine)
    b = SharedState(redis.url, breakers=lambda: theirs)
    loop = asyncio.get_running_loop()
    await b.tick()
    assert theirs["heavy"].allows(loop.time())
    assert mine["heavy"].failure(loop.time())
    await a.tick()
    assert 0 < await store.pttl(breaker_key("heavy")) <= 600
    await b.tick()
    assert theirs["heavy"].state(loop.time()) == "open" and not theirs["heavy"].allows(loop.time())
    assert theirs["heavy"].opened == 0  # held open, not opened by its own failures
    await asyncio.sleep(0.65)
    await b.tick()
    assert theirs["heavy"].allows(loop.time())  # cooldown over: this replica may probe
    await close(a, b)


async def test_cache_entries_are_shared_and_expire(redis: RedisServer, store: Redis) -> None:
    a, b = await replicas(redis.url)
    await a.cache.set("laneway:cache:k", b'{"text": "hi"}', 0.2)
    assert await b.cache.get("laneway:cache:k") == b'{"text": "hi"}'
    await asyncio.sleep(0.25)
    assert await b.cache.get("laneway:cache:k") is None
    await close(a, b)


async def test_two_gates_keep_one_concurrency_limit(redis: RedisServer, store: Redis) -> None:
    a, b = await replicas(redis.url)
    policy = GatePolicy(max_concurrency=1, queue_timeout_ms=(2000, 2000, 2000))
    here, there = Gate("heavy", policy, a), Gate("heavy", policy, b)
    loop = asyncio.get_running_loop()
    await here.admit(1, 0, 0.0, loop.time() + 5)
    with pytest.raises(GateRejected):
        await there.admit(1, 0, 0.0, loop.time() + 0.2)  # its own slot is free, the shared one is not
    waiting = asyncio.create_task(there.admit(1, 0, 0.0, loop.time() + 5))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    here.release(10.0)
    await asyncio.wait_for(waiting, 1.0)  # freed on the other replica: found by the poll
    assert there.in_flight == 1 and here.in_flight == 0
    assert await store.zcard(lease_key("heavy")) == 1
    there.release(10.0)
    await asyncio.sleep(0.05)
    assert await store.zcard(lease_key("heavy")) == 0
    await close(a, b)


async def test_unreachable_store_degrades_to_local_state_and_reconnects(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events = Events()
    with redis_server(tmp_path / "redis") as server:
        state = await SharedState.open(server.url, events)
        policy = GatePolicy(max_concurrency=1, tokens_per_minute=1000, queue_timeout_ms=(50, 50, 50))
        gate = Gate("heavy", policy, state)
        loop = asyncio.get_running_loop()
        await gate.admit(1, 100, 0.0, loop.time() + 5)
        gate.release(5.0)
        server.stop()
        with caplog.at_level(logging.INFO, logger="laneway"):
            assert await state.lease("heavy", 1) == LOCAL_ONLY
            assert await state.take("heavy", "tokens", 10, 1000) is None
            assert await state.cache.get("laneway:cache:k") is None
            await gate.admit(1, 800, 0.0, loop.time() + 5)  # local limits: one slot, a local bucket
            with pytest.raises(GateRejected, match="concurrency"):
                await gate.admit(1, 0, 0.0, loop.time() + 5)
            gate.release(5.0)
            with pytest.raises(GateRejected, match="tokens per minute"):
                await gate.admit(1, 300, 0.0, loop.time() + 5)
            assert events.seen == [("state_unavailable", "")]  # once per outage, not per call
            server.start()
            await asyncio.sleep(0.6)  # the background probe finds it back
            assert state.up and await state.lease("heavy", 1)
        messages = [r.getMessage() for r in caplog.records]
        assert any("unreachable" in m and server.url.rsplit("/", 1)[0] in m for m in messages)
        assert any("answers again" in m for m in messages)
        await state.aclose()


BUSY_SCRIPT = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + now[2] - start[2] > tonumber(ARGV[1]) then return 1 end
end
"""


async def test_a_lease_asked_for_while_the_store_paused_holds_no_slot_once_it_answers_again(
        redis: RedisServer, store: Redis) -> None:
    """A command that timed out on this side is run by the store when it catches up: the lease it adds,
    which nobody holds, took a slot on every replica for a whole TTL (15 s)."""
    state = await SharedState.open(redis.url)
    warm = await state.lease("heavy", 2)  # the connection is open, as a serving replica's is
    assert warm
    await state.unlease("heavy", warm)
    busy = asyncio.create_task(store.eval(BUSY_SCRIPT, 0, 1_500_000))  # a pause of 1.5 s
    await asyncio.sleep(0.1)
    assert await state.lease("heavy", 2) == LOCAL_ONLY  # timed out: the gate goes on alone
    assert await busy == 1
    for _ in range(40):  # the background probe finds the store back
        await asyncio.sleep(0.05)
        if state.up:
            break
    await asyncio.sleep(0.1)
    assert state.up and await store.zcard(lease_key("heavy")) == 0
    assert await state.lease("heavy", 2) and await state.lease("heavy", 2)  # both slots are free
    await close(state)


async def test_a_store_that_answers_reads_but_refuses_writes_stays_down_until_it_takes_them_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    events = Events()
    with redis_server(tmp_path / "redis") as server:
        state = await SharedState.open(server.url, events)
        store = Redis.from_url(server.url)
        await store.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # read-only, as during a failover
        with caplog.at_level(logging.INFO, logger="laneway"):
            for _ in range(6):  # traffic through the outage, the probe running between
                assert await state.take("heavy", "tokens", 10, 1000) is None
                await asyncio.sleep(0.3)
            assert not state.up and events.seen == [("state_unavailable", "")]
            await store.execute_command("REPLICAOF", "NO", "ONE")
            await asyncio.sleep(0.6)
            assert state.up and await state.take("heavy", "tokens", 10, 1000) is not None
        messages = [r.getMessage() for r in caplog.records]
        assert sum("refuses writes" in m for m in messages) == 1 and sum("answers again" in m for m in messages) == 1
        await store.aclose()
        await state.aclose()


# ---- real `laneway serve` replicas -------------------------------------------------------------

TOKENS_PER_MINUTE = 1500
REPLICA_CONFIG = """
{state}
telemetry: {{exchange_log: null}}
models:
  slow:
    provider: openai
    base_url: {sim}/gpt-5-mini/v1
    model: "gpt-5-mini@slow_400"
    deadline_ms: 20000
    gate: {{max_concurrency: 2, queue_timeout_ms: 5000}}
  metered:
    provider: openai
    base_url: {sim}/gpt-5-mini/v1
    model: gpt-5-mini
    profile: {{max_tokens: 100}}
    gate: {{tokens_per_minute: {tpm}, queue_timeout_ms: 0}}
  fast:
    provider: openai
    base_url: {sim}/gpt-5-mini/v1
    model: gpt-5-mini
  broken:
    provider: openai
    base_url: {sim}/gpt-5-mini/v1
    model: "gpt-5-mini@error_500"
    cooldown: {{failures: 1, cooldown_ms: 20000}}
routes:
- name: cached
  matcher: "metadata.mode == cached"
  target: fast
  cache: {{mode: on, ttl_s: 60}}
- name: default
  target: slow
"""


class Replica:
    def __init__(self, config: Path, log: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._output = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "laneway", "serve", "--config", str(config), "--port", str(port)],
            stdout=self._output, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 40
        while status(self.url + "/readyz") != 200:
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._output.close()


class Cluster:
    def __init__(self, replicas: list[Replica], redis: RedisServer | None) -> None:
        self.replicas = replicas
        self.redis = redis

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]


@contextmanager
def cluster(directory: Path, sim_url: str, n: int, redis: RedisServer | None) -> Iterator[Cluster]:
    config = directory / "routes.yaml"
    state = f"state: {redis.url}" if redis is not None else ""
    config.write_text(REPLICA_CONFIG.format(state=state, sim=sim_url, tpm=TOKENS_PER_MINUTE))
    with ExitStack() as stack:
        replicas = []
        for i in range(n):
            replica = Replica(config, directory / f"replica-{i}.log")
            stack.callback(replica.stop)
            replicas.append(replica)
        for replica in replicas:
            replica.wait_ready()
        yield Cluster(replicas, redis)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, sim_url: str) -> Iterator[Cluster]:
    """Three replicas sharing one Redis (its own, as one test kills it)."""
    directory = tmp_path_factory.mktemp("shared")
    with redis_server(directory / "redis") as redis, cluster(directory, sim_url, 3, redis) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory, sim_url: str) -> Iterator[Cluster]:
    """The control: two replicas with the same limits and no shared state."""
    with cluster(tmp_path_factory.mktemp("alone"), sim_url, 2, None) as replicas:
        yield replicas


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def chat(url: str, model: str, text: str, **extra: Any) -> tuple[int, int]:
    """(HTTP status, total tokens billed) of one request."""
    status, tokens, _ = exchange(url, model, text, **extra)
    return status, tokens


def exchange(url: str, model: str, text: str, **extra: Any) -> tuple[int, int, dict[str, str]]:
    """(HTTP status, total tokens billed, response headers) of one request."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}], **extra}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return int(r.status), int(json.loads(r.read())["usage"]["total_tokens"]), dict(r.headers)
    except urllib.error.HTTPError as error:
        return error.code, 0, dict(error.headers)


def spread(urls: list[str], model: str, n: int, threads: int) -> list[tuple[int, int]]:
    """`n` requests dealt round-robin to the replicas, `threads` at a time."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda i: chat(urls[i % len(urls)], model, f"where is my order {i}?"), range(n)))


def upstream(sim_url: str, method: str = "GET") -> dict[str, dict[str, int]]:
    request = urllib.request.Request(sim_url + "/concurrency", method=method)
    with urllib.request.urlopen(request, timeout=5) as r:
        counts: dict[str, dict[str, int]] = json.loads(r.read())
    return counts


SLOW = "gpt-5-mini@slow_400"


def test_replicas_keep_one_concurrency_limit_where_alone_they_exceed_it(
        shared: Cluster, alone: Cluster, sim_url: str) -> None:
    upstream(sim_url, "DELETE")
    results = spread(shared.urls, "slow", 12, threads=12)
    seen = upstream(sim_url, "DELETE")[SLOW]
    assert [s for s, _ in results] == [200] * 12
    assert seen["calls"] == 12 and seen["peak"] == 2  # used to the full, never over
    results = spread(alone.urls, "slow", 12, threads=12)
    seen = upstream(sim_url, "DELETE")[SLOW]
    assert [s for s, _ in results] == [200] * 12
    assert seen["peak"] > 2  # each replica alone keeps only its own limit


def within_budget(results: list[tuple[int, int]], seconds: float) -> tuple[int, float]:
    """Tokens admitted, and what one shared budget allows in `seconds`: a minute's worth, the
    refill, and one request past it."""
    admitted = [tokens for status, tokens in results if status == 200]
    return sum(admitted), TOKENS_PER_MINUTE * (1 + seconds / 60) + max(admitted)


def test_token_budget_holds_across_replicas(shared: Cluster, alone: Cluster) -> None:
    started = time.monotonic()
    results = spread(shared.urls, "metered", 45, threads=6)
    admitted, allowed = within_budget(results, time.monotonic() - started)
    assert {s for s, _ in results} == {200, 429}
    assert TOKENS_PER_MINUTE / 2 < admitted <= allowed
    started = time.monotonic()
    results = spread(alone.urls, "metered", 45, threads=6)
    admitted, allowed = within_budget(results, time.monotonic() - started)
    assert admitted > allowed  # alone, each replica spends a whole budget


def second_replica_sees(cluster: Cluster, sim_url: str, asked: str) -> tuple[str, int, int]:
    """Ask one replica a cacheable question and break `broken` there; then, from another replica:
    the lane of the same question, the status of a call to `broken`, and how many calls its upstream
    received."""
    first, second = cluster.urls[0], cluster.urls[-1]
    question: dict[str, Any] = {"metadata": {"mode": "cached"}, "temperature": 0}
    assert exchange(first, "laneway", asked, **question)[2]["x-laneway-lane"] == "primary"
    upstream(sim_url, "DELETE")
    assert chat(first, "broken", "hello")[0] == 502  # opens `broken`'s breaker on the first replica
    called = upstream(sim_url)["gpt-5-mini@error_500"]["calls"]
    time.sleep(0.6)  # the cache write runs after the answer; two breaker syncs
    lane = exchange(second, "laneway", asked, **question)[2]["x-laneway-lane"]
    status = chat(second, "broken", "hello")[0]
    return lane, status, upstream(sim_url)["gpt-5-mini@error_500"]["calls"] - called


def test_cache_and_breaker_cooldowns_are_shared(shared: Cluster, alone: Cluster, sim_url: str) -> None:
    # Shared: the second replica holds the breaker open too, sends nothing, and says it is cooling down.
    assert second_replica_sees(shared, sim_url, "how do I reset my password?") == ("cache", 503, 0)
    lane, status, calls = second_replica_sees(alone, sim_url, "how do I change my address?")
    assert lane == "primary" and status == 502 and calls > 0  # alone, each replica learns for itself


def test_requests_keep_succeeding_on_local_limits_when_redis_dies(shared: Cluster, sim_url: str) -> None:
    assert shared.redis is not None
    upstream(sim_url, "DELETE")
    with ThreadPoolExecutor(18) as pool:
        first = [pool.submit(chat, shared.urls[i % 3], "slow", f"hello {i}") for i in range(12)]
        time.sleep(0.5)
        shared.redis.stop()
        time.sleep(0.3)
        later = [pool.submit(chat, shared.urls[i % 3], "slow", f"again {i}") for i in range(6)]
        statuses = [f.result()[0] for f in first + later]
    assert statuses == [200] * 18
    for replica in shared.replicas:  # each said so, once
        assert replica.output().count(f"shared state at `{shared.redis.url}` is unreachable or refuses writes") == 1
    with urllib.request.urlopen(shared.urls[0] + "/metrics", timeout=5) as response:
        assert 'event="state_unavailable"} 1' in response.read().decode()
    shared.redis.start()  # back, on the same port: every replica rejoins
    deadline = time.monotonic() + 10
    while not all("answers again" in r.output() for r in shared.replicas):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    upstream(sim_url, "DELETE")
    assert [s for s, _ in spread(shared.urls, "slow", 9, threads=9)] == [200] * 9
    assert upstream(sim_url)[SLOW]["peak"] == 2


# ---- deploy/ -----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["apiVersion"] and document["metadata"]["name"], path
            assert document["kind"] not in found, f"two {document['kind']} manifests"
            found[document["kind"]] = document
    return found


def test_kubernetes_manifests_fit_together() -> None:
    found = manifests()
    assert set(found) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    config_map, deployment = found["ConfigMap"], found["Deployment"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    volume = next(v for v in pod["spec"]["volumes"] if v.get("configMap"))
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    routes_file = Path(container["args"][container["args"].index("--config") + 1])
    assert routes_file.parent == Path(mount["mountPath"]) and routes_file.name in config_map["data"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert found["Service"]["spec"]["selector"].items() <= labels.items()
    scaler = found["HorizontalPodAutoscaler"]["spec"]
    assert scaler["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert [m["resource"]["name"] for m in scaler["metrics"]] == ["cpu"]
    assert "cpu" in container["resources"]["requests"]  # utilisation is measured against the request
    port = str(container["ports"][0]["containerPort"])
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == port
    assert f"--port {port}" in " ".join(container["args"])


def test_the_config_maps_routing_file_is_valid_and_shares_state() -> None:
    text = manifests()["ConfigMap"]["data"]["routes.yaml"]
    config = parse_config(text, "deploy/kubernetes/configmap.yaml")
    assert config.warnings == ()
    assert config.state is not None and config.state.startswith("redis://")
    assert (config.telemetry.exchange_log or "").startswith("postgresql://")
    assert any(spec.gate is not None and spec.gate.max_concurrency for spec in config.models.values())
    assert config.keys  # the pods listen on every address: callers need keys


def test_prometheus_examples_scrape_the_replicas() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus"
    checked = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "static.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    pods = yaml.safe_load((DEPLOY / "prometheus" / "kubernetes.yml").read_text())["scrape_configs"][0]
    labels = manifests()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    keep = pods["relabel_configs"][0]
    assert pods["metrics_path"] == "/metrics" and keep["action"] == "keep"
    assert keep["regex"] == labels["app.kubernetes.io/name"]


def test_containerfile_installs_this_checkout_with_pip() -> None:
    lines = (DEPLOY / "Containerfile").read_text().splitlines()
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ") and "--from" not in line]
    assert copies and all((ROOT / source).exists() for sources in copies for source in sources)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = {source for sources in copies for source in sources}
    assert {project["readme"], *project["license-files"]} <= copied  # what the build reads, the license too
    extras = project["optional-dependencies"]
    install = next(line for line in lines if "pip install" in line)
    wanted = install.split('".[', 1)[1].split("]", 1)[0].split(",")
    assert set(wanted) <= set(extras) and "redis" in wanted


@pytest.mark.parametrize("reachable", [True, False])
def test_the_metrics_say_whether_the_shared_state_answers_from_the_first_scrape(
        redis: RedisServer, sim_url: str, reachable: bool) -> None:
    from _live import live_gateway
    from laneway.telemetry import Telemetry, TelemetrySettings

    url = redis.url if reachable else f"redis://127.0.0.1:{free_port()}/0"  # a wrong URL: never answers
    telemetry = Telemetry(TelemetrySettings(exchange_log=None))
    with live_gateway(f"state: {url}\nroutes:\n- target: gpt-5-mini\n", sim_url, telemetry=telemetry) as live:
        assert live.gateway is not None
        gateway = live.gateway

        async def scrape() -> str:
            telemetry.watch_state(gateway.state_samples)
            return telemetry.render_metrics().decode()

        text = live.call(scrape())
    assert f"\nlaneway_shared_state_up {int(reachable)}\n" in text
    # Counted from 0, so that an alert on its increase sees a replica's first outage.
    outages = 'laneway_model_events_total{model="",event="state_unavailable"}'
    assert f"\n{outages} {0 if reachable else 1}\n" in text


def test_the_alerts_fire_for_a_first_outage_and_for_a_store_that_never_answered() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus"
    checked = subprocess.run([promtool, "test", "rules", str(ROOT / "tests" / "prometheus" / "alerts_test.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_while_the_store_is_down_each_replica_caches_in_its_own_memory(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as server:
        state = await SharedState.open(server.url)
        await state.cache.set("laneway:cache:shared", b"kept in redis", 60)
        server.stop()
        assert await state.cache.get("laneway:cache:shared") is None  # the link goes down: a miss
        assert not state.up
        await state.cache.set("laneway:cache:k", b"answer", 60)
        assert await state.cache.get("laneway:cache:k") == b"answer"  # kept here meanwhile
        server.start()
        for _ in range(40):
            await asyncio.sleep(0.05)
            if state.up:
                break
        assert state.up and await state.cache.get("laneway:cache:k") is None  # shared again, and empty
        await state.aclose()


async def test_a_cache_entry_the_store_refuses_is_dropped_and_the_store_stays_up(redis: RedisServer,
                                                                                 store: Redis) -> None:
    events = Events()
    state = await SharedState.open(redis.url, events)
    await store.config_set("maxmemory", "2mb")
    await store.config_set("maxmemory-policy", "noeviction")
    try:
        await state.cache.set("laneway:cache:big", b"x" * 4_000_000, 60)  # over `maxmemory`: refused
        assert state.up and events.seen == []  # not an outage: the limits stay shared
        assert await state.lease("heavy", 1)
    finally:
        await store.config_set("maxmemory", "0")
    await close(state)


def test_a_client_keys_limits_and_spend_hold_across_replicas_and_a_restart(redis: RedisServer, sim_url: str) -> None:
    """Counted in each process, a key's rate was N times its limit behind N replicas (or workers), and what it
    had spent started again at 0 with every restart."""
    from _live import live_gateway
    from laneway.keys import hash_key

    config = f"""
state: {redis.url}
keys:
- {{name: shared-web, hash: "{hash_key("lw-shared")}", requests_per_minute: 4}}
- {{name: shared-spender, hash: "{hash_key("lw-spender")}", usd_budget: 0.000001, budget_period: day}}
routes:
- target: gpt-5-mini
"""

    def ask(url: str, key: str) -> int:
        body = {"model": "laneway", "messages": [{"role": "user", "content": "Where is my order?"}]}
        request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code

    with live_gateway(config, sim_url) as one, live_gateway(config, sim_url) as two:
        statuses = [ask(url, "lw-shared") for url in (one.url, two.url) * 3]
        assert sorted(statuses) == [200] * 4 + [429] * 2, statuses
        assert ask(one.url, "lw-spender") == 200  # a first request alone may overshoot the budget
        deadline = time.monotonic() + 5
        while ask(two.url, "lw-spender") != 429:  # the other replica hears of the spend
            assert time.monotonic() < deadline, "the spend never reached the other replica"
            time.sleep(0.05)
    with live_gateway(config, sim_url) as restarted:
        assert ask(restarted.url, "lw-spender") == 429  # spent stays spent


async def test_a_keys_spend_outlives_an_outage_and_a_reloaded_rate_is_shared_at_once(tmp_path: Path) -> None:
    """While the store was unreachable, a replica counted only what it had spent itself (an exhausted key spent
    again), and what it spent then never reached the store. A rate raised by a reload held the old count."""
    from laneway.errors import RateLimited
    from laneway.keys import KeyPolicy, KeyRing, Period, hash_key
    from laneway.state._shared import client_key

    def policies(requests_per_minute: int) -> tuple[KeyPolicy, ...]:
        return (KeyPolicy("capped", hash_key("c"), usd_budget=1.0, budget_period="day"),
                KeyPolicy("open", hash_key("o"), usd_budget=100.0, budget_period="day",
                          requests_per_minute=requests_per_minute))

    def ring_of(state: SharedState) -> KeyRing:
        ring = KeyRing(policies(2))
        ring.shared = state
        return ring

    def policy(ring: KeyRing, name: str) -> KeyPolicy:
        return next(p for p in ring.by_digest.values() if p.name == name)

    with redis_server(tmp_path / "redis") as server:
        one, two = await SharedState.open(server.url), await SharedState.open(server.url)
        first, second = ring_of(one), ring_of(two)
        await first.admit(policy(first, "capped"), None, 10, 0.1)
        first.settle("capped", 0, 0, 0.1, 1.2)  # over the budget: a first request alone may overshoot it
        await asyncio.sleep(0.1)
        with pytest.raises(RateLimited, match="spent its day budget"):
            await second.admit(policy(second, "capped"), None, 10, 0.1)  # heard from the store

        server.stop()
        with pytest.raises(RateLimited, match="spent its day budget"):  # what the store said last still holds
            await second.admit(policy(second, "capped"), None, 10, 0.1)
        await second.admit(policy(second, "open"), None, 10, 0.1)
        second.settle("open", 0, 0, 0.1, 0.5)  # spent while the store is unreachable
        await asyncio.sleep(0.1)

        server.start()  # without the counts it had: no persistence
        store = Redis.from_url(server.url)
        spent_key = client_key("open", "spent:" + Period.of("day", time.time()).id)
        deadline = time.monotonic() + 5
        while await store.get(spent_key) is None:
            assert time.monotonic() < deadline, "what was spent during the outage never reached the store"
            await asyncio.sleep(0.05)
        assert float(await store.get(spent_key)) == 0.5

        for _ in range(2):
            await first.admit(policy(first, "open"), None, 10)
        with pytest.raises(RateLimited, match="over 2 requests per minute"):
            await first.admit(policy(first, "open"), None, 10)
        first.update(policies(5))
        await asyncio.sleep(0.1)
        await first.admit(policy(first, "open"), None, 10)  # the new limit at once, in the shared count too
        await store.aclose()
        await close(one, two)


async def test_concurrent_requests_of_a_rate_limited_key_do_not_overspend_its_budget(tmp_path: Path) -> None:
    """The estimate was held only after the rate limits' round trips to the store: every request that came
    meanwhile passed the budget check, and 40 at once spent $0.60 of a $0.10 budget."""
    from laneway.errors import RateLimited
    from laneway.keys import KeyPolicy, KeyRing, hash_key

    policy = KeyPolicy("racer", hash_key("r"), usd_budget=0.10, budget_period="day", requests_per_minute=1000)
    with redis_server(tmp_path / "redis") as server:
        state = await SharedState.open(server.url)
        ring = KeyRing((policy,))
        ring.shared = state

        async def one() -> bool:
            try:
                await ring.admit(policy, None, 10, 0.0257)
            except RateLimited:
                return False
            return True

        admitted = await asyncio.gather(*(one() for _ in range(40)))
        assert sum(admitted) == 3  # 3 × $0.0257 fits in $0.10; a fourth would not
        reached = asyncio.Event()

        async def stalled(*args: object) -> None:
            reached.set()
            await asyncio.Event().wait()

        state.key_take = stalled  # type: ignore[method-assign]
        cancelled = asyncio.create_task(ring.admit(policy, None, 10, 0.001))
        await reached.wait()
        cancelled.cancel()  # a client gone during the rate limit's round trip holds nothing
        with contextlib.suppress(asyncio.CancelledError):
            await cancelled
        assert ring._usage_of(policy).held == pytest.approx(3 * 0.0257)
        await close(state)


async def test_a_keys_charge_whose_command_timed_out_is_made_once_when_the_store_catches_up(
        redis: RedisServer, store: Redis) -> None:
    """The store ran the timed-out INCRBYFLOAT once it caught up, and the same amount, kept as unsent, was sent
    again on reconnection: a $0.02 request charged $0.04 to its key's budget."""
    from laneway.keys import Period
    from laneway.state._shared import client_key

    state = await SharedState.open(redis.url)
    period = Period.of("day", time.time())
    where = client_key("payer", f"spent:{period.id}")
    state.key_spend("payer", period.id, 0.01, 3600)  # the connection is open, as a serving replica's is
    await asyncio.sleep(0.1)
    busy = asyncio.create_task(store.eval(BUSY_SCRIPT, 0, 1_500_000))  # a pause of 1.5 s
    await asyncio.sleep(0.1)
    state.key_spend("payer", period.id, 0.02, 3600)  # times out: kept, and run by the store once it catches up
    assert await busy == 1
    for _ in range(60):  # the background probe finds the store back, and sends what it kept
        await asyncio.sleep(0.05)
        if state.up and not state._unsent_spend:
            break
    await asyncio.sleep(0.2)
    assert float(await store.get(where)) == pytest.approx(0.03)
    await close(state)


class _FlappingLink:
    """A store that runs each charge at most once per id (as the CHARGE script does), reachable or not as the
    test says; `late` makes the next command time out after the store ran it."""

    def __init__(self) -> None:
        self.up = True
        self.late = False
        self.spent: dict[str, float] = {}
        self.marks: set[str] = set()

    async def run(self, work: Any, probe: bool = False) -> Any:
        from laneway.state._link import Unreachable

        if not self.up:
            raise Unreachable("down")
        result = await work(None)
        if self.late:
            self.late, self.up = False, False
            raise Unreachable("timed out, and ran all the same")
        return result

    def charge(self, keys: list[str], args: list[Any]) -> Any:
        async def run() -> None:
            where, mark = keys
            if mark not in self.marks:
                self.marks.add(mark)
                self.spent[where] = self.spent.get(where, 0.0) + args[0]

        return run()


async def test_a_charge_sent_again_while_the_store_flaps_is_never_summed_with_later_ones() -> None:
    """A charge that may have run, sent again while the store was down again, was taken for one never sent:
    the next charge was added into it, under its id, and the store dropped the sum as a charge it had run
    ($1 counted of $3 spent)."""
    state = SharedState("redis://127.0.0.1:1/0")
    link = _FlappingLink()
    state.link = link  # type: ignore[assignment]
    state._charge_once = link.charge  # type: ignore[method-assign]
    where = "laneway:key:payer:spent:day"
    link.late = True
    await state._charge(where, "a", 1.0, 3600)  # timed out; the store ran it
    await state._send_unsent_spend()  # the store is down again: kept once more
    await state._charge(where, "b", 2.0, 3600)  # made while down
    link.up = True
    await state._send_unsent_spend()
    assert link.spent[where] == pytest.approx(3.0) and not state._unsent_spend
