"""The systemd notify protocol (``sd_notify(3)``), with the standard library only.

A service started with ``Type=notify`` tells systemd how it is doing by sending small datagrams
to the ``AF_UNIX`` socket named in ``$NOTIFY_SOCKET``: ``READY=1`` once it serves, ``STATUS=...``
for ``systemctl status``, ``STOPPING=1`` when it begins to drain, ``WATCHDOG=1`` as a keep-alive
when the unit sets ``WatchdogSec=``. Outside systemd (a container, a terminal, a test) the
variable is unset and every call here is a no-op that returns ``False``.

Sending never raises and never blocks the event loop: the socket is non-blocking, and a failed
send (no listener, full queue, bad path) returns ``False``. The watchdog keeps pinging only while
the event loop runs, so a loop blocked by a handler stops the pings and systemd restarts the
unit after ``WatchdogSec``; an optional ``healthy`` callable can withhold pings for other reasons
(the worker's own heartbeat loop has died). Nothing here depends on Redis: a Redis outage must
never make systemd kill a worker (see ``docs/operations.md``, probes).

Layer L1: imports nothing from botrix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping

__all__ = ["SystemdNotifier", "notify_address", "watchdog_interval"]


def notify_address(value: str | None) -> str | None:
    """Turn a ``$NOTIFY_SOCKET`` value into an address for ``socket.sendto``, or ``None``.

    An absolute path is used as is; a leading ``@`` names a Linux abstract socket and becomes a
    NUL byte. Anything else (unset, empty, relative, ``vsock:``) is not supported: ``None``.
    """
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or ``None`` when not asked.

    Reads ``WATCHDOG_USEC`` and, when present, ``WATCHDOG_PID``, as ``sd_watchdog_enabled(3)``
    does: a ``WATCHDOG_PID`` naming another process (a child that inherited the environment)
    means the watchdog is not ours. Invalid or non-positive values mean no watchdog.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            watchdog_pid = int(raw_pid)
        except ValueError:
            return None
        if watchdog_pid != (os.getpid() if pid is None else pid):
            return None
    return usec / 2 / 1_000_000


def _one_line(text: str) -> str:
    """Fold ``text`` onto one line: the protocol splits fields on newlines."""
    return " ".join(text.split())


class SystemdNotifier:
    """Sends ``sd_notify`` messages to the socket systemd gave this process.

    Build it with :meth:`from_environ` in the composition root. ``enabled`` is ``False`` when
    there is no usable ``$NOTIFY_SOCKET``; every method is then a no-op returning ``False``.
    Each public send method returns ``True`` when the datagram was handed to the kernel.
    """

    def __init__(self, address: str | None, watchdog_seconds: float | None = None) -> None:
        """Use ``address`` (as returned by :func:`notify_address`) and a watchdog interval."""
        self._address = address
        self._watchdog_seconds = watchdog_seconds if address is not None else None
        self.last_error: OSError | None = None
        """The error of the most recent failed send, for logging by the caller."""

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, unset: bool = False
    ) -> SystemdNotifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from the environment.

        With ``unset=True`` (and the real ``os.environ``) the three variables are removed
        afterwards, so that subprocesses started by job handlers do not inherit them.
        """
        env = os.environ if environ is None else environ
        notifier = cls(notify_address(env.get("NOTIFY_SOCKET")), watchdog_interval(env))
        if unset and environ is None:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify (running under systemd with ``Type=notify``)."""
        return self._address is not None

    @property
    def watchdog_seconds(self) -> float | None:
        """Seconds between :meth:`watchdog` pings, or ``None`` when the unit has no watchdog."""
        return self._watchdog_seconds

    def notify(self, *fields: str) -> bool:
        """Send one datagram made of ``KEY=VALUE`` fields (joined by newlines)."""
        if self._address is None or not fields:
            return False
        message = "\n".join(fields).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            self.last_error = exc
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd the service is up (``READY=1``), with an optional status line."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", "STATUS=" + _one_line(status))

    def status(self, text: str) -> bool:
        """Set the free-form status line shown by ``systemctl status`` (``STATUS=...``)."""
        return self.notify("STATUS=" + _one_line(text))

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd the service has begun to shut down (``STOPPING=1``)."""
        if status is None:
            return self.notify("STOPPING=1")
        return self.notify("STOPPING=1", "STATUS=" + _one_line(status))

    def reloading(self) -> bool:
        """Tell systemd the service is reloading its configuration (``RELOADING=1``)."""
        return self.notify("RELOADING=1")

    def watchdog(self) -> bool:
        """Send one keep-alive ping (``WATCHDOG=1``)."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before a start or stop timeout (``EXTEND_TIMEOUT_USEC``)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    async def run_watchdog(self, stop: asyncio.Event, healthy: Callable[[], bool] | None = None) -> None:
        """Ping the watchdog every :attr:`watchdog_seconds` until ``stop`` is set.

        Returns at once when the unit has no watchdog. A ping is skipped while ``healthy()``
        returns ``False``; because the pings run on the event loop, a blocked loop sends none.
        """
        interval = self._watchdog_seconds
        if interval is None:
            return
        while not stop.is_set():
            if healthy is None or healthy():
                self.watchdog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
