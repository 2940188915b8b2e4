"""The producer and admin API: enqueue jobs, look them up, wait for them, manage dead letters."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson

from botrix import keys
from botrix.config import check_cluster_nodes
from botrix.errors import EnvelopeError, JobNotFoundError, PayloadTooLargeError
from botrix.health import serving
from botrix.model import (
    JOB_ID,
    JSON,
    MAX_DELAY_S,
    Claimed,
    JobInfo,
    JobStatus,
    RateLimit,
    build_envelope,
    parse_job,
    validate_job_id,
    validate_queue_name,
)
from botrix.store import Connection, ForeignWrite, Store, StoreUnavailable
from botrix.tracing import sending
from botrix.waits import Waits

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576


def _int(raw: bytes | None) -> int | None:
    # Records may hold what a foreign producer wrote; a bad number must not break listings.
    try:
        return None if raw is None else int(float(raw))
    except (ValueError, OverflowError):
        return None


def _json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


def _status(queue: str, job_id: str, raw: bytes) -> JobStatus:
    try:
        return JobStatus(raw.decode())
    except ValueError:  # UnicodeDecodeError included
        key = keys.queue_keys(queue).job(job_id)
        raise ForeignWrite(
            f"job record {key} has status {raw[:40]!r}: only botrix may write its keys"
        ) from None


def _delay(delay: float, run_at: datetime | None) -> float:
    """Seconds until a job may start, from ``delay`` or ``run_at``; ValueError if unusable."""
    if run_at is not None:
        if run_at.tzinfo is None:
            # Python would read it as local time: utcnow() + 60 s ran hours late in New York.
            raise ValueError("run_at must be timezone-aware, e.g. datetime.now(timezone.utc) + ...")
        delay = max(0.0, run_at.timestamp() - time.time())
    if not math.isfinite(delay) or delay > MAX_DELAY_S:
        raise ValueError(f"delay must be a finite number of seconds up to {MAX_DELAY_S}, got {delay!r}")
    return delay


#: The states ``Client.jobs`` lists, and the place of the queue each is read from.
LISTED_STATES = {"queued": "pending", "scheduled": "scheduled", "running": "active", "dead": "dead"}
#: The states ``Client.cancel_all`` cancels.
CANCEL_STATES = ("queued", "scheduled", "running")
#: The most records one round trip of a listing reads, and the most the CLI and API list.
MAX_LISTED = 1000
#: The deepest page the CLI and API ask for (a list's index is a 64-bit number; this is plenty).
MAX_OFFSET = 1_000_000_000


def _given_id(record: dict[str, bytes]) -> str:
    """The id in a pending envelope that has no record yet, if the claim will take it as given."""
    envelope = _json(record["envelope"])
    given = envelope.get("id") if isinstance(envelope, dict) else None
    return given if isinstance(given, str) and JOB_ID.fullmatch(given) else ""


def job_info(job_id: str, queue: str, record: dict[str, bytes]) -> JobInfo:
    """Turn a raw job record into what producers see."""
    envelope = _json(record.get("envelope"))
    fields = envelope if isinstance(envelope, dict) else {}
    job_type = fields.get("type")
    return JobInfo(
        id=job_id,
        queue=queue,
        status=_status(queue, job_id, record.get("status", b"queued")),
        type=job_type if isinstance(job_type, str) else None,
        payload=fields.get("payload"),
        attempts=_int(record.get("attempts")) or 0,
        worker=record["worker"].decode(errors="replace") if "worker" in record else None,
        enqueued_at_ms=_int(record.get("enqueued_at")),
        started_at_ms=_int(record.get("started_at")),
        finished_at_ms=_int(record.get("finished_at")),
        run_at_ms=_int(record.get("run_at")),
        result=_json(record.get("result")),
        error=_json(record.get("error")),
        progress=_json(record.get("progress")),
        envelope=record.get("envelope", b"").decode(errors="replace"),
    )


class Client:
    """Talks to the queues a worker serves. Use ``async with Client.from_url(url) as c:``."""

    def __init__(self, store: Store, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self._store = store
        self._max_payload_bytes = max_payload_bytes
        self._registered: set[str] = set()
        self._waits = Waits(store)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        cluster: bool = False,
        cluster_nodes: Sequence[tuple[str, int]] = (),
    ) -> Client:
        """A client for the Redis at ``url`` (redis://, rediss://, with user and password).

        With ``cluster``, ``url`` names any node of a Redis Cluster, and ``cluster_nodes``
        (host, port) more of them to try at start, with the URL's credentials and TLS.
        """
        check_cluster_nodes(cluster, tuple(cluster_nodes), "cluster_nodes")
        conn = Connection(url, cluster=cluster, cluster_nodes=tuple(cluster_nodes))
        return cls(Store(conn), max_payload_bytes=max_payload_bytes)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; waits still in progress fail with StoreUnavailable."""
        await self._waits.aclose()
        await self._store.aclose()

    async def enqueue(
        self,
        type: str,
        payload: JSON = None,
        *,
        queue: str = "default",
        delay: float = 0.0,
        run_at: datetime | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        job_id: str | None = None,
        correlation_id: str | None = None,
        once: bool = False,
    ) -> str:
        """Queue a job and return its id; with ``delay`` (s) or ``run_at`` it starts later.

        Passing your own ``job_id`` makes the enqueue idempotent: while a job with that id is
        queued, scheduled or running in ``queue``, another enqueue with it there does nothing.
        Ids are unique per queue (docs/protocol.md). Retry a failed enqueue with the same id: a
        StoreUnavailable may come after Redis ran the call (the reply was lost), and only the
        same id makes the retry a no-op then. The exception carries it as ``job_id``. A no-op
        while that job is live, that is: a short job may also have run to its end before the
        retry, and a finished job's id runs again. Where a second run would matter, look the id
        up first: ``await client.job(job_id, queue)`` finds it, in any state, if the enqueue
        went in (JobNotFoundError if not); or pass ``once``.

        ``once=True`` does nothing while *any* job with this id is on record in ``queue``:
        waiting, running, or finished and still kept (completed for the workers'
        ``--result-ttl``, a day by default; dead until purged; cancelled for a day). A window
        for deduplicating redeliveries, and a retry after a lost reply that never runs a job
        twice.
        """
        job_id = uuid.uuid4().hex if job_id is None else job_id  # "" is refused, not replaced
        validate_job_id(job_id)
        validate_queue_name(queue)
        delay = _delay(delay, run_at)
        with sending(queue, job_type=type, job_id=job_id) as trace:
            envelope = self._envelope(
                job_id, type, payload, queue, max_retries, timeout, correlation_id, trace
            )
            await self._register(queue)
            try:
                await self._store.enqueue(queue, job_id, envelope, int(delay * 1000), once)
            except StoreUnavailable as exc:
                exc.job_id = job_id
                raise
        return job_id

    async def enqueue_many(
        self,
        type: str,
        payloads: Sequence[JSON],
        *,
        queue: str = "default",
        delay: float = 0.0,
        max_retries: int | None = None,
        timeout: float | None = None,
        job_ids: Sequence[str] | None = None,
        once: bool = False,
    ) -> list[str]:
        """Queue one job of ``type`` per payload, a few hundred per round trip; returns their ids.

        Every job is checked before any is sent: a bad one raises ValueError naming its index,
        and none goes in. ``job_ids`` (one per payload) make it idempotent, as for
        :meth:`enqueue`. A StoreUnavailable may come after some went in: it carries the ids as
        ``job_ids``; enqueue the same payloads again with them and only the missing ones go in.
        ``once`` as for :meth:`enqueue`.
        """
        ids = list(job_ids) if job_ids is not None else [uuid.uuid4().hex for _ in payloads]
        if len(ids) != len(payloads):
            raise ValueError(f"job_ids has {len(ids)} ids for {len(payloads)} payloads")
        validate_queue_name(queue)
        delay = _delay(delay, None)
        with sending(queue, job_type=type, count=len(ids)) as trace:
            jobs = []
            for index, (job_id, payload) in enumerate(zip(ids, payloads, strict=True)):
                try:
                    validate_job_id(job_id)
                    envelope = self._envelope(job_id, type, payload, queue, max_retries, timeout, None, trace)
                except ValueError as exc:  # PayloadTooLargeError stays itself
                    raise ValueError(f"job {index}: {exc}") from None
                jobs.append((job_id, envelope))
            await self._register(queue)
            try:
                await self._store.enqueue_many(queue, jobs, int(delay * 1000), once)
            except StoreUnavailable as exc:
                exc.job_ids = ids
                raise
        return ids

    def _envelope(
        self,
        job_id: str,
        type: str,
        payload: JSON,
        queue: str,
        max_retries: int | None,
        timeout: float | None,
        correlation_id: str | None,
        trace: dict[str, str] | None,
    ) -> bytes:
        """The job's envelope, refused here for what every worker would dead-letter."""
        try:
            envelope = build_envelope(
                job_id,
                type,
                payload,
                queue,
                max_retries=max_retries,
                timeout=timeout,
                correlation_id=correlation_id,
                trace=trace,
            )
        except TypeError as exc:  # not JSON: an object orjson does not know, text that is not UTF-8
            raise ValueError(f"job cannot be stored as JSON: {exc}") from None
        try:  # refuse here what every worker would dead-letter, with the same reason
            parse_job(Claimed(job_id, envelope, 0, 0, 0), queue)
        except EnvelopeError as exc:
            raise ValueError(str(exc)) from None
        if len(envelope) > self._max_payload_bytes:
            raise PayloadTooLargeError(
                f"job envelope is {len(envelope)} bytes, over the {self._max_payload_bytes} byte limit"
            )
        return envelope

    async def _register(self, queue: str) -> None:
        if queue not in self._registered:
            await self._store.register_queues([queue])
            self._registered.add(queue)

    async def job(self, job_id: str, queue: str | None = None) -> JobInfo:
        """The job's state, attempts, result, error and timestamps.

        Without ``queue``, the first known queue (by name) holding a record of that id answers.
        """
        queues = [queue] if queue else await self._store.known_queues()
        found = await self._store.find_record(queues, job_id)
        if found is not None:
            return job_info(job_id, *found)
        raise JobNotFoundError(f"no job {job_id!r} (never enqueued, or expired after its TTL)")

    async def wait(self, job_id: str, timeout: float, queue: str | None = None) -> JobInfo:
        """Wait until the job is completed or dead; raises TimeoutError after ``timeout``.

        With ``queue`` given, the job need not exist yet (a foreign producer's envelope gets
        its record when a worker claims it).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if queue is None:
            queue = (await self.job(job_id)).queue
        async with asyncio.timeout_at(deadline):
            while True:
                watch = await self._waits.watch(queue, job_id)
                try:
                    info = await self._find(job_id, queue)
                    if info is not None and info.status.finished:
                        return info
                    if loop.time() >= deadline:
                        # asyncio.timeout's one cancel can be lost on Python 3.11: redis-py sends
                        # through asyncio.wait_for, which swallows a cancel that lands as the
                        # send completes. Without this check such a wait would last until the
                        # job ends.
                        raise TimeoutError
                    await watch.ended
                finally:
                    watch.close()
                # The record decides, not the event: on a Redis Cluster an event reaches the
                # other nodes late, so the end of an earlier run of this id (before a re-drive)
                # can arrive after this wait began. An unfinished job is waited for again.
                info = await self._find(job_id, queue)
                if info is None:
                    raise JobNotFoundError(f"no job {job_id!r} (never enqueued, or expired after its TTL)")
                if info.status.finished:
                    return info

    async def _find(self, job_id: str, queue: str) -> JobInfo | None:
        record = await self._store.job_record(queue, job_id)
        return None if record is None else job_info(job_id, queue, record)

    async def cancel(self, job_id: str, queue: str = "default", *, keep_s: int = 86_400) -> JobStatus:
        """Cancel a job that has not finished; returns the status it had.

        A queued, delayed or retrying job will not run. A running one is stopped by its worker
        within a few seconds (its next lease renewal), its result dropped; a handler that is
        past its last await when it is cancelled may still finish its work, but its result is
        not recorded. The record stays, ``cancelled``, for ``keep_s`` seconds (the default of
        --result-ttl). A finished job is left as it is: its status (completed, dead,
        cancelled) is returned. Raises JobNotFoundError when no record has that id.
        """
        validate_job_id(job_id)
        validate_queue_name(queue)
        was = await self._store.cancel(queue, job_id, keep_s)
        if was is None:
            raise JobNotFoundError(f"no job {job_id!r} in queue {queue!r}")
        return _status(queue, job_id, was.encode())

    async def cancel_all(self, queue: str = "default", state: str = "queued", *, keep_s: int = 86_400) -> int:
        """Cancel every job of ``queue`` in ``state`` (queued, scheduled or running); how many.

        A queue's worth of jobs that must not run (a bad deploy enqueued them): each is
        cancelled as :meth:`cancel` would, its record kept for ``keep_s`` seconds and a
        ``cancelled`` event sent to its waiters, a page of 1,000 a round trip. It takes the
        jobs in ``state`` that were enqueued (for ``running``: started) before it began, not
        those enqueued after; one enqueued before and requeued since is taken. Pause the queue
        first for a clean cut: workers that claim meanwhile take some first, and a claim taking
        a foreign producer's envelope while it runs may make it pass over as many queued jobs.
        Such an envelope (a whole JSON job pushed with RPUSH) has no record until a worker
        claims it, so nothing to cancel: it stays queued.
        """
        if state not in CANCEL_STATES:
            raise ValueError(f"state must be one of {', '.join(CANCEL_STATES)}, got {state[:40]!r}")
        validate_queue_name(queue)
        place, cutoff = LISTED_STATES[state], await self._store.clock_ms()
        cancelled = start = 0
        end = False
        while not end:
            taken, kept, end = await self._store.cancel_page(queue, place, cutoff, start, keep_s)
            cancelled += taken
            start += kept  # what the page left stays ahead of the next one
        return cancelled

    async def depth(self, queue: str = "default") -> dict[str, int]:
        """Jobs in the queue by state: pending, active, scheduled, dead."""
        return await self._store.depth(queue)

    async def pause(self, queue: str = "default") -> None:
        """Stop every worker from claiming jobs of ``queue`` until :meth:`resume`.

        Enqueues go on, and jobs already running finish; workers notice within about a second.
        """
        validate_queue_name(queue)
        await self._store.register_queues([queue])  # listed by `botrix queues` even if still empty
        await self._store.set_paused(queue, True)

    async def resume(self, queue: str = "default") -> None:
        """Let workers claim from ``queue`` again (within about a second)."""
        validate_queue_name(queue)
        await self._store.set_paused(queue, False)

    async def is_paused(self, queue: str = "default") -> bool:
        """Whether ``queue`` is paused."""
        return await self._store.is_paused(queue)

    async def set_rate_limit(self, queue: str, max_jobs: int, per: float) -> RateLimit:
        """Let at most ``max_jobs`` jobs of ``queue`` start in any ``per`` seconds, fleet-wide.

        Every worker's claim counts against the one limit, and retries are starts like any
        other. Takes effect on the workers' next claim (within about a second). Returns the
        limit with the jobs started in the window now, which a change keeps counting.
        """
        validate_queue_name(queue)
        limit = RateLimit(max_jobs, per)
        await self._store.register_queues([queue])
        return await self._store.set_rate_limit(queue, limit) or limit

    async def clear_rate_limit(self, queue: str = "default") -> None:
        """Lift ``queue``'s rate limit."""
        validate_queue_name(queue)
        await self._store.set_rate_limit(queue, None)

    async def rate_limit(self, queue: str = "default") -> RateLimit | None:
        """``queue``'s rate limit, if it has one."""
        return await self._store.rate_limit(queue)

    async def queues_overview(self, names: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """``queue_info`` of these queues (every known one by default), with their ``workers``.

        ``workers`` counts the live workers serving the queue: 0 says its jobs wait for a
        worker that may never come (one started with the wrong ``--queues``).
        """
        records = [r for r in await self.workers() if serving(r)]
        overview = {}
        for name in names or await self.queues():
            info = await self.queue_info(name)
            info["workers"] = sum(1 for r in records if name in r.get("queues", []))
            overview[name] = info
        return overview

    async def queue_info(self, queue: str = "default") -> dict[str, Any]:
        """What ``botrix queues`` shows of a queue: depth by state, paused, rate limit.

        A key of the queue that something else overwrote is reported under ``"damaged"`` (the
        reasons) rather than raised: a listing of every queue is where an operator looks for
        that one. Each part is read on its own, so one damaged key does not hide the rest (a
        paused queue with a garbled rate limit still shows paused); a part that cannot be read
        is None.
        """
        damaged: list[str] = []

        async def read(part: Awaitable[T]) -> T | None:
            try:
                return await part
            except ForeignWrite as exc:
                damaged.append(str(exc))
                return None

        depth = await read(self.depth(queue))
        paused = await read(self.is_paused(queue))
        limit = await read(self.rate_limit(queue))
        info: dict[str, Any] = {
            **(depth or dict.fromkeys(("pending", "active", "scheduled", "dead"))),
            "paused": paused,
            "rate_limit": None if limit is None else limit.to_dict(),
        }
        if damaged:
            info["damaged"] = "; ".join(damaged)
        return info

    async def queues(self) -> list[str]:
        """Every queue name known to botrix in this Redis."""
        return await self._store.known_queues()

    async def jobs(
        self, queue: str = "default", state: str = "queued", *, start: int = 0, count: int = 50
    ) -> list[JobInfo]:
        """Jobs of the queue in one ``state`` (``LISTED_STATES``), in the order they will move.

        ``queued``: next to be claimed first; ``scheduled``: delayed and retrying jobs, soonest
        due first; ``running``: soonest lease expiry first; ``dead``: newest first. Finished
        jobs are not listed: their records are kept for a while but not indexed (``job`` reads
        one). A job that moves while it is listed shows its new status.
        """
        place = LISTED_STATES.get(state)
        if place is None:
            raise ValueError(f"state must be one of {', '.join(LISTED_STATES)}, got {state[:40]!r}")
        if start < 0 or count < 1:
            raise ValueError(f"start must be 0 or more and count 1 or more, got {start} and {count}")
        infos = []
        # A page at a time: each is one pipeline of record reads, and Redis serves its other
        # clients in between.
        for offset in range(start, start + count, MAX_LISTED):
            page = await self._store.listed(queue, place, offset, min(MAX_LISTED, start + count - offset))
            infos += [job_info(job_id or _given_id(record), queue, record) for job_id, record in page]
            if len(page) < MAX_LISTED:
                break
        return infos

    async def dead(self, queue: str = "default", *, start: int = 0, count: int = 50) -> list[JobInfo]:
        """Dead jobs, newest first."""
        return await self.jobs(queue, "dead", start=start, count=count)

    async def retry_dead(self, queue: str = "default", job_ids: Sequence[str] | None = None) -> list[str]:
        """Send these dead jobs back to the queue; every dead job with ``job_ids=None``.

        An empty list sends none: a filter that matched nothing must not mean "all".
        """
        if job_ids is not None and not job_ids:
            return []
        return await self._store.redrive(queue, job_ids)

    async def purge_dead(self, queue: str = "default", job_ids: Sequence[str] | None = None) -> int:
        """Delete these dead jobs; every dead job with ``job_ids=None`` (an empty list: none)."""
        if job_ids is not None and not job_ids:
            return 0
        return await self._store.purge(queue, job_ids)

    async def workers(self, queue: str | None = None) -> list[dict[str, Any]]:
        """Health records of live workers, only those serving ``queue`` when given."""
        records = await self._store.workers()
        return [r for r in records if queue is None or queue in r.get("queues", [])]
