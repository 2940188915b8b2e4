"""A minimal pipelining Redis connection for the bare loop: asyncio protocol + hiredis reader.

Commands are written at once and matched to replies in order, so several calls in flight on one
connection are pipelined for free. No reconnects, no pools: the bare loop is a ceiling, and a
lost connection simply ends it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import Any, cast
from urllib.parse import urlparse

import hiredis


class RespConnection(asyncio.Protocol):
    """One Redis connection; ``call`` returns a future for the reply."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:  # noqa: D102
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"redis connection lost: {exc}"))

    def call(self, *args: str | bytes | int | float) -> asyncio.Future[Any]:
        """Send one command; the future resolves to its reply."""
        if self._transport is None or self._transport.is_closing():
            msg = "redis connection is closed"
            raise ConnectionError(msg)
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.append(waiter)
        self._transport.write(hiredis.pack_command(cast(Any, args)))
        return waiter

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()


class RedisPyConnection:
    """The same ``call`` over redis-py's asyncio client (hiredis parser), for comparison.

    Each call awaits its own pooled connection, so concurrent calls do not pipeline on one
    socket: this is what a worker built on redis-py pays.
    """

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url)

    def call(self, *args: str | bytes | int | float) -> Awaitable[Any]:
        """Send one command; await the result for its reply."""
        return self._redis.execute_command(*args)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Connections close with the process (the bare loop exits right after)."""


async def connect(url: str) -> RespConnection:
    """Open a connection to ``redis://host:port/db``."""
    parsed = urlparse(url)
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        RespConnection, parsed.hostname or "127.0.0.1", parsed.port or 6379
    )
    db = (parsed.path or "/0").lstrip("/") or "0"
    if db != "0":
        await conn.call("SELECT", db)
    return conn
