"""LinuxBridgeDriver against the real kernel, inside throwaway namespaces.

The driver's "host" is a namespace of its own (``PyrouteNetlink(host_netns=...)``
and an nft backend bound to it), and workloads are further namespaces; the
machine's interfaces, routes, sysctls and firewall are never touched.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest

from overlayd.config import EngineConfig
from overlayd.model import AttachRequest
from overlayd.model import Device
from overlayd.model import DeviceSpec
from overlayd.model import MasqueradeRule
from overlayd.model import NetnsHandle
from overlayd.model import PortMapping
from overlayd.model import ReconcileRequest
from overlayd.testing.conformance import AttachConformance
from overlayd.testing.conformance import DeviceConformance
from overlayd.testing.conformance import LifecycleConformance
from overlayd.testing.conformance import NatConformance
from overlayd_linux_bridge.driver import LinuxBridgeDriver
from overlayd_linux_bridge.netlink import PyrouteNetlink
from overlayd_linux_bridge.nft import Nftables
from overlayd_linux_bridge.nft import default_backend
from overlayd_linux_bridge.testing import Netns
from overlayd_linux_bridge.testing import link_outside
from overlayd_linux_bridge.testing import ping
from overlayd_linux_bridge.testing import udp_probe

pytestmark = pytest.mark.privileged


@pytest.fixture
def lb_driver(host_ns: Netns) -> Iterator[LinuxBridgeDriver]:
    """A driver whose host is ``host_ns``; its adapters are closed on teardown."""
    netlink = PyrouteNetlink(host_ns.path, linger=0.01)
    nft = Nftables(default_backend(host_ns.path))
    try:
        yield LinuxBridgeDriver(netlink=netlink, nft=nft)
    finally:
        try:
            netlink.close()
        finally:
            nft.close()


# DeviceConformance comes last: AttachConformance and LifecycleConformance extend it.
class TestLinuxBridgeConformance(
    AttachConformance, LifecycleConformance, NatConformance, DeviceConformance
):
    @pytest.fixture
    def driver(self, lb_driver: LinuxBridgeDriver) -> LinuxBridgeDriver:
        return lb_driver

    @pytest.fixture
    def attach_handle(self, make_netns: Callable[[str], Netns]) -> NetnsHandle:
        return NetnsHandle(path=make_netns("ctr").path)


# -- driver-level behaviour on the real kernel ---------------------------------


@pytest.fixture
def started(lb_driver: LinuxBridgeDriver) -> LinuxBridgeDriver:
    lb_driver.overlayd_configure(config=EngineConfig(drivers=[]))
    lb_driver.overlayd_startup(context=None)
    return lb_driver


def _bridge(driver: LinuxBridgeDriver, name: str, subnet: str, owner: str) -> Device:
    net = ipaddress.ip_network(subnet)
    device = driver.overlayd_device_create(
        spec=DeviceSpec(
            kind="bridge",
            name=name,
            owner=owner,
            addresses=(ipaddress.ip_interface(f"{net.network_address + 1}/{net.prefixlen}"),),
            mtu=1420,
            subnet=net,
        )
    )
    assert device is not None
    return device


def _attach(
    driver: LinuxBridgeDriver,
    bridge: Device,
    ns: Netns,
    host: int,
    global_address: str | None = None,
) -> Any:
    assert bridge.subnet is not None
    net = bridge.subnet
    att = driver.overlayd_attach(
        request=AttachRequest(
            handle=NetnsHandle(path=ns.path),
            service=bridge.owner.removeprefix("service:"),
            segment=bridge,
            address=ipaddress.ip_interface(f"{net.network_address + host}/{net.prefixlen}"),
            gateway=net.network_address + 1,
            global_address=ipaddress.ip_interface(global_address) if global_address else None,
            mtu=1420,
        )
    )
    assert att is not None
    return att


def test_bridge_carries_ownership_alias_and_forwarding_is_on(
    started: LinuxBridgeDriver, host_ns: Netns
) -> None:
    _bridge(started, "zl-ft-web-b", "10.61.0.0/24", "service:web")
    details = host_ns.ip("-d", "link", "show", "zl-ft-web-b")
    assert "alias overlayd:service:web" in details
    assert "stp_state 0" in details
    assert "mtu 1420" in details
    out = subprocess.run(
        ["ip", "netns", "exec", host_ns.name, "sysctl", "-n", "net.ipv4.ip_forward"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "1"
    host_ns.ip("link", "add", "zl-other-b", "type", "bridge")
    assert [d.name for d in started.overlayd_device_list(kind="bridge")] == ["zl-ft-web-b"]


def test_containers_on_one_bridge_reach_each_other_and_gateway(
    started: LinuxBridgeDriver, make_netns: Callable[[str], Netns]
) -> None:
    bridge = _bridge(started, "zl-ft-web-b", "10.61.0.0/24", "service:web")
    a, b = make_netns("a"), make_netns("b")
    _attach(started, bridge, a, 2)
    _attach(started, bridge, b, 3)
    assert ping(a, "10.61.0.3")
    assert ping(b, "10.61.0.2")
    assert ping(a, "10.61.0.1")
    assert "mtu 1420" in a.ip("link", "show", "eth0")
    assert "default via 10.61.0.1 dev eth0" in a.ip("route")


def test_planned_attach_gives_the_container_end_the_planned_mac(
    started: LinuxBridgeDriver, make_netns: Callable[[str], Netns]
) -> None:
    """The kernel takes the MAC the plan chose (``IFLA_ADDRESS`` of the veth's
    peer): the attach reports exactly the plan, so the engine's record written
    beside it is the one it keeps, and the workload's eth0 carries that MAC."""
    bridge = _bridge(started, "zl-ft-web-b", "10.61.0.0/24", "service:web")
    assert bridge.subnet is not None
    a = make_netns("a")
    request = AttachRequest(
        handle=NetnsHandle(path=a.path),
        service="web",
        segment=bridge,
        address=ipaddress.ip_interface("10.61.0.2/24"),
        gateway=ipaddress.ip_address("10.61.0.1"),
        mtu=1420,
    )
    plan = started.overlayd_attach_plan(request=request)
    assert plan is not None and plan.mac is not None
    att = started.overlayd_attach(request=request.model_copy(update={"planned": plan}))
    assert att == plan
    assert f"link/ether {plan.mac} " in a.ip("link", "show", "eth0")
    assert ping(a, "10.61.0.1")


def test_global_address_reaches_node_address_through_eth1(
    started: LinuxBridgeDriver, host_ns: Netns, make_netns: Callable[[str], Netns]
) -> None:
    # A port-less bridge stands in for the WireGuard device holding the node address.
    host_ns.ip("link", "add", "wgstand", "type", "bridge")
    host_ns.ip("addr", "add", "10.200.0.1/16", "dev", "wgstand")
    host_ns.ip("link", "set", "wgstand", "up")
    bridge = _bridge(started, "zl-ft-web-b", "10.61.0.0/24", "service:web")
    c = make_netns("c")
    att = _attach(started, bridge, c, 2, global_address="10.200.0.9/16")
    assert "10.200.0.0/16 dev eth1" in c.ip("route")
    assert f"10.200.0.9 dev {att.interfaces[1]}" in host_ns.ip("route")
    assert ping(c, "10.200.0.1")
    # Another local container's global address: answered by proxy ARP, routed by the host.
    d = make_netns("d")
    _attach(started, bridge, d, 3, global_address="10.200.0.10/16")
    assert ping(c, "10.200.0.10")
    assert ping(d, "10.200.0.9")


def test_ipv6_global_address_is_routed_via_the_host_end(
    started: LinuxBridgeDriver, host_ns: Netns, make_netns: Callable[[str], Netns]
) -> None:
    # IPv6 has no proxy NDP for a prefix: eth1 holds a /128 and routes the
    # cluster prefix via fe80::1 on its host end.
    host_ns.ip("link", "add", "wgstand", "type", "bridge")
    host_ns.ip("addr", "add", "fd20::1/64", "dev", "wgstand", "nodad")
    host_ns.ip("link", "set", "wgstand", "up")
    bridge = _bridge(started, "zl-ft-web-b", "10.61.0.0/24", "service:web")
    c, d = make_netns("c"), make_netns("d")
    att = _attach(started, bridge, c, 2, global_address="fd20::9/64")
    _attach(started, bridge, d, 3, global_address="fd20::a/64")
    assert "inet6 fd20::9/128" in c.ip("-6", "addr", "show", "dev", "eth1")
    assert "fd20::/64 via fe80::1 dev eth1" in c.ip("-6", "route")
    assert "fe80::1/64" in host_ns.ip("-6", "addr", "show", "dev", att.interfaces[1])
    assert f"fd20::9 dev {att.interfaces[1]}" in host_ns.ip("-6", "route")
    assert ping(c, "fd20::1")
    # Another local container's global address, routed by the host.
    assert ping(c, "fd20::a")
    assert ping(d, "fd20::9")
    # eth0 stays IPv4 only and silent on IPv6.
    assert "inet6" not in c.ip("-6", "addr", "show", "dev", "eth0")


def test_detach_and_reconcile_remove_host_veths(
    started: LinuxBridgeDriver, host_ns: Netns, make_netns: Callable[[str], Netns]
) -> None:
    bridge = _bridge(started, "zl-ft-web-b", "10.61.0.0/24", "service:web")
    a, b = make_netns("a"), make_netns("b")
    att_a = _attach(started, bridge, a, 2)
    att_b = _attach(started, bridge, b, 3)
    assert started.overlayd_detach(attachment=att_a) is True
    assert att_a.interfaces[0] not in host_ns.ip("link")
    # b is no longer recorded: reconcile removes its veth, keeps the bridge.
    report = started.overlayd_reconcile(request=ReconcileRequest(devices=(bridge,)))
    assert report is not None
    assert report.removed == att_b.interfaces
    assert report.adopted == (bridge.name,)
    started._nl().flush_deletions()
    links = host_ns.ip("link")
    assert att_b.interfaces[0] not in links
    assert "zx" not in links


def test_attachment_alive_follows_namespace_identity(
    started: LinuxBridgeDriver, make_netns: Callable[[str], Netns]
) -> None:
    bridge = _bridge(started, "zl-ft-web-b", "10.61.0.0/24", "service:web")
    a = make_netns("a")
    att = _attach(started, bridge, a, 2)
    assert started.overlayd_attachment_alive(attachment=att) is True
    stale = att.model_copy(update={"extra": {**att.extra, "netns_inode": 1}})
    assert started.overlayd_attachment_alive(attachment=stale) is False
    gone = att.model_copy(update={"handle": NetnsHandle(path=a.path + "-gone")})
    assert started.overlayd_attachment_alive(attachment=gone) is False


@pytest.fixture
def uplink(host_ns: Netns, make_netns: Callable[[str], Netns]) -> Netns:
    """A namespace playing the outside world, linked to the host at 192.168.77.0/24."""
    outside = make_netns("up")
    link_outside(host_ns, outside, "192.168.77.0/24")
    return outside


def test_masquerade_and_port_mapping_carry_traffic(
    started: LinuxBridgeDriver, uplink: Netns, make_netns: Callable[[str], Netns]
) -> None:
    bridge = _bridge(started, "zl-ft-web-b", "10.61.0.0/24", "service:web")
    c = make_netns("c")
    _attach(started, bridge, c, 2)
    # Without NAT the datagram leaves with the container's own address.
    assert udp_probe(c, "192.168.77.2", 7001, uplink, 7001) == "10.61.0.2"
    rule = MasqueradeRule(
        subnet=ipaddress.ip_network("10.61.0.0/24"),
        exempt=(ipaddress.ip_network("10.61.0.0/16"),),
    )
    assert started.overlayd_nat_masquerade(rule=rule, enable=True) is True
    assert udp_probe(c, "192.168.77.2", 7002, uplink, 7002) == "192.168.77.1"
    mapping = PortMapping(
        protocol="udp",
        host_port=18053,
        container_ip=ipaddress.ip_address("10.61.0.2"),
        container_port=53,
    )
    assert started.overlayd_nat_port_mapping(mapping=mapping, enable=True) is True
    assert udp_probe(uplink, "192.168.77.1", 18053, c, 53) == "192.168.77.2"
    assert started.overlayd_nat_port_mapping(mapping=mapping, enable=False) is True
    assert udp_probe(uplink, "192.168.77.1", 18053, c, 53, timeout=1.0) is None
    assert started.overlayd_nat_masquerade(rule=rule, enable=False) is True
    assert udp_probe(c, "192.168.77.2", 7003, uplink, 7003) == "10.61.0.2"
