"""Lifespans (``@lifespan``): what handlers share, opened before the first claim, closed after the last."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from botrix import Registry
from botrix.client import Client
from botrix.errors import HandlerDeclarationError
from botrix.model import JobStatus
from tests.conftest import WorkerProcess, eventually
from tests.redisproc import RedisServer

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


async def test_a_lifespan_failing_to_start_claims_nothing_and_exits_1(
    redis_server: RedisServer, client: Client, queue: str, spawn: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    trace = tmp_path / "trace"
    job_id = await client.enqueue("t.resources", {}, queue=queue)
    worker = start(spawn, redis_server.url, queue, trace, "fail_start")
    assert await worker.wait() == 1
    # What the first lifespan opened is closed again; the job waits for a worker that starts.
    assert lines(trace) == ["open first", "close first"]
    assert (await client.job(job_id, queue)).status is JobStatus.QUEUED
    [failed] = [e for e in worker.events() if e.get("event") == "worker.startup_failed"]
    assert failed["level"] == "error"
    assert (
        "lifespan tests.lifespan_app.second failed to start: RuntimeError: the database refused us"
        in (failed["reason"])
    )
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


@pytest.mark.parametrize("func", [_plain, _sync_generator])
def test_a_lifespan_must_be_an_async_generator(func: Any) -> None:
    with pytest.raises(HandlerDeclarationError, match="must be an async generator function"):
        Registry().lifespan(func)


def test_a_lifespan_registered_twice_runs_once() -> None:
    registry = Registry()
    registry.lifespan(_async_generator)
    registry.lifespan(_async_generator)
    assert registry.lifespans() == [_async_generator]
