"""Enqueues the runs of periodic handlers (``@handler(..., every=S)`` or ``cron=...``).

Every worker with such a handler runs this, and each period's run is enqueued once all the
same: schedule.lua takes the slot from the Redis clock and remembers the last one enqueued.
A cron handler's slot is its last fire time by the Redis clock, read just before (TIME).
The script also says how long until the next slot, so a worker calls it about once a period,
not once a second. While the previous run is still live the new slot waits for it, and the
worker looks again after 1 s, then 2, 4 ... up to 30 s. The runs are ordinary jobs (retries,
leases, dead letters, events).
"""

from __future__ import annotations

import asyncio

from botrix.aio import Backoff, sleep_or_stop
from botrix.health import WorkerState
from botrix.logs import Logger
from botrix.registry import Handler, Registry
from botrix.store import ForeignWrite, Store, StoreUnavailable

#: Longest sleep between two looks, whatever the period: a changed clock is noticed within it.
MAX_PAUSE_S = 60.0


class Periodic:
    """The periodic handlers' runs, each slot enqueued once across the workers."""

    def __init__(self, store: Store, registry: Registry, state: WorkerState, log: Logger) -> None:
        self._store = store
        self._periodic = registry.periodic()
        self._state = state
        self._log = log
        # Per handler: the back-off while its previous run is live or its keys are damaged.
        self._waits = {h.name: Backoff(1.0, 30.0) for h in self._periodic}
        self._damaged: set[str] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Enqueue runs as their slots come, until ``stop``."""
        loop = asyncio.get_running_loop()
        due = {h.name: 0.0 for h in self._periodic}
        while self._periodic and not stop.is_set():
            for handler in self._periodic:
                if loop.time() >= due[handler.name]:
                    due[handler.name] = loop.time() + await self._look(handler)
            await sleep_or_stop(stop, max(0.001, min(due.values()) - loop.time()))

    async def _look(self, handler: Handler) -> float:
        """Enqueue ``handler``'s run if its slot has come; returns the seconds until the next look."""
        wait = self._waits[handler.name]
        try:
            if handler.cron is None:
                assert handler.every is not None
                reply = await self._store.schedule(handler.queue, handler.name, int(handler.every * 1000))
            else:
                now_ms = await self._store.clock_ms()
                last_ms, next_ms = handler.cron.around(now_ms)
                if next_ms is None:  # no fire time ahead: only a missed one can still run
                    next_ms = now_ms + int(MAX_PAUSE_S * 1000)
                reply = await self._store.schedule(handler.queue, handler.name, 0, (last_ms, next_ms))
            job_id, until_next_ms, blocked = reply
        except ForeignWrite as exc:
            # The queue's keys hold what botrix never writes: no run until someone repairs them.
            if handler.name not in self._damaged:
                self._damaged.add(handler.name)
                self._log.warning("schedule.damaged", type=handler.name, queue=handler.queue, reason=str(exc))
            return wait.next()
        except StoreUnavailable as exc:
            if self._state.redis.mark_down(str(exc)):
                self._log.warning("redis.unavailable", reason=str(exc), during="schedule")
            return wait.next()
        if handler.name in self._damaged:
            self._damaged.discard(handler.name)
            self._log.info("schedule.repaired", type=handler.name, queue=handler.queue)
        if job_id is not None:
            self._log.info("schedule.enqueued", type=handler.name, queue=handler.queue, job_id=job_id)
        if blocked:
            return min(wait.next(), until_next_ms / 1000 + 0.001, MAX_PAUSE_S)
        wait.reset()
        return min(max(until_next_ms, 1) / 1000, MAX_PAUSE_S)
