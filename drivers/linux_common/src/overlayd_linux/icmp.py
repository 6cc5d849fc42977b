"""ICMP and ICMPv6 echo over a raw socket, so that no ``ping`` binary is needed.

The socket decides the namespace the echo leaves from: create it inside a
namespace (:func:`overlayd_linux.netlink.socket_in`) to ping from there.
:func:`echo_socket` makes the right raw socket for an address;
:func:`echo` sends one request on it and waits for the matching reply.
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import time
from typing import Final

__all__ = ["checksum", "echo", "echo_socket", "family_of"]

_ECHO_V4: Final = (8, 0)  # request, reply
_ECHO_V6: Final = (128, 129)
_HEADER: Final = struct.Struct("!BBHHH")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def family_of(dst: str) -> int:
    """``AF_INET6`` for an IPv6 address, else ``AF_INET``."""
    return socket.AF_INET6 if ":" in dst else socket.AF_INET


def echo_socket(family: int) -> socket.socket:
    """A raw ICMP (``AF_INET``) or ICMPv6 (``AF_INET6``) socket in the caller's namespace."""
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    return socket.socket(family, socket.SOCK_RAW, proto)


def echo(
    sock: socket.socket,
    dst: str,
    *,
    ident: int | None = None,
    seq: int = 1,
    timeout: float = 2.0,
) -> float | None:
    """Send one echo request to ``dst``; the round-trip time in seconds, or ``None``.

    A reply counts when its type, identifier, sequence number and payload
    match the request; anything else on the socket is skipped.
    """
    v6 = sock.family == socket.AF_INET6
    request, reply = _ECHO_V6 if v6 else _ECHO_V4
    ident = secrets.randbits(16) if ident is None else ident
    payload = secrets.token_bytes(16)
    header = _HEADER.pack(request, 0, 0, ident, seq)
    # The kernel fills in the ICMPv6 checksum of raw sockets itself.
    csum = 0 if v6 else checksum(header + payload)
    start = time.perf_counter()
    sock.sendto(_HEADER.pack(request, 0, csum, ident, seq) + payload, (dst, 0))
    while (left := timeout - (time.perf_counter() - start)) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        data, _ = sock.recvfrom(2048)
        if not v6:
            data = data[(data[0] & 0x0F) * 4 :]  # strip the IPv4 header
        if len(data) < _HEADER.size:
            continue
        kind, _, _, rid, rseq = _HEADER.unpack_from(data)
        if kind == reply and rid == ident and rseq == seq and data[_HEADER.size :] == payload:
            return time.perf_counter() - start
    return None
