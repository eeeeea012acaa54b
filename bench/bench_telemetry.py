"""CPU cost of telemetry per exchange: `record()` on the hot path plus the amortised background work.

Run: PYTHONPATH=src .venv/bin/python bench/bench_telemetry.py [--n 20000] [--paced-seconds 5] [--log-rows 150000]

CPU is process CPU time (`time.process_time`), so the SQLite writer thread is included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from laneway.exchange import Attempt, Exchange
from laneway.telemetry import Telemetry, TelemetrySettings

MODELS = ("claude-sonnet-37", "heavy-foundation", "gemini-2.5-flash-lite", "gpt-5")


def exchange(i: int) -> Exchange:
    model = MODELS[i % len(MODELS)]
    attempts = [
        Attempt(
            model=model,
            outcome="ok",
            latency_ms=300.0 + i % 700,
            ttft_ms=80.0 + i % 200,
            prompt_tokens=400 + i % 300,
            completion_tokens=120 + i % 90,
            cost_usd=0.002,
        )
    ]
    if i % 10 == 0:
        attempts.insert(
            0, Attempt(model=MODELS[(i + 1) % 4], outcome="upstream_unavailable", latency_ms=30.0)
        )
    return Exchange(
        prompt_body=f'[{{"role": "user", "content": "Where is my refund for order {i}?"}}]',
        answer_body="Your refund was issued yesterday; it takes three to five business days.",
        request_id=os.urandom(12).hex(),  # random, as the server makes them
        started_at=time.time(),
        conversation_id=f"c{i % 500}",
        route=f"route-{i % 3}",
        lane="fallback" if i % 10 == 0 else "primary",
        model=model,
        latency_ms=320.0 + i % 700,
        ttft_ms=90.0 + i % 200,
        upstream_ms=310.0 + i % 700,
        prompt_tokens=400 + i % 300,
        completion_tokens=120 + i % 90,
        cost_usd=0.002,
        attempts=attempts,
        signals={"priority": "normal", "escalation": i % 17 == 0, "convo_length": i % 20},
    )


def cpu_us_per(n: int, work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    return (time.process_time() - start) / n * 1e6


async def burst(settings: TelemetrySettings, exchanges: list[Exchange]) -> tuple[float, float]:
    """(record() µs, record + all background work µs) per exchange for one burst."""
    telemetry = Telemetry(settings)
    await telemetry.start()
    start = time.process_time()
    record_us = cpu_us_per(len(exchanges), lambda: list(map(telemetry.record, exchanges)))
    await telemetry.aclose()
    return record_us, (time.process_time() - start) / len(exchanges) * 1e6


async def paced(settings: TelemetrySettings | None, exchanges: list[Exchange], rate: int = 1000) -> float:
    """Process CPU per exchange while recording `rate` exchanges/s; `None` records into a plain list."""
    telemetry = Telemetry(settings) if settings is not None else None
    sink: list[Exchange] = []
    record = telemetry.record if telemetry is not None else sink.append
    if telemetry is not None:
        await telemetry.start()
    start, began, sent = time.process_time(), time.monotonic(), 0
    while sent < len(exchanges):
        due = min(len(exchanges), int((time.monotonic() - began) * rate))
        for i in range(sent, due):
            record(exchanges[i])
        sent = due
        await asyncio.sleep(0.005)
    if telemetry is not None:
        await telemetry.aclose()
    return (time.process_time() - start) / sent * 1e6


def prometheus_client_us(exchanges: list[Exchange]) -> float | None:
    """The same per-exchange updates through prometheus-client, for comparison."""
    try:
        from prometheus_client import CollectorRegistry, Counter, Histogram
    except ImportError:
        return None
    registry, labels = CollectorRegistry(), ("model", "route", "lane")
    requests = Counter("r", "r", (*labels, "outcome"), registry=registry)
    latency, ttft, overhead = (Histogram(n, n, labels, registry=registry) for n in ("l", "t", "o"))
    tokens_in, tokens_out, cost, fallbacks = (
        Counter(n, n, labels, registry=registry) for n in ("i", "x", "c", "f")
    )
    attempts = Counter("a", "a", ("model", "outcome"), registry=registry)

    def observe() -> None:
        for e in exchanges:
            key = (e.model or "", e.route or "", e.lane)
            requests.labels(*key, e.outcome).inc()
            latency.labels(*key).observe(e.latency_ms / 1000)
            if e.ttft_ms is not None:
                ttft.labels(*key).observe(e.ttft_ms / 1000)
            overhead.labels(*key).observe(e.overhead_ms / 1000)
            tokens_in.labels(*key).inc(e.prompt_tokens)
            tokens_out.labels(*key).inc(e.completion_tokens)
            cost.labels(*key).inc(e.cost_usd)
            fallbacks.labels(*key).inc(len(e.attempts) - 1)
            for a in e.attempts:
                attempts.labels(a.model, a.outcome).inc()

    return cpu_us_per(len(exchanges), observe)


def hand_written_us(exchanges: list[Exchange]) -> float:
    from laneway.telemetry._metrics import GatewayMetrics
    from laneway.telemetry._records import fallbacks_of

    metrics = GatewayMetrics()
    return cpu_us_per(len(exchanges), lambda: [metrics.observe(e, fallbacks_of(e)) for e in exchanges])


def insert_us(rows: int) -> dict[str, float]:
    """SQLite CPU per row, in batches of 300, for a log that outgrows the page cache: the shipped
    records (two values bound per row) against one column per value, each value bound, as earlier
    releases stored them."""
    import sqlite3

    import orjson

    from laneway.telemetry._records import LOG_COLUMNS, fallbacks_of, log_record_of
    from laneway.telemetry._sqlite import SqliteStore
    from laneway.telemetry._store import column_type

    records = [log_record_of(e, fallbacks_of(e), False, False, 0) for e in map(exchange, range(rows))]
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(f"sqlite:///{folder}/records.sqlite3")
        store._open()
        figures["records"] = cpu_us_per(
            rows, lambda: [store._write(records[start : start + 300]) for start in range(0, rows, 300)])
        store._close()

        values = [orjson.loads(record) for _, record in records]
        as_text = [LOG_COLUMNS.index("attempts"), LOG_COLUMNS.index("signals")]
        for row in values:  # the JSON columns went in as text
            for i in as_text:
                row[i] = orjson.dumps(row[i]).decode()
        db = sqlite3.connect(f"{folder}/columns.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"CREATE TABLE exchanges ({', '.join(f'{n} {column_type(n, 0)}' for n in LOG_COLUMNS)})")
        db.execute("CREATE INDEX exchanges_started_at ON exchanges (started_at)")
        insert = f"INSERT INTO exchanges VALUES ({', '.join('?' * len(LOG_COLUMNS))})"

        def write() -> None:
            for start in range(0, rows, 300):
                db.execute("BEGIN IMMEDIATE")
                db.executemany(insert, values[start : start + 300])
                db.execute("COMMIT")

        figures["one column per value"] = cpu_us_per(rows, write)
        db.close()
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--log-rows", type=int, default=0,
                        help="also time SQLite inserts into a log of this many rows (as stored; one column per value)")
    args = parser.parse_args()
    exchanges = [exchange(i) for i in range(args.n)]
    print(
        f"metric updates only: hand-written {hand_written_us(exchanges):.2f} µs/exchange, "
        f"prometheus-client {prometheus_client_us(exchanges) or float('nan'):.2f} µs/exchange"
    )
    with tempfile.TemporaryDirectory() as folder:
        cases = {
            "metrics only": TelemetrySettings(exchange_log=None),
            "metrics + SQLite log": TelemetrySettings(exchange_log=f"sqlite:///{folder}/bench.sqlite3"),
            "metrics + SQLite log + bodies": TelemetrySettings(
                exchange_log=f"sqlite:///{folder}/bodies.sqlite3", store_bodies=True
            ),
        }
        for name, settings in cases.items():
            record_us, all_us = await burst(settings, exchanges)
            print(
                f"burst of {args.n}, {name}: record() {record_us:.2f} µs, record + background {all_us:.1f} µs"
                f" per exchange"
            )
        if args.paced_seconds > 0:
            # The loop without telemetry (waking up, handing over) is subtracted; the two alternate.
            paced_set = exchanges[: int(args.paced_seconds * 1000)]
            with_log, without = [], []
            for i in range(3):
                settings = TelemetrySettings(exchange_log=f"sqlite:///{folder}/paced-{i}.sqlite3")
                with_log.append(await paced(settings, paced_set))
                without.append(await paced(None, paced_set))
            per = statistics.median(with_log) - statistics.median(without)
            print(
                f"paced 1000 exchanges/s for {args.paced_seconds:g} s (median of 3), metrics + SQLite log: "
                f"{per:.1f} µs CPU per exchange = {per / 10:.2f} % of one core at 1000 req/s"
            )
    if args.log_rows:
        figures = insert_us(args.log_rows)
        print(f"SQLite inserts into a log of {args.log_rows} rows: " +
              ", ".join(f"{name} {us:.1f} µs/row" for name, us in figures.items()))


if __name__ == "__main__":
    asyncio.run(main())
