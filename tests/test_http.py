"""The probe and metrics server through real HTTP against a real worker, in each state."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aredis
from prometheus_client.parser import text_string_to_metric_families

from botrix import keys
from botrix.app import Worker
from botrix.client import Client
from botrix.http import MAX_CONNECTIONS, REQUEST_TIMEOUT_S
from botrix.metrics import MAX_ERROR_LABELS
from botrix.store import Consumer, Store
from tests.conftest import eventually, running_worker
from tests.redisproc import RedisServer, free_port


@asynccontextmanager
async def http_worker(url: str, queue: str, **overrides: Any) -> AsyncIterator[tuple[Worker, str]]:
    async with running_worker(url, queue, http_port=0, http_host="127.0.0.1", **overrides) as worker:
        port = await eventually(lambda: worker.http and worker.http.port, what="http port")
        yield worker, f"http://127.0.0.1:{port}"


async def get(base: str, path: str, **headers: str) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as session, session.get(base + path, headers=headers) as r:
        text = await r.text()
        body = await r.json() if r.content_type == "application/json" else text
        return r.status, body, r.headers.get("Content-Type", "")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def ready(base: str) -> bool:
    return (await get(base, "/ready"))[0] == 200


async def test_probes_answer_when_ready(redis_server: RedisServer, queue: str) -> None:
    async with http_worker(redis_server.url, queue) as (_, base):
        await eventually(lambda: ready(base), what="ready")
        assert await get(base, "/live") == (
            200,
            {"status": "ok", "reason": "ok", "event_loop_lag_s": pytest.approx(0, abs=5)},
            "application/json; charset=utf-8",
        )
        status, body, _ = await get(base, "/ready")
        assert (status, body) == (200, {"status": "ready", "reason": "ok"})
        # The BullMQ worker's paths, for manifests written for it.
        assert (await get(base, "/health/ready"))[:2] == (200, body)
        assert (await get(base, "/health/live"))[1]["status"] == "ok"
        status, health, _ = await get(base, "/health")
        assert status == 200 and health["status"] == "healthy"
        assert health["checks"]["redis"]["status"] == "pass"
        async with aredis.Redis.from_url(redis_server.url) as r:
            version = (await r.info("server"))["redis_version"]
        assert health["checks"]["redis"]["server_version"] == version
        assert health["checks"]["queues"] == {queue: {"pending": 0, "active": 0, "scheduled": 0, "dead": 0}}
        assert health["concurrency"] == 5 and health["jobs_in_flight"] == 0
        memory = health["checks"]["memory"]
        # Not compared: the kernel counts the two lazily, a few hundred kB apart either way.
        assert memory["rss_bytes"] > 0 and memory["peak_rss_bytes"] > 0
        assert memory["limit_bytes"] is None or memory["limit_bytes"] > 0
        for key in ("version", "worker_id", "uptime_seconds", "counters"):
            assert key in health


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "connect"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        pytest.param(
            "::1", "[::1]", marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
        ),
    ],
)
async def test_listens_on_an_address_or_a_name(
    redis_server: RedisServer, queue: str, host: str, connect: str
) -> None:
    async with running_worker(redis_server.url, queue, http_port=0, http_host=host) as worker:
        port = await eventually(lambda: worker.http and worker.http.port, what="http port")
        assert (await get(f"http://{connect}:{port}", "/live"))[0] == 200


async def test_unknown_paths_and_methods_answer_json(redis_server: RedisServer, queue: str) -> None:
    async with http_worker(redis_server.url, queue) as (_, base), aiohttp.ClientSession() as session:
        async with session.get(base + "/nope") as r:
            assert r.status == 404 and await r.json() == {"error": "not_found", "path": "/nope"}
        async with session.post(base + "/live") as r:
            assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"
            assert "GET" in r.headers["Allow"]


async def raw_exchange(base: str, data: bytes) -> bytes:
    """Send raw bytes to the probe port; everything it answers until it closes the connection."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(30):
            answer = await reader.read()
    except ConnectionResetError:  # the server closed with our bytes unread: dropped
        answer = b""
    writer.close()
    return answer


async def test_http_speaks_keep_alive_pipelining_head_and_http10(
    redis_server: RedisServer, queue: str
) -> None:
    async with http_worker(redis_server.url, queue) as (_, base):
        await eventually(lambda: ready(base), what="ready")  # (a loaded machine starts it slower)
        # Two pipelined requests on one connection, the second asking to close it.
        answer = await raw_exchange(
            base,
            b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert answer.count(b"HTTP/1.1 200 ") == 2 and b'"status":"ready"' in answer
        head = await raw_exchange(base, b"HEAD /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # headers only
        old = await raw_exchange(base, b"GET /live HTTP/1.0\r\n\r\n")
        assert old.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in old


async def test_http_drops_garbage_and_oversized_requests_and_keeps_serving(
    redis_server: RedisServer, queue: str
) -> None:
    async with http_worker(redis_server.url, queue) as (_, base):
        assert await raw_exchange(base, b"\x00\x01 not http at all\r\n\r\n") == b""
        huge = b"GET /live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        assert await raw_exchange(base, huge) == b""
        body = b"x" * 200_000
        post = b"POST /live HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        answer = await raw_exchange(base, post)
        assert answer.startswith(b"HTTP/1.1 413 ")  # refused by its Content-Length, never read
        status, body_json, _ = await get(base, "/live")
        assert status == 200 and body_json["status"] == "ok"


async def test_idle_connections_cannot_lock_the_probes_out(redis_server: RedisServer, queue: str) -> None:
    async with http_worker(redis_server.url, queue) as (_, base):
        host, port = base.removeprefix("http://").split(":")
        idle = [await asyncio.open_connection(host, int(port)) for _ in range(MAX_CONNECTIONS + 5)]
        try:
            status, body, _ = await get(base, "/live")  # the oldest idle one makes room
            assert status == 200 and body["status"] == "ok"
        finally:
            for _, writer in idle:
                writer.close()


@pytest.mark.slow
async def test_a_request_trickling_in_is_cut_off(redis_server: RedisServer, queue: str) -> None:
    async with http_worker(redis_server.url, queue) as (_, base):
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        sent = 0
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S * 3):  # a guard against a hang only
                while not reader.at_eof():
                    writer.write(b"GET /live HTTP/1.1\r\nX-Slow: "[sent : sent + 1] or b"a")
                    sent += 1
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            assert await reader.read() == b""
        except ConnectionResetError:
            pass  # closed while we were writing: cut off all the same
        finally:
            writer.close()
        status, _, _ = await get(base, "/live")
        assert status == 200


async def test_metrics_handlers_make_are_served_beside_botrixs(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """A handler's own prometheus_client metric (default registry) is on /metrics, and the
    process metrics both registries have are there once."""
    async with http_worker(redis_server.url, queue) as (_, base):
        job_id = await client.enqueue("t.report", {"kind": "monthly"}, queue=queue)
        await client.wait(job_id, timeout=30, queue=queue)
        _, text, _ = await get(base, "/metrics")
    assert samples(text)[("app_reports_built_total", (("kind", "monthly"),))] >= 1
    assert text.count("# TYPE process_cpu_seconds_total") == 1
    assert text.count("# TYPE python_info") == 1


async def test_metrics_move_as_jobs_complete_fail_and_retry(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with http_worker(redis_server.url, queue, max_retries=1) as (_, base):
        for job_type in ("t.echo", "t.echo", "t.fail", "t.flaky"):
            job_id = await client.enqueue(job_type, {"fail_times": 1}, queue=queue)
            await client.wait(job_id, timeout=30)
        await client.enqueue("no.such.type", {}, queue=queue)
        await eventually(
            lambda: _has(base, "botrix_jobs_total", queue, "unknown", "dead"), what="dead counted"
        )
        # Depths and workers are read from Redis at most once a second (DEPTH_CACHE_S): a scrape
        # just after the last claim may still show the job pending.
        await eventually(lambda: _settled(base, queue), what="the depth and the worker seen")
        status, text, content_type = await get(base, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    m = samples(text)
    q = ("queue", queue)
    assert m[("botrix_jobs_total", (("outcome", "completed"), q, ("type", "t.echo")))] == 2
    assert m[("botrix_jobs_total", (("outcome", "retry"), q, ("type", "t.fail")))] == 1
    assert m[("botrix_jobs_total", (("outcome", "dead"), q, ("type", "t.fail")))] == 1
    assert m[("botrix_jobs_total", (("outcome", "completed"), q, ("type", "t.flaky")))] == 1
    assert m[("botrix_job_retries_total", (q, ("type", "t.flaky")))] == 1
    assert m[("botrix_jobs_dead_total", (q, ("type", "unknown")))] == 1
    failures = {labels: value for (name, labels), value in m.items() if name == "botrix_job_failures_total"}
    assert failures == {
        (("error", "RuntimeError"), ("outcome", "retry"), q, ("type", "t.fail")): 1,
        (("error", "RuntimeError"), ("outcome", "dead"), q, ("type", "t.fail")): 1,
        (("error", "ConnectionError"), ("outcome", "retry"), q, ("type", "t.flaky")): 1,
        (("error", "UnknownJobType"), ("outcome", "dead"), q, ("type", "unknown")): 1,
    }
    assert m[("botrix_job_duration_seconds_count", (q, ("type", "t.echo")))] == 2
    assert m[("botrix_job_queue_wait_seconds_count", (q,))] == 6  # the unknown type never started
    assert m[("botrix_concurrency", ())] == 5
    assert m[("botrix_redis_up", ())] == 1
    assert m[("botrix_worker_live", ())] == m[("botrix_worker_ready", ())] == 1
    assert m[("botrix_queue_depth", (q, ("state", "pending")))] == 0
    assert m[("botrix_queue_workers", (q,))] == 1  # this worker, by its health record
    assert ("process_resident_memory_bytes", ()) in m
    assert m[("python_gc_collections_total", (("generation", "0"),))] >= 0
    assert any(name == "botrix_build_info" for name, _ in m)
    assert not any("job_id" in dict(labels) for _, labels in m)


async def test_failures_are_counted_by_error_class_up_to_a_bound(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Each error class is a series of botrix_job_failures; a handler making a class per
    failure cannot grow them without end: past MAX_ERROR_LABELS the rest count as "other"."""
    async with http_worker(redis_server.url, queue, max_retries=0) as (_, base):
        for i in range(MAX_ERROR_LABELS + 2):
            job_id = await client.enqueue("t.fail_as", {"error": f"Error{i}"}, queue=queue)
            await client.wait(job_id, timeout=30)
        _, text, _ = await get(base, "/metrics")
    errors = {
        dict(labels)["error"]: value
        for (name, labels), value in samples(text).items()
        if name == "botrix_job_failures_total"
    }
    assert errors == {**{f"Error{i}": 1 for i in range(MAX_ERROR_LABELS)}, "other": 2}


async def test_a_job_its_dead_worker_leaves_is_counted_dead_as_lease_expired(
    redis_server: RedisServer, client: Client, store: Store, queue: str
) -> None:
    """A claim by a worker that never comes back (its lease 50 ms, its attempts used up): the
    recoverer of a live worker dead-letters it, and counts it under the error in its record."""
    job_id = await client.enqueue("t.echo", {}, queue=queue, max_retries=0)
    gone = Consumer("gone-worker", lease_ms=50, max_envelope_bytes=10_000, result_ttl=60, dead_cap=10)
    assert len((await store.exchange(queue, [], 1, gone, lane=0)).claimed) == 1
    async with http_worker(redis_server.url, queue) as (_, base):
        info = await client.wait(job_id, timeout=30, queue=queue)
        assert info.error is not None and info.error["type"] == "LeaseExpired"
        await eventually(
            lambda: _has(base, "botrix_lease_recoveries_total", queue, "", "dead"), what="recovery counted"
        )
        m = samples((await get(base, "/metrics"))[1])
    q, echo = ("queue", queue), ("type", "t.echo")
    assert m[("botrix_jobs_dead_total", (q, echo))] == 1
    assert m[("botrix_job_failures_total", (("error", "LeaseExpired"), ("outcome", "dead"), q, echo))] == 1


async def test_a_dead_letter_made_by_the_claim_is_counted_like_any_other(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """A foreign envelope over the size limit and an entry whose record was overwritten never
    reach a handler; the claim dead-letters them, and the worker counts them all the same."""
    k = keys.queue_keys(queue)
    big = orjson.dumps({"type": "t.echo", "payload": "x" * 5000})
    overwritten = await client.enqueue("t.echo", {}, queue=queue)
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.set(k.job(overwritten), "oops")
        await r.rpush(k.pending, big)
    async with http_worker(redis_server.url, queue, max_payload_bytes=1000) as (_, base):
        after = await client.enqueue("t.echo", {}, queue=queue)
        await client.wait(after, timeout=30, queue=queue)
        _, health, _ = await get(base, "/health")
        text = (await get(base, "/metrics"))[1]
    assert health["counters"]["jobs_dead"] == 2
    m = samples(text)
    q, unknown = ("queue", queue), ("type", "unknown")
    assert m[("botrix_jobs_dead_total", (q, unknown))] == 2
    for error in ("EnvelopeError", "RecordError"):
        assert m[("botrix_job_failures_total", (("error", error), ("outcome", "dead"), q, unknown))] == 1


async def test_health_records_someone_else_wrote_are_skipped(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    """Text, a JSON array and another type where a worker's health record belongs: /metrics and
    the workers list skip them (one bad key used to fail /metrics on every worker)."""
    bad = {f"bad-{queue}-{i}": i for i in range(3)}
    async with aredis.Redis.from_url(redis_server.url) as r:
        await r.set(keys.worker_health(f"bad-{queue}-0"), "not json")
        await r.set(keys.worker_health(f"bad-{queue}-1"), "[1, 2]")
        await r.sadd(keys.worker_health(f"bad-{queue}-2"), "a set")
        await r.zadd(keys.WORKERS, dict.fromkeys(bad, 2**50))
        try:
            async with http_worker(redis_server.url, queue) as (worker, base):
                await eventually(lambda: client.workers(queue), what="the worker's own record")
                status, text, _ = await get(base, "/metrics")
                assert status == 200
                assert samples(text)[("botrix_queue_workers", (("queue", queue),))] == 1
                assert [w["worker_id"] for w in await client.workers(queue)] == [worker.settings.worker_id]
        finally:
            await r.zrem(keys.WORKERS, *bad)
            await r.delete(*(keys.worker_health(w) for w in bad))


async def _settled(base: str, queue: str) -> bool:
    m = samples((await get(base, "/metrics"))[1])
    q = ("queue", queue)
    return (
        m.get(("botrix_queue_depth", (q, ("state", "pending")))) == 0
        and m.get(("botrix_queue_workers", (q,))) == 1
    )


async def _has(base: str, name: str, queue: str, job_type: str, outcome: str) -> bool:
    """Whether ``name`` counted ``outcome`` for the queue (and the type, unless it is "")."""
    text = (await get(base, "/metrics"))[1]
    typed = (("type", job_type),) if job_type else ()
    key = (name, (("outcome", outcome), ("queue", queue), *typed))
    return samples(text).get(key, 0) >= 1


async def test_openmetrics_when_the_scraper_asks(redis_server: RedisServer, queue: str) -> None:
    async with http_worker(redis_server.url, queue) as (_, base):
        status, text, content_type = await get(
            base, "/metrics", Accept="application/openmetrics-text; version=1.0.0"
        )
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with `make deps`")
async def test_promtool_accepts_the_exposition(redis_server: RedisServer, client: Client, queue: str) -> None:
    async with http_worker(redis_server.url, queue) as (_, base):
        await client.wait(await client.enqueue("t.echo", {}, queue=queue), timeout=30)
        text = (await get(base, "/metrics"))[1]
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


async def test_redis_down_makes_ready_fail_but_not_live(own_redis: RedisServer, queue: str) -> None:
    async with http_worker(own_redis.url, queue) as (_, base):
        await eventually(lambda: ready(base), what="ready")
        own_redis.stop()

        async def unready() -> Any:
            status, body, _ = await get(base, "/ready")
            return body if status == 503 else None

        body = await eventually(unready, what="ready 503")
        assert body["reason"] == "redis_unreachable" and "detail" in body
        assert (await get(base, "/live"))[0] == 200
        status, health, _ = await get(base, "/health")
        assert status == 200 and health["status"] == "degraded"
        assert health["checks"]["redis"]["status"] == "fail"
        own_redis.start()
        await eventually(lambda: ready(base), what="ready again")


async def test_ready_turns_503_the_moment_draining_starts(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with http_worker(redis_server.url, queue, shutdown_timeout=30) as (worker, base):
        await eventually(lambda: ready(base), what="ready")
        job_id = await client.enqueue("t.sleep", {"seconds": 1}, queue=queue)
        await eventually(lambda: worker.state.in_flight, what="job running")
        worker.request_stop("test")
        status, body, _ = await get(base, "/ready")
        assert (status, body) == (503, {"status": "not_ready", "reason": "draining"})
        assert (await get(base, "/live"))[0] == 200
        assert (await client.wait(job_id, timeout=30)).result == "slept"


async def test_starting_worker_without_redis_is_not_ready(tmp_path: Path, queue: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with http_worker(url, queue) as (_, base):
        status, body, _ = await get(base, "/ready")
        assert status == 503 and body["reason"] in ("starting", "redis_unreachable")
        assert (await get(base, "/live"))[0] == 200
        m = samples((await get(base, "/metrics"))[1])
    assert (m[("botrix_worker_live", ())], m[("botrix_worker_ready", ())]) == (1, 0)


async def test_live_fails_after_a_handler_blocks_the_loop(
    redis_server: RedisServer, client: Client, queue: str
) -> None:
    async with http_worker(redis_server.url, queue, live_max_lag=0.3, lease_seconds=30) as (_, base):
        await client.enqueue("t.block", {"seconds": 1.0}, queue=queue)
        status, body, _ = await eventually(lambda: _live_failed(base), what="live 503")
    assert status == 503 and body["reason"] == "event_loop_blocked" and body["event_loop_lag_s"] >= 0.3


async def _live_failed(base: str) -> tuple[int, Any, str] | None:
    answer = await get(base, "/live")
    return answer if answer[0] == 503 else None


async def test_no_secret_on_any_endpoint(tmp_path: Path, queue: str) -> None:
    secret = "pw-http-9xQ-never"
    server = RedisServer(tmp_path / "r")
    server.password = secret
    server.start()
    try:
        async with http_worker(server.url, queue) as (_, base):
            await eventually(lambda: ready(base), what="ready")
            server.stop()
            await eventually(lambda: _not_ready(base), what="outage seen")
            for path in ("/live", "/ready", "/health", "/metrics"):
                assert secret not in str((await get(base, path))[1])
            server.start()
    finally:
        server.stop()


async def _not_ready(base: str) -> bool:
    return not await ready(base)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus comes with `make deps`")
async def test_a_real_prometheus_scrapes_the_worker(
    redis_server: RedisServer, client: Client, queue: str, tmp_path: Path
) -> None:
    async with http_worker(redis_server.url, queue) as (worker, _):
        await client.wait(await client.enqueue("t.echo", {}, queue=queue), timeout=30)
        assert worker.http is not None
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: botrix\n    static_configs: [{{targets: ['127.0.0.1:{worker.http.port}']}}]\n"
        )
        port = free_port()
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            query = f"http://127.0.0.1:{port}/api/v1/query?query=botrix_jobs_total"

            async def answered() -> Any:
                try:
                    async with aiohttp.ClientSession() as s, s.get(query) as r:
                        data = await r.json()
                except aiohttp.ClientError:
                    return None
                return data["data"]["result"] if data.get("status") == "success" else None

            deadline = time.monotonic() + 60
            result = None
            while not result and time.monotonic() < deadline:
                result = await answered()
                await asyncio.sleep(0.5)
            assert result, "prometheus never returned botrix_jobs_total"
            series = {(r["metric"]["queue"], r["metric"]["outcome"]): float(r["value"][1]) for r in result}
            assert series[(queue, "completed")] >= 1
        finally:
            prom.terminate()
            prom.wait(timeout=30)
