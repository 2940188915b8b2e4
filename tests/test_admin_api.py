"""The HTTP admin API on the probe port: the CLI's operations, behind a bearer token."""

from __future__ import annotations

import asyncio
import http.client
from typing import Any

import aiohttp
import pytest

from botrix import keys
from botrix.client import Client
from botrix.model import JobStatus
from tests.conftest import eventually
from tests.redisproc import RedisServer
from tests.test_http import get, http_worker, ready

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def call(base: str, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, base + path, json=body, headers={**AUTH, **headers}) as r,
    ):
        return r.status, await r.json()


async def test_the_admin_api_does_what_the_cli_does(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Stats, dead letters listed, retried and purged, pause and resume, rate limits, a job's
    record and the workers: each answered from Redis as the CLI would, and mutations logged."""
    async with http_worker(redis_server.url, queue, admin_token=TOKEN) as (worker, base):
        done = await client.enqueue("t.echo", 1, queue=queue)
        dead = [await client.enqueue("t.fail", i, queue=queue, max_retries=0) for i in range(3)]
        for job_id in [done, *dead]:
            await client.wait(job_id, timeout=30)

        status, stats = await call(base, "GET", f"/queues/{queue}")
        assert status == 200
        assert stats == {
            "queue": queue, "pending": 0, "active": 0, "scheduled": 0, "dead": 3,
            "paused": False, "rate_limit": None, "workers": 1,
        }  # fmt: skip
        status, listed = await call(base, "GET", "/queues")
        assert status == 200 and (listed[queue]["dead"], listed[queue]["workers"]) == (3, 1)
        status, letters = await call(base, "GET", f"/queues/{queue}/dead?limit=2")
        assert status == 200 and len(letters) == 2 and {d["id"] for d in letters} <= set(dead)
        assert letters[0]["error"]["type"] == "RuntimeError"
        every = (await call(base, "GET", f"/queues/{queue}/jobs?state=dead"))[1]
        status, page = await call(base, "GET", f"/queues/{queue}/jobs?state=dead&offset=1&limit=5")
        assert status == 200 and [d["id"] for d in page] == [d["id"] for d in every[1:]]
        assert sorted(d["id"] for d in every) == sorted(dead)
        assert await call(base, "GET", f"/queues/{queue}/jobs") == (200, [])  # queued, by default

        assert await call(base, "POST", f"/queues/{queue}/pause") == (200, {"queue": queue, "paused": True})
        assert await client.is_paused(queue)
        held = [await client.enqueue("t.echo", i, queue=queue) for i in range(2)]
        assert await call(base, "POST", f"/queues/{queue}/cancel") == (
            200, {"queue": queue, "state": "queued", "cancelled": 2},
        )  # fmt: skip
        assert {(await client.job(i, queue)).status for i in held} == {JobStatus.CANCELLED}
        status, retried = await call(base, "POST", f"/queues/{queue}/dead/retry", {"ids": [dead[0]]})
        assert (status, retried) == (200, {"retried": [dead[0]]})
        assert (await client.job(dead[0], queue)).status is JobStatus.QUEUED  # paused: it waits
        assert await call(base, "POST", f"/queues/{queue}/resume") == (200, {"queue": queue, "paused": False})
        assert (await client.wait(dead[0], timeout=30)).status is JobStatus.DEAD  # it fails again
        assert await call(base, "POST", f"/queues/{queue}/dead/purge", {"all": True}) == (200, {"purged": 3})

        rate = {"max": 10, "per_s": 1.5}
        status, limited = await call(base, "PUT", f"/queues/{queue}/rate-limit", rate)
        assert (status, limited["rate_limit"]) == (200, {"max": 10, "per_s": 1.5, "used": 0})
        assert (await client.rate_limit(queue)) is not None
        status, shown = await call(base, "GET", f"/queues/{queue}/rate-limit")
        assert shown["rate_limit"]["max"] == 10
        changed = {**shown["rate_limit"], "max": 20}  # what GET shows, edited, is what PUT takes
        status, shown = await call(base, "PUT", f"/queues/{queue}/rate-limit", changed)
        assert (status, shown["rate_limit"]["max"]) == (200, 20)
        assert await call(base, "DELETE", f"/queues/{queue}/rate-limit") == (
            200, {"queue": queue, "rate_limit": None},
        )  # fmt: skip
        assert await client.rate_limit(queue) is None

        status, job = await call(base, "GET", f"/jobs/{done}?queue={queue}")
        assert (status, job["status"], job["result"]) == (200, "completed", {"echo": 1, "attempt": 1})
        status, workers = await call(base, "GET", f"/workers?queue={queue}")
        assert status == 200 and [w["worker_id"] for w in workers] == [worker.settings.worker_id]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("GET", "/queues/a%20b", None, 400, "bad_request"),
        ("GET", "/jobs/no-such-job", None, 404, "not_found"),
        ("GET", "/queues/q/dead?limit=0", None, 400, "bad_request"),
        ("GET", "/queues/q/dead?limit=x&limit=y", None, 400, "bad_request"),
        ("GET", "/queues/q/jobs?state=completed", None, 400, "bad_request"),
        ("GET", "/queues/q/jobs?offset=-1", None, 400, "bad_request"),
        ("GET", "/queues/q/jobs?limit=1001", None, 400, "bad_request"),
        ("POST", "/queues/q/cancel?state=dead", None, 400, "bad_request"),
        ("POST", "/queues/q/dead/retry", {"ids": []}, 400, "bad_request"),
        ("POST", "/queues/q/dead/purge", None, 400, "bad_request"),
        ("POST", "/queues/q/dead/purge", {"ids": ["a b"]}, 400, "bad_request"),
        ("PUT", "/queues/q/rate-limit", {"max": 0, "per_s": 1}, 400, "bad_request"),
        ("PUT", "/queues/q/rate-limit", {"max": 5, "per": 1}, 400, "bad_request"),
        ("PUT", "/queues/q/rate-limit", {"max": 5}, 400, "bad_request"),
        ("DELETE", "/queues/q/pause", None, 405, "method_not_allowed"),
        ("GET", "/queues/q/nothing", None, 404, "not_found"),
    ],
)
async def test_bad_admin_requests_say_why_and_change_nothing(
    redis_server: RedisServer,
    client: Client,
    queue: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    error: str,
) -> None:
    async with http_worker(redis_server.url, queue, admin_token=TOKEN) as (_, base):
        answer = await call(base, method, path, body)
        assert (answer[0], answer[1]["error"]) == (status, error), answer
        assert not await client.is_paused("q") and await client.rate_limit("q") is None


async def test_the_admin_api_needs_its_token_and_is_off_without_one(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """No token, a wrong one, another scheme: 401 and nothing done; no token configured: the
    API is off (403) while the probes answer; the token never shows in an answer or the log."""
    async with http_worker(redis_server.url, queue, admin_token=TOKEN) as (worker, base):
        for headers in (
            {"Authorization": ""},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            status, body = await call(base, "POST", f"/queues/{queue}/pause", **headers)
            assert status == 401 and body["error"] == "unauthorized" and TOKEN not in str(body)
        assert not await client.is_paused(queue)
        status, health, _ = await get(base, "/health")
        assert status == 200 and TOKEN not in str(health)
        assert TOKEN not in repr(worker.settings)
    async with http_worker(redis_server.url, queue) as (_, base):
        await eventually(lambda: _ready(base), what="ready")
        status, body = await call(base, "GET", "/queues")
        assert (status, body["error"]) == (403, "admin_api_off")


async def _ready(base: str) -> bool:
    return (await get(base, "/ready"))[0] == 200


async def test_records_botrix_never_wrote_are_answered_not_dropped(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """A payload nested deeper than orjson writes, a record with a status botrix never writes,
    a member of the queue index that is no queue name: each gets an answer, never a dropped
    connection or a 500."""
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    envelope = b'{"id":"deep","type":"t.ignore","payload":' + _nested(300) + b"}"
    r = redis_server.client()
    r.rpush(keys.queue_keys(queue).pending, envelope)
    async with http_worker(redis_server.url, queue, admin_token=TOKEN) as (_, base):
        assert (await client.wait("deep", timeout=30, queue=queue)).status is JobStatus.COMPLETED
        status, job = await call(base, "GET", f"/jobs/deep?queue={queue}")
        assert status == 200 and job["payload"] == deep
        r.hset(keys.queue_keys(queue).job("odd"), mapping={"status": "bogus", "envelope": "{}"})
        status, body = await call(base, "GET", f"/jobs/odd?queue={queue}")
        assert (status, body["error"]) == (409, "queue_damaged") and "has status" in body["detail"]
        r.sadd(keys.QUEUES, b"\xff\xfe not a queue")
        r.sadd(keys.QUEUES, "broken")
        r.set(keys.queue_keys("broken").rate, "not a hash")
        r.set(keys.queue_keys("broken").paused, "1")
        r.rpush(keys.queue_keys("broken").pending, "a", "b")
        status, listed = await call(base, "GET", "/queues")
        assert status == 200 and queue in listed  # the broken queue does not hide the others
        broken = listed["broken"]
        assert "is not a rate limit" in broken["damaged"]
        # nor does its damaged key hide what can be read of it
        assert (broken["paused"], broken["pending"], broken["rate_limit"]) == (True, 2, None)
        r.delete(keys.queue_keys("broken").rate, keys.queue_keys("broken").paused)
        r.sadd(keys.queue_keys("broken").paused, "a set")
        status, listed = await call(base, "GET", "/queues")
        broken = listed["broken"]
        assert "is not a pause flag" in broken["damaged"]
        assert (broken["paused"], broken["pending"], broken["rate_limit"]) == (None, 2, None)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


async def test_jobs_enqueued_over_http_run_and_bad_ones_are_refused(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """POST /queues/{q}/jobs: a job a worker runs, one with its own id and a delay, and bodies
    that would be dead-lettered or are not jobs at all, refused with the reason and not queued.
    A payload over --max-payload-bytes is 413, whether the client or the server sees it."""
    async with http_worker(redis_server.url, queue, admin_token=TOKEN, max_payload_bytes=4096) as (_, base):
        status, answer = await call(base, "POST", f"/queues/{queue}/jobs", {"type": "t.echo", "payload": 7})
        assert status == 200 and answer["queue"] == queue
        done = await client.wait(answer["id"], timeout=30, queue=queue)
        assert (done.status, done.result) == (JobStatus.COMPLETED, {"echo": 7, "attempt": 1})

        later = {"type": "t.echo", "payload": {"n": 1}, "id": f"own-{queue}", "delay_s": 3600,
                 "max_retries": 2, "timeout_s": 5, "correlation_id": "req-1"}  # fmt: skip
        assert await call(base, "POST", f"/queues/{queue}/jobs", later) == (
            200,
            {"id": f"own-{queue}", "queue": queue},
        )
        info = await client.job(f"own-{queue}", queue)
        assert info.status is JobStatus.SCHEDULED and info.payload == {"n": 1}
        # "once": the completed job's id is not run again while its record is kept.
        again = {"type": "t.echo", "payload": 8, "id": answer["id"], "once": True}
        assert (await call(base, "POST", f"/queues/{queue}/jobs", again))[0] == 200
        assert (await client.job(answer["id"], queue)).result == {"echo": 7, "attempt": 1}

        for body, reason in [
            ({"payload": 1}, "a JSON object with 'type'"),
            ({"type": "t.echo", "priority": "high"}, "a JSON object with 'type'"),
            ([1, 2], "a JSON object with 'type'"),
            ({"type": 5}, "'type' must be a string"),
            ({"type": "t.echo", "delay_s": "soon"}, "'delay_s' must be a number"),
            ({"type": "t.echo", "delay_s": -1}, "'delay_s' must not be negative"),
            ({"type": "t.echo", "max_retries": True}, "'max_retries' must be a whole number"),
            ({"type": "t.echo", "once": "yes"}, "'once' must be true or false"),
            ({"type": "t.echo", "id": "has spaces"}, "job id must be"),
            ({"type": "t.echo", "max_retries": -1}, "max_retries"),
            ({"type": ""}, "type"),
        ]:
            status, answer = await call(base, "POST", f"/queues/{queue}/jobs", body)
            assert (status, answer["error"]) == (400, "bad_request"), (body, answer)
            assert reason in answer["detail"], (body, answer)
        status, answer = await call(
            base, "POST", f"/queues/{queue}/jobs", {"type": "t.echo", "payload": "x" * 5000}
        )
        assert (status, answer["error"]) == (413, "payload_too_large") and "4096 byte limit" in answer[
            "detail"
        ]
        status, answer = await call(
            base, "POST", f"/queues/{queue}/jobs", {"type": "t.echo", "payload": "x" * 80_000}
        )
        assert (status, answer["error"]) == (413, "payload_too_large") and "request body is over" in answer[
            "detail"
        ]
        # Before the token is checked no body over 64 KiB is taken in, on any path, and one of
        # several MB still gets its 413 (read and dropped, not reset under the client's feet).
        near = {"type": "t.echo", "payload": "x" * 66_000}
        status, answer = await call(base, "POST", f"/queues/{queue}/jobs", near)
        assert (status, answer["error"]) == (413, "payload_too_large") and "4096 byte limit" in answer[
            "detail"
        ]
        status, answer = await call(base, "POST", f"/queues/{queue}/jobs", near, Authorization="Bearer wrong")
        assert (status, answer["error"]) == (413, "payload_too_large") and "65536 byte limit" in answer[
            "detail"
        ]
        # http.client sends the whole body before it reads: a close with its bytes unread
        # reset the connection, and it saw ConnectionResetError instead of the 413.
        assert await asyncio.to_thread(_post_status, base, f"/queues/{queue}/jobs", b"x" * 12_000_000) == 413
        assert await client.depth(queue) == {"pending": 0, "active": 0, "scheduled": 1, "dead": 0}


async def test_the_bullmq_workers_paths_and_head_answer_too(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """The paths of the BullMQ worker's API reference answer as their botrix forms do, so the
    scripts its operators wrote keep working; HEAD answers wherever GET does, with no body."""
    async with http_worker(redis_server.url, queue, admin_token=TOKEN) as (_, base):
        dead = [await client.enqueue("t.fail", i, queue=queue, max_retries=0) for i in range(3)]
        for job_id in dead:
            await client.wait(job_id, timeout=30)
        assert await call(base, "GET", f"/queues/{queue}/stats") == await call(
            base, "GET", f"/queues/{queue}"
        )
        assert await call(base, "GET", f"/queues/{queue}/failed") == await call(
            base, "GET", f"/queues/{queue}/dead"
        )
        assert await call(base, "POST", f"/queues/{queue}/retry/{dead[0]}") == (200, {"retried": [dead[0]]})
        await eventually(lambda: _dead_count(client, queue, 3), what="the retried job dead again")
        status, answer = await call(base, "POST", f"/queues/{queue}/retry/no-such-job")
        assert (status, answer["error"]) == (404, "not_found") and "no-such-job" in answer["detail"]
        status, answer = await call(base, "POST", f"/queues/{queue}/retry-failed")
        assert status == 200 and sorted(answer["retried"]) == sorted(dead)

        async with (
            aiohttp.ClientSession() as session,
            session.head(f"{base}/queues/{queue}", headers=AUTH) as r,
        ):
            assert r.status == 200 and int(r.headers["Content-Length"]) > 0 and await r.read() == b""
        async with aiohttp.ClientSession() as session, session.head(f"{base}/queues/{queue}") as r:
            assert r.status == 401


def _post_status(base: str, path: str, body: bytes) -> int:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", path, body=body, headers=AUTH)
        return connection.getresponse().status
    finally:
        connection.close()


async def _dead_count(client: Client, queue: str, count: int) -> bool:
    return (await client.depth(queue))["dead"] == count


async def test_what_others_wrote_over_botrixs_keys_gets_an_answer_not_a_500(
    own_redis: RedisServer, queue: str
) -> None:
    """A worker health record of another shape, a worker id or dead member that is not UTF-8:
    /metrics and /health still answer on every worker, and `--all` ends (it read such a
    member again and again before, inside the worker, past the API's 10 s)."""
    r = own_redis.client()
    r.zadd(keys.WORKERS, {b"evil": 99_999_999_999_999, b"\xff\xfe": 99_999_999_999_999})
    r.set(keys.worker_health("evil"), b'{"queues": 5, "status": "running"}')
    r.zadd(keys.queue_keys(queue).dead, {b"\xff": 1, b"gone": 2})
    async with http_worker(own_redis.url, queue, admin_token=TOKEN) as (_, base):
        await eventually(lambda: ready(base), what="ready")
        for path in ("/metrics", "/health", f"/queues/{queue}", f"/workers?queue={queue}"):
            status, _, _ = await get(base, path, authorization=f"Bearer {TOKEN}")
            assert status == 200, path
        status, body = await call(base, "POST", f"/queues/{queue}/dead/purge", {"all": True})
        assert (status, body) == (200, {"purged": 0}) and r.zcard(keys.queue_keys(queue).dead) == 0
        status, body = await call(base, "POST", f"/queues/{queue}/jobs", {"type": "t.echo", "delay_s": None})
        assert status == 200, body
        status, body = await call(base, "POST", f"/queues/{queue}/jobs", {"type": "t.echo", "id": ""})
        assert (status, body["error"]) == (400, "bad_request") and "job id must be" in body["detail"]
