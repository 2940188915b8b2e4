"""Every fault at once, at random, while jobs of every kind flow (marker: chaos).

Three worker processes and a producer reach Redis through the fault proxy. For a while (20 s
in ``make test``; ``BOTRIX_TORTURE_SECONDS``, which ``make torture`` sets to 600), a random fault
every fraction of a second: a worker killed with SIGKILL or stopped with SIGTERM (and replaced,
as a supervisor would), every connection reset, the network stalled, connections refused,
Redis itself killed and restarted from its append-only file. The producer keeps enqueueing
through all of it, retrying an enqueue that failed with the same id, as the client's
documentation tells a producer to.

Then the faults stop and the test asserts what the design promises (docs/reliability.md):
every job is done or visibly dead-lettered, never gone or stuck. Each job that should succeed
is completed and ran at least once (runs counted in Redis by job id, through a connection the
faults do not touch); each that always fails is dead with its own error; nothing is left
queued, scheduled, running or leased; each SIGTERM ended its worker with exit code 0, and the
workers that remain still take new work.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from botrix.client import Client
from botrix.model import JobStatus
from botrix.store import StoreUnavailable
from tests.conftest import WorkerProcess, eventually
from tests.faultproxy import FaultProxy
from tests.redisproc import RedisServer
from tests.test_chaos import drained
from tests.test_processes import run_counts

SECONDS = float(os.environ.get("BOTRIX_TORTURE_SECONDS") or 20)
#: The hang guard: the faults' time, then up to 300 s to settle and 120 s to stop, with room.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(SECONDS + 600)]
Spawn = Callable[..., WorkerProcess]
WORKERS = 3
CONCURRENCY = 12  # 10 or more: the workers split their slots into lanes (runner.py)
#: Attempts a job that should succeed may spend on faults (a kill counts one, a failed count
#: write another); far more than this run can take from one job.
RETRIES = 50
#: Each fault and its weight: how often it is drawn, against the others.
FAULTS = {"kill": 25, "sigterm": 15, "cut": 25, "stall": 10, "refuse": 15, "redis": 10}


class Torture:
    """The producer's side of the run: what was enqueued, and what each job should end as."""

    def __init__(self, client: Client, count_url: str, queue: str, rng: random.Random) -> None:
        self.client = client
        self.queue = queue
        self.rng = rng
        self.counted = {"count_url": count_url, "count_key": f"runs:{queue}"}
        self.expected: dict[str, JobStatus] = {}
        self.enqueue_retries = 0

    async def enqueue_one(self) -> None:
        kind = self.rng.choices(["work", "flaky", "fail", "delayed"], weights=[70, 10, 5, 15])[0]
        job_id = uuid.uuid4().hex
        if kind == "work":
            ms = self.rng.randint(0, 40)
            args: dict[str, Any] = {"type": "t.work", "payload": {**self.counted, "ms": ms}}
        elif kind == "flaky":
            args = {"type": "t.flaky", "payload": {"fail_times": 2}}
        elif kind == "fail":
            args = {"type": "t.fail", "payload": None, "max_retries": 1}
        else:
            delay = self.rng.uniform(0.2, 3.0)
            args = {"type": "t.work", "payload": {**self.counted, "ms": 5}, "delay": delay}
        args.setdefault("max_retries", RETRIES)
        while True:
            try:
                await self.client.enqueue(**args, queue=self.queue, job_id=job_id, once=True)
                break
            except StoreUnavailable:
                self.enqueue_retries += 1
                await asyncio.sleep(0.05)
        self.expected[job_id] = JobStatus.DEAD if kind == "fail" else JobStatus.COMPLETED

    async def produce(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for _ in range(self.rng.randint(1, 20)):
                await self.enqueue_one()
            await asyncio.sleep(self.rng.uniform(0.01, 0.1))


class Fleet:
    """The workers, replaced when killed or stopped, and how each SIGTERM ended."""

    def __init__(self, spawn: Spawn, url: str, queue: str) -> None:
        self.spawn = spawn
        self.url = url
        self.queue = queue
        self.workers = [self._start() for _ in range(WORKERS)]
        #: How each SIGTERM ended its worker: "0", or the signal's exit with "before any log".
        self.sigterm_exits: Counter[str] = Counter()

    def _start(self) -> WorkerProcess:
        # --shutdown-timeout: a SIGTERM during an outage waits for Redis a while, not forever.
        args = ("--concurrency", str(CONCURRENCY), "--log-level", "info", "--shutdown-timeout", "20")
        return self.spawn(self.url, self.queue, *args)

    async def kill(self, index: int) -> None:
        os.kill(self.workers[index].pid, signal.SIGKILL)
        await self.workers[index].wait()
        self.workers[index] = self._start()

    async def terminate(self, index: int) -> None:
        self.workers[index].signal(signal.SIGTERM)
        await self._ended(self.workers[index])
        self.workers[index] = self._start()

    async def stop_all(self) -> None:
        for proc in self.workers:
            proc.signal(signal.SIGTERM)
        for proc in self.workers:
            await self._ended(proc)

    async def _ended(self, proc: WorkerProcess) -> None:
        code = await proc.wait(timeout=120)
        # A SIGTERM in the first tens of milliseconds, before the worker's code notes it
        # (botrix/cli/start.py), ends the process by the signal, before it did anything.
        early = code == -signal.SIGTERM and proc.log_path.stat().st_size == 0
        self.sigterm_exits["0" if code == 0 else "before any log" if early else str(code)] += 1


async def inflict(
    fault: str, fleet: Fleet, proxy: FaultProxy, redis: RedisServer, rng: random.Random
) -> None:
    if fault == "kill":
        await fleet.kill(rng.randrange(WORKERS))
    elif fault == "sigterm":
        await fleet.terminate(rng.randrange(WORKERS))
    elif fault == "cut":
        await proxy.cut()
    elif fault == "stall":
        proxy.stall()
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        await proxy.cut()  # a stall ends as a real one does: the connections die
        await proxy.resume()
    elif fault == "refuse":
        proxy.refuse()
        await proxy.cut()
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        await proxy.resume()
    elif fault == "redis":
        redis.stop(signal.SIGKILL)  # appendfsync always: what Redis acknowledged, it keeps
        await asyncio.sleep(rng.uniform(0.1, 1.0))
        await asyncio.to_thread(redis.start)


async def test_every_fault_at_once_leaves_every_job_done_or_dead(
    own_redis: RedisServer, queue: str, spawn: Spawn
) -> None:
    seed = int(os.environ.get("BOTRIX_TORTURE_SEED") or random.randrange(1 << 30))
    print(f"torture: seed={seed} (BOTRIX_TORTURE_SEED: the same faults and jobs, in another timing)")
    rng = random.Random(seed)
    faults: Counter[str] = Counter()
    async with FaultProxy(own_redis.port) as proxy, Client.from_url(proxy.url()) as client:
        torture = Torture(client, own_redis.url, queue, rng)
        fleet = Fleet(spawn, proxy.url(), queue)
        stop = asyncio.Event()
        producer = asyncio.create_task(torture.produce(stop))
        loop = asyncio.get_running_loop()
        end = loop.time() + SECONDS
        while loop.time() < end:
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            fault = rng.choices(list(FAULTS), weights=list(FAULTS.values()))[0]
            await inflict(fault, fleet, proxy, own_redis, rng)
            faults[fault] += 1
        stop.set()
        await producer
        print(f"torture: {len(torture.expected)} jobs; faults {dict(faults)}; {proxy.resets} resets")
        async with Client.from_url(own_redis.url) as direct:
            await check_outcome(direct, own_redis.url, torture, seed)
        await fleet.stop_all()
        print(f"torture: SIGTERM exits {dict(fleet.sigterm_exits)}")
        assert fleet.sigterm_exits.keys() <= {"0", "before any log"}, f"seed {seed}: {fleet.sigterm_exits}"


async def check_outcome(direct: Client, url: str, torture: Torture, seed: int) -> None:
    """Every job as expected once the faults are over, and the survivors still at work."""
    queue = torture.queue
    # Leases of killed workers run out (2 s) and are recovered; retries back off briefly.
    await eventually(lambda: drained(direct, queue), timeout=300, what="every job settled")
    jobs = {job_id: await direct.job(job_id, queue) for job_id in torture.expected}
    wrong = {i: (str(j.status), j.error) for i, j in jobs.items() if j.status != torture.expected[i]}
    counts = await run_counts(url, f"runs:{queue}")
    counted = [i for i, j in jobs.items() if j.type == "t.work" and j.status is JobStatus.COMPLETED]
    never_ran = [i for i in counted if counts.get(i, 0) == 0]
    dead = Counter((j.error or {}).get("type") for j in jobs.values() if j.status is JobStatus.DEAD)
    duplicates = sum(counts.get(i, 0) for i in counted) - len(counted)
    print(f"torture: {torture.enqueue_retries} enqueues retried, {duplicates} extra runs, dead {dict(dead)}")
    assert wrong == {}, f"seed {seed}: jobs that ended otherwise than expected"
    assert never_ran == [], f"seed {seed}: completed jobs whose run was never counted"
    # Only the failing jobs are dead (checked above): of their error, or of a kill during their
    # last attempt.
    assert dead.keys() <= {"RuntimeError", "LeaseExpired"}, f"seed {seed}"

    # The survivors still work: one more job, after every fault.
    last = await direct.enqueue("t.work", {**torture.counted, "ms": 0}, queue=queue)
    assert (await direct.wait(last, timeout=60, queue=queue)).status is JobStatus.COMPLETED
