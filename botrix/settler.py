"""Writes finished attempts back to Redis in batches and frees their slots.

Jobs that finish while a write is in flight wait in a buffer and go together in the next one:
one round trip settles a whole batch under load, and a lone job is written at once when idle.
A slot is freed only after its job's state is in Redis, so a worker never holds more than
``--concurrency`` leases. While Redis is down the batch is kept and retried; results of jobs
that finished meanwhile are written once it is back.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from botrix.aio import Backoff
from botrix.config import Settings
from botrix.health import WorkerState
from botrix.logs import Logger
from botrix.metrics import Metrics
from botrix.model import Outcome, Settlement
from botrix.store import Store, StoreUnavailable


class Settler:
    """Buffers settlements and flushes them; ``release`` is called for each one written."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        state: WorkerState,
        log: Logger,
        metrics: Metrics,
        release: Callable[[Settlement], None],
    ) -> None:
        self._store = store
        self._settings = settings
        self._state = state
        self._log = log
        self._release = release
        self._metrics = metrics
        self._buffer: list[Settlement] = []
        self._ready = asyncio.Event()
        self._abandon = False

    def submit(self, settlement: Settlement) -> None:
        """Queue a finished attempt for the next write."""
        self._buffer.append(settlement)
        self._ready.set()

    def abandon(self) -> None:
        """Stop retrying: what is unwritten stays leased in Redis and is recovered later."""
        self._abandon = True
        self._ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Flush until ``stop`` is set and nothing is left to write."""
        stopper = asyncio.create_task(self._wake_on(stop))
        backoff = Backoff()
        try:
            while not (stop.is_set() and not self._buffer) and not self._abandon:
                await self._ready.wait()
                self._ready.clear()
                while self._buffer and not self._abandon:
                    batch, self._buffer = self._buffer, []
                    try:
                        refused = await self._write(batch)
                    except StoreUnavailable as exc:
                        self._buffer = batch + self._buffer
                        if self._state.redis.down(str(exc)):
                            self._log.warning(
                                "redis.unavailable",
                                reason=str(exc),
                                during="settle",
                                unsettled=len(self._buffer),
                            )
                        await asyncio.sleep(backoff.next())
                        continue
                    backoff.reset()
                    self._done(batch, refused)
        finally:
            stopper.cancel()
        for settlement in self._buffer:
            self._log.warning(
                "job.settle_abandoned",
                job_id=settlement.job_id,
                queue=settlement.queue,
                reason="redis unavailable at shutdown; the lease will expire and "
                "another worker will recover the job",
            )
            self._release(settlement)

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._ready.set()

    async def _write(self, batch: list[Settlement]) -> set[str]:
        by_queue: dict[str, list[Settlement]] = defaultdict(list)
        for settlement in batch:
            by_queue[settlement.queue].append(settlement)
        s = self._settings
        return await self._store.settle(by_queue, s.result_ttl, s.dead_letter_max)

    def _done(self, batch: list[Settlement], refused: set[str]) -> None:
        counters = self._state.counters
        for s in batch:
            self._release(s)
            log = self._log.bind(
                queue=s.queue,
                job_id=s.job_id,
                type=s.job_type,
                attempt=s.attempt,
                correlation_id=s.correlation_id,
            )
            if s.job_id in refused:
                counters.refused_acks += 1
                self._metrics.ack_refused(s.queue)
                log.warning(
                    "job.ack_refused",
                    outcome=s.outcome.value,
                    reason="lease lost: the job was recovered or claimed by another worker",
                )
                continue
            ran = s.duration_s > 0
            self._metrics.job_finished(s.queue, s.job_type, s.outcome.value, s.duration_s if ran else None)
            if s.outcome is Outcome.REQUEUE:
                log.info("job.requeued", reason="shutdown")
                continue
            counters.processed += 1
            duration_ms = round(s.duration_s * 1000, 3)
            if s.outcome is Outcome.COMPLETED:
                counters.succeeded += 1
                log.info("job.succeeded", duration_ms=duration_ms)
                continue
            counters.failed += 1
            error = s.error.type if s.error else None
            message = s.error.message if s.error else None
            log.warning("job.failed", duration_ms=duration_ms, error=error, message=message)
            if s.outcome is Outcome.RETRY:
                counters.retried += 1
                log.info("job.retry_scheduled", delay_ms=s.delay_ms)
            else:
                counters.dead += 1
                log.error("job.dead", error=error, reason=message)
