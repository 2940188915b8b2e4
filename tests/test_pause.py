"""botrix pause / resume: workers stop claiming from a queue and start again, nothing lost."""

from __future__ import annotations

import asyncio

import redis.asyncio as aredis

from botrix import keys
from botrix.client import Client
from botrix.model import JobStatus
from tests.conftest import eventually, running_worker
from tests.redisproc import RedisServer
from tests.test_http import get, samples


async def _calls(r: aredis.Redis) -> int:
    """Scripts run and waker BLMOVEs: what a worker spinning on the paused backlog would send."""
    stats = await r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "blmove"))


async def test_a_paused_queue_keeps_its_jobs_while_the_others_run(own_redis: RedisServer, queue: str) -> None:
    """The higher-priority queue is paused: its jobs wait, the lower queue's run, a job that
    was running finishes, the worker does not spin on the backlog, and after the resume every
    waiting job runs. (A server of its own: it counts the calls of the whole server.)"""
    async with Client.from_url(own_redis.url) as client:
        await _paused_queue(own_redis, client, queue)


async def _paused_queue(redis_server: RedisServer, client: Client, queue: str) -> None:
    hi, lo = f"{queue}-hi", f"{queue}-lo"
    async with running_worker(
        redis_server.url, hi, queues=(hi, lo), http_port=0, http_host="127.0.0.1"
    ) as worker:
        port = await eventually(lambda: worker.http and worker.http.port, what="http port")
        base = f"http://127.0.0.1:{port}"
        running = await client.enqueue("t.sleep", {"seconds": 0.5}, queue=hi)
        await eventually(lambda: _status(client, running, JobStatus.RUNNING), what="a job running")
        await client.pause(hi)
        assert await client.is_paused(hi)
        waiting = [await client.enqueue("t.echo", i, queue=hi) for i in range(5)]
        served = [await client.enqueue("t.echo", i, queue=lo) for i in range(5)]
        for job_id in [running, *served]:
            assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED

        async def paused_in_health() -> bool:
            _, body, _ = await get(base, "/health")
            return bool(body["checks"]["paused_queues"] == [hi])

        await eventually(paused_in_health, what="/health naming the paused queue")
        assert samples((await get(base, "/metrics"))[1])[("botrix_queue_paused", (("queue", hi),))] == 1
        assert (await get(base, "/ready"))[0] == 200  # a pause is an operator's choice, not a fault
        async with aredis.Redis.from_url(redis_server.url) as r:
            before = await _calls(r)
            await asyncio.sleep(1.0)
            # A look a second (a claim), not a wake-up each time the backlog answers the waker.
            assert await _calls(r) - before < 50
        for job_id in waiting:
            assert (await client.job(job_id, hi)).status is JobStatus.QUEUED

        await client.resume(hi)
        for job_id in waiting:
            assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
        await eventually(lambda: _not_paused(base), what="/health without the paused queue")
    assert not await client.is_paused(hi)


async def _status(client: Client, job_id: str, status: JobStatus) -> bool:
    return (await client.job(job_id)).status is status


async def _not_paused(base: str) -> bool:
    _, body, _ = await get(base, "/health")
    return bool(body["checks"]["paused_queues"] == [])


async def test_pausing_a_damaged_queue_does_not_pass_for_a_repair(own_redis: RedisServer, queue: str) -> None:
    """A queue whose sequence something overwrote is held; pausing it must not make the next
    claim look like a repair (the pause was answered before the sequence was checked), nor may
    a pause flag of the wrong type pass for one: /ready stays 503 queue_damaged throughout.
    (A server of its own: it counts the failed script calls of the whole server.)"""
    async with Client.from_url(own_redis.url) as client:
        await _paused_damaged_queue(own_redis, client, queue)


async def _paused_damaged_queue(redis_server: RedisServer, client: Client, queue: str) -> None:
    k = keys.queue_keys(queue)
    await client.enqueue("t.echo", {}, queue=queue)
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.set(k.seq, "not-a-number")
        async with running_worker(redis_server.url, queue, http_port=0, http_host="127.0.0.1") as worker:
            port = await eventually(lambda: worker.http and worker.http.port, what="http port")
            base = f"http://127.0.0.1:{port}"

            async def damaged() -> bool:
                status, body, _ = await get(base, "/ready")
                return status == 503 and body["reason"] == "queue_damaged"

            await eventually(damaged, what="the queue held as damaged")
            await client.pause(queue)
            before = await _failed_scripts(r)
            await eventually(lambda: _more_failed(r, before), timeout=60, what="the held queue tried again")
            assert await damaged()
            await client.resume(queue)
            await r.delete(k.seq)
            await r.sadd(k.paused, "a set")  # now the flag is garbled instead
            before = await _failed_scripts(r)
            await eventually(lambda: _more_failed(r, before), timeout=60, what="the held queue tried again")

            async def flag_named() -> bool:
                # The failed call counts in Redis before the worker has read its reply.
                status, body, _ = await get(base, "/ready")
                return status == 503 and "is not a pause flag" in body.get("detail", {}).get(queue, "")

            await eventually(flag_named, timeout=60, what="/ready naming the garbled pause flag")
            await r.delete(k.paused)
            await eventually(lambda: _ready(base), timeout=60, what="ready after the repair")


async def _failed_scripts(r: aredis.Redis) -> int:
    """Script calls that failed: here, the held queue's claims (its other scripts succeed)."""
    return int((await r.info("commandstats")).get("cmdstat_evalsha", {}).get("failed_calls", 0))


async def _more_failed(r: aredis.Redis, before: int) -> bool:
    return await _failed_scripts(r) > before


async def _ready(base: str) -> bool:
    return (await get(base, "/ready"))[0] == 200
