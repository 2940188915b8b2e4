"""Run the botrix benchmark of issue 5 and write tables and plots.

    bench/.peers/bin/python bench/run.py            # full: every system, every scenario
    bench/.peers/bin/python bench/run.py --quick    # about a minute: botrix and the bare loop

Runs with the peers' virtualenv (psutil, matplotlib, redis); botrix and the bare loop run from
the project's virtualenv (``--venv``). Full results go to bench/results/ and docs/performance.md;
quick results to bench/results/raw/quick/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "jobs")]

from harness import docs, envinfo, paths, plots, scenarios, stats  # noqa: E402
from harness.adapters import NAMES  # noqa: E402
from harness.redis_server import RedisServer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.runner import Venvs, run  # noqa: E402


def parse_args() -> argparse.Namespace:
    """Command line: mode, systems, scenarios, sizes, virtualenvs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, botrix only (~1 minute)")
    parser.add_argument("--systems", default=",".join(s for s in NAMES if not s.startswith("limit")),
                        help="comma-separated systems for the side-by-side scenarios")  # fmt: skip
    parser.add_argument("--scenarios", default=None,
                        help="comma-separated subset of drain,latency,io,scale,memory")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="repetitions (the median is quoted)")
    parser.add_argument("--drain-n", type=int, default=None)
    parser.add_argument("--io-n", type=int, default=None)
    parser.add_argument("--latency-n", type=int, default=None)
    parser.add_argument("--scale-n", type=int, default=None)
    parser.add_argument("--memory-n", type=int, default=None)
    parser.add_argument("--drain-n-for", action="append", default=[], metavar="SYSTEM=N",
                        help="a smaller drain for a slow system (noted in the table)")  # fmt: skip
    parser.add_argument("--venv", type=Path, default=paths.PROJECT_VENV,
                        help="the project's virtualenv (botrix-worker, bare loop)")  # fmt: skip
    parser.add_argument("--peers-venv", type=Path, default=paths.PEERS_VENV)
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/performance.md alone")
    parser.add_argument("--from-json", type=Path, default=None, metavar="RESULTS_JSON",
                        help="measure nothing: rebuild the outputs from a results.json")  # fmt: skip
    return parser.parse_args()


def make_plan(args: argparse.Namespace) -> scenarios.Plan:
    """The plan of this invocation: quick or full, then the command line's overrides."""
    if args.quick:
        plan = scenarios.Plan.quick(args.runs)
    else:
        systems = tuple(s for s in args.systems.split(",") if s)
        plan = scenarios.Plan.full(systems, args.runs)
    changes: dict[str, Any] = {}
    for name in ("drain_n", "io_n", "latency_n", "scale_n", "memory_n"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.scenarios:
        changes["scenarios"] = tuple(args.scenarios.split(","))
    if args.drain_n_for:
        changes["drain_n_override"] = {
            k: int(v) for k, v in (item.split("=", 1) for item in args.drain_n_for)
        }
    return replace(plan, **changes)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Unwind like Ctrl-C, so each run's ``finally`` stops its workers and its Redis."""
    raise SystemExit(128 + signum)


def load_plan(raw: dict[str, Any]) -> scenarios.Plan:
    """A plan back from its JSON form (lists become tuples again)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return scenarios.Plan(**fields)


def write_outputs(
    plan: scenarios.Plan, info: dict[str, Any], results: list[dict[str, Any]], out: Path,
    quick: bool, doc: bool, elapsed: float,
) -> str:  # fmt: skip
    """Summary table, plots, results.json and (full runs) docs/performance.md; returns the table."""
    report = Report(stats.summarize(results), plan, info)
    title = "botrix benchmark (quick)" if quick else "botrix benchmark"
    table = report.markdown(title)
    (out / "summary.md").write_text(table + "\n")
    plots.write(report, out)
    payload = {"quick": quick, "plan": asdict(plan), "environment": info, "runs": results,
               "elapsed_s": elapsed}  # fmt: skip
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if not quick and doc:
        docs.update(paths.DOC, table.replace(f"# {title}", "## Latest results", 1))
    return table


def main() -> None:
    """Run every spec of the plan, then summarize and write the outputs."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        plan = load_plan(saved["plan"])
        quick = args.quick or bool(saved.get("quick"))
        out = args.out or (paths.RAW / "quick" if quick else paths.RESULTS)
        out.mkdir(parents=True, exist_ok=True)
        write_outputs(plan, saved["environment"], saved["runs"], out, quick, not args.no_doc,
                      saved.get("elapsed_s", 0.0))  # fmt: skip
        print(f"rebuilt from {args.from_json} into {out}")
        return
    out = args.out or (paths.RAW / "quick" if args.quick else paths.RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args)
    venvs = Venvs(args.venv.resolve(), args.peers_venv.resolve())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = paths.RAW / f"{'quick' if args.quick else 'full'}-{stamp}"
    runs = scenarios.specs(plan)
    print(f"bench: {len(runs)} runs ({plan.runs} repetitions), systems: {', '.join(plan.systems)}")
    results: list[dict[str, Any]] = []
    began = time.monotonic()
    for i, spec in enumerate(runs, 1):
        t0 = time.monotonic()
        result = run(spec, venvs, raw / "logs")
        results.append(result)
        shown = {k: round(v, 3) for k, v in result.items()
                 if k in ("jobs_per_s", "cpu_ms_per_job", "rss_mb", "p99_ms", "bytes_per_job")}  # fmt: skip
        print(f"[{i}/{len(runs)}] {spec.scenario:8} {spec.system:9} c={result['concurrency']:<5}"
              f" p={spec.processes} n={spec.n:<6} {time.monotonic() - t0:5.1f}s "
              f"{result.get('error') or shown}", flush=True)  # fmt: skip
        (raw / "runs.json").write_text(json.dumps(results, indent=1))
    with RedisServer() as server:
        redis_version = server.version()
    info = envinfo.describe(venvs, tuple(dict.fromkeys([*plan.systems, "botrix", "limit"])),
                            redis_version)  # fmt: skip
    elapsed = round(time.monotonic() - began, 1)
    table = write_outputs(plan, info, results, out, args.quick, not args.no_doc, elapsed)
    print(f"\n{table}\nwritten to {out} in {time.monotonic() - began:.0f}s")


if __name__ == "__main__":
    main()
