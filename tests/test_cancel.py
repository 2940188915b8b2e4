"""Cancelling a job (Client.cancel, `botrix cancel`, the admin API): a queued, delayed or
retrying job never runs; a running one is stopped by its worker, whose slot comes free; a
finished one is left as it is."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis.asyncio as aredis

from botrix import keys
from botrix.client import Client
from botrix.errors import JobNotFoundError
from botrix.model import JobStatus
from botrix.store import Store
from tests.conftest import WorkerProcess, eventually
from tests.redisproc import RedisServer
from tests.test_admin_api import TOKEN, call
from tests.test_http import get, http_worker, samples


def cancel_cli(redis_server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    """``botrix cancel ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "botrix", "--redis-url", redis_server.url, "cancel", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_queued_or_delayed_job_cancelled_never_runs(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """On a paused queue, a job waits and another is delayed; a wait is in progress on the
    first. Both are cancelled: they leave the queue, the wait ends with the cancel, and once
    the queue is resumed a worker runs the next job but never the cancelled ones."""
    k = keys.queue_keys(queue)
    await client.pause(queue)
    queued = await client.enqueue("t.echo", "never", queue=queue)
    delayed = await client.enqueue("t.echo", "never", queue=queue, delay=3600)
    waiting = asyncio.create_task(client.wait(queued, timeout=60, queue=queue))
    await asyncio.sleep(0.2)  # let the wait subscribe (a guard, not a timing assertion)

    assert await client.cancel(queued, queue) is JobStatus.QUEUED
    assert await client.cancel(delayed, queue) is JobStatus.SCHEDULED
    assert (await waiting).status is JobStatus.CANCELLED
    assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}
    async with aredis.Redis.from_url(redis_server.url) as r:
        assert 0 < await r.ttl(k.job(queued)) <= 86_400

    worker = spawn(redis_server.url, queue)
    await client.resume(queue)
    after = await client.enqueue("t.echo", "after", queue=queue)
    assert (await client.wait(after, timeout=30, queue=queue)).status is JobStatus.COMPLETED
    for job_id in (queued, delayed):
        info = await client.job(job_id, queue)
        assert (info.status, info.attempts, info.result) == (JobStatus.CANCELLED, 0, None)
    # The worker logs the outcome once the settle's reply is back, after the record shows it.
    await worker.wait_for("job.succeeded")
    ran = [e["job_id"] for e in worker.events() if e.get("event") in ("job.started", "job.succeeded")]
    assert ran == [after, after]

    # A cancelled job's id may be used again, like a finished one's.
    again = await client.enqueue("t.echo", "again", queue=queue, job_id=queued)
    assert (await client.wait(again, timeout=30, queue=queue)).result == {"echo": "again", "attempt": 1}
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_running_job_cancelled_is_stopped_and_its_slot_freed(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """A worker with one slot runs a job that would sleep an hour. Cancelled, the worker stops
    it (at its next lease renewal), logs job.cancelled (not a lost lease), drops its result
    and runs the next job; the record stays cancelled."""
    worker = spawn(redis_server.url, queue, "--concurrency", "1")
    long = await client.enqueue("t.sleep", {"seconds": 3600}, queue=queue)
    await worker.wait_for("job.started")
    nxt = await client.enqueue("t.echo", "next", queue=queue)

    assert await client.cancel(long, queue) is JobStatus.RUNNING
    await worker.wait_for("job.cancelled")
    assert (await client.wait(nxt, timeout=30, queue=queue)).status is JobStatus.COMPLETED
    info = await client.job(long, queue)
    assert (info.status, info.attempts) == (JobStatus.CANCELLED, 1)
    assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}
    [cancelled] = [e for e in worker.events() if e.get("event") == "job.cancelled"]
    assert cancelled["job_id"] == long and cancelled["level"] == "info"
    assert not [e for e in worker.events() if e.get("event") in ("job.lease_lost", "job.ack_refused")]
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_running_job_cancelled_is_counted_in_the_metrics(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """The stopped attempt shows in botrix_jobs_total as outcome "cancelled", under its type;
    nothing is counted for it as completed, retried or dead."""
    async with http_worker(redis_server.url, queue, concurrency=1) as (_, base):
        job_id = await client.enqueue("t.sleep", {"seconds": 3600}, queue=queue)
        await eventually(lambda: _status(client, job_id, queue, JobStatus.RUNNING), what="the job running")
        await client.cancel(job_id, queue)
        labels = (("outcome", "cancelled"), ("queue", queue), ("type", "t.sleep"))

        async def counted() -> bool:
            return samples((await get(base, "/metrics"))[1]).get(("botrix_jobs_total", labels)) == 1

        await eventually(counted, what="the cancelled attempt counted")
        m = samples((await get(base, "/metrics"))[1])
    assert not [key for key in m if key[0] == "botrix_jobs_total" and key != ("botrix_jobs_total", labels)]


async def _status(client: Client, job_id: str, queue: str, status: JobStatus) -> bool:
    return (await client.job(job_id, queue)).status is status


async def test_a_finished_or_unknown_job_is_left_as_it_is(client: Client, queue: str) -> None:
    with pytest.raises(JobNotFoundError, match="no job 'nope'"):
        await client.cancel("nope", queue)
    job_id = await client.enqueue("t.echo", 1, queue=queue)
    await client.cancel(job_id, queue)
    assert await client.cancel(job_id, queue) is JobStatus.CANCELLED  # a second cancel: no change


async def test_cancel_from_the_cli_and_the_admin_api(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """`botrix cancel` prints what the job was and exits 1 when it had already finished;
    POST /jobs/{id}/cancel answers 200, then 409, and 404 for an unknown id."""
    await client.pause(queue)
    first = await client.enqueue("t.echo", 1, queue=queue)

    done = cancel_cli(redis_server, first, "--queue", queue)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": first, "queue": queue, "was": "queued", "cancelled": True}
    again = cancel_cli(redis_server, first, "--queue", queue)
    assert again.returncode == 1 and json.loads(again.stdout)["was"] == "cancelled"
    missing = cancel_cli(redis_server, "nope", "--queue", queue)
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        f"botrix: error: no job 'nope' in queue '{queue}'",
    )

    second = await client.enqueue("t.echo", 2, queue=queue)
    async with http_worker(redis_server.url, f"{queue}-other", admin_token=TOKEN) as (_, base):
        path = f"/jobs/{second}/cancel?queue={queue}"
        assert await call(base, "POST", path) == (
            200, {"id": second, "queue": queue, "was": "queued", "cancelled": True},
        )  # fmt: skip
        status, answer = await call(base, "POST", path)
        assert (status, answer["error"]) == (409, "job_finished") and "cancelled" in answer["detail"]
        status, answer = await call(base, "POST", f"/jobs/nope/cancel?queue={queue}")
        assert (status, answer["error"]) == (404, "not_found")
    assert (await client.job(second, queue)).status is JobStatus.CANCELLED


async def test_cancel_all_takes_every_job_in_a_state_and_nothing_else(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """On a paused queue, 2,500 jobs wait (three pages), a foreign producer's envelope among
    them, and three are delayed; a wait is in progress on one. Cancelling every queued job takes
    the 2,500, ends the wait, and leaves the envelope queued and the delayed jobs scheduled;
    cancelling the scheduled ones takes those. Once resumed, a worker runs the envelope's job
    and none of the cancelled ones."""
    k = keys.queue_keys(queue)
    await client.pause(queue)
    first = await client.enqueue_many("t.echo", list(range(1200)), queue=queue)
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.rpush(k.pending, json.dumps({"id": "foreign-1", "type": "t.echo", "payload": "foreign"}))
    rest = await client.enqueue_many("t.echo", list(range(1300)), queue=queue)
    delayed = [await client.enqueue("t.echo", "later", queue=queue, delay=3600) for _ in range(3)]
    waiting = asyncio.create_task(client.wait(rest[-1], timeout=60, queue=queue))
    await asyncio.sleep(0.2)  # let the wait subscribe (a guard, not a timing assertion)

    assert await client.cancel_all(queue, "queued") == 2500
    assert (await waiting).status is JobStatus.CANCELLED
    assert await client.depth(queue) == {"pending": 1, "active": 0, "scheduled": 3, "dead": 0}
    for job_id in (first[0], first[-1], rest[0], rest[-1]):
        assert (await client.job(job_id, queue)).status is JobStatus.CANCELLED
    assert {(await client.job(job_id, queue)).status for job_id in delayed} == {JobStatus.SCHEDULED}
    assert await client.cancel_all(queue, "scheduled") == 3
    assert await client.depth(queue) == {"pending": 1, "active": 0, "scheduled": 0, "dead": 0}
    assert await client.cancel_all(queue, "queued") == 0  # the envelope has nothing to cancel yet

    worker = spawn(redis_server.url, queue)
    await client.resume(queue)
    assert (await client.wait("foreign-1", timeout=30, queue=queue)).result == {
        "echo": "foreign",
        "attempt": 1,
    }
    await worker.wait_for("job.succeeded")
    assert [e["job_id"] for e in worker.events() if e.get("event") == "job.started"] == ["foreign-1"]
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_cancel_all_running_stops_them_and_the_cli_says_how_many(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """`botrix cancel --all --state running` cancels the jobs a worker runs: it stops each at
    its next renewal and its slots take the next jobs. Bad usage is one line and exit 2."""
    worker = spawn(redis_server.url, queue, "--concurrency", "2")
    long = [await client.enqueue("t.sleep", {"seconds": 600}, queue=queue) for _ in range(2)]
    await worker.wait_for("job.started", count=2)

    done = cancel_cli(redis_server, "--all", "--queue", queue, "--state", "running")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"queue": queue, "state": "running", "cancelled": 2}
    await worker.wait_for("job.cancelled", count=2)
    assert {(await client.job(job_id, queue)).status for job_id in long} == {JobStatus.CANCELLED}
    after = await client.enqueue("t.echo", "after", queue=queue)
    assert (await client.wait(after, timeout=30, queue=queue)).status is JobStatus.COMPLETED

    for args, message in [
        (("--queue", queue), "'cancel' takes a job id, or --all"),
        (("x", "--all"), "'cancel' takes a job id, or --all"),
        (("x", "--state", "queued"), "'cancel --state' goes with --all"),
        (("--all", "--state", "dead"), "invalid choice: 'dead'"),
    ]:
        bad = cancel_cli(redis_server, *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_a_cancel_all_page_takes_only_what_was_there_when_it_began(
    redis_server: RedisServer, client: Client, store: Store, queue: str
) -> None:
    """A page reads and cancels in one call: the jobs enqueued by the cutoff go, the ones
    enqueued after it and a foreign envelope stay, and it says how many it left in place (where
    the next page starts) and that it reached the end."""
    await client.pause(queue)
    before = [await client.enqueue("t.echo", i, queue=queue) for i in range(3)]
    cutoff = await store.clock_ms()

    async def past_cutoff() -> bool:
        return await store.clock_ms() > cutoff

    await eventually(past_cutoff, what="the Redis clock past the cutoff")  # the next ms, at most
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.rpush(keys.queue_keys(queue).pending, json.dumps({"type": "t.echo", "payload": "foreign"}))
    after = [await client.enqueue("t.echo", i, queue=queue) for i in range(2)]

    assert await store.cancel_page(queue, "pending", cutoff, 0, 60) == (3, 3, True)
    assert {(await client.job(i, queue)).status for i in before} == {JobStatus.CANCELLED}
    assert {(await client.job(i, queue)).status for i in after} == {JobStatus.QUEUED}
    assert await client.depth(queue) == {"pending": 3, "active": 0, "scheduled": 0, "dead": 0}
    # Past the three it left, nothing more: the end.
    assert await store.cancel_page(queue, "pending", cutoff, 3, 60) == (0, 0, True)
