"""Framing: u32-LE length + body, clean EOF, truncation and the size limit."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from pathlib import Path

import pytest

from overlayd.errors import NotSupported
from overlayd.protocol import MAX_FRAME
from overlayd.transport import FrameTooLarge
from overlayd.transport import TruncatedFrame
from overlayd.transport import connect_unix_sync
from overlayd.transport import is_pipe_address
from overlayd.transport import open_connection
from overlayd.transport import open_pipe
from overlayd.transport import read_frame
from overlayd.transport import read_frame_sync
from overlayd.transport import write_frame
from overlayd.transport import write_frame_sync

if sys.platform == "win32":  # the in-test servers use Unix domain sockets
    pytest.skip("needs Unix domain sockets", allow_module_level=True)


# mypy --platform win32 sees the rest of this module as unreachable.
def _reader(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:  # type: ignore[unreachable,unused-ignore]
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def test_transport_reads_consecutive_frames_then_clean_eof() -> None:
    reader = _reader(b"\x02\x00\x00\x00{}" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00abc")
    assert await read_frame(reader) == b"{}"
    assert await read_frame(reader) == b""
    assert await read_frame(reader) == b"abc"
    assert await read_frame(reader) is None


async def test_transport_eof_inside_header_is_truncated() -> None:
    with pytest.raises(TruncatedFrame, match="header: got 2 of 4 bytes"):
        await read_frame(_reader(b"\x05\x00"))


async def test_transport_eof_inside_body_is_truncated() -> None:
    with pytest.raises(TruncatedFrame, match="body: got 3 of 5 bytes"):
        await read_frame(_reader(b"\x05\x00\x00\x00abc"))


async def test_transport_oversize_length_fails_before_reading_body() -> None:
    # No body and no EOF follow: a reader that tried to read the body would hang.
    reader = _reader(struct.pack("<I", MAX_FRAME + 1), eof=False)
    with pytest.raises(FrameTooLarge, match=str(MAX_FRAME + 1)):
        await asyncio.wait_for(read_frame(reader), timeout=1)


async def test_transport_length_is_unsigned_little_endian() -> None:
    body = b"x" * 258
    reader = _reader(b"\x02\x01\x00\x00" + body)
    assert await read_frame(reader) == body


async def test_transport_max_frame_is_accepted() -> None:
    body = b"a" * MAX_FRAME
    assert await read_frame(_reader(struct.pack("<I", MAX_FRAME) + body)) == body


async def test_transport_async_round_trip_over_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    received: list[bytes | None] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while (body := await read_frame(r)) is not None:
            received.append(body)
            await write_frame(w, body[::-1])
        w.close()

    server = await asyncio.start_unix_server(handler, path)
    async with server:
        reader, writer = await open_connection(path)
        await write_frame(writer, b"hello")
        assert await read_frame(reader) == b"olleh"
        writer.close()
        await writer.wait_closed()
    assert received == [b"hello"]


async def test_transport_write_frame_refuses_oversize(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_unix_server(handler, path)
    async with server:
        _, writer = await open_connection(path)
        with pytest.raises(FrameTooLarge):
            await write_frame(writer, b"x" * (MAX_FRAME + 1))
        writer.close()


def test_transport_sync_round_trip_and_eof() -> None:
    a, b = socket.socketpair()
    with a, b:
        write_frame_sync(a, b'{"k":1}')
        write_frame_sync(a, b"")
        a.shutdown(socket.SHUT_WR)
        assert read_frame_sync(b) == b'{"k":1}'
        assert read_frame_sync(b) == b""
        assert read_frame_sync(b) is None


@pytest.mark.parametrize(
    ("sent", "message"),
    [(b"\x09\x00\x00\x00abc", "body: got 3 of 9"), (b"\x01", "header: got 1 of 4")],
    ids=["body", "header"],
)
def test_transport_sync_truncated(sent: bytes, message: str) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(sent)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(TruncatedFrame, match=message):
            read_frame_sync(b)


def test_transport_sync_too_large() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack("<I", MAX_FRAME + 1))
        b.settimeout(1)
        with pytest.raises(FrameTooLarge):
            read_frame_sync(b)
        with pytest.raises(FrameTooLarge):
            write_frame_sync(a, b"x" * (MAX_FRAME + 1))


def test_transport_connect_unix_sync(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        with connect_unix_sync(path, timeout=2) as client:
            conn, _ = listener.accept()
            with conn:
                write_frame_sync(client, b"ping")
                assert read_frame_sync(conn) == b"ping"


def test_transport_connect_unix_sync_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        connect_unix_sync(str(tmp_path / "absent.sock"))


def test_transport_pipe_addresses_are_recognised() -> None:
    assert is_pipe_address(r"\\.\pipe\zlayer-overlayd")
    assert is_pipe_address("//./pipe/zlayer-overlayd")
    assert not is_pipe_address("/var/run/zlayer-overlayd.sock")


@pytest.mark.skipif(sys.platform == "win32", reason="checks the non-Windows stub")
async def test_transport_pipe_is_not_supported_off_windows() -> None:
    with pytest.raises(NotSupported, match="only available on Windows"):
        await open_pipe()
    with pytest.raises(NotSupported):
        await open_connection(r"\\.\pipe\zlayer-overlayd")
