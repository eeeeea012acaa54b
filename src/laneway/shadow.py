"""Shadow lanes: candidate models answer copies of real requests in the background.

A shadow call never delays or changes the client's answer: jobs go on a bounded queue served by
a fixed number of workers; a full queue, an exhausted hourly spend cap, a request the candidate's
adapter cannot carry or a prompt its window cannot hold drops the job and counts it. Nor does it
take what real traffic needs: a candidate whose breaker is not closed, or whose gate has no free
slot at once, drops the job too (a shadow takes a gate slot like any call, and gives it back).
The spend cap holds each queued job's estimated cost (its prompt and `max_tokens` at the
candidate's price) until the call's real cost replaces it. Each result
is recorded as an exchange of lane `shadow`, paired with its primary by `signals.shadow_of`, with
the comparison (exact match, text similarity, label agreement). Its cost is its own: it never
touches the primary's.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from .chat import ChatRequest, Message, said, tool_call_text
from .config import Route, ShadowSettings
from .context import TokenCounter, upper_bound
from .dispatch import Ticket, account, admission_estimate, counted, estimate_usage
from .errors import UpstreamError
from .exchange import OK, Attempt, Exchange
from .gate import GateRejected
from .routing import unit_hash
from .runtime import Runtime, fits, prepare

log = logging.getLogger("laneway")
_WORDS = re.compile(r"[a-z0-9]+")
# Words of each answer the similarity reads. The word diff grows with the product of the two lengths: two
# answers of 3,000 words took 66-190 ms, on the event loop, and held every client's request up as long.
SIMILARITY_WORDS = 500


SHADOW_PRIORITY = 2  # a shadow's gate class: the lowest, and it never waits in the queue
# How long a stopping gateway waits for its shadow calls, after the grace its clients' requests had.
CLOSE_WAIT_S = 2.0


@dataclass(slots=True)
class _Job:
    runtime: Runtime
    target: str
    messages: list[Message]  # the client's, prepared for the candidate in the worker
    params: dict[str, Any]
    primary: Exchange
    primary_said: str  # the primary's answer as `said` writes it
    estimate: tuple[int, float] = (0, 0.0)  # tokens and USD, held against the spend cap (and a gate's budgets)


@dataclass(slots=True)
class ShadowCounters:
    submitted: int = 0
    completed: int = 0
    dropped_queue: int = 0
    dropped_budget: int = 0
    dropped_refused: int = 0  # the candidate's adapter cannot carry the request (`Provider.refusal`)
    dropped_context: int = 0  # the prompt and its output do not fit the candidate's window
    dropped_cooling: int = 0  # the candidate's breaker is open (or half-open: its probe is real traffic's)
    dropped_gate: int = 0  # the candidate's gate had no free slot: real traffic comes first
    dropped_shutdown: int = 0  # still queued when the gateway stopped


class ShadowRunner:
    def __init__(self, settings: ShadowSettings, sink: Any, counter: TokenCounter | None = None) -> None:
        self.settings = settings
        self._counter = counter or TokenCounter()
        self.sink = sink
        self.counters = ShadowCounters()
        self.dropped: dict[str, int] = {}
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(settings.queue)
        self._workers: list[asyncio.Task[None]] = []
        self._hour = 0
        self._spent = 0.0
        self._held = 0.0  # estimated cost of the jobs running
        # This process's part of `usd_per_hour`: each of `laneway serve --workers N` keeps to 1/N of it.
        self.share = 1.0

    def targets(self, runtime: Runtime, route: Route | None, request_id: str) -> list[str]:
        """The candidates this request is copied to: deterministic by request id, each once (a global
        target a route also names is copied once, at the larger `sample`). Read from the request's own
        config, whose models they are."""
        shadows = (*(route.shadows if route else ()), *runtime.config.shadow.targets)
        chosen = (s.target for s in shadows if unit_hash(f"shadow|{s.target}|{request_id}") < s.sample)
        return list(dict.fromkeys(chosen))

    def submit(self, runtime: Runtime, targets: list[str], messages: list[Message], params: dict[str, Any],
               primary: Exchange, primary_said: str) -> None:
        """Queue a copy of the request to each target; O(1) each. What a copy needs to be judged (the
        candidate's adapter, its window, its price against the cap) is worked out by the worker: counting a
        long prompt's tokens here held up the client's answer and every other request (190 ms for 3.7 MB)."""
        self._start_workers()
        for target in targets:
            self.counters.submitted += 1
            try:
                self._queue.put_nowait(_Job(runtime, target, messages, params, primary, primary_said))
            except asyncio.QueueFull:
                self._drop(target, "queue")
                continue
            runtime.enter()  # keep its providers open until the job is done

    async def _admit(self, job: _Job) -> ChatRequest | None:
        """The request as the candidate's profile prepares it, its estimate held against the spend cap; None
        (the job dropped and counted) when the candidate cannot carry it, its window cannot hold it, or the
        cap has no room for it."""
        runtime, target = job.runtime, job.target
        provider, spec = runtime.providers.get(target), runtime.config.models.get(target)
        if provider is None or spec is None or provider.refusal(job.params) is not None:
            self._drop(target, "refused")  # as dispatch skips it: sent without, it would answer something else
            return None
        request = prepare(spec, job.messages, job.params)
        bound = upper_bound(request.messages, request.params.get("tools"))
        ok, prompt = await counted(bound, fits, self._counter, spec, request, bound)
        if not ok:
            self._drop(target, "context")  # as dispatch skips it: the call could only fail
            return None
        if prompt < 0:
            prompt = await counted(bound, self._counter.count, request.messages, spec.tokenizer)
        estimate = admission_estimate(spec, request, prompt)
        if self._over_budget(estimate[1]):
            self._drop(target, "budget")
            return None
        job.estimate = estimate
        self._held += estimate[1]
        return request

    def _drop(self, target: str, why: str) -> None:
        """Count a job not run: `why` is queue, budget, refused, context, cooling, gate or shutdown."""
        name = f"dropped_{why}"
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        self.dropped[target] = self.dropped.get(target, 0) + 1
        if self.sink is not None:
            self.sink.count(f"shadow_dropped_{why}", target)

    def _over_budget(self, estimate: float) -> bool:
        """Whether a job of `estimate` USD would take this hour's spend, with the jobs still held, past the cap."""
        hour = int(time.time() // 3600)
        if hour != self._hour:
            self._hour, self._spent = hour, 0.0
        return self._spent + self._held + estimate > self.settings.usd_per_hour * self.share

    def _start_workers(self) -> None:
        if not self._workers:
            self._workers = [asyncio.create_task(self._work(), name=f"laneway-shadow-{i}")
                             for i in range(self.settings.concurrency)]

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                request = await self._admit(job)
                record = None if request is None else await self._run(job, request)
                if record is not None:
                    self._spent += record.cost_usd
                    self.counters.completed += 1
                    if self.sink is not None:
                        self.sink.record(record)
            except Exception:  # a bug in one shadow call must not stop the lane
                log.exception("laneway: shadow call to `%s` failed", job.target)
            finally:
                self._held -= job.estimate[1]
                job.runtime.leave()
                self._queue.task_done()

    async def _run(self, job: _Job, request: ChatRequest) -> Exchange | None:
        """The candidate's answer as a shadow exchange; None (the job dropped) when the candidate is
        cooling down or its gate is full."""
        loop = asyncio.get_running_loop()
        breaker = job.runtime.breakers.get(job.target)
        if breaker is not None and breaker.state(loop.time()) != "closed":
            self._drop(job.target, "cooling")
            return None
        ticket = Ticket(job.runtime.gates.get(job.target))
        if ticket.gate is not None:
            ticket.estimate = job.estimate
            try:
                await ticket.gate.admit(SHADOW_PRIORITY, *job.estimate, loop.time())  # no wait: now or not at all
            except GateRejected:
                self._drop(job.target, "gate")
                return None
            ticket.admitted = True
        try:
            record = await self._call(job, request)
            # Its latency judges the model only when it answered, as a primary's does.
            ticket.used = (record.prompt_tokens + record.completion_tokens, record.cost_usd,
                           record.latency_ms if record.outcome == OK else None)
            return record
        finally:
            ticket.release()

    async def _call(self, job: _Job, request: ChatRequest) -> Exchange:
        spec = job.runtime.config.models[job.target]
        primary = job.primary
        record = Exchange(f"{primary.request_id}/shadow/{job.target}", time.time(), path=primary.path,
                          conversation_id=primary.conversation_id, route=primary.route, lane="shadow",
                          model=job.target, stream=True)
        attempt = Attempt(job.target, OK, lane="shadow")
        record.attempts.append(attempt)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (spec.deadline_ms or job.runtime.config.server.deadline_ms) / 1000
        started = time.perf_counter()
        pieces: list[str] = []
        calls: list[dict[str, Any]] = []
        usage = None
        try:
            async for chunk in job.runtime.providers[job.target].stream(request, deadline):
                if record.ttft_ms is None and (chunk.text or chunk.tool_calls or chunk.refusal):  # as a primary's
                    record.ttft_ms = attempt.ttft_ms = (time.perf_counter() - started) * 1000
                pieces.append(chunk.text)
                if chunk.tool_calls:
                    calls += chunk.tool_calls
                usage = chunk.usage or usage
        except UpstreamError as error:
            record.outcome = attempt.outcome = error.code
            record.error = attempt.error = error.message
            record.status = error.status  # what a client sent to the candidate would have got
            attempt.upstream_status = error.upstream_status
        record.latency_ms = record.upstream_ms = attempt.latency_ms = (time.perf_counter() - started) * 1000
        if usage is None and (record.outcome == OK or any(pieces) or calls):
            # Counted, as the dispatcher counts an answer with none reported: a shadow logged free made the
            # candidate look 100 % cheaper, and its spend never reached the `usd_per_hour` cap.
            usage = await estimate_usage(self._counter, spec, request, [*pieces, *tool_call_text(calls)])
        if usage is not None:
            account(attempt, record, spec.price, usage)
        # In a worker thread: the loop answers clients meanwhile (it waits at most a GIL switch interval).
        compared = await asyncio.to_thread(compare, job.primary_said, said("".join(pieces), calls))
        record.signals = {**primary.signals, "shadow_of": primary.request_id, "primary_model": primary.model,
                          "primary_latency_ms": primary.latency_ms, "primary_ttft_ms": primary.ttft_ms,
                          "primary_cost_usd": primary.cost_usd, **compared}
        return record

    async def aclose(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Let the shadow calls queued or running finish within `timeout_s`, then stop the workers; the jobs
        still queued are dropped and counted (`shutdown`). Each held its request's runtime open, and a
        runtime that waited for them held the gateway's exit 30 s past its grace."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self._drop(job.target, "shutdown")
            job.runtime.leave()
            self._queue.task_done()


def compare(primary: str, candidate: str) -> dict[str, Any]:
    """Exact match, normalised text similarity (of the first `SIMILARITY_WORDS` words of each), and label
    agreement when both answers are labels."""
    a = _WORDS.findall(primary.lower())[:SIMILARITY_WORDS]
    b = _WORDS.findall(candidate.lower())[:SIMILARITY_WORDS]
    result: dict[str, Any] = {
        "exact": primary.strip() == candidate.strip(),
        "similarity": round(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(), 4) if a or b else 1.0,
    }
    if 0 < len(a) <= 3 and 0 < len(b) <= 3:
        result["label_agreement"] = a == b
    return result
