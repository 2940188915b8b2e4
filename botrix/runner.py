"""The consuming loop: settle what finished and claim into the freed slots, in one call.

Each pass sends one ``exchange`` script call per queue that has something to settle or room
to claim, in strict priority order: the script first writes the finished attempts back, then
claims at most as many jobs as the worker has free slots. So the worker never holds more than
``--concurrency`` leases, never hoards work an idle worker beside it could run, and under load
needs one round trip per batch. A lower-priority queue claims only in a pass where every
queue above it came back short. When there is nothing to write and nothing pending, the loop
arms the waker and sleeps until a job lands, a job finishes, or it is told to stop.

A worker on one queue with 10 slots or more splits them into lanes, each with at most one pass
in flight: while Redis runs one lane's exchange, the worker runs another lane's jobs. With one
lane, short jobs all finish in the same loop iteration and worker and Redis take turns, each
idle while the other works (docs/design.md). A worker on several queues keeps one lane, so
that strict priority is decided on one consistent view.

Shutdown: claiming stops at once; in-flight jobs get ``--shutdown-timeout`` (their leases
still renewed by the heartbeat); what is still running then is cancelled and requeued without
counting an attempt. A second signal (``force``) skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from dataclasses import dataclass
from typing import Any

from botrix.aio import Backoff, sleep_or_stop
from botrix.attempt import Attempts, dead_settlement
from botrix.config import Settings
from botrix.context import Enqueue
from botrix.errors import EnvelopeError
from botrix.executor import MESSAGE_LIMIT, contain_handler_tasks, handler_context
from botrix.health import InFlight, Phase, WorkerState
from botrix.holds import Holds
from botrix.logs import Logger
from botrix.metrics import Metrics
from botrix.model import Claimed, ErrorInfo, Outcome, Rejected, Settlement, parse_job
from botrix.pauses import Pauses
from botrix.registry import Registry
from botrix.settler import Settler
from botrix.store import Consumer, Exchanged, ForeignWrite, Store, StoreUnavailable
from botrix.waker import Waker

#: After the shutdown timeout, how long cancelled jobs get to be written back as requeued.
REQUEUE_GRACE_S = 5.0
#: How long the requeue of jobs whose handlers outlast that grace may take (one call, normally
#: milliseconds); short, so that the worst-case shutdown stays inside the units' 40 s grace.
STUCK_REQUEUE_S = 2.0
#: How long a drain that owes nothing but the search for a lost claim's jobs keeps asking:
#: Redis is likely away, and an idle worker should not wait out the whole shutdown timeout.
ORPHANS_DRAIN_S = 10.0


@dataclass(slots=True)
class Lane:
    """A share of the worker's slots, with at most one pass in flight."""

    index: int
    size: int
    held: int = 0  # its jobs in flight: running, or finished and not yet written
    reserved: int = 0  # slots its pass in flight may fill
    busy: bool = False  # a pass is in flight
    call: int = 0  # the number of its last exchange call, for the fence (_reclaim)


#: Numbers every exchange call of the process, rising: a lane's calls must stay above its fence
#: (orphans.lua), which outlives a Runner (a Worker run again keeps its process instance).
_CALLS = itertools.count(1)

#: A worker on one queue gets a lane per LANE_SLOTS slots, from two (at MIN_SPLIT slots or
#: more) to MAX_LANES. Below MIN_SPLIT one lane: lanes of 2 or 3 slots would pay a round trip
#: for every 2 or 3 jobs (docs/design.md).
LANE_SLOTS = 50
MAX_LANES = 8
MIN_SPLIT = 10


def split(concurrency: int, queues: int) -> list[Lane]:
    """The lanes of a worker (see LANE_SLOTS)."""
    count = 1
    if queues == 1 and concurrency >= MIN_SPLIT:
        count = min(MAX_LANES, max(2, -(-concurrency // LANE_SLOTS)))
    return [Lane(i, concurrency // count + (1 if i < concurrency % count else 0)) for i in range(count)]


class Runner:
    """The consuming loop of one worker."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        state: WorkerState,
        log: Logger,
        force: asyncio.Event,
        metrics: Metrics,
        resources: dict[str, Any],
        enqueue: Enqueue,
    ) -> None:
        self._store = store
        self._settings = settings
        self._state = state
        self._log = log
        self._force = force
        self._consumer = Consumer(
            settings.worker_id,
            settings.lease_ms,
            settings.max_payload_bytes,
            settings.result_ttl,
            settings.dead_letter_max,
            state.instance,
        )
        self._attempts = Attempts(store, registry, settings, log, metrics, resources, enqueue)
        # Each job's task runs in a copy of this: no job sees what another set in its context.
        self._job_context = handler_context()
        self._lanes = split(settings.concurrency, len(settings.queues))
        self._settler = Settler(state, log, metrics, len(self._lanes))
        self._wake = asyncio.Event()
        self._waker = Waker(store, settings.queues, self._work_arrived, state.redis, log)
        self._pauses = Pauses(self._waker, state, log, metrics, self._work_arrived)
        self._backoff = Backoff()
        self._holds = Holds(self._settler, self._waker, state, log, self._move_slots, self._work_arrived)
        self._latest: dict[tuple[str, str], InFlight] = {}  # the newest attempt of each job held
        self._dry = False  # the last claim came back short: the queues looked empty
        # Counts the signs of new work (the waker's, a hold's end): a pass that began before
        # the latest one cannot tell the queues are empty, whatever its claims came back with.
        self._arrivals = 0
        self._failure: BaseException | None = None
        # (queue, lane) whose last claim may have run without its reply reaching us: the jobs
        # it leased are ours, unknown to us (_reclaim). Each with the loop time it failed at.
        self._unsure: dict[tuple[str, int], float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``, then drain; returns once every claimed job is settled."""
        waker_stop = asyncio.Event()
        waker = asyncio.create_task(self._waker.run(waker_stop), name="botrix-waker")
        relay = asyncio.create_task(self._relay(stop), name="botrix-stop-relay")
        try:
            self._state.phase = Phase.RUNNING
            await self._consume(stop)
        finally:
            waker_stop.set()
            relay.cancel()
            await self._drain()
            await waker

    def lease_lost(self, queue: str, lost: list[tuple[str, int, bool]], since: float) -> None:
        """A renewal sent at ``since`` found these leases gone: stop the attempts holding them.

        Each is (id, delivery, cancelled): an operator's cancel takes the lease away too.

        Not an attempt whose lease was handed (back) to this worker after that renewal went out:
        after Redis lost writes, a claim can re-grant the very lease the renewal found gone.
        """
        for job_id, delivery, cancelled in lost:
            entry = self._state.in_flight.get((queue, job_id, delivery))
            if entry is not None and entry.granted < since:
                self._cancel_lost(entry, cancelled)

    def _cancel_lost(self, entry: InFlight, cancelled: bool = False) -> None:
        if entry.task is None or entry.task.done() or entry.cancel_reason:
            return  # nothing to stop, or already being stopped
        entry.cancel_reason = "cancelled" if cancelled else "lease_lost"
        entry.task.cancel()
        if cancelled:
            self._log.info(
                "job.cancelled",
                queue=entry.queue,
                job_id=entry.job_id,
                reason="cancelled (botrix cancel); the attempt is stopped and its result dropped",
            )
            return
        self._log.warning(
            "job.lease_lost",
            queue=entry.queue,
            job_id=entry.job_id,
            reason="lease expired or taken over; the attempt is abandoned",
        )

    async def _relay(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    def _free(self, lane: Lane) -> int:
        # Finished jobs keep their slot until a pass writes them (and so frees it); slots that a
        # pass in flight may fill are reserved.
        return lane.size - lane.held - lane.reserved + self._settler.pending(lane.index)

    async def _consume(self, stop: asyncio.Event) -> None:
        passes: set[asyncio.Task[bool | None]] = set()
        try:
            while not stop.is_set():
                self._wake.clear()
                if self._failure is not None:
                    raise self._failure
                ready = [
                    lane
                    for lane in self._lanes
                    if not lane.busy
                    and (
                        self._settler.pending(lane.index)
                        or (self._free(lane) > 0 and not self._dry)
                        or self._unsure_in(lane)
                    )
                ]
                for lane in ready:
                    lane.busy = True
                    task = asyncio.create_task(self._pass(lane, claiming=True, stop=stop))
                    passes.add(task)
                    done = functools.partial(self._pass_done, lane=lane, passes=passes, since=self._arrivals)
                    task.add_done_callback(done)
                if ready:
                    await asyncio.sleep(0)  # let them take their batches and reserve their slots
                    continue
                if passes:
                    await self._wake.wait()  # a job or a pass finishing sets it
                    continue
                if any(self._free(lane) > 0 for lane in self._lanes):
                    self._waker.arm()
                if not await sleep_or_stop(self._wake, self._store.blocking_timeout + 1):
                    # Not woken for a whole blocking wait: look once without being told, in case
                    # a wake-up was lost (with a dead connection, or a watcher that died).
                    self._dry = False
        finally:
            if passes:
                await asyncio.wait(passes)
        if self._failure is not None:
            raise self._failure  # from a pass, or a report (_took), that ended after the stop

    def _move_slots(self, lane: int, n: int) -> None:
        self._lanes[lane].held += n

    def _work_arrived(self) -> None:
        self._arrivals += 1
        self._dry = False
        self._wake.set()

    def _pass_done(
        self, task: asyncio.Task[bool | None], lane: Lane, passes: set[asyncio.Task[bool | None]], since: int
    ) -> None:
        passes.discard(task)
        lane.busy = False
        if task.cancelled():
            return
        if task.exception() is not None:
            self._failure = task.exception()
        elif task.result() is not None:
            self._dry = bool(task.result()) and self._arrivals == since
        self._wake.set()

    async def _pass(self, lane: Lane, *, claiming: bool, stop: asyncio.Event | None) -> bool | None:
        """One round of exchanges for ``lane``, queue by queue in priority order.

        Returns True when the queues ran dry (the last claim came back short), False when a
        claim was filled or none was made (look again), None when Redis failed.
        """
        batches = self._settler.take(lane.index)
        dry = False
        for queue in self._settings.queues:
            if claiming and stop is not None and stop.is_set():
                # Claiming stops at once: in a pass launched just before the stop, or in one
                # whose higher queue's call was in flight when it came.
                claiming = False
            items = batches.pop(queue, [])
            hold = self._holds.get(queue)
            on_hold = hold is not None and self._holds.on_hold(queue)
            if hold is not None and on_hold and not hold.claims_only:
                # Its results cannot be written either: they wait off the settler (Holds). It
                # cannot give jobs: for strict priority it ran dry, and the queues below go on.
                self._holds.park(hold, lane.index, items)
                dry = dry or claiming
                continue
            # Paused by an operator, at its rate limit (and not due for a look), or on a hold that
            # stops only its claims (a garbled sequence, pause flag or limit): its results are
            # still written, and for strict priority it ran dry, so the queues below go on.
            held_back = claiming and (on_hold or self._pauses.skip(queue))
            dry = dry or held_back
            # Only this call's settlements free slots for its claim; jobs finishing meanwhile
            # keep theirs until a later call writes them.
            want = (
                max(0, lane.size - lane.held - lane.reserved + len(items))
                if claiming and not held_back
                else 0
            )
            if want == 0 and not held_back:
                claiming = False  # this queue was not looked at, so the ones below it wait too
            if (
                not items
                and want == 0
                and (queue, lane.index) not in self._unsure
                and (hold is None or hold.claims_only)
            ):
                continue  # (a held queue gets a call anyway, whose key checks tell if it is repaired)
            lane.reserved += want
            try:
                sent, (refused, claimed, rejected, now_paused, limited_s) = await self._exchange(
                    lane, queue, items, want, stop
                )
            except ForeignWrite as exc:
                # Only this queue is broken: Redis is fine, and the queues below it go on.
                self._holds.hold(queue, lane.index, items, exc)
                dry = dry or claiming
                continue
            except BaseException as exc:
                # Redis failed, or the pass was cancelled (the shutdown timeout): keep the batch.
                # If Redis applied it and the reply was lost, writing it again is a no-op (the
                # record's settled mark), unless the job has moved on since (_exchange marks it).
                batches[queue] = items
                self._settler.put_back(lane.index, batches)
                if not isinstance(exc, StoreUnavailable):
                    raise
                if self._state.redis.mark_down(str(exc)):
                    self._log.warning(
                        "redis.unavailable", reason=str(exc), during="exchange", unsettled=len(self._settler)
                    )
                await sleep_or_stop(stop or asyncio.Event(), self._backoff.next())
                return None
            finally:
                lane.reserved -= want
            self._backoff.reset()
            if self._state.redis.mark_up():
                self._log.info("redis.recovered")
            # (``sent``, not ``want``: a claim the stop took back proves nothing and saw nothing)
            if hold is not None and (sent or not hold.claims_only):
                self._holds.repaired(queue, hold)
            self._took(lane, queue, items, refused, claimed, rejected)
            if sent:
                self._pauses.saw(queue, now_paused, limited_s)
                dry = len(claimed) < sent
                # Strict priority: lower queues claim only in a pass where this one ran dry.
                claiming = dry
        return dry

    def _took(
        self,
        lane: Lane,
        queue: str,
        items: list[Settlement],
        refused: set[tuple[str, int]],
        claimed: list[Claimed],
        rejected: list[Rejected],
    ) -> None:
        """What a call wrote gives up its slots; what it claimed starts."""
        for settlement in items:
            if isinstance(settlement.owner, InFlight):
                self._forget(settlement.owner)
        if claimed:
            loop = asyncio.get_running_loop()
            for job in claimed:
                self._start(loop, lane, queue, job)
            # The written batch's lines and counts come after the claimed jobs' first steps,
            # not before: each job of a lane's batch starts that much sooner (I/O-bound jobs
            # at concurrency 200: 94.1% -> 95.0% of the ideal, docs/performance.md).
            loop.call_soon(self._report_later, queue, items, refused, rejected)
        else:
            self._report(queue, items, refused, rejected)

    def _report(
        self, queue: str, items: list[Settlement], refused: set[tuple[str, int]], rejected: list[Rejected]
    ) -> None:
        """Log, count and measure what a call wrote, and what its claim dead-lettered."""
        self._settler.written(items, refused)
        if rejected:
            self._settler.rejected(queue, rejected)

    def _report_later(
        self, queue: str, items: list[Settlement], refused: set[tuple[str, int]], rejected: list[Rejected]
    ) -> None:
        """:meth:`_report`, called back: a bug of ours stops the runner, as in a pass (_pass_done)."""
        try:
            self._report(queue, items, refused, rejected)
        except Exception as exc:  # not the loop's default handler, which would log it and go on
            self._failure = exc
            self._wake.set()

    async def _exchange(
        self, lane: Lane, queue: str, items: list[Settlement], want: int, stop: asyncio.Event | None
    ) -> tuple[int, Exchanged]:
        """The store's exchange, noting a claim that may have run without its reply reaching us.

        Returns how many jobs the call asked for, with what it did. After such a claim, the
        lane's next call on the queue first requeues what it leased: those requeues join
        ``items``.
        """
        if (queue, lane.index) in self._unsure:
            items.extend(await self._reclaim(lane, queue))
            if stop is not None and stop.is_set():
                want = 0  # the stop came while we asked: claiming stops at once (_pass)
        lane.call = next(_CALLS)
        try:
            exchanged = await self._store.exchange(
                queue, items, want, self._consumer, lane=lane.index, call=lane.call
            )
        except ForeignWrite as exc:
            # The script stopped at its key checks, before any claim; on a hold of claims only,
            # after it wrote the results (holds.py).
            if exc.claims_only:
                _sent_before(items)
            raise
        except BaseException as exc:
            if isinstance(exc, StoreUnavailable) and exc.unsent:
                raise  # no connection: Redis ran none of it, and there is nothing to ask
            # (not before the call: a failed _reclaim sent nothing)
            _sent_before(items)
            if want and isinstance(exc, StoreUnavailable):
                # Redis may have run the claim: the jobs it leased are ours (_reclaim).
                self._unsure.setdefault((queue, lane.index), asyncio.get_running_loop().time())
            raise
        return want, exchanged

    def _unsure_in(self, lane: Lane) -> bool:
        """Whether ``lane`` has a lost claim's jobs to look for, on a queue it may call now."""
        # (a held queue's turn comes when its hold ends)
        return bool(self._unsure) and any(
            index == lane.index and not self._holds.on_hold(queue) for queue, index in self._unsure
        )

    async def _reclaim(self, lane: Lane, queue: str) -> list[Settlement]:
        """Requeues, their attempts given back, for the jobs a lost claim of ``lane`` leased.

        Left alone, each would wait out its lease and then cost an attempt it never ran (a job
        with ``max_retries=0`` would be dead-lettered). Redis keeps what each lane of this
        process last claimed (exchange.lua); as the lane has had no claim on ``queue`` since the
        one that failed, a job in there still running under us and not held is an orphan. It is
        held like a claimed job (its lease renewed) until the requeue is written.
        """
        failed_at = self._unsure[(queue, lane.index)]
        try:
            # Fences the calls so far: the lost one's request may still be on its way.
            orphans = await self._store.orphans(queue, self._consumer, lane.index, upto=lane.call)
        except ForeignWrite:
            orphans = []  # the queue's hold reports it; recovery takes the jobs back, as before
        except StoreUnavailable as exc:
            if asyncio.get_running_loop().time() - failed_at <= self._settings.lease_seconds:
                raise  # the pass backs off and asks again
            # The record of the claim has expired with its leases: recovery has those jobs now.
            self._log.warning("job.orphans_unknown", queue=queue, reason=str(exc))
            orphans = []
        del self._unsure[(queue, lane.index)]
        requeues = []
        for claimed in orphans:
            key = (queue, claimed.job_id, claimed.delivery)
            if key in self._state.in_flight:
                continue  # the reply did arrive: a failed call after it claimed nothing
            older = self._latest.get((queue, claimed.job_id))
            if older is not None and older.task is not None and not older.task.done():
                # An older attempt of the job still runs here (its lease lost: recovered and
                # claimed again, or Redis back at an older snapshot). Renewal stops it and
                # recovery returns the job, as before; requeued now, the job could start
                # elsewhere while that attempt still runs.
                continue
            self._log.warning(
                "job.orphaned",
                queue=queue,
                job_id=claimed.job_id,
                reason="the reply of the call that claimed it was lost; it is requeued, "
                "its attempt given back",
            )
            entry = self._book(lane, queue, claimed)  # never run: its slot until the requeue is written
            requeues.append(_requeue(entry, "orphaned"))
        return requeues

    def _start(self, loop: asyncio.AbstractEventLoop, lane: Lane, queue: str, claimed: Claimed) -> None:
        key = (queue, claimed.job_id, claimed.delivery)
        held = self._state.in_flight.get(key)
        if held is not None and held.cancel_reason is None and held.task and not held.task.done():
            # The very lease this worker holds, handed out again: Redis lost the writes since
            # (a restart from an older snapshot, a failover to a replica that was behind). The
            # attempt running is that lease's attempt; a second one would run the job twice.
            # One that finished (its outcome may already have been refused) or is being
            # cancelled is not: a new attempt takes the lease and the key, and the old one
            # keeps only its slot until it ends (its outcome is dropped, or written and
            # refused or taken as already applied).
            held.granted = time.monotonic()
            self._log.warning(
                "job.reclaimed",
                queue=queue,
                job_id=claimed.job_id,
                reason="Redis handed out a lease this worker already holds (it lost recent writes)",
            )
            return
        # This worker may still run an older attempt of the same job whose lease it lost (it
        # was recovered, and we claimed it again): that attempt must stop now.
        older = self._latest.get((queue, claimed.job_id))
        if older is not None:
            self._cancel_lost(older)
        entry = self._book(lane, queue, claimed)
        job = self._run_job(queue, claimed, entry)
        if loop.get_task_factory() is contain_handler_tasks:
            # The loop's factory is ours alone, and would only make this Task: made directly, it
            # costs no Python call a job. A factory chained over ours (an error tracker's) sees it.
            entry.task = asyncio.Task(job, loop=loop, context=self._job_context.copy())
        else:
            entry.task = loop.create_task(job, context=self._job_context.copy())

    def _book(self, lane: Lane, queue: str, claimed: Claimed) -> InFlight:
        """Hold ``claimed``'s lease in one of ``lane``'s slots, renewed until it is written back."""
        entry = InFlight(
            claimed.job_id,
            queue,
            claimed.delivery,
            claimed,
            lane=lane.index,
            granted=time.monotonic(),
        )
        lane.held += 1
        self._state.in_flight[(queue, claimed.job_id, claimed.delivery)] = entry
        self._latest[(queue, claimed.job_id)] = entry
        return entry

    async def _run_job(self, queue: str, claimed: Claimed, entry: InFlight) -> None:
        settlement: Settlement | None = None
        try:
            settlement = await self._attempts.run(queue, claimed)
        except asyncio.CancelledError:
            if entry.cancel_reason == "shutdown":
                settlement = _requeue(entry)
        except Exception as exc:  # a bug of ours: the job is dead-lettered with it, never stuck
            self._log.exception("job.internal_error", queue=queue, job_id=claimed.job_id)
            message = f"botrix failed running the job: {exc!r}"[:MESSAGE_LIMIT]
            settlement = dead_settlement(queue, claimed, ErrorInfo("InternalError", message))
        if (
            entry.cancel_reason == "shutdown"
            and settlement is not None
            and settlement.outcome in (Outcome.RETRY, Outcome.DEAD)
        ):
            # The handler turned the shutdown's cancel into an error of its own (a driver raising
            # on cancel, a cleanup that fails): that failure is the shutdown's, not the job's.
            settlement = _requeue(entry)
        if entry.cancel_reason == "abandoned":
            pass  # requeued by the drain, which gives its slot back when that is written
        elif settlement is None or entry.cancel_reason in ("lease_lost", "cancelled"):
            # The lease is gone (another worker owns the job now, or it was cancelled), and with
            # it this attempt's say on the outcome, even if its handler caught the cancellation
            # and returned.
            if entry.cancel_reason == "cancelled":
                self._settler.cancelled(queue, claimed)
            self._forget(entry)
        else:
            settlement.owner = entry
            self._settler.submit(settlement, entry.lane)
        self._wake.set()

    def _forget(self, entry: InFlight) -> None:
        """Give up ``entry``'s slot; it leaves the books unless a newer attempt took its key."""
        self._lanes[entry.lane].held -= 1
        key = (entry.queue, entry.job_id, entry.delivery)
        if self._state.in_flight.get(key) is entry:
            del self._state.in_flight[key]
        if self._latest.get((entry.queue, entry.job_id)) is entry:
            del self._latest[(entry.queue, entry.job_id)]

    async def _drain(self) -> None:
        self._state.phase = Phase.DRAINING
        searched = False  # whether this phase had its full time to ask for a lost claim's jobs
        if self._owed(orphans=True):
            timeout = self._settings.shutdown_timeout
            if not self._owed():
                timeout = min(timeout, ORPHANS_DRAIN_S)
            self._log.info("worker.draining", in_flight=len(self._state.in_flight), timeout_s=timeout)
            await self._settle_until_idle(timeout, self._force, orphans=True)
            searched = timeout > 0 and not self._force.is_set()
        running = [e for e in self._state.in_flight.values() if e.task and not e.task.done()]
        for entry in running:
            entry.cancel_reason = entry.cancel_reason or "shutdown"  # a lost lease stays lost
            assert entry.task is not None
            entry.task.cancel()
        # Also the search for a lost claim's jobs, when the first phase may not have asked (a
        # second signal, or --shutdown-timeout 0): requeued now, they cost no attempt.
        orphans = not searched
        if self._owed(orphans) and not await self._settle_until_idle(REQUEUE_GRACE_S, None, orphans):
            stuck = self._requeue_stuck()
            if not (stuck and await self._settle_until_idle(STUCK_REQUEUE_S, None)):
                self._holds.abandon()
                self._settler.abandon()
        self._holds.close()
        for queue, lane in self._unsure:
            self._log.warning(
                "job.orphans_unknown",
                queue=queue,
                lane=lane,
                reason="stopped before Redis could say what a lost claim leased; recovery returns "
                "those jobs after their lease",
            )

    def _requeue_stuck(self) -> int:
        """Requeue the jobs whose handlers outlast the cancel's grace; returns how many.

        A task cannot be stopped from outside: the process ends without waiting for these
        (cli/worker.py), and that is what stops them. Left leased instead, each would cost an
        attempt once its lease ran out, and dead-letter a job with ``max_retries=0``.
        """
        stuck = [
            e
            for e in self._state.in_flight.values()
            if e.cancel_reason == "shutdown" and e.task is not None and not e.task.done()
        ]
        for entry in stuck:
            entry.cancel_reason = "abandoned"  # its task no longer speaks for the job
            self._settler.submit(_requeue(entry), entry.lane)
            self._log.warning(
                "job.abandoned",
                queue=entry.queue,
                job_id=entry.job_id,
                reason=f"its handler did not stop within {REQUEUE_GRACE_S:g} s of being cancelled; "
                "the job is requeued and the process exits without waiting for it",
            )
        return len(stuck)

    def _owed(self, orphans: bool = False) -> bool:
        # Buffered outcomes count too: an attempt replaced under its key (after Redis lost
        # writes) is no longer in flight, but its outcome may still be owed. With ``orphans``,
        # so do the jobs of a claim whose reply was lost: requeued now, they cost no attempt
        # (not on a queue on hold, which cannot be asked now: recovery returns those).
        return (
            bool(self._state.in_flight)
            or len(self._settler) > 0
            or self._holds.any_parked()
            or (orphans and any(self._unsure_in(lane) for lane in self._lanes))
        )

    async def _settle_until_idle(
        self, timeout: float, unless: asyncio.Event | None, orphans: bool = False
    ) -> bool:
        """Keep writing finished jobs back until none is held; False on timeout or ``unless``.

        With ``orphans``, also the requeues of a lost claim's jobs (``_reclaim``).
        """
        try:
            async with asyncio.timeout(timeout):
                while self._owed(orphans) and not (unless and unless.is_set()):
                    self._wake.clear()
                    due = [
                        lane
                        for lane in self._lanes
                        if self._settler.pending(lane.index) or (orphans and self._unsure_in(lane))
                    ]
                    for lane in due:
                        # One backoff a round, not one a lane: Redis failing for one lane fails
                        # for all, and the requeue grace is short.
                        if await self._pass(lane, claiming=False, stop=unless) is None:
                            break
                    if not due:
                        await self._wait_for(self._wake, unless)
        except TimeoutError:
            return False
        return not self._owed(orphans)

    @staticmethod
    async def _wait_for(event: asyncio.Event, unless: asyncio.Event | None) -> None:
        waits = [asyncio.create_task(event.wait())]
        if unless is not None:
            waits.append(asyncio.create_task(unless.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()


def _sent_before(items: list[Settlement]) -> None:
    """Mark ``items`` as sent in a call whose writes may have landed (Settlement.resent)."""
    for settlement in items:
        settlement.resent = True


def _requeue(entry: InFlight, reason: str = "shutdown") -> Settlement:
    """The settlement that puts ``entry``'s job back, named for the log and metrics.

    ``reason`` is the log's word for why: a shutdown, or a claim whose reply was lost.

    The envelope is parsed again here rather than kept from the attempt: shutdowns are rare,
    and every job paying to carry its identity would not be.
    """
    job_type = correlation_id = ""
    with contextlib.suppress(EnvelopeError):
        job = parse_job(entry.claimed, entry.queue)
        job_type, correlation_id = job.type, job.correlation_id
    return Settlement(
        entry.job_id,
        entry.queue,
        entry.delivery,
        Outcome.REQUEUE,
        job_type=job_type,
        attempt=entry.claimed.attempt,
        correlation_id=correlation_id,
        requeue_reason=reason,
        owner=entry,
    )
