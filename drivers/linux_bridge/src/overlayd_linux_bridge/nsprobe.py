"""What the container end of a veth needs, gathered by one thread inside its namespace.

An attach enters the workload namespace once (:func:`overlayd_linux.netns.run_in_netns`)
and there opens the netlink socket it keeps using from the daemon's thread,
looks up the interface and ``lo`` and reads the MAC address with ioctls (a
few µs each instead of a netlink round trip), and writes the IPv6 sysctls
that must be set before the interface comes up.
"""

from __future__ import annotations

import fcntl
import socket
import struct
from dataclasses import dataclass
from typing import Final

from overlayd_linux_bridge.sysctl import write_static_ipv6_sysctls

__all__ = ["NetnsProbe", "if_index", "open_raw_socket", "probe_netns"]

#: ``SIOCGIFHWADDR`` from ``<linux/sockios.h>``: read a link's MAC address.
_SIOCGIFHWADDR: Final = 0x8927
_NETLINK_ROUTE: Final = 0


def open_raw_socket() -> socket.socket:
    """A raw ``NETLINK_ROUTE`` socket in the calling thread's namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)


def if_index(name: str) -> int | None:
    """Index of link ``name`` in the calling thread's namespace, or ``None``.

    One ``SIOCGIFINDEX`` ioctl (about 7 µs) instead of an ``RTM_GETLINK``
    round trip whose answer pyroute2 decodes in full (about 0.4 ms).
    """
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _if_mac(sock: socket.socket, name: str) -> str:
    """MAC address of link ``name`` (``aa:bb:...``), read with ``SIOCGIFHWADDR``."""
    request = struct.pack("16s16s", name.encode(), b"")
    answer = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, request)
    return ":".join(f"{b:02x}" for b in answer[18:24])


@dataclass(frozen=True)
class NetnsProbe:
    """What the container end needs, gathered by one thread inside the namespace."""

    sock: socket.socket
    index: int | None
    loopback: int | None
    mac: str


def probe_netns(ifname: str, ipv6: bool) -> NetnsProbe:
    """Open a netlink socket and look up ``ifname`` and ``lo``; runs inside the namespace.

    With ``ipv6`` the interface's :data:`STATIC_IPV6_SYSCTLS` are written too
    (``/proc/sys/net`` is the namespace of the writing thread).
    """
    sock = open_raw_socket()
    try:
        index = if_index(ifname)
        mac = _if_mac(sock, ifname) if index is not None else ""
        if ipv6 and index is not None:
            write_static_ipv6_sysctls(ifname)
        return NetnsProbe(sock, index, if_index("lo"), mac)
    except BaseException:
        sock.close()
        raise
