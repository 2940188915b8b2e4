"""botrix limit: at most N jobs of a queue start in any window, across every worker."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import redis.asyncio as aredis

from botrix import keys
from botrix.client import Client
from botrix.model import Claimed, JobStatus, RateLimit
from botrix.store import Consumer, ForeignWrite, Store
from tests.conftest import eventually, running_worker
from tests.redisproc import RedisServer
from tests.test_cli import run
from tests.test_http import get, samples


async def _completed(client: Client, ids: list[str], queue: str) -> int:
    return sum([(await client.job(i, queue)).status is JobStatus.COMPLETED for i in ids])


async def _cut_short(base: str, queue: str) -> float:
    """How many claims the queue's limit cut short on this worker (its metric)."""
    found = samples((await get(base, "/metrics"))[1])
    return float(found.get(("botrix_queue_rate_limited_total", (("queue", queue),)), 0))


async def test_one_limit_holds_every_worker_and_a_change_is_seen(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Two workers share 5 starts an hour: 5 jobs run, 15 wait, while the lower-priority queue
    is served all along. Raising the limit lets 3 more run; lifting it, the rest."""
    hi, lo = f"{queue}-hi", f"{queue}-lo"
    assert await client.rate_limit(hi) is None
    limit = await client.set_rate_limit(hi, 5, 3600)
    assert (limit.max, limit.per, limit.used) == (5, 3600, 0)
    ids = [await client.enqueue("t.echo", i, queue=hi) for i in range(20)]
    opts = {"queues": (hi, lo), "http_port": 0, "http_host": "127.0.0.1", "concurrency": 10}
    async with (
        running_worker(redis_server.url, hi, **opts) as one,
        running_worker(redis_server.url, hi, **opts) as two,
    ):
        bases = []
        for worker in (one, two):
            port = await eventually(lambda w=worker: w.http and w.http.port, what="http port")  # type: ignore[misc]
            bases.append(f"http://127.0.0.1:{port}")
        for base in bases:  # each worker has been held back by the limit at least once
            await eventually(lambda b=base: _cut_short(b, hi), what="a claim cut short by the limit")  # type: ignore[misc]
        assert await _completed(client, ids, hi) == 5
        assert (await client.depth(hi))["pending"] == 15
        assert (await client.rate_limit(hi)) == RateLimit(5, 3600, 5)
        _, body, _ = await get(bases[0], "/health")
        assert body["checks"]["rate_limited_queues"] == [hi]
        assert (await get(bases[0], "/ready"))[0] == 200  # a limit is a choice, not a fault
        served = [await client.enqueue("t.echo", i, queue=lo) for i in range(5)]
        for job_id in served:
            assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED

        await client.set_rate_limit(hi, 8, 3600)
        await eventually(lambda: _count_is(client, ids, hi, 8), what="3 more jobs after the raise")
        for base in bases:
            before = await _cut_short(base, hi)
            await eventually(lambda b=base, n=before: _more(b, hi, n), what="the raised limit reached")  # type: ignore[misc]
        assert await _completed(client, ids, hi) == 8

        await client.clear_rate_limit(hi)
        for job_id in ids:
            assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
        assert await client.rate_limit(hi) is None


async def _count_is(client: Client, ids: list[str], queue: str, count: int) -> bool:
    return await _completed(client, ids, queue) >= count


async def _more(base: str, queue: str, before: float) -> bool:
    return await _cut_short(base, queue) > before


async def test_no_window_ever_holds_more_starts_than_the_limit(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """3 starts per 0.5 s, 15 jobs, 10 slots: by the Redis clock that stamps each start, no 4
    starts fall within 0.5 s of each other, at the edges of windows included (a fixed window
    lets 6 through there)."""
    await client.set_rate_limit(queue, 3, 0.5)
    ids = [await client.enqueue("t.echo", i, queue=queue) for i in range(15)]
    async with running_worker(redis_server.url, queue, concurrency=10):
        infos = [await client.wait(job_id, timeout=60) for job_id in ids]
    assert all(info.status is JobStatus.COMPLETED and info.attempts == 1 for info in infos)
    starts = sorted(info.started_at_ms or 0 for info in infos)
    assert all(later - earlier >= 500 for earlier, later in zip(starts, starts[3:], strict=False)), starts


async def test_claims_hammering_the_limit_never_put_more_into_a_window(
    store: Store, client: Client, queue: str
) -> None:
    """Claims as fast as one connection sends them, as a fleet at the limit would: by the Redis
    clock, no 5 of the jobs claimed start within 0.2 s, and a claim that gets nothing says how
    long until the next may, never more than the window."""
    await client.set_rate_limit(queue, 4, 0.2)
    for i in range(12):
        await client.enqueue("t.echo", i, queue=queue)
    consumer = _consumer()
    claimed: list[Claimed] = []
    async with asyncio.timeout(60):
        while len(claimed) < 12:
            exchanged = await store.exchange(queue, [], 3, consumer, lane=0)
            claimed += exchanged.claimed
            if len(exchanged.claimed) < 3 and len(claimed) < 12:
                assert 0 < exchanged.limited_s <= 0.2
    starts = sorted([(await client.job(job.job_id, queue)).started_at_ms or 0 for job in claimed])
    assert all(later - earlier >= 200 for earlier, later in zip(starts, starts[4:], strict=False)), starts


async def test_a_garbled_limit_holds_the_queue_as_damaged_until_repaired(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """A limit key or log entry botrix did not write is named in /ready and in the CLI, the
    queue's claims stop (a job running meanwhile is still written back), and a repair is seen."""
    k = keys.queue_keys(queue)
    await client.set_rate_limit(queue, 100, 60)
    async with (
        aredis.Redis.from_url(redis_server.url) as r,
        running_worker(redis_server.url, queue, http_port=0, http_host="127.0.0.1") as worker,
    ):
        port = await eventually(lambda: worker.http and worker.http.port, what="http port")
        base = f"http://127.0.0.1:{port}"
        running = await client.enqueue("t.sleep", {"seconds": 1}, queue=queue)
        await eventually(lambda: _running(client, running, queue), what="a job running")
        await r.hset(k.rate, "max", "lots")

        async def damaged(what: str) -> bool:
            status, body, _ = await get(base, "/ready")
            return status == 503 and what in body.get("detail", {}).get(queue, "")

        await eventually(lambda: damaged("is not a rate limit"), timeout=60, what="the limit named")
        assert (await client.wait(running, timeout=30)).status is JobStatus.COMPLETED
        waiting = await client.enqueue("t.echo", 1, queue=queue)
        shown = await asyncio.to_thread(run, "--redis-url", redis_server.url, "limit", "--queue", queue)
        assert shown.returncode == 3 and f"{k.rate} is not a rate limit" in shown.stderr
        async with r.pipeline(transaction=True) as pipe:  # one repair and a new damage, at once
            pipe.hset(k.rate, "max", 100)
            pipe.lpush(k.rate_log, "garbage")
            await pipe.execute()
        await eventually(lambda: damaged("is not a rate log"), timeout=60, what="the log named")
        assert (await client.job(waiting, queue)).status is JobStatus.QUEUED
        await r.delete(k.rate_log)
        assert (await client.wait(waiting, timeout=60)).status is JobStatus.COMPLETED
        assert (await get(base, "/ready"))[0] == 200


async def _running(client: Client, job_id: str, queue: str) -> bool:
    return (await client.job(job_id, queue)).status is JobStatus.RUNNING


def test_the_cli_sets_shows_and_lifts_a_limit(redis_server: RedisServer, queue: str) -> None:
    url = ["--redis-url", redis_server.url]
    set_ = run(*url, "limit", "--queue", queue, "--max", "50", "--per", "1.5")
    assert set_.returncode == 0, set_.stderr
    expected = {"queue": queue, "rate_limit": {"max": 50, "per_s": 1.5, "used": 0}}
    assert json.loads(set_.stdout) == expected
    assert json.loads(run(*url, "limit", "--queue", queue).stdout) == expected
    listed = json.loads(run(*url, "queues", "--queue", queue).stdout)
    assert listed[queue]["rate_limit"] == expected["rate_limit"]
    lifted = run(*url, "limit", "--queue", queue, "--off")
    assert lifted.returncode == 0 and json.loads(lifted.stdout) == {"queue": queue, "rate_limit": None}
    assert json.loads(run(*url, "queues", "--queue", queue).stdout)[queue]["rate_limit"] is None


def _consumer() -> Consumer:
    return Consumer("w-direct", 60_000, 1 << 20, 60, 100)


async def test_a_widened_window_keeps_counting_the_starts_already_in_it(
    store: Store, client: Client, queue: str, redis_server: RedisServer
) -> None:
    """5 starts under "5 per 0.2 s", then the window widened to a minute: after the old window
    (and any TTL the log could have had) has passed, no claim gets through, and `used` says 5."""
    await client.set_rate_limit(queue, 5, 0.2)
    for i in range(10):
        await client.enqueue("t.echo", i, queue=queue)
    assert len((await store.exchange(queue, [], 10, _consumer(), lane=0)).claimed) == 5
    assert await client.set_rate_limit(queue, 5, 60) == RateLimit(5, 60, 5)
    await asyncio.sleep(2.5)
    held = await store.exchange(queue, [], 10, _consumer(), lane=0)
    assert held.claimed == [] and held.limited_s > 0
    assert await client.rate_limit(queue) == RateLimit(5, 60, 5)
    assert redis_server.client().ttl(keys.queue_keys(queue).rate_log) == -1


async def test_used_is_the_count_in_the_window_now(store: Store, client: Client, queue: str) -> None:
    await client.set_rate_limit(queue, 5, 0.2)
    for i in range(5):
        await client.enqueue("t.echo", i, queue=queue)
    await store.exchange(queue, [], 5, _consumer(), lane=0)
    assert await client.rate_limit(queue) == RateLimit(5, 0.2, 5)
    await asyncio.sleep(0.3)  # the five leave the window; no claim has looked since
    assert await client.rate_limit(queue) == RateLimit(5, 0.2, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("max", "1.5"), ("max", "inf"), ("max", "0x10"), ("max", " 10 "), ("per_ms", "inf"), ("used", "-3")],
)
async def test_limit_values_botrix_never_writes_are_named_not_read(
    store: Store, client: Client, queue: str, redis_server: RedisServer, field: str, value: str
) -> None:
    """Lua's tonumber would take most of these (a fraction of a claim, a window that never
    ends, hex); each is a damaged queue instead, and lifting the limit repairs it."""
    k = keys.queue_keys(queue)
    await client.set_rate_limit(queue, 10, 1)
    job_id = await client.enqueue("t.echo", 1, queue=queue)
    redis_server.client().hset(k.rate, field, value)
    with pytest.raises(ForeignWrite, match="is not a rate limit"):
        await store.exchange(queue, [], 5, _consumer(), lane=0)
    with pytest.raises(ForeignWrite, match="is not a rate limit"):
        await client.rate_limit(queue)
    with pytest.raises(ForeignWrite, match="is not a rate limit"):
        await client.set_rate_limit(queue, 20, 1)
    assert (await client.job(job_id, queue)).status is JobStatus.QUEUED
    await client.clear_rate_limit(queue)
    assert [c.job_id for c in (await store.exchange(queue, [], 5, _consumer(), lane=0)).claimed] == [job_id]


@pytest.mark.parametrize(("max_jobs", "per"), [(0, 1), (True, 1), (5, True), (5, 0), (5, math.inf), (5, 1e9)])
def test_a_rate_limit_out_of_bounds_is_refused(max_jobs: int, per: float) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimit(max_jobs, per)


async def test_setting_a_limit_over_leftovers_of_none_does_not_break_the_queue(
    client: Client, queue: str, redis_server: RedisServer
) -> None:
    """A stray log, or `used` alone, means nothing without a limit (claims ignore them): setting
    a limit then starts clean instead of failing halfway with the limit written."""
    k = keys.queue_keys(queue)
    r = redis_server.client()
    r.rpush(k.rate_log, "garbage")
    r.hset(k.rate, "used", "-1")
    assert await client.set_rate_limit(queue, 5, 2) == RateLimit(5, 2, 0)
    assert r.llen(k.rate_log) == 0


async def test_the_log_holds_an_entry_per_thousandth_of_the_window_not_per_claim(
    store: Store, client: Client, queue: str, redis_server: RedisServer
) -> None:
    """50 one-job claims under a one-minute window (slices of 60 ms): the log grows by one
    entry per slice they fell in, by the Redis clock, not by one per claim; the count is whole."""
    await client.set_rate_limit(queue, 1000, 60)
    for i in range(50):
        await client.enqueue("t.echo", i, queue=queue)
    r = redis_server.client()
    start_s, start_us = r.time()
    for _ in range(50):
        assert len((await store.exchange(queue, [], 1, _consumer(), lane=0)).claimed) == 1
    end_s, end_us = r.time()
    elapsed_ms = (end_s - start_s) * 1000 + (end_us - start_us) / 1000
    assert r.llen(keys.queue_keys(queue).rate_log) <= elapsed_ms / 60 + 2
    assert await client.rate_limit(queue) == RateLimit(1000, 60, 50)
