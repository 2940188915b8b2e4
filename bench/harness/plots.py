"""PNG plots of the summary (matplotlib, Agg backend): bars with min-max whiskers."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

from harness.report import Report
from harness.scenarios import IO_SLEEP_S
from harness.stats import Figure

BOTRIX, LIMIT, PEER = "#d62728", "#7f7f7f", "#1f77b4"


def _color(system: str) -> str:
    return BOTRIX if system == "botrix" else LIMIT if system.startswith("limit") else PEER


def _bars(ax: plt.Axes, report: Report, scenario: str, metric: str, title: str,
          log: bool = False, scale: float = 1.0) -> None:  # fmt: skip
    names, mids, lows, highs = [], [], [], []
    for system in report.plan.systems:
        entry = report.get(scenario, system)
        figure: Figure | None = entry.get(metric) if entry else None
        if figure is None:
            continue
        names.append("bare loop" if system == "limit" else system)
        mids.append(figure.median * scale)
        lows.append((figure.median - figure.low) * scale)
        highs.append((figure.high - figure.median) * scale)
    colors = [_color("limit" if n == "bare loop" else n) for n in names]
    ax.bar(names, mids, yerr=[lows, highs], color=colors, capsize=3)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    if log:
        ax.set_yscale("log")
    for i, value in enumerate(mids):
        label = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
        ax.annotate(label, (i, value), ha="center", va="bottom", fontsize=7)


def write(report: Report, out: Path) -> list[Path]:
    """Write the plots of every scenario that ran; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    scenarios = report.plan.scenarios
    if "drain" in scenarios:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        _bars(axes[0], report, "drain", "jobs_per_s", "Drain: jobs/s (higher is better)", log=True)
        _bars(axes[1], report, "drain", "cpu_ms_per_job", "Worker CPU ms per job", log=True)
        _bars(axes[2], report, "drain", "rss_mb", "Peak RSS, MB")
        written.append(_save(fig, out / "drain.png"))
    if "latency" in scenarios:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        _bars(axes[0], report, "latency", "p50_ms", "Enqueue-to-start p50, ms", log=True)
        _bars(axes[1], report, "latency", "p99_ms", "Enqueue-to-start p99, ms", log=True)
        written.append(_save(fig, out / "latency.png"))
    if "io" in scenarios:
        fig, ax = plt.subplots(figsize=(7, 4))
        names, pcts, colors = [], [], []
        for system in report.plan.systems:
            entry = report.get("io", system)
            figure = entry.get("jobs_per_s") if entry else None
            for (sc, sy, c, _), e in report.s.items():
                if sc == "io" and sy == system and figure is not None:
                    names.append(f"{'bare loop' if sy == 'limit' else sy}\nc={c}")
                    pcts.append(100 * e["jobs_per_s"].median / (c / IO_SLEEP_S))
                    colors.append(_color(sy))
        ax.bar(names, pcts, color=colors)
        ax.axhline(95, color="black", linestyle=":", linewidth=1)
        ax.set_ylim(0, 105)
        ax.set_title(f"I/O-bound: % of ideal (concurrency / {IO_SLEEP_S} s)", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
        written.append(_save(fig, out / "io.png"))
    if "scale" in scenarios and len(report.plan.scale_concurrency) > 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        for system in ("botrix", "limit", "limitpy"):
            xs, ys = [], []
            for c in report.plan.scale_concurrency:
                entry = report.get("scale", system, c)
                if entry and entry.get("jobs_per_s"):
                    xs.append(c)
                    ys.append(entry["jobs_per_s"].median)
            label = {"limit": "bare loop", "limitpy": "bare loop on redis-py"}.get(system, system)
            style = "--" if system == "limitpy" else "-"
            ax.plot(xs, ys, style, marker="o", color=_color(system), label=label)
        ax.set_xscale("log")
        ax.set_xticks(list(report.plan.scale_concurrency))
        ax.set_xticklabels([str(c) for c in report.plan.scale_concurrency])
        ax.set_xlabel("concurrency (one process)")
        ax.set_ylabel("no-op jobs/s")
        ax.set_title("Scale: botrix beside the bare loop", fontsize=10)
        ax.legend()
        written.append(_save(fig, out / "scale.png"))
    return written


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
