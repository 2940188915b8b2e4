"""What handlers share and queue: lifespans (``@lifespan``) and follow-up jobs (``ctx.enqueue``)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis

from botrix import Registry
from botrix.app import Worker
from botrix.client import Client
from botrix.errors import HandlerDeclarationError
from botrix.model import JobStatus
from tests.conftest import WorkerProcess, eventually, running_worker, settings_for
from tests.redisproc import RedisServer
from tests.test_http import get, ready

APP = ("--app", "tests.lifespan_app")


def start(
    spawn: Callable[..., WorkerProcess], url: str, queue: str, trace: Path, mode: str = ""
) -> WorkerProcess:
    env = {"BOTRIX_TEST_LIFESPAN_TRACE": str(trace), "BOTRIX_TEST_LIFESPAN_MODE": mode}
    return spawn(url, queue, *APP, "--shutdown-timeout", "30", env=env)


def lines(trace: Path) -> list[str]:
    return trace.read_text().splitlines() if trace.exists() else []


async def test_handlers_read_what_the_lifespans_opened_which_close_after_the_last_job(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    worker = start(spawn, redis_server.url, queue, trace)
    job_id = await client.enqueue("t.resources", {}, queue=queue)
    assert (await client.wait(job_id, timeout=30, queue=queue)).result == "hello world"
    slow_id = await client.enqueue("t.resources_slow", {"s": 0.5}, queue=queue)
    await eventually(lambda: "job started" in lines(trace), what="the slow job to start")
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    # The job that ran through the stop saw the resources, and they closed only after it,
    # the last opened first.
    assert (await client.job(slow_id, queue)).result == "hello world"
    assert lines(trace) == [
        "open first",
        "open second",
        "job started",
        "job done",
        "close second",
        "close first",
    ]
    names = worker.names()
    assert names.index("lifespan.opened") < names.index("worker.started")
    assert names.count("lifespan.closed") == 2
    assert names.index("lifespan.closed") < names.index("worker.stopped")


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("fail_start", "RuntimeError: the database refused us"),
        ("exit_start", "SystemExit: 3"),
        ("cancel_start", "it was cancelled, not by a stop"),
    ],
)
async def test_a_lifespan_failing_to_start_claims_nothing_and_exits_1(
    redis_server: RedisServer,
    client: Client,
    queue: str,
    spawn: Callable[..., WorkerProcess],
    tmp_path: Path,
    mode: str,
    error: str,
) -> None:
    trace = tmp_path / "trace"
    job_id = await client.enqueue("t.resources", {}, queue=queue)
    worker = start(spawn, redis_server.url, queue, trace, mode)
    assert await worker.wait() == 1
    # What the first lifespan opened is closed again; the job waits for a worker that starts.
    assert lines(trace) == ["open first", "close first"]
    assert (await client.job(job_id, queue)).status is JobStatus.QUEUED
    [failed] = [e for e in worker.events() if e.get("event") == "worker.startup_failed"]
    assert failed["level"] == "error"
    assert failed["reason"].startswith(f"lifespan tests.lifespan_app.second failed to start: {error}")
    if mode != "cancel_start":
        assert "lifespan_app.py, line" in failed["reason"]
    # One line on stderr, no traceback.
    plain = [e["line"] for e in worker.events() if e.get("event") == "<non-json>"]
    assert len(plain) == 1 and plain[0].startswith("botrix-worker: error: lifespan tests.lifespan_app.second")
    assert "worker.started" not in worker.names()


async def test_a_stop_while_a_lifespan_waits_to_start_exits_0_having_claimed_nothing(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    job_id = await client.enqueue("t.resources", {}, queue=queue)
    worker = start(spawn, redis_server.url, queue, trace, "hang_start")
    await eventually(lambda: "waiting second" in lines(trace), what="the second lifespan to wait")
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    assert lines(trace) == ["open first", "waiting second", "close first"]
    assert (await client.job(job_id, queue)).status is JobStatus.QUEUED
    names = worker.names()
    assert "worker.startup_stopped" in names and "worker.started" not in names
    assert names[-1] == "worker.stopped"


async def test_a_stop_during_the_cleanup_after_a_failed_start_still_exits_1(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    worker = start(spawn, redis_server.url, queue, trace, "fail_start_slow_close")
    await eventually(lambda: "closing first" in lines(trace), what="the first lifespan to be closing")
    worker.signal(signal.SIGTERM)
    await worker.wait_for("worker.stopping")
    (tmp_path / "trace.go").touch()
    # The failure is what the worker reports, not the stop that came during its cleanup.
    assert await worker.wait() == 1
    assert lines(trace)[-1] == "close first"
    assert "worker.startup_failed" in worker.names() and "worker.startup_stopped" not in worker.names()


async def test_lifespans_ending_while_the_worker_runs_stop_it_with_exit_1(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    worker = start(spawn, redis_server.url, queue, trace, "lose")
    job_id = await client.enqueue("t.resources", {}, queue=queue)
    assert (await client.wait(job_id, timeout=30, queue=queue)).status is JobStatus.COMPLETED
    # A worker whose resources are gone does not run on: it drains, closes the rest, exits 1.
    assert await worker.wait() == 1
    assert lines(trace) == ["open first", "open second", "close second", "close first"]
    names = worker.names()
    assert names.index("worker.lifespans_lost") < names.index("worker.stopped")
    [failed] = [e for e in worker.events() if e.get("event") == "lifespan.failed"]
    assert failed["lifespan"] == "tests.lifespan_app.second"
    assert "RuntimeError: the connection broke" in failed["error"]
    [lost] = [e for e in worker.events() if e.get("event") == "worker.lifespans_lost"]
    assert lost["level"] == "error"
    assert lost["reason"].startswith(
        "the lifespans were cancelled while the worker ran; tests.lifespan_app.second: ExceptionGroup"
    )
    assert "RuntimeError: the connection broke" in lost["reason"]
    plain = [e["line"] for e in worker.events() if e.get("event") == "<non-json>"]
    assert len(plain) == 1
    assert plain[0] == f"botrix-worker: error: the lifespans ended while the worker ran: {lost['reason']}"


async def test_a_failing_cleanup_is_logged_and_the_others_still_close(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    worker = start(spawn, redis_server.url, queue, trace, "fail_close")
    job_id = await client.enqueue("t.resources", {}, queue=queue)
    assert (await client.wait(job_id, timeout=30, queue=queue)).status is JobStatus.COMPLETED
    worker.signal(signal.SIGTERM)
    # Every job is settled by the time the cleanups run: nothing is lost, and the exit says so.
    assert await worker.wait() == 0
    assert lines(trace)[-2:] == ["close second", "close first"]
    [failed] = [e for e in worker.events() if e.get("event") == "lifespan.failed"]
    assert failed["level"] == "error" and failed["phase"] == "shutdown"
    assert failed["lifespan"] == "tests.lifespan_app.second"
    assert failed["error"].startswith("RuntimeError: the pool would not close (")
    assert [e["lifespan"] for e in worker.events() if e.get("event") == "lifespan.closed"] == [
        "tests.lifespan_app.first"
    ]


async def _plain(resources: dict[str, Any]) -> None:
    resources["x"] = 1


def _sync_generator(resources: dict[str, Any]) -> Any:
    yield


async def _async_generator(resources: dict[str, Any]) -> AsyncIterator[None]:
    yield


async def test_probes_say_starting_and_alive_while_a_lifespan_opens(
    redis_server: RedisServer, queue: str
) -> None:
    """A start that takes a while (a database coming up) is neither ready nor a hung process."""
    registry = Registry()
    gate = asyncio.Event()

    @registry.lifespan
    async def slow(resources: dict[str, Any]) -> AsyncIterator[None]:
        await gate.wait()
        yield

    async def job(ctx: Any, payload: Any) -> None:
        return None

    registry.add("t.any", job)
    settings = settings_for(redis_server.url, queue, http_port=0, http_host="127.0.0.1", live_max_lag=1.0)
    worker = Worker(settings, registry)
    task = asyncio.create_task(worker.run())
    try:
        port = await eventually(lambda: worker.http and worker.http.port, what="http port")
        base = f"http://127.0.0.1:{port}"
        # Past the time /live allows the loop between two ticks (live_max_lag + 1 s).
        for _ in range(12):
            assert (await get(base, "/live"))[0] == 200
            assert (await get(base, "/ready"))[:2] == (503, {"status": "not_ready", "reason": "starting"})
            await asyncio.sleep(0.25)
        gate.set()
        await eventually(lambda: ready(base), what="ready once the lifespan opened")
    finally:
        worker.request_stop("test over")
        async with asyncio.timeout(60):
            await task


@pytest.mark.parametrize("func", [_plain, _sync_generator])
def test_a_lifespan_must_be_an_async_generator(func: Any) -> None:
    with pytest.raises(HandlerDeclarationError, match="must be an async generator function"):
        Registry().lifespan(func)


def test_a_lifespan_registered_twice_runs_once() -> None:
    registry = Registry()
    registry.lifespan(_async_generator)
    registry.lifespan(_async_generator)
    assert registry.lifespans() == [_async_generator]


async def test_a_handler_queues_a_follow_up_into_its_queue_under_its_correlation_id(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with running_worker(redis_server.url, queue):
        parent = await client.enqueue(
            "t.follow_up", {"child": {"n": 7}}, queue=queue, correlation_id="order-42"
        )
        info = await client.wait(parent, timeout=30, queue=queue)
        assert info.status is JobStatus.COMPLETED and isinstance(info.result, str)
        child = await client.wait(info.result, timeout=30, queue=queue)
    assert child.status is JobStatus.COMPLETED and child.result == 7 and child.queue == queue
    assert orjson.loads(child.envelope)["correlation_id"] == "order-42"


async def test_a_follow_up_queued_once_per_job_runs_once_across_the_jobs_retries(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    counts = f"{queue}:counts"
    child_payload = {"count_url": redis_server.url, "count_key": counts}
    async with running_worker(redis_server.url, queue):
        parent = await client.enqueue(
            "t.follow_up", {"child": child_payload, "once": True, "fail_first": True}, queue=queue
        )
        info = await client.wait(parent, timeout=30, queue=queue)
        assert info.status is JobStatus.COMPLETED and info.attempts == 2 and isinstance(info.result, str)
        child = await client.wait(info.result, timeout=30, queue=queue)
    assert child.status is JobStatus.COMPLETED
    async with aredis.Redis.from_url(redis_server.url) as r:
        assert await r.hgetall(counts) == {info.result.encode(): b"1"}
