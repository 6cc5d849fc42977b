"""Length-prefixed framing over Unix domain sockets and Windows named pipes.

A frame is a 4-byte unsigned little-endian length followed by that many bytes
of body (docs/reference/zlayer.rst §1). The reader checks the length against
:data:`~overlayd.protocol.MAX_FRAME` *before* reading or allocating the body.
EOF at a header boundary is a clean close (``None``); EOF anywhere after the
first header byte is :class:`TruncatedFrame`. A framing error leaves the stream
at an unknown position, so the connection must be closed.

This module only moves bytes; :mod:`overlayd.protocol` gives them meaning.
Everything here imports on every platform: the named-pipe helpers exist on
Windows and raise :class:`~overlayd.errors.NotSupported` elsewhere.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Final
from typing import Protocol

from overlayd.errors import NotSupported
from overlayd.errors import OverlaydError
from overlayd.protocol import MAX_FRAME

__all__ = [
    "DEFAULT_PIPE",
    "DEFAULT_SOCKET",
    "HEADER_SIZE",
    "ByteChannel",
    "FrameTooLarge",
    "FramingError",
    "TruncatedFrame",
    "connect_unix_sync",
    "framed",
    "is_pipe_address",
    "open_connection",
    "open_pipe",
    "open_unix",
    "read_frame",
    "read_frame_sync",
    "start_pipe_server",
    "write_frame",
    "write_frame_sync",
]

#: Default socket on Linux (docs/reference/zlayer.rst §7).
DEFAULT_SOCKET: Final = "/var/run/zlayer-overlayd.sock"
#: Default named pipe on Windows.
DEFAULT_PIPE: Final = r"\\.\pipe\zlayer-overlayd"
HEADER_SIZE: Final = 4

_HEADER: Final = struct.Struct("<I")


class FramingError(OverlaydError):
    """The byte stream does not follow the framing; the connection must close."""

    code = "framing"


class TruncatedFrame(FramingError):
    """The peer closed the connection in the middle of a frame."""

    def __init__(self, expected: int, received: int, part: str) -> None:
        self.expected = expected
        self.received = received
        super().__init__(
            f"the connection closed inside a frame {part}: got {received} of "
            f"{expected} bytes; the peer crashed or does not speak the overlayd framing"
        )


class FrameTooLarge(FramingError):
    """A frame length exceeds :data:`~overlayd.protocol.MAX_FRAME`."""

    def __init__(self, length: int) -> None:
        self.length = length
        super().__init__(
            f"frame length {length} exceeds the {MAX_FRAME}-byte limit; the peer "
            "does not speak the overlayd framing or sent an oversized request"
        )


def _check_length(length: int) -> None:
    if length > MAX_FRAME:
        raise FrameTooLarge(length)


def framed(body: bytes) -> bytes:
    """``body`` with its length prefix: the bytes of one frame on the wire."""
    _check_length(len(body))
    return _HEADER.pack(len(body)) + body


# ---------------------------------------------------------------------------
# asyncio streams
# ---------------------------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """Read one frame body; ``None`` on a clean EOF between frames."""
    try:
        header = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise TruncatedFrame(HEADER_SIZE, len(exc.partial), "header") from None
    (length,) = _HEADER.unpack(header)
    _check_length(length)
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TruncatedFrame(length, len(exc.partial), "body") from None


async def write_frame(writer: asyncio.StreamWriter, body: bytes) -> None:
    """Write one frame (header and body in one ``write``) and drain.

    Because the single ``write`` call does not yield, frames written by
    concurrent tasks never interleave.
    """
    writer.write(framed(body))
    await writer.drain()


# ---------------------------------------------------------------------------
# blocking sockets (and anything with recv/sendall)
# ---------------------------------------------------------------------------


class ByteChannel(Protocol):
    """What the sync helpers need: a blocking ``socket.socket`` satisfies it."""

    def recv(self, bufsize: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...


def _recv_exact(channel: ByteChannel, n: int, part: str, *, eof_ok: bool) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = channel.recv(min(n - got, 1 << 20))
        if not chunk:
            if got == 0 and eof_ok:
                return b""
            raise TruncatedFrame(n, got, part)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame_sync(channel: ByteChannel) -> bytes | None:
    """Blocking :func:`read_frame`."""
    header = _recv_exact(channel, HEADER_SIZE, "header", eof_ok=True)
    if not header:
        return None
    (length,) = _HEADER.unpack(header)
    _check_length(length)
    if length == 0:
        return b""
    return _recv_exact(channel, length, "body", eof_ok=False)


def write_frame_sync(channel: ByteChannel, body: bytes) -> None:
    """Blocking :func:`write_frame`."""
    _check_length(len(body))
    channel.sendall(_HEADER.pack(len(body)) + body)


# ---------------------------------------------------------------------------
# connecting
# ---------------------------------------------------------------------------


def is_pipe_address(address: str) -> bool:
    r"""True for a Windows named pipe path (``\\.\pipe\...``)."""
    return address.replace("/", "\\").lower().startswith("\\\\.\\pipe\\")


async def open_unix(
    path: str,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the daemon's Unix domain socket."""
    if sys.platform == "win32":
        raise NotSupported(
            f"cannot open Unix socket {path!r} from this Python on Windows; "
            f"use the named pipe {DEFAULT_PIPE!r}"
        )
    else:
        # The StreamReader limit only bounds readline(); readexactly() ignores it.
        return await asyncio.open_unix_connection(path)


def connect_unix_sync(path: str, timeout: float | None = None) -> socket.socket:
    """A blocking connected Unix socket for :func:`read_frame_sync`."""
    if sys.platform == "win32":
        raise NotSupported(f"cannot open Unix socket {path!r} on Windows")
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock


if sys.platform == "win32":

    async def open_pipe(
        address: str = DEFAULT_PIPE,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to a named pipe (needs the default Proactor event loop)."""
        loop = asyncio.get_running_loop()
        if not isinstance(loop, asyncio.ProactorEventLoop):
            raise NotSupported(
                "named pipes need asyncio's ProactorEventLoop (the Windows default); "
                f"the running loop is {type(loop).__name__}"
            )
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.create_pipe_connection(lambda: protocol, address)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def start_pipe_server(
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        address: str = DEFAULT_PIPE,
    ) -> Callable[[], None]:
        """Serve ``handler`` on a named pipe; returns a function that stops serving."""
        loop = asyncio.get_running_loop()
        if not isinstance(loop, asyncio.ProactorEventLoop):
            raise NotSupported(
                "named pipes need asyncio's ProactorEventLoop (the Windows default); "
                f"the running loop is {type(loop).__name__}"
            )

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader()
            return asyncio.StreamReaderProtocol(reader, handler)

        servers = await loop.start_serving_pipe(factory, address)

        def stop() -> None:
            for server in servers:
                server.close()

        return stop

else:

    async def open_pipe(
        address: str = DEFAULT_PIPE,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Named pipes exist only on Windows."""
        raise NotSupported(
            f"named pipe {address!r} is only available on Windows; "
            f"connect to the Unix socket (default {DEFAULT_SOCKET!r})"
        )

    async def start_pipe_server(
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        address: str = DEFAULT_PIPE,
    ) -> Callable[[], None]:
        """Named pipes exist only on Windows."""
        raise NotSupported(f"cannot serve named pipe {address!r}: named pipes are Windows-only")


async def open_connection(
    address: str,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r"""Connect to a pipe (``\\.\pipe\...``) or a Unix socket path."""
    if is_pipe_address(address):
        return await open_pipe(address)
    return await open_unix(address)
