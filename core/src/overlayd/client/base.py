"""The connection of :class:`~overlayd.client.AsyncClient`: connect, call, events.

:class:`BaseAsyncClient` owns the one connection, matches responses to calls
by ``id``, reconnects lazily and feeds the event streams; the typed ops are in
:mod:`overlayd.client.ops`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator
from collections.abc import Iterable
from types import TracebackType
from typing import Final
from typing import Self
from typing import TypeVar

from overlayd import __version__
from overlayd.errors import OverlaydError
from overlayd.eventstream import DISCONNECTED
from overlayd.eventstream import EventStream
from overlayd.eventstream import event_kinds
from overlayd.protocol import PROTOCOL_VERSION
from overlayd.protocol import AnyEvent
from overlayd.protocol import AnyRequest
from overlayd.protocol import AnyResponse
from overlayd.protocol import ErrResponse
from overlayd.protocol import EventFrame
from overlayd.protocol import HelloRequest
from overlayd.protocol import HelloResponse
from overlayd.protocol import ProtocolError
from overlayd.protocol import RequestFrame
from overlayd.protocol import ResponseFrame
from overlayd.protocol import decode_frame
from overlayd.protocol import encode_body
from overlayd.rawclient import ClientClosed
from overlayd.rawclient import ConnectError
from overlayd.rawclient import ConnectionLost
from overlayd.rawclient import RemoteError
from overlayd.rawclient import RequestTimeout
from overlayd.rawclient import UnexpectedResponse
from overlayd.transport import DEFAULT_SOCKET
from overlayd.transport import FramingError
from overlayd.transport import open_connection
from overlayd.transport import read_frame
from overlayd.transport import write_frame

__all__ = ["BaseAsyncClient"]

# One logger for the whole client package, as when it was one module.
log = logging.getLogger("overlayd.client")

_R = TypeVar("_R", bound=AnyResponse)

#: Connect errors that mean "the daemon is not there yet": retried with backoff.
_RETRYABLE: Final = (FileNotFoundError, ConnectionError, BlockingIOError)


class _Unset:
    """Marker for "use the client's default timeout"."""


_UNSET: Final = _Unset()


class _Connection:
    """One live connection: its streams, reader task and calls awaiting answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[AnyResponse]] = {}
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        #: The event kinds this connection is subscribed to.
        self.subscribed: frozenset[str] = frozenset()

    def fail(self, exc: OverlaydError) -> None:
        """Mark closed, fail every pending call with ``exc`` and close the socket."""
        if self.closed:
            return
        self.closed = True
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)
        self.writer.close()


class BaseAsyncClient:
    """The connection, the generic :meth:`call` and the event streams of
    :class:`~overlayd.client.AsyncClient` (its parameters are documented there)."""

    def __init__(
        self,
        address: str = DEFAULT_SOCKET,
        *,
        timeout: float | None = 30.0,
        connect_attempts: int = 5,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
    ) -> None:
        if connect_attempts < 1:
            raise ValueError("connect_attempts must be at least 1")
        self.address = address
        self.timeout = timeout
        self.connect_attempts = connect_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._ids = itertools.count(1)
        self._conn: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._streams: set[EventStream] = set()
        self._closed = False

    # -- connection management ------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._conn is not None and not self._conn.closed

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    async def connect(self) -> None:
        """Open the connection now (calls do it lazily)."""
        await self._ensure_connected()

    async def close(self) -> None:
        """Close the connection; pending calls fail and event iterators end."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(ClientClosed("the overlayd client was closed"))
            if conn.task is not None:
                conn.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await conn.task
            with contextlib.suppress(OSError):
                await conn.writer.wait_closed()
        for stream in list(self._streams):
            stream._push(DISCONNECTED)

    async def _ensure_connected(self) -> _Connection:
        if self._closed:
            raise ClientClosed("the overlayd client was closed; create a new one")
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            reader, writer = await self._open()
            conn = _Connection(reader, writer)
            conn.task = asyncio.create_task(
                self._read_loop(conn), name=f"overlayd-client-reader {self.address}"
            )
            self._conn = conn
            return conn

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        delay = self.backoff
        last: OSError | None = None
        for attempt in range(1, self.connect_attempts + 1):
            try:
                return await open_connection(self.address)
            except _RETRYABLE as exc:
                last = exc
                if attempt == self.connect_attempts:
                    break
                log.debug(
                    "overlayd at %s not reachable (%s); retry %d in %.2fs",
                    self.address,
                    exc,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            except OSError as exc:
                raise ConnectError(
                    f"cannot connect to overlayd at {self.address}: {exc}; check the "
                    "socket path and that this user may open it (group zlayer)"
                ) from exc
        raise ConnectError(
            f"cannot connect to overlayd at {self.address} after "
            f"{self.connect_attempts} attempts: {last}; is the daemon running?"
        ) from last

    async def _read_loop(self, conn: _Connection) -> None:
        reason: OverlaydError = ConnectionLost(f"overlayd closed the connection at {self.address}")
        try:
            while True:
                body = await read_frame(conn.reader)
                if body is None:
                    break
                self._dispatch(conn, body)
        except FramingError as exc:
            reason = ConnectionLost(f"the connection to overlayd broke: {exc}")
        except OSError as exc:
            reason = ConnectionLost(f"the connection to overlayd broke: {exc}")
        finally:
            conn.fail(reason)
            if not self._closed:
                for stream in list(self._streams):
                    stream._push(DISCONNECTED)

    def _dispatch(self, conn: _Connection, body: bytes) -> None:
        try:
            frame = decode_frame(body)
        except ProtocolError as exc:
            future = conn.pending.pop(exc.request_id, None) if exc.request_id is not None else None
            if future is not None and not future.done():
                future.set_exception(exc)
            else:
                log.warning("ignoring an undecodable frame from overlayd: %s", exc)
            return
        if isinstance(frame, ResponseFrame):
            future = conn.pending.pop(frame.id, None)
            if future is None and frame.id == 0 and isinstance(frame.response, ErrResponse):
                # The daemon answers id 0 when it cannot tell which request it
                # refuses (e.g. permission denied at connect): every call fails.
                conn.fail(RemoteError(frame.response.message))
            elif future is None or future.done():
                log.debug("ignoring a response to unknown request %d", frame.id)
            else:
                future.set_result(frame.response)
        elif isinstance(frame, EventFrame):
            for stream in list(self._streams):
                if frame.event.event in stream.kinds:
                    stream._push(frame.event)
        else:
            log.warning("ignoring request frame %d sent by the daemon", frame.id)

    # -- generic call and events ----------------------------------------------

    async def call(
        self,
        request: AnyRequest,
        *,
        # A per-call timeout is part of this API; asyncio.timeout is used inside.
        timeout: float | _Unset | None = _UNSET,  # noqa: ASYNC109
    ) -> AnyResponse:
        """Send ``request`` and return the response.

        :raises RemoteError: the daemon answered ``err``.
        :raises RequestTimeout: no answer within ``timeout`` seconds.
        :raises ConnectionLost: the connection broke before the answer arrived.
        :raises ConnectError: the daemon could not be reached.
        """
        limit = self.timeout if isinstance(timeout, _Unset) else timeout
        conn = await self._ensure_connected()
        request_id = next(self._ids)
        body = encode_body(RequestFrame(id=request_id, request=request))
        future: asyncio.Future[AnyResponse] = asyncio.get_running_loop().create_future()
        conn.pending[request_id] = future
        try:
            async with asyncio.timeout(limit):
                try:
                    await write_frame(conn.writer, body)
                except OSError as exc:
                    conn.fail(ConnectionLost(f"sending to overlayd failed: {exc}"))
                response = await future
        except TimeoutError:
            raise RequestTimeout(
                f"overlayd did not answer {request.op} (request {request_id}) within "
                f"{limit} s; it may still complete"
            ) from None
        finally:
            conn.pending.pop(request_id, None)
        if isinstance(response, ErrResponse):
            raise RemoteError(response.message, op=request.op, request_id=request_id)
        return response

    async def subscribe(self, events: Iterable[str] | None = None) -> EventStream:
        """Subscribe to ``events`` (default: every kind) and return the stream of them.

        The daemon pushes nothing to a connection that did not subscribe. When
        this returns, the subscription is in place: every event emitted from
        then on reaches the stream.

        :raises ValueError: an unknown event kind.
        """
        stream = EventStream(self, event_kinds(events))
        self._streams.add(stream)
        try:
            await self._subscribe_connection()
        except BaseException:
            self._streams.discard(stream)
            raise
        return stream

    async def _subscribe_connection(self) -> None:
        """Subscribe the connection to the union of the open streams' kinds."""
        conn = await self._ensure_connected()
        wanted = frozenset().union(*(s.kinds for s in self._streams))
        if conn.subscribed == wanted:
            return
        request = HelloRequest(
            client=f"overlayd.client/{__version__}",
            protocol_version=PROTOCOL_VERSION,
            events=sorted(wanted),
        )
        await self._expect(request, HelloResponse)
        conn.subscribed = wanted

    async def events(self, events: Iterable[str] | None = None) -> AsyncGenerator[AnyEvent, None]:
        """Subscribe (see :meth:`subscribe`) and yield events until the client is closed."""
        stream = await self.subscribe(events)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def _expect(self, request: AnyRequest, kind: type[_R]) -> _R:
        response = await self.call(request)
        if not isinstance(response, kind):
            raise UnexpectedResponse(
                f"overlayd answered {request.op} with {response.result!r}, expected "
                f"{kind.model_fields['result'].default!r}; client and daemon disagree "
                "on the protocol (check `hello`)"
            )
        return response
