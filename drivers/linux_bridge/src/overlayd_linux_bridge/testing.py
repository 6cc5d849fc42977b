"""Test helpers for privileged tests: throwaway namespaces and traffic probes.

Shipped in the package (like :mod:`overlayd_linux_bridge.fakenetlink`) so that
the driver's and third parties' functional suites can reuse them. Nothing here
touches the caller's own namespace: namespaces are created with unique names,
sockets are opened inside them, and :func:`throwaway_netns` removes what it
made even when the block fails.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import select
import socket
import subprocess
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from overlayd_linux import icmp
from overlayd_linux.netns import run_in_netns

__all__ = ["NETNS_DIR", "Netns", "link_outside", "ping", "throwaway_netns", "udp_probe"]

NETNS_DIR = "/run/netns"


@dataclass
class Netns:
    """A throwaway named namespace with a pinned descriptor."""

    name: str
    path: str
    fd: int

    def ip(self, *args: str) -> str:
        """Run ``ip -n <ns> ...`` and return its output (for assertions)."""
        proc = subprocess.run(  # noqa: S603
            ["ip", "-n", self.name, *args],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        )
        return proc.stdout

    def sysctl(self, key: str) -> str:
        """Read ``/proc/sys/<key>`` (e.g. ``net/ipv6/conf/eth0/accept_ra``) in this namespace."""

        def read() -> str:
            with open(f"/proc/sys/{key}", encoding="ascii") as f:
                return f.read().strip()

        return run_in_netns(self.fd, read)

    def socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket that lives in this namespace."""
        return run_in_netns(self.fd, lambda: socket.socket(family, kind, proto))


@contextmanager
def throwaway_netns() -> Iterator[Callable[[str], Netns]]:
    """Yield a factory of uniquely named namespaces; remove them all on exit."""
    made: list[Netns] = []

    def make(role: str) -> Netns:
        name = f"ovt-{role}-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True)  # noqa: S603, S607
        path = f"{NETNS_DIR}/{name}"
        ns = Netns(name, path, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in reversed(made):
            os.close(ns.fd)
            subprocess.run(  # noqa: S603
                ["ip", "netns", "del", ns.name],  # noqa: S607
                check=False,
            )


def link_outside(host: Netns, outside: Netns, subnet: str) -> None:
    """Link ``outside`` to ``host`` by a veth pair (``upl0`` in ``host``, ``upl1`` in
    ``outside``), up, holding the first and the second address of ``subnet``.

    ``outside`` stands for the node's own network: a client there (the second
    address) reaches the node at the first. Its loopback is set up too.
    """
    net = ipaddress.ip_network(subnet)
    first, second = (f"{net[i]}/{net.prefixlen}" for i in (1, 2))
    host.ip("link", "add", "upl0", "type", "veth", "peer", "name", "upl1", "netns", outside.name)
    host.ip("addr", "add", first, "dev", "upl0")
    host.ip("link", "set", "upl0", "up")
    outside.ip("addr", "add", second, "dev", "upl1")
    outside.ip("link", "set", "upl1", "up")
    outside.ip("link", "set", "lo", "up")


def ping(ns: Netns, dst: str, timeout: float = 2.0) -> bool:
    """Send one ICMP(v6) echo request from ``ns`` and wait for the reply.

    Uses a raw socket created inside ``ns``, so no ``ping`` binary is needed.
    """
    with run_in_netns(ns.fd, lambda: icmp.echo_socket(icmp.family_of(dst))) as sock:
        return icmp.echo(sock, dst, timeout=timeout) is not None


def udp_probe(
    sender: Netns,
    dst: str,
    dst_port: int,
    receiver: Netns,
    listen_port: int,
    timeout: float = 2.0,
) -> str | None:
    """Send one UDP datagram from ``sender`` to ``dst:dst_port``.

    Return the source address the datagram shows when it arrives on
    ``listen_port`` in ``receiver`` (after any NAT on the way), or ``None``
    when nothing arrives.
    """
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    token = secrets.token_bytes(12)
    with (
        receiver.socket(family, socket.SOCK_DGRAM) as rx,
        sender.socket(family, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind((wildcard, listen_port))
        tx.sendto(token, (dst, dst_port))
        while True:
            ready, _, _ = select.select([rx], [], [], timeout)
            if not ready:
                return None
            data, addr = rx.recvfrom(2048)
            if data == token:
                return str(addr[0])
