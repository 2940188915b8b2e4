"""Chaos scenarios with real processes and real signals (marker: chaos, run by `make test`).

Every handler run is counted in Redis by job id (the t.work handler), so lost and duplicated
runs are measured, not guessed. Each scenario asserts: every job completed at least once;
duplicates never exceed the jobs that could have been in flight at the kills; nothing left
pending, running or leased; the dead set holds only what should be dead.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from botrix.client import Client
from botrix.model import JobStatus
from tests.conftest import WorkerProcess, eventually
from tests.redisproc import RedisServer
from tests.test_processes import run_counts

pytestmark = pytest.mark.chaos
Spawn = Callable[..., WorkerProcess]
CONCURRENCY = 24  # 10 or more: the workers split their slots into lanes (runner.py)


async def enqueue_work(
    client: Client, url: str, queue: str, n: int, rng: random.Random, low: int, high: int
) -> list[str]:
    body: dict[str, Any] = {"count_url": url, "count_key": f"runs:{queue}"}
    return [
        await client.enqueue("t.work", {**body, "ms": rng.randint(low, high)}, queue=queue) for _ in range(n)
    ]


async def drained(client: Client, queue: str) -> bool:
    d = await client.depth(queue)
    return d["pending"] == d["active"] == d["scheduled"] == 0


async def assert_all_completed(client: Client, queue: str, ids: list[str]) -> None:
    statuses = [(await client.job(i, queue)).status for i in ids]
    assert statuses.count(JobStatus.COMPLETED) == len(ids), {s: statuses.count(s) for s in set(statuses)}
    assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}


def worker_args(*extra: str) -> tuple[str, ...]:
    return ("--concurrency", str(CONCURRENCY), "--log-level", "warning", *extra)


async def test_kill_storm_loses_nothing(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    rng = random.Random(1234)
    url = redis_server.url
    ids = await enqueue_work(client, url, queue, 5000, rng, 5, 50)
    workers = [spawn(url, queue, *worker_args()) for _ in range(3)]
    kills = 0
    while kills < 10:
        await asyncio.sleep(rng.uniform(0.1, 0.5))
        victim = rng.randrange(len(workers))
        os.kill(workers[victim].pid, signal.SIGKILL)
        await workers[victim].wait()
        workers[victim] = spawn(url, queue, *worker_args())
        kills += 1
    await eventually(lambda: drained(client, queue), timeout=180, what="all jobs settled")
    for proc in workers:
        proc.signal(signal.SIGTERM)
    for proc in workers:
        assert await proc.wait() == 0
    counts = await run_counts(url, f"runs:{queue}")
    lost = [i for i in ids if counts.get(i, 0) == 0]
    duplicates = sum(counts.values()) - len(counts)
    print(f"kill storm: jobs={len(ids)} kills={kills} lost={len(lost)} duplicates={duplicates}")
    assert lost == []
    assert duplicates <= kills * CONCURRENCY
    await assert_all_completed(client, queue, ids)


async def test_rolling_deploy_runs_every_job_exactly_once(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    rng = random.Random(99)
    url = redis_server.url
    ids = await enqueue_work(client, url, queue, 1500, rng, 5, 30)
    workers = [spawn(url, queue, *worker_args("--log-level", "info")) for _ in range(3)]
    await asyncio.sleep(0.5)
    for i in range(len(workers)):
        await workers[i].wait_for("worker.started")
        workers[i].signal(signal.SIGTERM)
        assert await workers[i].wait() == 0
        workers[i] = spawn(url, queue, *worker_args("--log-level", "info"))
        await asyncio.sleep(0.3)
    await eventually(lambda: drained(client, queue), timeout=120, what="all jobs settled")
    for proc in workers:
        await proc.wait_for("worker.started")
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    counts = await run_counts(url, f"runs:{queue}")
    assert counts == dict.fromkeys(ids, 1), f"duplicates: {sum(counts.values()) - len(counts)}"
    await assert_all_completed(client, queue, ids)


async def http_status(port: int, path: str) -> int:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status


def http_port(proc: WorkerProcess) -> int:
    return int(next(e["port"] for e in proc.events() if e.get("event") == "http.listening"))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_redis_restart_under_load(own_redis: RedisServer, queue: str, spawn: Spawn, how: int) -> None:
    rng = random.Random(7)
    url = own_redis.url
    async with Client.from_url(url) as client:
        ids = await enqueue_work(client, url, queue, 1500, rng, 5, 20)
    workers = [spawn(url, queue, *worker_args("--http-port", "0", "--log-level", "info")) for _ in range(2)]
    await workers[0].wait_for("http.listening")
    port = http_port(workers[0])
    await eventually(lambda: _status_is(port, "/ready", 200), what="ready")
    await workers[0].wait_for("job.succeeded", count=100, timeout=60)
    own_redis.stop(how)
    await eventually(lambda: _status_is(port, "/ready", 503), what="ready 503 during the outage")
    assert await http_status(port, "/live") == 200
    own_redis.start()
    await eventually(lambda: _status_is(port, "/ready", 200), what="ready again")
    async with Client.from_url(url) as client:
        await eventually(lambda: drained(client, queue), timeout=120, what="all jobs settled")
        counts = await run_counts(url, f"runs:{queue}")
        assert [i for i in ids if counts.get(i, 0) == 0] == []
        await assert_all_completed(client, queue, ids)
    for proc in workers:
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def _status_is(port: int, path: str, status: int) -> bool:
    try:
        return await http_status(port, path) == status
    except aiohttp.ClientError:
        return False


async def test_poison_pill_is_dead_lettered_not_crash_looped(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    """A handler that kills its own process each time: like systemd's Restart=on-failure, the
    test restarts the worker whenever it dies; after its attempts the job is dead and the fleet
    is healthy."""
    url = redis_server.url
    body = {"count_url": url, "count_key": f"runs:{queue}"}
    job_id = await client.enqueue("t.exit", body, queue=queue, max_retries=2)
    worker = spawn(url, queue)
    restarts = 0
    while (await client.job(job_id)).status is not JobStatus.DEAD:
        if worker.proc.poll() is not None:
            assert worker.proc.returncode == 17
            restarts += 1
            assert restarts <= 5, "crash loop"
            worker = spawn(url, queue)
        await asyncio.sleep(0.1)
    info = await client.job(job_id)
    assert info.attempts == 3
    assert info.error is not None and info.error["type"] == "LeaseExpired"
    assert (await run_counts(url, f"runs:{queue}")) == {job_id: 3}
    after = await client.enqueue("t.echo", {}, queue=queue)
    assert (await client.wait(after, timeout=60)).status is JobStatus.COMPLETED
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    assert [d.id for d in await client.dead(queue)] == [job_id]
