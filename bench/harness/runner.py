"""One measured run: fresh Redis, producer, worker process(es), monitor, figures.

Every run follows the same steps whatever the system:

1. start a throwaway redis-server;
2. pre-queue with the system's own client (drain, I/O) or start the worker first (latency);
3. spawn the worker(s) in their own process group, with the job modules on PYTHONPATH;
4. wait until the probe files count every job, sampling CPU meanwhile;
5. read peak RSS (VmHWM) of every worker process, stop the workers, stop Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import probe

from harness import paths, procstat
from harness.adapters import load
from harness.adapters.base import Adapter, WorkerContext
from harness.monitor import Monitor
from harness.redis_server import RedisServer


@dataclass(frozen=True)
class Venvs:
    """The two virtualenvs: the project's (botrix, bare loop) and the peers'."""

    project: Path = paths.PROJECT_VENV
    peers: Path = paths.PEERS_VENV

    def bin_for(self, adapter: Adapter) -> Path:
        """The bin/ directory that runs ``adapter``."""
        return (self.project if adapter.venv == "project" else self.peers) / "bin"


@dataclass(frozen=True)
class RunSpec:
    """What to measure in one run."""

    system: str
    scenario: str
    #: drain: pre-queue ``n`` jobs then start; latency: start, warm up, then pace ``n`` jobs;
    #: memory: only enqueue ``n`` jobs and read INFO memory.
    mode: str
    n: int
    concurrency: int = 10
    kind: str = "noop"
    processes: int = 1
    rate: float = 100.0
    warmup: int = 5
    timeout: float = 180.0
    labels: dict[str, Any] = field(default_factory=dict)


def _env(url: str, concurrency: int, probe_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{paths.JOBS}{os.pathsep}{paths.BENCH}",
        BENCH_REDIS_URL=url,
        BENCH_CONCURRENCY=str(concurrency),
        BENCH_PROBE_DIR=str(probe_dir),
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("PYTHONSTARTUP", None)
    return env


def produce(adapter: Adapter, venvs: Venvs, env: dict[str, str], url: str, *args: str) -> dict[str, Any]:
    """Run ``produce.py`` in the system's virtualenv; returns its JSON summary."""
    cmd = [str(venvs.bin_for(adapter) / "python"), str(paths.BENCH / "produce.py")]
    done = subprocess.run(
        [*cmd, adapter.name, url, *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        msg = f"producer for {adapter.name} failed:\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def start_workers(
    adapter: Adapter, ctx: WorkerContext, env: dict[str, str], count: int, log: Path
) -> list[subprocess.Popen[bytes]]:
    """Spawn ``count`` worker processes, each the leader of its own process group."""
    procs = []
    with log.open("ab") as out:
        for _ in range(count):
            proc = subprocess.Popen(
                adapter.command(ctx), env=env, cwd=paths.JOBS, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            procs.append(proc)
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> float:
    """SIGTERM each worker's process group, SIGKILL what is left after ``grace``; seconds taken."""
    began = time.monotonic()
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(max(0.1, grace - (time.monotonic() - began)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for proc in procs:  # children a supervisor left behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return time.monotonic() - began


def _alive(procs: list[subprocess.Popen[bytes]]) -> Callable[[], bool]:
    """A check that every worker process is still running."""
    return lambda: all(proc.poll() is None for proc in procs)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run(spec: RunSpec, venvs: Venvs, log_dir: Path) -> dict[str, Any]:
    """Measure one run; returns its figures (``error`` set when it failed)."""
    adapter = load(spec.system)
    concurrency = adapter.effective_concurrency(spec.concurrency)
    result: dict[str, Any] = {
        "system": spec.system, "scenario": spec.scenario, "n": spec.n,
        "concurrency": concurrency, "processes": spec.processes, **spec.labels,
    }  # fmt: skip
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{spec.scenario}-{spec.system}-c{concurrency}-p{spec.processes}.log"
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp, RedisServer() as server:
        probe_dir = Path(tmp)
        env = _env(server.url, concurrency, probe_dir)
        ctx = WorkerContext(server.url, concurrency, venvs.bin_for(adapter), venvs.peers / "bin", paths.BENCH)
        try:
            if spec.mode == "memory":
                result.update(_memory(spec, adapter, venvs, env, server))
            elif spec.mode == "drain":
                result.update(_drain(spec, adapter, venvs, env, server, ctx, probe_dir, log))
            else:
                result.update(_latency(spec, adapter, venvs, env, server, ctx, probe_dir, log))
        except Exception as exc:  # a failed run is reported, the benchmark goes on
            text = f"{type(exc).__name__}: {exc}".strip()
            result["error"] = text if len(text) <= 600 else text[:150] + " ... " + text[-450:]
            print(f"    ! {spec.system} {spec.scenario}: {result['error']}", file=sys.stderr)
    return result


def _memory(
    spec: RunSpec, adapter: Adapter, venvs: Venvs, env: dict[str, str], server: RedisServer
) -> dict[str, Any]:
    before = server.used_memory()
    summary = produce(adapter, venvs, env, server.url, "bulk", "--kind", spec.kind,
                      "--n", str(spec.n))  # fmt: skip
    after = server.used_memory()
    return {"bytes_per_job": (after - before) / spec.n, "enqueue_s": summary["seconds"]}


def _drain(
    spec: RunSpec, adapter: Adapter, venvs: Venvs, env: dict[str, str], server: RedisServer,
    ctx: WorkerContext, probe_dir: Path, log: Path,
) -> dict[str, Any]:  # fmt: skip
    before = server.used_memory()
    summary = produce(adapter, venvs, env, server.url, "bulk", "--kind", spec.kind,
                      "--n", str(spec.n))  # fmt: skip
    queued_bytes = (server.used_memory() - before) / spec.n
    spawned = time.time()
    procs = start_workers(adapter, ctx, env, spec.processes, log)
    monitor = Monitor(probe_dir, [p.pid for p in procs], server.pid).start()
    try:
        if not monitor.wait(spec.n, spec.timeout, _alive(procs)):
            msg = f"timeout after {spec.timeout:.0f}s with {monitor.count}/{spec.n} done"
            raise TimeoutError(msg)
        time.sleep(0.05)  # let the last samples land after the last job
        rss = sum(procstat.peak_rss_bytes(pid) for pid in monitor.pids())
    finally:
        monitor.stop()
        shutdown_s = stop_workers(procs)
    counts = probe.read_dir(probe_dir)
    backlog = _backlog(adapter, server)
    first = min(c.first_start for c in counts if c.first_start)
    last = max(c.last_done for c in counts)
    window = last - first
    done = sum(c.count for c in counts)
    return {
        "jobs_per_s": done / window,
        "window_s": window,
        "startup_s": first - spawned,
        "cpu_ms_per_job": monitor.cpu_between(first, last) * 1000 / done,
        "redis_cpu_ms_per_job": monitor.cpu_between(first, last, "redis") * 1000 / done,
        "rss_mb": rss / 1e6,
        "queued_bytes_per_job": queued_bytes,
        "enqueue_s": summary["seconds"],
        "shutdown_s": shutdown_s,
        "done": done,
        "worker_processes": len(monitor.pids()),
        **({"backlog_after_stop": backlog} if backlog is not None else {}),
    }


def _backlog(adapter: Adapter, server: RedisServer) -> int | None:
    """Jobs still pending or leased in the system's own keys after its workers stopped."""
    if not adapter.backlog_keys:
        return None
    client = server.client()
    try:
        return sum(
            int(client.llen(key) if kind == "list" else client.zcard(key))
            for kind, key in adapter.backlog_keys
        )
    finally:
        client.close()


def _latency(
    spec: RunSpec, adapter: Adapter, venvs: Venvs, env: dict[str, str], server: RedisServer,
    ctx: WorkerContext, probe_dir: Path, log: Path,
) -> dict[str, Any]:  # fmt: skip
    procs = start_workers(adapter, ctx, env, spec.processes, log)
    monitor = Monitor(probe_dir, [p.pid for p in procs], server.pid, interval=0.02).start()
    try:
        # Warm-up: a few no-op jobs prove the worker is up and connected; then it idles.
        produce(adapter, venvs, env, server.url, "bulk", "--kind", "noop",
                "--n", str(spec.warmup))  # fmt: skip
        if not monitor.wait(spec.warmup, 60, _alive(procs)):
            msg = "worker did not finish the warm-up jobs within 60s"
            raise TimeoutError(msg)
        time.sleep(0.5)
        produce(adapter, venvs, env, server.url, "paced", "--kind", "lat", "--n", str(spec.n),
                "--rate", str(spec.rate))  # fmt: skip
        if not monitor.wait(spec.warmup + spec.n, spec.timeout, _alive(procs)):
            msg = f"timeout with {monitor.count}/{spec.warmup + spec.n} done"
            raise TimeoutError(msg)
        rss = sum(procstat.peak_rss_bytes(pid) for pid in monitor.pids())
    finally:
        monitor.stop()
        stop_workers(procs)
    samples = [s * 1000 for c in probe.read_dir(probe_dir, True) for s in c.latencies]
    if len(samples) != spec.n:
        msg = f"{len(samples)} latency samples for {spec.n} jobs"
        raise RuntimeError(msg)
    return {
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples),
        "mean_ms": statistics.fmean(samples),
        "rss_mb": rss / 1e6,
    }
