"""Enqueues the runs of periodic handlers (``@handler(..., every=S)``).

Every worker with such a handler runs this, and each period's run is enqueued once all the
same: schedule.lua takes the slot from the Redis clock and remembers the last one enqueued.
The script also says how long until the next slot, so a worker calls it about once a period,
not once a second. The runs are ordinary jobs (retries, leases, dead letters, events).
"""

from __future__ import annotations

import asyncio

from botrix.aio import sleep_or_stop
from botrix.health import WorkerState
from botrix.logs import Logger
from botrix.registry import Registry
from botrix.store import ForeignWrite, Store, StoreUnavailable

#: Longest sleep between two looks, whatever the period: a changed clock or a lost slot
#: (a run still going) is noticed within it.
MAX_PAUSE_S = 60.0
#: Back-off after Redis failed, or the queue's keys are damaged.
RETRY_S = 1.0


class Scheduler:
    """The periodic handlers' runs, each slot enqueued once across the workers."""

    def __init__(self, store: Store, registry: Registry, state: WorkerState, log: Logger) -> None:
        self._store = store
        self._periodic = registry.periodic()
        self._state = state
        self._log = log

    async def run(self, stop: asyncio.Event) -> None:
        """Enqueue runs as their slots come, until ``stop``."""
        loop = asyncio.get_running_loop()
        due = {h.name: 0.0 for h in self._periodic}
        while self._periodic and not stop.is_set():
            for handler in self._periodic:
                if loop.time() < due[handler.name]:
                    continue
                assert handler.every is not None
                try:
                    job_id, wait_ms = await self._store.schedule(
                        handler.queue, handler.name, int(handler.every * 1000)
                    )
                except ForeignWrite:
                    wait_ms = int(RETRY_S * 1000)  # that queue is damaged (the runner reports it)
                except StoreUnavailable as exc:
                    if self._state.redis.down(str(exc)):
                        self._log.warning("redis.unavailable", reason=str(exc), during="schedule")
                    wait_ms = int(RETRY_S * 1000)
                else:
                    if job_id is not None:
                        self._log.info(
                            "schedule.enqueued", type=handler.name, queue=handler.queue, job_id=job_id
                        )
                due[handler.name] = loop.time() + min(max(wait_ms, 1) / 1000, MAX_PAUSE_S)
            await sleep_or_stop(stop, max(0.001, min(due.values()) - loop.time()))
