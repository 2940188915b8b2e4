"""A throwaway redis-server on a free loopback port, for `make run` and `make soak`."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path, *, appendonly: bool) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server with its data in ``workdir``; return the process and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: run it through make (it installs it) or set REDIS_URL")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
    args += ["--appendonly", "yes" if appendonly else "no", "--maxmemory-policy", "noeviction"]
    # A session of its own: Ctrl-C in the terminal reaches the script alone, which stops the
    # worker first and Redis after it, so the worker's drain still has a Redis to write to.
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")
