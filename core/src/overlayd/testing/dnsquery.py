"""Real DNS queries for tests of the built-in DNS server: a port for it, a query with a retry."""

from __future__ import annotations

import socket

import dns.asyncquery
import dns.exception
import dns.message

__all__ = ["free_port", "query"]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1, as the DNS server needs.

    Free for UDP alone is not enough: the same number may be the source port
    of a TCP connection still open, and the server's TCP bind then fails.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


async def query(name: str, port: int, rdtype: str = "A") -> dns.message.Message:
    msg = dns.message.make_query(name, rdtype)
    for _ in range(2):  # a busy CI machine may delay one datagram past the timeout
        try:
            return await dns.asyncquery.udp(msg, "127.0.0.1", port=port, timeout=3)
        except dns.exception.Timeout:
            continue
    return await dns.asyncquery.udp(msg, "127.0.0.1", port=port, timeout=5)
