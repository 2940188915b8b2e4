"""Periodic handlers (``@handler(..., every=S)``): each period's run is enqueued once across the
workers, runs never pile up behind a missing consumer, and a bad declaration is refused."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aredis

from botrix import JobContext, keys
from botrix.app import Worker
from botrix.client import Client
from botrix.model import JobStatus
from botrix.registry import Registry
from botrix.store import Store
from tests import periodic_app
from tests.conftest import WorkerProcess, eventually, settings_for
from tests.redisproc import RedisServer


def ticking(url: str, queue: str) -> Registry:
    """A registry with one periodic handler that counts its runs by slot in Redis."""
    registry = Registry()

    @registry.handler("t.tick", every=1, queue=queue)
    async def tick(ctx: JobContext, payload: dict[str, Any]) -> int:
        async with aredis.Redis.from_url(url) as r:
            return int(await r.hincrby(f"botrix:test:{queue}:ticks", str(payload["slot_ms"]), 1))

    @registry.handler("t.idle")
    async def idle(ctx: JobContext, payload: Any) -> None:
        return None

    return registry


def idling() -> Registry:
    """A registry that runs the store-level runs of ``t.idle`` and schedules nothing itself."""
    registry = Registry()

    @registry.handler("t.idle")
    async def idle(ctx: JobContext, payload: Any) -> None:
        return None

    return registry


@contextlib.asynccontextmanager
async def workers(url: str, registry: Registry, *queues: str) -> AsyncIterator[list[Worker]]:
    started = [Worker(settings_for(url, q, app=()), registry) for q in queues]
    tasks = [asyncio.create_task(w.run()) for w in started]
    try:
        yield started
    finally:
        for w in started:
            w.request_stop("test over")
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)


async def test_each_period_runs_once_however_many_workers(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    ticks = f"botrix:test:{queue}:ticks"
    async with aredis.Redis.from_url(redis_server.url) as r:

        async def three_slots() -> bool:
            return len(await r.hgetall(ticks)) >= 3

        async with workers(redis_server.url, ticking(redis_server.url, queue), queue, queue, queue):
            await eventually(three_slots, what="three periods run")
        counts = await r.hgetall(ticks)
    # Every slot ran exactly once, though three workers each tried to enqueue it.
    assert set(counts.values()) == {b"1"}
    slots = sorted(int(s) for s in counts)
    assert all(s % 1000 == 0 for s in slots) and len(set(slots)) == len(slots)
    info = await client.job(f"every:t.tick:{slots[0]}", queue)
    assert info.status is JobStatus.COMPLETED and info.payload == {"slot_ms": slots[0]}


async def test_a_slot_is_enqueued_once_even_after_its_run_ended(
    redis_server: RedisServer, client: Client, store: Store, queue: str
) -> None:
    """A worker that looks again within the same period (an early timer, another worker's
    clock) gets nothing, even once that period's run is over. The period here is ten years, so
    the whole test is one slot."""
    decade_ms = 10 * 365 * 86400 * 1000
    first, wait_ms, blocked = await store.schedule(queue, "t.idle", decade_ms)
    assert first is not None and first.startswith("every:t.idle:") and 0 < wait_ms <= decade_ms
    assert not blocked
    async with workers(redis_server.url, idling(), queue):
        assert (await client.wait(first, timeout=30, queue=queue)).status is JobStatus.COMPLETED
    again, _, blocked = await store.schedule(queue, "t.idle", decade_ms)
    assert again is None and not blocked
    assert (await client.depth(queue))["pending"] == 0


async def test_runs_do_not_pile_up_while_nobody_consumes_them(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """The handler's queue has no consumer: one run waits there, and the next periods are not
    enqueued behind it (a poller down for a night would otherwise find thousands of runs)."""
    elsewhere = f"{queue}-other"
    async with workers(redis_server.url, ticking(redis_server.url, queue), elsewhere):
        await eventually(lambda: _pending(client, queue), what="the first run enqueued")
        await asyncio.sleep(2.5)  # two more periods pass; a pile-up would show, not a hang
        assert (await client.depth(queue))["pending"] == 1


async def _pending(client: Client, queue: str) -> bool:
    return (await client.depth(queue))["pending"] > 0


async def test_a_damaged_schedules_key_is_reported_and_its_repair_noticed(
    redis_server: RedisServer, spawn: Callable[..., WorkerProcess]
) -> None:
    """Something overwrote the key that remembers the last period: the worker says so (once,
    naming it), keeps trying with a back-off, and runs the handler again once it is repaired."""
    k = keys.queue_keys(periodic_app.QUEUE)
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.delete(k.schedules, k.pending)
        await r.set(k.schedules, "not a hash")
        worker = spawn(redis_server.url, f"{periodic_app.QUEUE}-unused", "--app", "tests.periodic_app")
        await worker.wait_for("schedule.damaged")
        [damaged] = [e for e in worker.events() if e.get("event") == "schedule.damaged"]
        assert damaged["type"] == "t.every_second" and damaged["queue"] == periodic_app.QUEUE
        assert f"{k.schedules} is not a hash" in damaged["reason"]
        await r.delete(k.schedules)
        await worker.wait_for("schedule.repaired", timeout=60)
        await worker.wait_for("schedule.enqueued")
        assert await r.llen(k.pending) == 1
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0
        await r.delete(k.schedules, k.pending)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": 0}, "every= must be from 1"),
        ({"every": math.nan}, "every= must be from 1"),
        ({"queue": "q"}, "it needs every="),
        ({"every": 5, "queue": "no spaces"}, "queue name must be"),
    ],
)
def test_a_bad_periodic_declaration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    async def noop(ctx: JobContext, payload: Any) -> None:
        return None

    with pytest.raises(ValueError, match=message):
        Registry().add("t.noop", noop, **kwargs)
    with pytest.raises(ValueError, match="job id must be"):
        Registry().add("a type with spaces", noop, every=5)
