"""The systemd notify protocol over a real AF_UNIX datagram socket, as systemd listens."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from botrix.notify import SystemdNotifier, notify_address, watchdog_interval


class Listener:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self, timeout: float = 2.0) -> list[str]:
        """The fields of the next datagram."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        return data.decode().split("\n")

    def pending(self) -> bool:
        """Whether a datagram is waiting."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        return True


@pytest.fixture
def path_listener() -> Iterator[Listener]:
    # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path may be longer.
    directory = tempfile.mkdtemp(prefix="botrix-notify-", dir="/tmp")
    path = os.path.join(directory, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield Listener(sock, path)
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"botrix-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Listener(sock, "@" + name)
    finally:
        sock.close()


def test_ready_status_stopping_watchdog_over_a_path_socket(path_listener: Listener) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path_listener.env_value})
    assert notifier.enabled

    assert notifier.ready()
    assert path_listener.recv() == ["READY=1"]
    assert notifier.ready("serving default, concurrency 4")
    assert path_listener.recv() == ["READY=1", "STATUS=serving default, concurrency 4"]
    assert notifier.status("3 jobs in flight")
    assert path_listener.recv() == ["STATUS=3 jobs in flight"]
    assert notifier.stopping("draining 3 jobs")
    assert path_listener.recv() == ["STOPPING=1", "STATUS=draining 3 jobs"]
    assert notifier.stopping()
    assert path_listener.recv() == ["STOPPING=1"]
    assert notifier.watchdog()
    assert path_listener.recv() == ["WATCHDOG=1"]
    assert notifier.extend_timeout(30)
    assert path_listener.recv() == ["EXTEND_TIMEOUT_USEC=30000000"]
    assert notifier.reloading()
    assert path_listener.recv() == ["RELOADING=1"]


def test_abstract_socket_named_with_at(abstract_listener: Listener) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": abstract_listener.env_value})
    assert notifier.enabled
    assert notifier.ready("up")
    assert abstract_listener.recv() == ["READY=1", "STATUS=up"]


def test_status_is_kept_on_one_line(path_listener: Listener) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path_listener.env_value})
    assert notifier.status("line one\nREADY=1\n  line three")
    assert path_listener.recv() == ["STATUS=line one READY=1 line three"]


def test_reads_the_real_environment(path_listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SystemdNotifier.from_environ()
    assert notifier.enabled
    assert notifier.watchdog_seconds == 5.0
    assert notifier.ready()
    assert path_listener.recv() == ["READY=1"]
    assert os.environ["NOTIFY_SOCKET"] == path_listener.env_value


def test_unset_removes_the_variables_for_children(
    path_listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    notifier = SystemdNotifier.from_environ(unset=True)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ
    assert notifier.watchdog_seconds == 1.0
    assert notifier.watchdog()
    assert path_listener.recv() == ["WATCHDOG=1"]


def test_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = SystemdNotifier.from_environ()
    assert not notifier.enabled
    assert notifier.watchdog_seconds is None
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.stopping()
    assert not notifier.watchdog()


def test_send_failure_never_raises() -> None:
    directory = Path(tempfile.mkdtemp(prefix="botrix-notify-", dir="/tmp"))
    try:
        # Nobody listens on this path.
        notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(directory / "gone.sock")})
        assert notifier.enabled
        assert not notifier.ready()
        assert isinstance(notifier.last_error, OSError)
        # A path that is not a socket at all.
        (directory / "file").write_text("x")
        notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(directory / "file")})
        assert not notifier.watchdog()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    # An abstract name nobody bound.
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": f"@nobody-{uuid.uuid4().hex}"})
    assert not notifier.stopping()


def test_send_to_a_full_queue_does_not_block(path_listener: Listener) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path_listener.env_value})
    # Nobody reads: the receive queue fills and later sends fail fast instead of blocking.
    results = [notifier.status("x" * 1024) for _ in range(2000)]
    assert results[0] is True
    assert results[-1] is False
    assert isinstance(notifier.last_error, OSError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("relative/path", None),
        ("@", None),
        ("vsock:2:1234", None),
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@botrix", "\0botrix"),
    ],
)
def test_notify_address(value: str | None, expected: str | None) -> None:
    assert notify_address(value) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "junk"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_no_watchdog_interval_without_a_socket() -> None:
    notifier = SystemdNotifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert notifier.watchdog_seconds is None


async def test_run_watchdog_pings_until_stopped(path_listener: Listener) -> None:
    notifier = SystemdNotifier.from_environ(
        {"NOTIFY_SOCKET": path_listener.env_value, "WATCHDOG_USEC": "100000"}
    )
    assert notifier.watchdog_seconds == 0.05
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop))
    await asyncio.sleep(0.22)
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    pings = 0
    while path_listener.pending():
        assert path_listener.recv() == ["WATCHDOG=1"]
        pings += 1
    assert 3 <= pings <= 6


async def test_run_watchdog_withholds_pings_while_unhealthy(path_listener: Listener) -> None:
    notifier = SystemdNotifier.from_environ(
        {"NOTIFY_SOCKET": path_listener.env_value, "WATCHDOG_USEC": "100000"}
    )
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run_watchdog(stop, healthy=lambda: False))
    await asyncio.sleep(0.15)
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    assert not path_listener.pending()


async def test_run_watchdog_returns_at_once_without_watchdog(path_listener: Listener) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path_listener.env_value})
    await asyncio.wait_for(notifier.run_watchdog(asyncio.Event()), timeout=1)
    assert not path_listener.pending()
