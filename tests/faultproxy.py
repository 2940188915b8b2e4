"""A fault-injecting TCP proxy for the tests: sits between a worker and Redis on loopback.

It runs on the test's own event loop, so a test must not block that loop while traffic is
meant to flow (nothing in the tests does: they await everything). Faults, all reversible:

- ``set_delay(s)``: every chunk waits ``s`` seconds before it is forwarded (both directions).
- ``stall()``: no byte moves in either direction, the sockets stay open: a hung network.
  Bytes that were sent before or during the stall are delivered after ``resume()``, as TCP
  would deliver them if the network came back (so a command whose sender gave up may still
  run on the server).
- ``hold_next(marker)``: the next chunk a client sends that contains ``marker`` is kept back,
  with every later byte of its connection, until ``deliver_held()`` sends it to Redis on a
  connection of its own: a request lost in the network that arrives after its sender gave up
  and closed the socket (a retransmitted segment, or one queued in a middlebox).
- ``cut()``: every live connection is reset (``SO_LINGER 0``, so the peers see RST).
- ``refuse()``: the listening socket is closed, so new connections get ECONNREFUSED; live
  ones are left alone (combine with ``cut()`` for an outage).
- ``resume()``: back to pass-through: listening, flowing, no delay.

The port is chosen below the kernel's ephemeral range, so while the proxy is refusing no
outgoing connection can be handed that port, and re-listening on it cannot fail that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from dataclasses import dataclass, field

import hiredis

from tests.redisproc import free_port

CHUNK = 65536


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close at once with an RST instead of a FIN, dropping anything unsent."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One proxied connection: the accepted client side and the connection to upstream."""

    client: asyncio.StreamWriter
    task: asyncio.Task[None]
    upstream: asyncio.StreamWriter | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to the upstream address, with faults switched on demand."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        # Every accepted connection and every relay task, from the moment each exists: one
        # accepted as a test ends, whose relay is cancelled before it runs, is still reset by
        # aclose() (a socket left to the garbage collector fails a later test with a
        # ResourceWarning under -W error).
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._delay = 0.0
        self._stall_marker: bytes | None = None
        self._stalled = asyncio.Event()
        self._hold_marker: bytes | None = None
        self._held = bytearray()
        self._holding = asyncio.Event()
        #: Connections accepted so far (a reconnecting client makes this grow).
        self.accepted = 0
        #: Connections reset by ``cut()`` so far.
        self.resets = 0
        #: Bytes forwarded so far, both directions.
        self.forwarded = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Listen (again) on the proxy's port."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def aclose(self) -> None:
        """Stop listening and reset every live connection; returns when all are gone."""
        self._stop_listening()
        self._flowing.set()
        await self.cut()
        for relay in self._relays:
            relay.cancel()
        if self._relays:
            await asyncio.wait(self._relays)
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()
        await asyncio.sleep(0)  # the transports close their sockets in the loop's next turn

    def url(self, db: int = 0) -> str:
        """A ``redis://`` URL that goes through the proxy."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def live(self) -> int:
        """How many connections are open through the proxy now."""
        return len(self._links)

    def upstream_addresses(self) -> set[str]:
        """``host:port`` of each live connection's upstream side, as ``CLIENT LIST`` names it."""
        out = set()
        for link in self._links:
            if link.upstream is not None:
                host, port = link.upstream.get_extra_info("sockname")[:2]
                out.add(f"{host}:{port}")
        return out

    # -- faults ----------------------------------------------------------------------------

    def set_delay(self, seconds: float) -> None:
        """Hold every chunk for ``seconds`` before forwarding it (0: no delay)."""
        self._delay = seconds

    def stall(self) -> None:
        """Stop moving bytes in both directions; connections stay open."""
        self._flowing.clear()

    def stall_after(self, marker: bytes) -> asyncio.Event:
        """Forward the next client chunk that contains ``marker``, then stall (see ``stall``).

        The returned event is set once stalled: the command is on its way to Redis (which may
        not have run it yet), and its reply will be held.
        """
        self._stall_marker = marker
        self._stalled.clear()
        return self._stalled

    def hold_next(self, marker: bytes) -> asyncio.Event:
        """Keep back the next client chunk that contains ``marker`` (see the module's doc).

        The returned event is set once a chunk is held: its sender waits, Redis has not seen it.
        """
        self._hold_marker = marker
        self._held = bytearray()  # a new buffer: a pump still holding keeps filling the old one
        self._holding.clear()
        return self._holding

    async def deliver_held(self) -> object:
        """Send what ``hold_next`` kept back to Redis, on a new connection, and return the reply
        (parsed by hiredis: a list, bytes, an int, or a ``hiredis.ReplyError``).

        A new connection, because the one it came on may be long closed: Redis cannot tell."""
        assert self._holding.is_set(), "nothing is held"
        self._holding.clear()  # delivered once
        reader, writer = await asyncio.open_connection(*self.upstream)
        try:
            writer.write(bytes(self._held))
            parser = hiredis.Reader()
            reply = parser.gets()
            async with asyncio.timeout(30):  # a guard against a hang, not a timing check
                while reply is False:
                    data = await reader.read(CHUNK)
                    if not data:
                        raise ConnectionError("Redis closed the connection before it replied")
                    parser.feed(data)
                    reply = parser.gets()
            return reply
        finally:
            writer.close()
            await writer.wait_closed()

    async def cut(self) -> int:
        """Reset every live connection; returns how many were reset."""
        links = list(self._links)
        for link in links:
            link.task.cancel()
            for pump in link.pumps:
                pump.cancel()
            _reset(link.client)
            _reset(link.upstream)
        if links:
            await asyncio.wait([link.task for link in links])
        self.resets += len(links)
        return len(links)

    def refuse(self) -> None:
        """Refuse new connections (ECONNREFUSED) until ``resume()``; live ones are untouched."""
        self._stop_listening()

    async def resume(self) -> None:
        """Back to pass-through: accept connections, move bytes, no delay."""
        self._delay = 0.0
        self._flowing.set()
        await self.start()

    # -- forwarding ------------------------------------------------------------------------

    def _stop_listening(self) -> None:
        if self._server is not None:
            # close() closes the listening sockets at once; the accepted ones are ours to end.
            self._server.close()
            self._server = None

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain function, called as the connection is accepted: the socket is known at once,
        # and the connection lives in a task of our own that ``cut()`` may cancel (asyncio's
        # server task must not end cancelled: Python 3.11 then logs an error).
        self._writers.add(writer)
        relay = asyncio.create_task(self._relay(reader, writer))
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        link = _Link(writer, task)
        self._links.add(link)
        self.accepted += 1
        try:
            # Shielded: a cancel landing as the connect completes would lose its socket.
            connect = asyncio.ensure_future(asyncio.open_connection(*self.upstream))
            connect.add_done_callback(functools.partial(self._connected, link))
            try:
                up_reader, up_writer = await asyncio.shield(connect)
            except OSError:
                return
            link.pumps = [
                asyncio.create_task(self._pump(reader, up_writer, upstream=True)),
                asyncio.create_task(self._pump(up_reader, writer, upstream=False)),
            ]
            # Ends when both directions reached EOF, or at once when either side broke.
            await asyncio.wait(link.pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            self._links.discard(link)
            for pump in link.pumps:
                pump.cancel()
            if link.pumps:
                await asyncio.wait(link.pumps)
            for pump in link.pumps:
                if not pump.cancelled():
                    pump.exception()  # retrieved: a peer's reset is the expected way to end
            _reset(writer)
            _reset(link.upstream)
            self._writers.discard(writer)

    def _connected(
        self, link: _Link, connect: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    ) -> None:
        if connect.cancelled() or connect.exception() is not None:
            return
        link.upstream = connect.result()[1]
        if link not in self._links:
            _reset(link.upstream)  # its relay ended during the connect

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        """Copy one direction, chunk by chunk, obeying stall, delay and hold; half-close at EOF."""
        held: bytearray | None = None  # this connection's held bytes, once it holds
        while True:
            await self._flowing.wait()
            data = await reader.read(CHUNK)
            if not data:
                break
            if upstream and held is None and self._hold_marker is not None and self._hold_marker in data:
                self._hold_marker = None
                held = self._held
                self._holding.set()
            if held is not None:
                held += data
                continue
            if self._delay > 0:
                await asyncio.sleep(self._delay)
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
            self.forwarded += len(data)
            if self._stall_marker is not None and self._stall_marker in data:
                self._stall_marker = None
                self.stall()
                self._stalled.set()
        await self._flowing.wait()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
