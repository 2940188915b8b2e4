"""The probe and metrics server: /live, /ready, /health, /metrics, on the jobs' event loop.

With ``--admin-token`` it also serves the admin API (admin_api.py) under /queues, /jobs and
/workers; without, those paths answer 403.

``/live`` depends only on the process (event loop responsive, heartbeat running), never on
Redis, so a Redis outage cannot make an orchestrator restart every worker at once. ``/ready``
says whether this worker should be given work: Redis answering, handlers loaded, not draining.
Queue depths come from Redis with a short timeout and are cached briefly, so a slow Redis
cannot hang a scrape. Nothing here ever shows a secret.

The server is h11 (the HTTP/1.1 protocol: parsing, framing, keep-alive) on asyncio streams.
It replaced aiohttp, whose import alone cost 11.5 MB of the worker's 55 MB peak RSS for four
GET endpoints (docs/performance.md). Bounds a probe port needs: a request's head may take
16 KiB, a request (from its first byte) and the sending of its answer REQUEST_TIMEOUT_S each,
an idle keep-alive connection is closed after IDLE_TIMEOUT_S, and at most MAX_CONNECTIONS are
open at once: past that, the oldest idle one is closed to make room, or the new one refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
import orjson
from prometheus_client.exposition import choose_encoder

from botrix.config import Settings
from botrix.health import Phase, WorkerState, memory_usage, serving
from botrix.logs import Logger
from botrix.metrics import Metrics
from botrix.store import ForeignWrite, Store, StoreUnavailable

if TYPE_CHECKING:
    from botrix.admin_api import AdminApi

#: Redis counts as reachable if it answered within this many seconds (the heartbeat pings every 2 s).
REDIS_FRESH_S = 10.0
#: Queue depths are read from Redis at most this often, each read bounded by the timeout.
DEPTH_CACHE_S = 1.0
DEPTH_TIMEOUT_S = 0.5

REQUEST_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 64
READ_CHUNK = 16384
#: The largest request body, but for an enqueue through the admin API that carries its token,
#: which may add a payload of up to --max-payload-bytes: before a request is authenticated,
#: no one may make the worker hold more than this per connection.
MAX_BODY = 65536
#: The admin API's enqueue path, the one request that may carry a large body.
ENQUEUE_PATH = re.compile(rb"/queues/[^/?]+/jobs/?")
#: After a 413 the connection closes; what the client still sends is read and dropped for up
#: to this long first, or closing with unread data would reset the connection and lose the 413.
LINGER_S = 2.0
JSON = "application/json; charset=utf-8"
#: The first path segments of the admin API (botrix/admin_api.py), which is imported only when
#: a token turns it on: with the client it pulls in, a quarter of a MB no other worker needs.
ADMIN_PATHS = ("queues", "jobs", "workers")


@dataclass(frozen=True, slots=True)
class Reply:
    """What an endpoint answers: status, body and its content type, extra headers."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, body: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        """A JSON answer (every endpoint but /metrics)."""
        return cls(status, orjson.dumps(body), JSON, headers)


Endpoint = Callable[[h11.Request], Awaitable[Reply]]


class HttpServer:
    """Serves the probes and metrics until ``stop``; ``started`` is set once it listens."""

    def __init__(
        self,
        settings: Settings,
        state: WorkerState,
        store: Store,
        metrics: Metrics,
        draining: asyncio.Event,
        version: str,
        log: Logger,
    ) -> None:
        self._settings = settings
        self._state = state
        self._store = store
        self._metrics = metrics
        self._draining = draining
        self._version = version
        self._log = log
        self._depth_at = 0.0
        self._depth_lock = asyncio.Lock()
        metrics.serve_probes(self.liveness, self.readiness)
        self._server: asyncio.Server | None = None
        self.port: int | None = None
        self._routes: dict[str, Endpoint] = {
            "/live": self._live,
            "/ready": self._ready,
            "/health": self._health,
            "/metrics": self._metrics_page,
            # The paths of the BullMQ worker botrix replaces, so its manifests keep working.
            "/health/live": self._live,
            "/health/ready": self._ready,
        }
        self._admin: AdminApi | None = None
        if settings.admin_token:
            from botrix.admin_api import AdminApi

            self._admin = AdminApi(store, settings.admin_token, log, settings.max_payload_bytes)
        self._max_payload = settings.max_payload_bytes
        # Open connections and whether each is idle (between requests), oldest first.
        self._open: dict[asyncio.StreamWriter, bool] = {}

    async def listen(self) -> None:
        """Bind the port; raises OSError (port taken, address not ours) before any work starts."""
        host, port = self._settings.http_host, self._settings.http_port
        sock = _bound_socket(host, port)
        if sock is None:
            self._server = await asyncio.start_server(self._connection, host, port, reuse_address=True)
        else:
            self._server = await asyncio.start_server(self._connection, sock=sock)
        sockets = self._server.sockets
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        self._log.info("http.listening", host=host, port=self.port)

    async def run(self, stop: asyncio.Event) -> None:
        """Answer on the bound port until ``stop``."""
        server = self._server
        assert server is not None, "listen() first"
        try:
            await stop.wait()
        finally:
            server.close()
            # Closing the sockets ends each connection's read; its task then returns by itself.
            for writer in list(self._open):
                writer.close()
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= MAX_CONNECTIONS and not self._evict_idle():
            writer.close()
            return
        try:
            await self._serve(h11.Connection(h11.SERVER), reader, writer)
        except (TimeoutError, ConnectionError, h11.ProtocolError):
            pass  # a slow, broken or malformed client: drop it, the worker goes on
        except asyncio.CancelledError:
            # Only the loop's own shutdown cancels these tasks; on 3.11 the stream server would
            # log each cancelled connection as an error.
            pass
        finally:
            self._open.pop(writer, None)
            writer.close()

    def _evict_idle(self) -> bool:
        """Make room by closing the oldest connection that waits between requests."""
        for writer, idle in self._open.items():
            if idle:
                del self._open[writer]
                writer.close()
                return True
        return False

    async def _serve(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer requests on one connection until the client or h11 says it is over."""
        while True:
            received = await self._next_request(conn, reader, writer)
            if received is None:
                return
            request, body = received
            if isinstance(body, int):
                limit = f"the request body is over the {body} byte limit of this request"
                reply = Reply.json(
                    {"error": "payload_too_large", "detail": limit}, 413, (("Connection", "close"),)
                )
            else:
                reply = await self._answer(request, body)
            headers = [
                ("Content-Type", reply.content_type),
                ("Content-Length", str(len(reply.body))),
                *reply.headers,
            ]
            writer.write(conn.send(h11.Response(status_code=reply.status, headers=headers)) or b"")
            if request.method != b"HEAD":
                writer.write(conn.send(h11.Data(data=reply.body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            async with asyncio.timeout(REQUEST_TIMEOUT_S):  # a client that does not read
                await writer.drain()
            if isinstance(body, int):
                await _linger(reader, writer)
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # the client asked to close, or spoke HTTP/1.0
            conn.start_next_cycle()

    async def _next_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[h11.Request, bytes | int] | None:
        """The next request and its body, or the limit it is over; None when the connection is over.

        Idle, the connection may wait IDLE_TIMEOUT_S for a request; from its first byte, the
        whole request has REQUEST_TIMEOUT_S, however slowly it trickles in.
        """
        request: h11.Request | None = None
        body = bytearray()
        limit = MAX_BODY
        self._open[writer] = True
        async with asyncio.timeout(IDLE_TIMEOUT_S) as deadline:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(READ_CHUNK)
                    if self._open.get(writer):
                        self._open[writer] = False
                        deadline.reschedule(asyncio.get_running_loop().time() + REQUEST_TIMEOUT_S)
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                    limit = self._body_limit(request)
                    declared = next((v for k, v in request.headers if k == b"content-length"), b"0")
                    if int(declared) > limit:  # h11 has checked it is a number
                        return request, limit
                elif isinstance(event, h11.Data) and request is not None:
                    body += event.data
                    if len(body) > limit:  # a chunked body: no length said up front
                        return request, limit
                elif isinstance(event, h11.EndOfMessage) and request is not None:
                    return request, bytes(body)
                else:
                    return None  # ConnectionClosed, or anything a server does not expect here

    def _body_limit(self, request: h11.Request) -> int:
        """An enqueue with the admin token may carry a payload; any other request 64 KiB."""
        if (
            self._admin is not None
            and request.method == b"POST"
            and ENQUEUE_PATH.fullmatch(request.target.split(b"?", 1)[0])
            and self._admin.authorized(_authorization(request))
        ):
            return MAX_BODY + self._max_payload
        return MAX_BODY

    async def _answer(self, request: h11.Request, body: bytes) -> Reply:
        target = request.target.decode("ascii", "replace")
        path = target.split("?", 1)[0]
        if path.lstrip("/").split("/", 1)[0] in ADMIN_PATHS:
            if self._admin is None:
                hint = "set --admin-token (BOTRIX_ADMIN_TOKEN) to turn it on"
                return Reply.json({"error": "admin_api_off", "detail": hint}, 403)
            return await self._admin_answer(self._admin, request, target, body)
        endpoint = self._routes.get(path)
        if endpoint is None:
            return Reply.json({"error": "not_found", "path": path}, 404)
        if request.method not in (b"GET", b"HEAD"):
            return Reply.json({"error": "method_not_allowed", "path": path}, 405, (("Allow", "GET, HEAD"),))
        try:
            return await endpoint(request)
        except Exception:  # a bug here must not kill the probe port, only this answer
            self._log.exception("http.error", path=path)
            return Reply.json({"error": "internal_error", "path": path}, 500)

    async def _admin_answer(self, admin: AdminApi, request: h11.Request, target: str, body: bytes) -> Reply:
        authorization = _authorization(request)
        try:
            status, answer, headers = await admin.answer(
                request.method.decode("ascii", "replace"), target, authorization, body
            )
            return Reply(status, _dumps(answer), JSON, headers)
        except Exception:  # as for the probes: a bug answers 500, the port stays up
            self._log.exception("http.error", path=target.split("?", 1)[0][:200])
            return Reply.json({"error": "internal_error"}, 500)

    # -- probes ----------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, str]:
        """Whether the process itself is healthy, and why not; never asks Redis."""
        s = self._state
        if s.loop_lag_s > self._settings.live_max_lag:
            return False, "event_loop_blocked"
        if time.monotonic() - s.last_loop_tick > self._settings.live_max_lag + 1:
            return False, "event_loop_stalled"
        if not s.heartbeat_running and s.phase is not Phase.STARTING:
            return False, "heartbeat_stopped"
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """Whether this worker should be given work, and why not."""
        s = self._state
        if self._draining.is_set() or s.phase in (Phase.DRAINING, Phase.STOPPED):
            return False, "draining"
        fresh = s.redis.up and time.monotonic() - s.redis.last_ok_monotonic < REDIS_FRESH_S
        if not fresh:
            return False, "redis_unreachable" if s.redis.in_outage else "starting"
        if s.phase is Phase.STARTING:
            return False, "starting"
        if s.damaged:
            return False, "queue_damaged"
        return True, "ok"

    async def _live(self, request: h11.Request) -> Reply:
        ok, reason = self.liveness()
        body: dict[str, Any] = {
            "status": "ok" if ok else "unhealthy",
            "reason": reason,
            "event_loop_lag_s": round(self._state.loop_lag_s, 4),
        }
        return Reply.json(body, 200 if ok else 503)

    async def _ready(self, request: h11.Request) -> Reply:
        ok, reason = self.readiness()
        body: dict[str, Any] = {"status": "ready" if ok else "not_ready", "reason": reason}
        if reason == "redis_unreachable":
            body["detail"] = self._state.redis.reason
        elif reason == "queue_damaged":
            body["detail"] = dict(self._state.damaged)
        return Reply.json(body, 200 if ok else 503)

    async def _health(self, request: h11.Request) -> Reply:
        live, live_reason = self.liveness()
        ready, ready_reason = self.readiness()
        await self._refresh_depth()
        s, c, link = self._state, self._state.counters, self._state.redis
        body = {
            "status": "healthy" if live and ready else ("degraded" if live else "unhealthy"),
            "version": self._version,
            "worker_id": s.worker_id,
            "phase": str(s.phase),
            "uptime_seconds": round(s.uptime(), 3),
            "concurrency": s.concurrency,
            "jobs_in_flight": len(s.in_flight),
            "queues": list(s.queues),
            "checks": {
                "live": {"status": "pass" if live else "fail", "reason": live_reason},
                "ready": {"status": "pass" if ready else "fail", "reason": ready_reason},
                "redis": {
                    "status": "pass" if link.up else "fail",
                    "latency_ms": round(link.rtt_s * 1000, 3),
                    "server_version": link.version or None,
                    "error": link.reason or None,
                },
                "event_loop": {"lag_ms": round(s.loop_lag_s * 1000, 3)},
                "memory": memory_usage(),
                "damaged_queues": dict(s.damaged),
                "paused_queues": sorted(s.paused),
                "rate_limited_queues": sorted(s.limited),
                "queues": self._metrics.depth_cache,
            },
            "counters": {
                "jobs_processed": c.processed,
                "jobs_succeeded": c.succeeded,
                "jobs_failed": c.failed,
                "jobs_retried": c.retried,
                "jobs_dead": c.dead,
                "jobs_recovered": c.recovered,
                "acks_refused": c.refused_acks,
            },
        }
        return Reply.json(body, 200 if live else 503)

    async def _metrics_page(self, request: h11.Request) -> Reply:
        await self._refresh_depth()
        accept = b",".join(value for name, value in request.headers if name == b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1"))
        return Reply(200, encoder(self._metrics.registry), content_type)

    async def _refresh_depth(self) -> None:
        async with self._depth_lock:
            if time.monotonic() - self._depth_at < DEPTH_CACHE_S:
                return
            self._depth_at = time.monotonic()
            for queue in self._state.queues:
                try:
                    async with asyncio.timeout(DEPTH_TIMEOUT_S):
                        self._metrics.depth_cache[queue] = await self._store.depth(queue)
                except ForeignWrite:
                    continue  # that queue alone is damaged (/ready says so); the others are not
                except (TimeoutError, StoreUnavailable):
                    return  # keep the last known depths; /ready already says why
            try:
                async with asyncio.timeout(DEPTH_TIMEOUT_S):
                    records = await self._store.workers()
            except (TimeoutError, StoreUnavailable):
                return
            for queue in self._state.queues:
                self._metrics.workers_cache[queue] = sum(
                    queue in r.get("queues", ()) for r in records if serving(r)
                )


def _dumps(body: Any) -> bytes:
    """The JSON of an admin answer, whatever a producer put in a payload.

    orjson writes at most 254 levels of nesting and 64-bit integers; the standard library,
    slower, writes deeper ones and any integer.
    """
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False).encode()


def _bound_socket(host: str, port: int) -> socket.socket | None:
    """A listening socket for an IP literal; None for a name, which the event loop resolves.

    uvloop resolves every host, even an IP literal like the default 0.0.0.0, in libuv's thread
    pool, which starts four threads for the life of the process to look up an address we
    already hold.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # As asyncio does: "::" means IPv6 only, so an IPv4 listener can share the port.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Say we are done writing, then drop what the client still sends, for LINGER_S at most."""
    with contextlib.suppress(OSError, RuntimeError, TimeoutError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_S):
            while await reader.read(READ_CHUNK):
                pass


def _authorization(request: h11.Request) -> bytes | None:
    """The request's Authorization header (h11 lowercases names)."""
    return next((value for name, value in request.headers if name == b"authorization"), None)
