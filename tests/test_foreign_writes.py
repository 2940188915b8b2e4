"""A key of one queue that something other than botrix wrote: that queue waits for a repair,
visibly, and the worker's other queues go on as if nothing happened."""

from __future__ import annotations

import asyncio
import functools
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aredis

import botrix
from botrix import keys
from botrix.client import Client
from botrix.model import JobStatus
from botrix.store import _CLAIM_KEYS, Consumer, Store, _wrong_type
from tests.conftest import eventually, running_worker
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
    _, [claimed], _, _, _ = await store.exchange(lo, [], 1, gone, lane=0)  # its 1 ms lease runs out
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
            checks = (await get(base, "/health"))[1]["checks"]
            assert checks["damaged_queues"] == body["detail"]
            assert checks["queues"][lo] == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}
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
    recovered nor run a second time while it runs here. Once the set is deleted (the repair),
    the renewal puts the running job's lease back, and it completes instead of being stuck."""
    first, second = f"t-a-{uuid.uuid4().hex[:8]}", f"t-b-{uuid.uuid4().hex[:8]}"
    async with (
        aredis.Redis.from_url(redis_server.url) as r,
        http_worker(redis_server.url, first, queues=(first, second), lease_seconds=3.0) as _,
    ):
        held = await client.enqueue("t.sleep", {"seconds": 12}, queue=first)
        await eventually(lambda: _status(client, held, first, JobStatus.RUNNING), what="first running")
        long = await client.enqueue("t.sleep", {"seconds": 8}, queue=second)
        await eventually(lambda: _status(client, long, second, JobStatus.RUNNING), what="second running")
        active = keys.queue_keys(first).active
        await r.delete(active)
        await r.xadd(active, {"oops": "1"})
        info = await client.wait(long, timeout=60, queue=second)
        assert (info.status, info.attempts, info.result) == (JobStatus.COMPLETED, 1, "slept")
        await r.delete(active)
        info = await client.wait(held, timeout=90, queue=first)
        assert (info.status, info.attempts, info.result) == (JobStatus.COMPLETED, 1, "slept")


async def _status(client: Client, job_id: str, queue: str, status: JobStatus) -> bool:
    return (await client.job(job_id, queue)).status is status


async def test_results_of_a_damaged_queue_wait_without_their_slots_and_are_written_after_the_repair(
    own_redis: RedisServer,
) -> None:
    """Both slots run jobs of the higher queue when its scheduled set is replaced: their
    results cannot be written, and wait in the worker without holding the slots, so the lower
    queue's job runs. The worker does not spin meanwhile on the held queue's backlog (it is
    not watched). After the repair the results are written: each job completed, once. (A
    server of its own: it counts the blocking calls of the whole server.)"""
    async with Client.from_url(own_redis.url) as client:
        await _held_results(own_redis, client)


async def _held_results(redis_server: RedisServer, client: Client) -> None:
    hi, lo = f"t-hi-{uuid.uuid4().hex[:8]}", f"t-lo-{uuid.uuid4().hex[:8]}"
    k = keys.queue_keys(hi)
    async with (
        aredis.Redis.from_url(redis_server.url) as r,
        http_worker(redis_server.url, hi, queues=(hi, lo), concurrency=2) as (_, base),
    ):
        first = [await client.enqueue("t.sleep", {"seconds": 4}, queue=hi) for _ in range(2)]
        backlog = await client.enqueue("t.echo", "backlog", queue=hi)  # no slot free for it
        for job_id in first:
            await eventually(
                functools.partial(_status, client, job_id, hi, JobStatus.RUNNING), what="running"
            )
        await r.xadd(k.scheduled, {"oops": "1"})
        await eventually(lambda: _reason(base, "queue_damaged"), what="/ready naming the damage")
        blmoves = await _calls(r, "blmove")
        other = await client.enqueue("t.echo", "other", queue=lo)
        assert (await client.wait(other, timeout=60, queue=lo)).status is JobStatus.COMPLETED
        for job_id in first:
            assert (await client.job(job_id, hi)).status is JobStatus.RUNNING  # its result waits
        assert (await client.job(backlog, hi)).status is JobStatus.QUEUED
        await asyncio.sleep(1)  # time for a spinning worker to show it; a slow machine only hides it
        # A worker answered by the backlog at once, woken again and again, makes thousands.
        assert await _calls(r, "blmove") - blmoves < 100

        await r.delete(k.scheduled)
        for job_id in [*first, backlog]:
            info = await client.wait(job_id, timeout=60, queue=hi)
            assert (info.status, info.attempts) == (JobStatus.COMPLETED, 1)
        await eventually(lambda: _ready(base), what="ready after the repair")


@pytest.mark.parametrize("first", ["a claim", "the result"])
async def test_results_of_a_queue_whose_claims_alone_fail_are_written_at_once(
    redis_server: RedisServer, client: Client, queue: str, tmp_path: Path, first: str
) -> None:
    """A garbled pause flag fails only the claim half of a call: results can still be written.
    A job that finishes while the queue is held for it is written and leaves the worker's books
    then, not parked until the damage is repaired (which may be never, before a shutdown drops
    it as `job.settle_abandoned`); the queue stays damaged and claims nothing meanwhile. The
    call that first meets the flag is either a claim alone (a job enqueued) or the one carrying
    the result, which its settle half wrote before the claim half failed."""
    release = tmp_path / "release"
    k = keys.queue_keys(queue)
    async with (
        aredis.Redis.from_url(redis_server.url) as r,
        running_worker(redis_server.url, queue, concurrency=2) as worker,
    ):
        running = await client.enqueue("t.progress_when", {"path": str(release)}, queue=queue)
        await eventually(
            functools.partial(_status, client, running, queue, JobStatus.RUNNING), what="running"
        )
        await r.hset(k.paused, "garbled", "1")
        if first == "a claim":
            await client.enqueue("t.echo", "meets the garbled flag", queue=queue)
            await eventually(lambda: queue in worker.state.damaged, what="the queue held")
        release.touch()  # (the worker is idle otherwise: its next call carries the result)
        await eventually(lambda: not worker.state.in_flight, what="the result written")
        assert (await client.job(running, queue)).status is JobStatus.COMPLETED
        assert queue in worker.state.damaged
        waiting = await client.enqueue("t.echo", "after the result", queue=queue)
        assert worker.state.counters.succeeded == 1
        await r.delete(k.paused)
        assert (await client.wait(waiting, timeout=60, queue=queue)).status is JobStatus.COMPLETED


async def _reason(base: str, reason: str) -> bool:
    return bool((await get(base, "/ready"))[1].get("reason") == reason)


async def _calls(r: aredis.Redis, command: str) -> int:
    stats = await r.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_repair_is_seen_while_a_higher_queue_keeps_the_worker_busy(
    redis_server: RedisServer, client: Client
) -> None:
    """The lower queue is damaged and repaired while the higher one has a long backlog, so the
    lower queue gets no claim: the worker still looks at it (a call that only checks its keys)
    and reports the repair, rather than keeping /ready 503 and the alert up until the backlog
    is gone."""
    hi, lo = f"t-hi-{uuid.uuid4().hex[:8]}", f"t-lo-{uuid.uuid4().hex[:8]}"
    k = keys.queue_keys(lo)
    async with (
        aredis.Redis.from_url(redis_server.url) as r,
        http_worker(redis_server.url, hi, queues=(hi, lo), concurrency=1) as (_, base),
    ):
        await r.xadd(k.scheduled, {"oops": "1"})
        await eventually(lambda: _reason(base, "queue_damaged"), what="/ready naming the damage")
        for _ in range(300):  # a minute of work for the one slot
            await client.enqueue("t.sleep", {"seconds": 0.2}, queue=hi)
        await r.delete(k.scheduled)
        await eventually(lambda: _ready(base), timeout=40, what="ready after the repair")
        assert (await client.depth(hi))["pending"] > 0


@pytest.mark.parametrize(
    "message",
    [
        # Redis 7, a script's own check, and a command's reply (BLMOVE on a stream)
        "WRONGTYPE botrix:{q}:pending is not a list: only botrix may write its keys script: 1f, on "
        "@user_script:27.",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        # Redis 6.2 wraps a script's error; redis-py has dropped the leading "ERR "
        "Error running script (call to f_1f): @user_script:27: WRONGTYPE botrix:{q}:pending is not "
        "a list: only botrix may write its keys",
        # a pipeline (the depth refresh)
        "Command # 3 (ZCARD botrix:{q}:scheduled) of pipeline caused error: ('WRONGTYPE Operation "
        "against a key holding the wrong kind of value',)",
    ],
)
def test_every_form_of_a_wrong_type_reply_is_a_foreign_write(message: str) -> None:
    """Every form gives the same reason, Redis's own words from ``WRONGTYPE`` on, which is what
    `/ready`'s detail and the log show (`make test-redis62` runs the suite on Redis 6.2)."""
    reason = _wrong_type(message)
    assert reason is not None and reason.startswith("WRONGTYPE ")
    assert "',)" not in reason and "Error running script" not in reason
    assert _wrong_type("Error running script (call to f_1f): @user_script:3: OOM command not allowed") is None


def test_the_claim_halfs_checks_are_named_as_the_scripts_word_them() -> None:
    """``ForeignWrite.claims_only`` knows a claim-only damage by the Lua check's message."""
    lua = "".join(
        (Path(botrix.__file__).parent / "lua" / name).read_text() for name in ("_event.lua", "_rate.lua")
    )
    for phrase in _CLAIM_KEYS:
        assert f"fail_wrong_type(string.format('%s {phrase}'" in lua
