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
