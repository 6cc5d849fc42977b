"""overlayd_linux in throwaway namespaces: sockets, IPRoute and ICMP land where they should."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from overlayd_linux import icmp
from overlayd_linux.netlink import NETLINK_ERRORS
from overlayd_linux.netlink import error_code
from overlayd_linux.netlink import iproute_in
from overlayd_linux.netlink import socket_in
from overlayd_linux.netns import open_network_namespace
from overlayd_linux.netns import preexec_setns
from overlayd_linux.netns import run_in_netns
from overlayd_linux.netns import setns_path

pytestmark = pytest.mark.privileged


@pytest.fixture
def ns(nsname: str) -> str:
    """A named namespace with ``lo`` up, removed afterwards (pyroute2's ``nsname``)."""
    return nsname


def _links(ns: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout


def test_iproute_in_acts_in_the_named_namespace_only(ns: str) -> None:
    with iproute_in(ns) as ipr:
        ipr.link("add", ifname="ovlt0", kind="veth", peer={"ifname": "ovlt1"})
    assert "ovlt0" in _links(ns)
    with pytest.raises(OSError, match="no interface"):  # not in ours
        socket.if_nametoindex("ovlt0")
    with iproute_in(f"/run/netns/{ns}") as ipr:  # a path works the same
        assert ipr.link_lookup(ifname="ovlt1")


def test_iproute_in_a_missing_namespace_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError), iproute_in(f"ovl-gone-{secrets.token_hex(3)}"):
        pass


def test_socket_in_binds_to_an_address_only_the_namespace_has(ns: str) -> None:
    subprocess.run(["ip", "-n", ns, "addr", "add", "10.93.0.1/32", "dev", "lo"], check=True)
    fd = open_network_namespace(f"/run/netns/{ns}")
    try:
        with socket_in(fd, socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("10.93.0.1", 0))
    finally:
        os.close(fd)


@pytest.mark.parametrize("dst", ["127.0.0.1", "::1"])
def test_icmp_echo_gets_a_reply_inside_the_namespace(ns: str, dst: str) -> None:
    fd = open_network_namespace(f"/run/netns/{ns}")
    try:
        with run_in_netns(fd, lambda: icmp.echo_socket(icmp.family_of(dst))) as sock:
            rtt = icmp.echo(sock, dst, timeout=2.0)
    finally:
        os.close(fd)
    assert rtt is not None and 0 < rtt < 2.0


def test_icmp_echo_to_an_unreachable_address_times_out(ns: str) -> None:
    # On-link behind a veth whose other end has no address: ARP goes unanswered.
    for cmd in (
        ["link", "add", "ovlu0", "type", "veth", "peer", "name", "ovlu1"],
        ["addr", "add", "10.93.1.1/24", "dev", "ovlu0"],
        ["link", "set", "ovlu0", "up"],
        ["link", "set", "ovlu1", "up"],
    ):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)
    fd = open_network_namespace(f"/run/netns/{ns}")
    try:
        with socket_in(fd, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
            assert icmp.echo(sock, "10.93.1.2", timeout=0.3) is None
    finally:
        os.close(fd)


def test_preexec_setns_starts_a_child_in_the_namespace(ns: str) -> None:
    fd = open_network_namespace(f"/run/netns/{ns}")
    try:
        out = subprocess.run(
            ["readlink", "/proc/self/ns/net"],
            capture_output=True,
            text=True,
            check=True,
            preexec_fn=preexec_setns(fd),
        ).stdout.strip()
    finally:
        os.close(fd)
    assert out == f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]"


def test_setns_path_moves_only_the_calling_thread(ns: str) -> None:
    import threading

    seen: list[int] = []

    def inside() -> None:
        setns_path(f"/run/netns/{ns}")
        seen.append(os.stat("/proc/thread-self/ns/net").st_ino)

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    assert seen == [os.stat(f"/run/netns/{ns}").st_ino]
    assert os.stat("/proc/thread-self/ns/net").st_ino != seen[0]


def test_wireguard_genl_socket_in_a_namespace_resolves_like_the_hosts(
    ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel backend's genl socket in a namespace answers as a host one does.

    It is made by a pinned thread: pyroute2's forked helper (``ChildProcess``)
    is never reached. (No WireGuard module here: both fail alike.)
    """
    import pyroute2.netns

    from overlayd_wireguard.kernel import _open_genl

    def forked(*args: object, **kwargs: object) -> None:
        raise AssertionError("pyroute2's forked namespace helper was used")

    monkeypatch.setattr(pyroute2.netns, "ChildProcess", forked)

    outcomes = []
    for where in (None, ns):
        try:
            genl = _open_genl(where)
            genl.info("ovlt-none")
        except NETLINK_ERRORS as exc:
            outcomes.append(error_code(exc))
        else:  # pragma: no cover - a kernel with the WireGuard module
            genl.close()
            outcomes.append(0)
    assert outcomes[0] == outcomes[1], outcomes
    assert Path(f"/run/netns/{ns}").exists()
