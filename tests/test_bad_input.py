"""Raw envelopes pushed by foreign producers: good ones run, bad ones are dead-lettered with a
reason, and the worker keeps going."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aredis

from botrix import keys
from botrix.client import Client
from botrix.errors import JobNotFoundError
from botrix.model import JobInfo, JobStatus, Outcome, Settlement
from botrix.store import Consumer, Store, StoreUnavailable
from tests.conftest import WorkerProcess, eventually, running_worker
from tests.redisproc import RedisServer, _text


async def push_raw(url: str, queue: str, *items: bytes) -> None:
    async with aredis.Redis.from_url(url, decode_responses=False) as r:
        await r.rpush(keys.queue_keys(queue).pending, *items)


async def test_one_command_enqueue_from_any_language(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """The redis-cli line of docs/protocol.md: RPUSH an envelope with only a type and payload."""
    await push_raw(redis_server.url, queue, b'{"type":"t.echo","payload":{"to":"ada@example.com"}}')
    await push_raw(
        redis_server.url, queue, b'{"id":"order-7","type":"t.echo","payload":1,"correlation_id":"req-1"}'
    )
    async with running_worker(redis_server.url, queue):
        info = await client.wait("order-7", timeout=30, queue=queue)

        async def both_done() -> bool:
            return list((await statuses(redis_server.url, queue)).values()) == ["completed"] * 2

        await eventually(both_done, what="both completed")
    assert info.status is JobStatus.COMPLETED and info.result == {"echo": 1, "attempt": 1}
    other = next(i for i in await statuses(redis_server.url, queue) if i != "order-7")
    assert (await client.job(other, queue)).result == {"echo": {"to": "ada@example.com"}, "attempt": 1}


async def statuses(url: str, queue: str) -> dict[str, str]:
    """Every job record of the queue, by id (the test's own SCAN; botrix never scans)."""
    prefix = keys.queue_keys(queue).job_prefix
    async with aredis.Redis.from_url(url, decode_responses=False) as r:
        out = {}
        async for key in r.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*"):
            out[_text(key)[len(prefix) :]] = _text(await r.hget(key, "status") or b"")
        return out


async def _is_running(client: Client, job_id: str) -> bool:
    return (await client.job(job_id)).status is JobStatus.RUNNING


BAD = [
    (b'{"type": "t.echo", "payload": ', "envelope is not valid JSON"),
    (b"[1, 2, 3]", "envelope must be a JSON object, got list"),
    (b'{"payload": {}}', "field 'type' is required"),
    (b'{"type": 42}', "field 'type' is required"),
    (b'{"type": "t.echo", "max_retries": "three"}', "field 'max_retries' must be an integer"),
    (b'{"type": "t.echo", "timeout": -5}', "field 'timeout' must be a positive number"),
    (b'{"type": "t.echo", "id": 12}', "field 'id' must be a string of"),
    (b'{"type": "t.echo", "id": "bad-\xff"}', "envelope is not valid JSON"),
    (b'{"type": "t.echo", "id": "has space"}', "field 'id' must be a string of"),
    (b'{"type": "no.such.type"}', "no handler registered for job type 'no.such.type'"),
    (b'{"type": "t.echo", "payload": "\xff\xfe"}', "envelope is not valid JSON"),
    (b"{" + b'"a":[' * 2000 + b"]" * 2000 + b"}", "envelope"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD, ids=[r for _, r in BAD])
async def test_malformed_envelope_is_dead_lettered_with_reason(
    redis_server: RedisServer, client: Client, queue: str, raw: bytes, reason: str
) -> None:
    await push_raw(redis_server.url, queue, raw, b'{"id": "good-after", "type": "t.echo"}')
    async with running_worker(redis_server.url, queue):
        good = await client.wait("good-after", timeout=30, queue=queue)
        dead = await eventually(lambda: client.dead(queue), what="a dead job")
    assert good.status is JobStatus.COMPLETED
    assert len(dead) == 1
    assert dead[0].error is not None
    assert reason in dead[0].error["message"]
    assert (
        dead[0].envelope.encode(errors="replace")[:20]
        == raw.decode(errors="replace").encode(errors="replace")[:20]
    )


async def test_oversized_raw_envelope_is_dead_lettered_without_reaching_a_worker(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    big = orjson.dumps({"type": "t.echo", "payload": "x" * 5000})
    await push_raw(redis_server.url, queue, big, b'{"id": "small", "type": "t.echo"}')
    worker = spawn(redis_server.url, queue, "--max-payload-bytes", "1000")
    await client.wait("small", timeout=30, queue=queue)
    dead = await eventually(lambda: client.dead(queue), what="a dead job")
    assert dead[0].error is not None
    assert "over the 1000 byte limit" in dead[0].error["message"]
    assert dead[0].attempts == 0
    assert len(dead[0].envelope) == len(big)
    # The worker logs it like any dead letter (the claim made it; no handler saw it).
    await worker.wait_for("job.dead")
    [line] = [e for e in worker.events() if e.get("event") == "job.dead"]
    assert line["job_id"] == dead[0].id and line["queue"] == queue
    assert line["error"] == "EnvelopeError" and "over the 1000 byte limit" in line["reason"]
    assert line["level"] == "error"


async def test_an_id_generated_for_a_foreign_envelope_never_takes_a_callers_job(
    redis_server: RedisServer, client: Client, queue: str, store: Store
) -> None:
    """The claim names an envelope without an id `<ms>-<sequence>`; a caller may have chosen
    an id of that shape (a Redis stream entry id). Delayed jobs hold every such id the next
    claim could draw in the coming seconds: the foreign job gets another, and each caller's
    job keeps its own payload."""
    k = keys.queue_keys(queue)
    async with aredis.Redis.from_url(redis_server.url) as r:
        seconds, micros = await r.time()
        sequence = int(await r.get(k.seq) or 0)
    now = seconds * 1000 + micros // 1000
    taken = [f"{now + i}-{sequence + 1}" for i in range(5000)]
    await client.enqueue_many(
        "t.echo", [{"mine": i} for i in range(len(taken))], queue=queue, delay=3600, job_ids=taken
    )
    await push_raw(redis_server.url, queue, b'{"type": "t.echo", "payload": "foreign"}')
    consumer = Consumer("w-ids", lease_ms=30_000, max_envelope_bytes=1 << 20, result_ttl=60, dead_cap=10)
    _, [claimed], _, _, _ = await store.exchange(queue, [], 1, consumer, lane=0)
    assert claimed.job_id not in taken
    assert orjson.loads(claimed.envelope)["payload"] == "foreign"
    for i in (0, 2500, 4999):
        info = await client.job(taken[i], queue)
        assert (info.status, info.payload) == (JobStatus.SCHEDULED, {"mine": i})
    assert (await client.depth(queue))["scheduled"] == len(taken)


async def test_jobs_pushed_where_the_original_daemon_read_are_reported_not_stranded_silently(
    redis_server: RedisServer, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """A producer still pushing onto the original Botrix daemon's list: no botrix worker runs
    jobs from there, so each says so (with the count) instead of leaving them unseen; the
    entries stay where they are, for the operator to move."""
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.delete(keys.LEGACY_QUEUE)
        await r.lpush(keys.LEGACY_QUEUE, b'{"job_id": "job-123", "accounts": 5}')
        worker = spawn(redis_server.url, queue)
        try:
            await worker.wait_for("queue.legacy_jobs")
            [line] = [e for e in worker.events() if e.get("event") == "queue.legacy_jobs"]
            assert (line["key"], line["jobs"], line["level"]) == ("botrix:jobs:queue", 1, "warning")
            assert "botrix:{<queue>}:pending" in line["reason"]
            assert await r.llen(keys.LEGACY_QUEUE) == 1
        finally:
            await r.delete(keys.LEGACY_QUEUE)


async def test_duplicate_id_of_a_live_job_is_dropped(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    job_id = await client.enqueue("t.sleep", {"seconds": 2}, queue=queue, job_id="dup-1")
    async with running_worker(redis_server.url, queue):
        await eventually(lambda: _is_running(client, job_id), what="running")
        await push_raw(redis_server.url, queue, b'{"id": "dup-1", "type": "t.echo"}')
        info = await client.wait(job_id, timeout=30)
    assert info.result == "slept"
    assert info.attempts == 1


async def test_a_key_of_the_wrong_type_stops_every_script_before_it_writes(
    redis_server: RedisServer, client: Client, queue: str, store: Store
) -> None:
    """Someone XADDs to the pending list: each script that would move a job onto it refuses
    before its first write (Redis keeps a failed script's earlier writes, and a job taken off
    one key but never put on the next would be stuck). Once the key is removed, every job
    moves again: none was lost on the way."""
    k = keys.queue_keys(queue)
    gone = Consumer("gone-worker", lease_ms=1, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    async with aredis.Redis.from_url(redis_server.url) as r:
        dead = await client.enqueue("t.reject", {}, queue=queue)
        async with running_worker(redis_server.url, queue):
            await eventually(lambda: _status(client, dead, JobStatus.DEAD), what="dead letter")
        leased = await client.enqueue("t.echo", {}, queue=queue)
        _, [claimed], _, _, _ = await store.exchange(queue, [], 1, gone, lane=0)  # its 1 ms lease runs out
        assert claimed.job_id == leased
        scheduled = await client.enqueue("t.echo", {}, queue=queue, delay=0.001)
        await r.xadd(k.pending, {"oops": "1"})

        with pytest.raises(StoreUnavailable, match="is not a list"):
            await client.enqueue("t.echo", {}, queue=queue, job_id="fresh")
        with pytest.raises(JobNotFoundError):
            await client.job("fresh", queue)
        with pytest.raises(StoreUnavailable, match="is not a list"):
            await client.retry_dead(queue, [dead])
        with pytest.raises(StoreUnavailable, match="is not a list"):
            await store.promote(queue)
        with pytest.raises(StoreUnavailable, match="is not a list"):
            await store.recover(queue, grace_ms=0, max_retries=3, dead_cap=10)
        assert (await client.job(dead)).status is JobStatus.DEAD and await r.zscore(k.dead, dead)
        assert (await client.job(scheduled)).status is JobStatus.SCHEDULED
        assert await r.zscore(k.scheduled, scheduled)
        assert (await client.job(leased)).status is JobStatus.RUNNING and await r.zscore(k.active, leased)

        await r.delete(k.pending)
        assert await store.recover(queue, grace_ms=0, max_retries=3, dead_cap=10)
        assert await client.retry_dead(queue, [dead]) == [dead]
        fresh = await client.enqueue("t.echo", {}, queue=queue, job_id="fresh")
        async with running_worker(redis_server.url, queue):
            for job_id in (leased, scheduled, fresh):
                assert (await client.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
            assert (await client.wait(dead, timeout=60)).status is JobStatus.DEAD


async def _status(client: Client, job_id: str, status: JobStatus) -> bool:
    return (await client.job(job_id)).status is status


async def test_a_job_record_overwritten_by_a_foreign_write_loses_no_other_job(
    redis_server: RedisServer, client: Client, queue: str, store: Store
) -> None:
    """Someone SETs a job's record key: that job's data is gone, but the claim that pops it
    beside others still claims them (a failed script keeps its pops), the id is dead-lettered
    with the reason, and the worker goes on."""
    k = keys.queue_keys(queue)
    ids = [await client.enqueue("t.echo", i, queue=queue) for i in range(3)]
    given = '{"id": "given-1", "type": "t.echo"}'
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.set(k.job(ids[1]), "oops")
        await r.set(k.job("given-1"), "oops")
        await push_raw(redis_server.url, queue, given.encode(), b'{"id": "after", "type": "t.echo"}')

        async def two_dead() -> list[JobInfo]:
            dead = await client.dead(queue)
            return dead if len(dead) == 2 else []

        async with running_worker(redis_server.url, queue):
            for job_id in (ids[0], ids[2], "after"):
                assert (await client.wait(job_id, timeout=30, queue=queue)).status is JobStatus.COMPLETED
            dead = await eventually(two_dead, what="two dead letters")
        reasons = {d.envelope: d.error and d.error["message"] for d in dead}
        assert reasons == {
            ids[1]: f"job record {k.job(ids[1])} is not a hash: only botrix may write its keys",
            given: f"job record {k.job('given-1')} is not a hash: only botrix may write its keys",
        }

        # The dead set's own scripts step over a dead letter whose record was overwritten too.
        await r.set(k.job(dead[0].id), "oops")
        assert await client.retry_dead(queue) == [dead[1].id]
        assert (await client.job(dead[1].id, queue)).status is JobStatus.QUEUED
        await r.zadd(k.dead, {dead[0].id: 0})
        assert await client.purge_dead(queue) == 0
        assert await r.zcard(k.dead) == 0


async def test_a_running_job_whose_record_is_overwritten_costs_its_neighbours_nothing(
    redis_server: RedisServer, client: Client, queue: str, store: Store
) -> None:
    """A record overwritten while its job runs or waits: renewing, settling, promoting,
    recovering and capping the dead set still work for the other jobs in the same call, and
    that one counts as a lease lost (or is stepped over)."""
    k = keys.queue_keys(queue)
    me = Consumer("w-1", lease_ms=60_000, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    kept, broken, spare = [await client.enqueue("t.echo", i, queue=queue) for i in range(3)]
    due, overwritten = [await client.enqueue("t.echo", i, queue=queue, delay=0.001) for i in range(2)]
    _, claimed, _, _, _ = await store.exchange(queue, [], 3, me, lane=0)
    delivery = {c.job_id: c.delivery for c in claimed}
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.set(k.job(broken), "oops")
        await r.set(k.job(overwritten), "oops")
        moved = 0

        async def promoted() -> bool:
            nonlocal moved
            moved += (await store.promote(queue))[0]
            return await r.zcard(k.scheduled) == 0

        await eventually(promoted, what="both due jobs taken off the schedule")
        assert moved == 1
        assert await r.lrange(k.pending, 0, -1) == [due.encode()]
        held = [(j, delivery[j]) for j in (kept, broken, spare)]
        assert await store.renew(queue, held, 60_000, "w-1") == [(broken, delivery[broken], False)]
        done = [Settlement(j, queue, delivery[j], Outcome.COMPLETED, b"1") for j in (kept, broken)]
        refused, _, _, _, _ = await store.exchange(queue, done, 0, me, lane=0)
        assert refused == {(broken, delivery[broken])}
        assert (await client.job(kept, queue)).status is JobStatus.COMPLETED
        assert await store.publish_progress(queue, broken, delivery[broken], "w-1", b"50") is False

        await r.zadd(k.active, {broken: 0, spare: 0})  # both leases run out
        recovered = await store.recover(queue, grace_ms=0, max_retries=3, dead_cap=10)
        assert [(j.job_id, j.status) for j in recovered] == [(spare, "queued")]
        assert await r.zcard(k.active) == 0

        # The oldest dead letter's record was overwritten; capping the dead set steps over it.
        await r.zadd(k.dead, {"ghost": 0})
        await r.set(k.job("ghost"), "oops")
        capped = Consumer("w-1", lease_ms=60_000, max_envelope_bytes=10_000, result_ttl=60, dead_cap=1)
        _, [again], _, _, _ = await store.exchange(queue, [], 1, capped, lane=0)
        assert again.job_id == spare
        failed = Settlement(spare, queue, again.delivery, Outcome.DEAD, b'{"type":"E","message":"m"}')
        assert await store.exchange(queue, [failed], 0, capped, lane=0) == (set(), [], [], False, 0)
        assert await r.zrange(k.dead, 0, -1) == [spare.encode()]
        assert await r.get(k.job("ghost")) == b"oops"


async def test_a_garbled_attempt_count_does_not_fail_the_settle_it_is_in(
    redis_server: RedisServer, client: Client, queue: str, store: Store
) -> None:
    """A record's ``attempts`` field overwritten with text: the batch it is settled in still
    goes through (a failed call would be retried, and fail, forever), and the next claim
    counts afresh."""
    k = keys.queue_keys(queue)
    me = Consumer("w-1", lease_ms=60_000, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    ids = [await client.enqueue("t.echo", i, queue=queue) for i in range(3)]
    _, claimed, _, _, _ = await store.exchange(queue, [], 3, me, lane=0)
    async with aredis.Redis.from_url(redis_server.url) as r:
        for job_id in ids[:2]:
            await r.hset(k.job(job_id), "attempts", "many")
    outcomes = [Outcome.COMPLETED, Outcome.REQUEUE, Outcome.COMPLETED]
    done = [Settlement(c.job_id, queue, c.delivery, o, b"1") for c, o in zip(claimed, outcomes, strict=True)]
    assert await store.exchange(queue, done, 0, me, lane=0) == (set(), [], [], False, 0)
    statuses = [(await client.job(j, queue)).status for j in ids]
    assert statuses == [JobStatus.COMPLETED, JobStatus.QUEUED, JobStatus.COMPLETED]
    _, [again], _, _, _ = await store.exchange(queue, [], 1, me, lane=0)
    assert (again.job_id, again.attempt) == (ids[1], 1)


async def test_a_garbled_sequence_stops_the_claim_before_it_pops(
    redis_server: RedisServer, client: Client, queue: str, store: Store
) -> None:
    """Text written over the queue's sequence, or over a record's token that the claim would
    carry into it: the claim refuses before it takes anything off the list (its INCR comes
    after the pop), so repairing the key is all it takes; and a garbled token is not copied."""
    k = keys.queue_keys(queue)
    me = Consumer("w-1", lease_ms=60_000, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    running = await client.enqueue("t.echo", "r", queue=queue)
    _, [held], _, _, _ = await store.exchange(queue, [], 1, me, lane=0)
    ids = [await client.enqueue("t.echo", i, queue=queue) for i in range(3)]
    async with aredis.Redis.from_url(redis_server.url) as r:
        # What INCR refuses: text, a leading zero, past 64 bits, and a value it cannot add 1 to.
        for garbled in ("not-a-number", "007", "99999999999999999999", "9223372036854775807"):
            await r.set(k.seq, garbled)
            with pytest.raises(StoreUnavailable, match="is not a counter: only botrix may write its keys"):
                await store.exchange(queue, [], 3, me, lane=0)
            assert await r.lrange(k.pending, 0, -1) == [i.encode() for i in ids]
        # A result is still written: settling never touches the sequence.
        done = Settlement(running, queue, held.delivery, Outcome.COMPLETED, b"1")
        assert await store.exchange(queue, [done], 0, me, lane=0) == (set(), [], [], False, 0)
        assert (await client.job(running, queue)).status is JobStatus.COMPLETED
        await r.delete(k.seq)

        await r.hset(k.job(ids[0]), "delivery", "2.5")
        _, [first], _, _, _ = await store.exchange(queue, [], 1, me, lane=0)
        assert first.job_id == ids[0] and (await r.get(k.seq) or b"").isdigit()
        _, rest, _, _, _ = await store.exchange(queue, [], 2, me, lane=0)
        assert [c.job_id for c in rest] == ids[1:]
