"""The tuning of a supervised wireguard-go takes effect, checked from outside.

wireguard-go runs in a throw-away namespace (address 10.97.0.1/24 on its TUN,
nothing else); the socket buffer sizes are read with ``ss -m`` (sock_diag) in
that namespace and the nice values from ``/proc``, not through the code under
test.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.tuning import Tuning
from overlayd_wireguard.uapi import DEFAULT_SOCKET_DIR
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import UapiClient
from overlayd_wireguard.userspace import UserspaceBackend

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="no wireguard-go"),
    pytest.mark.skipif(shutil.which("ss") is None, reason="no ss (iproute2)"),
]

_SOCKET = re.compile(r":(\d+)\s.*?ino:(\d+).*?skmem:\(r\d+,rb(\d+),t\d+,tb(\d+)", re.S)


def udp_buffers(ns: str, pid: int) -> dict[int, list[tuple[int, int, int]]]:
    """port -> [(inode, rcvbuf, sndbuf)] of ``pid``'s UDP sockets, as ``ss`` sees them."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-u", "-a", "-n", "-m", "-p", "-e"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: dict[int, list[tuple[int, int, int]]] = {}
    # One socket per record: a line with the addresses, then a skmem line.
    for record in re.split(r"\n(?=UNCONN|ESTAB)", out):
        if f"pid={pid}," not in record:
            continue
        m = _SOCKET.search(record)
        assert m, record
        port, ino, rb, tb = (int(g) for g in m.groups())
        found.setdefault(port, []).append((ino, rb, tb))
    return found


def thread_nice(pid: int) -> set[int]:
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        values.add(int(fields[16]))  # field 19 of stat: nice
    return values


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def netns() -> Iterator[str]:
    from pyroute2 import IPRoute
    from pyroute2 import netns as pr_netns

    name = f"owgt-{secrets.token_hex(3)}"
    pr_netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        if Path("/var/run/netns", name).exists():
            pr_netns.remove(name)


@contextlib.contextmanager
def running(tuning: Tuning | None) -> Iterator[UserspaceBackend]:
    sock_dir = Path(DEFAULT_SOCKET_DIR)
    had_dir = sock_dir.exists()
    backend = UserspaceBackend(tuning=tuning, poll_interval=0.1, retune_interval=0.2)
    try:
        yield backend
    finally:
        backend.close()
        backend.delete_all()
        if not had_dir:
            with contextlib.suppress(OSError):
                sock_dir.rmdir()


def test_socket_buffers_are_raised_and_stay_raised(netns: str) -> None:
    size = 7 << 20
    name = f"owgt{secrets.token_hex(3)}"
    with running(Tuning(socket_buffer=size)) as backend:
        backend.ensure_device(
            name,
            private_key=PrivateKey.generate(),
            listen_port=40101,
            addresses=["10.97.0.1/24"],
            netns=netns,
        )
        pid = backend.pid(name)
        assert pid is not None
        socks = udp_buffers(netns, pid)
        assert set(socks) == {40101}
        assert len(socks[40101]) == 2  # IPv4 and IPv6
        assert {(rb, tb) for _, rb, tb in socks[40101]} == {(2 * size, 2 * size)}
        # A port change through the backend: new sockets, tuned at once.
        backend.apply(name, SetRequest(listen_port=40102))
        socks = udp_buffers(netns, pid)
        assert set(socks) == {40102}
        assert {(rb, tb) for _, rb, tb in socks[40102]} == {(2 * size, 2 * size)}
        # A port change behind overlayd's back (wg set): the watcher re-tunes.
        UapiClient().set(name, SetRequest(listen_port=40103))
        wait_until(lambda: set(udp_buffers(netns, pid)) == {40103})
        wait_until(
            lambda: (
                {(rb, tb) for _, rb, tb in udp_buffers(netns, pid)[40103]} == {(2 * size, 2 * size)}
            )
        )
        report = backend.tune_report(name)
        assert report is not None
        assert report.problems == ()
        assert report.inodes == {ino for ino, _, _ in udp_buffers(netns, pid)[40103]}


def test_untuned_sockets_keep_the_kernel_default(netns: str) -> None:
    default = int(Path("/proc/sys/net/core/rmem_default").read_text())
    name = f"owgt{secrets.token_hex(3)}"
    with running(Tuning(socket_buffer=0)) as backend:
        backend.ensure_device(
            name, private_key=PrivateKey.generate(), listen_port=40111, netns=netns
        )
        pid = backend.pid(name)
        assert pid is not None
        socks = udp_buffers(netns, pid)
        assert {rb for _, rb, _ in socks[40111]} == {default}


def test_nice_value_on_every_thread(netns: str) -> None:
    name = f"owgt{secrets.token_hex(3)}"
    with running(Tuning(socket_buffer=0, nice=-3)) as backend:
        backend.ensure_device(
            name, private_key=PrivateKey.generate(), listen_port=40121, netns=netns
        )
        pid = backend.pid(name)
        assert pid is not None
        assert thread_nice(pid) == {-3}
        assert len(list(Path(f"/proc/{pid}/task").iterdir())) > 1  # Go runs several threads
