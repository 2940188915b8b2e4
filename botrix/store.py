"""The data-access layer: the only module that talks to Redis.

Each state change is one Lua script (``botrix/lua/*.lua``, headed by its KEYS and ARGV) and one
method here. Nothing outside this module sees a Redis type: callers get botrix's own values and
:class:`StoreUnavailable` when Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple, cast

import hiredis
import orjson
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ReadOnlyError, RedisClusterException, RedisError, ResponseError

from botrix import keys
from botrix.aio import Deadline
from botrix.errors import BotrixError, ConfigError
from botrix.model import MAX_ID_LENGTH, QUEUE_NAME, Claimed, RateLimit, Rejected, Settlement
from botrix.redis_url import check_cluster_url, check_redis_url, check_tls_files, redact_url

_INCLUDE = re.compile(r'^--- @include "([\w.]+)"$', re.MULTILINE)


#: Jobs per round trip of Client.enqueue_many, and calls in flight at once on a cluster.
ENQUEUE_BATCH = 500
CLUSTER_ENQUEUE_BATCH = 50
#: Dead jobs re-driven or purged per script call (Store._dead_chunks).
DEAD_CHUNK = 1000
#: Entries a cancel_all call reads (Store.cancel_page).
CANCEL_PAGE = 1000
#: Queues asked at once, in one pipeline, for a job's record when its queue is not given.
FIND_CHUNK = 1000


class StoreUnavailable(BotrixError):
    """Redis could not be reached or did not answer in time; the caller backs off and retries."""

    #: Set by Client.enqueue: the id of the job that may or may not have gone in (a reply can
    #: be lost after Redis ran the call). Enqueuing again with it is a no-op if it did and the
    #: job is still live; one that ran to its end meanwhile would run again (Client.enqueue).
    job_id: str | None = None
    #: Set by Client.enqueue_many: the ids of all its jobs, some of which may have gone in.
    job_ids: list[str] | None = None
    #: The call never left this process (no connection could be made, or the connection's
    #: handshake failed): Redis ran none of it. Set by the lanes' calls (Store.exchange).
    unsent: bool = False


class ForeignWrite(StoreUnavailable):
    """A queue's key holds what botrix never writes (``WRONGTYPE``): something else wrote it.

    Redis itself is fine and so are the other queues; only that queue's calls fail, until
    someone repairs the key. The scripts check their keys before their first write, except
    ``exchange``'s check of the sequence, which comes after its settle half: a settle in that
    call is applied, and sending it again is recognised as such.
    """

    @property
    def claims_only(self) -> bool:
        """The queue's sequence, pause flag or rate limit is garbled.

        Only a call that claims meets those (exchange.lua), so only a claim proves a repair.
        """
        return any(what in str(self) for what in _CLAIM_KEYS)


#: What exchange.lua's claim half checks, after its settle half was written: the messages of
#: _event.lua's and _rate.lua's checks, word for word (a test reads them there, so a reworded
#: message fails it rather than turning a hold on claims into a hold on results).
_CLAIM_KEYS = ("is not a counter", "is not a pause flag", "is not a rate limit", "is not a rate log")


class Exchanged(NamedTuple):
    """What one exchange did.

    The acks refused (id, delivery), the jobs claimed, the entries the claim dead-lettered,
    whether the claim was skipped because the queue is paused, and, when the queue's rate limit
    cut the claim short, how long until it lets another job through (seconds; 0 when it did not).
    """

    refused: set[tuple[str, int]]
    claimed: list[Claimed]
    rejected: list[Rejected]
    paused: bool
    limited_s: float


def _foreign(key: str, what: str) -> ForeignWrite:
    """The error naming ``key``, as the scripts' own checks do (a plain command's does not)."""
    return ForeignWrite(f"WRONGTYPE {key} is not {what}: only botrix may write its keys")


def _load_script(name: str) -> str:
    folder = resources.files("botrix") / "lua"
    source = (folder / name).read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: (folder / m.group(1)).read_text(encoding="utf-8"), source)


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach Redis; timeouts are explicit so a hung server cannot hang a worker."""

    url: str
    socket_timeout: float = 5.0
    connect_timeout: float = 3.0
    max_connections: int = 100
    #: The URL names a node of a Redis Cluster: every key a script touches carries its
    #: queue's hash tag, so each call goes to the one node that owns that queue's slot.
    cluster: bool = False
    #: More nodes of that cluster (host, port) to try at start, besides the URL's; the URL's
    #: credentials and TLS apply to them all.
    cluster_nodes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Consumer:
    """Who claims, and on what terms: the per-worker constants of every exchange call."""

    worker_id: str
    lease_ms: int
    max_envelope_bytes: int
    result_ttl: int
    dead_cap: int
    #: This process (WorkerState.instance): names the keys recording each lane's last claim.
    instance: str = "-"


@dataclass(frozen=True, slots=True)
class RecoveredJob:
    """A job taken back from a lost lease: ``queued`` again or ``dead`` (attempts exhausted)."""

    job_id: str
    status: str
    job_type: str = ""


def check_url(url: str, cluster: bool = False) -> None:
    """Raise ConfigError for a URL that botrix or redis-py would refuse.

    redis-py refuses some only at the first command, inside the worker's tasks: an unknown
    query parameter (``ssl_ca_certs`` on a ``redis://`` URL, a typo) or a bad value, a TLS
    file it cannot read (reported as if the host were missing), a database other than 0 in a
    cluster.
    """
    try:
        check_redis_url(url)
        if cluster:
            check_cluster_url(url)
    except ValueError as exc:
        raise ConfigError(f"the Redis URL {exc}") from None
    shown = redact_url(url)
    try:
        # Builds a connection object without connecting: redis-py checks the parameters here.
        redis.BlockingConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except TypeError as exc:
        unknown = re.search(r"keyword argument '(\w+)'", str(exc))
        # Named only when the shown URL names it too: past a password, it may be the password's end.
        name = unknown.group(1) if unknown and f"{unknown.group(1)}=" in shown else None
        what = f"an unknown parameter {name!r}" if name else "a parameter redis-py does not take"
        raise ConfigError(f"the Redis URL has {what}: {shown}") from None
    except (ValueError, AttributeError, RedisError) as exc:
        # Only the parameter's name from redis-py's message, which may quote the value too.
        named = re.search(r"value for '(\w+)'", str(exc))
        what = f"a value of {named.group(1)!r}" if named else "a query value"
        raise ConfigError(f"the Redis URL has {what} that redis-py refuses: {shown}") from None
    try:
        check_tls_files(url)
    except ValueError as exc:
        raise ConfigError(f"the Redis URL's {exc}") from None


#: What a new connection sends: only what every supported Redis (6.2 on) knows and botrix's
#: ACL grants. redis-py names itself with CLIENT SETINFO, which Redis has only from 7.2, and
#: from 8.0 speaks RESP3 and then asks for CLIENT MAINT_NOTIFICATIONS, which only Redis
#: Enterprise knows. Both fail on every connect: a failed call or error in INFO, and under the
#: ACL on 6.2 a denial in ACL LOG each time (redis/redis-py#3085), burying the ones an operator
#: looks for. RESP2 also gives botrix the same replies from every redis-py it supports (5.0 on).
#: redis-py 7.2 moved the SETINFO switch from lib_name/lib_version (deprecated) to driver_info.
_CONNECT_QUIETLY: dict[str, int | None] = {
    "protocol": 2,
    **(
        {"driver_info": None}
        if importlib.util.find_spec("redis.driver_info")
        else {"lib_name": None, "lib_version": None}
    ),
}


def _enqueue_keys(k: keys.QueueKeys, job_id: str) -> list[str]:
    """KEYS of enqueue.lua for one job."""
    return [k.pending, k.scheduled, k.job(job_id), k.events, k.dead]


def _enqueue_args(job_id: str, envelope: bytes, delay_ms: int, queue: str, once: bool) -> list[Any]:
    """ARGV of enqueue.lua for one job."""
    return [job_id, envelope, delay_ms, queue, int(once)]


def _open(conn: Connection, socket_timeout: float | None) -> redis.Redis:
    if conn.cluster:
        return _open_cluster(conn, socket_timeout)
    # A blocking pool waits for a free connection instead of failing when a burst of
    # concurrent calls (progress events, settles, waits) exceeds the cap.
    pool = redis.BlockingConnectionPool.from_url(
        conn.url,
        max_connections=conn.max_connections,
        timeout=conn.socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=conn.connect_timeout,
        # No client-side retries: a retried script may have run already (its reply was lost),
        # so every caller owns its retries and backs off through StoreUnavailable instead.
        retry=Retry(NoBackoff(), 0, supported_errors=()),
        health_check_interval=15,
        **_CONNECT_QUIETLY,
    )
    return redis.Redis.from_pool(pool)


def _open_cluster(conn: Connection, socket_timeout: float | None) -> redis.Redis:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    client = RedisCluster.from_url(
        conn.url,
        # Tried with the URL's node, in random order (redis-py shuffles them), until one
        # answers; the client learns the whole cluster from it.
        startup_nodes=[ClusterNode(host, port) for host, port in conn.cluster_nodes],
        socket_timeout=socket_timeout,
        socket_connect_timeout=conn.connect_timeout,
        # A pool per node that fails rather than waits when full: room for the bursts a
        # blocking pool would have queued.
        max_connections=conn.max_connections * 10,
        # No retries, as above; redirections (MOVED, ASK) are still followed, since a command
        # that was redirected never ran.
        retry=Retry(NoBackoff(), 0, supported_errors=()),
        health_check_interval=15,
        **_CONNECT_QUIETLY,
    )
    # The same command API; typed as the single-node client the rest of the store is written to.
    return cast("redis.Redis", client)


class Store:
    """Every Redis operation botrix performs, one method a state change."""

    def __init__(self, conn: Connection, *, blocking_timeout: float = 5.0) -> None:
        check_url(conn.url, conn.cluster)
        self._redis = _open(conn, conn.socket_timeout)
        self._timeout = conn.socket_timeout
        # The exchange runs once a batch, so its cost per call is the worker's cost per job at
        # low concurrency. Through the client and pool a call costs ~80 us of CPU here, most of
        # it a task (asyncio.wait_for) and a timeout context per send and per read; on a
        # connection of its own, with one timer as the deadline, ~15 us. Each runner lane owns
        # one of these connections and never has two calls in flight on it.
        # In a cluster each queue lives on its own node: the calls go through the cluster
        # client, which routes them by the queue's slot and follows the slots when they move.
        self._cluster = conn.cluster
        self._direct_factory = None if conn.cluster else _open(conn, None).connection_pool
        self._direct: dict[int, Any] = {}
        # Blocking waits get their own pool so they never starve the commands that settle jobs.
        self._blocking = _open(conn, blocking_timeout + conn.socket_timeout)
        self.blocking_timeout = blocking_timeout
        # Read on first use: most of the scripts are for producers and admin tools, and a
        # worker that never runs them would keep their text (tens of KB) for nothing.
        self._scripts: dict[str, Any] = {}

    async def aclose(self) -> None:
        """Close both connection pools and the lanes' connections.

        Last thing at shutdown, when everything owed to Redis is written or given up: a
        connection that fails to close (a TLS goodbye to a partitioned server) changes nothing.
        """
        closers = [self._redis.aclose, self._blocking.aclose, *(d.disconnect for d in self._direct.values())]
        self._direct.clear()
        for close in closers:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await close()

    async def _run(self, script: str, keys_: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._call(self._script(script)(keys=keys_, args=args))

    def _script(self, name: str) -> Any:
        """The registered script ``botrix/lua/<name>.lua`` (its text, with includes, and sha)."""
        found = self._scripts.get(name)
        if found is None:
            found = self._scripts[name] = self._redis.register_script(_load_script(f"{name}.lua"))
        return found

    async def ping(self) -> tuple[float, str]:
        """Round-trip time in seconds and the server's version; a replica is StoreUnavailable.

        A replica answers INFO, but botrix can write nothing there: after a failover that
        demoted the server, reporting it up would make readiness flap between this and the
        READONLY of every other call.
        """
        started = time.perf_counter()
        info = await self._call(self._redis.info())  # server and replication (6.2 takes one section, or all)
        rtt = time.perf_counter() - started
        # (Not in a cluster: INFO goes to one node there, which may not hold these queues, and
        # the cluster client follows failovers itself.)
        if info.get("role") == "slave" and not self._cluster:
            await self._forget_connections()
            raise StoreUnavailable(
                "READONLY: the server is a replica (a failover demoted it?); reconnecting until the URL "
                "leads to the primary"
            )
        return rtt, str(info.get("redis_version", "?"))

    async def _forget_connections(self) -> None:
        """Drop every connection (the pools' and the lanes'), so that the next calls dial the URL again.

        After a failover the URL's name (DNS, a Service, a proxy) may lead to the new primary
        while the connections made before still reach the old one, now a replica. A call in
        flight on one fails, and its caller backs off and sends it again. A cluster's client
        follows its topology itself.
        """
        if self._cluster:
            return
        for client in (self._redis, self._blocking):
            with contextlib.suppress(RedisError, OSError, RuntimeError):  # the caller backs off anyway
                await client.connection_pool.disconnect()
        for conn in self._direct.values():
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await conn.disconnect(nowait=True)

    # -- producing -------------------------------------------------------------------------

    async def enqueue(
        self, queue: str, job_id: str, envelope: bytes, delay_ms: int, once: bool = False
    ) -> bool:
        """Store and queue (or schedule) a job; False when a live job already has this id.

        ``once``: False too while any record has the id, a finished job's included.
        """
        k = keys.queue_keys(queue)
        reply = await self._run(
            "enqueue", _enqueue_keys(k, job_id), _enqueue_args(job_id, envelope, delay_ms, queue, once)
        )
        return bool(reply)

    async def enqueue_many(
        self, queue: str, jobs: Sequence[tuple[str, bytes]], delay_ms: int, once: bool = False
    ) -> None:
        """Store and queue many jobs, ENQUEUE_BATCH per round trip (ids of live jobs are skipped).

        A pipeline of the enqueue script, not one script for them all: each call stays short,
        so a large batch does not hold Redis for long, and a failure stops at a chunk's edge.
        """
        k = keys.queue_keys(queue)
        if self._cluster:
            # redis-py's cluster pipeline refuses scripts: the calls go out side by side instead,
            # a chunk at a time, over the node's pool.
            for start in range(0, len(jobs), CLUSTER_ENQUEUE_BATCH):
                await asyncio.gather(
                    *(
                        self._run("enqueue", _enqueue_keys(k, job_id),
                                  _enqueue_args(job_id, envelope, delay_ms, queue, once))
                        for job_id, envelope in jobs[start : start + CLUSTER_ENQUEUE_BATCH]
                    )
                )  # fmt: skip
            return
        script = self._script("enqueue")
        for start in range(0, len(jobs), ENQUEUE_BATCH):
            chunk = jobs[start : start + ENQUEUE_BATCH]
            for retry in (False, True):
                pipe = self._redis.pipeline(transaction=False)
                for job_id, envelope in chunk:
                    job_keys = _enqueue_keys(k, job_id)
                    job_args = _enqueue_args(job_id, envelope, delay_ms, queue, once)
                    pipe.evalsha(script.sha, len(job_keys), *job_keys, *job_args)
                replies = await self._call(pipe.execute(raise_on_error=False))
                if retry or not any(isinstance(r, NoScriptError) for r in replies):
                    break
                # A restarted or flushed Redis forgot the script: load it and send the chunk
                # again (the jobs that went in are live now, so their second call does nothing).
                await self._call(self._redis.script_load(script.script))
            for reply in replies:
                if isinstance(reply, RedisError):  # OOM, READONLY ... as for a single call
                    if _read_only(reply):
                        await self._forget_connections()
                    raise _unavailable(reply)

    async def schedule(
        self, queue: str, job_type: str, every_ms: int, cron_ms: tuple[int, int] = (0, 0)
    ) -> tuple[str | None, int, bool]:
        """Enqueue the current slot's run of a periodic handler, unless it already was.

        ``every_ms`` is its period; 0 for a cron handler, whose last and next fire times around
        :meth:`clock_ms` are ``cron_ms``. Returns the id enqueued (None if none), the ms until
        the next slot, and whether the previous run is still live (then this slot waits for it).
        """
        k = keys.queue_keys(queue)
        job_id, until_next_ms, blocked = await self._run(
            "schedule",
            [k.pending, k.scheduled, k.events, k.dead, k.schedules],
            [job_type, every_ms, queue, k.job_prefix, *cron_ms],
        )
        return (_text(job_id) or None), int(until_next_ms), blocked == 1

    async def clock_ms(self) -> int:
        """The Redis server's clock in epoch ms: the one clock every worker's schedule reads."""
        seconds, micros = await self._call(self._redis.time())
        return int(seconds) * 1000 + int(micros) // 1000

    async def register_queues(self, queues: Sequence[str]) -> None:
        """Remember queue names so that admin tools can find their jobs."""
        await self._call(self._redis.sadd(keys.QUEUES, *queues))

    async def eviction_policies(self) -> set[str]:
        """The ``maxmemory-policy`` of the server (on a cluster, of the node the client asks)."""
        info = await self._call(self._redis.info("memory"))
        # redis-py's cluster client asks its default node, as for the heartbeat's ping; asked
        # for several, it would answer per node ({node: {...}}).
        sections = [info] if "maxmemory_policy" in info else [v for v in info.values() if isinstance(v, dict)]
        return {str(s["maxmemory_policy"]) for s in sections if "maxmemory_policy" in s}

    async def legacy_backlog(self) -> int:
        """Entries on the original daemon's job list (keys.LEGACY_QUEUE), which nothing runs."""
        return int(await self._call(self._redis.llen(keys.LEGACY_QUEUE)))

    async def known_queues(self) -> list[str]:
        """Every queue name a worker or producer has used."""
        members = await self._call(self._redis.smembers(keys.QUEUES))
        # A member no botrix wrote (not a queue name) names no queue: skipped, not a failure.
        names = (m.decode(errors="replace") for m in members)
        return sorted(name for name in names if QUEUE_NAME.fullmatch(name))

    # -- consuming -------------------------------------------------------------------------

    async def exchange(
        self,
        queue: str,
        settlements: Sequence[Settlement],
        want: int,
        consumer: Consumer,
        *,
        lane: int,
        call: int | None = None,
    ) -> Exchanged:
        """Settle finished attempts, then claim up to ``want`` jobs, in one round trip.

        Returns the acks refused (their lease was lost), the claimed jobs, and the
        entries the claim dead-lettered instead (oversized, or their record overwritten).
        ``lane`` names the caller's own connection: the caller never has two calls in flight
        on one lane (the runner's lanes, runner.py). ``call`` numbers the lane's calls, rising:
        one at or below the number :meth:`orphans` was given claims nothing (None: a call that
        is never fenced, for callers that do not ask :meth:`orphans`).
        """
        k = keys.queue_keys(queue)
        args: list[Any] = [
            k.job_prefix,
            consumer.result_ttl,
            consumer.dead_cap,
            queue,
            want,
            consumer.lease_ms,
            consumer.worker_id,
            consumer.max_envelope_bytes,
            "" if call is None else call,
        ]
        for s in settlements:
            args += [s.job_id, s.delivery, s.outcome.value, s.data, s.delay_ms]
        refused, flat, dead, paused, limited_ms = await self._run_direct(
            lane,
            "exchange",
            [
                k.pending,
                k.active,
                k.scheduled,
                k.dead,
                k.events,
                k.seq,
                k.paused,
                k.rate,
                k.rate_log,
                k.claims(consumer.instance, lane),
                k.claims_fence(consumer.instance, lane),
            ],
            args,
        )
        claimed = _claimed(flat)
        rejected = [
            Rejected(_text(dead[i]), _text(dead[i + 1]), _text(dead[i + 2])) for i in range(0, len(dead), 3)
        ]
        return Exchanged(
            {(_text(refused[i]), int(refused[i + 1])) for i in range(0, len(refused), 2)},
            claimed,
            rejected,
            paused == 1,
            limited_ms / 1000,
        )

    async def orphans(
        self, queue: str, consumer: Consumer, lane: int, upto: int | None = None
    ) -> list[Claimed]:
        """The jobs the last claim of ``lane`` leased that are still running under it.

        After a claim whose reply was lost, those the worker does not know it holds are
        orphans: Redis leased them to it for that claim (orphans.lua). The lane's calls
        numbered up to ``upto`` (see :meth:`exchange`) claim nothing from now on, should
        their requests reach Redis only now (None: no fence).
        """
        k = keys.queue_keys(queue)
        return _claimed(
            await self._run(
                "orphans",
                [k.claims(consumer.instance, lane), k.events, k.claims_fence(consumer.instance, lane)],
                [k.job_prefix, consumer.worker_id, "" if upto is None else upto],
            )
        )

    async def wait_for_jobs(self, queue: str) -> bool:
        """Block until the queue has an entry (True) or the blocking timeout passes (False).

        ``BLMOVE q q LEFT LEFT`` pops the head and pushes it straight back in one atomic step,
        so it wakes on a plain ``RPUSH`` from any producer while moving nothing.
        """
        pending = keys.queue_keys(queue).pending
        reply = await self._call(
            self._blocking.blmove(pending, pending, self.blocking_timeout, "LEFT", "LEFT")  # type: ignore[arg-type]
        )
        return reply is not None

    async def renew(
        self, queue: str, held: Sequence[tuple[str, int]], lease_ms: int, worker_id: str
    ) -> list[tuple[str, int, bool]]:
        """Extend the leases ``worker_id`` still holds.

        Returns the leases lost: (id, delivery, whether the job was cancelled).
        """
        k = keys.queue_keys(queue)
        args: list[Any] = [lease_ms, k.job_prefix, worker_id]
        for job_id, delivery in held:
            args += [job_id, delivery]
        flat = await self._run("renew", [k.active, k.events], args)
        return [(_text(flat[i]), int(flat[i + 1]), flat[i + 2] == 1) for i in range(0, len(flat), 3)]

    async def cancel(self, queue: str, job_id: str, ttl_s: int) -> str | None:
        """Cancel a job unless it finished; the status it had, or None if it has no record."""
        k = keys.queue_keys(queue)
        was = await self._run(
            "cancel", [k.pending, k.scheduled, k.active, k.events], [job_id, k.job_prefix, queue, ttl_s]
        )
        return _text(was) or None

    async def cancel_page(
        self, queue: str, place: str, cutoff_ms: int, start: int, ttl_s: int
    ) -> tuple[int, int, bool]:
        """Cancel the jobs in one page of a queue's ``place`` enqueued by ``cutoff_ms``.

        The page is CANCEL_PAGE entries from rank ``start`` of ``place`` (pending, scheduled,
        active); ``cutoff_ms`` is on the Redis clock. Returns how many it cancelled, how many
        entries it left in the page, and whether the page reached the end.
        """
        k = keys.queue_keys(queue)
        cancelled, kept, read = await self._run(
            "cancel_all",
            [k.pending, k.scheduled, k.active, k.events],
            [place, k.job_prefix, queue, ttl_s, cutoff_ms, start, CANCEL_PAGE],
        )
        return int(cancelled), int(kept), int(read) < CANCEL_PAGE

    async def recover(
        self,
        queue: str,
        grace_ms: int,
        max_retries: int,
        dead_cap: int,
        by_type: Mapping[str, int] | None = None,
        batch: int = 100,
    ) -> list[RecoveredJob]:
        """Take back jobs whose lease expired more than ``grace_ms`` ago.

        ``by_type`` gives the handlers' own ``max_retries``, which come before ``max_retries``.
        """
        k = keys.queue_keys(queue)
        flat = await self._run(
            "recover",
            [k.active, k.pending, k.dead, k.events],
            [grace_ms, k.job_prefix, max_retries, batch, dead_cap, queue, orjson.dumps(by_type or {})],
        )
        return [
            RecoveredJob(_text(flat[i]), _text(flat[i + 1]), _text(flat[i + 2]))
            for i in range(0, len(flat), 3)
        ]

    async def promote(self, queue: str, batch: int = 500) -> tuple[int, int | None]:
        """Queue due scheduled jobs; returns how many moved and ms until the next one is due."""
        k = keys.queue_keys(queue)
        moved, next_due = await self._run(
            "promote", [k.scheduled, k.pending, k.events], [batch, k.job_prefix, queue]
        )
        return int(moved), (None if int(next_due) < 0 else int(next_due))

    async def publish_progress(
        self, queue: str, job_id: str, delivery: int, worker_id: str, progress: bytes
    ) -> bool:
        """Record a running job's progress and announce it; False once the attempt lost the job."""
        k = keys.queue_keys(queue)
        args = [job_id, delivery, progress, queue, worker_id]
        return bool(await self._run("progress", [k.job(job_id), k.events], args))

    # -- inspecting ------------------------------------------------------------------------

    async def job_record(self, queue: str, job_id: str) -> dict[str, bytes] | None:
        """The raw record of a job, or None when there is none."""
        key = keys.queue_keys(queue).job(job_id)
        try:
            record = await self._call(self._redis.hgetall(key))
        except ForeignWrite:
            raise _foreign(key, "a hash") from None  # named: the operator must find which
        return {k.decode(): v for k, v in record.items()} or None

    async def find_record(self, queues: Sequence[str], job_id: str) -> tuple[str, dict[str, bytes]] | None:
        """The first of ``queues`` holding a record of ``job_id``, and the record.

        One pipelined round trip asks every queue (a thousand at a time), then one reads the
        record: a round trip a queue made ``botrix job ID`` slow where producers made many.
        """
        if len(queues) == 1:
            record = await self.job_record(queues[0], job_id)
            return None if record is None else (queues[0], record)
        for start in range(0, len(queues), FIND_CHUNK):
            chunk = queues[start : start + FIND_CHUNK]
            pipe = self._redis.pipeline(transaction=False)
            for queue in chunk:
                pipe.hget(keys.queue_keys(queue).job(job_id), "status")
            found = await self._call(pipe.execute(raise_on_error=False))
            # Every record has a status. A key of another type answers with an error: reading
            # it raises ForeignWrite, as it did when each queue was read in turn.
            for queue, status in zip(chunk, found, strict=True):
                if status is not None and (record := await self.job_record(queue, job_id)):
                    return queue, record
        return None

    async def depth(self, queue: str) -> dict[str, int]:
        """How many jobs the queue holds in each state (one round trip)."""
        k = keys.queue_keys(queue)
        pipe = self._redis.pipeline(transaction=False)
        pipe.llen(k.pending)
        pipe.zcard(k.active)
        pipe.zcard(k.scheduled)
        pipe.zcard(k.dead)
        pending, active, scheduled, dead = await self._call(pipe.execute())
        return {"pending": pending, "active": active, "scheduled": scheduled, "dead": dead}

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause the queue (workers claim nothing from it) or resume it."""
        k = keys.queue_keys(queue)
        await self._call(self._redis.set(k.paused, "1") if paused else self._redis.delete(k.paused))

    async def is_paused(self, queue: str) -> bool:
        """Whether an operator has paused the queue."""
        key = keys.queue_keys(queue).paused
        try:
            return await self._call(self._redis.get(key)) is not None
        except ForeignWrite:
            raise _foreign(key, "a pause flag") from None

    async def set_rate_limit(self, queue: str, limit: RateLimit | None) -> RateLimit | None:
        """Limit how many jobs of the queue start per window, fleet-wide; None lifts the limit.

        Returns the limit now in force, with the window's count. A garbled limit is refused
        (``ForeignWrite``) rather than overwritten; lifting it deletes it, which repairs it.
        """
        if limit is None:
            return await self._rate(queue, "clear")
        return await self._rate(queue, "set", limit.max, max(1, round(limit.per * 1000)))

    async def rate_limit(self, queue: str) -> RateLimit | None:
        """The queue's rate limit, if it has one, with the jobs started in the window now."""
        return await self._rate(queue, "get")

    async def _rate(self, queue: str, *args: Any) -> RateLimit | None:
        k = keys.queue_keys(queue)
        reply = await self._run("rate", [k.rate, k.rate_log], args)
        return RateLimit(int(reply[0]), int(reply[1]) / 1000, int(reply[2])) if reply else None

    async def listed(
        self, queue: str, place: str, start: int, count: int
    ) -> list[tuple[str, dict[str, bytes]]]:
        """Entries of one of the queue's places with their records, in the order they will move.

        ``place``: ``pending`` (next to be claimed first), ``scheduled`` (soonest due first),
        ``active`` (soonest lease expiry first) or ``dead`` (newest first). Two round trips, not
        one snapshot: a job that moved in between shows its new status, and one whose record is
        gone is left out. A pending entry with no record (a foreign producer's whole envelope,
        or garbage the claim will dead-letter) comes back as the claim will see it:
        ``("", {"envelope": entry})``. A record something else overwrote raises ForeignWrite
        naming its key.
        """
        k = keys.queue_keys(queue)
        end = start + count - 1
        read: Awaitable[Any]
        if place == "pending":
            read = self._redis.lrange(k.pending, start, end)
        elif place == "dead":
            read = self._redis.zrevrange(k.dead, start, end)
        else:
            read = self._redis.zrange(k.scheduled if place == "scheduled" else k.active, start, end)
        entries: list[bytes] = await self._call(read)
        # The claim's own rule (_claim.lua): an entry is an id unless it opens with "{" or is
        # longer than any id. Keys are built from the bytes: an id that is not UTF-8 still
        # names its record.
        prefix = k.job_prefix.encode()
        ids = [e for e in entries if not e.startswith(b"{") and len(e) <= MAX_ID_LENGTH]
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(prefix + job_id)
        replies = await self._call(pipe.execute(raise_on_error=False)) if ids else []
        records = dict(zip(ids, replies, strict=True))
        listed = []
        for entry in entries:
            record = records.get(entry)
            if isinstance(record, Exception):
                raise _foreign(k.job(entry.decode(errors="replace")), "a hash")
            if record:
                listed.append((entry.decode(errors="replace"), {f.decode(): v for f, v in record.items()}))
            elif place == "pending":
                listed.append(("", {"envelope": entry}))
        return listed

    async def redrive(self, queue: str, job_ids: Sequence[str] | None) -> list[str]:
        """Send dead jobs (every one dead now when ``job_ids`` is None) back to the queue."""
        k = keys.queue_keys(queue)
        moved: list[str] = []
        async for chunk in self._dead_chunks(queue, job_ids):
            done = await self._run("redrive", [k.dead, k.pending, k.events], [k.job_prefix, queue, *chunk])
            moved += (_text(job_id) for job_id in done)
        return moved

    async def purge(self, queue: str, job_ids: Sequence[str] | None) -> int:
        """Delete dead jobs (every one dead now when ``job_ids`` is None) and their records."""
        k = keys.queue_keys(queue)
        deleted = 0
        async for chunk in self._dead_chunks(queue, job_ids):
            deleted += int(await self._run("purge", [k.dead, k.events], [k.job_prefix, *chunk]))
        return deleted

    async def _dead_chunks(
        self, queue: str, job_ids: Sequence[str] | None
    ) -> AsyncIterator[Sequence[str | bytes]]:
        """The ids to re-drive or purge, DEAD_CHUNK at a time.

        One script runs alone in Redis: re-driving a dead set of 200,000 in one call stopped
        every other client for 1.6 s, and 700,000 outlasted the caller's timeout. In chunks,
        the other clients get their turn between calls. "Every one" is those dead when the
        call began (at most the newest score then): the scripts remove each id they are
        given, so the set shrinks call by call, and jobs that die meanwhile do not keep it
        going forever.
        """
        if job_ids is not None:
            for start in range(0, len(job_ids), DEAD_CHUNK):
                yield list(job_ids[start : start + DEAD_CHUNK])
            return
        dead = keys.queue_keys(queue).dead
        newest = await self._call(self._redis.zrevrange(dead, 0, 0, withscores=True))
        if not newest:
            return
        cutoff = newest[0][1]
        while chunk := await self._call(
            self._redis.zrangebyscore(dead, "-inf", cutoff, start=0, num=DEAD_CHUNK)
        ):
            # As read, not decoded: a member that is not UTF-8 (someone else's write) decoded
            # with replacements would never match its ZREM, and this loop would read it forever.
            yield chunk

    def event_stream(self) -> EventStream:
        """A pub/sub connection of its own for the events of any queues (Client.wait's)."""
        return EventStream(self._redis.pubsub(), self._call, self._timeout)

    # -- workers ---------------------------------------------------------------------------

    async def write_health(self, worker_id: str, record: Mapping[str, Any], ttl_s: int) -> Any:
        """Publish the worker's health record with a TTL, and index it for listing.

        Returns the record it replaced (None if there was none, or it was not JSON).
        """
        expires_ms = int((time.time() + ttl_s) * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.worker_health(worker_id), orjson.dumps(record), ex=ttl_s, get=True)
        pipe.zadd(keys.WORKERS, {worker_id: expires_ms})
        previous, _ = await self._call(pipe.execute())
        try:
            return orjson.loads(previous) if previous is not None else None
        except orjson.JSONDecodeError:
            return None

    async def delete_health(self, worker_id: str) -> None:
        """Remove the worker's health record on a clean exit."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(keys.worker_health(worker_id))
        pipe.zrem(keys.WORKERS, worker_id)
        await self._call(pipe.execute())

    async def workers(self) -> list[dict[str, Any]]:
        """Health records of the workers alive now (stale index entries are pruned)."""
        await self._call(self._redis.zremrangebyscore(keys.WORKERS, "-inf", int(time.time() * 1000)))
        ids = await self._call(self._redis.zrange(keys.WORKERS, 0, -1))
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for worker_id in ids:
            pipe.get(keys.worker_health(_text(worker_id)))  # (an id botrix never wrote finds nothing)
        records = []
        for raw in await self._call(pipe.execute(raise_on_error=False)):
            # Anything but botrix's own JSON object there (another type, other text, a record
            # whose queues are not a list of names) is someone else's write: skipped, so that
            # one bad key cannot break every worker's /metrics and `botrix workers`.
            if not isinstance(raw, bytes):
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(raw)
                if _is_health_record(record):
                    records.append(record)
        return records

    async def _run_direct(self, lane: int, script: str, keys_: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script on ``lane``'s own connection, within the socket timeout."""
        if self._direct_factory is None:
            return await self._run(script, keys_, args)
        conn = self._direct.get(lane)
        if conn is None:
            conn = self._direct[lane] = self._direct_factory.make_connection()  # type: ignore[no-untyped-call]
        sha = self._script(script).sha
        # One deadline for the whole call instead of redis-py's per-send and per-read timeouts.
        # redis-py drops the connection when a read is cancelled, so a late reply can never
        # answer the next call.
        deadline = Deadline(self._timeout)
        sent = False
        try:
            try:
                if not conn.is_connected:
                    await self._connect(conn)
                sent = True
                return await self._direct_call(conn, "EVALSHA", sha, len(keys_), *keys_, *args, reload=True)
            except NoScriptError:  # a restarted or flushed Redis forgot the script
                await self._direct_call(conn, "SCRIPT", "LOAD", self._script(script).script)
                # Forgotten again in between: StoreUnavailable; the caller backs off, we load next time.
                return await self._direct_call(conn, "EVALSHA", sha, len(keys_), *keys_, *args)
        except asyncio.CancelledError:
            if deadline.fired():
                await conn.disconnect(nowait=True)
                error = StoreUnavailable(f"TimeoutError: no reply within {self._timeout:g}s")
                error.unsent = not sent
                raise error from None
            raise
        finally:
            deadline.cancel()

    async def _connect(self, conn: Any) -> None:
        """Connect ``conn`` (and its handshake: AUTH, SELECT) before a call is sent on it.

        Apart from the call, so that a failure here says the call never left (``unsent``): a
        claim that never reached Redis leased nothing, and no one need ask what it leased.
        """
        try:
            await conn.connect_check_health(check_health=False)
        except (RedisError, OSError, RuntimeError) as exc:
            await conn.disconnect(nowait=True)
            error = _unavailable(exc)
            error.unsent = True
            raise error from None

    async def _direct_call(self, conn: Any, *args: Any, reload: bool = False) -> Any:
        """One command on ``conn``; with ``reload``, NOSCRIPT is raised for the caller to load."""
        try:
            # hiredis packs in C, into one buffer: redis-py's packing costs more than the rest
            # of the call, and its list of chunks makes a slow writelines.
            await conn.send_packed_command(hiredis.pack_command(args), check_health=False)
            return await conn.read_response()
        except ResponseError as exc:  # an error reply: the connection itself is fine
            if reload and isinstance(exc, NoScriptError):
                raise
            if _read_only(exc):  # but not the server it reaches (_forget_connections)
                await conn.disconnect(nowait=True)
            raise _unavailable(exc) from None
        except (RedisError, OSError, RuntimeError) as exc:
            await conn.disconnect(nowait=True)
            raise _unavailable(exc) from None

    async def _call(self, awaitable: Any) -> Any:
        # Every Redis error backs the caller off, not only lost connections: OOM, READONLY
        # after a failover, BUSY from someone's long script and LOADING are all "Redis cannot
        # take this now", and a worker that crashed on them would leave its jobs leased.
        try:
            reply = await awaitable
        except (RedisError, OSError, RuntimeError) as exc:
            if _read_only(exc):
                await self._forget_connections()
            raise _unavailable(exc) from None
        except RedisClusterException as exc:
            # redis-py's cluster client: no node answered, or a slot has no node. Not a
            # RedisError, but the same "Redis cannot take this now".
            raise StoreUnavailable(_describe(exc)) from None
        except AttributeError as exc:
            if not self._cluster:
                raise
            # redis-py 8.1's cluster client closes every connection on its fifth MOVED, and a
            # command caught in between finds its connection's writer gone.
            raise StoreUnavailable(f"cluster connection reset: {_describe(exc)}") from None
        return reply


class EventStream:
    """Events of the queues subscribed to, on one pub/sub connection.

    ``subscribe`` only sends (redis-py's returns before Redis has run it); the confirmation
    comes out of ``next`` like an event, so one task reads everything, in order. A caller that
    reads a job's state before that confirmation could miss the job's end, published in
    between. The connection is never unsubscribed: ``aclose`` drops it with all its channels.

    A connection can die without a word (a partition, a NAT that forgot it): reads just find
    nothing. ``keep_alive`` sends a PING when nothing was heard for a while, and ``next`` fails
    with StoreUnavailable when Redis does not answer it in time.
    """

    def __init__(self, pubsub: Any, call: Callable[[Any], Awaitable[Any]], timeout: float) -> None:
        self._pubsub = pubsub
        self._call = call
        self._timeout = timeout
        self._queues: dict[bytes, str] = {}
        self._heard = time.monotonic()
        self._pinged: float | None = None  # when the unanswered PING went out

    async def subscribe(self, queue: str) -> None:
        """Ask for ``queue``'s events; ``next`` gives ``(queue, None)`` once Redis confirms."""
        channel = keys.queue_keys(queue).events
        self._queues[channel.encode()] = queue
        await self._call(self._pubsub.subscribe(channel))

    async def keep_alive(self, quiet_s: float) -> None:
        """PING if nothing was heard for ``quiet_s``; ``next`` fails if no answer follows."""
        if self._pinged is None and time.monotonic() - self._heard >= quiet_s:
            self._pinged = time.monotonic()
            await self._call(self._pubsub.ping())

    async def next(self) -> tuple[str, dict[str, Any] | None] | None:
        """The next event as ``(queue, event)``, or ``(queue, None)`` for a confirmed subscription.

        None after an idle second: the caller's chance to look at the time.
        """
        while True:
            message = await self._call(self._pubsub.get_message(timeout=1.0))
            if message is None:
                if self._pinged is not None and time.monotonic() - self._pinged > self._timeout:
                    raise StoreUnavailable(
                        f"Redis did not answer a PING on the event subscription in {self._timeout:g}s"
                    )
                return None
            self._heard, self._pinged = time.monotonic(), None
            queue = self._queues.get(message["channel"])
            if queue is None:
                continue  # a PING's answer, or a channel this stream never asked for
            if message["type"] == "subscribe":
                return queue, None
            if message["type"] != "message":
                continue
            try:
                event = orjson.loads(message["data"])
            except orjson.JSONDecodeError:
                continue  # not botrix's: anyone allowed to publish on the channel could
            if isinstance(event, dict):
                return queue, event

    async def aclose(self) -> None:
        """Drop the connection, and with it every subscription."""
        with contextlib.suppress(RedisError, OSError, TimeoutError, RuntimeError, AttributeError):
            await self._pubsub.aclose()


def _unavailable(exc: RedisError | OSError | RuntimeError) -> StoreUnavailable:
    if isinstance(exc, ResponseError) and (wrong := _wrong_type(str(exc))) is not None:
        return ForeignWrite(f"{type(exc).__name__}: {wrong.splitlines()[0]}"[:300])
    if not isinstance(exc, RuntimeError):
        return StoreUnavailable(_describe(exc))
    # uvloop reports a write on a connection the peer reset while it sat idle as a RuntimeError
    # ("unable to perform operation on <TCPTransport closed=True>; the handler is closed",
    # MagicStack/uvloop#506). redis-py has already dropped the connection; the caller backs off
    # and the next call reconnects. Any other RuntimeError is a bug, and stays one.
    if "handler is closed" not in str(exc) and "unable to perform operation" not in str(exc):
        raise exc
    return StoreUnavailable(f"connection reset: {_describe(exc)}")


def _read_only(exc: BaseException) -> bool:
    """Whether Redis refused a write as a replica.

    redis-py's ReadOnlyError, or on Redis 6.2, where a script's READONLY comes back inside
    "Error running script ...", a plain ResponseError.
    """
    return isinstance(exc, ReadOnlyError) or (isinstance(exc, ResponseError) and "READONLY" in str(exc))


def _is_health_record(record: object) -> bool:
    """Whether ``record`` has the shape of a worker's health record where its readers look."""
    if not isinstance(record, dict):
        return False
    queues = record.get("queues", [])
    return isinstance(queues, list) and all(isinstance(q, str) for q in queues)


def _wrong_type(message: str) -> str | None:
    """The ``WRONGTYPE ...`` part of a reply, or None: the same reason whatever wrapped it.

    Redis 7 passes a script's error through as it was raised; 6.2 wraps it in "ERR Error
    running script (call to f_...): @user_script:N: WRONGTYPE ..." (redis-py drops the ERR),
    and redis-py's pipelines in "Command # N (...) of pipeline caused error: WRONGTYPE ...".
    """
    if message.startswith("WRONGTYPE"):
        return message
    if message.startswith("Error running script") and "WRONGTYPE " in message:
        return message[message.index("WRONGTYPE ") :]
    if message.startswith("Command # ") and "WRONGTYPE " in message:
        return message[message.index("WRONGTYPE ") :].removesuffix("',)")
    return None


def _claimed(flat: list[Any]) -> list[Claimed]:
    """Jobs as the claim scripts return them: five entries a job."""
    return [
        Claimed(_text(flat[i]), flat[i + 1], int(flat[i + 2]), int(flat[i + 3]), int(flat[i + 4]))
        for i in range(0, len(flat), 5)
    ]


def _text(raw: bytes) -> str:
    # Ids are ASCII by construction; a stray byte must not crash the worker that reads it.
    return raw.decode(errors="replace")


def _describe(exc: BaseException) -> str:
    """A one-line reason that never carries the URL (and so never a password)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"[:300]
