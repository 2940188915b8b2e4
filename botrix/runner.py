"""Claims jobs into free slots, runs them, and hands what happened to the settler.

The loop takes its slots before it claims: it asks the claim script for at most as many jobs
as it has free slots, in strict priority order of its queues, so it never holds more than
``--concurrency`` jobs and never hoards work an idle worker beside it could run. When nothing
is pending it arms the waker and sleeps until a job lands, a slot frees up, or it is told to
stop.

Shutdown: fetching stops at once; in-flight jobs get ``--shutdown-timeout`` (their leases still
renewed by the heartbeat); what is still running then is cancelled and requeued without
counting an attempt. A second signal (``force``) skips the wait.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

import orjson

from botrix.aio import Backoff, sleep_or_stop
from botrix.config import Settings
from botrix.context import JobContext
from botrix.errors import EnvelopeError
from botrix.executor import backoff_ms, run_attempt
from botrix.health import InFlight, Phase, WorkerState
from botrix.logs import Logger
from botrix.metrics import Metrics
from botrix.model import (
    JSON,
    Claimed,
    ErrorInfo,
    Job,
    Outcome,
    ProgressSink,
    Settlement,
    parse_job,
)
from botrix.registry import Registry
from botrix.settler import Settler
from botrix.store import Store, StoreUnavailable
from botrix.waker import Waker

#: After the shutdown timeout, how long cancelled jobs get to be written back as requeued.
REQUEUE_GRACE_S = 10.0

T = TypeVar("T")


class Runner:
    """The consuming loop of one worker."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        state: WorkerState,
        log: Logger,
        force: asyncio.Event,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._registry = registry
        self._settings = settings
        self._state = state
        self._log = log
        self._force = force
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._settler = Settler(store, settings, state, log, metrics, self._release)
        self._waker = Waker(store, settings.queues, self._wake.set, state.redis, log)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``, then drain; returns once every claimed job is settled."""
        settled = asyncio.Event()
        waker_stop = asyncio.Event()
        settler = asyncio.create_task(self._settler.run(settled), name="botrix-settler")
        waker = asyncio.create_task(self._waker.run(waker_stop), name="botrix-waker")
        relay = asyncio.create_task(self._relay(stop), name="botrix-stop-relay")
        try:
            self._state.phase = Phase.RUNNING
            await self._consume(stop)
        finally:
            waker_stop.set()
            relay.cancel()
            await self._drain()
            settled.set()
            await settler
            await waker

    def lease_lost(self, queue: str, job_ids: list[str]) -> None:
        """The heartbeat found these leases gone: stop running jobs another worker may own."""
        for job_id in job_ids:
            entry = self._state.in_flight.get((queue, job_id))
            if entry is None or entry.task is None or entry.task.done():
                continue
            entry.cancel_reason = "lease_lost"
            entry.task.cancel()
            self._log.warning(
                "job.lease_lost",
                queue=queue,
                job_id=job_id,
                reason="lease expired or taken over; the attempt is abandoned",
            )

    async def _relay(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _consume(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        while True:
            self._wake.clear()
            if stop.is_set():
                return
            free = self._settings.concurrency - len(self._state.in_flight)
            if free > 0:
                try:
                    claimed = await self._claim(free)
                except StoreUnavailable as exc:
                    if self._state.redis.down(str(exc)):
                        self._log.warning("redis.unavailable", reason=str(exc), during="claim")
                    await sleep_or_stop(stop, backoff.next())
                    continue
                backoff.reset()
                if self._state.redis.ok():
                    self._log.info("redis.recovered")
                if claimed:
                    for queue, job in claimed:
                        self._start(queue, job)
                    continue
                self._waker.arm()
            # The timeout only guards against a wake-up lost with a dead connection.
            await sleep_or_stop(self._wake, self._store.blocking_timeout + 1)

    async def _claim(self, free: int) -> list[tuple[str, Claimed]]:
        s = self._settings
        claimed: list[tuple[str, Claimed]] = []
        for queue in s.queues:
            jobs = await self._store.claim(
                queue,
                free - len(claimed),
                s.worker_id,
                s.lease_ms,
                s.max_payload_bytes,
                s.dead_letter_max,
            )
            claimed += [(queue, job) for job in jobs]
            if len(claimed) == free:
                break
        return claimed

    def _start(self, queue: str, claimed: Claimed) -> None:
        entry = InFlight(claimed.job_id, queue, claimed.delivery)
        self._state.in_flight[(queue, claimed.job_id)] = entry
        self._idle.clear()
        entry.task = asyncio.create_task(self._run_job(queue, claimed, entry))

    async def _run_job(self, queue: str, claimed: Claimed, entry: InFlight) -> None:
        try:
            settlement = await self._attempt(queue, claimed)
        except asyncio.CancelledError:
            if entry.cancel_reason == "lease_lost":
                self._forget(queue, claimed.job_id)
                return
            settlement = Settlement(
                claimed.job_id, queue, claimed.delivery, Outcome.REQUEUE, attempt=claimed.attempt
            )
        self._settler.submit(settlement)

    async def _attempt(self, queue: str, claimed: Claimed) -> Settlement:
        s = self._settings
        try:
            job = parse_job(claimed, queue)
        except EnvelopeError as exc:
            return self._dead(queue, claimed, ErrorInfo("EnvelopeError", str(exc)))
        handler = self._registry.get(job.type)
        if handler is None:
            reason = f"no handler registered for job type {job.type!r}"
            return self._dead(queue, claimed, ErrorInfo("UnknownJobType", reason), job.type)
        max_retries = _first(job.max_retries, handler.max_retries, s.max_retries)
        timeout = _first(job.timeout, handler.timeout, s.job_timeout)
        log = self._log.bind(
            queue=queue,
            job_id=job.id,
            type=job.type,
            attempt=job.attempt,
            correlation_id=job.correlation_id,
        )
        wait_ms = max(0, int(time.time() * 1000) - job.enqueued_at_ms)
        self._metrics.job_started(queue, wait_ms / 1000)
        log.info("job.started", queue_wait_ms=wait_ms)
        ctx = JobContext(
            job.id,
            job.type,
            queue,
            job.attempt,
            max_retries,
            job.correlation_id,
            log,
            self._progress_sink(job),
        )
        started = time.perf_counter()
        attempt = await run_attempt(handler.func, ctx, job.payload, timeout)
        duration = time.perf_counter() - started
        if attempt.error is None:
            return self._settlement(job, Outcome.COMPLETED, attempt.result or b"null", duration)
        if attempt.retryable and job.attempt <= max_retries:
            settlement = self._settlement(job, Outcome.RETRY, attempt.error.to_json(), duration)
            settlement.delay_ms = backoff_ms(job.attempt, s.retry_backoff, s.retry_backoff_max)
        else:
            settlement = self._settlement(job, Outcome.DEAD, attempt.error.to_json(), duration)
        settlement.error = attempt.error
        return settlement

    def _progress_sink(self, job: Job) -> ProgressSink:
        store = self._store

        async def publish(value: JSON) -> None:
            await store.publish_progress(job.queue, job.id, orjson.dumps(value))

        return publish

    @staticmethod
    def _settlement(job: Job, outcome: Outcome, data: bytes, duration: float) -> Settlement:
        return Settlement(
            job.id,
            job.queue,
            job.delivery,
            outcome,
            data,
            duration_s=duration,
            job_type=job.type,
            attempt=job.attempt,
            correlation_id=job.correlation_id,
        )

    @staticmethod
    def _dead(queue: str, claimed: Claimed, error: ErrorInfo, job_type: str = "") -> Settlement:
        return Settlement(
            claimed.job_id,
            queue,
            claimed.delivery,
            Outcome.DEAD,
            error.to_json(),
            job_type=job_type,
            attempt=claimed.attempt,
            error=error,
        )

    def _release(self, settlement: Settlement) -> None:
        self._forget(settlement.queue, settlement.job_id)
        self._wake.set()

    def _forget(self, queue: str, job_id: str) -> None:
        self._state.in_flight.pop((queue, job_id), None)
        if not self._state.in_flight:
            self._idle.set()

    async def _drain(self) -> None:
        self._state.phase = Phase.DRAINING
        if self._state.in_flight:
            self._log.info(
                "worker.draining",
                in_flight=len(self._state.in_flight),
                timeout_s=self._settings.shutdown_timeout,
            )
            await self._wait_idle(self._settings.shutdown_timeout, self._force)
        running = [e for e in self._state.in_flight.values() if e.task and not e.task.done()]
        for entry in running:
            entry.cancel_reason = "shutdown"
            assert entry.task is not None
            entry.task.cancel()
        if self._state.in_flight and not await self._wait_idle(REQUEUE_GRACE_S, None):
            self._settler.abandon()

    async def _wait_idle(self, timeout: float, unless: asyncio.Event | None) -> bool:
        """Wait until every claimed job is settled; False on timeout or once ``unless`` is set."""
        waits = [asyncio.create_task(self._idle.wait())]
        if unless is not None:
            waits.append(asyncio.create_task(unless.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return self._idle.is_set()


def _first(*values: T | None) -> T:
    return next(v for v in values if v is not None)
