"""Queues the runner leaves alone after a foreign write, until someone repairs the key.

A key of one queue that holds what botrix never writes (store.ForeignWrite: a list where a
sorted set belongs, a garbled counter) fails that queue's calls, and only them: Redis is fine,
and so are the other queues. The queue is held: tried again after a delay doubling from
HOLD_BASE_S to HOLD_CAP_S (a person has to repair the key, and each try logs a warning), its
waker paused, ``/ready`` naming it. Its finished jobs wait here, off the settler, so that their
lanes do not spin on a write that cannot succeed, and they give their slots back meanwhile so
that the other queues run; unless only the claim half meets the damage (a garbled sequence,
pause flag or rate limit), when a call that claims nothing still writes them. The first call
on the queue that succeeds ends the hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from botrix.aio import Backoff
from botrix.health import WorkerState
from botrix.logs import Logger
from botrix.model import Settlement
from botrix.settler import Settler
from botrix.store import ForeignWrite
from botrix.waker import Waker

HOLD_BASE_S = 1.0
HOLD_CAP_S = 30.0


@dataclass(slots=True)
class Hold:
    """One queue left alone until ``until`` (loop time)."""

    backoff: Backoff
    #: Only a claiming call meets the broken key (a garbled sequence): a settle proves nothing.
    claims_only: bool = False
    until: float = 0.0
    parked: list[tuple[int, Settlement]] = field(default_factory=list)  # (lane, settlement)
    timer: asyncio.TimerHandle | None = None


class Holds:
    """The held queues of one runner.

    ``held(lane, n)`` moves ``n`` slots of a lane: a parked result gives its slot back (-1), and
    takes it again when it returns to the settler (+1). ``work_arrived`` is called when a hold's
    delay is over, so that the runner calls on the queue again.
    """

    def __init__(
        self,
        settler: Settler,
        waker: Waker,
        state: WorkerState,
        log: Logger,
        held: Callable[[int, int], None],
        work_arrived: Callable[[], None],
    ) -> None:
        self._settler = settler
        self._waker = waker
        self._state = state
        self._log = log
        self._held = held
        self._work_arrived = work_arrived
        self._holds: dict[str, Hold] = {}

    def get(self, queue: str) -> Hold | None:
        """``queue``'s hold, over or not, until a call proves the key repaired."""
        return self._holds.get(queue)

    def on_hold(self, queue: str) -> bool:
        """Whether ``queue`` is left alone now."""
        hold = self._holds.get(queue)
        return hold is not None and hold.until > asyncio.get_running_loop().time()

    def any_parked(self) -> bool:
        """Whether results wait here: the drain owes them."""
        return any(hold.parked for hold in self._holds.values())

    def hold(self, queue: str, lane: int, items: list[Settlement], exc: ForeignWrite) -> None:
        """Leave ``queue`` alone for a while: a call of ``lane`` carrying ``items`` met ``exc``."""
        reason = str(exc)
        hold = self._holds.get(queue)
        if hold is None:
            hold = self._holds[queue] = Hold(Backoff(HOLD_BASE_S, HOLD_CAP_S))
        hold.claims_only = exc.claims_only
        if exc.claims_only:
            # The call wrote them before its claim half failed: the next one, claiming nothing
            # while the hold lasts, sends them again, a no-op that reports them (Runner._pass).
            self._settler.put_back(lane, {queue: items})
        else:
            self.park(hold, lane, items)
        self._waker.pause(queue, "damaged")
        loop = asyncio.get_running_loop()
        if hold.until > loop.time():
            return  # another lane's call failed the same way meanwhile: one try, one warning
        delay = hold.backoff.next()
        hold.until = loop.time() + delay
        if hold.timer is not None:
            hold.timer.cancel()  # a pass that saw the delay over may have come before its timer
        hold.timer = loop.call_later(delay, self._retry, queue, hold)
        self._state.damaged[queue] = reason
        self._log.warning(
            "queue.damaged",
            queue=queue,
            reason=reason,
            retry_in_s=round(delay, 1),
            unsettled=len(hold.parked),
        )

    def park(self, hold: Hold, lane: int, items: list[Settlement]) -> None:
        """Keep ``items`` here until the hold ends, their slots given back."""
        self._held(lane, -len(items))
        hold.parked += [(lane, s) for s in items]

    def repaired(self, queue: str, hold: Hold) -> None:
        """A call on a held queue succeeded: someone repaired the key."""
        if self._holds.get(queue) is not hold:
            # Another lane's call got there first; or it did, and a newer hold began since (the
            # key broken again): a call that started before that proves nothing about it.
            return
        del self._holds[queue]
        if hold.timer is not None:
            hold.timer.cancel()
        self._unpark(hold)
        self._waker.resume(queue, "damaged")
        self._state.damaged.pop(queue, None)
        self._log.info("queue.repaired", queue=queue)

    def abandon(self) -> None:
        """At the end of a drain that could not wait any longer: the parked results are lost."""
        for queue, hold in self._holds.items():
            for _, settlement in hold.parked:
                self._log.warning(
                    "job.settle_abandoned",
                    job_id=settlement.job_id,
                    queue=queue,
                    reason=f"its queue is damaged ({self._state.damaged.get(queue, '?')}); once the key "
                    "is repaired, the job runs again after its lease, unless this result was written "
                    "(if the damaged key is the active set, see 'A key of the wrong type' in "
                    "docs/operations.md)",
                )
            hold.parked = []

    def close(self) -> None:
        """Cancel the timers (the runner has stopped)."""
        for hold in self._holds.values():
            if hold.timer is not None:
                hold.timer.cancel()

    def _retry(self, queue: str, hold: Hold) -> None:
        """A held queue's delay is over: its parked results and its claims are tried again."""
        if self._holds.get(queue) is not hold:
            return  # repaired meanwhile
        # Over now, whatever the clock says: a timer may fire a fraction of a millisecond early
        # (uvloop rounds to whole ms), and a pass that still saw the hold would park the
        # results again with no timer left to bring them back.
        hold.until = 0.0
        self._unpark(hold)
        self._work_arrived()

    def _unpark(self, hold: Hold) -> None:
        for lane, settlement in hold.parked:
            self._held(lane, 1)
            self._settler.submit(settlement, lane)
        hold.parked = []
