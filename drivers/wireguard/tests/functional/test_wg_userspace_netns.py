"""wireguard-go in two throw-away namespaces joined by a veth underlay.

Addresses live only inside the test's own namespaces: 192.0.2.0/30 (TEST-NET-1)
on the veth pair and 10.98.0.0/24 on the tunnels.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.uapi import DEFAULT_SOCKET_DIR
from overlayd_wireguard.uapi import PeerOp
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.userspace import UserspaceBackend

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="no wireguard-go"),
]


@dataclass
class Pair:
    ns_a: str
    ns_b: str
    wg_a: str
    wg_b: str


def _ns_exists(name: str) -> bool:
    return Path("/var/run/netns", name).exists()


@pytest.fixture
def underlay() -> Iterator[Pair]:
    from pyroute2 import IPRoute
    from pyroute2 import netns

    sfx = secrets.token_hex(3)
    pair = Pair(f"owg-a-{sfx}", f"owg-b-{sfx}", f"owga{sfx}", f"owgb{sfx}")
    va, vb = f"owva{sfx}", f"owvb{sfx}"
    try:
        netns.create(pair.ns_a)
        netns.create(pair.ns_b)
        with IPRoute(netns=pair.ns_a) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link(
                "add",
                ifname=va,
                kind="veth",
                peer={"ifname": vb, "net_ns_fd": pair.ns_b},
            )
            idx = ipr.link_lookup(ifname=va)[0]
            ipr.addr("add", index=idx, address="192.0.2.1", prefixlen=30)
            ipr.link("set", index=idx, state="up")
        with IPRoute(netns=pair.ns_b) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            idx = ipr.link_lookup(ifname=vb)[0]
            ipr.addr("add", index=idx, address="192.0.2.2", prefixlen=30)
            ipr.link("set", index=idx, state="up")
        yield pair
    finally:
        for ns in (pair.ns_a, pair.ns_b):
            if _ns_exists(ns):
                netns.remove(ns)


@pytest.fixture
def backend(underlay: Pair) -> Iterator[UserspaceBackend]:
    sock_dir = Path(DEFAULT_SOCKET_DIR)
    had_dir = sock_dir.exists()
    b = UserspaceBackend(poll_interval=0.1, restart_backoff=(0.2, 2.0))
    try:
        yield b
    finally:
        b.close()
        b.delete_all()
        for name in (underlay.wg_a, underlay.wg_b):
            with contextlib.suppress(FileNotFoundError):
                (sock_dir / f"{name}.sock").unlink()
        if not had_dir:
            with contextlib.suppress(OSError):
                sock_dir.rmdir()


def udp_echo(src_ns: str, dst_ns: str, dst_addr: str, count: int = 3) -> bool:
    """Send ``count`` datagrams from ``src_ns`` to ``dst_addr`` in ``dst_ns`` and
    echo each back; True if every round trip completed within a second.

    Sockets are opened inside the namespaces with pyroute2 (no ping binary needed).
    """
    from pyroute2.netns import create_socket

    server = create_socket(dst_ns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
    client = create_socket(src_ns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
    try:
        server.bind((dst_addr, 0))
        server.settimeout(1.0)
        client.settimeout(1.0)
        target = server.getsockname()
        for _ in range(count):
            payload = secrets.token_bytes(16)
            client.sendto(payload, target)
            try:
                data, peer = server.recvfrom(64)
                server.sendto(data, peer)
                answer, _ = client.recvfrom(64)
            except TimeoutError:
                return False
            if answer != payload:
                return False
        return True
    finally:
        server.close()
        client.close()


def eventually(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_traffic_crosses_tunnel_and_supervisor_heals_killed_process(
    underlay: Pair, backend: UserspaceBackend
) -> None:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    # End n of the tunnel: device, namespace, key; 192.0.2.n on the underlay, 10.98.0.n inside.
    ends = [(underlay.wg_a, underlay.ns_a, key_a, 1), (underlay.wg_b, underlay.ns_b, key_b, 2)]
    for wg, ns, key, n in ends:
        addresses = [f"10.98.0.{n}/24"]
        backend.ensure_device(wg, private_key=key, listen_port=51820, addresses=addresses, netns=ns)
    for (wg, _, _, _), (_, _, peer_key, n) in zip(ends, reversed(ends), strict=True):
        peer = PeerOp(
            public_key=peer_key.public_key(),
            endpoint=f"192.0.2.{n}:51820",
            persistent_keepalive_interval=1,
            allowed_ips=(f"10.98.0.{n}/32",),
        )
        backend.apply(wg, SetRequest(peers=(peer,)))
    # The TUN lives in the namespace of the process, not in the host's.
    from pyroute2 import IPRoute

    with IPRoute() as host:
        assert host.link_lookup(ifname=underlay.wg_a) == []
    with IPRoute(netns=underlay.ns_a) as ipr:
        (link,) = ipr.get_links(ifname=underlay.wg_a)
        assert link.get_attr("IFLA_MTU") == 1420
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=link["index"])]
        assert "10.98.0.1" in addrs

    # 20 s: an initiation that reaches the other end before its peer is set is
    # dropped, and WireGuard sends the next one 5 s later (REKEY_TIMEOUT); on a
    # loaded machine two were lost once, so 10 s was not enough (a CI run).
    assert eventually(lambda: udp_echo(underlay.ns_a, underlay.ns_b, "10.98.0.2"), 20)
    assert udp_echo(underlay.ns_b, underlay.ns_a, "10.98.0.1")
    state = backend.get(underlay.wg_a)
    peer = state.peer(key_b.public_key())
    assert peer is not None
    assert peer.last_handshake_time_sec > 0
    assert peer.rx_bytes > 0

    old_pid = backend.pid(underlay.wg_a)
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    assert eventually(lambda: backend.restarts(underlay.wg_a) == 1, 15)
    new_pid = backend.pid(underlay.wg_a)
    assert new_pid is not None
    assert new_pid != old_pid
    healed = backend.get(underlay.wg_a)
    assert healed.private_key == key_a
    assert healed.listen_port == 51820
    peer = healed.peer(key_b.public_key())
    assert peer is not None
    assert peer.allowed_ips == ("10.98.0.2/32",)
    assert eventually(lambda: udp_echo(underlay.ns_a, underlay.ns_b, "10.98.0.2"), 20)
    assert udp_echo(underlay.ns_b, underlay.ns_a, "10.98.0.1")

    pid_b = backend.pid(underlay.wg_b)
    assert pid_b is not None
    assert backend.delete_device(underlay.wg_a) is True
    assert backend.delete_device(underlay.wg_b) is True
    assert not _alive(new_pid)
    assert not _alive(pid_b)
    assert not Path(DEFAULT_SOCKET_DIR, f"{underlay.wg_a}.sock").exists()
    with IPRoute(netns=underlay.ns_a) as ipr:
        assert eventually(lambda: ipr.link_lookup(ifname=underlay.wg_a) == [], 5)
