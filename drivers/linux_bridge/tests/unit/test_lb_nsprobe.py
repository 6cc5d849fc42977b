"""Reading the container end through a socket of its namespace (no privileges needed).

The sockets here are opened in the test's own namespace: ioctls on a socket
act in the namespace it was opened in, whichever thread makes them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from overlayd_linux import netns
from overlayd_linux_bridge import nsprobe


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    with nsprobe.open_raw_socket() as s:
        yield s


def test_ns_if_index_reads_the_sockets_namespace(sock: socket.socket) -> None:
    assert nsprobe.ns_if_index(sock, "lo") == socket.if_nametoindex("lo")
    assert nsprobe.ns_if_index(sock, "ovnosuch0") is None


@pytest.mark.parametrize("name", ["", "x" * 16])
def test_ns_if_index_of_an_impossible_name_is_none(sock: socket.socket, name: str) -> None:
    # 16 bytes would be cut to 15 by the kernel and could name another link.
    assert nsprobe.ns_if_index(sock, name) is None


def test_probe_reads_index_loopback_and_mac(sock: socket.socket) -> None:
    found = nsprobe.probe(sock, "lo")
    assert found.index == found.loopback == socket.if_nametoindex("lo")
    assert found.mac == "00:00:00:00:00:00"
    missing = nsprobe.probe(sock, "ovnosuch0")
    assert missing.index is None
    assert missing.mac == ""


@pytest.fixture
def no_setns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The namespace thread stays in ours (entering one needs privileges)."""
    monkeypatch.setattr(netns, "setns_current_thread", lambda fd: None)


@pytest.mark.usefixtures("no_setns")
def test_ns_socket_is_closed_unless_taken() -> None:
    left = nsprobe.NsSocket(0)
    left.close()
    taken = nsprobe.NsSocket(0)
    sock = taken.take()
    taken.close()
    try:
        assert sock.fileno() >= 0  # still the caller's
    finally:
        sock.close()
    assert left._opening.result().fileno() == -1  # closed by close()


def test_ns_socket_that_could_not_be_opened() -> None:
    read_fd, write_fd = os.pipe()  # not a namespace: setns fails in the thread
    try:
        failed = nsprobe.NsSocket(read_fd)
        with pytest.raises(OSError, match="setns"):
            failed.take()
        nsprobe.NsSocket(read_fd).close()  # nothing to close, no error
    finally:
        os.close(read_fd)
        os.close(write_fd)
