"""Policy of LinuxBridgeDriver against the in-memory netlink, nft and namespaces."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from overlayd.config import EngineConfig
from overlayd.errors import AttachError
from overlayd.errors import ConfigError
from overlayd.errors import DeviceError
from overlayd.errors import NatError
from overlayd.errors import NoDriverError
from overlayd.errors import NotSupported
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.model import DeviceSpec
from overlayd.model import LinuxPidHandle
from overlayd.model import MasqueradeRule
from overlayd.model import NetnsHandle
from overlayd.model import PortMapping
from overlayd.model import ReconcileRequest
from overlayd.model import WindowsContainerHandle
from overlayd.model import handle_key
from overlayd.names import veth_host_name
from overlayd.plugins import Hooks
from overlayd.plugins import make_plugin_manager
from overlayd.plugins import register_drivers
from overlayd.testing.nodes import node_info
from overlayd_linux_bridge.doubles import FakeNamespaces
from overlayd_linux_bridge.doubles import FakeNft
from overlayd_linux_bridge.driver import ALIAS_PREFIX
from overlayd_linux_bridge.driver import LinuxBridgeDriver
from overlayd_linux_bridge.fakenetlink import FakeLink
from overlayd_linux_bridge.fakenetlink import FakeNetlink
from overlayd_linux_bridge.linkapi import FORWARDING_SYSCTLS
from overlayd_linux_bridge.linkapi import RouteSpec
from overlayd_linux_bridge.linkapi import VethSpec
from overlayd_linux_bridge.nft import PORT_GROUP
from overlayd_linux_bridge.nft import Nftables
from overlayd_linux_bridge.nft import mld_filter_ruleset

NET = ipaddress.ip_network("10.50.0.0/24")
GW = ipaddress.ip_interface("10.50.0.1/24")


@pytest.fixture
def netlink() -> FakeNetlink:
    return FakeNetlink()


@pytest.fixture
def backend() -> FakeNft:
    return FakeNft()


@pytest.fixture
def namespaces(netlink: FakeNetlink) -> FakeNamespaces:
    return FakeNamespaces(netlink)


@pytest.fixture
def driver(netlink: FakeNetlink, backend: FakeNft, namespaces: FakeNamespaces) -> LinuxBridgeDriver:
    drv = LinuxBridgeDriver(netlink=netlink, nft=Nftables(backend), namespaces=namespaces)
    drv.overlayd_configure(config=EngineConfig(drivers=[]))
    return drv


def bridge_spec(name: str = "zl-t-web-b", subnet: str = "10.50.0.0/24") -> DeviceSpec:
    net = ipaddress.ip_network(subnet)
    return DeviceSpec(
        kind="bridge",
        name=name,
        owner="service:web",
        addresses=(ipaddress.ip_interface(f"{net.network_address + 1}/{net.prefixlen}"),),
        mtu=1420,
        subnet=net,
    )


def make_request(
    segment: Device, handle: Any, *, global_address: str | None = None, n: int = 2
) -> AttachRequest:
    return AttachRequest(
        handle=handle,
        service="web",
        segment=segment,
        address=ipaddress.ip_interface(f"10.50.0.{n}/24"),
        gateway=GW.ip,
        global_address=ipaddress.ip_interface(global_address) if global_address else None,
        mtu=1420,
    )


@pytest.fixture
def bridge(driver: LinuxBridgeDriver) -> Device:
    device = driver.overlayd_device_create(spec=bridge_spec())
    assert device is not None
    return device


def ns_of(netlink: FakeNetlink, namespaces: FakeNamespaces, path: str) -> Any:
    return netlink.namespaces[namespaces.paths[path][0]]


def _attached(
    driver: LinuxBridgeDriver,
    namespaces: FakeNamespaces,
    bridge: Device,
    path: str = "/run/netns/c1",
    n: int = 2,
    global_address: str | None = None,
) -> Attachment:
    """The workload in a new namespace at ``path``, attached at 10.50.0.``n``."""
    namespaces.add(path)
    request = make_request(bridge, NetnsHandle(path=path), n=n, global_address=global_address)
    att = driver.overlayd_attach(request=request)
    assert att is not None
    return att


# -- describe / configure ------------------------------------------------------


def test_describe_declares_bridges_pid_netns_and_capabilities(driver: LinuxBridgeDriver) -> None:
    info = driver.overlayd_describe()
    assert info.name == "linux_bridge"
    assert info.device_kinds == {"bridge"}
    assert info.attach_kinds == {"linux_pid", "netns"}
    assert info.platforms == {"linux"}
    assert info.capabilities == {
        Capability.DEVICES,
        Capability.ATTACH,
        Capability.NAT,
        Capability.RECONCILE,
    }


def test_configure_rejects_unknown_key_naming_it() -> None:
    drv = LinuxBridgeDriver(netlink=FakeNetlink())
    config = EngineConfig(drivers=[], driver_settings={"linux_bridge": {"bogus_key": 1}})
    with pytest.raises(ConfigError, match="bogus_key"):
        drv.overlayd_configure(config=config)


def test_configure_rejects_unknown_nat_backend() -> None:
    drv = LinuxBridgeDriver(netlink=FakeNetlink())
    config = EngineConfig(drivers=[], driver_settings={"linux_bridge": {"nat_backend": "iptables"}})
    with pytest.raises(ConfigError, match="nat_backend"):
        drv.overlayd_configure(config=config)


def test_warm_up_only_asks_the_adapter_to_open_its_sockets(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, backend: FakeNft
) -> None:
    links = dict(netlink.host.links)
    driver.overlayd_warm_up()
    assert netlink.calls == [("warm_up", {})]
    assert netlink.host.links == links
    assert backend.commands == []  # no nftables either


# -- devices -------------------------------------------------------------------


def test_device_create_tags_bridge_and_enables_forwarding_once(
    driver: LinuxBridgeDriver, netlink: FakeNetlink
) -> None:
    first = driver.overlayd_device_create(spec=bridge_spec())
    second = driver.overlayd_device_create(spec=bridge_spec())
    assert first is not None
    assert second is not None
    assert first == second
    assert first.driver == "linux_bridge"
    link = netlink.host.links["zl-t-web-b"]
    assert link.kind == "bridge"
    assert link.up
    assert link.mtu == 1420
    assert link.alias == f"{ALIAS_PREFIX}service:web"
    assert link.addresses == [GW]
    assert netlink.sysctls[FORWARDING_SYSCTLS[4]] == "1"
    assert netlink.sysctls[FORWARDING_SYSCTLS[6]] == "0"
    assert [c for c, _ in netlink.calls].count("enable_forwarding") == 1


def test_first_bridge_creates_the_mld_filter_on_overlayds_port_group(
    driver: LinuxBridgeDriver, backend: FakeNft
) -> None:
    assert backend.bridge_table is None
    driver.overlayd_device_create(spec=bridge_spec())
    assert backend.bridge_table == mld_filter_ruleset(PORT_GROUP)
    assert f"meta iifgroup {PORT_GROUP:#x} icmpv6 type" in backend.bridge_table
    assert "mld2-listener-report" in backend.bridge_table
    count = len(backend.commands)
    driver.overlayd_device_create(spec=bridge_spec("zl-t-db-b", "10.51.0.0/24"))
    assert len(backend.commands) == count  # once per driver, not per bridge


def test_refused_mld_filter_leaves_bridges_working(
    driver: LinuxBridgeDriver, backend: FakeNft, caplog: pytest.LogCaptureFixture
) -> None:
    backend.refuse_bridge_table = True
    device = driver.overlayd_device_create(spec=bridge_spec())
    assert device is not None and device.name == "zl-t-web-b"
    assert "MLD reports stay flooded" in caplog.text


def test_reconcile_after_firewall_reload_recreates_the_mld_filter(
    driver: LinuxBridgeDriver, backend: FakeNft
) -> None:
    bridge = driver.overlayd_device_create(spec=bridge_spec())
    assert bridge is not None
    backend.wipe()
    report = driver.overlayd_reconcile(request=ReconcileRequest(devices=(bridge,)))
    assert report is not None and not report.errors
    assert backend.bridge_table == mld_filter_ruleset(PORT_GROUP)


def test_reconcile_after_flush_ruleset_recreates_and_reports_both_tables(
    driver: LinuxBridgeDriver, backend: FakeNft, bridge: Device
) -> None:
    """The engine re-applies recorded masquerades before the driver's pass, which
    recreates ``inet overlayd`` on the way: ``bridge overlayd`` must still be
    noticed, and both reported."""
    rule = MasqueradeRule(subnet=NET, exempt=(ipaddress.ip_network("10.0.0.0/8"),))
    assert driver.overlayd_nat_masquerade(rule=rule, enable=True)
    backend.wipe()
    assert driver.overlayd_nat_masquerade(rule=rule, enable=True)  # the engine's re-ensure
    request = ReconcileRequest(devices=(bridge,), masquerades=(rule,))
    report = driver.overlayd_reconcile(request=request)
    assert report is not None and not report.errors
    assert backend.bridge_table == mld_filter_ruleset(PORT_GROUP)
    assert {"nft table inet overlayd", "nft table bridge overlayd"} <= set(report.recreated)
    again = driver.overlayd_reconcile(request=request)
    assert again is not None and not again.recreated


def test_only_bridge_ports_join_the_port_group(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge, global_address="10.200.0.7/32")
    port, routed = (netlink.host.links[name] for name in att.interfaces)
    assert port.master is not None and port.group == PORT_GROUP
    assert routed.master is None and routed.group == 0


def test_device_create_adopts_existing_bridge_without_recreating(
    driver: LinuxBridgeDriver, netlink: FakeNetlink
) -> None:
    driver.overlayd_device_create(spec=bridge_spec())
    index = netlink.host.links["zl-t-web-b"].index
    driver.overlayd_device_create(spec=bridge_spec())
    assert netlink.host.links["zl-t-web-b"].index == index
    assert not any(c == "delete_link" for c, _ in netlink.calls)


def test_ipv6_subnet_enables_ipv6_forwarding(
    driver: LinuxBridgeDriver, netlink: FakeNetlink
) -> None:
    driver.overlayd_device_create(spec=bridge_spec("zl-t-v6-b", "fd00:50::/64"))
    assert netlink.sysctls[FORWARDING_SYSCTLS[6]] == "1"


def test_device_create_ignores_other_kinds(driver: LinuxBridgeDriver) -> None:
    spec = bridge_spec().model_copy(update={"kind": "wireguard"})
    assert driver.overlayd_device_create(spec=spec) is None
    assert driver.overlayd_device_list(kind="wireguard") == []


def test_device_list_shows_only_tagged_bridges(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, bridge: Device
) -> None:
    netlink.ensure_bridge("zl-zlayer-b", [])  # ZLayer's own, untagged
    netlink.ensure_bridge("docker0", [], alias="docker")
    listed = driver.overlayd_device_list(kind="bridge")
    assert [(d.name, d.owner, d.driver) for d in listed] == [
        ("zl-t-web-b", "service:web", "linux_bridge")
    ]


def test_device_delete_ours_then_absent_and_refuses_untagged(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, bridge: Device
) -> None:
    assert driver.overlayd_device_delete(device=bridge) is True
    assert "zl-t-web-b" not in netlink.host.links
    assert driver.overlayd_device_delete(device=bridge) is False
    netlink.ensure_bridge("zl-t-web-b", [])  # someone else's bridge, same name
    with pytest.raises(DeviceError, match="not a bridge created by overlayd"):
        driver.overlayd_device_delete(device=bridge)
    assert "zl-t-web-b" in netlink.host.links
    foreign = bridge.model_copy(update={"driver": "other"})
    with pytest.raises(NoDriverError, match="'other', which is not loaded"):
        _facade(driver).device_delete(foreign)
    assert "zl-t-web-b" in netlink.host.links


# -- attach --------------------------------------------------------------------


def test_attach_netns_plumbs_eth0_on_bridge(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge)
    host_name = veth_host_name(att.key, 0)
    assert att.interfaces == (host_name,)
    assert att.driver == "linux_bridge"
    assert att.ip == ipaddress.ip_address("10.50.0.2")
    assert att.extra["netns_inode"] == namespaces.paths["/run/netns/c1"][1]
    host_end = netlink.host.links[host_name]
    assert host_end.master == netlink.host.links["zl-t-web-b"].index
    assert host_end.up
    assert host_end.mtu == 1420
    ns = ns_of(netlink, namespaces, "/run/netns/c1")
    assert ns.links["eth0"].addresses == [ipaddress.ip_interface("10.50.0.2/24")]
    assert ns.links["lo"].up
    assert ns.routes == [("eth0", RouteSpec(ipaddress.ip_network("0.0.0.0/0"), GW.ip))]


def test_cni_attach_names_the_interface_and_records_mac_mtu_routes(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    namespaces.add("/run/netns/c1")
    handle = NetnsHandle(path="/run/netns/c1", container_id="abc", ifname="net1", network="n")
    att = driver.overlayd_attach(request=make_request(bridge, handle))
    assert att is not None
    ns = ns_of(netlink, namespaces, "/run/netns/c1")
    assert "eth0" not in ns.links
    assert ns.links["net1"].addresses == [ipaddress.ip_interface("10.50.0.2/24")]
    assert ns.routes == [("net1", RouteSpec(ipaddress.ip_network("0.0.0.0/0"), GW.ip))]
    assert att.ifname == "net1"
    assert att.mac == ns.links["net1"].mac
    assert att.mtu == 1420
    assert att.routes == (ipaddress.ip_network("0.0.0.0/0"),)
    # The host end is named after the CNI identity, not the path.
    assert att.interfaces == (veth_host_name("cni:n:abc:net1", 0),)


def test_attach_without_default_route_routes_the_cluster_via_the_gateway(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    namespaces.add("/run/netns/c1")
    handle = NetnsHandle(path="/run/netns/c1", container_id="abc", ifname="net1")
    node = node_info("10.48.0.0/14", "10.50.0.0/20", interface="zl-g")
    request = make_request(bridge, handle).model_copy(update={"default_route": False, "node": node})
    att = driver.overlayd_attach(request=request)
    assert att is not None
    cluster = RouteSpec(ipaddress.ip_network("10.48.0.0/14"), GW.ip)
    assert ns_of(netlink, namespaces, "/run/netns/c1").routes == [("net1", cluster)]
    assert att.routes == (cluster.dst,)
    # Reconcile recreates it the same way when the host end vanished.
    netlink.delete_link(att.interfaces[0])  # takes its peer and the peer's routes along
    assert ns_of(netlink, namespaces, "/run/netns/c1").routes == []
    report = driver.overlayd_reconcile(
        request=ReconcileRequest(devices=(bridge,), attachments=(att,))
    )
    assert report is not None and att.key in report.recreated
    assert ns_of(netlink, namespaces, "/run/netns/c1").routes == [("net1", cluster)]


def test_attach_with_global_address_adds_routed_eth1(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge, global_address="10.200.0.9/16")
    key = att.key
    assert att.interfaces == (veth_host_name(key, 0), veth_host_name(key, 1))
    assert att.global_ip == ipaddress.ip_address("10.200.0.9")
    g = netlink.host.links[veth_host_name(key, 1)]
    assert g.master is None
    assert g.proxy_arp
    assert g.host_routes == [ipaddress.ip_network("10.200.0.9/32")]
    ns = ns_of(netlink, namespaces, "/run/netns/c1")
    assert ns.links["eth1"].addresses == [ipaddress.ip_interface("10.200.0.9/16")]
    # Only eth0 carries the default route; the cluster CIDR is on-link on eth1.
    assert [r[0] for r in ns.routes] == ["eth0"]


def test_ipv6_global_address_is_a_host_route_via_the_host_end(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge, global_address="fd20::9/64")
    assert att.global_ip == ipaddress.ip_address("fd20::9")
    g = netlink.host.links[veth_host_name(att.key, 1)]
    assert not g.proxy_arp
    assert g.addresses == [ipaddress.ip_interface("fe80::1/64")]
    assert g.host_routes == [ipaddress.ip_network("fd20::9/128")]
    ns = ns_of(netlink, namespaces, "/run/netns/c1")
    assert ns.links["eth1"].addresses == [ipaddress.ip_interface("fd20::9/128")]
    assert (
        "eth1",
        RouteSpec(ipaddress.ip_network("fd20::/64"), ipaddress.ip_address("fe80::1")),
    ) in ns.routes
    assert netlink.sysctls["/proc/sys/net/ipv6/conf/all/forwarding"] == "1"


def test_attach_linux_pid_opens_proc_namespace_once(
    driver: LinuxBridgeDriver, namespaces: FakeNamespaces, bridge: Device
) -> None:
    namespaces.add("/proc/4242/ns/net")
    att = driver.overlayd_attach(
        request=make_request(bridge, LinuxPidHandle(pid=4242), global_address="10.200.0.9/16")
    )
    assert att is not None
    assert namespaces.opened == ["/proc/4242/ns/net"]


def test_attach_of_dead_process_names_the_pid(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, bridge: Device
) -> None:
    with pytest.raises(AttachError, match="process 4242 does not exist"):
        driver.overlayd_attach(request=make_request(bridge, LinuxPidHandle(pid=4242)))
    assert not [n for n in netlink.host.links if n.startswith("zv")]


def test_attach_rolls_back_eth0_when_eth1_fails(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    namespaces.add("/run/netns/c1")
    handle = NetnsHandle(path="/run/netns/c1")
    real = netlink.create_veth_into_netns
    calls = 0

    def flaky(spec: VethSpec) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise AttachError("injected failure on eth1")
        return real(spec)

    netlink.create_veth_into_netns = flaky  # type: ignore[method-assign]
    with pytest.raises(AttachError, match="injected"):
        driver.overlayd_attach(request=make_request(bridge, handle, global_address="10.200.0.9/16"))
    assert veth_host_name(handle_key(handle), 0) not in netlink.host.links
    netlink.flush_deletions()
    assert "eth0" not in ns_of(netlink, namespaces, "/run/netns/c1").links


def test_attach_replaces_leftover_of_crashed_attempt(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    fd = namespaces.add("/run/netns/c1")
    handle = NetnsHandle(path="/run/netns/c1")
    name = veth_host_name(handle_key(handle), 0)
    # A crashed attach left the host end (and its peer) behind.
    netlink.create_veth_into_netns(
        VethSpec(
            host_name=name,
            netns_fd=fd,
            container_ifname="eth0",
            addresses=[ipaddress.ip_interface("10.50.0.77/24")],
        )
    )
    att = driver.overlayd_attach(request=make_request(bridge, handle))
    assert att is not None
    ns = ns_of(netlink, namespaces, "/run/netns/c1")
    assert ns.links["eth0"].addresses == [ipaddress.ip_interface("10.50.0.2/24")]
    assert netlink.host.links[name].master == netlink.host.links["zl-t-web-b"].index


def test_attach_refuses_taken_container_name_without_touching_it(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    namespaces.add("/run/netns/c1")
    ns = ns_of(netlink, namespaces, "/run/netns/c1")
    ns.links["eth0"] = FakeLink("eth0", 50, None)
    with pytest.raises(AttachError, match="eth0 already exists"):
        driver.overlayd_attach(request=make_request(bridge, NetnsHandle(path="/run/netns/c1")))
    assert "eth0" in ns.links


def _facade(driver: object) -> Hooks:
    """The engine's hook facade with only ``driver`` loaded."""
    pm = make_plugin_manager(include_core_defaults=False)
    register_drivers(pm, [driver])
    return Hooks(pm)


def test_attach_declines_foreign_segment_and_windows_handles(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, bridge: Device
) -> None:
    foreign = bridge.model_copy(update={"driver": "other"})
    links = set(netlink.host.links)
    with pytest.raises(NoDriverError, match="'other', which is not loaded"):
        _facade(driver).attach(make_request(foreign, LinuxPidHandle(pid=1)))
    assert set(netlink.host.links) == links
    win = WindowsContainerHandle(container_id="abc")
    assert driver.overlayd_attach(request=make_request(bridge, win)) is None


# -- detach / alive ------------------------------------------------------------


def test_detach_frees_names_at_once_then_reports_absent(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge)
    assert driver.overlayd_detach(attachment=att) is True
    assert not netlink.link_exists(att.interfaces[0])  # before any flush
    assert driver.overlayd_detach(attachment=att) is False
    # Re-attach right away under the same names works.
    again = driver.overlayd_attach(request=make_request(bridge, att.handle))
    assert again is not None
    assert again.interfaces == att.interfaces


def test_detach_after_namespace_died_succeeds_with_false(
    driver: LinuxBridgeDriver, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge)
    namespaces.kill("/run/netns/c1")
    assert driver.overlayd_detach(attachment=att) is False


def test_alive_checks_namespace_identity(
    driver: LinuxBridgeDriver, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge)
    assert driver.overlayd_attachment_alive(attachment=att) is True
    namespaces.kill("/run/netns/c1")
    assert driver.overlayd_attachment_alive(attachment=att) is False
    namespaces.add("/run/netns/c1")  # same path, new namespace (reused pid)
    assert driver.overlayd_attachment_alive(attachment=att) is False


def test_dns_endpoint_configure_is_declined(
    driver: LinuxBridgeDriver, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge)
    result = driver.overlayd_dns_endpoint_configure(
        attachment=att, servers=[GW.ip], domain="prod.local"
    )
    assert result is None


# -- reconcile -----------------------------------------------------------------


def test_reconcile_adopts_reports_gone_and_removes_only_ours(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    live = _attached(driver, namespaces, bridge, "/run/netns/live", n=2)
    dead = _attached(driver, namespaces, bridge, "/run/netns/dead", n=3)
    stray = _attached(driver, namespaces, bridge, "/run/netns/stray", n=4)
    namespaces.kill("/run/netns/dead")
    stale_bridge = driver.overlayd_device_create(spec=bridge_spec("zl-t-old-b", "10.51.0.0/24"))
    assert stale_bridge is not None
    netlink.ensure_bridge("zl-zlayer-b", [])  # not ours: untagged
    netlink.host.links["zvforeign00000"] = FakeLink("zvforeign00000", 90, "veth")
    netlink.delete_links_batch([])  # no-op
    netlink.host.links["zx00000000000ff"] = FakeLink("zx00000000000ff", 91, "veth")

    request = ReconcileRequest(devices=(bridge,), attachments=(live, dead))
    report = driver.overlayd_reconcile(request=request)
    assert report is not None
    assert set(report.adopted) == {bridge.name, live.key}
    assert report.gone == (dead.key,)
    assert set(report.removed) == {stray.interfaces[0], "zl-t-old-b"}
    assert not report.errors
    assert "zl-zlayer-b" in netlink.host.links
    assert "zvforeign00000" in netlink.host.links  # wrong shape: not ours
    # A tombstone left by an earlier run is deleted before anything is replumbed.
    assert "zx00000000000ff" not in netlink.host.links
    assert live.interfaces[0] in netlink.host.links

    netlink.flush_deletions()
    second = driver.overlayd_reconcile(request=request)
    assert second is not None
    assert not second.removed
    assert not second.recreated


def test_detach_returns_with_the_workload_interface_gone(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    """A CNI runtime may reuse the interface name as soon as DEL returns."""
    att = _attached(driver, namespaces, bridge)
    assert "eth0" in ns_of(netlink, namespaces, "/run/netns/c1").links
    assert driver.overlayd_detach(attachment=att) is True
    assert "eth0" not in ns_of(netlink, namespaces, "/run/netns/c1").links
    assert not any(name.startswith("zx") for name in netlink.host.links)


def test_reconcile_after_a_crash_mid_detach_replumbs_at_the_first_pass(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    """A detach cut short by a crash left the host end a tombstone that still holds
    eth0 in the workload, and the record attached: the first (startup) reconcile
    repairs it, not only a later manual one."""
    att = _attached(driver, namespaces, bridge)
    # The detach's first step (tombstoning the host end) ran, then the daemon
    # died before the kernel deleted the link.
    assert netlink.delete_links_batch(list(att.interfaces)) == 1
    netlink.crash()
    assert "eth0" in ns_of(netlink, namespaces, "/run/netns/c1").links
    request = ReconcileRequest(devices=(bridge,), attachments=(att,), startup=True)
    report = driver.overlayd_reconcile(request=request)
    assert report is not None
    assert not report.errors
    assert att.key in report.recreated
    assert netlink.link_exists(att.interfaces[0])
    assert "eth0" in ns_of(netlink, namespaces, "/run/netns/c1").links
    assert not any(name.startswith("zx") for name in netlink.host.links)


def test_plan_is_what_the_attach_then_reports(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    namespaces.add("/run/netns/c1")
    request = make_request(
        bridge, NetnsHandle(path="/run/netns/c1"), global_address="10.200.0.9/16"
    )
    before = set(netlink.host.links)
    plan = driver.overlayd_attach_plan(request=request)
    assert plan is not None
    assert set(netlink.host.links) == before, "a plan changes nothing on the host"
    assert "eth0" not in ns_of(netlink, namespaces, "/run/netns/c1").links
    assert plan.mac is not None
    first = int(plan.mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01, "locally administered unicast"
    att = driver.overlayd_attach(request=request.model_copy(update={"planned": plan}))
    assert att == plan
    assert ns_of(netlink, namespaces, "/run/netns/c1").links["eth0"].mac == plan.mac
    assert driver.overlayd_attach_plan(request=request) != plan, "a new MAC per plan"


def test_an_attach_that_finds_another_namespace_reports_it(
    driver: LinuxBridgeDriver, namespaces: FakeNamespaces, bridge: Device
) -> None:
    """The namespace at the path was replaced between the plan and the attach:
    the attach reports the namespace it plugged into, and the engine records that."""
    namespaces.add("/run/netns/c1")
    request = make_request(bridge, NetnsHandle(path="/run/netns/c1"))
    plan = driver.overlayd_attach_plan(request=request)
    assert plan is not None
    stale = plan.model_copy(update={"extra": {**plan.extra, "netns_inode": -1}})
    att = driver.overlayd_attach(request=request.model_copy(update={"planned": stale}))
    assert att is not None and att != stale
    assert att.mac == plan.mac
    assert att.extra["netns_inode"] == plan.extra["netns_inode"]


def test_no_plan_for_a_missing_namespace_or_another_platform(
    driver: LinuxBridgeDriver, bridge: Device
) -> None:
    gone = make_request(bridge, NetnsHandle(path="/run/netns/gone"))
    assert driver.overlayd_attach_plan(request=gone) is None
    win = make_request(bridge, WindowsContainerHandle(container_id="c" * 12))
    assert driver.overlayd_attach_plan(request=win) is None


def test_replumbed_interface_keeps_its_recorded_mac(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    """A record written before its veth (a crash between the two) or a veth deleted
    behind our back: the repair gives the interface the MAC the record holds."""
    att = _attached(driver, namespaces, bridge)
    recorded = att.model_copy(update={"mac": "02:11:22:33:44:55"})
    netlink.delete_link(att.interfaces[0])
    netlink.flush_deletions()
    assert "eth0" not in ns_of(netlink, namespaces, "/run/netns/c1").links
    report = driver.overlayd_reconcile(
        request=ReconcileRequest(devices=(bridge,), attachments=(recorded,), startup=True)
    )
    assert report is not None and recorded.key in report.recreated
    assert ns_of(netlink, namespaces, "/run/netns/c1").links["eth0"].mac == "02:11:22:33:44:55"


def test_reconcile_recreates_missing_bridge_and_veth_of_live_workload(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge)
    netlink.delete_link(att.interfaces[0])  # deleted behind our back
    netlink.delete_link(bridge.name)
    report = driver.overlayd_reconcile(
        request=ReconcileRequest(devices=(bridge,), attachments=(att,))
    )
    assert report is not None
    assert set(report.recreated) == {bridge.name, att.key}
    host_end = netlink.host.links[att.interfaces[0]]
    assert host_end.master == netlink.host.links[bridge.name].index
    assert netlink.host.links[bridge.name].alias == f"{ALIAS_PREFIX}service:web"


def test_reconcile_replumbs_veth_left_without_its_bridge(
    driver: LinuxBridgeDriver, netlink: FakeNetlink, namespaces: FakeNamespaces, bridge: Device
) -> None:
    att = _attached(driver, namespaces, bridge)
    netlink.delete_link(bridge.name)  # the veth survives, but is no bridge port any more
    assert netlink.host.links[att.interfaces[0]].master is None
    report = driver.overlayd_reconcile(
        request=ReconcileRequest(devices=(bridge,), attachments=(att,))
    )
    assert report is not None
    assert set(report.recreated) == {bridge.name, att.key}
    assert netlink.host.links[att.interfaces[0]].master == netlink.host.links[bridge.name].index
    again = driver.overlayd_reconcile(
        request=ReconcileRequest(devices=(bridge,), attachments=(att,))
    )
    assert again is not None
    assert set(again.adopted) == {bridge.name, att.key}


# -- NAT -----------------------------------------------------------------------


def test_masquerade_is_element_updates_with_shared_exempt(
    driver: LinuxBridgeDriver, backend: FakeNft
) -> None:
    cluster = ipaddress.ip_network("10.200.0.0/16")
    a = MasqueradeRule(subnet=ipaddress.ip_network("10.200.1.0/24"), exempt=(cluster,))
    b = MasqueradeRule(subnet=ipaddress.ip_network("10.200.2.0/24"), exempt=(cluster,))
    assert driver.overlayd_nat_masquerade(rule=a, enable=True) is True
    assert backend.full_applies == 1  # the table did not exist yet
    assert driver.overlayd_nat_masquerade(rule=b, enable=True) is True
    assert driver.overlayd_nat_masquerade(rule=b, enable=True) is True
    assert backend.full_applies == 1
    assert set(backend.elements["masq4"]) == {"10.200.1.0/24", "10.200.2.0/24"}
    assert driver.overlayd_nat_masquerade(rule=a, enable=False) is True
    assert set(backend.elements["exempt4"]) == {"10.200.0.0/16"}  # b still needs it
    assert driver.overlayd_nat_masquerade(rule=b, enable=False) is True
    assert driver.overlayd_nat_masquerade(rule=b, enable=False) is True
    assert backend.elements["masq4"] == {}
    assert backend.elements["exempt4"] == {}


def test_masquerade_with_uplink_is_not_supported(driver: LinuxBridgeDriver) -> None:
    rule = MasqueradeRule(subnet=NET, uplink="eth9")
    with pytest.raises(NotSupported, match="uplink eth9"):
        driver.overlayd_nat_masquerade(rule=rule, enable=True)


def test_port_mapping_idempotent_and_conflict(driver: LinuxBridgeDriver, backend: FakeNft) -> None:
    pm = PortMapping(
        protocol="tcp",
        host_port=8080,
        container_ip=ipaddress.ip_address("10.50.0.2"),
        container_port=80,
    )
    assert driver.overlayd_nat_port_mapping(mapping=pm, enable=True) is True
    assert driver.overlayd_nat_port_mapping(mapping=pm, enable=True) is True
    assert backend.elements["pm4"] == {"tcp . 8080": "10.50.0.2 . 80"}
    other = pm.model_copy(update={"container_ip": ipaddress.ip_address("10.50.0.3")})
    with pytest.raises(NatError, match="already mapped"):
        driver.overlayd_nat_port_mapping(mapping=other, enable=True)
    assert driver.overlayd_nat_port_mapping(mapping=pm, enable=False) is True
    assert driver.overlayd_nat_port_mapping(mapping=pm, enable=False) is True
    assert backend.elements["pm4"] == {}


def test_wiped_table_is_rebuilt_whole(driver: LinuxBridgeDriver, backend: FakeNft) -> None:
    rule = MasqueradeRule(subnet=NET, exempt=(ipaddress.ip_network("10.0.0.0/8"),))
    driver.overlayd_nat_masquerade(rule=rule, enable=True)
    backend.wipe()  # firewall reload
    pm = PortMapping(
        protocol="udp",
        host_port=5353,
        container_ip=ipaddress.ip_address("10.50.0.2"),
        container_port=53,
    )
    driver.overlayd_nat_port_mapping(mapping=pm, enable=True)
    assert backend.elements["masq4"] == {"10.50.0.0/24": ""}
    assert backend.elements["pm4"] == {"udp . 5353": "10.50.0.2 . 53"}
    backend.wipe()
    state = driver.apply_nat()
    assert state.masquerade == {NET}
    assert backend.exists
    assert backend.elements["exempt4"] == {"10.0.0.0/8": ""}


def test_reconcile_on_startup_applies_recorded_nat(
    driver: LinuxBridgeDriver, backend: FakeNft
) -> None:
    backend.run("add table inet overlayd\ndelete table inet overlayd\n")
    backend.elements = {"masq4": {"10.99.0.0/24": ""}}  # stale element of a past run
    rule = MasqueradeRule(subnet=NET, exempt=(ipaddress.ip_network("10.0.0.0/8"),))
    report = driver.overlayd_reconcile(request=ReconcileRequest(masquerades=(rule,), startup=True))
    assert report is not None
    assert not report.errors
    assert backend.elements["masq4"] == {"10.50.0.0/24": ""}


def test_overlapping_subnets_keep_only_the_widest_in_the_set(
    driver: LinuxBridgeDriver, backend: FakeNft
) -> None:
    cluster = ipaddress.ip_network("10.240.0.0/16")
    service = MasqueradeRule(subnet=ipaddress.ip_network("10.240.4.0/22"), exempt=(cluster,))
    node = MasqueradeRule(subnet=ipaddress.ip_network("10.240.0.0/20"), exempt=(cluster,))
    driver.overlayd_nat_masquerade(rule=service, enable=True)
    driver.overlayd_nat_masquerade(rule=node, enable=True)
    assert set(backend.elements["masq4"]) == {"10.240.0.0/20"}
    driver.overlayd_nat_masquerade(rule=node, enable=False)
    assert set(backend.elements["masq4"]) == {"10.240.4.0/22"}
    assert backend.full_applies == 1


def test_new_driver_learns_table_left_by_previous_run(
    netlink: FakeNetlink, backend: FakeNft, namespaces: FakeNamespaces
) -> None:
    cluster = ipaddress.ip_network("10.240.0.0/16")
    node = MasqueradeRule(subnet=ipaddress.ip_network("10.240.0.0/20"), exempt=(cluster,))
    service = MasqueradeRule(subnet=ipaddress.ip_network("10.240.4.0/22"), exempt=(cluster,))
    first = LinuxBridgeDriver(netlink=netlink, nft=Nftables(backend), namespaces=namespaces)
    first.overlayd_nat_masquerade(rule=node, enable=True)
    # Restart: the engine re-sends the rules, the narrower one first.
    second = LinuxBridgeDriver(netlink=netlink, nft=Nftables(backend), namespaces=namespaces)
    assert second.overlayd_nat_masquerade(rule=service, enable=True) is True
    assert second.overlayd_nat_masquerade(rule=node, enable=True) is True
    assert set(backend.elements["masq4"]) == {"10.240.0.0/20"}
    assert backend.full_applies == 1


def test_startup_off_linux_is_not_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    drv = LinuxBridgeDriver()
    monkeypatch.setattr("sys.platform", "win32")
    with pytest.raises(NotSupported, match="needs Linux"):
        drv.overlayd_startup(context=None)


def test_nat_without_nftables_says_why(
    netlink: FakeNetlink, monkeypatch: pytest.MonkeyPatch
) -> None:
    drv = LinuxBridgeDriver(netlink=netlink)

    def missing(self: LinuxBridgeDriver) -> Any:
        raise NotSupported("Neither libnftables nor the nft binary is installed.")

    monkeypatch.setattr(LinuxBridgeDriver, "_make_nft_backend", missing)
    drv.overlayd_startup(context=None)
    with pytest.raises(NotSupported, match="nft binary is installed"):
        drv.overlayd_nat_masquerade(rule=MasqueradeRule(subnet=NET), enable=True)
    # Bridges still work without NAT.
    assert drv.overlayd_device_create(spec=bridge_spec()) is not None
