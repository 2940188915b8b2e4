"""The waits of one Client, all on one pub/sub connection.

A wait used to subscribe on a connection of its own, taken from the client's pool: about as
many waits at once as the pool holds (100) left every other call of that client without a
connection. Here one feed (a connection and the task that reads it) serves every wait of the
client: it subscribes to each queue waited on, once, and wakes a job's waiters when its
``completed``, ``dead`` or ``cancelled`` event comes. Subscriptions are never taken back one by one (that
would need ``UNSUBSCRIBE``, which botrix's ACL line does not grant): the feed closes, with all
of them, once no wait has been in progress for ``LINGER_S``, and the next wait opens a new one.

The connection is shared, so no single wait may break it: each SUBSCRIBE is sent by a task of
the feed's own, which a wait's timeout does not cancel (redis-py drops a connection whose send
was cut short). While waits are in progress the reader PINGs a quiet connection, so one that
died without a word fails within seconds instead of leaving every wait to its timeout. If the
connection fails, every wait on it fails with ``StoreUnavailable``, as a wait on its own
connection did, and the next wait opens a new feed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from botrix.store import EventStream, Store, StoreUnavailable

#: How long a feed with no wait in progress stays open for the next one.
LINGER_S = 2.0
#: How long a feed with waits in progress may hear nothing before it PINGs Redis.
QUIET_S = 2.0
#: The events after which a job's record no longer changes by itself.
_ENDS = ("completed", "dead", "cancelled")


@dataclass(eq=False)
class _Feed:
    stream: EventStream
    reader: asyncio.Task[None] | None = None
    #: The last SUBSCRIBE sent or being sent: sends go one after the other, in order.
    sending: asyncio.Task[None] | None = None
    #: Each queue subscribed to, and Redis's confirmation of it.
    subscribed: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    #: Who waits for which job: (queue, job id) -> the futures set when it ends.
    waiting: dict[tuple[str, str], set[asyncio.Future[None]]] = field(default_factory=dict)
    idle_since: float = 0.0
    #: Its tasks not yet done: the reader and every send.
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass(eq=False)
class Watch:
    """One wait's registration: ``ended`` is done when the job's end was published."""

    feed: _Feed
    key: tuple[str, str]
    ended: asyncio.Future[None]

    def close(self) -> None:
        """Stop watching (always, once the wait is over, however it ended)."""
        waiters = self.feed.waiting.get(self.key)
        if waiters is not None:
            waiters.discard(self.ended)
            if not waiters:
                del self.feed.waiting[self.key]
        if not self.feed.waiting:
            self.feed.idle_since = asyncio.get_running_loop().time()
        if not self.ended.done():
            self.ended.cancel()


class Waits:
    """Every wait of one Client, on one feed at a time."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._feed: _Feed | None = None
        self._closed = False
        #: The tasks of every feed, including those given up and still closing their connection.
        self._tasks: set[asyncio.Task[None]] = set()

    async def watch(self, queue: str, job_id: str) -> Watch:
        """Watch for the end of ``job_id`` in ``queue``.

        Returns once Redis has confirmed the subscription, so that the caller may read the
        job's state next and miss nothing. Raises StoreUnavailable when Redis cannot be reached.
        """
        if self._closed:
            raise StoreUnavailable("the client was closed")
        loop = asyncio.get_running_loop()
        feed = self._feed
        if feed is None:
            feed = self._feed = _Feed(self._store.event_stream())
        watch = Watch(feed, (queue, job_id), loop.create_future())
        feed.waiting.setdefault(watch.key, set()).add(watch.ended)
        confirmed = feed.subscribed.get(queue)
        if confirmed is None:
            confirmed = feed.subscribed[queue] = loop.create_future()
            feed.sending = self._start(
                feed, self._subscribe(feed, queue, feed.sending), "botrix-waits-subscribe"
            )
        try:
            await asyncio.shield(confirmed)
        except BaseException:
            watch.close()
            raise
        return watch

    async def aclose(self) -> None:
        """Close the feed; waits in progress, and any started later, fail with StoreUnavailable."""
        self._closed = True
        feed, self._feed = self._feed, None
        if feed is not None:
            self._fail(feed, StoreUnavailable("the client was closed"))
            for task in feed.tasks:
                task.cancel()
        # A feed that failed or lingered out earlier may still be closing its connection in its
        # own task: the client's caller may close the event loop next, and a connection left
        # half closed then is a leaked socket. Those tasks are finishing; they are not cancelled
        # (a cancel would cut the close short).
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if feed is not None:
            await feed.stream.aclose()

    def _start(self, feed: _Feed, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        for tasks in (feed.tasks, self._tasks):
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return task

    async def _subscribe(self, feed: _Feed, queue: str, before: asyncio.Task[None] | None) -> None:
        # The feed's own task: only a failure of the connection, never one wait's cancel,
        # stops it. Sends go in order, the first of them opening the connection.
        if before is not None:
            await asyncio.wait([before])
        if self._feed is not feed:
            return  # that send failed the feed (its waits, this one's too, have been told)
        try:
            await feed.stream.subscribe(queue)
        except BaseException as exc:
            self._fail(feed, exc)
            if feed.reader is None:
                await feed.stream.aclose()  # nothing reads it yet to close it on the way out
            if not isinstance(exc, Exception):
                raise
            return
        if feed.reader is None and feed is self._feed:
            feed.reader = self._start(feed, self._read(feed), "botrix-waits")

    async def _read(self, feed: _Feed) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not feed.waiting and loop.time() - feed.idle_since >= LINGER_S:
                    # No wait in progress (one registering would already be in `waiting`):
                    # this feed is done, and the next wait opens a new one.
                    if self._feed is feed:
                        self._feed = None
                    return
                if feed.waiting:
                    await feed.stream.keep_alive(QUIET_S)
                item = await feed.stream.next()
                if item is None:
                    continue
                queue, event = item
                if event is None:
                    confirmed = feed.subscribed.get(queue)
                    if confirmed is not None and not confirmed.done():
                        confirmed.set_result(None)
                elif event.get("event") in _ENDS:
                    for ended in feed.waiting.get((queue, str(event.get("job_id"))), ()):
                        if not ended.done():
                            ended.set_result(None)
        except BaseException as exc:
            current = self._feed is feed
            self._fail(feed, exc)
            # A bug of ours is worth asyncio's "exception never retrieved" log; the failure of
            # a feed already given up (closed with its client) is not.
            if current and not isinstance(exc, StoreUnavailable | asyncio.CancelledError):
                raise
        finally:
            await feed.stream.aclose()

    def _fail(self, feed: _Feed, exc: BaseException) -> None:
        """The feed is broken: every wait on it fails, and the next wait opens a new one."""
        if self._feed is feed:
            self._feed = None
        reason = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(f"event feed failed: {exc!r}")
        futures = [*feed.subscribed.values(), *(f for waiters in feed.waiting.values() for f in waiters)]
        for future in futures:
            if not future.done():
                future.set_exception(reason)
                future.exception()  # retrieved: a wait that already left must not log it
        if feed.reader is not None and feed.reader is not asyncio.current_task():
            feed.reader.cancel()
