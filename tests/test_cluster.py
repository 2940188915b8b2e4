"""A Redis Cluster (--redis-cluster on): queues spread over three nodes, each queue's keys in
its own slot; jobs run, retry, die, wait, get cancelled and paused, and a killed worker's job
is recovered by another, as on one server."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from botrix import keys
from botrix.client import Client
from botrix.model import JobStatus
from botrix.store import Connection, Consumer, Store, StoreUnavailable
from tests.conftest import WorkerProcess, eventually
from tests.redisproc import RedisClusterServers

CLUSTER = ("--redis-cluster", "on")


async def test_jobs_flow_across_the_nodes_of_a_cluster(
    redis_cluster: RedisClusterServers, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    queues = [f"{queue}-{i}" for i in range(6)]
    nodes = {redis_cluster.node_of(keys.queue_keys(q).pending) for q in queues}
    assert len(nodes) >= 2, "the queues should live on several nodes"
    worker = spawn(redis_cluster.url, ",".join(queues), *CLUSTER, "--max-retries", "1")
    async with Client.from_url(redis_cluster.url, cluster=True) as client:
        echoes = [await client.enqueue("t.echo", q, queue=q) for q in queues]
        batch = await client.enqueue_many("t.echo", list(range(50)), queue=queues[1])
        flaky = await client.enqueue("t.flaky", {"fail_times": 1}, queue=queues[2])
        failing = await client.enqueue("t.fail", {}, queue=queues[3])
        later = await client.enqueue("t.echo", "later", queue=queues[4], delay=0.2)
        for job_id, q in zip(echoes, queues, strict=True):
            assert (await client.wait(job_id, timeout=30, queue=q)).result == {"echo": q, "attempt": 1}
        for job_id in batch:
            assert (await client.wait(job_id, timeout=30, queue=queues[1])).status is JobStatus.COMPLETED
        assert (await client.wait(flaky, timeout=30, queue=queues[2])).attempts == 2
        assert (await client.wait(failing, timeout=30, queue=queues[3])).status is JobStatus.DEAD
        assert (await client.wait(later, timeout=30, queue=queues[4])).status is JobStatus.COMPLETED
        # Without its queue, a job is looked for in every queue at once, across the nodes.
        assert [(await client.job(job_id)).queue for job_id in echoes] == queues

        await client.pause(queues[5])
        held = await client.enqueue("t.echo", "held", queue=queues[5])
        assert await client.cancel(held, queues[5]) is JobStatus.QUEUED
        held = await client.enqueue("t.echo", "held", queue=queues[5])
        assert await client.cancel_all(queues[5]) == 1
        assert (await client.job(held, queues[5])).status is JobStatus.CANCELLED
        await client.resume(queues[5])
        assert await client.retry_dead(queues[3]) == [failing]
        assert (await client.wait(failing, timeout=30, queue=queues[3])).status is JobStatus.DEAD
        assert [w["worker_id"] for w in await client.workers(queues[0])] != []

    listing = subprocess.run(
        [sys.executable, "-m", "botrix", "--redis-url", redis_cluster.url, *CLUSTER, "queues"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)[queues[3]]["dead"] == 1
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_killed_workers_job_is_recovered_in_a_cluster(
    redis_cluster: RedisClusterServers, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """kill -9 mid-job: the lease (2 s here) runs out on the queue's node and a second worker
    runs the job again, as on a single server."""
    first = spawn(redis_cluster.url, queue, *CLUSTER)
    async with Client.from_url(redis_cluster.url, cluster=True) as client:
        job_id = await client.enqueue("t.block_once", {"seconds": 3600}, queue=queue)
        # The record, not the log: a loop blocked from the start may not have written its line.
        await eventually(lambda: _running(client, job_id, queue), what="the job running")
        first.proc.send_signal(signal.SIGKILL)
        await first.wait()
        second = spawn(redis_cluster.url, queue, *CLUSTER)
        info = await client.wait(job_id, timeout=60, queue=queue)
        assert (info.status, info.attempts) == (JobStatus.COMPLETED, 2)
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0


async def _running(client: Client, job_id: str, queue: str) -> bool:
    return (await client.job(job_id, queue)).status is JobStatus.RUNNING


async def test_a_dead_node_does_not_cost_the_other_nodes_queues_their_leases(
    tmp_path: Path, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """One worker runs a long job on each of two queues on two nodes; one node dies (the
    others go on serving their slots). The job on the live node keeps its lease: a second
    worker on that queue does not take it over and run it a second time."""
    cluster = RedisClusterServers(tmp_path / "cluster", full_coverage=False)
    cluster.start()
    try:
        names = (f"{queue}-{i}" for i in range(1000))
        on: dict[int, str] = {}
        for name in names:
            on.setdefault(cluster.node_of(keys.queue_keys(name).pending), name)
            if {1, 2} <= on.keys():
                break
        doomed, kept = on[1], on[2]
        spawn(cluster.url, f"{doomed},{kept}", *CLUSTER, "--lease-seconds", "3")
        async with Client.from_url(cluster.url, cluster=True) as client:
            jobs = {q: await client.enqueue("t.sleep", {"seconds": 60}, queue=q) for q in (doomed, kept)}
            for q, job_id in jobs.items():
                await eventually(functools.partial(_running, client, job_id, q), what="both running")
            cluster.nodes[1].stop(signal.SIGKILL)
            second = spawn(cluster.url, kept, *CLUSTER, "--lease-seconds", "3")
            await second.wait_for("worker.started")
            # Leases of 3 s, recovered 1 s after they lapse: several would have lapsed by now.
            await asyncio.sleep(10)
            info = await client.job(jobs[kept], kept)
            assert (info.status, info.attempts) == (JobStatus.RUNNING, 1)
            assert "job.recovered" not in second.names() and "job.started" not in second.names()
    finally:
        cluster.stop()


async def test_a_worker_rides_out_the_whole_cluster_going_down(
    redis_cluster: RedisClusterServers, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """Every node killed, then started again: the worker says Redis is unreachable, stays up
    (redis-py's cluster errors are not RedisErrors, and once crashed it), and runs jobs again."""
    worker = spawn(redis_cluster.url, queue, *CLUSTER)
    await worker.wait_for("worker.started")
    for node in redis_cluster.nodes:
        node.stop(signal.SIGKILL)
    await worker.wait_for("redis.unavailable")
    await asyncio.sleep(5)  # an outage of some length: the client gives up its map of the slots
    assert worker.proc.poll() is None, worker.names()[-5:]
    for node in redis_cluster.nodes:
        node.start()
    await asyncio.to_thread(redis_cluster.wait_ready)
    async with Client.from_url(redis_cluster.url, cluster=True) as client:
        job_id = await client.enqueue("t.echo", "back", queue=queue)
        assert (await client.wait(job_id, timeout=60, queue=queue)).status is JobStatus.COMPLETED
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_the_cluster_is_reached_through_other_nodes_when_the_urls_is_down(
    redis_cluster: RedisClusterServers, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """The original daemon's REDIS_CLUSTER_NODES: with the URL naming a node that does not
    answer, the worker and the admin CLI reach the cluster through the listed nodes."""
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    live = ",".join(f"127.0.0.1:{node.port}" for node in redis_cluster.nodes[1:])
    env = {"REDIS_CLUSTER_ENABLED": "true", "REDIS_CLUSTER_NODES": live}
    worker = spawn(dead, queue, env=env)
    async with Client.from_url(
        dead, cluster=True, cluster_nodes=[("127.0.0.1", redis_cluster.nodes[2].port)]
    ) as client:
        job_id = await client.enqueue("t.echo", "through another node", queue=queue)
        assert (await client.wait(job_id, timeout=30, queue=queue)).status is JobStatus.COMPLETED
    listing = subprocess.run(
        [sys.executable, "-m", "botrix", "--redis-url", dead, "queues"],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **env},
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert queue in json.loads(listing.stdout)
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


def _move_slot_keys(cluster: RedisClusterServers, key: str, *only: str) -> None:
    """Resharding by hand, as redis-cli does it: the slot of ``key`` migrating from its node to
    the next, and its keys moved (``only`` these, or all of them and the slot handed over)."""
    source = cluster.nodes[cluster.node_of(key)]
    target = cluster.nodes[(cluster.node_of(key) + 1) % len(cluster.nodes)]
    with source.client() as s, target.client() as t:
        slot = int(s.execute_command("CLUSTER KEYSLOT", key))
        if only:
            t.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", s.execute_command("CLUSTER MYID"))
            s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", t.execute_command("CLUSTER MYID"))
        moving = list(only) or [
            str(k, "utf-8") if isinstance(k, bytes) else k
            for k in s.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
        ]
        if moving:
            s.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 10_000, "KEYS", *moving)
        if not only:
            target_id = t.execute_command("CLUSTER MYID")
            for node in cluster.nodes:
                with node.client() as r:
                    r.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)


async def test_a_lease_is_not_reported_lost_while_its_queue_moves_to_another_node(
    redis_cluster: RedisClusterServers, queue: str
) -> None:
    """Resharding moves a queue's keys to another node a batch at a time. With the running job's
    record moved and its lease not yet, a renewal that ran would read the record as gone and
    report a healthy lease lost: the worker would stop the attempt, and the job would cost one.
    Redis refuses the renewal until the slot has moved (the caller tries again); then it renews."""
    k = keys.queue_keys(queue)
    store = Store(Connection(redis_cluster.url, cluster=True))
    try:
        job_id = await Client(store).enqueue("t.echo", {}, queue=queue)
        consumer = Consumer(
            "w-moving", lease_ms=30_000, max_envelope_bytes=1 << 20, result_ttl=60, dead_cap=10
        )
        _, [claimed], _, _, _ = await store.exchange(queue, [], 1, consumer, lane=0)
        held = [(job_id, claimed.delivery)]
        _move_slot_keys(redis_cluster, k.pending, k.job(job_id))
        try:
            lost = await store.renew(queue, held, 30_000, "w-moving")
        except StoreUnavailable:
            lost = []  # refused while the slot moves: the heartbeat's next beat tries again
        assert lost == []
        _move_slot_keys(redis_cluster, k.pending)

        async def renewed() -> bool:
            try:
                return await store.renew(queue, held, 30_000, "w-moving") == []
            except StoreUnavailable:
                return False  # the client still learning where the slot went

        await eventually(renewed, what="a renewal on the queue's new node")
        assert (await Client(store).job(job_id, queue)).status is JobStatus.RUNNING
    finally:
        await store.aclose()
