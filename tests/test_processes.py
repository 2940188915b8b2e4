"""Real worker processes: several on one queue, kill -9, SIGTERM drain, restarts, health
records, and an idle worker that does not spin."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aredis

from botrix import keys
from botrix.cli.worker import GC_THRESHOLDS
from botrix.client import Client
from botrix.model import JobStatus
from tests.conftest import WorkerProcess, eventually
from tests.redisproc import RedisServer, _text

Spawn = Callable[..., WorkerProcess]


async def run_counts(url: str, key: str) -> dict[str, int]:
    async with aredis.Redis.from_url(url, decode_responses=False) as r:
        return {_text(k): int(v) for k, v in (await r.hgetall(key)).items()}


async def enqueue_counted(client: Client, url: str, queue: str, n: int, **payload: object) -> list[str]:
    body = {"count_url": url, "count_key": f"runs:{queue}", **payload}
    return [await client.enqueue("t.count", body, queue=queue) for _ in range(n)]


async def stop_all(*procs: WorkerProcess) -> None:
    for proc in procs:
        proc.signal(signal.SIGTERM)
    for proc in procs:
        assert await proc.wait() == 0


async def test_several_workers_never_run_a_job_twice(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    workers = [spawn(redis_server.url, queue, "--concurrency", "4") for _ in range(3)]
    ids = await enqueue_counted(client, redis_server.url, queue, 300)
    for job_id in ids:
        assert (await client.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
    await stop_all(*workers)
    counts = await run_counts(redis_server.url, f"runs:{queue}")
    assert counts == dict.fromkeys(ids, 1)


@pytest.mark.parametrize(
    ("apps", "expected"),
    # tests/gc_app.py's, spelt out: importing it here would retune the test process's collector
    [((), GC_THRESHOLDS), (("--app", "tests.gc_app"), (1234, 5, 6))],
    ids=["worker", "handlers-module"],
)
async def test_the_worker_tunes_the_collector_unless_a_handlers_module_does(
    redis_server: RedisServer,
    client: Client,
    queue: str,
    spawn: Spawn,
    apps: tuple[str, ...],
    expected: tuple[int, int, int],
) -> None:
    """The worker raises the cyclic collector's thresholds (docs/performance.md: jobs in flight
    were promoted and rescanned collection after collection), before it imports the handler
    modules, so that a module which sets its own keeps them."""
    worker = spawn(redis_server.url, queue, *apps)
    job_id = await client.enqueue("t.gc_thresholds", {}, queue=queue)
    # The first two: Python 3.14's incremental collector ignores (and reports 0 for) the third.
    assert (await client.wait(job_id, timeout=30)).result[:2] == list(expected[:2])
    await stop_all(worker)


async def test_lanes_never_hold_more_leases_than_the_concurrency(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    concurrency = 30  # two lanes of 15 (runner.py): each lane claims only into its own slots
    ids = await enqueue_counted(client, redis_server.url, queue, 600)
    worker = spawn(redis_server.url, queue, "--concurrency", str(concurrency))
    most = 0
    async with aredis.Redis.from_url(redis_server.url) as r, asyncio.timeout(60):  # a hang guard
        active = keys.queue_keys(queue).active
        while (await client.depth(queue))["pending"] or await r.zcard(active):
            most = max(most, await r.zcard(active))
    # Nothing pending or leased: every job is settled (a claim and a settle each move a job
    # in one script), and none failed.
    assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}
    await stop_all(worker)
    assert 0 < most <= concurrency
    assert await run_counts(redis_server.url, f"runs:{queue}") == dict.fromkeys(ids, 1)


@pytest.mark.slow
async def test_thousand_jobs_through_three_workers_each_once(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    ids = await enqueue_counted(client, redis_server.url, queue, 1200)
    workers = [spawn(redis_server.url, queue, "--concurrency", "10") for _ in range(3)]
    for job_id in ids:
        assert (await client.wait(job_id, timeout=120)).status is JobStatus.COMPLETED
    await stop_all(*workers)
    assert await run_counts(redis_server.url, f"runs:{queue}") == dict.fromkeys(ids, 1)
    assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}


async def test_kill_9_mid_job_is_recovered_by_another_worker(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    doomed = spawn(redis_server.url, queue)
    [job_id] = await enqueue_counted(client, redis_server.url, queue, 1, sleep=1.5)
    await doomed.wait_for("job.started")
    await eventually(lambda: run_counts(redis_server.url, f"runs:{queue}"), what="the first run counted")
    killed_at_ms = time.time() * 1000
    os.kill(doomed.pid, signal.SIGKILL)
    await doomed.wait()
    assert (await client.job(job_id)).status is JobStatus.RUNNING
    rescuer = spawn(redis_server.url, queue)
    info = await client.wait(job_id, timeout=60)
    assert info.started_at_ms is not None
    recovery_s = (info.started_at_ms - killed_at_ms) / 1000
    print(f"kill -9 recovery: restarted {recovery_s:.2f} s after the kill (lease 2 s)")
    assert info.status is JobStatus.COMPLETED
    assert info.attempts == 2
    await rescuer.wait_for("job.recovered")
    recovered = next(e for e in rescuer.events() if e.get("event") == "job.recovered")
    assert (recovered["job_id"], recovered["type"]) == (job_id, "t.count")
    await stop_all(rescuer)
    assert await run_counts(redis_server.url, f"runs:{queue}") == {job_id: 2}


@pytest.mark.parametrize("how", ["exit", "interrupt"])
async def test_sys_exit_in_a_task_a_handler_started_fails_its_job_not_the_worker(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn, how: str
) -> None:
    """asyncio lets SystemExit and KeyboardInterrupt out of any task and then out of the loop:
    the worker ended at once, exit 0, no drain, its other jobs left leased."""
    worker = spawn(redis_server.url, queue, "--concurrency", "4")
    other = await client.enqueue("t.sleep", {"seconds": 1}, queue=queue)
    await worker.wait_for("job.started")
    exiting = await client.enqueue("t.exit_in_task", {"how": how}, queue=queue, max_retries=1)
    info = await client.wait(exiting, timeout=30)
    assert info.status is JobStatus.COMPLETED and info.result == "survived" and info.attempts == 2
    assert info.error is not None and info.error["type"] == "TaskExit"
    expected = "SystemExit(0)" if how == "exit" else "KeyboardInterrupt()"
    assert info.error["message"] == f"a task the handler started raised {expected}"
    assert (await client.wait(other, timeout=30)).status is JobStatus.COMPLETED
    # A task a handler cancels before it ran leaves no "never awaited" warning behind.
    cancelled = await client.enqueue("t.cancel_a_task", {}, queue=queue)
    assert (await client.wait(cancelled, timeout=30)).result == "cancelled"
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    assert "worker.stopped" in worker.names()
    assert [e for e in worker.events() if e["event"] == "<non-json>"] == []


async def test_a_task_factory_a_lifespan_chains_sees_the_jobs_and_keeps_them_contained(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    """An error tracker's integration wraps the loop's task factory: job tasks go through it too."""
    worker = spawn(redis_server.url, queue, "--app", "tests.factory_app")
    assert (await client.wait(await client.enqueue("f.seen", {}, queue=queue), timeout=30)).result is True
    info = await client.wait(await client.enqueue("f.exit_in_task", {}, queue=queue), timeout=30)
    assert info.status is JobStatus.DEAD and info.error is not None and info.error["type"] == "TaskExit"
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_sigterm_drains_short_jobs_and_requeues_long_ones(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    worker = spawn(redis_server.url, queue, "--concurrency", "4", "--shutdown-timeout", "2")
    short = [await client.enqueue("t.sleep", {"seconds": 0.5}, queue=queue) for _ in range(2)]
    long = [
        await client.enqueue("t.sleep", {"seconds": 60}, queue=queue, correlation_id=f"req-{i}")
        for i in range(2)
    ]
    await worker.wait_for("job.started", count=4)
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    for job_id in short:
        assert (await client.job(job_id)).status is JobStatus.COMPLETED
    for job_id in long:
        info = await client.job(job_id)
        assert info.status is JobStatus.QUEUED
        assert info.attempts == 0
    assert await client.depth(queue) == {"pending": 2, "active": 0, "scheduled": 0, "dead": 0}
    names = worker.names()
    assert names.count("job.requeued") == 2
    requeued = {e["job_id"]: e for e in worker.events() if e.get("event") == "job.requeued"}
    assert {(e["type"], e["correlation_id"]) for e in requeued.values()} == {
        ("t.sleep", "req-0"),
        ("t.sleep", "req-1"),
    }
    assert names.index("worker.stopping") < names.index("job.requeued") < names.index("worker.stopped")


async def test_jobs_finishing_in_the_drain_claim_nothing_more(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn, tmp_path: Path
) -> None:
    """Their results are written, and the drain claims no job into the slots they free."""
    release = tmp_path / "release"
    worker = spawn(redis_server.url, queue, "--concurrency", "2", "--shutdown-timeout", "30")
    running = [await client.enqueue("t.progress_when", {"path": str(release)}, queue=queue) for _ in range(2)]
    await worker.wait_for("job.started", count=2)
    waiting = [await client.enqueue("t.echo", {"n": i}, queue=queue) for i in range(3)]
    worker.signal(signal.SIGTERM)
    await worker.wait_for("worker.draining")
    release.touch()
    assert await worker.wait() == 0
    for job_id in running:
        assert (await client.job(job_id)).status is JobStatus.COMPLETED
    for job_id in waiting:
        info = await client.job(job_id)
        assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert await client.depth(queue) == {"pending": 3, "active": 0, "scheduled": 0, "dead": 0}
    assert worker.names().count("job.started") == 2


async def test_a_handler_that_turns_the_shutdowns_cancel_into_an_error_is_requeued(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    """A handler that raises an error of its own when cancelled (a driver, a cleanup that
    fails) at the end of the shutdown timeout: that failure is the shutdown's, not the job's,
    so the job goes back uncounted, not dead-lettered (max_retries 0) or retried."""
    worker = spawn(redis_server.url, queue, "--shutdown-timeout", "1")
    job_id = await client.enqueue("t.cancel_to_error", {}, queue=queue, max_retries=0)
    await worker.wait_for("job.started")
    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=60) == 0
    info = await client.job(job_id)
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    requeued = next(e for e in worker.events() if e.get("event") == "job.requeued")
    assert (requeued["job_id"], requeued["reason"]) == (job_id, "shutdown")
    assert "job.failed" not in worker.names()


async def test_two_workers_sharing_a_worker_id_are_told(
    redis_server: RedisServer, queue: str, spawn: Spawn
) -> None:
    """A worker id names the lease holder the fencing checks: two running processes under one
    id could settle each other's jobs. The second one's health writes replace the first's, and
    one of them says so (an ERROR line), while a worker alone never does."""
    alone = spawn(redis_server.url, queue, "--worker-id", f"alone-{queue}")
    first = spawn(redis_server.url, queue, "--worker-id", f"twin-{queue}")
    second = spawn(redis_server.url, queue, "--worker-id", f"twin-{queue}")
    deadline = asyncio.get_running_loop().time() + 60  # a guard against a hang only
    while "worker.id_shared" not in first.names() + second.names():
        assert asyncio.get_running_loop().time() < deadline, "neither twin noticed the other"
        await asyncio.sleep(0.1)
    told = next(e for w in (first, second) for e in w.events() if e.get("event") == "worker.id_shared")
    assert (told["worker_id"], told["level"]) == (f"twin-{queue}", "error")
    await stop_all(first, second, alone)
    assert "worker.id_shared" not in alone.names()
    assert "redis.evicts_keys" not in alone.names()  # the test servers run noeviction


async def test_a_redis_that_would_evict_keys_is_reported(
    own_redis: RedisServer, queue: str, spawn: Spawn
) -> None:
    """Under any maxmemory-policy but noeviction a full Redis deletes keys, jobs with them: a
    worker says so (an ERROR line naming the policy), at start or when the setting changes
    under it (a worker under noeviction says nothing: see the test above's lone worker)."""
    running = spawn(own_redis.url, queue)
    await running.wait_for("worker.started")
    with own_redis.client() as r:
        r.config_set("maxmemory-policy", "allkeys-lru")
    starting = spawn(own_redis.url, queue)
    for worker in (running, starting):
        await worker.wait_for("redis.evicts_keys")
        [line] = [e for e in worker.events() if e.get("event") == "redis.evicts_keys"]
        assert (line["maxmemory_policy"], line["level"]) == (["allkeys-lru"], "error")
    await stop_all(running, starting)


async def test_second_signal_skips_the_drain_wait(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    worker = spawn(redis_server.url, queue, "--shutdown-timeout", "600")
    job_id = await client.enqueue("t.sleep", {"seconds": 600}, queue=queue)
    await worker.wait_for("job.started")
    worker.signal(signal.SIGTERM)
    await worker.wait_for("worker.draining")
    worker.signal(signal.SIGINT)
    assert await worker.wait() == 0
    assert (await client.job(job_id)).status is JobStatus.QUEUED


@pytest.mark.parametrize("kind", ["t.long_cleanup", "t.ignores_cancel"])
async def test_handlers_that_outlast_their_cancel_are_requeued_and_do_not_hold_the_exit(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn, kind: str
) -> None:
    """SIGTERM past the shutdown timeout cancels the handler, which cleans up for an hour or
    ignores the cancel: after the requeue grace its job goes back on the queue uncounted (not
    left leased, to cost an attempt and dead-letter a max_retries=0 job), and the process
    exits 0 instead of waiting for that task forever."""
    worker = spawn(redis_server.url, queue, "--shutdown-timeout", "1")
    job_id = await client.enqueue(kind, {"cleanup": 3600}, queue=queue, max_retries=0)
    await worker.wait_for("job.started")
    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=60) == 0
    info = await client.job(job_id)
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert await client.depth(queue) == {"pending": 1, "active": 0, "scheduled": 0, "dead": 0}
    names = worker.names()
    assert names.index("job.abandoned") < names.index("worker.stopped")
    requeued = next(e for e in worker.events() if e.get("event") == "job.requeued")
    assert (requeued["job_id"], requeued["attempt"], requeued["type"]) == (job_id, 1, kind)
    # A second cancel ends the cleanup; only the task that ignores every cancel is left behind.
    assert ("worker.tasks_abandoned" in names) is (kind == "t.ignores_cancel")


async def test_handler_threads_past_the_drain_do_not_hold_the_exit(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    """Ten jobs block in asyncio.to_thread; the executor runs min(32, cores + 4) at once and
    queues the rest. SIGTERM past the shutdown timeout: all ten are requeued, the queued calls
    are dropped, and the process exits 0 at once instead of joining the running threads."""
    worker = spawn(redis_server.url, queue, "--shutdown-timeout", "1", "--concurrency", "10")
    ids = [await client.enqueue("t.thread", {"seconds": 3600}, queue=queue) for _ in range(10)]
    await worker.wait_for("job.started", count=10)
    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=60) == 0
    for job_id in ids:
        info = await client.job(job_id)
        assert info.status is JobStatus.QUEUED and info.attempts == 0
    names = worker.names()
    assert names.index("worker.stopped") < names.index("worker.threads_abandoned")
    abandoned = next(e for e in worker.events() if e.get("event") == "worker.threads_abandoned")
    assert abandoned["threads"] == min(10, 32, (os.cpu_count() or 1) + 4)  # running, not queued


async def test_jobs_survive_a_worker_restart(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    ids = await enqueue_counted(client, redis_server.url, queue, 40, sleep=0.05)
    first = spawn(redis_server.url, queue, "--concurrency", "2")
    await first.wait_for("job.succeeded", count=5)
    await stop_all(first)
    second = spawn(redis_server.url, queue, "--concurrency", "2")
    for job_id in ids:
        assert (await client.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
    await stop_all(second)
    assert await run_counts(redis_server.url, f"runs:{queue}") == dict.fromkeys(ids, 1)


async def test_health_record_is_published_and_expires_when_the_worker_dies(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    worker = spawn(redis_server.url, queue, "--worker-id", f"hw-{queue}")
    key = keys.worker_health(f"hw-{queue}")
    async with aredis.Redis.from_url(redis_server.url) as r:
        raw = await eventually(lambda: r.get(key), what="health record")
        record = orjson.loads(raw)
        assert record["worker_id"] == f"hw-{queue}"
        assert record["status"] == "running"
        assert record["queues"] == [queue]
        for field in (
            "last_heartbeat",
            "current_job",
            "jobs_processed",
            "jobs_succeeded",
            "jobs_failed",
            "uptime_seconds",
        ):
            assert field in record
        assert 0 < await r.ttl(key) <= 3
        assert [w["worker_id"] for w in await client.workers(queue)] == [f"hw-{queue}"]
        os.kill(worker.pid, signal.SIGKILL)
        await worker.wait()
        await eventually(lambda: _gone(r, key), what="record expiry")
    assert await client.workers(queue) == []


async def test_health_record_says_draining_as_soon_as_the_drain_begins(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    """The record is rewritten on a change of phase, not only every --health-check-interval
    (an hour here): during a drain `botrix workers` shows the worker draining."""
    worker_id = f"hd-{queue}"
    worker = spawn(redis_server.url, queue, "--worker-id", worker_id, "--health-check-interval", "3600")
    job_id = await client.enqueue("t.sleep", {"seconds": 3600}, queue=queue)
    await worker.wait_for("job.started")

    async def statuses() -> list[str]:
        return [w["status"] for w in await client.workers(queue)]

    async def draining() -> bool:
        return await statuses() == ["draining"]

    async def running() -> bool:
        return await statuses() == ["running"]

    # The heartbeat writes the first record beside the runner's first claim, not before it:
    # under load the job can start a few round trips before the worker is listed.
    await eventually(running, what="the record saying running")
    worker.signal(signal.SIGTERM)
    await eventually(draining, what="the record saying draining")
    [record] = await client.workers(queue)
    assert record["current_jobs"] == [job_id]
    # Listed, but leaving: as a deploy gate, `botrix workers --queue` says no worker serves it.
    gate = subprocess.run(
        [sys.executable, "-m", "botrix", "--redis-url", redis_server.url, "workers", "--queue", queue],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gate.returncode == 1 and worker_id in gate.stdout
    worker.signal(signal.SIGTERM)  # the second signal skips the drain wait
    assert await worker.wait() == 0
    assert await client.workers(queue) == []  # a clean exit removes the record


async def _gone(r: aredis.Redis, key: str) -> bool:
    return not await r.exists(key)


async def test_clean_exit_removes_the_health_record(
    redis_server: RedisServer, client: Client, queue: str, spawn: Spawn
) -> None:
    worker = spawn(redis_server.url, queue)
    await eventually(lambda: client.workers(queue), what="worker listed")
    await stop_all(worker)
    assert await client.workers(queue) == []


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_idle_worker_does_not_spin(own_redis: RedisServer, queue: str, spawn: Spawn) -> None:
    """An idle worker sends a handful of commands (heartbeat, promotion, one blocking wait),
    not a poll loop: counted in Redis's own statistics (of a server of its own: any other
    client would count too) and in the process's CPU time."""
    redis_server = own_redis
    worker = spawn(redis_server.url, queue)
    await worker.wait_for("worker.started")
    await asyncio.sleep(1.0)
    async with aredis.Redis.from_url(redis_server.url) as r:
        before_cmds = (await r.info("stats"))["total_commands_processed"]
        before_cpu = cpu_seconds(worker.pid)
        await asyncio.sleep(3.0)
        commands = (await r.info("stats"))["total_commands_processed"] - before_cmds
        cpu = cpu_seconds(worker.pid) - before_cpu
    await stop_all(worker)
    assert commands < 150, f"{commands} commands in 3 s of idling"
    assert cpu < 0.5, f"{cpu:.2f} s CPU in 3 s of idling"


async def test_stop_signals_after_the_stop_do_not_turn_exit_0_into_death_by_signal(
    redis_server: RedisServer, queue: str, spawn: Spawn
) -> None:
    """A supervisor (or an impatient operator) keeps sending SIGTERM until the process is
    gone: the worker drains once and exits 0, whatever moment of its teardown a signal hits."""
    worker = spawn(redis_server.url, queue)
    await worker.wait_for("worker.started")
    while worker.proc.poll() is None:
        worker.signal(signal.SIGTERM)
        await asyncio.sleep(0.002)
    assert await worker.wait() == 0
    assert "worker.stopped" in worker.names()
