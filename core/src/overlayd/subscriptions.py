"""Event subscriptions of IPC connections: opt-in, bounded, never fatal.

A connection receives event frames only after it subscribed (``hello`` with
``events``): ZLayer's client keeps one connection and reads only inside a
request, so an event pushed to it would sit in its socket until its next
request read it in place of the answer (ZLayer's daemon sends none).

Each subscription has its own bounded queue and writer task. The server's
event pump only *offers* events to subscriptions and never waits for a client.
A subscriber that reads too slowly loses events: when its queue is full the
oldest queued event is dropped and counted. The first drop of an episode is
logged once (a warning), and the end of the episode (its queue drained) once
more with the number lost; the connection itself is never closed for it. The
count is reported in ``hello``'s ``events_dropped``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable

from overlayd import protocol as p

__all__ = ["Subscription"]

log = logging.getLogger(__name__)

#: Events kept per subscriber while it does not read; the oldest go first.
QUEUE_SIZE = 1024


class Subscription:
    """The event kinds one connection asked for, and its queue of frames to send.

    :param peer: Who the connection belongs to, for log messages.
    :param send: Writes one frame to the connection (may block while it does not read).
    """

    def __init__(
        self,
        peer: str,
        send: Callable[[p.EventFrame], Awaitable[None]],
        kinds: Iterable[str] = (),
        *,
        maxsize: int = QUEUE_SIZE,
    ) -> None:
        self.peer = peer
        self.kinds: frozenset[str] = frozenset(kinds)
        self.dropped = 0
        self._send = send
        self._queue: collections.deque[p.EventFrame] = collections.deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._episode = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._writer(), name=f"overlayd-events {self.peer}")

    def offer(self, frame: p.EventFrame) -> None:
        """Queue ``frame`` if its kind is subscribed; never blocks."""
        if frame.event.event not in self.kinds:
            return
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
            self._episode += 1
            if self._episode == 1:
                log.warning(
                    "%s does not read its events; dropping the oldest ones until it "
                    "catches up (its connection stays open)",
                    self.peer,
                )
        self._queue.append(frame)
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _writer(self) -> None:
        while True:
            await self._ready.wait()
            while self._queue:
                frame = self._queue.popleft()
                try:
                    await self._send(frame)
                except (ConnectionError, OSError) as exc:
                    log.debug("could not push an event to %s: %s", self.peer, exc)
                    self._queue.clear()
                    return
            self._ready.clear()
            if self._episode:
                log.info("%s caught up with its events; %d were dropped", self.peer, self._episode)
                self._episode = 0

    async def close(self) -> None:
        """Stop the writer; queued events are discarded."""
        task, self._task = self._task, None
        self._queue.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
