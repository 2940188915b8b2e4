"""Redis over TLS (a CA made here with openssl) and an ACL user limited to what botrix needs.

Everything runs against real processes: a redis-server that listens only on its TLS port (or
only lets named ACL users in), real ``botrix worker`` processes and the real Client and CLI.
The ACL rules below are the ones documented in docs/security.md; a test keeps the two equal.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import redis
import redis.asyncio as aredis

from botrix import keys
from botrix.client import LISTED_STATES, Client
from botrix.model import JobStatus
from botrix.store import StoreUnavailable
from tests.conftest import ROOT, WorkerProcess, eventually
from tests.redisproc import free_port
from tests.tlsutil import ConfiguredRedis, Pki, issue_cert, make_ca, make_pki

SECRET = "pw-TLS-7hQx-never-log-me"
ACL_PASSWORD = "pw-ACL-k2Vd-never-log-me"
ADMIN_PASSWORD = "pw-admin-only-for-the-test"

#: The permissions of the ``botrix`` user: its keys and channels, the connection commands a
#: client needs (no admin ones), and exactly the commands botrix/store.py and botrix/lua/*.lua
#: call. Copied verbatim into docs/security.md (test_docs_carry_the_acl_rules checks it).
ACL_RULES = (
    "resetkeys ~botrix:* resetchannels &botrix:* -@all +@connection -@admin -@dangerous "
    "+info +evalsha +script|load "
    "+blmove +subscribe +llen +lrange +zcard +zrange +zrevrange +zremrangebyscore "
    "+get +set +del +sadd +smembers +hgetall +hset +zadd +zrem +publish "
    "+time +incr +hget +hmget +hdel +hincrby +lpop +rpop +lpush +rpush +lrem "
    "+expire +persist +zrangebyscore +zpopmin"
)

#: What each redis-py call in botrix/store.py sends to Redis.
STORE_METHOD_COMMANDS: dict[str, set[str]] = {
    "info": {"info"},
    "sadd": {"sadd"},
    "smembers": {"smembers"},
    "blmove": {"blmove"},
    "hset": {"hset"},
    "publish": {"publish"},
    "hgetall": {"hgetall"},
    # Store.find_record: which queue holds a job's record.
    "hget": {"hget"},
    "llen": {"llen"},
    "lrange": {"lrange"},
    "zcard": {"zcard"},
    "zrevrange": {"zrevrange"},
    "set": {"set"},
    "get": {"get"},
    "zadd": {"zadd"},
    "delete": {"del"},
    "zrem": {"zrem"},
    "zremrangebyscore": {"zremrangebyscore"},
    "zrange": {"zrange"},
    "zrangebyscore": {"zrangebyscore"},
    # Store.clock_ms: a cron handler's fire times come from the Redis clock.
    "time": {"time"},
    # Store.enqueue_many: the enqueue script pipelined, loaded again after a NOSCRIPT.
    "evalsha": {"evalsha"},
    "script_load": {"script|load"},
    # redis-py scripts: EVALSHA, and SCRIPT LOAD when the server does not know the script yet.
    "register_script": {"evalsha", "script|load"},
    # Client.wait: SUBSCRIBE; the pub/sub health check is a PING (a connection command).
    "pubsub": {"subscribe"},
    # Not commands of their own.
    "pipeline": set(),
    "execute": set(),
    "aclose": set(),
    "from_pool": set(),
    "from_url": set(),
}


def allowed_commands() -> set[str]:
    return {token[1:] for token in ACL_RULES.split() if token.startswith("+") and "@" not in token}


# -- servers ---------------------------------------------------------------------------------


def tls_args(pki: Pki, port: int, *, auth_clients: str = "no") -> list[str]:
    return [
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key),
        "--tls-ca-cert-file", str(pki.ca_cert),
        "--tls-auth-clients", auth_clients,
    ]  # fmt: skip


def tls_url(port: int, ca: Path, *, password: str | None = None, **params: Path) -> str:
    auth = f":{password}@" if password else ""
    query = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in {"ssl_ca_certs": ca, **params}.items())
    return f"rediss://{auth}127.0.0.1:{port}/0?{query}"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_redis(tmp_path: Path, pki: Pki) -> Iterator[ConfiguredRedis]:
    """A TLS-only redis-server (no plain-text port) with a password."""
    port = free_port()

    def probe(port: int) -> redis.Redis:
        return redis.Redis(
            port=port, password=SECRET, ssl=True, ssl_ca_certs=str(pki.ca_cert), socket_timeout=5
        )

    server = ConfiguredRedis(
        tmp_path / "redis-tls", [*tls_args(pki, port), "--requirepass", SECRET], probe, port=port
    )
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[ConfiguredRedis]:
    """A redis-server whose default user is off: only ``botrix`` (ACL_RULES) and ``admin``."""
    folder = tmp_path / "redis-acl"
    folder.mkdir()
    aclfile = folder / "users.acl"
    aclfile.write_text(
        "user default off\n"
        f"user admin on >{ADMIN_PASSWORD} ~* &* +@all\n"
        f"user botrix on >{ACL_PASSWORD} {ACL_RULES}\n"
    )

    def probe(port: int) -> redis.Redis:
        # Connect as botrix does (store._CONNECT_QUIETLY): the end-to-end tests check that
        # nothing sends a command the server refuses or does not know.
        return redis.Redis(
            port=port,
            username="admin",
            password=ADMIN_PASSWORD,
            socket_timeout=10,
            driver_info=None,
            protocol=2,
        )

    port = free_port()
    server = ConfiguredRedis(folder, ["--port", str(port), "--aclfile", str(aclfile)], probe, port=port)
    server.start()
    yield server
    server.stop(signal.SIGKILL)


def acl_url(server: ConfiguredRedis) -> str:
    return f"redis://botrix:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"


def denials(server: ConfiguredRedis) -> list[dict[str, Any]]:
    """The server's ACL log: every command a user was refused."""
    with server.client() as admin:
        entries: list[dict[str, Any]] = admin.acl_log()
    return entries


# -- TLS -------------------------------------------------------------------------------------


@pytest.mark.tls
async def test_worker_and_client_over_tls(
    tls_redis: ConfiguredRedis, pki: Pki, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    url = tls_url(tls_redis.port, pki.ca_cert, password=SECRET)
    worker = spawn(url, queue)
    async with Client.from_url(url) as client:
        job_id = await client.enqueue("t.echo", {"over": "tls"}, queue=queue)
        info = await client.wait(job_id, timeout=30)
        progress = await client.wait(await client.enqueue("t.items", {"items": 3}, queue=queue), timeout=30)
    assert info.status is JobStatus.COMPLETED and info.result == {"echo": {"over": "tls"}, "attempt": 1}
    assert progress.progress == {"done": 3, "of": 3}
    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    started = next(e for e in worker.events() if e.get("event") == "worker.started")
    assert started["redis_url"].startswith(f"rediss://:***@127.0.0.1:{tls_redis.port}/0?ssl_ca_certs=")
    assert SECRET not in worker.log_path.read_text()


@pytest.mark.tls
async def test_tls_port_does_not_speak_plain_text(tls_redis: ConfiguredRedis, queue: str) -> None:
    """The server has no plain-text port, so the job above could only have travelled over TLS."""
    async with Client.from_url(f"redis://:{SECRET}@127.0.0.1:{tls_redis.port}/0") as client:
        with pytest.raises(StoreUnavailable) as refused:
            await client.enqueue("t.echo", {}, queue=queue)
    assert SECRET not in str(refused.value)


@pytest.mark.tls
async def test_wrong_ca_is_unavailable_and_never_leaks_the_password(
    tls_redis: ConfiguredRedis, tmp_path: Path, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    other_ca, _ = make_ca(tmp_path / "other-ca", "some-other-ca")
    url = tls_url(tls_redis.port, other_ca, password=SECRET)
    http_port = free_port()
    worker = spawn(url, queue, "--http-port", str(http_port), "--http-host", "127.0.0.1")
    await worker.wait_for("redis.unavailable")
    reasons = [e.get("reason", "") for e in worker.events() if e.get("event") == "redis.unavailable"]
    assert any("certificate verify failed" in r.lower() for r in reasons), reasons

    base = f"http://127.0.0.1:{http_port}"
    async with aiohttp.ClientSession() as session:
        answers = {}
        for path in ("/live", "/ready", "/health", "/metrics"):
            async with session.get(base + path) as response:
                answers[path] = (response.status, await response.text())
    assert answers["/live"][0] == 200  # a Redis it cannot trust is not a reason to restart
    assert answers["/ready"][0] == 503
    for status, body in answers.values():
        assert SECRET not in body, status

    async with Client.from_url(url) as client:
        with pytest.raises(StoreUnavailable) as refused:
            await client.enqueue("t.echo", {}, queue=queue)
    assert "certificate verify failed" in str(refused.value).lower()
    assert SECRET not in str(refused.value) and SECRET not in repr(refused.value)

    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    log = worker.log_path.read_text()
    assert SECRET not in log
    assert ":***@" in log
    with tls_redis.client() as r:  # nothing reached the server
        assert r.llen(keys.queue_keys(queue).pending) == 0


@pytest.mark.tls
async def test_mutual_tls_with_a_client_certificate(
    tmp_path: Path, pki: Pki, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    cert, key = issue_cert(pki, tmp_path / "pki", "botrix-worker", client=True)
    port = free_port()

    def probe(port: int) -> redis.Redis:
        return redis.Redis(
            port=port,
            ssl=True,
            ssl_ca_certs=str(pki.ca_cert),
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            socket_timeout=5,
        )

    server = ConfiguredRedis(
        tmp_path / "redis-mtls", tls_args(pki, port, auth_clients="yes"), probe, port=port
    )
    server.start()
    try:
        url = tls_url(port, pki.ca_cert, ssl_certfile=cert, ssl_keyfile=key)
        worker = spawn(url, queue)
        async with Client.from_url(url) as client:
            info = await client.wait(await client.enqueue("t.echo", 1, queue=queue), timeout=30)
        assert info.status is JobStatus.COMPLETED
        async with Client.from_url(tls_url(port, pki.ca_cert)) as anonymous:
            with pytest.raises(StoreUnavailable):
                await anonymous.enqueue("t.echo", {}, queue=queue)
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0
    finally:
        server.stop(signal.SIGKILL)


# -- ACL -------------------------------------------------------------------------------------


def test_acl_grants_every_command_botrix_calls() -> None:
    """Static check: each redis.call in the Lua scripts and each redis-py call in the store."""
    allowed = allowed_commands()
    lua = "".join(p.read_text() for p in sorted((ROOT / "botrix" / "lua").glob("*.lua")))
    in_lua = {c.lower() for c in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", lua)}
    assert in_lua, "no redis.call found: the pattern is out of date"
    assert in_lua <= allowed, f"Lua calls commands the ACL does not grant: {sorted(in_lua - allowed)}"

    store = (ROOT / "botrix" / "store.py").read_text()
    methods = set(re.findall(r"\b(?:self\._redis|self\._blocking|pipe|redis\.Redis)\.(\w+)\(", store))
    unknown = methods - STORE_METHOD_COMMANDS.keys()
    assert not unknown, f"store.py calls {sorted(unknown)}: add them to STORE_METHOD_COMMANDS and the ACL"
    in_store = set().union(*(STORE_METHOD_COMMANDS[m] for m in methods))
    assert in_store <= allowed, (
        f"store.py sends commands the ACL does not grant: {sorted(in_store - allowed)}"
    )
    # Nothing granted that botrix does not use (the connection commands come from +@connection).
    assert allowed == in_lua | in_store, f"granted but unused: {sorted(allowed - in_lua - in_store)}"


def test_docs_carry_the_acl_rules() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    assert ACL_RULES in text


async def test_acl_user_can_do_nothing_else(acl_redis: ConfiguredRedis) -> None:
    """Outside its keys, channels and commands the botrix user is refused."""
    async with aredis.Redis.from_url(acl_url(acl_redis)) as r:
        assert await r.ping()
        await r.set("botrix:probe", "1")
        refused: list[tuple[str, ...]] = [
            ("GET", "other:key"),
            ("PUBLISH", "other-channel", "x"),
            ("KEYS", "*"),
            ("FLUSHALL",),
            ("CONFIG", "GET", "*"),
            ("EVAL", "return 1", "0"),
            ("SCRIPT", "FLUSH"),
            ("CLIENT", "KILL", "ID", "1"),
            ("CLIENT", "LIST"),
            ("ACL", "LIST"),
            ("SHUTDOWN",),
        ]
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                await r.execute_command(*command)  # type: ignore[no-untyped-call]
        # A script it loads runs with the user's own permissions: no way around the ACL.
        sha = await r.script_load("return redis.call('GET', 'other:key')")
        with pytest.raises(redis.exceptions.ResponseError, match=r"can.t access"):
            await r.evalsha(sha, 0)
    with acl_redis.client() as admin:
        assert admin.get("botrix:probe") == b"1"


async def _cli(url: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botrix", "--redis-url", url, *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode()


async def test_worker_and_client_end_to_end_as_the_acl_user(
    acl_redis: ConfiguredRedis, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    url = acl_url(acl_redis)
    worker_id = f"w-acl-{uuid.uuid4().hex[:8]}"
    worker = spawn(url, queue, "--worker-id", worker_id)
    switch_key = f"botrix:test:{queue}:switch"
    k = keys.queue_keys(queue)
    async with (
        Client.from_url(url) as client,
        aredis.Redis.from_url(url, driver_info=None, protocol=2) as producer,
    ):
        # Every claim then runs the rate limit's commands too (none of them outside the ACL).
        await client.set_rate_limit(queue, 1000, 3600)
        echo = await client.enqueue("t.echo", {"n": 1}, queue=queue)
        flaky = await client.enqueue("t.flaky", {"fail_times": 1}, queue=queue)
        failing = await client.enqueue("t.fail", {}, queue=queue, max_retries=0)
        switch = await client.enqueue("t.switch", {"url": url, "key": switch_key}, queue=queue, max_retries=0)
        progress = await client.enqueue("t.items", {"items": 2}, queue=queue)
        delayed = await client.enqueue("t.echo", "later", queue=queue, delay=0.05)
        # A foreign producer with the same user: one RPUSH of an envelope, good and bad.
        await producer.rpush(k.pending, b'{"id":"raw-good","type":"t.echo","payload":2}', b"not json")

        assert (await client.wait(echo, timeout=30)).result == {"echo": {"n": 1}, "attempt": 1}
        flaky_info = await client.wait(flaky, timeout=30)
        assert flaky_info.status is JobStatus.COMPLETED and flaky_info.attempts == 2
        assert (await client.wait(failing, timeout=30)).status is JobStatus.DEAD
        assert (await client.wait(switch, timeout=30)).status is JobStatus.DEAD
        assert (await client.wait(progress, timeout=30)).progress == {"done": 2, "of": 2}
        assert (await client.wait(delayed, timeout=30)).result == {"echo": "later", "attempt": 1}
        assert (await client.wait("raw-good", timeout=30, queue=queue)).status is JobStatus.COMPLETED
        dead = await eventually(lambda: _dead_count(client, queue, 3), what="three dead jobs")
        assert {d.id for d in dead} >= {failing, switch}

        # Fix the cause, re-drive the dead job, and it completes.
        await producer.set(switch_key, "on")
        assert await client.retry_dead(queue, [switch]) == [switch]
        assert (await client.wait(switch, timeout=30)).result == "on"
        assert (await client.job(switch)).status is JobStatus.COMPLETED  # found via the queue index
        assert await client.purge_dead(queue) == 2
        # Every listing's commands; the dead are gone and every other job has finished.
        assert [await client.jobs(queue, state) for state in LISTED_STATES] == [[]] * len(LISTED_STATES)
        await _batch_and_cancel(client, queue)

        records = await eventually(lambda: client.workers(queue), what="the worker's health record")
        assert [r["worker_id"] for r in records] == [worker_id]
        assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}
        assert queue in await client.queues()
        limit = await client.rate_limit(queue)
        assert limit is not None and limit.used >= 8  # every start was counted
        await client.clear_rate_limit(queue)
        await producer.delete(switch_key)

    code, out = await _cli(url, "workers", "--queue", queue)
    assert code == 0 and worker_id in out, out
    code, out = await _cli(url, "dead", "list", "--queue", queue)
    assert code == 0 and out.strip() == "[]", out

    worker.signal(signal.SIGTERM)
    assert await worker.wait() == 0
    assert ACL_PASSWORD not in worker.log_path.read_text()
    assert denials(acl_redis) == []
    with acl_redis.client() as admin:  # the clean exit removed the health record
        assert admin.zscore(keys.WORKERS, worker_id) is None
        # And no error but EVALSHA's NOSCRIPT on a fresh server, after which the store loads
        # each script: none of redis-py's CLIENT SETINFO (Redis 7.2 on) or CLIENT
        # MAINT_NOTIFICATIONS (Redis Enterprise), which fail on every connect.
        assert set(admin.info("errorstats")) <= {"errorstat_NOSCRIPT"}


async def _batch_and_cancel(client: Client, queue: str) -> None:
    """A batch enqueue (a pipeline), and a cancel of a queued job (LREM)."""
    for job_id in await client.enqueue_many("t.echo", [1, 2, 3], queue=queue):
        assert (await client.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
    await client.pause(queue)
    held = await client.enqueue("t.echo", "held", queue=queue)
    assert await client.cancel(held, queue) is JobStatus.QUEUED
    await client.resume(queue)


async def _dead_count(client: Client, queue: str, n: int) -> Any:
    dead = await client.dead(queue)
    return dead if len(dead) == n else None


async def _running_on(client: Client, job_id: str, worker_id: str, attempts: int) -> bool:
    info = await client.job(job_id)
    return info.status is JobStatus.RUNNING and info.worker == worker_id and info.attempts == attempts


async def test_requeue_and_lease_recovery_as_the_acl_user(
    acl_redis: ConfiguredRedis, queue: str, spawn: Callable[..., WorkerProcess]
) -> None:
    """The other write paths: a drain that requeues, and recovery of a killed worker's lease."""
    url = acl_url(acl_redis)
    async with Client.from_url(url) as client:
        job_id = await client.enqueue("t.sleep", {"seconds": 60}, queue=queue)
        first = spawn(url, queue, "--worker-id", "w-acl-first", "--shutdown-timeout", "0.1")
        await eventually(lambda: _running_on(client, job_id, "w-acl-first", 1), what="running on first")
        first.signal(signal.SIGTERM)  # the drain gives up on the job and puts it back
        assert await first.wait() == 0
        requeued = await client.job(job_id)
        assert requeued.status is JobStatus.QUEUED and requeued.attempts == 0

        second = spawn(url, queue, "--worker-id", "w-acl-second")
        await eventually(lambda: _running_on(client, job_id, "w-acl-second", 1), what="running on second")
        second.kill()  # kill -9: its lease runs out and the recoverer takes the job back
        third = spawn(url, queue, "--worker-id", "w-acl-third", "--shutdown-timeout", "0.1")
        await eventually(lambda: _running_on(client, job_id, "w-acl-third", 2), what="recovered")
        await third.wait_for("job.started")
        third.signal(signal.SIGTERM)
        assert await third.wait() == 0
    assert denials(acl_redis) == []
