"""Keeps the worker's leases and health record alive, and tells the worker how Redis is.

Every tick it pings Redis (readiness reads the answer), renews the lease of every job the
worker still runs, and every ``--health-check-interval`` rewrites the health record with a TTL
so a dead worker vanishes by itself, and at once when the worker's phase changes (a drain
begins: `botrix workers` shows it draining). It stops only after the runner has settled its
last job, so leases stay renewed through a graceful drain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from botrix import keys
from botrix.aio import sleep_or_stop
from botrix.config import Settings
from botrix.health import Phase, WorkerState
from botrix.logs import Logger
from botrix.store import ForeignWrite, Store, StoreUnavailable

#: Longest pause between two ticks: readiness should notice Redis coming and going quickly.
MAX_TICK_S = 2.0


class Heartbeat:
    """Lease renewal, Redis ping and the health record, on one timer."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        state: WorkerState,
        log: Logger,
        on_lost: Callable[[str, list[tuple[str, int, bool]], float], None],
    ) -> None:
        self._store = store
        self._settings = settings
        self._state = state
        self._log = log
        self._on_lost = on_lost
        self._tick = min(settings.lease_seconds / 3, settings.health_check_interval, MAX_TICK_S)
        self._health_ttl = max(int(settings.health_check_interval * 3), 3)
        self._recorded: Phase | None = None  # the phase the record in Redis shows
        self._legacy = 0  # entries last seen on the original daemon's job list
        self._shared_id = False  # another process writes this worker's health record too
        self._evicting: set[str] = set()  # the eviction policies last reported

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until ``stop``; then remove the health record."""
        self._state.heartbeat_running = True
        try:
            await self._loop(stop)
        finally:
            self._state.heartbeat_running = False
        await self._goodbye()

    async def _loop(self, stop: asyncio.Event) -> None:
        next_record = 0.0  # when the health record is due again (monotonic)
        while True:
            try:
                await self._beat(time.monotonic() >= next_record or self._state.phase != self._recorded)
            except StoreUnavailable as exc:
                if self._state.redis.mark_down(str(exc)):
                    self._log.warning("redis.unavailable", reason=str(exc), during="heartbeat")
            else:
                if time.monotonic() >= next_record:
                    next_record = time.monotonic() + self._settings.health_check_interval
            if await sleep_or_stop(stop, self._tick):
                return

    async def _beat(self, write_record: bool) -> None:
        failed: StoreUnavailable | None = None
        try:
            rtt, version = await self._store.ping()
        except StoreUnavailable as exc:
            if not self._settings.redis_cluster:
                raise  # one server: the renewals would only fail the same way, one by one
            failed = exc  # a cluster: the node that did not answer may not hold these queues
        else:
            link = self._state.redis
            if link.mark_up():
                self._log.info("redis.recovered")
            link.rtt_s, link.version = rtt, version
        for queue, held in self._state.held().items():
            sent = time.monotonic()
            try:
                lost = await self._store.renew(queue, held, self._settings.lease_ms, self._settings.worker_id)
            except ForeignWrite:
                # That queue's leases cannot be renewed, nor recovered by anyone, until its key
                # is repaired (the runner reports it); the other queues' must still be renewed,
                # or their jobs would be recovered and run twice while running here.
                continue
            except StoreUnavailable as exc:
                # The same for a queue whose node is down, in a cluster: the others' leases
                # must not wait for it.
                failed = failed or exc
                continue
            if lost:
                self._on_lost(queue, lost, sent)
        if failed is not None:
            raise failed
        if write_record:
            phase = self._state.phase
            await self._store.register_queues(self._settings.queues)
            replaced = await self._store.write_health(
                self._settings.worker_id, self._state.health_record(), self._health_ttl
            )
            self._check_id(replaced)
            self._recorded = phase
            await self._look_for_legacy_jobs()
            await self._check_eviction()

    def _check_id(self, replaced: Any) -> None:
        # The record this write replaced was another process's: not a predecessor's left behind
        # (only the first write can meet one), since this process wrote the record before. Two
        # workers under one id can settle and renew each other's jobs: the fencing tells leases
        # apart by worker id.
        if self._recorded is None or self._shared_id or not isinstance(replaced, dict):
            return
        other = replaced.get("instance")
        if other is not None and other != self._state.instance:
            self._shared_id = True
            self._log.error(
                "worker.id_shared",
                worker_id=self._settings.worker_id,
                reason="another running process uses this worker id (its health record was written "
                "in between): give each worker its own WORKER_ID, or leave it unset",
            )

    async def _check_eviction(self) -> None:
        # Under any policy but noeviction a full Redis deletes keys to make room: job records,
        # queues, leases, silently. Nothing botrix does can bring those jobs back, so the one
        # thing to do is say so, loudly, again whenever the setting changes.
        evicting = await self._store.eviction_policies() - {"noeviction"}
        if evicting and evicting != self._evicting:
            self._log.error(
                "redis.evicts_keys",
                maxmemory_policy=sorted(evicting),
                reason="with this maxmemory-policy a full Redis deletes keys, and jobs with them: "
                "set maxmemory-policy noeviction (docs/operations.md)",
            )
        self._evicting = evicting

    async def _look_for_legacy_jobs(self) -> None:
        # A producer still pushing where the original daemon read: those jobs would wait there
        # forever, unseen. Said again whenever the count changes.
        count = await self._store.legacy_backlog()
        if count and count != self._legacy:
            self._log.warning(
                "queue.legacy_jobs",
                key=keys.LEGACY_QUEUE,
                jobs=count,
                reason="the original Botrix daemon's job list: botrix runs jobs from "
                "botrix:{<queue>}:pending; point the producers there (docs/protocol.md)",
            )
        self._legacy = count

    async def _goodbye(self) -> None:
        self._state.phase = Phase.STOPPED
        try:
            await self._store.delete_health(self._settings.worker_id)
        except StoreUnavailable:
            self._log.info("worker.health_record_left", reason="redis unavailable; it expires by TTL")
