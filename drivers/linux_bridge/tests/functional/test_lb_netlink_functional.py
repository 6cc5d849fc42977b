"""The pyroute2 adapter against the real kernel, inside throwaway namespaces."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from ipaddress import ip_interface
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from overlayd.errors import AttachError
from overlayd.errors import DeviceError
from overlayd.names import is_tombstone
from overlayd.names import veth_host_name
from overlayd_linux.netns import run_in_netns
from overlayd_linux.rtnl import RTM_NEWLINK
from overlayd_linux.rtnl import RtnlError
from overlayd_linux.rtnl import RtnlSocket
from overlayd_linux.rtnl import link_change
from overlayd_linux_bridge.linkapi import STATIC_IPV6_SYSCTLS
from overlayd_linux_bridge.linkapi import TOMBSTONE_GROUP
from overlayd_linux_bridge.linkapi import IPInterface
from overlayd_linux_bridge.linkapi import LinkExistsError
from overlayd_linux_bridge.linkapi import Netlink
from overlayd_linux_bridge.linkapi import RouteSpec
from overlayd_linux_bridge.linkapi import VethSpec
from overlayd_linux_bridge.netlink import PyrouteNetlink
from overlayd_linux_bridge.netlink import bridge_mac
from overlayd_linux_bridge.nft import PORT_GROUP
from overlayd_linux_bridge.testing import Netns
from overlayd_linux_bridge.testing import ping

pytestmark = pytest.mark.privileged

BRIDGE = "zl-test-b"
GW4 = ip_interface("10.77.0.1/24")
GW6 = ip_interface("fd77::1/64")


def _veth(
    ns: Netns, *addresses: str, ifname: str = "eth0", host: str = "", **fields: Any
) -> VethSpec:
    """A veth into ``ns`` holding ``addresses``; its host end named after ``ns``
    (or ``host``). ``fields``: the spec's other fields."""
    return VethSpec(
        host_name=host or veth_host_name(f"test:{ns.name}", 0 if ifname == "eth0" else 1),
        netns_fd=ns.fd,
        container_ifname=ifname,
        addresses=[ip_interface(a) for a in addresses],
        **fields,
    )


def _attach(nl: Netlink, ns: Netns, n: int, *, bridge: str = BRIDGE, ifname: str = "eth0") -> str:
    addresses = (f"10.77.0.{n}/24", f"fd77::{n}/64")
    spec = _veth(ns, *addresses, ifname=ifname, gateways=[GW4.ip, GW6.ip], mtu=1400, bridge=bridge)
    nl.create_veth_into_netns(spec)
    return spec.host_name


def _bridge_with_containers(
    nl: Netlink, make_netns: Callable[[str], Netns], count: int, *addresses: IPInterface
) -> tuple[list[Netns], list[str]]:
    """``BRIDGE`` with ``addresses`` and ``count`` containers attached to it (from
    10.77.0.10 on): their namespaces and their veths' host ends."""
    nl.ensure_bridge(BRIDGE, list(addresses or (GW4,)))
    containers = [make_netns(f"c{i}") for i in range(count)]
    return containers, [_attach(nl, c, 10 + i) for i, c in enumerate(containers)]


def test_adapter_satisfies_protocol(netlink: PyrouteNetlink) -> None:
    adapter: Netlink = netlink
    assert adapter.link_exists("lo")


def test_warm_up_creates_and_changes_nothing(netlink: PyrouteNetlink, host_ns: Netns) -> None:
    def state() -> tuple[str, ...]:
        return tuple(
            host_ns.ip(*args)
            for args in (("-d", "link"), ("addr",), ("route",), ("-6", "route"), ("rule",))
        )

    before = state()
    forwarding = host_ns.sysctl("net/ipv4/ip_forward")
    netlink.warm_up()
    netlink.warm_up()  # idempotent
    assert state() == before
    assert host_ns.sysctl("net/ipv4/ip_forward") == forwarding
    assert netlink.ensure_bridge(BRIDGE, [GW4], mtu=1400) > 0  # the adapter works as before


def test_ensure_bridge_creates_and_is_idempotent(netlink: PyrouteNetlink, host_ns: Netns) -> None:
    index = netlink.ensure_bridge(BRIDGE, [GW4, GW6], mtu=1400)
    again = netlink.ensure_bridge(BRIDGE, [GW4, GW6], mtu=1400)
    assert again == index
    details = host_ns.ip("-d", "addr", "show", "dev", BRIDGE)
    assert details.count("inet 10.77.0.1/24") == 1
    assert details.count("inet6 fd77::1/64") == 1
    assert "stp_state 0" in details
    assert "mtu 1400" in details
    assert ",UP" in details


def test_bridge_has_a_fixed_mac_and_no_multicast_snooping(
    netlink: PyrouteNetlink, host_ns: Netns, make_netns: Callable[[str], Netns]
) -> None:
    netlink.ensure_bridge(BRIDGE, [GW4])
    info = json.loads(host_ns.ip("-d", "-j", "link", "show", "dev", BRIDGE))[0]
    assert info["address"] == bridge_mac(BRIDGE)
    assert info["linkinfo"]["info_data"]["mcast_snooping"] == 0
    # Without a fixed address a bridge takes its lowest port MAC: ports
    # coming and going would change the gateway's MAC under the containers.
    c1 = make_netns("c1")
    host = _attach(netlink, c1, 10)
    host_ns.ip("link", "set", "dev", host, "address", "00:00:00:00:00:01")
    info = json.loads(host_ns.ip("-j", "link", "show", "dev", BRIDGE))[0]
    assert info["address"] == bridge_mac(BRIDGE)


def test_bridge_ports_share_the_bridge_mac_and_add_no_fdb_entry(
    netlink: PyrouteNetlink, host_ns: Netns, make_netns: Callable[[str], Netns]
) -> None:
    netlink.ensure_bridge(BRIDGE, [GW4, GW6])
    c1, c2 = make_netns("c1"), make_netns("c2")
    hosts = [_attach(netlink, c1, 10), _attach(netlink, c2, 11)]
    for host in hosts:
        info = json.loads(host_ns.ip("-j", "link", "show", "dev", host))[0]
        assert info["address"] == bridge_mac(BRIDGE)
    # Each port with its own MAC would add a permanent ("local") entry to the
    # bridge's FDB; with the bridge's MAC they add none.
    out = subprocess.run(
        ["bridge", "-n", host_ns.name, "-j", "fdb", "show", "br", BRIDGE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    local = [e for e in json.loads(out) if e.get("state") == "permanent" and "master" in e]
    assert {e["ifname"] for e in local} == {BRIDGE}
    # The containers' own MACs stay distinct, and traffic flows.
    macs = {json.loads(c.ip("-j", "link", "show", "dev", "eth0"))[0]["address"] for c in (c1, c2)}
    assert len(macs) == 2 and bridge_mac(BRIDGE) not in macs
    assert ping(c1, "10.77.0.11")
    assert ping(c2, "10.77.0.1")


def test_only_ports_of_bridges_without_snooping_join_the_port_group(
    netlink: PyrouteNetlink, host_ns: Netns, make_netns: Callable[[str], Netns]
) -> None:
    # An adopted bridge keeps multicast snooping on (the kernel's default):
    # with a querier on the segment it needs its ports' MLD reports.
    host_ns.ip("link", "add", "zl-snoop-b", "type", "bridge")
    netlink.ensure_bridge("zl-snoop-b", [ip_interface("10.78.0.1/24")])
    netlink.ensure_bridge(BRIDGE, [GW4])
    adopted = _attach(netlink, make_netns("c1"), 10, bridge="zl-snoop-b")
    ours = _attach(netlink, make_netns("c2"), 11)

    def group(link: str) -> str:
        return str(json.loads(host_ns.ip("-d", "-j", "link", "show", "dev", link))[0]["group"])

    assert group(ours) == str(PORT_GROUP)
    assert group(adopted) == "default"  # group 0


def test_bridge_mac_is_stable_and_locally_administered() -> None:
    mac = bridge_mac(BRIDGE)
    assert mac == bridge_mac(BRIDGE) != bridge_mac("zl-other-b")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast


def test_ensure_bridge_adds_missing_address_without_recreating(
    netlink: PyrouteNetlink, host_ns: Netns
) -> None:
    index = netlink.ensure_bridge(BRIDGE, [GW4])
    assert netlink.ensure_bridge(BRIDGE, [GW4, GW6]) == index
    assert "fd77::1/64" in host_ns.ip("addr", "show", "dev", BRIDGE)


def test_ensure_bridge_refuses_non_bridge(netlink: PyrouteNetlink, host_ns: Netns) -> None:
    host_ns.ip("tuntap", "add", "zl-dummy-b", "mode", "tun")  # no dummy module here
    with pytest.raises(DeviceError, match="not a bridge"):
        netlink.ensure_bridge("zl-dummy-b", [GW4])


def test_two_containers_reach_each_other_and_gateway(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns]
) -> None:
    netlink.ensure_bridge(BRIDGE, [GW4, GW6])
    c1, c2 = make_netns("c1"), make_netns("c2")
    _attach(netlink, c1, 10)
    _attach(netlink, c2, 11)
    assert ping(c1, "10.77.0.11")
    assert ping(c2, "10.77.0.10")
    assert ping(c1, "10.77.0.1")
    assert ping(c2, "fd77::10")
    assert ping(c1, "fd77::1")
    routes = c1.ip("route")
    assert "default via 10.77.0.1 dev eth0" in routes
    assert "default via fd77::1 dev eth0" in c1.ip("-6", "route")
    assert "mtu 1400" in c1.ip("link", "show", "eth0")
    assert "UP" in c1.ip("link", "show", "lo")


def _tx_packets(ns: Netns, ifname: str = "eth0") -> int:
    [link] = json.loads(ns.ip("-s", "-j", "link", "show", ifname))
    return int(link["stats64"]["tx"]["packets"])


def _inet6(ns: Netns, ifname: str) -> str:
    return ns.ip("-6", "addr", "show", "dev", ifname)


def test_ipv4_only_interfaces_are_silent_on_ipv6_dual_stack_keeps_link_local(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns], host_ns: Netns
) -> None:
    """An IPv4-only container sends nothing when attached; a dual-stack one does.

    A link-local address means DAD, MLD reports and router solicitations,
    which the bridge floods into every attached namespace: that made the
    N-th attach cost grow with N. The dual-stack half shows that the counter
    would see such packets.
    """
    netlink.ensure_bridge(BRIDGE, [GW4, GW6])
    quiet, dual = make_netns("q"), make_netns("d")
    quiet_spec = _veth(quiet, "10.77.0.11/24", gateways=[GW4.ip], bridge=BRIDGE)
    netlink.create_veth_into_netns(quiet_spec)
    quiet_host = quiet_spec.host_name
    dual_host = _attach(netlink, dual, 12)
    deadline = time.monotonic() + 5.0
    while _tx_packets(dual) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _tx_packets(dual) > 0  # its MLD reports, at least
    time.sleep(1.0)  # the quiet container had as long as the dual one, and 1 s more
    assert _tx_packets(quiet) == 0
    assert "inet6" not in _inet6(quiet, "eth0")
    assert "addrgenmode none" in quiet.ip("-d", "link", "show", "eth0")
    assert "fe80::" in _inet6(dual, "eth0")
    for key, value in STATIC_IPV6_SYSCTLS.items():  # static config: no RA, RS or DAD
        assert dual.sysctl(f"net/ipv6/conf/eth0/{key}") == value
    for host_end in (quiet_host, dual_host):
        assert "inet6" not in _inet6(host_ns, host_end)
        # No IPv6 at all on host ends: no ff00::/8 route per port in the
        # host's IPv6 tables, nothing for the kernel to walk per attach.
        assert host_ns.sysctl(f"net/ipv6/conf/{host_end}/disable_ipv6") == "1"
        assert host_ns.ip("-6", "route", "show", "table", "all", "dev", host_end) == ""
    assert ping(quiet, "10.77.0.12")
    assert ping(dual, "fd77::1")


def test_mtu_below_ipv6_minimum_still_attaches(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns]
) -> None:
    # Below 1280 bytes the kernel has no IPv6 on the link and refuses the
    # "no link-local" attribute (EAFNOSUPPORT); the link comes up without it.
    netlink.ensure_bridge(BRIDGE, [GW4], mtu=1200)
    c1, c2 = make_netns("c1"), make_netns("c2")
    for ns, n in ((c1, 10), (c2, 11)):
        netlink.create_veth_into_netns(
            _veth(ns, f"10.77.0.{n}/24", gateways=[GW4.ip], mtu=1200, bridge=BRIDGE)
        )
    assert "mtu 1200" in c1.ip("link", "show", "eth0")
    # What followed the refused link change in the batch was done again.
    assert f"default via {GW4.ip} dev eth0" in c1.ip("route", "show")
    assert "<LOOPBACK,UP," in c1.ip("link", "show", "lo")
    assert ping(c1, "10.77.0.11")


def test_join_global_second_interface_gets_host_route(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns], host_ns: Netns
) -> None:
    netlink.ensure_bridge(BRIDGE, [GW4])
    netlink.ensure_bridge("zl-glob-g", [ip_interface("10.78.0.1/24")])
    c1 = make_netns("c1")
    _attach(netlink, c1, 10)
    routes = [
        RouteSpec(ip_network("10.78.0.1/32")),
        RouteSpec(ip_network("10.78.0.0/16"), ip_address("10.78.0.1")),
    ]
    netlink.create_veth_into_netns(
        _veth(c1, "10.78.0.10/32", ifname="eth1", routes=routes, bridge="zl-glob-g")
    )
    table = c1.ip("route")
    host_route = next(r for r in table.splitlines() if r.startswith("10.78.0.1 "))
    assert "dev eth1" in host_route
    assert "scope link" in host_route
    assert "10.78.0.0/16 via 10.78.0.1 dev eth1" in table
    assert "default via 10.77.0.1 dev eth0" in table
    assert ping(c1, "10.78.0.1")


def test_existing_host_name_raises_and_changes_nothing(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns]
) -> None:
    netlink.ensure_bridge(BRIDGE, [GW4])
    c1, c2 = make_netns("c1"), make_netns("c2")
    host = _attach(netlink, c1, 10)
    with pytest.raises(LinkExistsError, match=host):
        netlink.create_veth_into_netns(_veth(c2, "10.77.0.11/24", host=host))
    assert "eth0" not in c2.ip("link")


def test_failed_configuration_rolls_back_the_pair(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns]
) -> None:
    netlink.ensure_bridge(BRIDGE, [GW4])
    c1 = make_netns("c1")
    host = veth_host_name("test:rollback", 0)
    gateway = ip_address("10.99.0.1")  # not on-link: ENETUNREACH
    spec = _veth(c1, "10.77.0.10/24", host=host, gateways=[gateway], bridge=BRIDGE)
    with pytest.raises(AttachError, match="unreachable"):
        netlink.create_veth_into_netns(spec)
    assert not netlink.link_exists(host)
    assert "eth0" not in c1.ip("link")


def test_kernel_reason_reaches_the_error(host_ns: Netns) -> None:
    """Extended ACKs: a refused request carries the kernel's own sentence."""
    sock = run_in_netns(
        host_ns.fd, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    )
    with RtnlSocket(sock) as rtnl:
        lo = rtnl.link_index("lo")
        assert lo is not None
        with pytest.raises(RtnlError) as caught:
            # IFLA_IFNAME longer than IFNAMSIZ fails the attribute policy.
            rtnl.request(RTM_NEWLINK, link_change(lo, name="x" * 20))
    assert caught.value.code in (errno.ERANGE, errno.EINVAL)  # by kernel version
    assert caught.value.extack
    assert "lo" in host_ns.ip("link", "show", "lo")  # nothing renamed


def test_missing_bridge_is_reported(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns]
) -> None:
    c1 = make_netns("c1")
    with pytest.raises(AttachError, match="Bridge zl-none-b does not exist"):
        _attach(netlink, c1, 10, bridge="zl-none-b")


def test_delete_link_reports_absence(netlink: PyrouteNetlink) -> None:
    netlink.ensure_bridge(BRIDGE, [GW4])
    assert netlink.delete_link(BRIDGE) is True
    assert netlink.delete_link(BRIDGE) is False
    assert not netlink.link_exists(BRIDGE)


def test_batched_delete_frees_names_immediately(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns], host_ns: Netns
) -> None:
    containers, hosts = _bridge_with_containers(netlink, make_netns, 4, GW4, GW6)
    assert netlink.delete_links_batch([*hosts, "zvnotthere00000"]) == len(hosts)
    # Names are free at once, before the background deletion ran...
    assert not any(netlink.link_exists(h) for h in hosts)
    # ...so the same workload can be re-attached with the same names, even
    # into the same namespace (the old eth0 is flushed on demand).
    _attach(netlink, containers[0], 10)
    assert netlink.link_exists(hosts[0])
    netlink.flush_deletions()
    links = netlink.list_links()
    assert not [lk for lk in links if is_tombstone(lk.name)]
    assert not [lk for lk in links if lk.group == TOMBSTONE_GROUP]
    assert all("eth0" not in c.ip("link") for c in containers[1:])
    assert ping(containers[0], "10.77.0.1")


@pytest.mark.parametrize("linger", [0.5])  # long: the assertion must not depend on speed
def test_batched_delete_uses_few_kernel_batches(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns]
) -> None:
    _, hosts = _bridge_with_containers(netlink, make_netns, 6)
    for h in hosts:  # six separate detaches in quick succession
        netlink.delete_links_batch([h])
    netlink.flush_deletions()
    assert 1 <= netlink.deleter_batches < len(hosts)
    assert not [lk for lk in netlink.list_links() if lk.group == TOMBSTONE_GROUP]


@pytest.mark.parametrize("linger", [5.0])  # long: a waited delete must not sit it out
def test_waited_delete_removes_the_container_end_before_returning(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns]
) -> None:
    containers, hosts = _bridge_with_containers(netlink, make_netns, 4)
    assert netlink.delete_links([hosts[0], "zvnotthere00000"], timeout=4.0) == 1
    assert "eth0" not in containers[0].ip("-o", "link")
    assert not [lk for lk in netlink.list_links() if lk.group == TOMBSTONE_GROUP]
    # Concurrent waited deletes all return with their links gone.
    with ThreadPoolExecutor(3) as pool:
        counts = list(pool.map(lambda h: netlink.delete_links([h], timeout=4.0), hosts[1:]))
    assert counts == [1, 1, 1]
    assert all("eth0" not in c.ip("-o", "link") for c in containers)
    assert netlink.delete_links([hosts[1]]) == 0  # already gone: nothing to wait for


def test_sweep_tombstones_deletes_leftovers(netlink: PyrouteNetlink, host_ns: Netns) -> None:
    host_ns.ip("tuntap", "add", "zx00000000000ab", "mode", "tun")
    assert netlink.sweep_tombstones() == 1
    netlink.flush_deletions()
    assert not netlink.link_exists("zx00000000000ab")


def test_list_links_filters_by_prefix(netlink: PyrouteNetlink) -> None:
    netlink.ensure_bridge(BRIDGE, [GW4])
    netlink.ensure_bridge("zl-other-b", [])
    names = {lk.name for lk in netlink.list_links("zl-test")}
    assert names == {BRIDGE}
    (info,) = netlink.list_links(BRIDGE)
    assert info.kind == "bridge"
    assert info.up


def test_enable_forwarding_only_in_own_namespace(netlink: PyrouteNetlink, host_ns: Netns) -> None:
    real = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    changed = netlink.enable_forwarding(ipv4=True, ipv6=True)
    assert changed == {
        "/proc/sys/net/ipv4/ip_forward": "0",
        "/proc/sys/net/ipv6/conf/all/forwarding": "0",
    }
    assert netlink.previous_sysctls == changed
    # A second call writes nothing and keeps the first recorded values.
    assert netlink.enable_forwarding(ipv4=True, ipv6=True) == {}
    assert netlink.previous_sysctls == changed
    assert "= 1" in _sysctl(host_ns, "net.ipv4.ip_forward")
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == real


def _sysctl(ns: Netns, key: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, "sysctl", key],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_veth_into_gone_namespace_fails_cleanly(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns]
) -> None:
    netlink.ensure_bridge(BRIDGE, [GW4])
    with pytest.raises(AttachError):
        netlink.create_veth_into_netns(
            VethSpec(
                host_name="zvbadfd00000000",
                netns_fd=987654,  # not an open descriptor
                container_ifname="eth0",
                addresses=[ip_interface("10.77.0.10/24")],
            )
        )
    assert not netlink.link_exists("zvbadfd00000000")
