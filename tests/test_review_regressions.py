"""Regressions for problems an independent review found: each test is one scenario that used
to lose a job, run it twice, loop forever or crash the worker."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
import redis.asyncio as aredis

from botrix import JobContext, handler, keys
from botrix.client import Client
from botrix.model import JobStatus
from botrix.redis_url import redact_url
from botrix.store import Connection, Consumer, Store
from tests.conftest import WorkerProcess, eventually, running_worker
from tests.redisproc import RedisServer
from tests.test_processes import run_counts


async def test_reused_id_of_a_dead_job_is_not_touched_by_dead_set_operations(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue, max_retries=0):
        await client.enqueue("t.fail", {}, queue=queue, job_id="reused-1")
        assert (await client.wait("reused-1", timeout=30)).status is JobStatus.DEAD
        await client.enqueue("t.sleep", {"seconds": 1}, queue=queue, job_id="reused-1")
        await eventually(lambda: _running(client, "reused-1"), what="running again")
        assert await client.purge_dead(queue) == 0
        assert await client.retry_dead(queue) == []
        info = await client.wait("reused-1", timeout=30)
    assert info.status is JobStatus.COMPLETED and info.result == "slept"


async def _running(client: Client, job_id: str) -> bool:
    return (await client.job(job_id)).status is JobStatus.RUNNING


@pytest.mark.parametrize("job_type", ["t.self_cancel", "t.sys_exit"])
async def test_handler_raising_cancelled_or_base_exception_is_a_failed_attempt(
    redis_server: RedisServer, client: Client, queue: str, job_type: str
) -> None:
    async with running_worker(redis_server.url, queue, max_retries=2) as worker:
        job_id = await client.enqueue(job_type, {}, queue=queue)
        info = await client.wait(job_id, timeout=30)
        assert worker.state.in_flight == {}
    assert info.status is JobStatus.DEAD
    assert info.attempts == 3


async def test_recovery_honours_the_handlers_max_retries(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    body = {"count_url": redis_server.url, "count_key": f"runs:{queue}"}
    job_id = await client.enqueue("t.exit_no_retry", body, queue=queue)
    worker = spawn(redis_server.url, queue)
    assert await worker.wait() == 17
    rescuer = spawn(redis_server.url, queue)
    info = await eventually(lambda: _dead(client, job_id), what="dead after one attempt")
    assert info.attempts == 1 and info.error is not None and info.error["type"] == "LeaseExpired"
    assert await run_counts(redis_server.url, f"runs:{queue}") == {job_id: 1}
    rescuer.signal(signal.SIGTERM)
    assert await rescuer.wait() == 0


async def _dead(client: Client, job_id: str) -> object:
    info = await client.job(job_id)
    return info if info.status is JobStatus.DEAD else None


@pytest.mark.parametrize("value", [b"NaN", b"1e999", b"-5", b'"soon"'])
async def test_strange_enqueued_at_does_not_break_listings(
    redis_server: RedisServer, client: Client, queue: str, value: bytes
) -> None:
    raw = b'{"id": "odd-time", "type": "no.such.type", "enqueued_at": ' + value + b"}"
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.rpush(keys.queue_keys(queue).pending, raw)
    async with running_worker(redis_server.url, queue):
        info = await client.wait("odd-time", timeout=30, queue=queue)
    assert info.status is JobStatus.DEAD
    assert info.enqueued_at_ms is not None and info.enqueued_at_ms > 1_000_000_000_000
    assert [d.id for d in await client.dead(queue)] == ["odd-time"]


async def test_worker_backs_off_on_redis_errors_instead_of_crashing(
    own_redis: RedisServer, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """OOM under noeviction (and READONLY, BUSY, LOADING) are "not now", not a crash."""
    worker = spawn(own_redis.url, queue)
    await worker.wait_for("worker.started")
    async with aredis.Redis.from_url(own_redis.url) as r, Client.from_url(own_redis.url) as client:
        job_id = await client.enqueue("t.echo", {}, queue=queue)
        assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
        await r.config_set("maxmemory", 1)
        await worker.wait_for("redis.unavailable")
        assert worker.proc.poll() is None
        await r.config_set("maxmemory", 0)
        job_id = await client.enqueue("t.echo", {}, queue=queue)
        assert (await client.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    reason = next(e["reason"] for e in worker.events() if e.get("event") == "redis.unavailable")
    assert "maxmemory" in reason


def test_password_in_a_query_parameter_is_redacted() -> None:
    shown = redact_url("redis://host:6379/0?password=hunter2&db=1")
    assert "hunter2" not in shown and "password=***" in shown


async def test_progress_from_an_attempt_that_lost_its_job_is_not_written(
    client: Client, queue: str, store: Store
) -> None:
    job_id = await client.enqueue("t.echo", {}, queue=queue)
    consumer = Consumer("w", lease_ms=30_000, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    _, [claimed], _, _, _ = await store.exchange(queue, [], 1, consumer, lane=0)
    assert await store.publish_progress(queue, job_id, claimed.delivery, "w", b'{"step": 1}')
    assert not await store.publish_progress(queue, job_id, claimed.delivery + 1, "w", b'{"step": 2}')
    assert not await store.publish_progress(queue, job_id, claimed.delivery, "other", b'{"step": 3}')
    assert not await store.publish_progress(queue, "no-such-job", 1, "w", b"1")
    assert await store.job_record(queue, "no-such-job") is None
    assert (await client.job(job_id)).progress == {"step": 1}


async def test_a_flood_of_duplicates_is_drained_in_bounded_steps(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    job_id = await client.enqueue("t.sleep", {"seconds": 0.5}, queue=queue, job_id="flooded")
    async with running_worker(redis_server.url, queue):
        await eventually(lambda: _running(client, job_id), what="running")
        async with aredis.Redis.from_url(redis_server.url) as r:
            await r.rpush(keys.queue_keys(queue).pending, *([b'{"id": "flooded", "type": "t.echo"}'] * 5000))
        other = await client.enqueue("t.echo", {}, queue=queue)
        assert (await client.wait(other, timeout=60)).status is JobStatus.COMPLETED
        assert (await client.wait(job_id, timeout=60)).attempts == 1
    assert (await client.depth(queue))["pending"] == 0


_released: dict[int, asyncio.Event] = {}
_fate: dict[int, str] = {}


@handler("t.hold_until_released")
async def hold(ctx: JobContext, payload: object) -> int:
    release = _released.setdefault(ctx.attempt, asyncio.Event())
    _fate[ctx.attempt] = "running"
    try:
        await release.wait()
    except asyncio.CancelledError:
        _fate[ctx.attempt] = "cancelled"
        raise
    _fate[ctx.attempt] = "finished"
    return ctx.attempt


async def test_worker_that_reclaims_its_own_lost_job_stops_the_old_attempt(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    _released.clear()
    _fate.clear()
    await client.enqueue("t.hold_until_released", {}, queue=queue, job_id="reclaimed", max_retries=5)
    async with running_worker(redis_server.url, queue, concurrency=3, lease_seconds=30) as worker:
        await eventually(lambda: _fate.get(1) == "running", what="attempt 1 running")
        # Another worker's recoverer takes the job back, as after a network split.
        store = Store(Connection(redis_server.url))
        async with aredis.Redis.from_url(redis_server.url) as r:
            await r.zadd(keys.queue_keys(queue).active, {"reclaimed": 0})
        assert [j.status for j in await store.recover(queue, 0, 5, 100)] == ["queued"]
        await store.aclose()
        await eventually(lambda: _fate.get(2) == "running", what="attempt 2 running")
        await eventually(lambda: _fate.get(1) == "cancelled", what="attempt 1 cancelled")
        async with aredis.Redis.from_url(redis_server.url) as r:
            delivery = await r.hget(keys.queue_keys(queue).job("reclaimed"), "delivery")
        assert delivery is not None
        assert [e.delivery for e in worker.state.in_flight.values()] == [int(delivery)]
        _released[2].set()
        info = await client.wait("reclaimed", timeout=30)
    assert info.result == 2 and info.attempts == 2
    assert 3 not in _fate
