"""One read of a device's peers for every path selection waiting on a handshake.

While :class:`~overlayd.nat.agent.NatAgent` confirms a path it watches for the
peer's handshake, every 5-50 ms for up to ``punch_timeout``. Neither kernel
WireGuard nor the userspace UAPI reads one peer: each read dumps the whole
device. A node whose thousand peers re-select their paths at once (a restart,
a changed underlay) made a thousand such dumps per poll, each searched from
the start for one key. :class:`PeerPoll` makes one read serve every waiter:
a caller joins the read under way when that read began after the caller
asked, and otherwise waits for the next one, which starts as soon as the
current one ends. Its answer is a dict by public key, shared by all the
callers of that read and read-only to them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from collections.abc import Callable

from overlayd.model import PeerStatus

__all__ = ["PeerPoll"]

Statuses = dict[str, PeerStatus]


class PeerPoll:
    """Coalesced reads of one device's peers (see the module).

    :param read: Reads the device's peers (the driver's ``peer_status``, off the loop).
    :param gap: The least time between the starts of two reads (seconds): however
        many paths wait, the device is read at most every ``gap`` (the shortest
        interval at which one waiter polls).
    """

    def __init__(self, read: Callable[[], Awaitable[list[PeerStatus]]], gap: float = 0.005) -> None:
        self._read = read
        self._gap = gap
        #: When the last read began (loop time).
        self._last = float("-inf")
        #: How many reads have begun (called ``read``).
        self._begun = 0
        #: The read under way or about to begin: its number once begun, and its answer.
        self._pending: asyncio.Future[tuple[int, Statuses]] | None = None

    @property
    def reads(self) -> int:
        """How many reads of the device this poll has begun."""
        return self._begun

    async def fresh(self) -> Statuses:
        """The device's peers by public key, as a read that began after this call saw them.

        A handshake made before the call cannot be missing from a read begun
        after it, and a caller that has just re-created a peer never confirms
        that peer from an older session's handshake. A read created but not
        yet begun is joined. A failed read raises to every caller that
        waited on it; the next call starts a new one.
        """
        wanted = self._begun + 1
        while True:
            read = self._pending
            if read is None:
                read = self._pending = asyncio.ensure_future(self._once())
                # Retrieved here too: a read whose waiters were all cancelled logs nothing.
                read.add_done_callback(_retrieve)
            # Shielded: a waiter that is cancelled does not cancel the others' read.
            number, statuses = await asyncio.shield(read)
            if number >= wanted:
                return statuses

    async def _once(self) -> tuple[int, Statuses]:
        loop = asyncio.get_running_loop()
        wait = self._last + self._gap - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)  # callers arriving meanwhile join this read
        self._last = loop.time()
        self._begun += 1
        number = self._begun
        try:
            return number, {status.public_key: status for status in await self._read()}
        finally:
            self._pending = None


def _retrieve(read: asyncio.Future[tuple[int, Statuses]]) -> None:
    if not read.cancelled():
        read.exception()
