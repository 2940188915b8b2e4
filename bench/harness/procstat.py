"""CPU time and peak RSS of process trees, read from /proc (psutil only to list children)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import psutil

#: Clock ticks per second of utime/stime in /proc/<pid>/stat.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    try:
        proc = psutil.Process(pid)
        return [pid] + [child.pid for child in proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), seconds; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields after the command: state is index 0, so utime (14th field) is index 11.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_total(pids: Iterable[int]) -> float:
    """Summed CPU seconds of ``pids``."""
    return sum(cpu_seconds(pid) for pid in pids)


def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark of resident memory (VmHWM) of one process, bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
