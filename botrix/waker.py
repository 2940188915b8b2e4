"""Wakes the idle runner the moment a job lands on any served queue, without polling.

Redis can only block on list pops, and a pop that lands in worker memory can lose the job, so
each served queue gets a watcher blocked in ``BLMOVE q q LEFT LEFT``: it returns as soon as the
list is non-empty and moves nothing. The runner then claims with its Lua script, in priority
order. Watchers only block while the runner is "armed" (idle with free slots), so a busy worker
sends no blocking commands at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from botrix.aio import Backoff
from botrix.health import RedisLink
from botrix.logs import Logger
from botrix.store import ForeignWrite, Store, StoreUnavailable


class Waker:
    """One blocking watcher per queue; calls ``on_work`` when a queue has an entry."""

    def __init__(
        self,
        store: Store,
        queues: tuple[str, ...],
        on_work: Callable[[], None],
        link: RedisLink,
        log: Logger,
    ) -> None:
        self._store = store
        self._queues = queues
        self._on_work = on_work
        self._link = link
        self._log = log
        self._armed = asyncio.Event()
        self._stopping = False
        # A queue the runner holds (a foreign-written key), an operator paused, or at its rate
        # limit is not watched: it cannot be claimed from, and its backlog would answer every
        # BLMOVE at once, waking the runner in a loop. Watched again once no reason is left.
        self._open = {queue: asyncio.Event() for queue in queues}
        self._closed: dict[str, set[str]] = {queue: set() for queue in queues}
        for event in self._open.values():
            event.set()

    def arm(self) -> None:
        """The runner is idle with free slots: start watching."""
        self._armed.set()

    def pause(self, queue: str, why: str) -> None:
        """Stop watching ``queue`` until :meth:`resume` for the same ``why``."""
        self._closed[queue].add(why)
        self._open[queue].clear()

    def resume(self, queue: str, why: str) -> None:
        """Watch ``queue`` again, unless another reason still stands."""
        self._closed[queue].discard(why)
        if not self._closed[queue]:
            self._open[queue].set()

    async def run(self, stop: asyncio.Event) -> None:
        """Watch every queue until ``stop`` is set."""
        watchers = [asyncio.create_task(self._watch(q), name=f"botrix-waker-{q}") for q in self._queues]
        try:
            await stop.wait()
        finally:
            # On Python 3.11 a cancel that lands as the client's read timeout fires can come out
            # as a timeout error, which the watcher rides out; the flag ends the loop regardless.
            self._stopping = True
            self._armed.set()
            for task in watchers:
                task.cancel()
            for task in watchers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _watch(self, queue: str) -> None:
        backoff = Backoff()
        while not self._stopping:
            await self._armed.wait()
            await self._open[queue].wait()
            try:
                has_entry = await self._store.wait_for_jobs(queue)
            except ForeignWrite:
                # Not an outage: let the runner look, which finds and reports the broken key.
                self._on_work()
                await asyncio.sleep(backoff.next())
                continue
            except StoreUnavailable as exc:
                if self._link.mark_down(str(exc)):
                    self._log.warning("redis.unavailable", reason=str(exc), during="wait")
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            if has_entry:
                self._armed.clear()
                self._on_work()
