"""Takes back jobs whose lease expired, and queues delayed jobs when they fall due.

Recovery is tied to the lease, never to the job timeout: a lease is renewed every few seconds
by a live worker, so only a dead, hung or cut-off worker lets one expire. A grace period past
the deadline covers a renewal that is late by a scheduling hiccup. Every worker runs this, for
its own queues and, much later past the deadline and by one worker at a time, for every other
queue botrix knows; the scripts are atomic, so two workers never take back the same job twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from botrix.aio import sleep_or_stop
from botrix.config import Settings
from botrix.health import WorkerState
from botrix.logs import Logger
from botrix.metrics import Metrics
from botrix.store import Store, StoreUnavailable

#: How long past its deadline a lease must be before its job is taken back.
GRACE_MS = 1000
#: The same, on a queue this worker does not serve. The queue's own workers know its handlers'
#: retry limits, so they get the first go; this only catches a queue no worker serves any more
#: (a rollout that dropped it), whose running jobs would otherwise stay "running" for good.
ORPHAN_GRACE_MS = 60_000
#: How often one worker of the fleet (whoever takes the turn) looks at every other queue: the
#: set of queue names only grows, so every worker doing it every pass would not scale.
ORPHAN_EVERY_S = 30.0
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
        next_recovery = next_orphans = 0.0
        while not stop.is_set():
            pause = PROMOTE_EVERY_S
            try:
                if loop.time() >= next_recovery:
                    await self._recover(self._settings.queues, GRACE_MS)
                    next_recovery = loop.time() + self._recover_every
                if loop.time() >= next_orphans:
                    next_orphans = loop.time() + ORPHAN_EVERY_S
                    await self._recover_orphans()
                pause = min(pause, await self._promote())
            except StoreUnavailable as exc:
                if self._state.redis.down(str(exc)):
                    self._log.warning("redis.unavailable", reason=str(exc), during="recover")
            await sleep_or_stop(stop, pause)

    async def _recover_orphans(self) -> None:
        turn_ms = int(ORPHAN_EVERY_S * 1000)
        if await self._store.take_orphan_turn(self._settings.worker_id, turn_ms):
            others = set(await self._store.known_queues()).difference(self._settings.queues)
            await self._recover(sorted(others), ORPHAN_GRACE_MS)

    async def _recover(self, queues: Iterable[str], grace_ms: int) -> None:
        s = self._settings
        for queue in queues:
            recovered = await self._store.recover(
                queue, grace_ms, s.max_retries, s.dead_letter_max, self._retries_by_type
            )
            for job in recovered:
                self._state.counters.recovered += 1
                self._metrics.recovered(queue, job.status)
                event = "job.recovered" if job.status == "queued" else "job.dead"
                self._log.warning(
                    event,
                    queue=queue,
                    job_id=job.job_id,
                    reason="lease expired: its worker died, hung or lost Redis",
                )

    async def _promote(self) -> float:
        """Promote due jobs on every queue; returns how long until the next is due."""
        pause = PROMOTE_EVERY_S
        for queue in self._settings.queues:
            moved, next_due_ms = await self._store.promote(queue)
            if moved:
                self._log.debug("jobs.promoted", queue=queue, count=moved)
            if next_due_ms is not None:
                pause = min(pause, next_due_ms / 1000)
        return pause
