"""Takes back jobs whose lease expired, and queues delayed jobs when they fall due.

Recovery is tied to the lease, never to the job timeout: a lease is renewed every few seconds
by a live worker, so only a dead, hung or cut-off worker lets one expire. A grace period past
the deadline covers a renewal that is late by a scheduling hiccup. Every worker runs this; the
scripts are atomic, so two workers never take back the same job twice.
"""

from __future__ import annotations

import asyncio

from botrix.aio import sleep_or_stop
from botrix.config import Settings
from botrix.health import WorkerState
from botrix.logs import Logger
from botrix.metrics import Metrics
from botrix.store import ForeignWrite, Store, StoreUnavailable

#: How long past its deadline a lease must be before its job is taken back.
GRACE_MS = 1000
#: Longest sleep between two promotion passes: delayed jobs start within a second.
PROMOTE_EVERY_S = 1.0


class Recoverer:
    """Expired leases back to the queue (or the dead letters), due jobs onto the queue."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        state: WorkerState,
        log: Logger,
        metrics: Metrics,
        retries_by_type: dict[str, int],
    ) -> None:
        self._store = store
        self._settings = settings
        self._state = state
        self._log = log
        self._metrics = metrics
        self._retries_by_type = retries_by_type
        self._recover_every = min(settings.lease_seconds / 2, 5.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Recover and promote until ``stop``."""
        loop = asyncio.get_running_loop()
        next_recovery = 0.0
        while not stop.is_set():
            pause = PROMOTE_EVERY_S
            try:
                if loop.time() >= next_recovery:
                    await self._recover()
                    next_recovery = loop.time() + self._recover_every
                pause = min(pause, await self._promote())
            except StoreUnavailable as exc:
                if self._state.redis.mark_down(str(exc)):
                    self._log.warning("redis.unavailable", reason=str(exc), during="recover")
            await sleep_or_stop(stop, pause)

    async def _recover(self) -> None:
        s = self._settings
        for queue in s.queues:
            try:
                recovered = await self._store.recover(
                    queue, GRACE_MS, s.max_retries, s.dead_letter_max, self._retries_by_type
                )
            except ForeignWrite:
                continue  # that queue alone is broken (the runner reports it); the others go on
            for job in recovered:
                self._state.counters.recovered += 1
                if job.status == "dead":
                    self._state.counters.dead += 1
                self._metrics.recovered(queue, job.status, job.job_type)
                event = "job.recovered" if job.status == "queued" else "job.dead"
                self._log.warning(
                    event,
                    queue=queue,
                    job_id=job.job_id,
                    type=job.job_type,
                    reason="lease expired: its worker died, hung or lost Redis",
                )

    async def _promote(self) -> float:
        """Promote due jobs on every queue; returns how long until the next is due."""
        pause = PROMOTE_EVERY_S
        for queue in self._settings.queues:
            try:
                moved, next_due_ms = await self._store.promote(queue)
            except ForeignWrite:
                continue  # as in _recover
            if moved:
                self._log.debug("jobs.promoted", queue=queue, count=moved)
            if next_due_ms is not None:
                pause = min(pause, next_due_ms / 1000)
        return pause
