"""A key of one queue that something other than botrix wrote: that queue waits for a repair,
visibly, and the worker's other queues go on as if nothing happened."""

from __future__ import annotations

import uuid

import redis.asyncio as aredis

from botrix import keys
from botrix.client import Client
from botrix.model import JobStatus
from botrix.store import Consumer, Store
from tests.conftest import eventually
from tests.redisproc import RedisServer
from tests.test_http import get, http_worker, samples


async def _damaged_gauge(base: str, queue: str) -> float:
    _, text, _ = await get(base, "/metrics")
    return samples(text)[("botrix_queue_damaged", (("queue", queue),))]


async def test_a_damaged_queue_waits_for_its_repair_while_the_others_run(
    redis_server: RedisServer, client: Client, store: Store
) -> None:
    """XADDs over the higher-priority queue's scheduled and dead sets break its claims, its
    lease recovery and its promotion. The lower queue's jobs still run: a pending one, a
    delayed one (promotion) and one whose lease expired (recovery); /ready says which queue
    is damaged and why, and the metric names it. Once the keys are removed, the queue runs
    again and the worker is ready."""
    hi, lo = f"t-hi-{uuid.uuid4().hex[:8]}", f"t-lo-{uuid.uuid4().hex[:8]}"
    gone = Consumer("gone-worker", lease_ms=1, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    expired = await client.enqueue("t.echo", "expired", queue=lo)
    _, [claimed] = await store.exchange(lo, [], 1, gone, lane=0)  # its 1 ms lease runs out
    assert claimed.job_id == expired
    delayed = await client.enqueue("t.echo", "delayed", queue=lo, delay=0.5)
    pending = await client.enqueue("t.echo", "pending", queue=lo)
    k = keys.queue_keys(hi)
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.xadd(k.scheduled, {"oops": "1"})
        await r.xadd(k.dead, {"oops": "1"})
        async with http_worker(redis_server.url, hi, queues=(hi, lo)) as (_, base):
            for job_id in (pending, delayed, expired):
                assert (await client.wait(job_id, timeout=60, queue=lo)).status is JobStatus.COMPLETED

            async def damaged() -> bool:
                status, body, _ = await get(base, "/ready")
                return status == 503 and body["reason"] == "queue_damaged" and list(body["detail"]) == [hi]

            await eventually(damaged, what="/ready naming the damaged queue")
            _, body, _ = await get(base, "/ready")
            assert body["detail"][hi].startswith("ResponseError: WRONGTYPE botrix:{" + hi + "}:")
            assert "only botrix may write its keys" in body["detail"][hi]
            assert (await get(base, "/health"))[1]["checks"]["damaged_queues"] == body["detail"]
            assert (await get(base, "/live"))[0] == 200
            assert await _damaged_gauge(base, hi) == 1 and await _damaged_gauge(base, lo) == 0

            await r.delete(k.scheduled, k.dead)
            later = await client.enqueue("t.echo", "after the repair", queue=hi)
            assert (await client.wait(later, timeout=60, queue=hi)).status is JobStatus.COMPLETED
            await eventually(lambda: _ready(base), what="ready after the repair")
            assert await _damaged_gauge(base, hi) == 0


async def _ready(base: str) -> bool:
    return (await get(base, "/ready"))[0] == 200


async def test_a_damaged_queue_does_not_stop_the_renewal_of_the_others(
    redis_server: RedisServer, client: Client
) -> None:
    """The active set of a queue with a job running is replaced (DEL, then XADD): its leases
    cannot be renewed any more, but the other queue's still are, so its long job is neither
    recovered nor run a second time while it runs here."""
    first, second = f"t-a-{uuid.uuid4().hex[:8]}", f"t-b-{uuid.uuid4().hex[:8]}"
    async with (
        aredis.Redis.from_url(redis_server.url) as r,
        http_worker(redis_server.url, first, queues=(first, second), lease_seconds=3.0) as _,
    ):
        held = await client.enqueue("t.sleep", {"seconds": 30}, queue=first)
        await eventually(lambda: _status(client, held, first, JobStatus.RUNNING), what="first running")
        long = await client.enqueue("t.sleep", {"seconds": 8}, queue=second)
        await eventually(lambda: _status(client, long, second, JobStatus.RUNNING), what="second running")
        active = keys.queue_keys(first).active
        await r.delete(active)
        await r.xadd(active, {"oops": "1"})
        info = await client.wait(long, timeout=60, queue=second)
        assert (info.status, info.attempts, info.result) == (JobStatus.COMPLETED, 1, "slept")
        await r.delete(active)


async def _status(client: Client, job_id: str, queue: str, status: JobStatus) -> bool:
    return (await client.job(job_id, queue)).status is status
