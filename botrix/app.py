"""The composition root: builds the worker's components and runs them in order.

Start order: the HTTP server listens first (probes answer "starting") and the loop-lag monitor
starts (its ticks are what /live judges), the handler modules' lifespans open what handlers
share, then the heartbeat, the recoverer, the periodic handlers' runs, and last the
runner, which begins claiming. A lifespan that fails to open ends the worker here (exit 1).

Shutdown order (the reason for each step is in docs/design.md):
  1. SIGTERM/SIGINT sets ``stop``; a second signal sets ``force``. Handlers do nothing else.
  2. ``stop``: /ready turns 503 at once, the runner stops claiming, the recoverer and the
     periodic runs stop; in-flight jobs keep running.
  3. The runner drains: jobs get --shutdown-timeout (or until ``force``), then the rest are
     cancelled and requeued; it returns once every claimed job is written back.
  4. The lifespans close what they opened, last opened first.
  5. Only then does the heartbeat stop, so leases stay renewed through the drain, and it
     removes the worker's health record.
  6. The HTTP server stops last, so probes answer until the very end; the Redis connections
     close; the process exits 0 (1 if the lifespans ended while it ran: ``lifespans_lost``).
"""

from __future__ import annotations

import asyncio
import signal

from botrix import __version__
from botrix.client import Client
from botrix.config import Settings
from botrix.errors import BotrixError, LifespanError
from botrix.health import WorkerState
from botrix.heartbeat import Heartbeat
from botrix.http import HttpServer
from botrix.lag import LagMonitor
from botrix.lifespans import Lifespans
from botrix.logs import Logger, get_logger
from botrix.metrics import Metrics
from botrix.notify import SystemdNotifier
from botrix.periodic import Periodic
from botrix.recoverer import Recoverer
from botrix.redis_url import redact_url
from botrix.registry import Registry
from botrix.runner import Runner
from botrix.store import Connection, Store


class ServeError(BotrixError):
    """The worker could not start serving (e.g. its HTTP port is taken)."""


class Worker:
    """One botrix worker process: runner, heartbeat and recoverer over one Redis."""

    def __init__(
        self, settings: Settings, registry: Registry, notifier: SystemdNotifier | None = None
    ) -> None:
        self.settings = settings
        self.notifier = notifier or SystemdNotifier(None)
        self.registry = registry
        self.state = WorkerState(settings.worker_id, settings.queues, settings.concurrency)
        self.stop_event = asyncio.Event()
        self.force_event = asyncio.Event()
        self.log: Logger = get_logger(worker_id=settings.worker_id)
        self.metrics = Metrics(self.state, registry.names(), __version__)
        self.http: HttpServer | None = None
        #: Why the lifespans ended while the worker ran (it then stops; the CLI exits 1).
        self.lifespans_lost: str | None = None

    def request_stop(self, reason: str = "requested") -> None:
        """Begin a graceful shutdown; a second call skips the wait for in-flight jobs."""
        if self.stop_event.is_set():
            self.log.warning("worker.stop_forced", reason=reason)
            self.force_event.set()
        else:
            self.log.info("worker.stopping", reason=reason, in_flight=len(self.state.in_flight))
            self.stop_event.set()

    def install_signal_handlers(self) -> None:
        """Route SIGTERM and SIGINT to :meth:`request_stop`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGUSR1, self.dump_tasks)

    def dump_tasks(self) -> None:
        """Log where every task of the worker is waiting (SIGUSR1): for diagnosing a hang."""
        for task in asyncio.all_tasks():
            frames = [
                f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack(limit=8)
            ]
            self.log.warning("worker.task", task=task.get_name(), stack=frames)

    async def run(self) -> None:
        """Run until stopped and drained."""
        s = self.settings
        store = Store(
            Connection(s.redis_url, cluster=s.redis_cluster, cluster_nodes=s.redis_cluster_nodes),
            blocking_timeout=min(5.0, s.lease_seconds),
        )
        lifespans = Lifespans(self.registry.lifespans(), self.log, self._lifespans_lost)
        # Handlers' follow-up jobs (ctx.enqueue) go over the worker's own connections.
        client = Client(store, max_payload_bytes=s.max_payload_bytes)
        runner = Runner(
            store,
            self.registry,
            s,
            self.state,
            self.log,
            self.force_event,
            self.metrics,
            lifespans.resources,
            client.enqueue,
        )
        heartbeat = Heartbeat(store, s, self.state, self.log, runner.lease_lost)
        recoverer = Recoverer(
            store, s, self.state, self.log, self.metrics, self.registry.max_retries_by_type()
        )
        drained, http_stop = asyncio.Event(), asyncio.Event()
        try:
            if s.http_port >= 0:
                self.http = HttpServer(
                    s, self.state, store, self.metrics, self.stop_event, __version__, self.log
                )
                await self._listen(self.http)
            async with asyncio.TaskGroup() as group:
                if self.http is not None:
                    group.create_task(self.http.run(http_stop), name="botrix-http")
                # Before the lifespans: /live judges the loop by its ticks, and a slow start is
                # not a stalled loop.
                group.create_task(LagMonitor(self.state).run(drained), name="botrix-lag")
                if await self._open(lifespans, drained, http_stop):
                    self.log.info(
                        "worker.started",
                        version=__version__,
                        redis_url=redact_url(s.redis_url),
                        queues=list(s.queues),
                        concurrency=s.concurrency,
                        handlers=self.registry.names(),
                        lease_s=s.lease_seconds,
                    )
                    beating = group.create_task(heartbeat.run(drained), name="botrix-heartbeat")
                    group.create_task(self._systemd(drained), name="botrix-systemd")
                    group.create_task(recoverer.run(self.stop_event), name="botrix-recoverer")
                    periodic = Periodic(store, self.registry, self.state, self.log)
                    group.create_task(periodic.run(self.stop_event), name="botrix-periodic")
                    try:
                        await runner.run(self.stop_event)
                    finally:
                        # Every claimed job is written back by now: what handlers shared can go.
                        await lifespans.close(self.force_event)
                        drained.set()
                        await asyncio.wait([beating])
                        http_stop.set()
        finally:
            await store.aclose()
        c = self.state.counters
        self.log.info(
            "worker.stopped",
            jobs_processed=c.processed,
            jobs_succeeded=c.succeeded,
            jobs_failed=c.failed,
            uptime_s=round(self.state.uptime(), 3),
        )

    def _lifespans_lost(self, reason: str) -> None:
        """The lifespans ended before the drain: handlers would run on without what they held."""
        self.lifespans_lost = reason
        self.log.error("worker.lifespans_lost", reason=reason)
        if not self.stop_event.is_set():  # (a second request would force the drain)
            self.request_stop("lifespans lost")

    async def _open(self, lifespans: Lifespans, drained: asyncio.Event, http_stop: asyncio.Event) -> bool:
        """Open the lifespans (probes answer "starting" meanwhile); False if a stop came first."""
        try:
            opened = await lifespans.open(self.stop_event, self.force_event)
        except LifespanError as exc:
            self.log.error("worker.startup_failed", reason=str(exc))
            drained.set()
            http_stop.set()
            raise
        if not opened:
            self.log.info("worker.startup_stopped", reason="stopped while its lifespans opened")
            drained.set()
            http_stop.set()
        return opened

    async def _systemd(self, drained: asyncio.Event) -> None:
        """READY=1 now, watchdog pings while the heartbeat lives, STOPPING=1 at the first signal."""
        s = self.settings
        self.notifier.ready(f"serving {','.join(s.queues)} with concurrency {s.concurrency}")
        watchdog = asyncio.create_task(
            self.notifier.run_watchdog(drained, healthy=lambda: self.state.heartbeat_running)
        )
        await self.stop_event.wait()
        self.notifier.stopping(f"draining {len(self.state.in_flight)} job(s)")
        await watchdog

    async def _listen(self, http: HttpServer) -> None:
        try:
            await http.listen()
        except OSError as exc:
            s = self.settings
            reason = exc.strerror or str(exc)
            raise ServeError(f"cannot listen on {s.http_host}:{s.http_port}: {reason}") from None
