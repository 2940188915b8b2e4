"""Redis stopped, killed and restarted under running workers: they wait, reconnect by
themselves, write back what finished meanwhile, and go on consuming."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aredis

from botrix.client import Client
from botrix.model import JobStatus
from botrix.store import Connection, Consumer, Store, StoreUnavailable
from tests.conftest import WorkerProcess
from tests.faultproxy import FaultProxy
from tests.redisproc import RedisServer


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_worker_rides_out_a_redis_restart(
    own_redis: RedisServer, queue: str, spawn: Callable[..., WorkerProcess], how: int
) -> None:
    worker = spawn(own_redis.url, queue, "--lease-seconds", "30")
    async with Client.from_url(own_redis.url) as client:
        before = await client.enqueue("t.echo", {"n": 1}, queue=queue)
        assert (await client.wait(before, timeout=30)).status is JobStatus.COMPLETED
        in_flight = await client.enqueue("t.sleep", {"seconds": 1.5}, queue=queue)
        await worker.wait_for("job.started", count=2)

    own_redis.stop(how)
    await worker.wait_for("redis.unavailable")
    # The job finishes while Redis is down; its result must be written once Redis is back.
    await worker.wait_for("job.started", count=2)
    own_redis.start()
    await worker.wait_for("redis.recovered")

    async with Client.from_url(own_redis.url) as client:
        info = await client.wait(in_flight, timeout=60)
        assert info.status is JobStatus.COMPLETED and info.result == "slept"
        after = await client.enqueue("t.echo", {"n": 2}, queue=queue)
        assert (await client.wait(after, timeout=60)).status is JobStatus.COMPLETED
    assert worker.proc.poll() is None
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_worker_started_before_redis_waits_for_it(
    own_redis: RedisServer, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    own_redis.stop()
    worker = spawn(own_redis.url, queue)
    await worker.wait_for("redis.unavailable")
    own_redis.start()
    async with Client.from_url(own_redis.url) as client:
        job_id = await client.enqueue("t.echo", {}, queue=queue)
        assert (await client.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_after_a_failover_the_worker_follows_its_url_to_the_new_primary(
    own_redis: RedisServer, queue: str, tmp_path: Path, spawn: Callable[..., WorkerProcess]
) -> None:
    """The URL's name (DNS, a Service, here a proxy) now leads to the new primary, and the old
    one stays up as its replica: every connection made before reaches a server that answers
    writes with READONLY. The worker must dial again, not back off on them for good."""
    new = RedisServer(tmp_path / "new")
    new.start()
    try:
        async with FaultProxy(own_redis.port) as proxy:
            worker = spawn(proxy.url(), queue, "--lease-seconds", "30")
            async with Client.from_url(own_redis.url) as client:
                before = await client.enqueue("t.echo", {"n": 1}, queue=queue)
                assert (await client.wait(before, timeout=30)).status is JobStatus.COMPLETED
            proxy.upstream = ("127.0.0.1", new.port)  # new connections only
            old = aredis.Redis(port=own_redis.port)
            await old.replicaof("127.0.0.1", str(new.port))
            await old.aclose()
            async with Client.from_url(new.url) as client:
                after = await client.enqueue("t.echo", {"n": 2}, queue=queue)
                assert (await client.wait(after, timeout=60)).status is JobStatus.COMPLETED
            assert worker.proc.poll() is None
            worker.signal(signal.SIGTERM)
            assert await worker.wait() == 0
    finally:
        new.stop()


async def test_a_call_that_never_reached_redis_says_so(own_redis: RedisServer, queue: str) -> None:
    """A lane's call made while no connection can be had is ``unsent``: the claim in it leased
    nothing, so the worker does not ask Redis what it leased (Runner._exchange). One that went
    out and lost its reply is not."""
    consumer = Consumer("w-unsent", lease_ms=30_000, max_envelope_bytes=1 << 20, result_ttl=60, dead_cap=10)
    own_redis.stop()
    store = Store(Connection(own_redis.url))
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await store.exchange(queue, [], 1, consumer, lane=0)
        assert refused.value.unsent
    finally:
        await store.aclose()
    own_redis.start()
    async with FaultProxy(own_redis.port) as proxy:
        store = Store(Connection(proxy.url()))
        try:
            await store.exchange(queue, [], 1, consumer, lane=0)  # connected, and the script loaded
            stalled = proxy.stall_after(b"EVALSHA")
            call = asyncio.create_task(store.exchange(queue, [], 1, consumer, lane=0))
            await stalled.wait()
            await proxy.cut()
            with pytest.raises(StoreUnavailable) as lost:
                await call
            assert not lost.value.unsent
        finally:
            await store.aclose()


async def test_a_worker_stopped_while_redis_was_never_there_owes_nothing(
    own_redis: RedisServer, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """Claims that could not even connect leased nothing: the drain neither waits to ask Redis
    about them nor reports them as unknown (it did both, and every lease period logged
    job.orphans_unknown, for a worker whose Redis was down or refused its password)."""
    own_redis.stop()
    worker = spawn(own_redis.url, queue, "--concurrency", "1")
    await worker.wait_for("redis.unavailable")
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    names = worker.names()
    assert "job.orphans_unknown" not in names and "worker.draining" not in names, names
