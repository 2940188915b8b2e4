"""The settler's batches: what one exchange call carries back to Redis."""

from __future__ import annotations

from botrix.health import WorkerState
from botrix.logs import get_logger
from botrix.metrics import Metrics
from botrix.model import Outcome, Settlement
from botrix.settler import CALL_BYTES, Settler


def _settler() -> Settler:
    state = WorkerState("w-test", ("a", "b"), 10)
    return Settler(state, get_logger(), Metrics(state, [], "test"), lanes=1)


def test_a_call_carries_at_most_call_bytes_and_the_rest_waits_in_order() -> None:
    """A call that fails is sent again whole, so it must stay small enough for the socket timeout;
    an attempt larger than the bound alone still goes, by itself."""
    settler = _settler()
    sizes = [CALL_BYTES // 3, CALL_BYTES // 3, CALL_BYTES // 3, CALL_BYTES // 3, CALL_BYTES + 1, 10, 10]
    for n, size in enumerate(sizes):
        settler.submit(Settlement(f"j{n}", "ab"[n % 2], n, Outcome.COMPLETED, b"x" * size), lane=0)
    calls = []
    while settler.pending(0):
        batches = settler.take(0)
        calls.append(sorted(s.job_id for batch in batches.values() for s in batch))
    assert calls == [["j0", "j1", "j2"], ["j3"], ["j4"], ["j5", "j6"]]


def test_put_back_returns_a_failed_call_ahead_of_what_waited() -> None:
    settler = _settler()
    for n in range(4):
        settler.submit(Settlement(f"j{n}", "a", n, Outcome.COMPLETED, b"x" * (CALL_BYTES // 2)), lane=0)
    first = settler.take(0)
    settler.put_back(0, first)
    assert [s.job_id for s in settler.take(0)["a"]] == ["j0", "j1"]
    assert [s.job_id for s in settler.take(0)["a"]] == ["j2", "j3"]
