"""The completion probe every benchmark handler calls: a few counters in a memory-mapped file.

Every system's handler calls the same two functions, so completion detection costs every system
the same (about a microsecond a job, measured in bench/README.md) and sends nothing to Redis:

- ``started(t_enqueued)`` at the first line of a handler: remembers the first start and, when the
  job carries its enqueue time, one enqueue-to-start sample;
- ``finished()`` at the last line: counts the job and remembers when it finished.

Each worker process writes its own file ``<BENCH_PROBE_DIR>/<pid>.probe`` (a forked child gets a
new file), so several worker processes never share a counter. The harness reads the files with
``read_dir`` while the run goes on: the sum of the counts says when the last job is done.
Standard library only: this module is imported inside every system's worker.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: count (u64), last_done (f64), first_start (f64), number of latency samples (u64).
HEADER = struct.Struct("<QddQ")
SAMPLE = struct.Struct("<d")
_COUNT_LAST = struct.Struct("<Qd")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
#: Enqueue-to-start samples kept per process; later ones are dropped (the harness sends fewer).
MAX_SAMPLES = 8192
SIZE = HEADER.size + SAMPLE.size * MAX_SAMPLES
SUFFIX = ".probe"


class _Probe:
    """One process's counters; created on first use, re-created in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mm: mmap.mmap | None = None
        self._count = 0
        self._first = 0.0
        self._samples = 0

    def _open(self) -> mmap.mmap:
        directory = os.environ.get("BENCH_PROBE_DIR")
        if not directory:
            msg = "BENCH_PROBE_DIR is not set"
            raise RuntimeError(msg)
        path = Path(directory) / f"{os.getpid()}{SUFFIX}"
        with path.open("w+b") as fh:
            fh.truncate(SIZE)
            self._mm = mmap.mmap(fh.fileno(), SIZE)
        return self._mm

    def reset(self) -> None:
        """Forget the parent's counters (called in a forked child)."""
        self._lock = threading.Lock()
        self._mm = None
        self._count = 0
        self._first = 0.0
        self._samples = 0

    def started(self, t_enqueued: float | None) -> None:
        now = time.time()
        with self._lock:
            mm = self._mm or self._open()
            if not self._first:
                self._first = now
                _F64.pack_into(mm, 16, now)
            if t_enqueued is not None and self._samples < MAX_SAMPLES:
                SAMPLE.pack_into(mm, HEADER.size + SAMPLE.size * self._samples, now - t_enqueued)
                self._samples += 1
                _U64.pack_into(mm, 24, self._samples)

    def finished(self) -> None:
        now = time.time()
        with self._lock:
            mm = self._mm or self._open()
            self._count += 1
            _COUNT_LAST.pack_into(mm, 0, self._count, now)

    def ran(self) -> None:
        now = time.time()
        with self._lock:
            mm = self._mm or self._open()
            if not self._first:
                self._first = now
                _F64.pack_into(mm, 16, now)
            self._count += 1
            _COUNT_LAST.pack_into(mm, 0, self._count, now)


_PROBE = _Probe()
os.register_at_fork(after_in_child=_PROBE.reset)


def started(t_enqueued: float | None = None) -> None:
    """Record a handler start; ``t_enqueued`` is the producer's ``time.time()`` at enqueue."""
    _PROBE.started(t_enqueued)


def finished() -> None:
    """Record a handler end (success)."""
    _PROBE.finished()


def ran() -> None:
    """Record a no-op handler: started and finished at once."""
    _PROBE.ran()


@dataclass(frozen=True)
class ProcessCounts:
    """What one worker process's probe file says."""

    pid: int
    count: int
    last_done: float
    first_start: float
    latencies: tuple[float, ...]


def read_file(path: Path, with_samples: bool = False) -> ProcessCounts:
    """Read one probe file (a torn read only ever lags by one job; the harness re-reads)."""
    data = path.read_bytes()
    count, last, first, nsamples = HEADER.unpack_from(data, 0)
    samples: tuple[float, ...] = ()
    if with_samples and nsamples:
        samples = struct.unpack_from(f"<{nsamples}d", data, HEADER.size)
    return ProcessCounts(int(path.stem), count, last, first, samples)


def read_dir(directory: Path, with_samples: bool = False) -> list[ProcessCounts]:
    """Read every probe file in ``directory``."""
    out = []
    for path in directory.glob(f"*{SUFFIX}"):
        try:
            out.append(read_file(path, with_samples))
        except (OSError, struct.error):
            continue  # created but not yet sized: nothing counted there yet
    return out
