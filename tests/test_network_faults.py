"""Network faults between a worker and Redis (marker: chaos, run by `make test`).

A real worker process reaches Redis through :class:`tests.faultproxy.FaultProxy` (its
``--redis-url`` is the proxy's port); the test's own client and the counting handler talk to
Redis directly, so what the faults do to the worker is measured, not disturbed. Every handler
run is counted in Redis by job id (``t.count``). Each scenario asserts: no crash, no stuck job,
no silent stop of consumption (bullmq #648, dramatiq #207), nothing lost, duplicates only where
a fault could cause them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aredis
import uvloop

from botrix import keys
from botrix.client import Client
from botrix.errors import JobNotFoundError
from botrix.model import JobInfo, JobStatus, Outcome, Settlement
from botrix.runner import ORPHANS_DRAIN_S
from botrix.store import Connection, Consumer, Store, StoreUnavailable, _load_script
from botrix.waits import Waits
from tests.conftest import WorkerProcess, eventually
from tests.faultproxy import FaultProxy
from tests.redisproc import RedisServer
from tests.test_processes import enqueue_counted, run_counts

pytestmark = pytest.mark.chaos
Spawn = Callable[..., WorkerProcess]
#: A probe that does not answer within this is as good as a hung one (Kubernetes uses 1 s).
PROBE_TIMEOUT_S = 2.0


async def test_scripts_flushed_between_reload_and_retry_back_off_the_caller(
    own_redis: RedisServer, queue: str
) -> None:
    """Redis forgets the scripts (a restart, or an operator's SCRIPT FLUSH) just after the
    exchange reloaded them and before its retry: the retry's NOSCRIPT must come out as
    StoreUnavailable, which the runner backs off on, not as a redis-py error that would stop
    the worker; the next call loads the script again and claims the job."""
    # A server of its own: SCRIPT FLUSH is server-wide, and any other client of a shared one
    # that runs `exchange` meanwhile (this failed twice in CI's Redis 6.2 run, never alone)
    # would load the script again between the flush and the retry.
    consumer = Consumer(
        worker_id=f"w-{queue}", lease_ms=30_000, max_envelope_bytes=1 << 20, result_ttl=600, dead_cap=100
    )
    async with FaultProxy(own_redis.port) as proxy, Client.from_url(own_redis.url) as client:
        store = Store(Connection(proxy.url(), socket_timeout=10.0))
        admin = aredis.Redis(port=own_redis.port)
        try:
            job_id = await client.enqueue("t.echo", {}, queue=queue)
            await admin.script_flush()
            # The last line of exchange.lua, sent by SCRIPT LOAD: the chunk holding it ends the
            # command (a marker earlier in the text could stall the load itself, on a long script).
            stalled = proxy.stall_after(b"return {refused, claimed, rejected, paused, limited}")
            call = asyncio.create_task(store.exchange(queue, [], 1, consumer, lane=0))
            await asyncio.wait_for(stalled.wait(), timeout=10)

            async def loaded() -> bool:
                return bool((await admin.script_exists(_EXCHANGE_SHA.decode()))[0])

            # The proxy has sent the load on; Redis may not have run it yet, and a flush that
            # came first would leave the retry a script to find (this failed once in CI's 6.2 run).
            await eventually(loaded, what="Redis running the SCRIPT LOAD whose reply is held")
            await admin.script_flush()  # its reply is still held
            await proxy.resume()
            with pytest.raises(StoreUnavailable, match="NoScriptError"):
                await asyncio.wait_for(call, timeout=10)
            _, claimed, _, _, _ = await store.exchange(queue, [], 1, consumer, lane=0)
            assert [c.job_id for c in claimed] == [job_id]
        finally:
            await admin.aclose()
            await store.aclose()


class ResetCrash(AssertionError):
    """The worker died of uvloop's "handler is closed" RuntimeError after a connection reset.

    Under uvloop (the worker's loop) the first command on a pooled connection that the peer
    reset while it sat idle raises RuntimeError, not OSError (MagicStack/uvloop#506). These
    tests found it crashing the worker (the component's task died, the TaskGroup exited 1);
    ``Store._call`` now turns it into StoreUnavailable. A distinct type names a regression.
    """


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(redis_server.port) as p:
        yield p


def alive(worker: WorkerProcess) -> None:
    """Fail at once, with the end of its log, if the worker process has exited."""
    if worker.proc.poll() is not None:
        tail = [e.get("line") or e.get("event") for e in worker.events()[-3:]]
        crashed = ResetCrash if "the handler is closed" in worker.log_path.read_text() else AssertionError
        raise crashed(f"worker exited ({worker.proc.returncode}): {tail}")


async def wait_event(worker: WorkerProcess, event: str, count: int = 1, timeout: float = 30) -> None:
    """``worker.wait_for``, but a crash is reported as what it is (see :func:`alive`)."""
    try:
        await worker.wait_for(event, count=count, timeout=timeout)
    except AssertionError:
        alive(worker)
        raise


async def completed(
    client: Client, worker: WorkerProcess, job_id: str, queue: str, timeout: float = 30
) -> None:
    """Wait (a guard, not a timing check) until the job is completed; fail fast if the worker died."""

    async def done() -> bool:
        alive(worker)
        try:
            return (await client.job(job_id, queue)).status is JobStatus.COMPLETED
        except JobNotFoundError:  # a raw push has no record until a worker claims it
            return False

    await eventually(done, timeout=timeout, what=f"job {job_id} completed")


async def settled(client: Client, queue: str) -> bool:
    d = await client.depth(queue)
    return d["pending"] == d["active"] == d["scheduled"] == 0


async def assert_every_job_completed(
    client: Client, worker: WorkerProcess, queue: str, ids: list[str], timeout: float = 60
) -> None:
    """Wait (a guard, not a timing check) until every job is completed; say which are not."""

    async def unfinished() -> list[JobInfo]:
        infos = [await client.job(i, queue) for i in ids]
        return [info for info in infos if info.status is not JobStatus.COMPLETED]

    async def all_done() -> bool:
        alive(worker)
        return await settled(client, queue) and not await unfinished()

    try:
        await eventually(all_done, timeout=timeout, what="every job completed")
    except AssertionError:
        alive(worker)
        stuck = await unfinished()
        detail = [(i.id, i.status.value, i.attempts, i.worker) for i in stuck[:10]]
        raise AssertionError(
            f"{len(stuck)} unfinished, depth {await client.depth(queue)}: {detail}"
        ) from None
    assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}


def assert_no_crash(worker: WorkerProcess) -> None:
    """Still running, and nothing in its log but structured lines below error level."""
    assert worker.proc.poll() is None, f"worker exited with {worker.proc.returncode}"
    assert_clean_log(worker)


def assert_clean_log(worker: WorkerProcess) -> None:
    """Nothing in the worker's log but structured lines below error level."""
    bad = [
        e
        for e in worker.events()
        if e.get("event") == "<non-json>" or e.get("level") in ("error", "critical")
    ]
    assert bad == [], bad[:5]


async def stop(worker: WorkerProcess) -> None:
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def probe(port: int, path: str) -> int:
    """One probe request with a short client timeout: a slow answer fails the test."""
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status


def http_port(worker: WorkerProcess) -> int:
    return int(next(e["port"] for e in worker.events() if e.get("event") == "http.listening"))


async def test_cutting_live_connections_while_jobs_flow_loses_nothing(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """Connections reset again and again (some cuts followed by a spell of refused connects)
    while 300 jobs run: every job completes, duplicates stay within the jobs that were in
    flight at the cuts, nothing is left leased, and the worker still consumes afterwards."""
    concurrency = 4
    rng = random.Random(2024)
    url = redis_server.url
    # A short lease: a claim whose reply a cut swallowed is recovered within seconds.
    worker = spawn(proxy.url(), queue, "--concurrency", str(concurrency), "--lease-seconds", "4")
    # 300 x 50 ms over 4 slots cannot finish in under 3.75 s: the cuts land while jobs flow.
    ids = await enqueue_counted(client, url, queue, 300, sleep=0.05)
    await wait_event(worker, "job.succeeded", count=5)
    cuts = under_load = refusals = 0
    while cuts < 12:
        await asyncio.sleep(rng.uniform(0.1, 0.4))
        depth = await client.depth(queue)
        under_load += depth["pending"] + depth["active"] > 0
        if cuts % 4 == 3:
            proxy.refuse()
            await proxy.cut()
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            await proxy.resume()
            refusals += 1
        else:
            await proxy.cut()
        cuts += 1
    accepted_at_last_cut = proxy.accepted

    await assert_every_job_completed(client, worker, queue, ids)
    counts = await run_counts(url, f"runs:{queue}")
    lost = [i for i in ids if counts.get(i, 0) == 0]
    duplicates = sum(counts.values()) - len(counts)
    print(
        f"cuts: jobs={len(ids)} cuts={cuts} (under load {under_load}, with refusal {refusals}) "
        f"resets={proxy.resets} reconnects={proxy.accepted} lost={len(lost)} duplicates={duplicates}"
    )
    assert lost == []
    assert duplicates <= cuts * concurrency
    assert under_load >= 3, "the cuts should land while jobs are still flowing"
    assert "redis.unavailable" in worker.names()  # the refusals were noticed ...

    # ... and consumption goes on after the last cut, over fresh connections.
    [final] = await enqueue_counted(client, url, queue, 1)
    await completed(client, worker, final, queue)
    assert proxy.accepted > accepted_at_last_cut
    assert_no_crash(worker)
    await stop(worker)


async def test_stalled_network_hangs_neither_the_worker_nor_its_probes(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """No byte moves for longer than the client's socket timeout (5 s) while jobs run: the
    probes answer at once throughout (/live 200, /ready 503), the worker logs the outage and
    its end, and every job, including those queued during the stall, completes afterwards."""
    url = redis_server.url
    concurrency = 4
    worker = spawn(
        proxy.url(),
        queue,
        "--concurrency",
        str(concurrency),
        # Longer than the stall, so leases of the jobs running through it survive; a claim
        # whose request the stall delivered late (reply lost) comes back within the test.
        "--lease-seconds",
        "15",
        "--http-port",
        "0",
        "--http-host",
        "127.0.0.1",
    )
    await wait_event(worker, "http.listening")
    port = http_port(worker)
    await eventually(lambda: _status_is(port, "/ready", 200), what="ready")

    before = await enqueue_counted(client, url, queue, 20)
    for job_id in before:
        await completed(client, worker, job_id, queue)
    running = await enqueue_counted(client, url, queue, concurrency, sleep=1.0)
    await wait_event(worker, "job.started", count=len(before) + len(running))

    stalled_at = time.monotonic()
    proxy.stall()
    during = await enqueue_counted(client, url, queue, 10)
    live_checks = 0

    async def unready_while_live() -> bool:
        nonlocal live_checks
        alive(worker)
        assert await probe(port, "/live") == 200
        live_checks += 1
        return await probe(port, "/ready") == 503 and "redis.unavailable" in worker.names()

    await eventually(unready_while_live, timeout=30, what="/ready 503 and redis.unavailable")
    for _ in range(5):  # the stall goes on a little longer: the probes keep answering
        assert await probe(port, "/live") == 200
        assert await probe(port, "/ready") == 503
        await asyncio.sleep(0.2)
    assert worker.proc.poll() is None

    stall_s = time.monotonic() - stalled_at
    await proxy.resume()
    await wait_event(worker, "redis.recovered")
    await eventually(lambda: _status_is(port, "/ready", 200), timeout=30, what="ready again")

    ids = before + running + during
    await assert_every_job_completed(client, worker, queue, ids)
    [after] = await enqueue_counted(client, url, queue, 1)
    await completed(client, worker, after, queue)
    counts = await run_counts(url, f"runs:{queue}")
    assert [i for i in [*ids, after] if counts.get(i, 0) == 0] == []
    assert sum(counts.values()) - len(counts) <= concurrency
    print(f"stall: {stall_s:.1f} s, probes answered during it={live_checks + 5}, runs={sum(counts.values())}")
    assert await probe(port, "/live") == 200
    assert_no_crash(worker)
    await stop(worker)


async def _status_is(port: int, path: str, status: int) -> bool:
    try:
        return await probe(port, path) == status
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_slow_network_still_runs_every_job_once(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """Every chunk held 50 ms each way: slower, but every job runs exactly once."""
    proxy.set_delay(0.05)
    worker = spawn(proxy.url(), queue, "--concurrency", "8", "--lease-seconds", "10")
    ids = await enqueue_counted(client, redis_server.url, queue, 100)
    await assert_every_job_completed(client, worker, queue, ids)
    assert await run_counts(redis_server.url, f"runs:{queue}") == dict.fromkeys(ids, 1)
    assert_no_crash(worker)
    await stop(worker)


async def blocked_through(r: aredis.Redis, proxy: FaultProxy) -> bool:
    """True when one of the proxy's connections is blocked in the waker's BLMOVE."""
    ours = proxy.upstream_addresses()
    return any(
        c["addr"] in ours and c["cmd"] == "blmove" and "b" in c["flags"] for c in await r.client_list()
    )


async def push_raw(r: aredis.Redis, queue: str, job_id: str, url: str) -> None:
    """What a foreign producer does: one RPUSH of a JSON envelope."""
    body = {"count_url": url, "count_key": f"runs:{queue}"}
    envelope = {"type": "t.count", "id": job_id, "payload": body}
    await r.rpush(keys.queue_keys(queue).pending, orjson.dumps(envelope))


@pytest.mark.parametrize(
    "fault",
    [
        "cut",
        "cut_and_refuse",
        # Connections cut mid-request (stalled) fail on read, which redis-py handles: no crash.
        "stall_then_cut",
    ],
)
async def test_idle_worker_consumes_again_after_its_connections_are_cut(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn, fault: str
) -> None:
    """The worker is idle, blocked waiting for jobs, when its connections die: it blocks again
    by itself, and jobs pushed afterwards (with one plain RPUSH) are picked up."""
    url = redis_server.url
    worker = spawn(proxy.url(), queue, "--lease-seconds", "10")
    async with aredis.Redis.from_url(url) as r:

        async def waiting() -> bool:
            alive(worker)
            return await blocked_through(r, proxy)

        [warm] = await enqueue_counted(client, url, queue, 1)
        await completed(client, worker, warm, queue)
        pushed = [warm]
        for _ in range(3):
            await eventually(waiting, timeout=30, what="worker blocked on its queue")
            if fault == "cut":
                await proxy.cut()
            elif fault == "cut_and_refuse":
                outages, recoveries = (
                    worker.names().count(e) for e in ("redis.unavailable", "redis.recovered")
                )
                proxy.refuse()
                await proxy.cut()
                # Reconnects fail for a while: the outage is noticed, not silently swallowed.
                await wait_event(worker, "redis.unavailable", count=outages + 1)
                await proxy.resume()
                await wait_event(worker, "redis.recovered", count=recoveries + 1)
            else:
                proxy.stall()
                await asyncio.sleep(1.0)
                await proxy.cut()
                await proxy.resume()
            # The waker's blocking call comes back on a fresh connection, then a push wakes it.
            await eventually(waiting, timeout=30, what="blocked again after the fault")
            job_id = f"raw-{uuid.uuid4().hex}"
            await push_raw(r, queue, job_id, url)
            await completed(client, worker, job_id, queue)
            pushed.append(job_id)
    assert await run_counts(url, f"runs:{queue}") == dict.fromkeys(pushed, 1)
    assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}
    assert_no_crash(worker)
    await stop(worker)


def test_store_rides_out_a_connection_reset_under_uvloop(redis_server: RedisServer) -> None:
    """The minimal reproduction of the crash :class:`ResetCrash` names, on the worker's own
    event loop (uvloop): a pooled connection is reset (RST) while idle; the next call may raise
    StoreUnavailable (the callers back off and retry), never RuntimeError, and the one after it
    reconnects."""

    async def scenario() -> None:
        async with FaultProxy(redis_server.port) as proxy:
            store = Store(Connection(proxy.url()))
            try:
                await store.ping()  # one pooled connection through the proxy
                await proxy.cut()  # reset while it sits idle in the pool
                await asyncio.sleep(0.2)  # uvloop reads the RST and closes the transport
                try:
                    await store.ping()
                except StoreUnavailable:
                    pass  # acceptable: callers back off and retry
                except RuntimeError as exc:
                    raise ResetCrash(str(exc)) from exc
                await store.ping()
            finally:
                await store.aclose()

    uvloop.run(scenario())


async def test_a_settle_whose_reply_was_lost_is_not_reported_as_refused(
    proxy: FaultProxy, client: Client, queue: str
) -> None:
    """The request of a settle gets through, its reply does not (the caller times out); the
    settler retries the same settlement: that retry must not be reported as a lost lease."""
    consumer = Consumer(
        worker_id=f"w-{queue}", lease_ms=30_000, max_envelope_bytes=1 << 20, result_ttl=600, dead_cap=100
    )
    store = Store(Connection(proxy.url(), socket_timeout=1.0))
    try:
        job_id = await client.enqueue("t.echo", {}, queue=queue)
        _, [claimed], _, _, _ = await store.exchange(queue, [], 1, consumer, lane=0)
        done = Settlement(job_id, queue, claimed.delivery, Outcome.COMPLETED, b'"ok"')
        proxy.stall()
        with pytest.raises(StoreUnavailable):
            await store.exchange(queue, [done], 0, consumer, lane=0)
        await proxy.resume()  # the held request reaches Redis now, after its sender gave up

        async def completed_by_the_first_try() -> bool:
            return (await client.job(job_id, queue)).status is JobStatus.COMPLETED

        await eventually(completed_by_the_first_try, timeout=10, what="the late settle applied")
        refused, _, _, _, _ = await store.exchange(queue, [done], 0, consumer, lane=0)  # the settler's retry
        assert refused == set()
    finally:
        await store.aclose()


async def test_an_event_subscription_is_in_force_in_redis_before_it_is_handed_out(
    proxy: FaultProxy, redis_server: RedisServer, queue: str
) -> None:
    """Client.wait watches the queue's events, then reads the job: if Redis had not run
    the SUBSCRIBE by then, a job ending between the read and the SUBSCRIBE would never be seen
    and the wait would hang. The proxy holds every byte for a while, so a SUBSCRIBE that was
    only sent (all redis-py's subscribe() waits for) has not reached Redis yet."""
    store = Store(Connection(proxy.url(), socket_timeout=10.0))
    admin = aredis.Redis(port=redis_server.port)
    channel = keys.queue_keys(queue).events
    try:
        proxy.set_delay(0.3)
        waits = Waits(store)
        for job_id in ("first", "second"):  # the second wait shares the first one's subscription
            watch = await waits.watch(queue, job_id)
            assert await admin.pubsub_numsub(channel) == [(channel.encode(), 1)]
            watch.close()
        await waits.aclose()
    finally:
        await admin.aclose()
        await store.aclose()


async def test_an_enqueue_whose_reply_was_lost_names_its_id_for_the_retry(
    proxy: FaultProxy, client: Client, queue: str
) -> None:
    """Redis ran the enqueue but its reply never came: the StoreUnavailable carries the
    generated id, and enqueuing again with it does not queue the job twice."""
    store = Store(Connection(proxy.url(), socket_timeout=1.0))
    through = Client(store)
    try:
        await through.enqueue("t.echo", "warm-up", queue=queue)  # the script is loaded now
        stalled = proxy.stall_after(b"lost-reply-marker")
        with pytest.raises(StoreUnavailable) as lost:
            await through.enqueue("t.echo", "lost-reply-marker", queue=queue)
        assert stalled.is_set() and lost.value.job_id is not None
        await proxy.cut()
        await proxy.resume()
        again = await through.enqueue("t.echo", "lost-reply-marker", queue=queue, job_id=lost.value.job_id)
        assert again == lost.value.job_id
        assert (await client.depth(queue))["pending"] == 2  # the warm-up and this one, once
        assert (await client.job(again, queue)).payload == "lost-reply-marker"
    finally:
        await store.aclose()


async def _idle(admin: aredis.Redis) -> bool:
    """The worker's claim loop is asleep, its waker blocked on the pending list."""
    return any(c.get("cmd") == "blmove" and "b" in c.get("flags", "") for c in await admin.client_list())


#: How an exchange call (settle and claim) starts on the wire: ``EVALSHA <this>``.
_EXCHANGE_SHA = hashlib.sha1(_load_script("exchange.lua").encode()).hexdigest().encode()
#: How the question after a lost claim (what did it lease?) starts on the wire.
_ORPHANS_SHA = hashlib.sha1(_load_script("orphans.lua").encode()).hexdigest().encode()


async def _idle_after_a_warm_up(
    redis_server: RedisServer, client: Client, queue: str, worker: WorkerProcess
) -> None:
    """Run one job through ``worker`` (so its exchange script is loaded), then wait until it is
    idle: the next exchange it sends is the one that claims the next job enqueued."""
    [warm_up] = await enqueue_counted(client, redis_server.url, queue, 1)
    await completed(client, worker, warm_up, queue)
    async with aredis.Redis(port=redis_server.port, decode_responses=True) as admin:
        await eventually(lambda: _idle(admin), what="an idle worker")


async def _claim_with_its_reply_held(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, worker: WorkerProcess
) -> str:
    """Enqueue a job that ``worker`` (through ``proxy``) claims, its reply held by the proxy.

    Returns once Redis has run the claim: the job is leased to a worker that does not know it.
    """
    url = redis_server.url
    await _idle_after_a_warm_up(redis_server, client, queue, worker)
    stalled = proxy.stall_after(_EXCHANGE_SHA)
    [job_id] = await enqueue_counted(client, url, queue, 1)
    await asyncio.wait_for(stalled.wait(), timeout=30)

    async def leased() -> bool:
        return (await client.job(job_id, queue)).status is JobStatus.RUNNING

    await eventually(leased, what="Redis running the claim whose reply is held")
    return job_id


async def test_a_claim_whose_reply_was_lost_gives_its_job_back_at_once(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """Redis ran the claim, then the connection died before the reply reached the worker: the
    job is leased to a worker that does not know it holds it. After the failure the worker asks
    Redis for such jobs and requeues them with their attempt given back, so the job runs now, on
    its one attempt (--max-retries 0), instead of waiting out its lease (300 s here) and being
    dead-lettered LeaseExpired without ever having run."""
    url = redis_server.url
    worker = spawn(proxy.url(), queue, "--lease-seconds", "300", "--max-retries", "0")
    job_id = await _claim_with_its_reply_held(redis_server, proxy, client, queue, worker)
    await proxy.cut()
    await proxy.resume()
    await completed(client, worker, job_id, queue)
    assert (await client.job(job_id, queue)).attempts == 1  # the lost claim's attempt given back
    assert (await run_counts(url, f"runs:{queue}"))[job_id] == 1
    orphaned = [e for e in worker.events() if e.get("event") == "job.orphaned"]
    assert [e["job_id"] for e in orphaned] == [job_id]
    requeued = [e for e in worker.events() if e.get("event") == "job.requeued"]
    assert [(e["job_id"], e["reason"]) for e in requeued] == [(job_id, "orphaned")]
    assert_no_crash(worker)
    await stop(worker)


async def _stopped_while_held(proxy: FaultProxy, worker: WorkerProcess, stalled: asyncio.Event) -> None:
    """SIGTERM while the call ``stalled`` waits for is held in ``proxy``; then the call goes on,
    and the worker exits 0."""
    await asyncio.wait_for(stalled.wait(), timeout=30)
    worker.signal(signal.SIGTERM)
    await worker.wait_for("worker.stopping")
    await proxy.resume()
    assert await worker.wait() == 0


async def test_a_stop_while_a_higher_queue_is_asked_claims_nothing_below_it(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """SIGTERM comes while a pass's call on the higher queue is on the wire, and that call
    comes back empty: strict priority would now claim from the queue below, but claiming ends
    with the signal. The lower queue's job stays queued, no attempt counted, for the next worker
    (Runner._pass)."""
    high = f"{queue}-high"
    worker = spawn(proxy.url(), f"{high},{queue}")
    await _idle_after_a_warm_up(redis_server, client, queue, worker)
    stalled = proxy.stall_after(_EXCHANGE_SHA)  # the pass's first call: the higher queue's
    job_id = await client.enqueue("t.echo", {}, queue=queue)
    await _stopped_while_held(proxy, worker, stalled)
    info = await client.job(job_id, queue)
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert worker.names().count("job.started") == 1  # the warm-up's
    assert_clean_log(worker)


async def test_a_stop_while_a_lost_claims_jobs_are_asked_for_claims_nothing_more(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """SIGTERM comes while the worker asks Redis what a claim whose reply was lost leased. The
    call that follows gives that job back, its attempt uncounted, and claims nothing, as the
    stop ends claiming at once: the job waits in the queue for the next worker rather than being
    claimed back and run in the drain (Runner._exchange)."""
    url = redis_server.url
    worker = spawn(proxy.url(), queue, "--lease-seconds", "300")
    job_id = await _claim_with_its_reply_held(redis_server, proxy, client, queue, worker)
    stalled = proxy.stall_after(_ORPHANS_SHA)
    await proxy.cut()
    await proxy.resume()
    await _stopped_while_held(proxy, worker, stalled)
    info = await client.job(job_id, queue)
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert job_id not in await run_counts(url, f"runs:{queue}")
    requeued = [e for e in worker.events() if e.get("event") == "job.requeued"]
    assert [(e["job_id"], e["reason"]) for e in requeued] == [(job_id, "orphaned")]
    assert_clean_log(worker)


async def test_a_paused_queue_stays_paused_when_a_stop_takes_back_a_look_after_a_lost_reply(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """A paused queue's periodic look (a claim, which tells whether it is still paused) loses
    its reply, and SIGTERM comes while the worker asks what that look leased. The call that
    follows claims nothing, the stop having ended claiming, so it says nothing of the pause
    either: the worker must not take it for a look that found the queue resumed
    (Runner._exchange returns what was asked for). The job stays queued, its queue paused."""
    worker = spawn(proxy.url(), queue, "--lease-seconds", "300")
    await _idle_after_a_warm_up(redis_server, client, queue, worker)
    await client.pause(queue)
    job_id = await client.enqueue("t.echo", {}, queue=queue)
    await worker.wait_for("queue.paused")
    stalled = proxy.stall_after(_EXCHANGE_SHA)  # the next look, a second later
    await asyncio.wait_for(stalled.wait(), timeout=30)
    asked = proxy.stall_after(_ORPHANS_SHA)
    await proxy.cut()
    await proxy.resume()
    await _stopped_while_held(proxy, worker, asked)
    assert "queue.resumed" not in worker.names()
    info = await client.job(job_id, queue)
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert_clean_log(worker)


async def test_a_result_refused_when_sent_again_after_a_lost_reply_says_it_may_have_been_written(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn, tmp_path: Path
) -> None:
    """Redis writes a failed attempt's retry, and the reply is lost. Before the worker can send
    it again, another worker runs the retry to completion. The second send is refused, as the
    job has moved on. The worker cannot tell this from a lost lease, so its job.ack_refused line
    names both, rather than claiming the lease was lost (Settlement.resent)."""
    gate = tmp_path / "gate"
    first = spawn(proxy.url() + "?socket_timeout=60", queue, "--lease-seconds", "300", "--retry-backoff", "0")
    await _idle_after_a_warm_up(redis_server, client, queue, first)
    job_id = await client.enqueue("t.gated_fail", {"gate": str(gate)}, queue=queue, max_retries=3)

    async def status_is(status: JobStatus) -> bool:
        return (await client.job(job_id, queue)).status is status

    await eventually(lambda: status_is(JobStatus.RUNNING), what="the first worker running the job")
    stalled = proxy.stall_after(b"the upstream went away")  # the call carrying the retry's error
    gate.touch()
    await asyncio.wait_for(stalled.wait(), timeout=30)
    await eventually(lambda: status_is(JobStatus.RETRYING), what="Redis writing the retry")
    second = spawn(redis_server.url, queue)
    await completed(client, second, job_id, queue)
    await proxy.cut()
    await proxy.resume()
    await first.wait_for("job.ack_refused")
    [refused] = [e for e in first.events() if e.get("event") == "job.ack_refused"]
    assert (refused["job_id"], refused["attempt"], refused["outcome"]) == (job_id, 1, "retry")
    assert refused["reason"].startswith("refused when sent again after an earlier call carrying it failed")
    info = await client.job(job_id, queue)
    assert (info.status, info.attempts, info.result) == (JobStatus.COMPLETED, 2, 2)
    assert_no_crash(first)
    await stop(first)
    await stop(second)


async def test_a_claim_reaching_redis_after_its_lane_gave_up_on_it_claims_nothing(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """Not the reply but the claim's request is held up in the network: the lane's deadline
    passes, the worker asks Redis what the call leased (nothing yet) and claims again on a new
    connection. When the old request reaches Redis at last (a retransmitted segment outlives
    its socket), it must claim nothing: a job it leased would belong to a lane that has moved
    on, and cost an attempt when its lease ran out (a dead letter here, --max-retries 0). The
    worker is stopped before the late request arrives, so that nothing else claims the job
    waiting for it."""
    url = redis_server.url
    worker = spawn(proxy.url(), queue, "--lease-seconds", "300", "--max-retries", "0")
    await _idle_after_a_warm_up(redis_server, client, queue, worker)
    held = proxy.hold_next(_EXCHANGE_SHA)
    [first] = await enqueue_counted(client, url, queue, 1)
    await asyncio.wait_for(held.wait(), timeout=30)
    await completed(client, worker, first, queue)  # by a later call, once the deadline passed
    assert_no_crash(worker)
    await stop(worker)
    [waiting] = await enqueue_counted(client, url, queue, 1)
    reply = await proxy.deliver_held()
    assert isinstance(reply, list), reply  # the late call ran (no NOSCRIPT, no error)
    assert (reply[1], reply[3]) == ([], 0)  # it claimed nothing, and not for a paused queue
    info = await client.job(waiting, queue)
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert (await client.depth(queue))["pending"] == 1
    assert (await client.job(first, queue)).attempts == 1
    assert (await run_counts(url, f"runs:{queue}"))[first] == 1


async def test_progress_while_redis_is_unreachable_is_dropped_not_a_failure(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn, tmp_path: Path
) -> None:
    """A handler reports progress while the worker cannot reach Redis: progress is best effort,
    so the update is dropped (and logged) and the attempt goes on; it does not fail, and the job
    (max_retries 0) completes on its one attempt once Redis is back."""
    signal_file = tmp_path / "report-now"
    worker = spawn(proxy.url(), queue, "--lease-seconds", "300", "--max-retries", "0")
    job_id = await client.enqueue("t.progress_when", {"path": str(signal_file)}, queue=queue)
    await wait_event(worker, "job.started")
    proxy.refuse()
    await proxy.cut()
    signal_file.touch()
    await wait_event(worker, "job.progress_dropped")
    await proxy.resume()
    await completed(client, worker, job_id, queue)
    info = await client.job(job_id, queue)
    assert (info.attempts, info.result) == (1, "done")
    assert "job.failed" not in worker.names()
    assert_no_crash(worker)
    await stop(worker)


@pytest.mark.parametrize("forced", [False, True], ids=["drain", "forced"])
async def test_a_claim_whose_reply_was_lost_just_before_a_shutdown_is_given_back_by_the_drain(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn, forced: bool
) -> None:
    """As above, but Redis stays unreachable until the worker has been told to stop: the drain
    still asks for the lost claim's jobs once Redis answers, and requeues them uncounted,
    rather than leaving them to cost an attempt (a dead letter here) when their lease runs out.
    ``forced``: a second signal skips the drain's wait for running jobs, and with it the first
    search; the second phase, which writes the shutdown's requeues within a few seconds'
    grace, asks instead."""
    url = redis_server.url
    worker = spawn(
        proxy.url(), queue, "--lease-seconds", "300", "--max-retries", "0", "--shutdown-timeout", "60"
    )
    job_id = await _claim_with_its_reply_held(redis_server, proxy, client, queue, worker)
    proxy.refuse()  # so that neither the claim loop nor (forced) the first phase can ask
    await proxy.cut()
    worker.signal(signal.SIGTERM)
    await wait_event(worker, "worker.stopping")
    if forced:
        worker.signal(signal.SIGTERM)
        await wait_event(worker, "worker.stop_forced")
    await proxy.resume()
    assert await worker.wait(timeout=60) == 0
    info = await client.job(job_id, queue)
    assert (info.status, info.attempts) == (JobStatus.QUEUED, 0)
    assert "job.orphaned" in worker.names() and "job.orphans_unknown" not in worker.names()
    assert (await run_counts(url, f"runs:{queue}")).get(job_id) is None  # it never ran


async def test_a_lost_claims_jobs_are_left_to_recovery_once_redis_has_been_away_for_a_lease(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """As above, but Redis stays unreachable for longer than a lease: the record of what the
    lost claim leased has expired with its leases, so the worker stops asking (and says so), and
    recovery returns the job as it returns a dead worker's, its attempt counted. The job runs
    once and completes; the lane does not keep asking for ever."""
    url = redis_server.url
    worker = spawn(proxy.url(), queue, "--lease-seconds", "1", "--max-retries", "1")
    job_id = await _claim_with_its_reply_held(redis_server, proxy, client, queue, worker)
    proxy.refuse()
    await proxy.cut()
    await wait_event(worker, "job.orphans_unknown")
    await proxy.resume()
    await completed(client, worker, job_id, queue)
    assert (await client.job(job_id, queue)).attempts == 2  # the lost claim's, then the run
    assert (await run_counts(url, f"runs:{queue}"))[job_id] == 1
    assert "job.orphaned" not in worker.names()
    assert_no_crash(worker)
    await stop(worker)


async def test_a_drain_owing_only_a_lost_claims_answer_stops_asking_after_a_while(
    redis_server: RedisServer, proxy: FaultProxy, client: Client, queue: str, spawn: Spawn
) -> None:
    """The worker is told to stop while Redis is away and a lost claim is all it owes: an idle
    worker should not wait out a long --shutdown-timeout (600 s here) for Redis to say what that
    claim leased. The drain asks for ORPHANS_DRAIN_S, then the worker exits and says the jobs
    are left to recovery, which returns them after their lease. (The guard below is far under
    600 s: a worker that waits out the shutdown timeout fails it.)"""
    worker = spawn(
        proxy.url(), queue, "--lease-seconds", "300", "--max-retries", "0", "--shutdown-timeout", "600"
    )
    job_id = await _claim_with_its_reply_held(redis_server, proxy, client, queue, worker)
    proxy.refuse()
    await proxy.cut()
    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=120) == 0
    [draining] = [e for e in worker.events() if e.get("event") == "worker.draining"]
    assert (draining["in_flight"], draining["timeout_s"]) == (0, ORPHANS_DRAIN_S)
    assert "job.orphans_unknown" in worker.names()
    await proxy.resume()
    info = await client.job(job_id, queue)
    assert (info.status, info.attempts) == (JobStatus.RUNNING, 1)  # its lease will return it
