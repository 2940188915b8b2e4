"""Turns one claimed job into a settlement: validate, find the handler, run it, decide.

Retry or dead letter is decided here, from the attempt number, the job's (or handler's, or
worker's) ``max_retries``, and whether the error is retryable. The one call to Redis made
here is a handler's progress report (best effort); the settlement goes back to the runner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from botrix.config import Settings
from botrix.context import Enqueue, HandlerFunc, JobContext
from botrix.errors import EnvelopeError
from botrix.executor import backoff_ms, run_attempt
from botrix.logs import Logger, enabled_for
from botrix.metrics import Metrics
from botrix.model import JSON, Claimed, ErrorInfo, Job, Outcome, Settlement, parse_job
from botrix.registry import Registry
from botrix.store import Store, StoreUnavailable
from botrix.tracing import JobTracer

#: A handler's progress updates that Redis cannot take are logged at most this often.
PROGRESS_LOG_EVERY_S = 10.0


class Attempts:
    """Runs attempts of claimed jobs with the worker's registry and defaults."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        log: Logger,
        metrics: Metrics,
        resources: dict[str, Any],
        enqueue: Enqueue,
    ) -> None:
        self._store = store
        self._resources = resources
        self._enqueue = enqueue
        self._registry = registry
        self._settings = settings
        self._log = log
        self._metrics = metrics
        self._debug = enabled_for(log, logging.DEBUG)
        self._tracer = JobTracer(settings.worker_id, log) if settings.tracing == "otel" else None
        self._progress_dropped = 0  # updates dropped since the last job.progress_dropped line
        self._progress_logged = -PROGRESS_LOG_EVERY_S

    async def run(self, queue: str, claimed: Claimed) -> Settlement:
        """Run one attempt to its settlement (cancellation propagates to the caller)."""
        s = self._settings
        try:
            job = parse_job(claimed, queue, trace=self._tracer is not None)
        except EnvelopeError as exc:
            return dead_settlement(queue, claimed, ErrorInfo("EnvelopeError", str(exc)))
        handler = self._registry.get(job.type)
        if handler is None:
            reason = f"no handler registered for job type {job.type!r}"
            return dead_settlement(queue, claimed, ErrorInfo("UnknownJobType", reason), job.type)
        max_retries = job.max_retries
        if max_retries is None:
            max_retries = s.max_retries if handler.max_retries is None else handler.max_retries
        timeout = job.timeout
        if timeout is None:
            timeout = s.job_timeout if handler.timeout is None else handler.timeout
        wait_ms = max(0, int(time.time() * 1000) - job.ready_at_ms)
        self._metrics.job_started(queue, wait_ms / 1000)
        # DEBUG: at INFO a job gets one line, its outcome, which carries the wait too. Who runs
        # what now is in /health, the job records and the event stream. Asked first, because
        # a filtered call still builds its arguments.
        if self._debug:
            self._log.debug(
                "job.started",
                queue=queue,
                job_id=job.id,
                type=job.type,
                attempt=job.attempt,
                correlation_id=job.correlation_id,
                queue_wait_ms=wait_ms,
            )
        started = self._tracer.start(job) if self._tracer is not None else None
        ctx = JobContext(
            job.id,
            job.type,
            queue,
            job.attempt,
            max_retries,
            job.correlation_id,
            self._resources,
            self._log,
            self._progress,
            job.delivery,
            self._enqueue,
            self._tracer.log_ids(started) if self._tracer is not None and started is not None else (),
        )
        if started is None:
            return await self._attempt(job, handler.func, ctx, timeout, wait_ms)
        assert self._tracer is not None
        try:
            settlement = await self._attempt(job, handler.func, ctx, timeout, wait_ms)
        except asyncio.CancelledError:
            self._tracer.end(started, "cancelled", None)  # shutdown (requeued) or a lost lease
            raise
        self._tracer.end(started, settlement.outcome, settlement.error, settlement.retry_asked)
        settlement.trace_id = ctx.trace_id
        return settlement

    async def _attempt(
        self, job: Job, func: HandlerFunc, ctx: JobContext, timeout: float, wait_ms: int
    ) -> Settlement:
        s = self._settings
        started = time.perf_counter()
        attempt = await run_attempt(func, ctx, job.payload, timeout, s.max_result_bytes)
        duration = time.perf_counter() - started
        if attempt.error is None:
            return _settlement(job, Outcome.COMPLETED, attempt.result or b"null", duration, wait_ms)
        if attempt.retryable and job.attempt <= ctx.max_retries:
            settlement = _settlement(job, Outcome.RETRY, attempt.error.to_json(), duration, wait_ms)
            if attempt.retry_after is not None:
                settlement.delay_ms = int(attempt.retry_after * 1000)
                settlement.retry_asked = True
            else:
                settlement.delay_ms = backoff_ms(job.attempt, s.retry_backoff, s.retry_backoff_max)
        else:
            settlement = _settlement(job, Outcome.DEAD, attempt.error.to_json(), duration, wait_ms)
        settlement.error = attempt.error
        return settlement

    async def _progress(self, queue: str, job_id: str, delivery: int, value: JSON) -> None:
        # Best effort: a progress report is news, not the job's outcome. Failing the attempt
        # because Redis could not take it would run (or dead-letter) a job that is going well.
        try:
            await self._store.publish_progress(
                queue, job_id, delivery, self._settings.worker_id, orjson.dumps(value)
            )
        except StoreUnavailable as exc:
            # One line per 10 s at most: a handler reporting in a loop through an outage would
            # otherwise write one per call.
            self._progress_dropped += 1
            if time.monotonic() >= self._progress_logged + PROGRESS_LOG_EVERY_S:
                self._log.warning(
                    "job.progress_dropped",
                    queue=queue,
                    job_id=job_id,
                    dropped=self._progress_dropped,
                    reason=str(exc),
                )
                self._progress_logged, self._progress_dropped = time.monotonic(), 0


def _settlement(job: Job, outcome: Outcome, data: bytes, duration: float, wait_ms: int) -> Settlement:
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
        queue_wait_ms=wait_ms,
    )


def dead_settlement(queue: str, claimed: Claimed, error: ErrorInfo, job_type: str = "") -> Settlement:
    """The settlement that dead-letters ``claimed`` with ``error``, no retry."""
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
