"""A password in the Redis URL works and never shows: not in logs, errors or the CLI."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from botrix.client import Client
from botrix.model import JobStatus
from tests.conftest import WorkerProcess
from tests.redisproc import RedisServer
from tests.test_cli import run

SECRET = "pw-Zq81-never-log-me"


@pytest.fixture
def auth_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own that requires SECRET."""
    server = RedisServer(tmp_path / "redis-auth")
    server.password = SECRET
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_password_url_works_and_stays_secret(
    auth_redis: RedisServer, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    worker = spawn(auth_redis.url, queue)
    async with Client.from_url(auth_redis.url) as client:
        job_id = await client.enqueue("t.echo", {}, queue=queue)
        assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
    auth_redis.stop()  # an outage makes the worker log connection errors: they must not leak it
    await worker.wait_for("redis.unavailable")
    auth_redis.start()
    await worker.wait_for("redis.recovered")
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    log = worker.log_path.read_text()
    assert SECRET not in log
    assert ":***@" in log


async def test_password_on_the_command_line_is_not_in_the_process_title(
    auth_redis: RedisServer, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    worker = spawn(auth_redis.url, queue)
    await worker.wait_for("worker.started")
    cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert SECRET not in cmdline
    assert ":***@" in cmdline and "--redis-url" in cmdline
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0


@pytest.mark.parametrize("form", ["separate", "joined"])
async def test_the_admin_token_is_not_in_the_process_title_nor_the_log(
    redis_server: RedisServer, queue: str, spawn: Callable[..., WorkerProcess], form: str
) -> None:
    token = "adm-" + SECRET
    args = ["--admin-token", token] if form == "separate" else [f"--admin-token={token}"]
    worker = spawn(redis_server.url, queue, "--http-host", "127.0.0.1", "--http-port", "0", *args)
    await worker.wait_for("worker.started")
    cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert token not in cmdline and "--admin-token" in cmdline and "***" in cmdline
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    assert token not in worker.log_path.read_text()


@pytest.mark.parametrize(
    "args", [["--admin", "adm-" + SECRET], ["--admin-tokn", "adm-" + SECRET], ["--admin-tokn=adm-" + SECRET]]
)
def test_an_abbreviated_or_mistyped_token_flag_is_refused_without_its_value(args: list[str]) -> None:
    """Flags are never abbreviated (the title's redaction knows them by full name), and the
    error naming the unknown flag does not repeat the value after it."""
    result = run("worker", "--app", "tests.handlers", *args)
    assert result.returncode == 2
    shown = f"{args[0]} ***" if len(args) == 2 else "--admin-tokn=***"
    assert f"unrecognized arguments: {shown}" in result.stderr and SECRET not in result.stderr


@pytest.mark.parametrize(
    ("variable", "command"),
    [
        ("REDIS_HOST", ["queues"]),
        ("BOTRIX_LOG_LEVEL", ["worker", "--app", "tests.handlers"]),
        ("BOTRIX_QUEUES", ["worker", "--app", "tests.handlers"]),
        ("BOTRIX_HTTP_HOST", ["worker", "--app", "tests.handlers"]),
        ("BOTRIX_APP", ["worker"]),
        ("BOTRIX_CONCURRENCY", ["worker", "--app", "tests.handlers"]),
        ("BOTRIX_REDIS_CLUSTER", ["worker", "--app", "tests.handlers"]),
    ],
)
def test_a_url_in_the_wrong_variable_is_refused_without_its_password(
    variable: str, command: list[str]
) -> None:
    """The value is quoted back, as every bad value is, but with the password hidden."""
    result = run(*command, env={variable: f"redis://:{SECRET}@redis.internal:6379/0"})
    assert result.returncode == 2, result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert len(result.stderr.splitlines()) == 1 and variable in result.stderr
    assert "redis://:***@redis.internal:6379/0" in result.stderr
