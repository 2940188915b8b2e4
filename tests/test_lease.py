"""Leases: renewal keeps long jobs, expiry brings jobs back, stale acks are refused."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import redis.asyncio as aredis

from botrix import keys
from botrix.client import Client
from botrix.model import JobStatus, Outcome, Settlement
from botrix.store import Connection, Consumer, Store
from tests.conftest import WorkerProcess, running_worker
from tests.redisproc import RedisServer


async def test_ack_from_a_worker_that_lost_its_lease_is_refused(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    store = Store(Connection(redis_server.url))
    worker_a = Consumer("worker-a", lease_ms=50, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    worker_b = Consumer("worker-b", lease_ms=30_000, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    try:
        job_id = await client.enqueue("t.echo", {}, queue=queue)
        _, [first] = await store.exchange(queue, [], 1, worker_a, lane=0)
        await asyncio.sleep(0.2)  # let the 50 ms lease run out on the server's clock
        recovered = await store.recover(queue, grace_ms=0, max_retries=3, dead_cap=10)
        assert [(r.job_id, r.status) for r in recovered] == [(job_id, "queued")]
        _, [second] = await store.exchange(queue, [], 1, worker_b, lane=0)
        assert (second.attempt, second.delivery) == (2, 2)

        def done(claimed_delivery: int, result: bytes) -> Settlement:
            return Settlement(job_id, queue, claimed_delivery, Outcome.COMPLETED, result)

        assert await store.exchange(queue, [done(first.delivery, b'"stale"')], 0, worker_a, lane=0) == (
            {job_id},
            [],
        )
        assert await store.renew(queue, [(job_id, first.delivery)], 30_000) == [(job_id, first.delivery)]
        assert await store.exchange(queue, [done(second.delivery, b'"fresh"')], 0, worker_b, lane=0) == (
            set(),
            [],
        )
    finally:
        await store.aclose()
    info = await client.job(job_id)
    assert info.result == "fresh" and info.worker == "worker-b" and info.attempts == 2


async def _enqueue_many(client: Client, queue: str, n: int) -> None:
    for _ in range(n // 500):
        await asyncio.gather(*(client.enqueue("t.echo", {}, queue=queue) for _ in range(500)))


def _consumer(name: str) -> Consumer:
    return Consumer(name, lease_ms=30_000, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)


async def test_one_call_settles_more_jobs_than_lua_can_unpack(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """A worker with thousands of slots settles them in one call.

    The settle drops a batch's leases with one ZREM, in chunks: Lua's unpack stops near 8,000
    values.
    """
    n = 9_000
    await _enqueue_many(client, queue, n)
    store = Store(Connection(redis_server.url))
    worker = _consumer("worker-big")
    active = keys.queue_keys(queue).active
    try:
        async with aredis.Redis.from_url(redis_server.url) as r:
            _, claimed = await store.exchange(queue, [], n, worker, lane=0)
            assert len(claimed) == n
            assert await r.zcard(active) == n
            done = [Settlement(c.job_id, queue, c.delivery, Outcome.COMPLETED, b"null") for c in claimed]
            assert await store.exchange(queue, done, 0, worker, lane=0) == (set(), [])
            assert await r.zcard(active) == 0
    finally:
        await store.aclose()
    assert {(await client.job(c.job_id)).status for c in claimed[::500]} == {JobStatus.COMPLETED}


async def test_a_job_requeued_and_claimed_again_in_one_call_keeps_its_new_lease(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """The settle half of a call drops leases before its claim half writes new ones."""
    n = 50
    await _enqueue_many(client, queue, 500)
    store = Store(Connection(redis_server.url))
    worker = _consumer("worker-requeue")
    try:
        _, claimed = await store.exchange(queue, [], n, worker, lane=0)
        back = [Settlement(c.job_id, queue, c.delivery, Outcome.REQUEUE, attempt=c.attempt) for c in claimed]
        _, again = await store.exchange(queue, back, n, worker, lane=0)
        active = keys.queue_keys(queue).active
        async with aredis.Redis.from_url(redis_server.url) as r:
            leases = [await r.zscore(active, c.job_id) for c in claimed]
            count = await r.zcard(active)
    finally:
        await store.aclose()
    assert {c.job_id for c in again} == {c.job_id for c in claimed}
    assert count == n and None not in leases
    assert {(c.attempt, c.delivery) for c in again} == {(1, 2)}


async def test_recovery_dead_letters_when_attempts_are_used_up(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    store = Store(Connection(redis_server.url))
    try:
        job_id = await client.enqueue("t.echo", {}, queue=queue, max_retries=0)
        worker_a = Consumer("worker-a", lease_ms=50, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
        await store.exchange(queue, [], 1, worker_a, lane=0)
        await asyncio.sleep(0.2)
        recovered = await store.recover(queue, grace_ms=0, max_retries=3, dead_cap=10)
    finally:
        await store.aclose()
    assert [(r.job_id, r.status) for r in recovered] == [(job_id, "dead")]
    info = await client.job(job_id)
    assert info.error is not None and info.error["type"] == "LeaseExpired"
    assert "worker-a" in info.error["message"]


async def test_job_longer_than_its_lease_keeps_it(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue, lease_seconds=1.0):
        job_id = await client.enqueue("t.sleep", {"seconds": 3}, queue=queue)
        info = await client.wait(job_id, timeout=30)
    assert info.result == "slept"
    assert info.attempts == 1


async def test_blocked_worker_loses_the_job_and_its_late_ack_is_refused(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    count_key = f"runs:{queue}"
    stuck = spawn(redis_server.url, queue)
    await stuck.wait_for("worker.started")
    job_id = await client.enqueue(
        "t.block_once", {"seconds": 8, "count_url": redis_server.url, "count_key": count_key}, queue=queue
    )
    await stuck.wait_for("job.started")
    rescuer = spawn(redis_server.url, queue)
    info = await client.wait(job_id, timeout=60)
    assert info.result == 2 and info.attempts == 2
    await stuck.wait_for("job.ack_refused", timeout=60)
    after = await client.job(job_id)
    assert after.result == 2
    async with aredis.Redis.from_url(redis_server.url) as r:
        assert await r.hget(count_key, job_id) == b"2"
    for proc in (stuck, rescuer):
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
