"""The probe and metrics server: /live, /ready, /health, /metrics, on the jobs' event loop.

``/live`` depends only on the process (event loop responsive, heartbeat running), never on
Redis, so a Redis outage cannot make an orchestrator restart every worker at once. ``/ready``
says whether this worker should be given work: Redis answering, handlers loaded, not draining.
Queue depths come from Redis with a short timeout and are cached briefly, so a slow Redis
cannot hang a scrape. Nothing here ever shows a secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from botrix.config import Settings
from botrix.health import Phase, WorkerState
from botrix.logs import Logger
from botrix.metrics import Metrics
from botrix.store import Store, StoreUnavailable

#: Redis counts as reachable if it answered within this many seconds (the heartbeat pings every 2 s).
REDIS_FRESH_S = 10.0
#: Queue depths are read from Redis at most this often, each read bounded by the timeout.
DEPTH_CACHE_S = 1.0
DEPTH_TIMEOUT_S = 0.5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths (404) and wrong methods (405) answer JSON like every other endpoint."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        body = {"error": exc.reason.lower().replace(" ", "_"), "path": request.path}
        return web.json_response(body, status=exc.status, headers=headers)


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
        self.started = asyncio.Event()
        self.port: int | None = None

    def application(self) -> web.Application:
        """The aiohttp application (exposed for tests that want it without a socket)."""
        app = web.Application(middlewares=[json_errors])
        app.router.add_get("/live", self._live)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics_page)
        return app

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop``."""
        runner = web.AppRunner(self.application(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._settings.http_host, self._settings.http_port, reuse_address=True)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1]) if sockets else self._settings.http_port
            self._log.info("http.listening", host=self._settings.http_host, port=self.port)
            self.started.set()
            await stop.wait()
        finally:
            await runner.cleanup()

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
        return True, "ok"

    async def _live(self, request: web.Request) -> web.Response:
        ok, reason = self.liveness()
        body: dict[str, Any] = {
            "status": "ok" if ok else "unhealthy",
            "reason": reason,
            "event_loop_lag_s": round(self._state.loop_lag_s, 4),
        }
        return web.json_response(body, status=200 if ok else 503)

    async def _ready(self, request: web.Request) -> web.Response:
        ok, reason = self.readiness()
        body: dict[str, Any] = {"status": "ready" if ok else "not_ready", "reason": reason}
        if reason == "redis_unreachable":
            body["detail"] = self._state.redis.reason
        return web.json_response(body, status=200 if ok else 503)

    async def _health(self, request: web.Request) -> web.Response:
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
        return web.json_response(body, status=200 if live else 503)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        await self._refresh_depth()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(self._metrics.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def _refresh_depth(self) -> None:
        async with self._depth_lock:
            if time.monotonic() - self._depth_at < DEPTH_CACHE_S:
                return
            self._depth_at = time.monotonic()
            for queue in self._state.queues:
                try:
                    async with asyncio.timeout(DEPTH_TIMEOUT_S):
                        self._metrics.depth_cache[queue] = await self._store.depth(queue)
                except (TimeoutError, StoreUnavailable):
                    return  # keep the last known depths; /ready already says why
