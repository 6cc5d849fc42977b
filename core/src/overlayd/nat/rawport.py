"""STUN messages sent from, and caught on, the WireGuard listen port itself.

A NAT maps a socket's packets by their source port, so a mapping learnt
from any other socket says nothing certain about the WireGuard port's. This
module therefore never binds the port (WireGuard holds it). It sends UDP
datagrams whose *source port is the WireGuard port* through a raw socket
(``SOCK_RAW``/``IPPROTO_UDP``: the kernel adds the IP header, the packet
leaves through the routing table and conntrack like WireGuard's own), and it
receives the answers on a raw socket of the same protocol: Linux hands every
locally delivered UDP datagram to matching raw sockets as well as to the UDP
socket that owns the port, so WireGuard gets (and drops) the STUN answer and
this module gets a copy.

A classic BPF program attached to the receiving sockets lets through only
datagrams addressed to the WireGuard port whose payload carries the STUN
magic cookie (bytes 4-7, ``0x2112A442``); WireGuard's own messages never
reach Python. The same works for wireguard-go and for kernel WireGuard:
both own an ordinary UDP port in the namespace the sockets are opened in.

Linux only; opening raw sockets needs ``CAP_NET_RAW``.
"""

from __future__ import annotations

import array
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import Final

from overlayd.errors import NotSupported

__all__ = ["SocketOpener", "WgPort", "bpf_program", "udp_checksum"]

log = logging.getLogger(__name__)

#: ``setsockopt(SOL_SOCKET, SO_ATTACH_FILTER, struct sock_fprog)`` (Linux).
SO_ATTACH_FILTER: Final = 26
#: ``IPV6_CHECKSUM``: the kernel computes the UDP checksum at this offset.
IPV6_CHECKSUM: Final = 7
STUN_COOKIE: Final = 0x2112A442
#: A variable, not a platform check mypy would narrow on: the class stays typed everywhere.
_LINUX: Final[bool] = sys.platform.startswith("linux")

#: Opens a socket in the network namespace of the WireGuard port:
#: ``opener(family, type, proto)``.
SocketOpener = Callable[[int, int, int], socket.socket]

# classic BPF opcodes
_LDXB_MSH: Final = 0xB1  # X = 4 * (pkt[k] & 0xf)
_LDH_IND: Final = 0x48  # A = u16 at X + k
_LDW_IND: Final = 0x40  # A = u32 at X + k
_LDH_ABS: Final = 0x28
_LDW_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_RET_K: Final = 0x06


def bpf_program(port: int, family: int) -> list[tuple[int, int, int, int]]:
    """The filter: UDP destination port ``port`` and the STUN magic cookie.

    On an IPv4 raw socket the program sees the packet from the IP header (its
    length read from the IHL field); on an IPv6 one from the UDP header.
    """
    if family == socket.AF_INET:
        # X = the IP header's length; the UDP header is loaded relative to it.
        head, load_half, load_word = [(_LDXB_MSH, 0, 0, 0)], _LDH_IND, _LDW_IND
    else:
        head, load_half, load_word = [], _LDH_ABS, _LDW_ABS
    return [
        *head,
        (load_half, 0, 0, 2),
        (_JEQ_K, 0, 3, port),
        (load_word, 0, 0, 12),
        (_JEQ_K, 0, 1, STUN_COOKIE),
        (_RET_K, 0, 0, 0xFFFF),
        (_RET_K, 0, 0, 0),
    ]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = array.array("B", code)
    address, _ = buf.buffer_info()
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HL", len(program), address)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    del buf  # the kernel copied the program during setsockopt


def udp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """RFC 768 checksum over the IPv4 pseudo header and ``segment`` (header + payload)."""
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, len(segment))
    data = pseudo + segment
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF) or 0xFFFF


def _drain_filter(sock: socket.socket) -> None:
    """Drop what reached the (non-blocking) socket before its filter was attached."""
    while True:
        try:
            sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return


class WgPort:
    """Raw IPv4 (and, when available, IPv6) sockets bound to one WireGuard port.

    :param port: The WireGuard listen port (UDP).
    :param opener: Opens sockets in the namespace where that port lives.
    """

    def __init__(self, port: int, opener: SocketOpener) -> None:
        if not _LINUX:
            raise NotSupported("NAT traversal from the WireGuard port needs Linux raw sockets")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not a UDP port")
        self.port = port
        self._opener = opener
        self.sockets: dict[int, socket.socket] = {}
        self._sources: dict[str, bytes] = {}

    def open(self) -> None:
        """Open the raw sockets; raises OSError when even IPv4 cannot be opened."""
        v4 = self._open_family(socket.AF_INET)
        self.sockets[socket.AF_INET] = v4
        try:
            v6 = self._open_family(socket.AF_INET6)
        except OSError as exc:
            log.info("NAT traversal without IPv6 on port %d: %s", self.port, exc)
        else:
            v6.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 6)
            self.sockets[socket.AF_INET6] = v6

    def _open_family(self, family: int) -> socket.socket:
        sock = self._opener(family, socket.SOCK_RAW, socket.IPPROTO_UDP)
        try:
            _attach_filter(sock, bpf_program(self.port, family))
            sock.setblocking(False)
            _drain_filter(sock)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()

    def _source(self, dst: str) -> bytes:
        """The IPv4 source address the kernel picks towards ``dst`` (for the checksum)."""
        src = self._sources.get(dst)
        if src is None:
            probe = self._opener(socket.AF_INET, socket.SOCK_DGRAM, 0)
            try:
                probe.connect((dst, 9))
                src = socket.inet_aton(probe.getsockname()[0])
            finally:
                probe.close()
            if len(self._sources) > 4096:
                self._sources.clear()
            self._sources[dst] = src
        return src

    def send(self, payload: bytes, dst: tuple[str, int]) -> None:
        """Send ``payload`` from the WireGuard port to ``dst``; raises OSError."""
        host, port = dst
        ip = ipaddress.ip_address(host)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        sock = self.sockets.get(family)
        if sock is None:
            raise OSError(
                errno.EAFNOSUPPORT, f"no IPv{ip.version} raw socket on the WireGuard port"
            )
        length = 8 + len(payload)
        header = struct.pack("!HHHH", self.port, port, length, 0)
        if family == socket.AF_INET:
            try:
                src = self._source(str(ip))
            except OSError:
                checksum = 0  # RFC 768: no checksum
            else:
                checksum = udp_checksum(src, ip.packed, header + payload)
            header = struct.pack("!HHHH", self.port, port, length, checksum)
            sock.sendto(header + payload, (str(ip), 0))
        else:
            sock.sendto(header + payload, (str(ip), 0, 0, 0))

    def receive(self, family: int) -> list[tuple[bytes, tuple[str, int]]]:
        """Every datagram waiting on ``family``'s socket: ``(payload, (src ip, src port))``."""
        sock = self.sockets.get(family)
        out: list[tuple[bytes, tuple[str, int]]] = []
        if sock is None:
            return out
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("raw receive on port %d failed: %s", self.port, exc)
                break
            offset = (data[0] & 0x0F) * 4 if family == socket.AF_INET else 0
            if len(data) < offset + 8:
                continue
            src_port, dst_port = struct.unpack_from("!HH", data, offset)
            if dst_port != self.port:
                continue
            with contextlib.suppress(ValueError):
                out.append((data[offset + 8 :], (str(ipaddress.ip_address(addr[0])), src_port)))
        return out
