"""PyRoute2Links and the kernel backend's failure path in a throw-away netns."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.errors import DeviceError
from overlayd.errors import NotSupported
from overlayd_wireguard.kernel import KernelBackend
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.links import PyRoute2Links

pytestmark = pytest.mark.privileged


@pytest.fixture
def ns() -> Iterator[str]:
    from pyroute2 import netns

    name = f"owg-l-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        if Path("/var/run/netns", name).exists():
            netns.remove(name)


def _addrs(ns: str, name: str) -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        return {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=idx)
            if not a.get_attr("IFA_ADDRESS").startswith("fe80")
        }


def test_configure_sets_mtu_exact_addresses_and_up(ns: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ipr:
        # no dummy module on the CI kernel; a veth pair works everywhere
        ipr.link("add", ifname="owgdum0", kind="veth", peer={"ifname": "owgdum1"})
    links = PyRoute2Links()
    links.wait_link("owgdum0", netns=ns, timeout=2)
    links.configure("owgdum0", mtu=1380, addresses=["10.98.0.1/24", "fd00:98::1/64"], netns=ns)
    assert _addrs(ns, "owgdum0") == {"10.98.0.1/24", "fd00:98::1/64"}
    links.configure("owgdum0", mtu=1400, addresses=["10.98.0.7/24"], netns=ns)
    assert _addrs(ns, "owgdum0") == {"10.98.0.7/24"}
    with IPRoute(netns=ns) as ipr:
        (link,) = ipr.get_links(ifname="owgdum0")
        assert link.get_attr("IFLA_MTU") == 1400
        assert link["flags"] & 1  # IFF_UP
    assert links.delete_link("owgdum0", netns=ns) is True
    assert links.delete_link("owgdum0", netns=ns) is False


def test_configure_missing_link_and_wait_timeout(ns: str) -> None:
    links = PyRoute2Links()
    with pytest.raises(DeviceError, match="does not exist"):
        links.configure("owgnone", mtu=1420, addresses=[], netns=ns)
    with pytest.raises(DeviceError, match="did not appear"):
        links.wait_link("owgnone", netns=ns, timeout=0.2)


@pytest.mark.skipif(Path("/sys/module/wireguard").exists(), reason="module loaded")
def test_kernel_backend_without_module_is_not_supported(ns: str) -> None:
    with pytest.raises(NotSupported, match="no wireguard link type"):
        KernelBackend().ensure_device("owgk0", private_key=PrivateKey.generate(), netns=ns)


def test_underlay_address_is_the_default_route_source_then_a_global_address(ns: str) -> None:
    from pyroute2 import IPRoute

    from overlayd_wireguard.hostnet import PyRoute2HostNet

    hostnet = PyRoute2HostNet()
    assert hostnet.underlay_address(netns=ns) is None  # only lo
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname="owgup0", kind="veth", peer={"ifname": "owgup1"})
        up0, up1 = ipr.link_lookup(ifname="owgup0")[0], ipr.link_lookup(ifname="owgup1")[0]
        ipr.link("set", index=up0, state="up")
        ipr.link("set", index=up1, state="up")
        ipr.addr("add", index=up0, address="10.97.0.2", prefixlen=24)
        ipr.addr("add", index=up1, address="10.97.1.2", prefixlen=24)
    # No default route: a global address of an up link (not loopback).
    assert hostnet.underlay_address(netns=ns) in {"10.97.0.2", "10.97.1.2"}
    with IPRoute(netns=ns) as ipr:
        ipr.route("add", dst="0.0.0.0", dst_len=0, gateway="10.97.1.1", oif=up1)
    assert hostnet.underlay_address(netns=ns) == "10.97.1.2"
    with IPRoute(netns=ns) as ipr:
        ipr.route("replace", dst="0.0.0.0", dst_len=0, gateway="10.97.1.1", oif=up1,
                  prefsrc="10.97.0.2")  # fmt: skip
    assert hostnet.underlay_address(netns=ns) == "10.97.0.2"


def test_namespace_calls_never_fork_pyroute2s_helper(
    ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Links, routes, host candidates and NAT sockets open their sockets from a pinned thread.

    ``IPRoute(netns=...)`` makes its socket in a helper process that
    ``pyroute2.netns.create_socket`` forks (a ``ChildProcess``) for every socket;
    the driver must not reach it.
    """
    import socket

    import pyroute2.netns

    from overlayd.model import Device
    from overlayd.model import DeviceKind
    from overlayd_linux.netlink import iproute_in
    from overlayd_wireguard.hostnet import PyRoute2HostNet
    from overlayd_wireguard.nat import host_candidates
    from overlayd_wireguard.nat import open_in_netns

    with iproute_in(ns) as ipr:
        ipr.link("add", ifname="owgfk0", kind="veth", peer={"ifname": "owgfk1"})

    def forked(*args: object, **kwargs: object) -> None:
        raise AssertionError("pyroute2's forked namespace helper was used")

    monkeypatch.setattr(pyroute2.netns, "ChildProcess", forked)
    links, hostnet = PyRoute2Links(), PyRoute2HostNet()
    links.wait_link("owgfk0", netns=ns, timeout=2)
    links.configure("owgfk0", mtu=1400, addresses=["10.96.0.1/24"], netns=ns)
    hostnet.add_routes("owgfk0", ["10.95.0.0/16"], netns=ns)
    hostnet.delete_routes("owgfk0", ["10.95.0.0/16"], netns=ns)
    assert hostnet.wireguard_links(netns=ns) == {}
    assert hostnet.underlay_address(netns=ns) == "10.96.0.1"
    device = Device(
        name="owgfk0",
        kind=DeviceKind.WIREGUARD,
        owner="global",
        driver="wireguard",
        listen_port=51999,
    )
    assert [c.endpoint for c in host_candidates(ns, device)] == ["10.96.0.1:51999"]
    with open_in_netns(ns, socket.AF_INET, socket.SOCK_DGRAM, 0) as sock:
        sock.bind(("10.96.0.1", 0))  # the address exists only inside the namespace
    assert links.delete_link("owgfk0", netns=ns) is True
