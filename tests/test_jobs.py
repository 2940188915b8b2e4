"""Jobs through an in-process worker on a real Redis: results, retries, dead letters, events."""

from __future__ import annotations

import asyncio
import math
import re
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis

from botrix import keys
from botrix.client import Client
from botrix.errors import JobNotFoundError, PayloadTooLargeError, RetryLater
from botrix.model import JobStatus
from botrix.store import DEAD_CHUNK, ForeignWrite
from tests.conftest import WorkerProcess, eventually, running_worker
from tests.redisproc import RedisServer


async def collect_events(pubsub: Any, job_id: str) -> list[dict[str, Any]]:
    """Every event received until the job's final one (completed or dead)."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                continue
            events.append(orjson.loads(message["data"]))
            if events[-1]["job_id"] == job_id and events[-1]["event"] in ("completed", "dead"):
                return events


async def test_single_job_completes_with_result(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue):
        job_id = await client.enqueue("t.echo", {"hello": "world"}, queue=queue)
        info = await client.wait(job_id, timeout=30)
    assert info.status is JobStatus.COMPLETED
    assert info.result == {"echo": {"hello": "world"}, "attempt": 1}
    assert info.attempts == 1
    assert info.worker is not None
    assert info.enqueued_at_ms is not None and info.started_at_ms is not None
    assert (
        info.finished_at_ms is not None and info.finished_at_ms >= info.started_at_ms >= info.enqueued_at_ms
    )
    assert info.error is None


@pytest.mark.parametrize("concurrency", [1, 10])
async def test_a_job_never_sees_the_context_variables_an_earlier_job_set(
    redis_server: RedisServer, client: Client, queue: str, concurrency: int
) -> None:
    async with running_worker(redis_server.url, queue, concurrency=concurrency):
        ids = [await client.enqueue("t.context", {}, queue=queue) for _ in range(3 * concurrency)]
        results = [(await client.wait(job_id, timeout=30)).result for job_id in ids]
    assert results == ["clean"] * len(ids)


async def test_job_with_many_items_reports_progress(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    r = aredis.Redis.from_url(redis_server.url)
    pubsub = r.pubsub()
    await pubsub.subscribe(keys.queue_keys(queue).events)
    async with running_worker(redis_server.url, queue):
        job_id = await client.enqueue("t.items", {"items": 25}, queue=queue)
        info = await client.wait(job_id, timeout=30)
    events = await collect_events(pubsub, job_id)
    progress = [e["progress"]["done"] for e in events if e["event"] == "progress"]
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await r.aclose()
    assert info.result == {"processed": 25}
    assert info.progress == {"done": 25, "of": 25}
    assert progress == list(range(1, 26))


async def test_jobs_in_sequence_run_in_fifo_order(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    ids = [await client.enqueue("t.echo", {"n": n}, queue=queue) for n in range(10)]
    async with running_worker(redis_server.url, queue, concurrency=1):
        infos = [await client.wait(job_id, timeout=30) for job_id in ids]
    assert [i.status for i in infos] == [JobStatus.COMPLETED] * 10
    started = [i.started_at_ms or 0 for i in infos]
    assert started == sorted(started)
    assert [i.result["echo"]["n"] for i in infos] == list(range(10))


async def test_failing_job_retries_then_dead_letters(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue, max_retries=2):
        job_id = await client.enqueue("t.fail", {}, queue=queue)
        info = await client.wait(job_id, timeout=30)
        dead = await client.dead(queue)
    assert info.status is JobStatus.DEAD
    assert info.attempts == 3
    assert info.error is not None and info.error["type"] == "RuntimeError"
    assert "boom on attempt 3" in info.error["message"]
    assert "Traceback" in info.error["traceback"]
    assert [d.id for d in dead] == [job_id]


async def test_flaky_job_succeeds_after_retries(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue):
        job_id = await client.enqueue("t.flaky", {"fail_times": 2}, queue=queue)
        info = await client.wait(job_id, timeout=30)
    assert info.status is JobStatus.COMPLETED
    assert info.result == 3
    assert info.attempts == 3


async def test_a_handler_chooses_when_it_is_retried(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """RetryLater(3600): the retry is due in an hour, which the backoff (1 s base, 300 s cap
    here) would never choose; with a delay of 0 the job runs again at once. Either way it is an
    attempt: with none left the job is dead."""
    k = keys.queue_keys(queue)
    async with running_worker(redis_server.url, queue, max_retries=2):
        later = await client.enqueue("t.rate_limited", {"retry_after": 3600}, queue=queue)
        soon = await client.enqueue("t.rate_limited", {"retry_after": 0}, queue=queue)
        assert (await client.wait(soon, timeout=30)).attempts == 2
        spent = await client.enqueue("t.rate_limited", {"retry_after": 0, "limited_times": 9}, queue=queue)
        info = await client.wait(spent, timeout=30)
        assert (info.status, info.attempts) == (JobStatus.DEAD, 3)
        assert info.error is not None and info.error["type"] == "RetryLater"
        assert info.error["message"] == "upstream said 429, Retry-After"

        async def scheduled() -> float | None:
            async with aredis.Redis.from_url(redis_server.url) as r:
                return await r.zscore(k.scheduled, later)

        due_ms = await eventually(scheduled, what="the retry scheduled")
    info = await client.job(later, queue)
    assert (info.status, info.attempts) == (JobStatus.RETRYING, 1)
    assert info.run_at_ms == due_ms and info.started_at_ms is not None
    hour_ms = 3_600_000
    assert hour_ms * 0.9 < due_ms - info.started_at_ms < hour_ms * 1.1


async def test_a_requested_retry_is_logged_as_such_not_as_a_failure(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """RetryLater is a rate limit doing its job: one INFO line with the delay, no warning and
    no stack; the attempt that uses up the retries is a failure like any other."""
    worker = spawn(redis_server.url, queue, "--max-retries", "1")
    asked = await client.enqueue("t.rate_limited", {"retry_after": 0}, queue=queue)
    spent = await client.enqueue("t.rate_limited", {"retry_after": 0, "limited_times": 5}, queue=queue)
    assert (await client.wait(asked, timeout=30)).status is JobStatus.COMPLETED
    assert (await client.wait(spent, timeout=30)).status is JobStatus.DEAD
    await worker.wait_for("job.dead")
    lines = [e for e in worker.events() if e.get("job_id") == asked and e.get("event", "").startswith("job.")]
    assert [e["event"] for e in lines] == [
        "job.started",
        "job.retry_requested",
        "job.started",
        "job.succeeded",
    ]
    requested = lines[1]
    assert requested["level"] == "info" and requested["delay_ms"] == 0 and "traceback" not in requested
    assert requested["message"] == "upstream said 429, Retry-After"
    spent_lines = [e["event"] for e in worker.events() if e.get("job_id") == spent]
    assert spent_lines.count("job.retry_requested") == 1 and spent_lines[-2:] == ["job.failed", "job.dead"]
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


def test_retry_later_refuses_a_delay_that_is_not_a_time() -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="RetryLater delay must be a finite number"):
            RetryLater(bad)


async def test_per_job_max_retries_overrides_the_worker(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue, max_retries=5):
        job_id = await client.enqueue("t.fail", {}, queue=queue, max_retries=0)
        info = await client.wait(job_id, timeout=30)
    assert info.status is JobStatus.DEAD
    assert info.attempts == 1


async def test_non_retryable_error_goes_straight_to_dead(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue, max_retries=5):
        job_id = await client.enqueue("t.reject", {}, queue=queue)
        info = await client.wait(job_id, timeout=30)
    assert info.status is JobStatus.DEAD
    assert info.attempts == 1
    assert info.error is not None and info.error["type"] == "InvalidPayloadError"


@pytest.mark.parametrize(
    ("job_type", "enqueue_timeout", "error_type"),
    [
        ("t.timeout", None, "JobTimeout"),
        ("t.sleep", 0.1, "JobTimeout"),
        ("t.unserializable", None, "ResultNotSerializable"),
    ],
)
async def test_timeouts_and_bad_results_fail_the_attempt(
    redis_server: RedisServer,
    client: Client,
    queue: str,
    job_type: str,
    enqueue_timeout: float | None,
    error_type: str,
) -> None:
    async with running_worker(redis_server.url, queue, max_retries=0):
        job_id = await client.enqueue(job_type, {"seconds": 30}, queue=queue, timeout=enqueue_timeout)
        info = await client.wait(job_id, timeout=30)
    assert info.status is JobStatus.DEAD
    assert info.error is not None and info.error["type"] == error_type


async def test_an_exception_that_cannot_be_printed_is_still_retried(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Its ``str()`` fails: the attempt is a failure like any other, not botrix's own error."""
    async with running_worker(redis_server.url, queue, max_retries=2, retry_backoff=0.01):
        job_id = await client.enqueue("t.unprintable", {}, queue=queue)
        info = await client.wait(job_id, timeout=30)
    assert info.status is JobStatus.COMPLETED and info.result == 3
    assert info.error is not None
    assert info.error["type"] == "_Unprintable" and info.error["message"] == "<exception str() failed>"


async def test_a_result_over_the_size_limit_is_dead_and_the_lane_goes_on(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Redis would refuse the call that carries it (here: proto-max-bulk-len 1mb), and that call
    is sent again until it succeeds: the lane's other results and its claims would wait for good."""
    r = aredis.Redis.from_url(redis_server.url)
    await r.config_set("proto-max-bulk-len", 1024 * 1024)
    try:
        async with running_worker(redis_server.url, queue, concurrency=2, max_result_bytes=512 * 1024):
            big = await client.enqueue("t.big_result", {"bytes": 2 * 1024 * 1024}, queue=queue)
            fits = await client.enqueue("t.big_result", {"bytes": 400 * 1024}, queue=queue)
            others = [await client.enqueue("t.echo", {"n": n}, queue=queue) for n in range(5)]
            infos = [await client.wait(j, timeout=30) for j in [big, fits, *others]]
    finally:
        await r.config_set("proto-max-bulk-len", 512 * 1024 * 1024)
        await r.aclose()
    assert infos[0].status is JobStatus.DEAD and infos[0].attempts == 1
    assert infos[0].error is not None and infos[0].error["type"] == "ResultTooLarge"
    assert "2097154 bytes, over the 524288 byte limit" in infos[0].error["message"]
    assert infos[1].status is JobStatus.COMPLETED and len(infos[1].result) == 400 * 1024
    assert [i.result for i in infos[2:]] == [{"echo": {"n": n}, "attempt": 1} for n in range(5)]


async def test_unknown_job_type_is_dead_at_once(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue, max_retries=5):
        job_id = await client.enqueue("no.such.handler", {}, queue=queue)
        info = await client.wait(job_id, timeout=30)
    assert info.status is JobStatus.DEAD
    assert info.attempts == 1
    assert info.error == {
        "type": "UnknownJobType",
        "message": "no handler registered for job type 'no.such.handler'",
        "traceback": "",
    }


async def test_status_progression_and_events_in_order(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    r = aredis.Redis.from_url(redis_server.url)
    pubsub = r.pubsub()
    await pubsub.subscribe(keys.queue_keys(queue).events)
    job_id = await client.enqueue("t.flaky", {"fail_times": 1}, queue=queue)
    assert (await client.job(job_id)).status is JobStatus.QUEUED
    async with running_worker(redis_server.url, queue):
        info = await client.wait(job_id, timeout=30)
    events = await collect_events(pubsub, job_id)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await r.aclose()
    assert info.status is JobStatus.COMPLETED
    mine = [(e["event"], e.get("attempt")) for e in events if e["job_id"] == job_id]
    assert mine == [
        ("queued", None),
        ("started", 1),
        ("retrying", 1),
        ("queued", None),
        ("started", 2),
        ("completed", 2),
    ]
    assert all(e["queue"] == queue and isinstance(e["ts"], int) for e in events)


async def test_delayed_job_waits_for_its_time(redis_server: RedisServer, client: Client, queue: str) -> None:
    async with running_worker(redis_server.url, queue):
        job_id = await client.enqueue("t.echo", {}, queue=queue, delay=1.0)
        scheduled = await client.job(job_id)
        info = await client.wait(job_id, timeout=30)
    assert scheduled.status is JobStatus.SCHEDULED
    assert scheduled.run_at_ms is not None and scheduled.enqueued_at_ms is not None
    assert scheduled.run_at_ms - scheduled.enqueued_at_ms == 1000
    assert info.status is JobStatus.COMPLETED
    assert info.started_at_ms is not None and info.started_at_ms >= scheduled.run_at_ms


async def test_priority_queues_are_served_in_order(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    high, low = f"{queue}-high", f"{queue}-low"
    low_ids = [await client.enqueue("t.echo", {}, queue=low) for _ in range(3)]
    high_ids = [await client.enqueue("t.echo", {}, queue=high) for _ in range(3)]
    async with running_worker(redis_server.url, queue, queues=(high, low), concurrency=1):
        infos = [await client.wait(i, timeout=30) for i in high_ids + low_ids]
    starts = [i.started_at_ms or 0 for i in infos]
    assert max(starts[:3]) <= min(starts[3:])


async def test_idempotent_enqueue_with_own_id(redis_server: RedisServer, client: Client, queue: str) -> None:
    first = await client.enqueue("t.echo", {"n": 1}, queue=queue, job_id="order-42")
    second = await client.enqueue("t.echo", {"n": 2}, queue=queue, job_id="order-42")
    assert first == second == "order-42"
    assert (await client.depth(queue))["pending"] == 1


async def test_once_deduplicates_an_id_for_as_long_as_its_record_is_kept(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Without ``once`` a finished job's id runs again; with it, an enqueue does nothing while
    any job with the id is on record, finished ones included: from the client, a batch, and a
    foreign producer's envelope (``"once": true``). Purging the dead record frees the id."""
    count_key = f"runs:{queue}"

    def body(n: int) -> dict[str, Any]:
        return {"count_url": redis_server.url, "count_key": count_key, "n": n}

    async with running_worker(redis_server.url, queue, max_retries=0):
        await client.enqueue("t.count", body(1), queue=queue, job_id="webhook-1", once=True)
        await client.wait("webhook-1", timeout=30, queue=queue)
        await client.enqueue("t.count", body(2), queue=queue, job_id="webhook-1", once=True)
        await client.enqueue_many("t.count", [body(3)], queue=queue, job_ids=["webhook-1"], once=True)
        async with aredis.Redis.from_url(redis_server.url) as r:
            foreign = {"id": "webhook-1", "type": "t.count", "payload": body(4), "once": True}
            await r.rpush(keys.queue_keys(queue).pending, orjson.dumps(foreign))
            await eventually(lambda: _pending_is(client, queue, 0), what="the foreign duplicate dropped")
            assert await r.hgetall(count_key) == {b"webhook-1": b"1"}
            assert (await client.job("webhook-1", queue)).payload == body(1)
            # Without once, the finished job's id is free: it runs again.
            await client.enqueue("t.count", body(5), queue=queue, job_id="webhook-1")
            await client.wait("webhook-1", timeout=30, queue=queue)
            assert await r.hgetall(count_key) == {b"webhook-1": b"2"}
            # A dead job's record is kept until purged; then the id is free for `once` too.
            await client.enqueue("t.reject", {}, queue=queue, job_id="webhook-2", once=True)
            assert (await client.wait("webhook-2", timeout=30, queue=queue)).status is JobStatus.DEAD
            await client.enqueue("t.echo", "again", queue=queue, job_id="webhook-2", once=True)
            assert (await client.job("webhook-2", queue)).status is JobStatus.DEAD
            assert await client.purge_dead(queue, ["webhook-2"]) == 1
            await client.enqueue("t.echo", "again", queue=queue, job_id="webhook-2", once=True)
            assert (await client.wait("webhook-2", timeout=30, queue=queue)).result["echo"] == "again"


async def _pending_is(client: Client, queue: str, count: int) -> bool:
    return (await client.depth(queue))["pending"] == count


async def test_a_batch_enqueue_runs_every_job_once_and_refuses_a_bad_one_before_sending(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """enqueue_many: 1,200 jobs (three round trips) all run once; sent again with their ids,
    none is queued twice; one bad payload among them refuses the batch, naming its index,
    before anything is queued."""
    count_key = f"runs:{queue}"
    payloads = [{"count_url": redis_server.url, "count_key": count_key, "i": i} for i in range(1200)]
    bad = [*payloads[:7], {"not json": {1, 2}}, *payloads[8:]]
    with pytest.raises(ValueError, match="job 7: job cannot be stored as JSON"):
        await client.enqueue_many("t.count", bad, queue=queue)
    with pytest.raises(ValueError, match="job_ids has 1 ids for 1200 payloads"):
        await client.enqueue_many("t.count", payloads, queue=queue, job_ids=["one"])
    assert (await client.depth(queue))["pending"] == 0

    ids = await client.enqueue_many("t.count", payloads, queue=queue)
    assert len(set(ids)) == 1200
    assert await client.enqueue_many("t.count", payloads, queue=queue, job_ids=ids) == ids
    assert (await client.depth(queue))["pending"] == 1200
    later = await client.enqueue_many("t.echo", [1, 2], queue=queue, delay=3600)
    assert (await client.depth(queue))["scheduled"] == 2
    assert (await client.job(later[1], queue)).payload == 2
    async with running_worker(redis_server.url, queue, concurrency=50):
        for job_id in ids:
            assert (await client.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
    async with aredis.Redis.from_url(redis_server.url) as r:
        runs = await r.hgetall(count_key)
    assert len(runs) == 1200 and set(runs.values()) == {b"1"}


async def test_oversized_payload_refused_at_enqueue(redis_server: RedisServer, queue: str) -> None:
    async with Client.from_url(redis_server.url, max_payload_bytes=1000) as small:
        with pytest.raises(PayloadTooLargeError, match="over the 1000 byte limit"):
            await small.enqueue("t.echo", {"blob": "x" * 2000}, queue=queue)
        assert (await small.depth(queue))["pending"] == 0


async def test_finished_records_expire_after_ttl(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue, result_ttl=60):
        job_id = await client.enqueue("t.echo", {}, queue=queue)
        await client.wait(job_id, timeout=30)
    r = aredis.Redis.from_url(redis_server.url)
    ttl = await r.ttl(keys.queue_keys(queue).job(job_id))
    await r.aclose()
    assert 0 < ttl <= 60


async def test_dead_letters_retry_and_purge(redis_server: RedisServer, client: Client, queue: str) -> None:
    async with running_worker(redis_server.url, queue, max_retries=0):
        switch = {"url": redis_server.url, "key": f"switch:{queue}"}
        a = await client.enqueue("t.switch", switch, queue=queue)
        b = await client.enqueue("t.fail", {}, queue=queue)
        await client.wait(a, timeout=30)
        await client.wait(b, timeout=30)
        assert sorted(d.id for d in await client.dead(queue)) == sorted([a, b])
        r = aredis.Redis.from_url(redis_server.url)
        await r.set(switch["key"], 1)
        await r.aclose()
        assert await client.retry_dead(queue, [a]) == [a]
        info = await client.wait(a, timeout=30)
        assert info.status is JobStatus.COMPLETED
    assert await client.purge_dead(queue) == 1
    assert await client.dead(queue) == []
    assert (await client.depth(queue))["dead"] == 0


async def test_jobs_are_listed_by_state_in_the_order_they_will_move(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Queued (next first, a foreign producer's envelope by its own id), running, scheduled
    (soonest due first) and dead jobs, each listed from Redis with its record; pages too."""
    async with running_worker(redis_server.url, queue, max_retries=0, concurrency=1):
        dead = await client.enqueue("t.fail", {}, queue=queue)
        await client.wait(dead, timeout=30)
        running = await client.enqueue("t.sleep", {"seconds": 60}, queue=queue)
        await eventually(
            lambda: _status_is(client, running, queue, JobStatus.RUNNING), what="the sleeper started"
        )
        queued = [await client.enqueue("t.echo", i, queue=queue) for i in range(3)]
        async with aredis.Redis.from_url(redis_server.url) as r:
            await r.rpush(keys.queue_keys(queue).pending, orjson.dumps({"id": "ext-1", "type": "t.echo"}))
        later = await client.enqueue("t.echo", {}, queue=queue, delay=3600)
        sooner = await client.enqueue("t.echo", {}, queue=queue, delay=1800)

        listed = await client.jobs(queue, "queued")
        assert [(j.id, j.status, j.type) for j in listed] == [
            *((job_id, JobStatus.QUEUED, "t.echo") for job_id in queued),
            ("ext-1", JobStatus.QUEUED, "t.echo"),
        ]
        assert [j.payload for j in listed[:3]] == [0, 1, 2]
        assert [j.id for j in await client.jobs(queue, "queued", start=1, count=2)] == queued[1:]
        (sleeper,) = await client.jobs(queue, "running")
        assert (sleeper.id, sleeper.status, sleeper.attempts) == (running, JobStatus.RUNNING, 1)
        assert sleeper.worker is not None and sleeper.started_at_ms is not None
        assert [j.id for j in await client.jobs(queue, "scheduled")] == [sooner, later]
        assert [(j.id, j.status) for j in await client.jobs(queue, "dead")] == [(dead, JobStatus.DEAD)]
        with pytest.raises(ValueError, match="state must be one of queued, scheduled, running, dead"):
            await client.jobs(queue, "completed")
        await client.cancel(running, queue)


async def test_a_listing_shows_entries_as_the_claim_will_see_them(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Pending entries with no record are listed (the claim dead-letters them, so the listing
    agrees with the list's length), under an id only if the claim will take it; a record of
    another type is refused naming its key, and a dead-set member with no record is left out."""
    k = keys.queue_keys(queue)
    good = await client.enqueue("t.echo", {}, queue=queue)
    garbage = [b"\xff\xfe not text", b"x" * 300, b' {"id": "spaced"}', orjson.dumps({"id": "bad id!"})]
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.rpush(k.pending, *garbage)
        await r.zadd(k.dead, {'{"id": "z"}': 1})
        listed = await client.jobs(queue, "queued")
        assert [j.id for j in listed] == [good, "", "", "spaced", ""]  # JSON may open with a space
        assert {j.status for j in listed} == {JobStatus.QUEUED}
        assert [j.envelope for j in listed[1:]] == [g.decode(errors="replace") for g in garbage]
        assert await client.jobs(queue, "dead") == []
        await r.set(k.job(good), "overwritten")
        with pytest.raises(ForeignWrite, match=re.escape(k.job(good))):
            await client.jobs(queue, "queued")


async def test_a_job_is_found_without_its_queue_among_many(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Asked without a queue, every known queue is looked in (the first by name answers); a
    record of another type where the job would be is refused naming its key."""
    names = [f"{queue}-{i:04d}" for i in range(1500)]  # two of the lookup's pipelines
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.sadd(keys.QUEUES, *names)
        await client.enqueue("t.echo", "late", queue=names[1200], job_id=f"{queue}-job")
        await client.enqueue("t.echo", "early", queue=names[700], job_id=f"{queue}-job")
        info = await client.job(f"{queue}-job")
        assert (info.queue, info.payload) == (names[700], "early")
        with pytest.raises(JobNotFoundError):
            await client.job(f"{queue}-nothing")
        await r.set(keys.queue_keys(names[5]).job(f"{queue}-job"), "text")
        with pytest.raises(ForeignWrite, match=re.escape(keys.queue_keys(names[5]).job(f"{queue}-job"))):
            await client.job(f"{queue}-job")
        await r.srem(keys.QUEUES, *names)


async def _status_is(client: Client, job_id: str, queue: str, status: JobStatus) -> bool:
    return (await client.job(job_id, queue)).status is status


async def test_a_redriven_job_reads_as_queued_not_as_its_last_run(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue, max_retries=0):
        job_id = await client.enqueue("t.fail", {}, queue=queue)
        dead = await client.wait(job_id, timeout=30)
    assert dead.worker is not None and dead.started_at_ms is not None
    assert await client.retry_dead(queue, [job_id]) == [job_id]
    info = await client.job(job_id, queue)
    assert (info.status, info.attempts, info.worker, info.started_at_ms, info.finished_at_ms) == (
        JobStatus.QUEUED,
        0,
        None,
        None,
        None,
    )
    assert info.error == dead.error  # the latest failure stays readable


async def test_dead_set_is_capped(redis_server: RedisServer, client: Client, queue: str) -> None:
    async with running_worker(redis_server.url, queue, max_retries=0, dead_letter_max=3):
        for _ in range(6):
            await client.enqueue("t.fail", {}, queue=queue)
        # Not a wait for each job: one capped out before its wait began has no record left,
        # which a wait given the queue takes for a job not claimed yet.
        await eventually(lambda: _all_settled(client, queue), what="every job settled")
    assert (await client.depth(queue))["dead"] == 3


async def _all_settled(client: Client, queue: str) -> bool:
    depth = await client.depth(queue)
    return depth["pending"] == depth["active"] == 0


async def test_many_jobs_concurrently_each_once(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    count_key = f"runs:{queue}"
    payload = {"count_url": redis_server.url, "count_key": count_key}
    ids = [await client.enqueue("t.count", payload, queue=queue) for _ in range(200)]
    async with running_worker(redis_server.url, queue, concurrency=20):
        for job_id in ids:
            await client.wait(job_id, timeout=60)
    r = aredis.Redis.from_url(redis_server.url)
    runs = await r.hgetall(count_key)
    await r.aclose()
    assert len(runs) == 200 and set(runs.values()) == {b"1"}


async def test_an_error_holding_bytes_that_are_not_text_is_retried_like_any_other(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """A handler logs and raises text with a lone surrogate (a file name from os.fsdecode):
    the log call does not raise, and the error is retried and then dead-lettered as the
    handler's ValueError, not as a failure of botrix's own on the first attempt."""
    worker = spawn(redis_server.url, queue)
    job_id = await client.enqueue("t.undecodable", queue=queue, max_retries=1)
    info = await client.wait(job_id, timeout=30)
    assert (info.status, info.attempts) == (JobStatus.DEAD, 2)
    assert info.error is not None and info.error["type"] == "ValueError"
    assert info.error["message"] == "cannot read report-\\udcff.csv"
    reading = [e for e in worker.events() if e.get("event") == "reading"]
    assert len(reading) == 2
    assert (reading[0]["file"], reading[0]["parts"], reading[0]["size"]) == (
        "report-\\udcff.csv",
        {"1": "report-\\udcff.csv"},
        str(2**70),
    )
    cyclic = next(e for e in worker.events() if e.get("event") == "cyclic")
    assert cyclic["job_id"] == job_id and cyclic["log_error"].startswith("RecursionError: ")
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_queue_wait_counts_from_when_the_job_could_run(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """Each job's record says it was enqueued an hour ago. One that was pending all along
    waited that hour; a delayed one, a retry and a re-driven dead letter waited only since they
    fell due or came back, not since the enqueue (the wait feeds the queue-latency alert)."""
    hour_ms = 3_600_000
    k = keys.queue_keys(queue)

    async def backdate(job_id: str) -> None:
        async with aredis.Redis.from_url(redis_server.url) as r:
            enqueued = int(await r.hget(k.job(job_id), "enqueued_at") or 0)
            await r.hset(k.job(job_id), "enqueued_at", enqueued - hour_ms)

    waiting = await client.enqueue("t.echo", "waiting", queue=queue)
    delayed = await client.enqueue("t.echo", "delayed", queue=queue, delay=0.5)
    retried = await client.enqueue("t.flaky", {"fail_times": 1}, queue=queue)
    redriven = await client.enqueue("t.reject", {}, queue=queue)
    for job_id in (waiting, delayed, retried, redriven):
        await backdate(job_id)
    worker = spawn(redis_server.url, queue)
    for job_id in (waiting, delayed, retried):
        assert (await client.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
    assert (await client.wait(redriven, timeout=60)).status is JobStatus.DEAD
    await client.retry_dead(queue, [redriven])
    await worker.wait_for("job.dead", count=2)

    def waits(event: str, job_id: str) -> list[int]:
        return [
            int(e["queue_wait_ms"])
            for e in worker.events()
            if e.get("event") == event and e.get("job_id") == job_id
        ]

    [long_wait] = waits("job.succeeded", waiting)
    assert long_wait >= hour_ms
    [after_delay] = waits("job.succeeded", delayed)
    [first_try, second_try] = waits("job.failed", retried) + waits("job.succeeded", retried)
    [before_redrive, after_redrive] = waits("job.failed", redriven)
    assert first_try >= hour_ms and before_redrive >= hour_ms
    assert max(after_delay, second_try, after_redrive) < hour_ms / 6  # ten minutes: far from any noise
    # A failure's log line carries the handler's stack, as the record does.
    failed = next(e for e in worker.events() if e.get("event") == "job.failed" and e["job_id"] == retried)
    assert failed["error"] == "ConnectionError" and failed["message"] == "flaky attempt 1"
    assert failed["traceback"].startswith("Traceback (most recent call last):")
    assert 'in flaky\n    raise ConnectionError(f"flaky attempt {ctx.attempt}")' in failed["traceback"]
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_wait_keeps_its_timeout_however_short(client: Client, queue: str) -> None:
    """No worker runs the job: every wait ends in TimeoutError, including those whose timeout
    lands while redis-py sends a command (on Python 3.11 its asyncio.wait_for can swallow that
    cancel, and a third of such waits hung until the job ended)."""
    job_id = await client.enqueue("t.echo", {}, queue=queue)
    for i in range(20):
        async with asyncio.timeout(30):  # the guard: a wait that lost its own timeout
            with pytest.raises(TimeoutError):
                await client.wait(job_id, timeout=(i % 20) / 5_000, queue=queue)


async def test_wait_steps_over_foreign_messages_on_the_event_channel(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Someone publishes text and a JSON array on the queue's channel: the wait goes on and
    returns the job's end."""
    job_id = await client.enqueue("t.echo", "x", queue=queue)
    waiting = asyncio.create_task(client.wait(job_id, timeout=60, queue=queue))
    async with aredis.Redis.from_url(redis_server.url) as r:
        channel = keys.queue_keys(queue).events
        await eventually(lambda: r.publish(channel, "hello"), what="the wait subscribed")
        await r.publish(channel, "[1, 2]")
    async with running_worker(redis_server.url, queue):
        assert (await waiting).status is JobStatus.COMPLETED


async def test_a_stale_end_event_does_not_end_a_wait_the_record_says_is_not_over(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """An end event for a job that is still queued (on a Redis Cluster, the late copy of an
    earlier run's end, before a re-drive): the wait reads the record, goes on waiting, and
    returns the job's real end."""
    job_id = await client.enqueue("t.echo", "x", queue=queue)
    waiting = asyncio.create_task(client.wait(job_id, timeout=60, queue=queue))
    async with aredis.Redis.from_url(redis_server.url) as r:
        channel = keys.queue_keys(queue).events
        stale = orjson.dumps({"event": "dead", "job_id": job_id, "queue": queue, "ts": 1})
        await eventually(lambda: r.publish(channel, stale), what="the wait subscribed")
    async with running_worker(redis_server.url, queue):
        assert (await waiting).status is JobStatus.COMPLETED


async def test_an_empty_selection_of_dead_jobs_retries_and_purges_none(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """A filter over the dead letters that matched nothing: no job is re-driven or purged
    (an empty list used to mean every dead job); None means every one."""
    dead = [await client.enqueue("t.reject", {}, queue=queue) for _ in range(2)]
    async with running_worker(redis_server.url, queue):
        for job_id in dead:
            await client.wait(job_id, timeout=30)
    assert await client.retry_dead(queue, []) == []
    assert await client.purge_dead(queue, []) == 0
    assert (await client.depth(queue))["dead"] == 2
    assert await client.purge_dead(queue, None) == 2


async def test_every_dead_job_is_retried_and_purged_a_chunk_per_call(
    own_redis: RedisServer, queue: str
) -> None:
    """`dead retry|purge --all` on a large dead set: one script over 700,000 dead jobs held
    Redis past the caller's timeout. They go DEAD_CHUNK (1,000) a call, all of them. (A server
    of its own: it counts the script calls of the whole server.)"""
    async with Client.from_url(own_redis.url) as client:
        await _dead_chunks(own_redis, client, queue)


async def _dead_chunks(redis_server: RedisServer, client: Client, queue: str) -> None:
    n = 2 * DEAD_CHUNK + 500
    ids = [await client.enqueue("t.reject", {}, queue=queue) for _ in range(n)]

    async def all_dead() -> bool:
        return (await client.depth(queue))["dead"] == n

    async def calls(r: aredis.Redis) -> int:  # scripts run (a NOSCRIPT reply is a failed call)
        stats = (await r.info("commandstats")).get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))

    async with aredis.Redis.from_url(redis_server.url) as r:
        async with running_worker(redis_server.url, queue):
            await eventually(all_dead, what="every job dead")
        before = await calls(r)
        assert sorted(await client.retry_dead(queue)) == sorted(ids)
        assert await calls(r) - before == 3
        assert (await client.depth(queue))["pending"] == n
        async with running_worker(redis_server.url, queue):
            await eventually(all_dead, what="every job dead again")
        before = await calls(r)
        assert await client.purge_dead(queue) == n
        assert await calls(r) - before == 3
    assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}


async def test_run_at_must_say_its_timezone(client: Client, queue: str) -> None:
    """A naive datetime would be read as local time; an aware one schedules the job."""
    soon = datetime.now(UTC) + timedelta(seconds=60)
    with pytest.raises(ValueError, match="run_at must be timezone-aware"):
        await client.enqueue("t.echo", {}, queue=queue, run_at=soon.replace(tzinfo=None))
    job_id = await client.enqueue("t.echo", {}, queue=queue, run_at=soon)
    assert (await client.job(job_id, queue)).status is JobStatus.SCHEDULED
