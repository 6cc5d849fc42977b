"""pyroute2 sockets bound to a network namespace, and netlink error mapping.

A socket keeps the network namespace it was created in for life, whichever
thread uses it later. :func:`open_iproute` therefore creates the netlink
socket in a thread moved into the namespace (:func:`overlayd_linux.netns.run_in_netns`)
and hands it to ``IPRoute(fileno=...)``. ``IPRoute(netns=...)`` reaches the
same result through a helper process that pyroute2 forks for every socket,
which is many times slower (docs/design-notes.rst, "One home for Linux
mechanism"). overlayd never uses that forked path.

Namespaces are named three ways in overlayd: an open descriptor pinned by
the caller (linux_bridge workload namespaces), a path (``/proc/<pid>/ns/net``,
``/run/netns/<name>``) or a name under ``/run/netns`` (the wireguard driver's
``netns`` option). :func:`iproute_in` takes a path or a name.

Errors: pyroute2's ``NetlinkError`` does not derive from ``OSError``;
:data:`NETLINK_ERRORS` holds both, :func:`error_code` reads the errno of
either and :func:`strerror` writes it as a sentence with the kernel's
extended-ACK message when there is one. :func:`mapped_errors` turns them
into the caller's own error class.

pyroute2 is imported lazily: it is Linux-only, and the drivers' modules that
import this one must stay importable anywhere.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from typing import Final

from overlayd_linux.netns import open_network_namespace
from overlayd_linux.netns import run_in_netns

__all__ = [
    "NETLINK_ERRORS",
    "NETNS_DIR",
    "error_code",
    "iproute_in",
    "link_index",
    "mapped_errors",
    "netns_path",
    "open_iproute",
    "route_fields",
    "socket_in",
    "strerror",
]

#: Where ``ip netns add`` (and pyroute2) bind-mount named namespaces.
NETNS_DIR: Final = "/var/run/netns"
_NETLINK_ROUTE: Final = 0


def _netlink_error_types() -> tuple[type[Exception], ...]:
    # pyroute2's NetlinkError derives from Exception, not OSError.
    try:
        from pyroute2 import NetlinkError
    except ImportError:  # not Linux: only OSError can occur
        return (OSError,)
    return (OSError, NetlinkError)


#: Exceptions a netlink call raises for kernel and socket errors.
NETLINK_ERRORS: Final[tuple[type[Exception], ...]] = _netlink_error_types()


def error_code(exc: BaseException) -> int | None:
    """The errno of a ``NetlinkError`` (``.code``) or ``OSError`` (``.errno``)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    return exc.errno if isinstance(exc, OSError) else None


def strerror(exc: BaseException) -> str:
    """``"<reason> (errno N)"``, followed by the kernel's extended-ACK message if any."""
    code = error_code(exc)
    if code is not None and code > 0:
        reason = f"{os.strerror(code)} (errno {code})"
        extack = getattr(exc, "extack", None)
        return f"{reason}: {extack}" if extack else reason
    return str(exc)


@contextmanager
def mapped_errors(build: Callable[[BaseException], Exception]) -> Iterator[None]:
    """Raise ``build(exc)`` (chained) for a netlink or OS error raised in the block."""
    try:
        yield
    except NETLINK_ERRORS as exc:
        raise build(exc) from exc


def netns_path(netns: str) -> str:
    """The path of namespace ``netns``: a path as it is, a name under :data:`NETNS_DIR`."""
    return netns if "/" in netns else f"{NETNS_DIR}/{netns}"


def socket_in(netns_fd: int | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket created in the namespace ``netns_fd`` (``None``: the caller's)."""
    return run_in_netns(netns_fd, lambda: socket.socket(family, type_, proto))


def open_iproute(netns_fd: int | None) -> Any:
    """An ``IPRoute`` bound to the namespace ``netns_fd`` (``None``: the caller's).

    The caller keeps ``netns_fd`` open until this returns; the ``IPRoute``
    keeps working after the descriptor is closed.
    """
    from pyroute2 import IPRoute

    if netns_fd is None:
        return IPRoute()
    sock = socket_in(netns_fd, socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)
    return IPRoute(fileno=sock.detach())


def link_index(ipr: Any, name: str) -> int | None:
    """Index of link ``name`` in the namespace of ``ipr`` (an ``IPRoute``), ``None`` if absent."""
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def route_fields(prefix: str, oif: int) -> dict[str, Any]:
    """``IPRoute.route`` arguments for an on-link route to ``prefix`` through link ``oif``."""
    net = ipaddress.ip_network(prefix)
    return {
        "dst": str(net.network_address),
        "dst_len": net.prefixlen,
        "oif": oif,
        "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
    }


@contextmanager
def iproute_in(netns: str | None) -> Iterator[Any]:
    """An ``IPRoute`` in namespace ``netns`` (a path or a name; ``None``: ours), closed after.

    :raises FileNotFoundError: the namespace does not exist.
    """
    if not netns:
        ipr = open_iproute(None)
    else:
        fd = open_network_namespace(netns_path(netns))
        try:
            ipr = open_iproute(fd)
        finally:
            os.close(fd)
    with ipr:
        yield ipr
