"""Lean synchronous rtnetlink requests for the attach and detach hot path.

pyroute2 0.9's synchronous ``IPRoute`` runs every request through an asyncio
event loop of its own, which costs far more than writing the message to a
netlink socket and reading its ACK back (the figures are in
docs/design-notes.rst, "A lean netlink path for attach").

This module therefore encodes the few messages the hot path sends (veth
creation with its peer in another namespace, link set, address add, route
add, link lookup by name, link delete) itself, with the attribute numbers of
the kernel's UAPI headers (``<linux/rtnetlink.h>``, ``<linux/if_link.h>``,
``<linux/if_addr.h>``, ``<linux/veth.h>``), and reads the ACK of each. The
unit tests decode every message with pyroute2's own parsers and compare
the fields, and the privileged tests check the kernel's result. Everything
else (dumps, bridges, reconcile) still goes through pyroute2.

Errors are raised as :class:`RtnlError`, a ``pyroute2.NetlinkError`` that also
carries the kernel's extended-ACK message when there is one (for instance
``"Invalid MTU"``), so callers handle both paths alike.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from ipaddress import IPv4Address
from ipaddress import IPv4Interface
from ipaddress import IPv4Network
from ipaddress import IPv6Address
from ipaddress import IPv6Interface
from ipaddress import IPv6Network
from typing import Final

from pyroute2 import NetlinkError

__all__ = ["RtnlError", "RtnlSocket", "SocketPool"]

# <linux/netlink.h>
NLMSG_ERROR: Final = 2
NLM_F_REQUEST: Final = 0x01
NLM_F_ACK: Final = 0x04
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLM_F_CAPPED: Final = 0x100  # in an ACK: the request's payload is left out
NLM_F_ACK_TLVS: Final = 0x200  # in an ACK: extended-ACK attributes follow
NLMSGERR_ATTR_MSG: Final = 1
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
# <linux/rtnetlink.h>
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_NEWROUTE: Final = 24
RT_TABLE_MAIN: Final = 254
RTPROT_STATIC: Final = 4
RTN_UNICAST: Final = 1
RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_LINK: Final = 253
RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTEXT_FILTER_SKIP_STATS: Final = 1 << 3
# <linux/if_link.h>, <linux/veth.h>, <linux/if.h>
IFLA_ADDRESS: Final = 1
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_MASTER: Final = 10
IFLA_LINKINFO: Final = 18
IFLA_AF_SPEC: Final = 26
IFLA_GROUP: Final = 27
IFLA_NET_NS_FD: Final = 28
IFLA_EXT_MASK: Final = 29
IFLA_INFO_KIND: Final = 1
IFLA_INFO_DATA: Final = 2
VETH_INFO_PEER: Final = 1
IFLA_INET6_ADDR_GEN_MODE: Final = 8
IN6_ADDR_GEN_MODE_NONE: Final = 1
IFF_UP: Final = 0x1
# <linux/if_addr.h>
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2

_NLMSGHDR: Final = struct.Struct("=IHHII")
_IFINFOMSG: Final = struct.Struct("=BxHiII")
_IFADDRMSG: Final = struct.Struct("=BBBBI")
_RTMSG: Final = struct.Struct("=BBBBBBBBI")
_RECV_SIZE: Final = 65536

IPInterface = IPv4Interface | IPv6Interface
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class RtnlError(NetlinkError):  # type: ignore[misc]
    """The kernel refused a request; ``code`` is the errno, ``extack`` its message."""

    def __init__(self, code: int, extack: str | None = None) -> None:
        super().__init__(code, extack)
        #: The kernel's extended-ACK message, or ``None``.
        self.extack = extack


# -- encoding -----------------------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    """One ``struct nlattr`` with ``payload``, padded to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _string(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _ifinfomsg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


#: ``IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE = none } }``: the link
#: gets no IPv6 link-local address (sent only with a link change; the kernel
#: refuses it at creation).
QUIET_IPV6: Final = _attr(
    IFLA_AF_SPEC,
    _attr(
        socket.AF_INET6,
        _attr(IFLA_INET6_ADDR_GEN_MODE, struct.pack("=B", IN6_ADDR_GEN_MODE_NONE)),
    ),
)


def veth_with_peer(
    name: str,
    peer: str,
    peer_netns_fd: int,
    mtu: int | None,
    address: str | None = None,
    group: int | None = None,
    peer_address: str | None = None,
) -> bytes:
    """``RTM_NEWLINK`` body: veth ``name`` whose peer ``peer`` is born in ``peer_netns_fd``.

    ``address`` (``"02:00:…"``) is the MAC of ``name`` and ``group`` its link
    group; the peer gets ``peer_address``, else a random MAC, and group 0.
    """
    mtu_attr = _u32(IFLA_MTU, mtu) if mtu is not None else b""
    peer_msg = (
        _ifinfomsg()
        + _string(IFLA_IFNAME, peer)
        + _u32(IFLA_NET_NS_FD, peer_netns_fd)
        + _mac(peer_address)
    )
    linkinfo = _string(IFLA_INFO_KIND, "veth") + _attr(
        IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg + mtu_attr)
    )
    mac_attr = _mac(address)
    return (
        _ifinfomsg()
        + _string(IFLA_IFNAME, name)
        + mtu_attr
        + mac_attr
        + (_u32(IFLA_GROUP, group) if group is not None else b"")
        + _attr(IFLA_LINKINFO, linkinfo)
    )


def _mac(address: str | None) -> bytes:
    """An ``IFLA_ADDRESS`` attribute for ``address`` (``"02:00:…"``); nothing for ``None``."""
    return _attr(IFLA_ADDRESS, bytes.fromhex(address.replace(":", ""))) if address else b""


def link_change(
    index: int,
    *,
    up: bool | None = None,
    master: int | None = None,
    name: str | None = None,
    group: int | None = None,
    quiet_ipv6: bool = False,
) -> bytes:
    """``RTM_NEWLINK`` body changing link ``index``; ``None`` leaves a field alone."""
    flags = IFF_UP if up else 0
    body = _ifinfomsg(index, flags, IFF_UP if up is not None else 0)
    if name is not None:
        body += _string(IFLA_IFNAME, name)
    if master is not None:
        body += _u32(IFLA_MASTER, master)
    if group is not None:
        body += _u32(IFLA_GROUP, group)
    if quiet_ipv6:
        body += QUIET_IPV6
    return body


def link_by_name(name: str) -> bytes:
    """``RTM_GETLINK`` body for the link called ``name`` (statistics left out)."""
    return _ifinfomsg() + _string(IFLA_IFNAME, name) + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)


def address(index: int, iface: IPInterface, flags: int = 0) -> bytes:
    """``RTM_NEWADDR`` body: ``iface`` on link ``index`` (no broadcast, like pyroute2)."""
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    packed = iface.ip.packed
    header = _IFADDRMSG.pack(family, iface.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index)
    return header + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)


def route(dst: IPNetwork, oif: int, gateway: IPAddress | None = None) -> bytes:
    """``RTM_NEWROUTE`` body: ``dst`` via ``gateway`` or on-link through ``oif``.

    Main table, protocol ``static`` (what pyroute2 sends); an IPv4 route
    without a gateway has link scope.
    """
    family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    scope = RT_SCOPE_LINK if gateway is None and dst.version == 4 else RT_SCOPE_UNIVERSE
    header = _RTMSG.pack(
        family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope, RTN_UNICAST, 0
    )
    body = header
    if dst.prefixlen:
        body += _attr(RTA_DST, dst.network_address.packed)
    if gateway is not None:
        body += _attr(RTA_GATEWAY, gateway.packed)
    return body + _u32(RTA_OIF, oif)


# -- the socket ---------------------------------------------------------------


def _extack(data: bytes, offset: int, length: int, flags: int) -> str | None:
    """The ``NLMSGERR_ATTR_MSG`` of the ACK at ``offset``, if the kernel sent one."""
    if not flags & NLM_F_ACK_TLVS:
        return None
    # struct nlmsgerr: int error + the request's nlmsghdr (+ its payload unless capped).
    pos = offset + _NLMSGHDR.size + 4
    request_len = _NLMSGHDR.unpack_from(data, pos)[0]
    pos += _NLMSGHDR.size if flags & NLM_F_CAPPED else request_len
    end = offset + length
    while pos + 4 <= end:
        alen, kind = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            break
        if kind == NLMSGERR_ATTR_MSG:
            return data[pos + 4 : pos + alen].split(b"\0", 1)[0].decode(errors="replace")
        pos += (alen + 3) & ~3
    return None


class RtnlSocket:
    """A ``NETLINK_ROUTE`` socket that sends one request at a time and reads its answer.

    Not thread-safe: one thread uses it at a time (see :class:`SocketPool`).
    The socket keeps the network namespace it was created in, whichever
    thread uses it later.
    """

    def __init__(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock = sock
        self._seq = 0
        try:
            sock.bind((0, 0))
            # Capped ACKs without the echoed request; a text reason on errors.
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RtnlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg_type: int, flags: int, body: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, self._seq, 0)
        self._sock.send(header + body)
        return self._seq

    def _answer(self, seq: int) -> tuple[int, bytes, int]:
        """The first answer to request ``seq``: ``(type, data, offset)``; errors raise."""
        while True:
            data = self._sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, flags, got, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    break
                if got == seq:
                    if kind == NLMSG_ERROR:
                        (error,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                        if error:
                            raise RtnlError(-error, _extack(data, offset, length, flags))
                    return kind, data, offset
                # An answer to an earlier request abandoned by an exception.
                offset += (length + 3) & ~3

    def request(self, msg_type: int, body: bytes, flags: int = 0) -> None:
        """Send one request and wait for its ACK; :class:`RtnlError` if refused."""
        seq = self._send(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, body)
        self._answer(seq)

    def create(self, msg_type: int, body: bytes) -> None:
        """A request that creates something that must not exist yet (``EEXIST``)."""
        self.request(msg_type, body, NLM_F_CREATE | NLM_F_EXCL)

    def batch(self, requests: Sequence[tuple[int, bytes, int]]) -> list[RtnlError | None]:
        """Send ``(type, body, flags)`` requests in one datagram; the outcome of each, in order.

        The kernel handles the messages of a datagram one after the other, as
        separate requests would be, and acknowledges each: a failed one does
        not stop the next. ``None`` is a success, an :class:`RtnlError` the
        refusal. One ``send`` instead of one per request, and the answers
        are read as they come.
        """
        if not requests:
            return []
        parts: list[bytes] = []
        first = (self._seq + 1) & 0xFFFFFFFF
        for msg_type, body, flags in requests:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            parts.append(
                _NLMSGHDR.pack(
                    _NLMSGHDR.size + len(body),
                    msg_type,
                    NLM_F_REQUEST | NLM_F_ACK | flags,
                    self._seq,
                    0,
                )
            )
            parts.append(body)
        self._sock.send(b"".join(parts))
        outcomes: list[RtnlError | None] = []
        for i in range(len(requests)):
            try:
                self._answer((first + i) & 0xFFFFFFFF)
            except RtnlError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    def link_index(self, name: str) -> int | None:
        """Index of link ``name`` in this socket's namespace, ``None`` when absent."""
        seq = self._send(RTM_GETLINK, NLM_F_REQUEST, link_by_name(name))
        try:
            kind, data, offset = self._answer(seq)
        except RtnlError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        if kind != RTM_NEWLINK:  # pragma: no cover - the kernel answers a GET with the link
            raise RtnlError(errno.EPROTO, f"unexpected answer type {kind} to RTM_GETLINK")
        return int(_IFINFOMSG.unpack_from(data, offset + _NLMSGHDR.size)[2])


class SocketPool:
    """Idle :class:`RtnlSocket` s of one namespace, reused across requests and threads.

    ``open_socket`` makes a raw netlink socket in the right namespace. A
    socket is closed instead of being returned to the pool when its I/O
    failed (``OSError``) or the block was interrupted (``KeyboardInterrupt``
    and the like); after a refusal by the kernel or any other error of the
    caller's it is kept: answers left unread are skipped by sequence number.
    """

    def __init__(self, open_socket: Callable[[], socket.socket], keep: int = 8) -> None:
        self._open = open_socket
        self._keep = keep
        self._idle: list[RtnlSocket] = []
        self._lock = threading.Lock()

    @contextmanager
    def socket(self) -> Iterator[RtnlSocket]:
        with self._lock:
            rtnl = self._idle.pop() if self._idle else None
        if rtnl is None:
            rtnl = RtnlSocket(self._open())
        try:
            yield rtnl
        except RtnlError:
            self._release(rtnl)
            raise
        except OSError:
            rtnl.close()
            raise
        except Exception:
            self._release(rtnl)
            raise
        except BaseException:
            rtnl.close()
            raise
        self._release(rtnl)

    def _release(self, rtnl: RtnlSocket) -> None:
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(rtnl)
                return
        rtnl.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for rtnl in idle:
            rtnl.close()
