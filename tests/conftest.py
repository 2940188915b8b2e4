"""Fixtures: a real redis-server per session (and per test where a test restarts it), a
unique queue per test instead of flushing, and botrix workers in-process or as real processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

import tests.handlers  # noqa: F401 - registers the test handlers in the default registry
from botrix.app import Worker
from botrix.client import Client
from botrix.config import Settings
from botrix.registry import default_registry
from botrix.store import Connection, Store
from tests.redisproc import RedisClusterServers, RedisServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, for tests that stop, kill or restart it."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """A three-node Redis Cluster of the test's own."""
    cluster = RedisClusterServers(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def queue() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Client]:
    async with Client.from_url(redis_server.url) as c:
        yield c


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[Store]:
    """The data-access layer itself, for tests that drive the scripts as a worker would."""
    s = Store(Connection(redis_server.url))
    try:
        yield s
    finally:
        await s.aclose()


def settings_for(url: str, queue: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": url,
        "queues": (queue,),
        "app": ("tests.handlers",),
        "concurrency": 5,
        "lease_seconds": 3.0,
        "health_check_interval": 1.0,
        "shutdown_timeout": 5.0,
        "retry_backoff": 0.01,
        "retry_backoff_max": 0.05,
        "http_port": -1,
        "worker_id": f"w-{uuid.uuid4().hex[:8]}",
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_worker(url: str, queue: str, **overrides: Any) -> AsyncIterator[Worker]:
    """A worker on this event loop, stopped gracefully (and awaited) on exit."""
    worker = Worker(settings_for(url, queue, **overrides), default_registry)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop("test over")
        async with asyncio.timeout(60):
            await task


class WorkerProcess:
    """A real ``python -m botrix worker`` process whose JSON log lines the test can read."""

    def __init__(self, url: str, queues: str, log_path: Path, *extra: str, env: dict[str, str] | None = None):
        self.log_path = log_path
        args = [
            sys.executable,
            "-m",
            "botrix",
            "worker",
            "--redis-url",
            url,
            "--queues",
            queues,
            "--app",
            "tests.handlers",
            "--log-format",
            "json",
            "--log-level",
            "debug",  # tests wait for job.started, a DEBUG line
            "--http-port",
            "-1",
            "--lease-seconds",
            "2",
            "--health-check-interval",
            "0.5",
            "--retry-backoff",
            "0.01",
            "--retry-backoff-max",
            "0.05",
            *extra,
        ]
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "BOTRIX_TEST_WORKER_PROCESS": "1", **(env or {})}
        with open(log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"event": "<non-json>", "line": line.decode(errors="replace")})
        return out

    def names(self) -> list[str]:
        return [e.get("event", "") for e in self.events()]

    async def wait_for(self, event: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.names().count(event) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {event}: {self.names()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} x{count} within {timeout}s: {self.names()[-20:]}")
            await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("worker did not exit")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(url: str, queues: str, *extra: str, env: dict[str, str] | None = None) -> WorkerProcess:
        proc = WorkerProcess(url, queues, tmp_path / f"worker-{len(started)}.log", *extra, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


async def eventually(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll an async or sync check until it returns something truthy (a guard, not a timing test)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
