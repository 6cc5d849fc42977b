"""nftables NAT in table inet overlayd, inside throwaway namespaces.

Topology (all namespaces are the test's own)::

    c1 (10.88.0.10) ─┐                                   ┌─ outside
    c2 (10.88.0.11) ─┴─ zl-nat-b (10.88.0.1) [host] upl0 ─┴─ upl1 (172.31.250.2)
                                              172.31.250.1
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from ipaddress import ip_interface
from ipaddress import ip_network

import pytest

from overlayd.errors import NatError
from overlayd_linux_bridge.linkapi import VethSpec
from overlayd_linux_bridge.netlink import PyrouteNetlink
from overlayd_linux_bridge.nft import PORT_GROUP
from overlayd_linux_bridge.nft import LibNftables
from overlayd_linux_bridge.nft import NatState
from overlayd_linux_bridge.nft import Nftables
from overlayd_linux_bridge.nft import NftBackend
from overlayd_linux_bridge.nft import NftCli
from overlayd_linux_bridge.nft import PortMapping
from overlayd_linux_bridge.testing import Netns
from overlayd_linux_bridge.testing import link_outside
from overlayd_linux_bridge.testing import ping
from overlayd_linux_bridge.testing import udp_probe

pytestmark = pytest.mark.privileged

SUBNET = ip_network("10.88.0.0/24")
UPLINK = "172.31.250.0/30"  # the host holds .1, the outside .2 (link_outside)
UPLINK_HOST = "172.31.250.1"
OUTSIDE = "172.31.250.2"
ETH_P_ALL = 0x0003


@dataclass
class Topology:
    host: Netns
    c1: Netns
    c2: Netns
    outside: Netns


@pytest.fixture
def topology(
    make_netns: Callable[[str], Netns], host_ns: Netns, netlink: PyrouteNetlink
) -> Topology:
    outside = make_netns("out")
    link_outside(host_ns, outside, UPLINK)
    netlink.enable_forwarding(ipv4=True)
    c1, c2 = _two_containers(netlink, make_netns, "zl-nat-b", "10.88.0.{}/24")
    return Topology(host_ns, c1, c2, outside)


def _two_containers(
    netlink: PyrouteNetlink, make_netns: Callable[[str], Netns], bridge: str, template: str
) -> tuple[Netns, Netns]:
    """Bridge ``bridge`` at ``template.format(1)``, containers c1 and c2 at 10 and 11.

    The host ends are called ``zv<bridge's middle part><n>``.
    """
    gateway = ip_interface(template.format(1))
    netlink.ensure_bridge(bridge, [gateway])
    c1, c2 = make_netns("c1"), make_netns("c2")
    for n, c in ((10, c1), (11, c2)):
        netlink.create_veth_into_netns(
            VethSpec(
                host_name=f"zv{bridge.split('-')[1]}{n}",
                netns_fd=c.fd,
                container_ifname="eth0",
                addresses=[ip_interface(template.format(n))],
                gateways=[gateway.ip],
                bridge=bridge,
            )
        )
    return c1, c2


@pytest.fixture(params=["libnftables", "nft-cli"])
def nft(request: pytest.FixtureRequest, host_ns: Netns) -> Iterator[Nftables]:
    """Both backends, acting inside ``host_ns`` only."""
    backend: NftBackend = (
        LibNftables(host_ns.path) if request.param == "libnftables" else NftCli(host_ns.path)
    )
    tables = Nftables(backend)
    try:
        yield tables
    finally:
        tables.close()


def _tables(ns: Netns) -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns.name, "nft", "-j", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        f"{o['table']['family']} {o['table']['name']}"
        for o in json.loads(out)["nftables"]
        if "table" in o
    ]


def test_table_is_created_in_the_namespace_only(nft: Nftables, host_ns: Netns) -> None:
    real_before = subprocess.run(
        ["nft", "-j", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    nft.apply_table(NatState(masquerade=frozenset({SUBNET})))
    assert _tables(host_ns) == ["inet overlayd"]
    real_after = subprocess.run(
        ["nft", "-j", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert real_after == real_before


def test_elements_round_trip(nft: Nftables) -> None:
    nft.apply_table(NatState(exempt=frozenset({ip_network("10.0.0.0/8")})))
    nft.add_masquerade(SUBNET)
    nft.add_masquerade(SUBNET)  # idempotent
    nft.add_masquerade(ip_network("fd88::/64"))
    pm4 = nft.add_port_mapping("tcp", 8080, ip_address("10.88.0.10"), 80)
    pm6 = nft.add_port_mapping(
        "udp", 5353, ip_address("fd88::10"), 53, host_ip=ip_address("fd88::1")
    )
    state = nft.list_elements()
    assert state == NatState(
        masquerade=frozenset({SUBNET, ip_network("fd88::/64")}),
        exempt=frozenset({ip_network("10.0.0.0/8")}),
        port_mappings=frozenset({pm4, pm6}),
    )
    assert nft.remove_port_mapping("tcp", 8080, ip_address("10.88.0.10")) is True
    assert nft.remove_port_mapping("tcp", 8080, ip_address("10.88.0.10")) is False
    assert nft.remove_masquerade(SUBNET) is True
    assert nft.remove_masquerade(SUBNET) is False
    state = nft.list_elements()
    assert state.port_mappings == frozenset({pm6})
    assert state.masquerade == frozenset({ip_network("fd88::/64")})


def test_conflicting_port_mapping_is_refused(nft: Nftables) -> None:
    nft.apply_table(NatState())
    nft.add_port_mapping("tcp", 8080, ip_address("10.88.0.10"), 80)
    with pytest.raises(NatError, match="File exists"):
        nft.add_port_mapping("tcp", 8080, ip_address("10.88.0.11"), 80)


def test_apply_table_restores_after_firewall_flush(nft: Nftables, host_ns: Netns) -> None:
    desired = NatState(
        masquerade=frozenset({SUBNET}),
        port_mappings=frozenset({PortMapping("tcp", 8080, ip_address("10.88.0.10"), 80)}),
    )
    nft.apply_table(desired)
    subprocess.run(["ip", "netns", "exec", host_ns.name, "nft", "flush", "ruleset"], check=True)
    assert not nft.table_exists()
    nft.apply_table(desired)
    nft.apply_table(desired)  # re-applying replaces, never duplicates
    assert nft.list_elements() == desired


def test_delete_table_is_idempotent(nft: Nftables, host_ns: Netns) -> None:
    nft.apply_table(NatState())
    assert nft.delete_table() is True
    assert nft.delete_table() is False
    assert _tables(host_ns) == []


def test_masquerade_rewrites_source_leaving_uplink(topology: Topology, nft: Nftables) -> None:
    t = topology
    nft.apply_table(NatState())
    assert udp_probe(t.c1, OUTSIDE, 7000, t.outside, 7000) == "10.88.0.10"
    nft.add_masquerade(SUBNET)
    assert udp_probe(t.c1, OUTSIDE, 7001, t.outside, 7001) == UPLINK_HOST
    # The cluster CIDR is exempt: traffic to it keeps the container address.
    nft.add_exempt(ip_network("172.31.250.0/30"))
    assert udp_probe(t.c1, OUTSIDE, 7002, t.outside, 7002) == "10.88.0.10"


def test_port_mapping_dnat_from_outside(topology: Topology, nft: Nftables) -> None:
    t = topology
    nft.apply_table(NatState(masquerade=frozenset({SUBNET})))
    nft.add_port_mapping("udp", 8080, ip_address("10.88.0.10"), 80)
    assert udp_probe(t.outside, UPLINK_HOST, 8080, t.c1, 80) == OUTSIDE
    assert nft.remove_port_mapping("udp", 8080, ip_address("10.88.0.10"))
    assert udp_probe(t.outside, UPLINK_HOST, 8080, t.c1, 80, timeout=0.5) is None


def test_port_mapping_on_specific_host_ip(topology: Topology, nft: Nftables) -> None:
    t = topology
    nft.apply_table(NatState(masquerade=frozenset({SUBNET})))
    nft.add_port_mapping("udp", 8081, ip_address("10.88.0.11"), 81, host_ip=ip_address(UPLINK_HOST))
    assert udp_probe(t.outside, UPLINK_HOST, 8081, t.c2, 81) == OUTSIDE
    # The same port on another host address is not mapped.
    assert udp_probe(t.c1, "10.88.0.1", 8081, t.c2, 81, timeout=0.5) is None


def test_hairpin_to_own_node_port(topology: Topology, nft: Nftables) -> None:
    t = topology
    nft.apply_table(NatState(masquerade=frozenset({SUBNET})))
    nft.add_port_mapping("udp", 8082, ip_address("10.88.0.10"), 82)
    # c2 reaches c1 through the node's address: the reply must come back via
    # the node, so the source is masqueraded to the bridge address.
    assert udp_probe(t.c2, "10.88.0.1", 8082, t.c1, 82) == "10.88.0.1"


# -- the MLD filter (table bridge overlayd) ---------------------------------------

#: Destination MAC of MLDv2 reports (ff02::16).
MLD2_REPORT_MAC = bytes.fromhex("333300000016")


def _mld_reports_seen(sniffer: Netns, sender: Netns, address: str) -> int:
    """MLDv2 reports ``sniffer``'s eth0 receives while ``sender`` adds ``address``.

    A new IPv6 address makes the sender's kernel join its solicited-node group
    and report that at once. Only reports from ``sender`` count (the bridge
    reports its own groups for a while after it got its address).
    """
    mac = json.loads(sender.ip("-j", "link", "show", "dev", "eth0"))[0]["address"]
    source = bytes.fromhex(mac.replace(":", ""))
    sock = sniffer.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind(("eth0", 0))
        sock.settimeout(0.2)
        sender.ip("addr", "add", f"{address}/64", "dev", "eth0", "nodad")
        seen = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                frame, (_, _, pkttype, _, _) = sock.recvfrom(2048)
            except TimeoutError:
                continue
            # Only what arrives: the sniffer's own reports are captured too.
            if pkttype != socket.PACKET_OUTGOING and frame[:12] == MLD2_REPORT_MAC + source:
                seen += 1
        return seen
    finally:
        sock.close()


def test_mld_filter_stops_reports_between_ports_but_not_neighbour_discovery(
    make_netns: Callable[[str], Netns], host_ns: Netns, netlink: PyrouteNetlink, nft: Nftables
) -> None:
    c1, c2 = _two_containers(netlink, make_netns, "zl-mld-b", "fd89::{}/64")
    for host_end in ("zvmld10", "zvmld11"):
        info = json.loads(host_ns.ip("-d", "-j", "link", "show", "dev", host_end))[0]
        assert info["group"] == str(PORT_GROUP)
    # Without the filter the bridge floods c1's report into c2.
    assert _mld_reports_seen(c2, c1, "fd89::20") > 0
    nft.apply_mld_filter(PORT_GROUP)
    nft.apply_mld_filter(PORT_GROUP)  # idempotent: one table, one rule
    assert _tables(host_ns) == ["bridge overlayd"]
    assert _mld_reports_seen(c2, c1, "fd89::21") == 0
    out = subprocess.run(
        ["ip", "netns", "exec", host_ns.name, "nft", "-j", "list", "table", "bridge", "overlayd"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rules = [o["rule"] for o in json.loads(out)["nftables"] if "rule" in o]
    assert len(rules) == 1
    counter = next(e["counter"] for e in rules[0]["expr"] if "counter" in e)
    assert counter["packets"] > 0
    # Neighbour discovery is multicast too, and still flows: c1 reaches c2.
    assert ping(c1, "fd89::11")
    assert ping(c2, "fd89::1")
