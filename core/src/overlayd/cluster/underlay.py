"""The default ``advertise`` address: the address of the interface holding the default route.

Read from ``/proc/net/route`` / ``/proc/net/ipv6_route`` and the interface's
addresses, so nothing is sent anywhere to find it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import sys
from pathlib import Path

from overlayd.cluster.errors import ClusterError

# POSIX only (mypy --platform win32 skips the rest).
assert sys.platform != "win32", "finding the default route address reads Linux's /proc"

__all__ = ["default_route_address"]

_SIOCGIFADDR = 0x8915


def _v4_default_interface(proc: Path) -> str | None:
    try:
        lines = (proc / "net" / "route").read_text().splitlines()[1:]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            metric = int(fields[6])
            if best is None or metric < best[0]:
                best = (metric, fields[0])
    return best[1] if best else None


def _v4_address(interface: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(
                sock.fileno(), _SIOCGIFADDR, struct.pack("256s", interface.encode()[:15])
            )
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _v6_default(proc: Path) -> str | None:
    try:
        routes = (proc / "net" / "ipv6_route").read_text().splitlines()
        addrs = (proc / "net" / "if_inet6").read_text().splitlines()
    except OSError:
        return None
    interface = None
    for line in routes:
        f = line.split()
        if len(f) >= 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo":
            interface = f[9]
            break
    if interface is None:
        return None
    for line in addrs:
        f = line.split()
        if len(f) >= 6 and f[5] == interface:
            addr = ipaddress.IPv6Address(int(f[0], 16))
            if not addr.is_link_local:
                return str(addr)
    return None


def default_route_address(proc: Path = Path("/proc")) -> str:
    """The IPv4 (else IPv6) address of the interface holding the default route.

    :raises ClusterError: there is no default route or its interface has no address.
    """
    interface = _v4_default_interface(proc)
    if interface is not None:
        addr = _v4_address(interface)
        if addr is not None:
            return addr
    addr6 = _v6_default(proc)
    if addr6 is not None:
        return addr6
    raise ClusterError(
        "cannot find the address of the default route's interface; "
        "set `advertise` in [cluster] to the underlay address peers dial"
    )
