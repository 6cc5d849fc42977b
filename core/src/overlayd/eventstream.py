"""The event streams of the IPC client (see :meth:`overlayd.client.AsyncClient.subscribe`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Final

from overlayd.errors import OverlaydError
from overlayd.protocol import EVENT_KINDS
from overlayd.protocol import AnyEvent

if TYPE_CHECKING:
    from overlayd.client import Client
    from overlayd.client.base import BaseAsyncClient

__all__ = ["DISCONNECTED", "EVENT_BUFFER", "EventStream", "SyncEventStream", "event_kinds"]

log = logging.getLogger(__name__)

#: Events buffered per stream before the oldest are dropped.
EVENT_BUFFER: Final = 1024
#: Queued to every stream when the client's connection broke.
DISCONNECTED: Final = object()
#: Queued to a stream when it is closed, to end a waiting iteration.
ENDED: Final = object()


def event_kinds(events: Iterable[str] | None) -> frozenset[str]:
    kinds = frozenset(EVENT_KINDS if events is None else events)
    unknown = sorted(kinds - set(EVENT_KINDS))
    if unknown:
        raise ValueError(
            f"unknown event kind(s) {', '.join(unknown)}; known: {', '.join(EVENT_KINDS)}"
        )
    return kinds


class EventStream:
    """Events the daemon pushes to this client, of the kinds subscribed (async iterator).

    Made by :meth:`AsyncClient.subscribe`; the subscription is in place when it
    is returned. Iteration ends when the stream or the client is closed. After a
    lost connection the stream reconnects and subscribes again (events sent in
    between are missed) or raises :class:`ConnectError`. Events this stream's
    reader was too slow to take are dropped oldest first and counted in
    :attr:`dropped`.
    """

    def __init__(self, client: BaseAsyncClient, kinds: frozenset[str]) -> None:
        self._client = client
        self.kinds = kinds
        self.dropped = 0
        self._queue: asyncio.Queue[object] = asyncio.Queue(EVENT_BUFFER)
        self._closed = False

    def _push(self, item: object) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("event buffer full (%d); dropping the oldest events", EVENT_BUFFER)
        self._queue.put_nowait(item)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> AnyEvent:
        while True:
            if self._closed:
                raise StopAsyncIteration
            item = await self._queue.get()
            if item is ENDED:
                raise StopAsyncIteration
            if item is DISCONNECTED:
                if self._client.closed:
                    raise StopAsyncIteration
                await self._client._subscribe_connection()
                continue
            return item  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Stop receiving; the connection unsubscribes when no stream is left."""
        if self._closed:
            return
        self._closed = True
        self._push(ENDED)
        self._client._streams.discard(self)
        if self._client.connected:
            with contextlib.suppress(OverlaydError):
                await self._client._subscribe_connection()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncEventStream:
    """Blocking face of an :class:`EventStream` (from :meth:`Client.subscribe`)."""

    def __init__(self, client: Client, stream: EventStream) -> None:
        self._client = client
        self._stream = stream

    @property
    def dropped(self) -> int:
        return self._stream.dropped

    def __iter__(self) -> SyncEventStream:
        return self

    def __next__(self) -> AnyEvent:
        async def next_event() -> AnyEvent:
            return await anext(self._stream)

        try:
            return self._client._run(next_event())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        if not self._client._loop.is_closed():
            self._client._run(self._stream.aclose())

    def __enter__(self) -> SyncEventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
