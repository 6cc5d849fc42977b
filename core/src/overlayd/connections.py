"""The daemon's client connections: accept, identify, read with back-pressure, answer.

This is the layer between the socket and the request handlers of
:mod:`overlayd.server` (aiohttp keeps its connection flow control apart from
routing the same way). What it guarantees, whatever a client does:

* **A bounded number of connections.** The listener's readiness callback
  accepts (:class:`Acceptor`); a connection over
  :attr:`Limits.max_connections` is answered one ``err`` (id 0) and closed
  at once. When the process runs out of descriptors anyway (``EMFILE``),
  accepting pauses with a growing delay instead of spinning, and both
  conditions are logged at most once per :data:`LOG_INTERVAL` seconds with
  a count.
* **A bounded amount of work per connection.** At most
  :attr:`Limits.max_inflight` requests (and :attr:`Limits.max_inflight_bytes`
  of request bodies) of one connection are in flight; beyond that the
  connection is not read until answers have gone out, so a client that sends
  without reading fills its own socket buffer, not the daemon's memory.
  Answers go out one at a time, each after the previous one left the
  transport's buffer, so the answers queued for a client that does not read
  are bounded too. Other connections are not affected.
* **Large frames off the event loop.** A body of more than
  :attr:`Limits.offload_bytes` is decoded and validated in a worker thread
  (at most :attr:`Limits.offload_threads` at once), so other clients keep
  being served while a multi-megabyte ``apply_peers`` is checked. A
  connection's frames are still decoded in the order they arrived.
* **Nothing a client sends ends the loop with an exception.** A body that
  cannot be decoded is answered ``err`` and the connection stays usable; a
  framing error closes only that connection.

A poller's fast lane: while a connection is idle (its reader waits on an
empty buffer, nothing is in flight or being written, the transport is not
paused) the bytes that arrive are offered to :attr:`Connection.fast` first,
in the transport's own callback. It answers the frames it can answer at once
(``status`` while nothing changed) with the bytes to write, or ``None``, and
then that frame and everything after it take the ordinary path. The
guarantees above hold: an answered frame is written before the next is
looked at, and a client that stops reading pauses the transport, which
closes the lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from typing import Final
from typing import cast

from overlayd import protocol as p
from overlayd.errors import ConfigError
from overlayd.errors import clip
from overlayd.subscriptions import Subscription
from overlayd.transport import FramingError
from overlayd.transport import read_frame
from overlayd.transport import write_frame

__all__ = [
    "LOG_INTERVAL",
    "MAX_ERR_MESSAGE",
    "Acceptor",
    "Connection",
    "Limits",
    "PeerCredentials",
    "RateLimitedLog",
    "default_max_connections",
    "file_limit",
    "max_connections",
    "peer_credentials",
    "refuse_socket",
]

log = logging.getLogger(__name__)

#: Longest ``err`` message sent to a client; longer ones are cut.
MAX_ERR_MESSAGE: Final = 8192
#: Seconds between two log lines about the same refused or failed accept.
LOG_INTERVAL: Final = 10.0
#: Descriptors kept for everything that is not a client connection (store,
#: netlink sockets, worker threads, DNS listeners, helper processes).
_RESERVED_FDS_MIN: Final = 32
_RESERVED_FDS_MAX: Final = 256
#: The default cap never exceeds this, however many descriptors are allowed.
_DEFAULT_CAP: Final = 1024
_UCRED: Final = struct.Struct("3i")
#: ``SO_PEERGROUPS`` (Linux >= 4.13); Python's socket module does not name it.
_SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
_ACCEPT_BACKOFF: Final = (0.05, 1.0)


def file_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE`` of this process (``None`` when unlimited or unknown)."""
    if sys.platform == "win32":
        return None
    else:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return None if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(nofile: int | None) -> int:
    """The default connection cap for a soft descriptor limit of ``nofile``.

    A quarter of the limit (between 32 and 256 descriptors) stays for the
    daemon's own files; the cap is the rest, at most 1,024.
    """
    if nofile is None:
        return _DEFAULT_CAP
    reserve = min(_RESERVED_FDS_MAX, max(_RESERVED_FDS_MIN, nofile // 4))
    return max(1, min(_DEFAULT_CAP, nofile - reserve))


def max_connections(configured: int | None) -> int:
    """The connection cap: ``configured``, or the default for this process's file limit.

    :raises ConfigError: ``configured`` does not leave the daemon 32 descriptors.
    """
    nofile = file_limit()
    if configured is None:
        return default_max_connections(nofile)
    if nofile is not None and configured > nofile - _RESERVED_FDS_MIN:
        raise ConfigError(
            f"max_connections = {configured} needs more open files than this process may "
            f"have (RLIMIT_NOFILE {nofile}, of which overlayd keeps some for itself); raise "
            "the limit (systemd: LimitNOFILE=) or lower max_connections"
        )
    return configured


@dataclass(frozen=True)
class Limits:
    """What one daemon allows its clients."""

    #: Connections served at once; the next one is answered ``err`` and closed.
    max_connections: int = _DEFAULT_CAP
    #: Requests of one connection read and not yet answered.
    max_inflight: int = 64
    #: Request body bytes of one connection read and not yet answered (one
    #: request is always admitted, whatever its size).
    max_inflight_bytes: int = 16 * 1024 * 1024
    #: Bodies larger than this are decoded in a worker thread.
    offload_bytes: int = 64 * 1024
    #: Worker threads decoding large bodies at once (all connections together).
    offload_threads: int = 2


class RateLimitedLog:
    """Log a recurring condition at most once per ``interval``, with a count."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self._log = logger
        self._interval = interval
        #: key -> (monotonic time of the last line, occurrences since then)
        self._state: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object, **extra: Any) -> bool:
        """Log ``message % args`` unless ``key`` was logged less than ``interval`` ago.

        Returns whether a line was written; the line after a quiet period says
        how many occurrences were not logged.
        """
        now = time.monotonic()
        last, suppressed = self._state.get(key, (float("-inf"), 0))
        if now - last < self._interval:
            self._state[key] = (last, suppressed + 1)
            return False
        self._state[key] = (now, 0)
        if suppressed:
            message += " (%d more since the last report)"
            args = (*args, suppressed)
        self._log.warning(message, *args, extra=extra or None)
        return True


@dataclass(frozen=True)
class PeerCredentials:
    """Who is on the other end of a Unix socket, as the kernel recorded it at connect."""

    pid: int
    uid: int
    gid: int
    #: Supplementary groups of the connecting process (``None``: unknown).
    groups: frozenset[int] | None

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


def _groups_from_proc(pid: int) -> frozenset[int] | None:
    """The ``Groups:`` line of ``/proc/<pid>/status`` (a fallback for old kernels)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        return None
    return None


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """``SO_PEERCRED`` and the peer's supplementary groups (``SO_PEERGROUPS``).

    The groups are those of the process that connected, taken by the kernel
    at ``connect()``, not what ``/etc/group`` says about the user: a process
    started with ``setgroups`` (systemd's ``SupplementaryGroups=``, ``sg``,
    ``setpriv``) has groups ``/etc/group`` does not list. Kernels before 4.13
    lack ``SO_PEERGROUPS``; then ``/proc/<pid>/status`` is read.

    :raises OSError: the credentials cannot be read (always on Windows).
    """
    if sys.platform == "win32":
        raise OSError("peer credentials of a Unix socket are not available on Windows")
    else:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, gid = _UCRED.unpack(raw)
        groups: frozenset[int] | None = None
        size = 64 * 4
        for _ in range(4):
            try:
                data = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
            except OSError as exc:
                if exc.errno == errno.ERANGE and size < 65536 * 4:
                    size *= 8  # more groups than the buffer holds
                    continue
                break
            count = len(data) // 4
            groups = frozenset(struct.unpack(f"{count}I", data[: 4 * count]))
            break
        if groups is None:
            groups = _groups_from_proc(pid)
        return PeerCredentials(pid, uid, gid, groups)


def refuse_socket(sock: socket.socket, message: str) -> None:
    """Answer ``err`` (id 0) on a fresh connection without waiting, then close it.

    A new Unix socket's send buffer holds the short frame; if it does not,
    the client simply sees the connection close.
    """
    try:
        sock.setblocking(False)
        sock.send(p.encode_frame(p.ResponseFrame.err(0, message)))
    except OSError:
        pass
    finally:
        sock.close()


class Acceptor:
    """Accept clients whenever the listener is readable, pausing (never spinning) on errors.

    The listener's readiness callback accepts every pending client at once
    and hands each to ``on_client`` in that same pass of the event loop (as
    asyncio's own servers do). An ``async for`` over ``loop.sock_accept``
    took two more passes per client, and registered and removed the reader
    each time (``docs/design-notes.rst``, "CNI plugin start-up"). When the
    process runs out of descriptors or memory, the pending client stays in
    the backlog and accepting pauses with a growing delay.
    """

    #: Clients accepted in one pass at most; the rest wait for the next pass.
    batch: Final = 64

    def __init__(
        self,
        listener: socket.socket,
        limiter: RateLimitedLog,
        on_client: Callable[[socket.socket], None],
    ) -> None:
        self._listener = listener
        self._limiter = limiter
        self._on_client = on_client
        self._loop = asyncio.get_running_loop()
        self._fd = listener.fileno()
        self._delay = _ACCEPT_BACKOFF[0]
        self._resume: asyncio.TimerHandle | None = None
        self._reading = False
        self._stopped = False

    def start(self) -> None:
        """Accept from now on (idempotent)."""
        if not self._reading and not self._stopped:
            self._loop.add_reader(self._fd, self._ready)
            self._reading = True

    def stop(self) -> None:
        """Accept no more (idempotent); the listener stays open."""
        self._stopped = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _ready(self) -> None:
        for _ in range(self.batch):
            if self._stopped:
                return
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EINVAL):
                    self.stop()  # the listener was closed: the daemon is stopping
                    return
                self._pause(exc)
                return
            self._delay = _ACCEPT_BACKOFF[0]
            client.setblocking(False)
            self._on_client(client)

    def _pause(self, exc: OSError) -> None:
        # Out of descriptors or memory (or a stranger error): retrying at once
        # would spin on a listener that stays readable.
        self._limiter.warning(
            "accept",
            "cannot accept connections: %s; retrying in %.2f s (lower "
            "max_connections or raise the open-files limit)",
            exc.strerror or exc,
            self._delay,
        )
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        self._resume = self._loop.call_later(self._delay, self._again)
        self._delay = min(self._delay * 2, _ACCEPT_BACKOFF[1])

    def _again(self) -> None:
        self._resume = None
        self.start()


_HEADER: Final = struct.Struct("<I")
#: Bytes :func:`_read_waiting` takes from a new connection (the transport's own read size).
_EARLY_READ: Final = 2**16


def _read_waiting(sock: socket.socket) -> bytes:
    """What a new, non-blocking connection already holds (``b""``: nothing yet).

    An end of stream is left for the transport to see: a socket at its
    end keeps reading empty. So is an error (a client that reset the
    connection): the transport's first read then finds the end of the
    stream, and the connection closes as it would have.
    """
    try:
        return sock.recv(_EARLY_READ)
    except OSError:  # BlockingIOError (nothing yet) among them
        return b""


class _FastLaneProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol that first offers complete frames to :attr:`Connection.fast`."""

    conn: Connection | None = None

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        offset = 0
        if conn is not None and conn.fast is not None and conn.idle(self):
            fast = conn.fast
            end = len(data)
            transport = self._transport_or_none()
            while transport is not None and end - offset >= 4:
                (length,) = _HEADER.unpack_from(data, offset)
                if length > end - offset - 4 or length > conn.limits.offload_bytes:
                    break
                out = fast(data[offset + 4 : offset + 4 + length])
                if out is None:
                    break
                transport.write(out)
                offset += 4 + length
                if self.paused() or transport.is_closing():
                    break
        if offset < len(data):
            super().data_received(data[offset:] if offset else data)

    def _transport_or_none(self) -> asyncio.WriteTransport | None:
        transport = getattr(self, "_transport", None)
        # By what it does, not its class: uvloop's transports have these
        # methods but are not subclasses of asyncio's, and the lane stayed
        # closed on uvloop while it checked the class.
        if callable(getattr(transport, "write", None)) and callable(
            getattr(transport, "is_closing", None)
        ):
            return cast(asyncio.WriteTransport, transport)
        return None

    # asyncio's own state, which typeshed does not declare: the lane stays
    # closed if a Python version names it differently.

    def paused(self) -> bool:
        """Whether the transport asked to stop writing (the client does not read)."""
        return getattr(self, "_paused", True) is not False

    def buffered(self) -> int:
        """Bytes the stream reader holds unread (any, when that cannot be told)."""
        reader = getattr(self, "_stream_reader", None)
        buffer = getattr(reader, "_buffer", None) if reader is not None else None
        return len(buffer) if isinstance(buffer, bytearray) else 1


class Connection:
    """One client connection: its streams, its answers and the requests in flight."""

    #: The fast lane (module docstring): a request body -> the whole frame to
    #: write (header included), or ``None`` for the ordinary path.
    fast: Callable[[bytes], bytes | None] | None = None

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        limits: Limits,
        offload: asyncio.Semaphore,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.limits = limits
        self.tasks: set[asyncio.Task[None]] = set()
        self._offload = offload
        self._send_lock = asyncio.Lock()
        self._inflight_bytes = 0
        #: Its event subscription (``hello`` with ``events``), if it asked for one.
        self.subscription: Subscription | None = None
        #: A request was read and its handling has not finished on the reading task.
        self._busy = False

    @classmethod
    async def from_socket(
        cls, sock: socket.socket, peer: str, limits: Limits, offload: asyncio.Semaphore
    ) -> Connection:
        """Wrap an accepted socket in asyncio streams.

        What the client sent before it was accepted is read here, at once:
        a client that connects and writes its request in one go (the CNI
        front end, a one-shot ``overlayd`` command) has it read without
        waiting for the loop to poll the new socket first
        (``docs/design-notes.rst``, "CNI plugin start-up").
        """
        loop = asyncio.get_running_loop()
        early = _read_waiting(sock)
        reader = asyncio.StreamReader(limit=2**16)
        protocol = _FastLaneProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        conn = cls(reader, writer, peer, limits, offload)
        protocol.conn = conn
        if early:
            protocol.data_received(early)
        return conn

    def idle(self, protocol: _FastLaneProtocol) -> bool:
        """Whether the fast lane may answer now (see the module docstring)."""
        return (
            not self._busy
            and not self.tasks
            and not self._send_lock.locked()
            and not protocol.paused()
            and protocol.buffered() == 0
        )

    # -- answers ------------------------------------------------------------

    async def send(self, frame: p.Frame) -> None:
        """Send one frame once the previous one has left the transport's buffer.

        The lock makes the buffer hold at most one frame beyond the
        transport's high-water mark: answers for a client that does not read
        wait here (and keep their request in flight) instead of piling up.
        """
        body = p.encode_body(frame)
        async with self._send_lock:
            await write_frame(self.writer, body)

    async def send_quietly(self, frame: p.Frame) -> None:
        """:meth:`send`, where a gone client or an unencodable answer is not an error."""
        try:
            await self.send(frame)
        except (ConnectionError, OSError) as exc:
            log.debug("could not answer %s: %s", self.peer, exc)
        except p.ProtocolError as exc:
            # The answer itself cannot be encoded (e.g. over 8 MiB): say so instead.
            if isinstance(frame, p.ResponseFrame):
                with contextlib.suppress(ConnectionError, OSError):
                    await self.send(p.ResponseFrame.err(frame.id, str(exc)))

    async def answer(
        self,
        frame_id: int,
        response: p.AnyResponse,
        encode: Callable[[p.AnyResponse], bytes] = p.encode_response,
    ) -> None:
        """Answer request ``frame_id`` with ``response``, encoded by ``encode``.

        ``encode`` may return a cached encoding (the server encodes an
        unchanged answer once); the frame around it is built here. An answer
        that cannot be encoded is replaced by an ``err`` saying why; a gone
        client is not an error.
        """
        try:
            body = p.response_body(frame_id, encode(response))
        except p.ProtocolError as exc:
            body = p.encode_body(p.ResponseFrame.err(frame_id, str(exc)))
        try:
            async with self._send_lock:
                await write_frame(self.writer, body)
        except (ConnectionError, OSError) as exc:
            log.debug("could not answer %s: %s", self.peer, exc)

    # -- requests -----------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None], size: int) -> None:
        """Run ``coro`` (the answer to a request of ``size`` bytes) as a tracked task."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        self._inflight_bytes += size

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self._inflight_bytes -= size

        task.add_done_callback(done)

    async def _room(self) -> None:
        """Wait until another request of this connection may be read."""
        limits = self.limits
        while self.tasks and (
            len(self.tasks) >= limits.max_inflight
            or self._inflight_bytes >= limits.max_inflight_bytes
        ):
            await asyncio.wait(list(self.tasks), return_when=asyncio.FIRST_COMPLETED)

    async def _decode(self, body: bytes) -> p.Frame:
        if len(body) <= self.limits.offload_bytes:
            return p.decode_frame(body)
        async with self._offload:
            return await asyncio.to_thread(p.decode_frame, body)

    async def requests(self) -> AsyncIterator[tuple[p.RequestFrame, int]]:
        """Yield ``(request frame, body size)`` until the client leaves or breaks the framing.

        Frames that are not valid requests are answered ``err`` here. The
        caller must hand each request to :meth:`spawn` before asking for the
        next one, so that the in-flight bounds see it.
        """
        while True:
            self._busy = False
            await self._room()
            try:
                body = await read_frame(self.reader)
            except FramingError as exc:
                log.warning("closing connection from %s: %s", self.peer, exc)
                return
            except OSError:
                return
            if body is None:
                return
            self._busy = True
            try:
                frame = await self._decode(body)
            except p.ProtocolError as exc:
                message = clip(str(exc), MAX_ERR_MESSAGE)
                await self.send_quietly(p.ResponseFrame.err(exc.request_id or 0, message))
                continue
            except Exception as exc:
                log.exception("could not decode a frame from %s", self.peer)
                await self.send_quietly(
                    p.ResponseFrame.err(
                        0,
                        f"internal error decoding the frame: {type(exc).__name__}; "
                        "this is a bug in overlayd, please report it with the daemon's log",
                    )
                )
                continue
            if not isinstance(frame, p.RequestFrame):
                frame_id = frame.id if isinstance(frame, p.ResponseFrame) else 0
                await self.send_quietly(
                    p.ResponseFrame.err(
                        frame_id,
                        f"clients may only send request frames, not {frame.frame} frames",
                    )
                )
                continue
            yield frame, len(body)

    async def close(self) -> None:
        """Close the streams (idempotent)."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
