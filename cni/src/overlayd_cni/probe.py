"""What ``CHECK`` reads inside the container's network namespace.

The plugin process (single-threaded, about to exit) moves itself into
``CNI_NETNS`` with ``setns(2)`` and reads the interface there: whether it
exists and is up, its MAC (``SIOCGIFHWADDR``), its IPv4 address and prefix
(``SIOCGIFADDR``/``SIOCGIFNETMASK``) or IPv6 addresses
(``/proc/net/if_inet6``), and the routes via its gateway (``/proc/net/route``,
``/proc/net/ipv6_route``; ``/proc/net`` shows the namespace of the reading
process). Only the standard library is used; it is imported by ``CHECK`` only.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
from typing import Any

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B
_SIOCGIFHWADDR = 0x8927
_IFF_UP = 0x1


def enter(path: str) -> None:
    """Move this process into the network namespace at ``path``."""
    # The running process links libc; find_library would run ldconfig.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _ifreq(sock: socket.socket, request: int, ifname: str) -> bytes:
    buf = struct.pack("16s24x", ifname.encode())
    return fcntl.ioctl(sock.fileno(), request, buf)


def read_interface(ifname: str) -> dict[str, Any]:
    """The interface ``ifname`` of this process's namespace; raises ``OSError`` if absent."""
    out: dict[str, Any] = {"addresses": []}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack_from("H", _ifreq(sock, _SIOCGIFFLAGS, ifname), 16)[0]
        out["up"] = bool(flags & _IFF_UP)
        hw = _ifreq(sock, _SIOCGIFHWADDR, ifname)[18:24]
        out["mac"] = ":".join(f"{b:02x}" for b in hw)
        try:
            addr = socket.inet_ntoa(_ifreq(sock, _SIOCGIFADDR, ifname)[20:24])
            mask = socket.inet_ntoa(_ifreq(sock, _SIOCGIFNETMASK, ifname)[20:24])
        except OSError:  # EADDRNOTAVAIL: no IPv4 address
            pass
        else:
            out["addresses"].append(str(ipaddress.ip_interface(f"{addr}/{mask}")))
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                hexaddr, _, plen, _, _, name = line.split()
                if name == ifname:
                    ip = ipaddress.IPv6Address(bytes.fromhex(hexaddr))
                    out["addresses"].append(f"{ip}/{int(plen, 16)}")
    except FileNotFoundError:  # no IPv6 in this kernel
        pass
    return out


def read_routes(ifname: str) -> set[tuple[str, str]]:
    """``(destination, gateway)`` of the main table's routes through ``ifname``."""
    routes: set[tuple[str, str]] = set()
    with open("/proc/net/route", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[0] != ifname:
                continue
            dst = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
            gw = socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
            mask = socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
            routes.add((str(ipaddress.ip_network(f"{dst}/{mask}")), gw))
    try:
        with open("/proc/net/ipv6_route", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if fields[9] != ifname:
                    continue
                dst6 = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
                gw6 = ipaddress.IPv6Address(bytes.fromhex(fields[4]))
                routes.add((f"{dst6}/{int(fields[1], 16)}", str(gw6)))
    except FileNotFoundError:
        pass
    return routes


def verify(netns: str, ifname: str, expected: dict[str, Any]) -> str:
    """Enter ``netns`` and compare ``ifname`` with ``expected``; ``""`` when all is well.

    ``expected`` holds ``mac`` (or ``None``), ``addresses`` (CIDR strings) and
    ``routes`` (``(dst, gw)`` pairs), as the previous result lists them.
    """
    try:
        enter(netns)
    except OSError as exc:
        return f"cannot enter the network namespace {netns}: {exc}"
    try:
        found = read_interface(ifname)
    except OSError as exc:
        return f"interface {ifname} is missing in {netns} ({exc.strerror or exc})"
    problems: list[str] = []
    if not found["up"]:
        problems.append(f"{ifname} is down")
    mac = expected.get("mac")
    if mac and mac.lower() != found["mac"]:
        problems.append(f"{ifname} has MAC {found['mac']}, prevResult says {mac}")
    have = {str(ipaddress.ip_interface(a)) for a in found["addresses"]}
    for address in expected.get("addresses", []):
        if str(ipaddress.ip_interface(address)) not in have:
            problems.append(f"{ifname} lacks address {address} (has {sorted(have) or 'none'})")
    routes = read_routes(ifname)
    for dst, gw in expected.get("routes", []):
        if (str(ipaddress.ip_network(dst)), str(ipaddress.ip_address(gw))) not in routes:
            problems.append(f"route {dst} via {gw} on {ifname} is missing")
    return "; ".join(problems)
