"""Markdown tables from the summarized runs: scenarios, botrix/peer ratios, issue 5's targets."""

from __future__ import annotations

from typing import Any

from harness.adapters import PEERS
from harness.envinfo import version_of
from harness.scenarios import IO_SLEEP_S, Plan
from harness.stats import Figure, Key

Summary = dict[Key, dict[str, Any]]
NA = "n/a"
LABELS = {"limit": "bare loop (limit.py)", "limitpy": "bare loop on redis-py"}


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fig(entry: dict[str, Any] | None, metric: str, scale: float = 1.0) -> str:
    """``median (min-max)`` of one metric, or why it is missing."""
    if entry is None:
        return NA
    figure: Figure | None = entry.get(metric)
    if figure is None:
        return "failed" if entry.get("errors") else NA
    mid, low, high = (v * scale for v in (figure.median, figure.low, figure.high))
    return f"{_num(mid)} ({_num(low)}-{_num(high)})"


def median(entry: dict[str, Any] | None, metric: str) -> float | None:
    """The median of one metric, None if missing."""
    figure = entry.get(metric) if entry else None
    return figure.median if figure is not None else None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """Builds the markdown of one benchmark from its summary, plan and environment."""

    def __init__(self, summary: Summary, plan: Plan, info: dict[str, Any]) -> None:
        self.s = summary
        self.plan = plan
        self.info = info
        self.c = plan.headline_concurrency

    def get(self, scenario: str, system: str, c: int | None = None, p: int = 1) -> Any:
        """The summary entry of one configuration (any concurrency when ``c`` is None)."""
        for (sc, sy, cc, pp), entry in self.s.items():
            if sc == scenario and sy == system and pp == p and (c is None or cc == c):
                return entry
        return None

    def _systems(self, scenario: str) -> list[str]:
        return [sy for sy in self.plan.systems if self.get(scenario, sy) is not None]

    def _label(self, system: str) -> str:
        return LABELS.get(system, system)

    def drain(self) -> str:
        """Drain: throughput, CPU, RSS, queued bytes."""
        rows = []
        for sy in self._systems("drain"):
            e = self.get("drain", sy)
            n = f"{e['n']:,}" + ("" if sy != "rq" else " (c=1)")
            rows.append([self._label(sy), version_of(self.info, sy), n, fig(e, "jobs_per_s"),
                         fig(e, "cpu_ms_per_job"), fig(e, "redis_cpu_ms_per_job"),
                         fig(e, "rss_mb"), fig(e, "queued_bytes_per_job")])  # fmt: skip
        return _table(["system", "version", "jobs", "jobs/s", "worker CPU ms/job",
                       "Redis CPU ms/job", "peak RSS MB", "Redis bytes/queued job"], rows)  # fmt: skip

    def backlog_note(self) -> str:
        """What the systems that expose it had left pending or leased after their drains."""
        worst: dict[str, float] = {}
        for (_, system, _, _), entry in self.s.items():
            figure = entry.get("backlog_after_stop")
            if figure is not None:
                worst[system] = max(worst.get(system, 0.0), figure.high)
        if not worst:
            return ""
        parts = ", ".join(f"{self._label(s)} {v:.0f}" for s, v in worst.items())
        return (
            "Jobs still pending or leased in the system's own keys after its workers stopped, "
            f"worst over every drain, scale and I/O run (0 = every job settled): {parts}."
        )

    def latency(self) -> str:
        """Latency: enqueue-to-start percentiles."""
        rows = [[self._label(sy), fig(e, "p50_ms"), fig(e, "p99_ms"), fig(e, "max_ms")]
                for sy in self._systems("latency") if (e := self.get("latency", sy))]  # fmt: skip
        return _table(["system", "p50 ms", "p99 ms", "max ms"], rows)

    def io(self) -> str:
        """I/O-bound: throughput as a fraction of concurrency / sleep."""
        rows = []
        for sy in self._systems("io"):
            for (sc, sys_, cc, _), e in sorted(self.s.items()):
                if sc in ("io", "io-high") and sys_ == sy:
                    ideal = cc / IO_SLEEP_S
                    rows.append([self._label(sy), str(cc), f"{e['n']:,}", fig(e, "jobs_per_s"),
                                 fig(e, "jobs_per_s", 100 / ideal), fig(e, "cpu_ms_per_job")])  # fmt: skip
        return _table(["system", "concurrency", "jobs", "jobs/s", "% of ideal",
                       "worker CPU ms/job"], rows)  # fmt: skip

    def scale(self) -> str:
        """Scale: botrix beside the bare loop by concurrency and processes."""
        rows = []
        configs = [(c, 1) for c in self.plan.scale_concurrency]
        if self.plan.scale_processes_concurrency is not None:
            configs.append((self.plan.scale_processes_concurrency, 2))
        for c, p in configs:
            b, lim, py = (self.get("scale", s, c, p) for s in ("botrix", "limit", "limitpy"))
            mb, ml, mp = (median(e, "jobs_per_s") for e in (b, lim, py))
            label = f"c={c}" + (f", {p} processes" if p > 1 else "")
            rows.append([label, fig(b, "jobs_per_s"), fig(lim, "jobs_per_s"),
                         f"{mb / ml:.2f}" if mb and ml else NA, fig(py, "jobs_per_s"),
                         f"{mb / mp:.2f}" if mb and mp else NA,
                         fig(b, "cpu_ms_per_job"), fig(lim, "cpu_ms_per_job"),
                         fig(b, "redis_cpu_ms_per_job"), fig(lim, "redis_cpu_ms_per_job")])  # fmt: skip
        return _table(["configuration", "botrix jobs/s", "bare loop jobs/s", "botrix / bare",
                       "bare loop on redis-py jobs/s", "botrix / redis-py bare",
                       "botrix CPU ms/job", "bare CPU ms/job",
                       "botrix Redis CPU ms/job", "bare Redis CPU ms/job"], rows)  # fmt: skip

    def memory(self) -> str:
        """Redis memory per queued job with ``memory_n`` queued."""
        rows = [[self._label(sy), fig(e, "bytes_per_job")]
                for sy in ("botrix", "limit") if (e := self.get("memory", sy))]  # fmt: skip
        return _table(["system", f"bytes per queued job ({self.plan.memory_n:,} queued)"], rows)

    def ratios(self) -> str:
        """Botrix / peer for each figure: the numbers to quote."""
        rows = []
        b_d, b_l = self.get("drain", "botrix"), self.get("latency", "botrix")
        for peer in (p for p in PEERS if p in self.plan.systems):
            d, lat = self.get("drain", peer), self.get("latency", peer)
            rows.append([peer, _ratio(b_d, d, "jobs_per_s"), _ratio(b_d, d, "cpu_ms_per_job"),
                         _ratio(b_l, lat, "p99_ms"), _ratio(b_d, d, "rss_mb")])  # fmt: skip
        return _table(["peer", "drain jobs/s", "worker CPU/job", "p99 latency", "peak RSS"], rows)

    def targets(self) -> list[tuple[str, str, bool | None]]:
        """Issue 5's targets: (target, measured, met) with met None when not measured."""
        out: list[tuple[str, str, bool | None]] = []
        peers = [p for p in PEERS if self.get("drain", p)]
        b = self.get("drain", "botrix")
        bt, bc = median(b, "jobs_per_s"), median(b, "cpu_ms_per_job")
        best_t = max((median(self.get("drain", p), "jobs_per_s") or 0 for p in peers), default=0)
        cpus = [m for p in peers if (m := median(self.get("drain", p), "cpu_ms_per_job"))]
        if bt and best_t:
            out.append(("drain ≥ 5x best peer", f"{bt / best_t:.1f}x", bt >= 5 * best_t))
        if bc and cpus:
            out.append(("CPU/job ≤ 1/5 best peer", f"{bc / min(cpus):.2f}x", bc * 5 <= min(cpus)))
        mb, ml, mp = (median(self.get("scale", s, 100), "jobs_per_s")
                      for s in ("botrix", "limit", "limitpy"))  # fmt: skip
        if mb and ml:
            # Redis runs one job's scripts in this much CPU: no worker, however cheap, gets more
            # than 1 / that through one Redis, which tells a slow worker from a heavy data model.
            # It is sampled in steps of about 0.5 us a job, so the cap is rounded to thousands.
            redis_ms = median(self.get("scale", "botrix", 100), "redis_cpu_ms_per_job")
            cap = ""
            if redis_ms:
                cap = f" (Redis alone caps botrix at ~{round(1000 / redis_ms, -3):,.0f} jobs/s)"
            out.append(("c=100 ≥ ½ bare loop", f"{mb / ml:.2f}{cap}", mb * 2 >= ml))
        if mb and mp:
            out.append(("c=100 ≥ ½ bare loop on redis-py", f"{mb / mp:.2f}", mb * 2 >= mp))
        bp = median(self.get("latency", "botrix"), "p99_ms")
        p99s = [m for p in PEERS if (m := median(self.get("latency", p), "p99_ms"))]
        if bp is not None and p99s:
            ok = bp <= min(p99s) and bp < 5
            out.append(("p99 ≤ best peer and < 5 ms", f"{bp:.2f} ms (best peer {min(p99s):.2f})",
                        ok))  # fmt: skip
        for scenario, c, goal in (("io", self.plan.io_concurrency, 95),
                                  ("io-high", self.plan.io_high_concurrency, 75)):  # fmt: skip
            t = median(self.get(scenario, "botrix", c), "jobs_per_s") if c else None
            if t and c:
                pct = 100 * t / (c / IO_SLEEP_S)
                out.append((f"I/O ≥ {goal}% of ideal at c={c}", f"{pct:.1f}%", pct >= goal))
        rss = median(b, "rss_mb")
        if rss:
            out.append(("peak RSS ≤ 40 MB (drain)", f"{rss:.1f} MB", rss <= 40))
        pc = self.plan.scale_processes_concurrency
        one, two = (median(self.get("scale", "botrix", pc, p), "jobs_per_s") for p in (1, 2))
        if one and two:
            # What the same second process gives the bare loops on this machine: the share of
            # the gap that is the machine's (two workers and Redis on two cores), not botrix's.
            gains = []
            for system, name in (("limit", "bare loop"), ("limitpy", "on redis-py")):
                b1, b2 = (median(self.get("scale", system, pc, p), "jobs_per_s") for p in (1, 2))
                if b1 and b2:
                    gains.append(f"{name} {100 * (b2 / b1 - 1):+.0f}%")
            beside = f" ({', '.join(gains)})" if gains else ""
            out.append(("2nd process adds ≥ 60%", f"{100 * (two / one - 1):+.0f}%{beside}",
                        two >= 1.6 * one))  # fmt: skip
        return out

    def targets_table(self) -> str:
        """The targets as a table."""
        mark = {True: "yes", False: "**no**", None: NA}
        rows = [[t, m, mark[ok]] for t, m, ok in self.targets()]
        return _table(["target (issue 5)", "botrix measured", "met"], rows)

    def environment(self) -> str:
        """Date, machine, Redis and versions as a short list."""
        m, i = self.info["machine"], self.info
        pv, qv = i.get("project_venv", {}), i.get("peers_venv", {})
        stack = ", ".join(f"{k} {v}" for k, v in pv.items() if v and k != "python")
        peers = ", ".join(f"{k} {v}" for k, v in qv.items() if v and k != "python")
        return "\n".join([
            f"- Date: {i['date']}",
            f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}",
            f"- Redis: {i['redis']} (Debian's redis-server, fresh per run, no persistence)",
            f"- Project venv: Python {pv.get('python', '?')}; {stack}",
            f"- Peers venv: Python {qv.get('python', '?')}; {peers}" if qv else "- Peers: not run",
        ])  # fmt: skip

    def markdown(self, title: str) -> str:
        """The whole report."""
        p = self.plan
        parts = [
            f"# {title}", "", self.environment(), "",
            f"Median of {p.runs} runs, (min-max) beside it. One worker process unless said; "
            f"concurrency {self.c} unless said (RQ's SimpleWorker always runs 1). "
            "Method and per-system settings: bench/README.md.", "",
        ]  # fmt: skip
        sections = [
            ("Targets", self.targets_table, True),
            ("Ratios botrix / peer (the quoted figures; > 1 is better for jobs/s, < 1 for the rest)",
             self.ratios, "drain" in p.scenarios and len(p.systems) > 1),
            (f"Drain: {p.drain_n:,} no-op jobs queued before the worker starts", self.drain,
             "drain" in p.scenarios),
            (f"Latency: idle worker, {p.latency_n} jobs at {p.latency_rate:.0f}/s, "
             "enqueue-to-start", self.latency, "latency" in p.scenarios),
            (f"I/O-bound: each job sleeps {IO_SLEEP_S} s; ideal = concurrency / {IO_SLEEP_S} s",
             self.io, "io" in p.scenarios),
            (f"Scale: botrix beside the bare loop, drain of {p.scale_n:,} no-op jobs "
             f"({p.scale_n // 2:,} at c=1)",
             self.scale, "scale" in p.scenarios),
            ("Redis memory per queued job (INFO used_memory delta / jobs)", self.memory,
             "memory" in p.scenarios),
        ]  # fmt: skip
        for heading, build, wanted in sections:
            if wanted:
                parts += [f"## {heading}", "", build(), ""]
        if note := self.backlog_note():
            parts += [note, ""]
        return "\n".join(parts)


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> str:
    x, y = median(a, metric), median(b, metric)
    return f"{x / y:.2f}x" if x and y else NA
