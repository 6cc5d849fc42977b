"""What the container end of a veth needs from inside its namespace.

Only opening a socket needs a thread inside the workload namespace
(:class:`overlayd_linux.netns.InNetns`): a socket keeps its namespace, and
``ioctl`` s on it act there from any thread. An attach therefore starts that
thread before it asks the kernel for the veth (:class:`NsSocket`), and
then, from its own thread, looks up the interface and ``lo`` and reads the
MAC address with ioctls on the socket (a few µs each instead of a netlink
round trip). The IPv6 sysctls that must be set before the interface comes up
are the exception: ``/proc/sys/net`` is the namespace of the writing thread,
so :func:`~overlayd_linux_bridge.sysctl.write_static_ipv6_sysctls` runs in a
thread in the namespace of its own.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
from dataclasses import dataclass
from typing import Final

from overlayd_linux.netns import InNetns

__all__ = [
    "NetnsProbe",
    "NsSocket",
    "if_index",
    "ns_if_index",
    "open_raw_socket",
    "probe",
]

#: ``SIOCGIFHWADDR`` from ``<linux/sockios.h>``: read a link's MAC address.
_SIOCGIFHWADDR: Final = 0x8927
#: ``SIOCGIFINDEX`` from ``<linux/sockios.h>``: a link's index from its name.
_SIOCGIFINDEX: Final = 0x8933
#: ``IFNAMSIZ``: a link's name and its terminating NUL.
_IFNAMSIZ: Final = 16
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
    """What the container end needs: its index, that of ``lo`` and its MAC."""

    index: int | None
    loopback: int | None
    mac: str


def ns_if_index(sock: socket.socket, name: str) -> int | None:
    """Index of link ``name`` in the namespace of ``sock``, or ``None`` (``SIOCGIFINDEX``)."""
    encoded = name.encode()
    if not encoded or len(encoded) >= _IFNAMSIZ:  # no link has such a name
        return None
    request = struct.pack("16s24x", encoded)
    try:
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFINDEX, request)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    return int(struct.unpack_from("i", answer, 16)[0])


def probe(sock: socket.socket, ifname: str) -> NetnsProbe:
    """Look up ``ifname`` and ``lo`` in the namespace of ``sock``; from any thread."""
    index = ns_if_index(sock, ifname)
    mac = _if_mac(sock, ifname) if index is not None else ""
    return NetnsProbe(index, ns_if_index(sock, "lo"), mac)


class NsSocket:
    """A raw ``NETLINK_ROUTE`` socket being opened inside a namespace by its own thread.

    Started at once; :meth:`take` waits for the socket, which the caller then
    owns; :meth:`close` (on every path) closes it unless it was taken.
    """

    def __init__(self, netns_fd: int) -> None:
        self._opening = InNetns(netns_fd, open_raw_socket)
        self._taken = False

    def take(self) -> socket.socket:
        """The socket (its thread's exception when it could not be opened)."""
        self._taken = True
        return self._opening.result()

    def close(self) -> None:
        """Wait for the thread and close the socket, unless :meth:`take` was called."""
        if self._taken:
            return
        self._taken = True
        try:
            sock = self._opening.result()
        except OSError:  # never opened; the caller is failing for its own reason
            return
        sock.close()
