"""The hand-encoded rtnetlink messages, decoded by pyroute2's own parsers.

pyroute2 is the oracle here: every message :mod:`overlayd_linux.rtnl`
builds must decode, with pyroute2's ``ifinfmsg``/``ifaddrmsg``/``rtmsg``
classes, to exactly the fields the driver means to send. The socket tests
use requests any process may make (a lookup) or that the kernel refuses for
everyone (a change to an index that does not exist), so they change nothing.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import ip_address
from ipaddress import ip_interface
from ipaddress import ip_network
from typing import Any

import pytest
from pyroute2 import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from overlayd_linux import rtnl

UNUSED_INDEX = 0x7FFF_FFF0


def _decode(cls: Any, msg_type: int, body: bytes) -> Any:
    header = struct.pack("=IHHII", 16 + len(body), msg_type, 1, 1, 0)
    msg = cls(header + body)
    msg.decode()
    assert msg["header"]["length"] == 16 + len(body)
    return msg


def test_veth_with_peer_decodes_to_the_intended_link() -> None:
    msg = _decode(ifinfmsg, rtnl.RTM_NEWLINK, rtnl.veth_with_peer("ve-abc", "eth0", 7, 1420))
    assert msg["index"] == 0
    assert msg.get("IFLA_IFNAME") == "ve-abc"
    assert msg.get("IFLA_MTU") == 1420
    info = msg.get("IFLA_LINKINFO")
    assert info.get("IFLA_INFO_KIND") == "veth"
    peer = info.get("IFLA_INFO_DATA").get("VETH_INFO_PEER")
    assert peer.get("IFLA_IFNAME") == "eth0"
    assert peer.get("IFLA_NET_NS_FD") == 7
    assert peer.get("IFLA_MTU") == 1420
    assert msg.get("IFLA_ADDRESS") is None  # random MAC unless one is given


def test_veth_with_a_mac_sets_it_on_the_host_end_only() -> None:
    body = rtnl.veth_with_peer("ve-abc", "eth0", 7, 1420, address="02:8b:bd:50:ab:ae")
    msg = _decode(ifinfmsg, rtnl.RTM_NEWLINK, body)
    assert msg.get("IFLA_ADDRESS") == "02:8b:bd:50:ab:ae"
    assert msg.get("IFLA_IFNAME") == "ve-abc"
    peer = msg.get("IFLA_LINKINFO").get("IFLA_INFO_DATA").get("VETH_INFO_PEER")
    assert peer.get("IFLA_ADDRESS") is None
    assert peer.get("IFLA_IFNAME") == "eth0"


def test_veth_without_mtu_sends_none() -> None:
    msg = _decode(ifinfmsg, rtnl.RTM_NEWLINK, rtnl.veth_with_peer("ve-abc", "eth1", 3, None))
    assert msg.get("IFLA_MTU") is None
    peer = msg.get("IFLA_LINKINFO").get("IFLA_INFO_DATA").get("VETH_INFO_PEER")
    assert peer.get("IFLA_MTU") is None
    assert peer.get("IFLA_IFNAME") == "eth1"


def test_link_change_up_on_master_without_link_local() -> None:
    body = rtnl.link_change(12, up=True, master=4, quiet_ipv6=True)
    msg = _decode(ifinfmsg, rtnl.RTM_NEWLINK, body)
    assert (msg["index"], msg["flags"], msg["change"]) == (12, 1, 1)
    assert msg.get("IFLA_MASTER") == 4
    inet6 = msg.get("IFLA_AF_SPEC").get_attr("AF_INET6")
    assert inet6.get("IFLA_INET6_ADDR_GEN_MODE") == 1


def test_link_change_leaves_unnamed_fields_alone() -> None:
    rename = _decode(ifinfmsg, rtnl.RTM_NEWLINK, rtnl.link_change(5, name="zx1", group=9))
    assert (rename["flags"], rename["change"]) == (0, 0)  # state untouched
    assert rename.get("IFLA_IFNAME") == "zx1"
    assert rename.get("IFLA_GROUP") == 9
    assert rename.get("IFLA_MASTER") is None
    assert rename.get("IFLA_AF_SPEC") is None
    down = _decode(ifinfmsg, rtnl.RTM_NEWLINK, rtnl.link_change(5, up=False))
    assert (down["flags"], down["change"]) == (0, 1)


def test_link_by_name_asks_without_statistics() -> None:
    msg = _decode(ifinfmsg, rtnl.RTM_GETLINK, rtnl.link_by_name("zl-web-b"))
    assert msg.get("IFLA_IFNAME") == "zl-web-b"
    assert msg.get("IFLA_EXT_MASK") == rtnl.RTEXT_FILTER_SKIP_STATS


@pytest.mark.parametrize(
    ("iface", "family", "flags"),
    [("10.240.0.7/24", socket.AF_INET, 0), ("fd00:240::7/64", socket.AF_INET6, 2)],
)
def test_address_decodes_local_and_address(iface: str, family: int, flags: int) -> None:
    parsed = ip_interface(iface)
    msg = _decode(ifaddrmsg, rtnl.RTM_NEWADDR, rtnl.address(9, parsed, flags))
    assert (msg["family"], msg["prefixlen"], msg["flags"], msg["index"]) == (
        family,
        parsed.network.prefixlen,
        flags,
        9,
    )
    assert msg.get("IFA_LOCAL") == msg.get("IFA_ADDRESS") == str(parsed.ip)
    assert msg.get("IFA_BROADCAST") is None


def test_default_route_via_gateway() -> None:
    body = rtnl.route(ip_network("0.0.0.0/0"), 3, ip_address("10.240.0.1"))
    msg = _decode(rtmsg, rtnl.RTM_NEWROUTE, body)
    assert (msg["family"], msg["dst_len"], msg["table"]) == (socket.AF_INET, 0, 254)
    assert (msg["proto"], msg["scope"], msg["type"]) == (4, 0, 1)
    assert msg.get("RTA_DST") is None
    assert msg.get("RTA_GATEWAY") == "10.240.0.1"
    assert msg.get("RTA_OIF") == 3


def test_ipv4_route_without_gateway_is_on_link() -> None:
    msg = _decode(rtmsg, rtnl.RTM_NEWROUTE, rtnl.route(ip_network("10.240.8.0/24"), 6))
    assert (msg["dst_len"], msg["scope"]) == (24, rtnl.RT_SCOPE_LINK)
    assert msg.get("RTA_DST") == "10.240.8.0"
    assert msg.get("RTA_GATEWAY") is None


def test_ipv6_route_via_link_local_next_hop() -> None:
    body = rtnl.route(ip_network("fd00:240::/48"), 6, ip_address("fe80::1"))
    msg = _decode(rtmsg, rtnl.RTM_NEWROUTE, body)
    assert (msg["family"], msg["dst_len"], msg["scope"]) == (socket.AF_INET6, 48, 0)
    assert msg.get("RTA_DST") == "fd00:240::"
    assert msg.get("RTA_GATEWAY") == "fe80::1"


def test_socket_looks_up_links_by_name() -> None:
    with rtnl.RtnlSocket() as sock:
        assert sock.link_index("lo") == socket.if_nametoindex("lo")
        assert sock.link_index("zz-no-such-if") is None
        # Sequence numbers keep answers apart across several requests.
        assert sock.link_index("lo") == socket.if_nametoindex("lo")


def test_refused_request_raises_netlink_error_with_errno() -> None:
    with rtnl.RtnlSocket() as sock:
        with pytest.raises(NetlinkError) as caught:
            sock.request(rtnl.RTM_NEWLINK, rtnl.link_change(UNUSED_INDEX, up=True))
        # ENODEV as root; a process without CAP_NET_ADMIN is refused first.
        assert caught.value.code in (errno.ENODEV, errno.EPERM)
        assert isinstance(caught.value, rtnl.RtnlError)
        # The socket stays usable after a refusal.
        assert sock.link_index("lo") == socket.if_nametoindex("lo")


def test_batch_reports_each_request_in_order_and_keeps_the_socket_usable() -> None:
    lookup = (rtnl.RTM_GETLINK, rtnl.link_by_name("lo"), 0)  # any process may ask
    refused = (rtnl.RTM_NEWLINK, rtnl.link_change(UNUSED_INDEX, up=True), 0)
    with rtnl.RtnlSocket() as sock:
        assert sock.batch([]) == []
        outcomes = sock.batch([lookup, refused, lookup, refused])
        # A refusal does not stop the next request, and each has its own answer.
        assert outcomes[0] is None and outcomes[2] is None
        for outcome in (outcomes[1], outcomes[3]):
            assert isinstance(outcome, rtnl.RtnlError)
            assert outcome.code in (errno.ENODEV, errno.EPERM)
        assert len(outcomes) == 4
        assert sock.link_index("lo") == socket.if_nametoindex("lo")
        assert sock.batch([refused, lookup])[1] is None


def test_pool_reuses_sockets_and_drops_broken_ones() -> None:
    opened: list[socket.socket] = []

    def open_socket() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        opened.append(sock)
        return sock

    def refused() -> None:
        with pool.socket() as sock:
            seen.append(sock)
            sock.request(rtnl.RTM_NEWLINK, rtnl.link_change(UNUSED_INDEX, up=True))

    def crashed(exc: BaseException) -> None:
        with pool.socket() as sock:
            seen.append(sock)
            raise exc

    seen: list[rtnl.RtnlSocket] = []
    pool = rtnl.SocketPool(open_socket)
    try:
        with pool.socket() as first:
            pass
        with pytest.raises(NetlinkError):
            refused()
        with pytest.raises(RuntimeError):
            crashed(RuntimeError("the caller's own failure"))
        # Reused after success, a refusal by the kernel and the caller's errors...
        assert seen == [first, first]
        assert opened[0].fileno() != -1
        # ...but closed after a socket error.
        with pytest.raises(OSError, match="Bad file descriptor"):
            crashed(OSError(9, "Bad file descriptor"))
        assert opened[0].fileno() == -1
        with pool.socket() as fresh:
            assert fresh is not first
        assert len(opened) == 2
    finally:
        pool.close()
    assert all(sock.fileno() == -1 for sock in opened)
