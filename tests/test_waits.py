"""Client.wait at scale and under faults: every wait of a client shares one subscription."""

from __future__ import annotations

import asyncio
import signal

import pytest
import redis.asyncio as aredis

from botrix import keys
from botrix.client import Client
from botrix.model import JobStatus
from botrix.store import Connection, Store, StoreUnavailable
from tests.conftest import eventually, running_worker
from tests.faultproxy import FaultProxy
from tests.redisproc import RedisServer


async def _subscribers(admin: aredis.Redis, queue: str) -> int:
    channel = keys.queue_keys(queue).events
    [(_, count)] = await admin.pubsub_numsub(channel)
    return int(count)


async def test_many_waits_share_one_subscription_and_starve_no_other_call(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """150 waits at once on a client whose pool holds 100 connections: each wait used to hold
    a pub/sub connection of its own, so the pool ran dry and every other call of the client
    stalled, then failed with "No connection available"."""
    ids = [await client.enqueue("t.echo", i, queue=queue) for i in range(150)]
    waits = [asyncio.create_task(client.wait(job_id, timeout=120, queue=queue)) for job_id in ids]
    async with aredis.Redis(port=redis_server.port) as admin:
        await eventually(lambda: _subscribers(admin, queue), what="the waits' subscription")
        assert await client.depth(queue) == {"pending": 150, "active": 0, "scheduled": 0, "dead": 0}
        assert await _subscribers(admin, queue) == 1
        assert not any(w.done() for w in waits)
        async with running_worker(redis_server.url, queue, concurrency=20):
            done = await asyncio.gather(*waits)
        assert [info.status for info in done] == [JobStatus.COMPLETED] * 150
        assert [info.result["echo"] for info in done] == list(range(150))
        # With no wait left the subscription goes (after LINGER_S); the next wait opens one.
        await eventually(lambda: _no_subscriber(admin, queue), what="the idle subscription closed")
        assert (await client.wait(ids[0], timeout=30, queue=queue)).status is JobStatus.COMPLETED


async def _no_subscriber(admin: aredis.Redis, queue: str) -> bool:
    return await _subscribers(admin, queue) == 0


async def test_waits_on_several_queues_share_the_subscription_connection(
    own_redis: RedisServer, queue: str
) -> None:
    # A server of its own: it counts the subscribers of the whole server.
    other = f"{queue}-b"
    async with Client.from_url(own_redis.url) as client, aredis.Redis(port=own_redis.port) as admin:
        first = await client.enqueue("t.echo", 1, queue=queue)
        second = await client.enqueue("t.echo", 2, queue=other)
        waits = [
            asyncio.create_task(client.wait(first, timeout=60, queue=queue)),
            asyncio.create_task(client.wait(second, timeout=60, queue=other)),
        ]
        await eventually(lambda: _both_subscribed(admin, queue, other), what="both subscriptions")
        pubsub_clients = [c for c in await admin.client_list() if int(c["sub"]) > 0]
        assert len(pubsub_clients) == 1 and int(pubsub_clients[0]["sub"]) == 2
        async with running_worker(own_redis.url, queue), running_worker(own_redis.url, other):
            assert [i.result["echo"] for i in await asyncio.gather(*waits)] == [1, 2]


async def _both_subscribed(admin: aredis.Redis, *queues: str) -> bool:
    return all([await _subscribers(admin, q) == 1 for q in queues])


@pytest.mark.chaos
async def test_a_redis_restart_fails_the_waits_in_progress_and_the_next_wait_works(
    own_redis: RedisServer, queue: str
) -> None:
    """A wait whose subscription is cut could miss the job's end: it fails with
    StoreUnavailable (as any call does while Redis is gone), never hangs to its timeout; once
    Redis is back, a new wait subscribes again and sees the job end."""
    async with Client.from_url(own_redis.url) as client:
        ids = [await client.enqueue("t.echo", i, queue=queue) for i in range(3)]
        waits = [asyncio.create_task(client.wait(job_id, timeout=300, queue=queue)) for job_id in ids]
        async with aredis.Redis(port=own_redis.port) as admin:
            await eventually(lambda: _subscribers(admin, queue), what="the waits' subscription")
        own_redis.stop(signal.SIGKILL)
        async with asyncio.timeout(60):  # a guard against a hang only
            outcomes = await asyncio.gather(*waits, return_exceptions=True)
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        own_redis.start()
        job_id = await client.enqueue("t.echo", "after", queue=queue)
        async with running_worker(own_redis.url, queue):
            assert (await client.wait(job_id, timeout=60, queue=queue)).result["echo"] == "after"


@pytest.mark.chaos
async def test_a_subscription_that_dies_without_a_word_fails_the_waits_instead_of_hanging(
    redis_server: RedisServer, queue: str
) -> None:
    """The network stops moving bytes (a partition, a NAT that forgot the connection) but no
    reset arrives: reads just find nothing. The feed PINGs a quiet connection while waits are in
    progress, so the wait fails within seconds, not at its two-minute timeout."""
    async with (
        FaultProxy(redis_server.port) as proxy,
        Client(Store(Connection(proxy.url(), socket_timeout=2.0))) as client,
    ):
        job_id = await client.enqueue("t.echo", {}, queue=queue)  # no worker: it stays queued
        waiting = asyncio.create_task(client.wait(job_id, timeout=120, queue=queue))
        async with aredis.Redis(port=redis_server.port) as admin:
            await eventually(lambda: _subscribers(admin, queue), what="the wait's subscription")
        await asyncio.sleep(0.5)  # the wait has read the job's state and waits for its end
        proxy.stall()
        async with asyncio.timeout(60):  # a guard against a hang only
            with pytest.raises(StoreUnavailable, match="did not answer a PING"):
                await waiting
            # The failed feed closes its connection in its own task: closing the client waits
            # for that, so that a caller closing its event loop next leaks no socket.
            await client.aclose()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("botrix-waits")]
        await proxy.resume()


async def test_a_wait_that_gives_up_while_subscribing_leaves_the_others_be(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Waits whose timeout ends them at every point of their start, among others on the same
    connection: a timeout never cuts the shared connection (redis-py drops a connection whose
    send was interrupted), so the waits that keep going all see their job end."""
    first = f"{queue}-a"
    keep = [await client.enqueue("t.echo", i, queue=first) for i in range(3)]
    waits = [asyncio.create_task(client.wait(job_id, timeout=60, queue=first)) for job_id in keep]
    quitters = []
    for i in range(30):
        other = f"{queue}-q{i}"  # a new queue each: each of these waits sends a SUBSCRIBE
        quitters.append(asyncio.create_task(client.wait("never", timeout=0.001 * (i % 5), queue=other)))
        await asyncio.sleep(0)
    assert all(isinstance(e, TimeoutError) for e in await asyncio.gather(*quitters, return_exceptions=True))
    async with running_worker(redis_server.url, first):
        done = await asyncio.gather(*waits)
    assert [info.result["echo"] for info in done] == [0, 1, 2]


async def test_a_closed_client_fails_its_waits_and_refuses_new_ones(
    own_redis: RedisServer, queue: str
) -> None:
    redis_server = own_redis  # a server of its own: it waits for the server to have no subscriber
    client = Client.from_url(redis_server.url)
    job_id = await client.enqueue("t.echo", {}, queue=queue)
    waits = [asyncio.create_task(client.wait(job_id, timeout=60, queue=f"{queue}-{i % 3}")) for i in range(6)]
    await asyncio.sleep(0)
    await client.aclose()
    outcomes = await asyncio.gather(*waits, return_exceptions=True)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    with pytest.raises(StoreUnavailable, match="closed"):
        await client.wait(job_id, timeout=5, queue=queue)
    async with aredis.Redis(port=redis_server.port) as admin:
        await eventually(lambda: _no_pubsub_client(admin), what="the subscription connection gone")


async def _no_pubsub_client(admin: aredis.Redis) -> bool:
    return not [c for c in await admin.client_list() if int(c["sub"]) > 0]
