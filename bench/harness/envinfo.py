"""The machine and the versions a result was measured with."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.adapters import load
from harness.runner import Venvs

_VERSIONS = """
import importlib.metadata as m, json, sys
out = {"python": sys.version.split()[0]}
for name in sys.argv[1:]:
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""
#: Libraries of the Python stack reported for each virtualenv.
STACK = ("redis", "hiredis", "uvloop", "orjson", "coredis", "kombu")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def versions(python: Path, packages: list[str]) -> dict[str, Any]:
    """Installed versions of ``packages`` (and Python) in the virtualenv of ``python``."""
    if not python.exists():
        return {}
    done = subprocess.run([str(python), "-c", _VERSIONS, *packages],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return json.loads(done.stdout) if done.returncode == 0 else {}


def describe(venvs: Venvs, systems: tuple[str, ...], redis_version: str) -> dict[str, Any]:
    """Date, machine, Redis, and per virtualenv the versions of the systems and the stack."""
    project = [a.package for a in map(load, systems) if a.venv == "project" and a.package]
    peers = [a.package for a in map(load, systems) if a.venv == "peers" and a.package]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": round(_memory_gib(), 1),
            "kernel": platform.release(),
            "os": platform.platform(terse=True),
        },
        "redis": redis_version,
        "project_venv": versions(venvs.project / "bin" / "python", [*project, *STACK]),
        "peers_venv": versions(venvs.peers / "bin" / "python", [*peers, *STACK]) if peers else {},
    }


def version_of(info: dict[str, Any], system: str) -> str:
    """The version string printed beside ``system`` in the tables."""
    adapter = load(system)
    venv = info["project_venv"] if adapter.venv == "project" else info["peers_venv"]
    if adapter.package is None:
        return f"Python {venv.get('python', '?')}"
    return str(venv.get(adapter.package) or "?")
