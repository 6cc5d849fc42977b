"""The standard-library client: framing, errors, timeouts, events skipped, import cost."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path

import pytest

from overlayd import protocol as p
from overlayd import transport
from overlayd.client import ConnectError
from overlayd.client import ConnectionLost
from overlayd.client import RawClient
from overlayd.client import RemoteError
from overlayd.client import RequestTimeout
from overlayd.client import UnexpectedResponse
from overlayd.rawclient import DEFAULT_SOCKET
from overlayd.rawclient import MAX_FRAME
from overlayd.testing.inproc import serving
from overlayd_fake.driver import FakeDriver


@pytest.fixture
def root(short_tmp_path: Path) -> Path:
    return short_tmp_path


@pytest.fixture
async def daemon(root: Path) -> AsyncIterator[str]:
    async with serving(root, make_drivers=lambda: [FakeDriver()], in_memory=True) as served:
        yield str(served.socket)


def _fake_daemon(
    root: Path, answer: Callable[[int, dict[str, object]], list[bytes]], *, once: bool = False
) -> str:
    """A server answering each request with ``answer(connection number, request)``'s frames.

    ``once``: close each connection after its first answer.
    """
    path = str(root / "fake.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)

    def serve() -> None:
        for number in range(4):
            conn, _ = listener.accept()
            with conn:
                while True:
                    header = conn.recv(4, socket.MSG_WAITALL)
                    if len(header) < 4:
                        break
                    (length,) = struct.unpack("<I", header)
                    request = json.loads(conn.recv(length, socket.MSG_WAITALL))
                    for frame in answer(number, request):
                        conn.sendall(frame)
                    if once:
                        break
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return path


def _frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack("<I", len(body)) + body


def test_constants_match_the_typed_modules() -> None:
    assert MAX_FRAME == p.MAX_FRAME
    assert DEFAULT_SOCKET == transport.DEFAULT_SOCKET


async def test_calls_and_errors_against_the_real_server(daemon: str) -> None:
    def run() -> None:
        with RawClient(daemon, timeout=5) as client:
            status = client.call({"op": "status"}, expect=("status",))
            assert status["result"] == "status" and status["peer_count"] == 0
            with pytest.raises(RemoteError, match="global overlay is not set up") as info:
                client.call({"op": "setup_service_overlay", "service": "web", "mode": "auto"})
            assert info.value.op == "setup_service_overlay"
            # A bad request is the daemon's to refuse; the connection stays usable.
            with pytest.raises(RemoteError, match="unknown op 'frobnicate'"):
                client.call({"op": "frobnicate"})
            with pytest.raises(UnexpectedResponse, match="expected ok"):
                client.call({"op": "status"}, expect=("ok",))
            assert client.call({"op": "hello"})["result"] == "hello"

    # The blocking client must not run on the event loop that serves it.
    import asyncio

    await asyncio.to_thread(run)


def test_missing_socket_is_a_connect_error_after_the_attempts(root: Path) -> None:
    client = RawClient(str(root / "nope.sock"), connect_attempts=3, backoff=0.001)
    with pytest.raises(ConnectError, match="is the daemon running"):
        client.call({"op": "status"})


def test_events_and_other_ids_are_skipped(root: Path) -> None:
    def answer(number: int, request: dict[str, object]) -> list[bytes]:
        return [
            _frame({"frame": "event", "event": "peer_health_changed", "pubkey": "k"}),
            _frame({"frame": "response", "id": 999, "response": {"result": "ok"}}),
            _frame({"frame": "response", "id": request["id"], "response": {"result": "ok"}}),
        ]

    with RawClient(_fake_daemon(root, answer), timeout=5) as client:
        assert client.call({"op": "nat_tick"}, expect=("ok",)) == {"result": "ok"}


def test_silence_is_a_timeout_and_the_next_call_reconnects(root: Path) -> None:
    def answer(number: int, request: dict[str, object]) -> list[bytes]:
        # Silent on the first connection, answering on the next ones.
        ok = {"frame": "response", "id": request["id"], "response": {"result": "ok"}}
        return [_frame(ok)] if number else []

    client = RawClient(_fake_daemon(root, answer), timeout=0.3)
    with pytest.raises(RequestTimeout, match="did not answer nat_tick"):
        client.call({"op": "nat_tick"})
    assert isinstance(RequestTimeout("x"), TimeoutError)
    # A late answer on the old connection must never be taken for the next
    # call's: the next call opens a new connection.
    assert client.call({"op": "nat_tick"}) == {"result": "ok"}
    client.close()


@pytest.mark.parametrize(
    "reply",
    [b"\x05\x00\x00\x00{}", struct.pack("<I", MAX_FRAME + 1), b"\x02\x00\x00\x00{{"],
    ids=["truncated", "oversize", "not-json"],
)
def test_a_broken_stream_is_connection_lost(root: Path, reply: bytes) -> None:
    path = _fake_daemon(root, lambda number, request: [reply], once=True)
    with RawClient(path, timeout=2) as client, pytest.raises(ConnectionLost):
        client.call({"op": "status"})


def test_importing_it_pulls_in_neither_pydantic_nor_asyncio() -> None:
    code = (
        "import sys, overlayd.rawclient; "
        "print(sorted(m for m in ('pydantic', 'asyncio', 'pluggy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert out.stdout.strip() == "[]"


def test_the_package_still_exports_every_public_name() -> None:
    import overlayd

    for name in overlayd.__all__:
        assert getattr(overlayd, name) is not None, name
    from overlayd.hookspecs import hookimpl

    assert overlayd.hookimpl is hookimpl
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        overlayd.nope  # noqa: B018
