"""Leases: renewal keeps long jobs, expiry brings jobs back, stale acks are refused."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import redis.asyncio as aredis

from botrix import JobContext, handler, keys
from botrix.client import Client
from botrix.model import Claimed, JobStatus, Outcome, Settlement
from botrix.store import Connection, Consumer, Store, StoreUnavailable
from tests.conftest import WorkerProcess, eventually, running_worker
from tests.redisproc import RedisServer

T = TypeVar("T")


def _completed(claimed: Claimed, queue: str, result: bytes) -> Settlement:
    return Settlement(claimed.job_id, queue, claimed.delivery, Outcome.COMPLETED, result)


async def test_ack_from_a_worker_that_lost_its_lease_is_refused(
    client: Client, queue: str, store: Store
) -> None:
    worker_a = Consumer("worker-a", lease_ms=50, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    worker_b = Consumer("worker-b", lease_ms=30_000, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    job_id = await client.enqueue("t.echo", {}, queue=queue)
    _, [first], _, _, _ = await store.exchange(queue, [], 1, worker_a, lane=0)
    await asyncio.sleep(0.2)  # let the 50 ms lease run out on the server's clock
    recovered = await store.recover(queue, grace_ms=0, max_retries=3, dead_cap=10)
    assert [(r.job_id, r.status) for r in recovered] == [(job_id, "queued")]
    _, [second], _, _, _ = await store.exchange(queue, [], 1, worker_b, lane=0)
    assert second.attempt == 2 and second.delivery > first.delivery

    assert await store.exchange(queue, [_completed(first, queue, b'"stale"')], 0, worker_a, lane=0) == (
        {(job_id, first.delivery)},
        [],
        [],
        False,
        0,
    )
    lost = await store.renew(queue, [(job_id, first.delivery)], 30_000, worker_a.worker_id)
    assert lost == [(job_id, first.delivery, False)]
    assert await store.exchange(queue, [_completed(second, queue, b'"fresh"')], 0, worker_b, lane=0) == (
        set(),
        [],
        [],
        False,
        0,
    )
    info = await client.job(job_id)
    assert info.result == "fresh" and info.worker == "worker-b" and info.attempts == 2


async def _enqueue_many(client: Client, queue: str, n: int) -> None:
    for _ in range(n // 500):
        await asyncio.gather(*(client.enqueue("t.echo", {}, queue=queue) for _ in range(500)))


def _consumer(name: str) -> Consumer:
    return Consumer(name, lease_ms=30_000, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)


async def test_one_call_settles_more_jobs_than_lua_can_unpack(
    redis_server: RedisServer, client: Client, queue: str, store: Store
) -> None:
    """A worker with thousands of slots settles them in one call.

    The settle drops a batch's leases with one ZREM, in chunks: Lua's unpack stops near 8,000
    values.
    """
    n = 9_000
    await _enqueue_many(client, queue, n)
    worker = _consumer("worker-big")
    active = keys.queue_keys(queue).active
    async with aredis.Redis.from_url(redis_server.url) as r:
        _, claimed, _, _, _ = await store.exchange(queue, [], n, worker, lane=0)
        assert len(claimed) == n
        assert await r.zcard(active) == n
        done = [Settlement(c.job_id, queue, c.delivery, Outcome.COMPLETED, b"null") for c in claimed]
        assert await store.exchange(queue, done, 0, worker, lane=0) == (set(), [], [], False, 0)
        assert await r.zcard(active) == 0
    assert {(await client.job(c.job_id)).status for c in claimed[::500]} == {JobStatus.COMPLETED}


async def test_a_job_requeued_and_claimed_again_in_one_call_keeps_its_new_lease(
    redis_server: RedisServer, client: Client, queue: str, store: Store
) -> None:
    """The settle half of a call drops leases before its claim half writes new ones."""
    n = 50
    await _enqueue_many(client, queue, 500)
    worker = _consumer("worker-requeue")
    _, claimed, _, _, _ = await store.exchange(queue, [], n, worker, lane=0)
    back = [Settlement(c.job_id, queue, c.delivery, Outcome.REQUEUE, attempt=c.attempt) for c in claimed]
    _, again, _, _, _ = await store.exchange(queue, back, n, worker, lane=0)
    active = keys.queue_keys(queue).active
    async with aredis.Redis.from_url(redis_server.url) as r:
        leases = [await r.zscore(active, c.job_id) for c in claimed]
        count = await r.zcard(active)
    assert {c.job_id for c in again} == {c.job_id for c in claimed}
    assert count == n and None not in leases
    assert {c.attempt for c in again} == {1}
    assert min(c.delivery for c in again) > max(c.delivery for c in claimed)


async def test_recovery_dead_letters_when_attempts_are_used_up(
    client: Client, queue: str, store: Store
) -> None:
    job_id = await client.enqueue("t.echo", {}, queue=queue, max_retries=0)
    worker_a = Consumer("worker-a", lease_ms=50, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    await store.exchange(queue, [], 1, worker_a, lane=0)
    await asyncio.sleep(0.2)
    recovered = await store.recover(queue, grace_ms=0, max_retries=3, dead_cap=10)
    assert [(r.job_id, r.status, r.job_type) for r in recovered] == [(job_id, "dead", "t.echo")]
    info = await client.job(job_id)
    assert info.error is not None and info.error["type"] == "LeaseExpired"
    assert "worker-a" in info.error["message"]


async def test_job_longer_than_its_lease_keeps_it(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue, lease_seconds=1.0):
        job_id = await client.enqueue("t.sleep", {"seconds": 3}, queue=queue)
        info = await client.wait(job_id, timeout=30)
    assert info.result == "slept"
    assert info.attempts == 1


async def test_blocked_worker_loses_the_job_and_its_late_ack_is_refused(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    count_key = f"runs:{queue}"
    stuck = spawn(redis_server.url, queue)
    await stuck.wait_for("worker.started")
    job_id = await client.enqueue(
        "t.block_once", {"seconds": 8, "count_url": redis_server.url, "count_key": count_key}, queue=queue
    )
    await stuck.wait_for("job.started")
    rescuer = spawn(redis_server.url, queue)
    info = await client.wait(job_id, timeout=60)
    assert info.result == 2 and info.attempts == 2
    await stuck.wait_for("job.ack_refused", timeout=60)
    after = await client.job(job_id)
    assert after.result == 2
    async with aredis.Redis.from_url(redis_server.url) as r:
        assert await r.hget(count_key, job_id) == b"2"
    for proc in (stuck, rescuer):
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0


async def test_a_reused_job_id_gets_a_new_token_and_the_old_attempts_ack_is_refused(
    client: Client, queue: str, store: Store
) -> None:
    """A finished job's id enqueued again starts a new record; its fencing token must not start
    over with it, or a late ack of the old attempt would pass for the new one. Here one worker
    holds both attempts, so comparing workers alone would not tell them apart; and their acks
    come in one batch, whose reply must say which of the two was refused."""
    short = Consumer("worker-a", lease_ms=50, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    worker_a, worker_b = _consumer("worker-a"), _consumer("worker-b")
    await client.enqueue("t.echo", {"n": 1}, queue=queue, job_id="reused")
    _, [old], _, _, _ = await store.exchange(queue, [], 1, short, lane=0)
    await asyncio.sleep(0.2)  # the 50 ms lease runs out; worker-a is "frozen"
    recovered = await store.recover(queue, grace_ms=0, max_retries=3, dead_cap=10)
    assert [r.status for r in recovered] == ["queued"]
    _, [other], _, _, _ = await store.exchange(queue, [], 1, worker_b, lane=0)
    finished = [_completed(other, queue, b'"b"')]
    assert await store.exchange(queue, finished, 0, worker_b, lane=0) == (set(), [], [], False, 0)
    await client.enqueue("t.echo", {"n": 2}, queue=queue, job_id="reused")
    _, [new], _, _, _ = await store.exchange(queue, [], 1, worker_a, lane=0)
    assert new.delivery not in (old.delivery, other.delivery)
    both = [_completed(old, queue, b'"stale"'), _completed(new, queue, b'"fresh"')]
    refused, _, _, _, _ = await store.exchange(queue, both, 0, worker_a, lane=0)
    assert refused == {("reused", old.delivery)}  # the new attempt's ack, in the same batch, is not
    assert (await client.job("reused", queue)).result == "fresh"


async def _despite_reconnects(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, again while it fails with StoreUnavailable: connections made before a Redis
    restart fail once before they reconnect (a guard against hangs, not a timing test)."""
    for _ in range(50):
        try:
            return await call()
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    return await call()


def _snapshot_server(tmp_path: Path) -> RedisServer:
    """A server without AOF: after a kill it comes back with what the last SAVE wrote."""
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    return server


async def test_after_redis_loses_recent_writes_the_first_workers_acks_are_refused(
    tmp_path: Path, queue: str
) -> None:
    """Redis is killed and restarts from a snapshot taken before a claim (as after a crash with
    RDB persistence, or a failover to a replica that was behind): the same token is handed out
    again, to another worker. The first worker's ack, renewal and progress must all be refused."""
    server = _snapshot_server(tmp_path)
    worker_a, worker_b = _consumer("worker-a"), _consumer("worker-b")
    store = Store(Connection(server.url))
    try:
        async with Client.from_url(server.url) as c:
            job_id = await c.enqueue("t.echo", {}, queue=queue)
        with server.client() as r:
            r.save()
        _, [first], _, _, _ = await store.exchange(queue, [], 1, worker_a, lane=0)
        server.stop(signal.SIGKILL)
        server.start()
        _, [second], _, _, _ = await _despite_reconnects(
            lambda: store.exchange(queue, [], 1, worker_b, lane=0)
        )
        assert second.delivery == first.delivery  # Redis forgot the first claim, its token too
        stale = [_completed(first, queue, b'"a"')]
        refused, _, _, _, _ = await store.exchange(queue, stale, 0, worker_a, lane=0)
        assert refused == {(job_id, first.delivery)}
        held = [(job_id, first.delivery)]
        lost = await _despite_reconnects(lambda: store.renew(queue, held, 30_000, "worker-a"))
        assert lost == [(job_id, first.delivery, False)]
        assert not await store.publish_progress(queue, job_id, first.delivery, "worker-a", b"1")
        fresh = [_completed(second, queue, b'"b"')]
        assert await store.exchange(queue, fresh, 0, worker_b, lane=0) == (set(), [], [], False, 0)
        async with Client.from_url(server.url) as c:
            info = await c.job(job_id, queue)
        assert info.result == "b" and info.worker == "worker-b"
    finally:
        await store.aclose()
        server.stop(signal.SIGKILL)


_gates: dict[str, asyncio.Event] = {}  # cleared by each test: an Event is bound to one event loop


def _gate(name: str) -> asyncio.Event:
    return _gates.setdefault(name, asyncio.Event())


_seen: list[tuple[str, str]] = []  # (job id, "start" | "cancelled" | "abandoned" | "end")


@handler("t.slow_cleanup")
async def slow_cleanup(ctx: JobContext, payload: object) -> str:
    """Runs until released. When cancelled it cleans up until its own cleanup gate opens, and
    then returns a value instead of re-raising, as some handlers in the wild do."""
    _seen.append((ctx.job_id, "start"))
    try:
        await _gate("run").wait()
    except asyncio.CancelledError:
        _seen.append((ctx.job_id, "cancelled"))
        await _gate(f"cleanup:{ctx.job_id}").wait()
        _seen.append((ctx.job_id, "abandoned"))
        return "abandoned"
    _seen.append((ctx.job_id, "end"))
    return "ran"


def _most_at_once() -> int:
    """The most attempts that were in their handler at the same time."""
    now = most = 0
    for _, step in _seen:
        now += {"start": 1, "end": -1, "abandoned": -1}.get(step, 0)
        most = max(most, now)
    return most


async def _two_run_at_once(client: Client, queue: str) -> None:
    """Both slots of a worker at concurrency 2 are free: two jobs start together."""
    _gate("run").clear()
    _seen.clear()
    await client.enqueue("t.slow_cleanup", {}, queue=queue)
    await client.enqueue("t.slow_cleanup", {}, queue=queue)
    await eventually(lambda: len(_seen) == 2, what="two jobs at once")
    _gate("run").set()


async def test_a_worker_handed_its_own_lease_again_runs_the_job_once_at_a_time(
    tmp_path: Path, queue: str
) -> None:
    """Redis restarts from a snapshot taken before this worker's claim and hands the job to the
    same worker again, with the same token. However the worker learns of it (its claim brings
    back the lease it holds, or its renewal finds that lease gone first), the job never runs as
    two attempts at once, ends completed, and every slot of the worker comes back."""
    _gates.clear()
    _gate("cleanup:rolled-back").set()  # a cancelled attempt ends at once
    _seen.clear()
    server = _snapshot_server(tmp_path)
    try:
        async with Client.from_url(server.url) as c:
            await c.enqueue("t.slow_cleanup", {}, queue=queue, job_id="rolled-back")
        with server.client() as r:
            r.save()
        record = keys.queue_keys(queue).job("rolled-back")
        async with running_worker(server.url, queue, concurrency=2, lease_seconds=30) as worker:
            await eventually(lambda: len(_seen) == 1, what="the job running")
            server.stop(signal.SIGKILL)
            server.start()  # the job is queued again in the restored data
            async with aredis.Redis.from_url(server.url) as r:

                async def running_again() -> bool:
                    return await r.hget(record, "status") == b"running" and _seen[-1][1] == "start"

                await eventually(running_again, what="the job claimed again")
                assert _most_at_once() == 1
                _gate("run").set()
                await eventually(lambda: not worker.state.in_flight, what="nothing in flight")
                assert await r.hget(record, "status") == b"completed"
            async with Client.from_url(server.url) as c:
                await _two_run_at_once(c, queue)
    finally:
        server.stop(signal.SIGKILL)


async def test_a_settle_retried_after_another_worker_claimed_the_job_is_not_refused(
    client: Client, queue: str, store: Store
) -> None:
    """Worker A's requeue was written but its reply lost; the job is claimed by worker B; A
    sends the same settle again. It was applied: it must be recognised, not reported refused."""
    worker_a, worker_b = _consumer("worker-a"), _consumer("worker-b")
    job_id = await client.enqueue("t.echo", {}, queue=queue)
    _, [claimed], _, _, _ = await store.exchange(queue, [], 1, worker_a, lane=0)
    back = [Settlement(job_id, queue, claimed.delivery, Outcome.REQUEUE, attempt=claimed.attempt)]
    assert await store.exchange(queue, back, 0, worker_a, lane=0) == (set(), [], [], False, 0)  # "reply lost"
    _, [again], _, _, _ = await store.exchange(queue, [], 1, worker_b, lane=0)
    assert again.job_id == job_id
    assert await store.exchange(queue, back, 0, worker_a, lane=0) == (set(), [], [], False, 0)
    assert await store.exchange(queue, [_completed(again, queue, b'"b"')], 0, worker_b, lane=0) == (
        set(),
        [],
        [],
        False,
        0,
    )
    assert (await client.job(job_id, queue)).result == "b"


async def test_a_lease_handed_back_while_its_old_attempt_is_still_cancelling_runs_again(
    tmp_path: Path, queue: str
) -> None:
    """Redis restarts from a snapshot taken before the worker claimed x and y. The worker is
    full, so its renewal finds both leases gone first and cancels both attempts, whose handlers
    take their time cleaning up and then return anyway. When y's ends, the freed slot claims x
    back with the same token while x's old attempt is still cleaning up: x must run again (not
    be taken for the attempt in hand, or it would sit 'running' with nobody on it), the old
    attempt's value must not become x's result, and every slot comes back."""
    _gates.clear()
    _seen.clear()
    server = _snapshot_server(tmp_path)
    try:
        async with Client.from_url(server.url) as c:
            await c.enqueue("t.slow_cleanup", {}, queue=queue, job_id="x")
            await c.enqueue("t.slow_cleanup", {}, queue=queue, job_id="y")
        with server.client() as r:
            r.save()
        async with running_worker(server.url, queue, concurrency=2, lease_seconds=3) as worker:
            await eventually(lambda: len(_seen) == 2, what="x and y running")
            server.stop(signal.SIGKILL)
            server.start()
            await eventually(lambda: _seen.count(("x", "cancelled")) + _seen.count(("y", "cancelled")) == 2,
                             what="both attempts cancelled by the renewal")  # fmt: skip
            _gate("cleanup:y").set()
            await eventually(lambda: _seen.count(("x", "start")) == 2, what="x claimed back and run again")
            _gate("cleanup:x").set()
            await eventually(lambda: ("x", "abandoned") in _seen, what="the old attempt of x over")
            _gate("run").set()
            async with Client.from_url(server.url) as c:
                for job_id in ("x", "y"):
                    info = await c.wait(job_id, 30, queue)
                    assert (info.status, info.result) == (JobStatus.COMPLETED, "ran")
                await eventually(lambda: not worker.state.in_flight, what="nothing in flight")
                await _two_run_at_once(c, queue)
    finally:
        server.stop(signal.SIGKILL)


async def test_tokens_stay_above_those_an_older_botrix_counted_on_the_record(
    redis_server: RedisServer, client: Client, queue: str, store: Store
) -> None:
    """An older botrix counted tokens on the record; a fleet in the middle of an upgrade runs
    both. A new claim must still hand out a token above the record's last one."""
    job_id = await client.enqueue("t.echo", {}, queue=queue)
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.hset(keys.queue_keys(queue).job(job_id), "delivery", 50)  # as the old scripts left it
    _, [claimed], _, _, _ = await store.exchange(queue, [], 1, _consumer("worker-a"), lane=0)
    assert claimed.delivery == 51
    other = await client.enqueue("t.echo", {}, queue=queue)
    _, [next_one], _, _, _ = await store.exchange(queue, [], 1, _consumer("worker-a"), lane=0)
    assert next_one.job_id == other and next_one.delivery > 51


async def test_the_orphans_of_a_lane_are_its_last_claims_jobs_still_running_under_it(
    client: Client, store: Store, queue: str
) -> None:
    """What a lost claim reply leaves to find: the jobs the lane's last claim leased, only
    while they still run under it, and only this process's, even beside a second process
    given the same worker id by mistake (its jobs are not taken for orphans)."""
    ids = [await client.enqueue("t.echo", i, queue=queue) for i in range(4)]
    me = Consumer("w-same", 30_000, 1 << 20, 60, 10, instance="process-a")
    twin = Consumer("w-same", 30_000, 1 << 20, 60, 10, instance="process-b")
    _, first, _, _, _ = await store.exchange(queue, [], 1, me, lane=0)
    _, last, _, _, _ = await store.exchange(queue, [], 2, me, lane=0)
    _, theirs, _, _, _ = await store.exchange(queue, [], 1, twin, lane=0)
    assert [c.job_id for c in first + last + theirs] == ids[:4]
    assert [(c.job_id, c.delivery, c.attempt) for c in await store.orphans(queue, me, 0)] == [
        (c.job_id, c.delivery, 1) for c in last
    ]
    assert await store.orphans(queue, me, 1) == []  # another lane claimed nothing
    done = [_completed(last[0], queue, b"1")]
    assert (await store.exchange(queue, done, 0, me, lane=0))[0] == set()  # a pure settle
    assert [c.job_id for c in await store.orphans(queue, me, 0)] == [last[1].job_id]
    assert [c.job_id for c in await store.orphans(queue, twin, 0)] == [theirs[0].job_id]


async def test_a_claim_reaching_redis_after_its_lane_asked_about_it_claims_nothing(
    redis_server: RedisServer, client: Client, store: Store, queue: str
) -> None:
    """The lost claim's request itself was held up (a stalled network: the kernel resends it on
    the connection the worker closed) and reaches Redis only after the lane asked what it
    leased. Asking fences the lane's calls so far: that late call claims nothing, so no job is
    leased to a worker that no longer looks for it; its settle half still applies. The lane's
    next calls claim as usual, a question that itself comes late lowers no fence, and the
    process's other lanes are not fenced. A fence holding anything but its digits counts as
    unset, and a call without a number is never fenced."""
    ids = [await client.enqueue("t.echo", i, queue=queue) for i in range(6)]
    me = Consumer("w-fenced", 30_000, 1 << 20, 60, 10, instance="process-f")
    _, [held], _, _, _ = await store.exchange(queue, [], 1, me, lane=0, call=1)
    # Call 2 claims; its request is lost on the way, and the lane asks (its calls so far: 2).
    # Redis still has call 1's claim as the last, whose job the worker holds (and so skips).
    assert [c.job_id for c in await store.orphans(queue, me, 0, upto=2)] == [held.job_id]
    done = [_completed(held, queue, b"1")]
    refused, late, _, _, _ = await store.exchange(queue, done, 2, me, lane=0, call=2)  # call 2 arrives
    assert (refused, late) == (set(), [])
    assert (await client.job(held.job_id, queue)).status is JobStatus.COMPLETED
    assert (await client.depth(queue))["pending"] == 5
    assert await store.orphans(queue, me, 0, upto=1) == []  # a late question (held is settled)
    assert (await store.exchange(queue, [], 2, me, lane=0, call=2))[1] == []
    _, claimed, _, _, _ = await store.exchange(queue, [], 2, me, lane=0, call=3)
    assert [c.job_id for c in claimed] == ids[1:3]
    _, [theirs], _, _, _ = await store.exchange(queue, [], 1, me, lane=1, call=1)  # another lane's
    assert theirs.job_id == ids[3]
    _, [unnumbered], _, _, _ = await store.exchange(queue, [], 1, me, lane=0)
    assert unnumbered.job_id == ids[4]
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.set(keys.queue_keys(queue).claims_fence("process-f", 0), "inf")
    _, [last], _, _, _ = await store.exchange(queue, [], 1, me, lane=0, call=1)
    assert last.job_id == ids[5]
