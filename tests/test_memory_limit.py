"""/health's ``checks.memory.limit_bytes`` read off a real cgroup with a real limit.

The test makes two nested cgroups under its own (cgroup v1's memory controller or cgroup v2,
whichever the host has), sets a limit on each, moves a worker process into the inner one and
asks its /health. It needs root and a writable cgroup file system; elsewhere it is skipped
with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from botrix.health import memory_usage
from tests.conftest import WorkerProcess
from tests.redisproc import RedisServer

Spawn = Callable[..., WorkerProcess]
OUTER_LIMIT = 768 * 1024 * 1024  # the lower one: the OOM killer applies the lowest up the tree
INNER_LIMIT = 1024 * 1024 * 1024


def _own_memory_cgroup() -> tuple[Path, str]:
    """The directory of this process's memory cgroup, and the name of its limit file."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory" + path), "memory.limit_in_bytes"
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            return Path("/sys/fs/cgroup" + path), "memory.max"
    pytest.skip("no cgroup memory controller on this host")


@pytest.fixture
def nested_cgroups() -> Iterator[tuple[Path, str]]:
    """outer/inner under this process's memory cgroup, with OUTER_LIMIT and INNER_LIMIT."""
    own, limit_file = _own_memory_cgroup()
    outer = own / f"botrix-test-{uuid.uuid4().hex[:8]}"
    inner = outer / "inner"
    try:
        outer.mkdir()
        if limit_file == "memory.max":  # v2: a child has memory.max only if its parent delegates it
            (own / "cgroup.subtree_control").write_text("+memory")
            (outer / "cgroup.subtree_control").write_text("+memory")
        inner.mkdir()
        (outer / limit_file).write_text(str(OUTER_LIMIT))
        (inner / limit_file).write_text(str(INNER_LIMIT))
    except OSError as exc:
        for path in (inner, outer):
            if path.exists():
                path.rmdir()
        pytest.skip(f"cannot make a cgroup with a memory limit here: {exc}")
    yield inner, limit_file
    inner.rmdir()
    outer.rmdir()


async def test_health_reports_the_lowest_memory_limit_above_the_worker(
    nested_cgroups: tuple[Path, str], redis_server: RedisServer, queue: str, spawn: Spawn
) -> None:
    # nested_cgroups first: set up before spawn, so torn down after it has killed the worker.
    inner, limit_file = nested_cgroups
    worker = spawn(redis_server.url, queue, "--http-port", "0")
    await worker.wait_for("http.listening")
    port = next(e["port"] for e in worker.events() if e.get("event") == "http.listening")
    (inner / "cgroup.procs").write_text(str(worker.pid))
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/health") as r:
        memory = (await r.json())["checks"]["memory"]
    # What the kernel kept of the limit written (v1 rounds it down to whole pages), unless a
    # lower one sits above this test's own cgroup (a small container).
    kept = int((inner.parent / limit_file).read_text())
    assert kept <= OUTER_LIMIT
    above = memory_usage()["limit_bytes"]  # this test's own, the same tree above
    assert memory["limit_bytes"] == min(kept, above or kept)
