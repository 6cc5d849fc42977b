"""Host networking the WireGuard driver needs besides the device itself (pyroute2).

Three things, all scoped to the driver's network namespace:

* routes for peers' allowed IPs that the device's own (connected) prefixes do
  not cover, as wg-quick adds them -- needed for dedicated devices, whose
  address is a /32;
* a listing of the WireGuard links in the namespace (``tun`` links of
  userspace implementations, ``wireguard`` links of the kernel), so that
  reconcile only ever looks at devices that are really in *this* node's
  namespace (``/var/run/wireguard`` is shared by every namespace of the host);
* the node's underlay address (:meth:`HostNet.underlay_address`), which a
  guest-managed workload is told to reach the node at.

Each call opens one ``IPRoute`` in the namespace and closes it when it
returns (:func:`overlayd_linux.netlink.iproute_in`: a socket made by a
thread inside the namespace, not pyroute2's forked helper).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any
from typing import Protocol

from overlayd.errors import DeviceError
from overlayd_linux.netlink import NETLINK_ERRORS
from overlayd_linux.netlink import error_code
from overlayd_linux.netlink import iproute_in
from overlayd_linux.netlink import link_index
from overlayd_linux.netlink import mapped_errors
from overlayd_linux.netlink import route_fields
from overlayd_wireguard.links import existing_link

__all__ = ["HostNet", "PyRoute2HostNet"]

#: Link kinds a WireGuard device shows up as.
WG_LINK_KINDS = frozenset({"tun", "wireguard"})


class HostNet(Protocol):
    """Routes and link listing in one network namespace."""

    def add_routes(self, ifname: str, prefixes: Iterable[str], *, netns: str | None) -> None:
        """Route every prefix through ``ifname`` (``replace``: idempotent)."""
        ...

    def delete_routes(self, ifname: str, prefixes: Iterable[str], *, netns: str | None) -> None:
        """Remove the routes of ``prefixes`` through ``ifname``; absent ones are fine."""
        ...

    def wireguard_links(self, *, netns: str | None) -> dict[str, str]:
        """Every ``tun``/``wireguard`` link of the namespace: name -> kind."""
        ...

    def underlay_address(self, *, netns: str | None) -> str | None:
        """The address the node is reached at on its underlay, or ``None``.

        The preferred source of the IPv4 default route (else the first global
        address of its interface), then the same for IPv6; without a default
        route, the first global address of an up link that is not loopback, not
        WireGuard and not overlayd's (``zl-``).
        """
        ...


def _route_errors(doing: str, ifname: str, op: str) -> AbstractContextManager[None]:
    return mapped_errors(
        lambda exc: DeviceError(
            f"{doing} routes through WireGuard device {ifname} failed: {exc}",
            op=op,
            driver="wireguard",
        )
    )


class PyRoute2HostNet:
    """:class:`HostNet` over pyroute2 ``IPRoute``."""

    def add_routes(self, ifname: str, prefixes: Iterable[str], *, netns: str | None) -> None:
        todo = list(prefixes)
        if not todo:
            return
        with _route_errors("adding", ifname, "add_routes"), iproute_in(netns) as ipr:
            idx = existing_link(ipr, ifname, "add routes through", "add_routes")
            for prefix in todo:
                ipr.route("replace", **route_fields(prefix, idx))

    def delete_routes(self, ifname: str, prefixes: Iterable[str], *, netns: str | None) -> None:
        todo = list(prefixes)
        if not todo:
            return
        with _route_errors("removing", ifname, "delete_routes"), iproute_in(netns) as ipr:
            idx = link_index(ipr, ifname)
            if idx is None:
                return  # the link's routes went with it
            for prefix in todo:
                try:
                    ipr.route("del", **route_fields(prefix, idx))
                except NETLINK_ERRORS as exc:
                    if error_code(exc) not in {errno.ESRCH, errno.ENOENT}:
                        raise

    def wireguard_links(self, *, netns: str | None) -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            with iproute_in(netns) as ipr:
                for msg in ipr.get_links():
                    name = msg.get_attr("IFLA_IFNAME")
                    info = msg.get_attr("IFLA_LINKINFO")
                    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
                    if isinstance(name, str) and kind in WG_LINK_KINDS:
                        out[name] = str(kind)
        except NETLINK_ERRORS as exc:
            raise DeviceError(
                f"listing the links of {'netns ' + netns if netns else 'the host namespace'} "
                f"failed: {exc}",
                op="device_list",
                driver="wireguard",
            ) from exc
        return out

    def underlay_address(self, *, netns: str | None) -> str | None:
        try:
            with iproute_in(netns) as ipr:
                return _underlay(ipr)
        except NETLINK_ERRORS:
            return None


_SCOPE_UNIVERSE = 0
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8


def _global_addresses(ipr: Any, family: int, index: int | None = None) -> list[str]:
    out: list[str] = []
    for msg in ipr.get_addr(family=family):
        if msg.get("scope") != _SCOPE_UNIVERSE:
            continue
        if index is not None and msg.get("index") != index:
            continue
        addr = msg.get_attr("IFA_ADDRESS")
        if isinstance(addr, str):
            out.append(addr)
    return out


def _underlay(ipr: Any) -> str | None:
    for family in (2, 10):
        for route in ipr.get_routes(family=family, table=254):
            if route.get("dst_len") != 0 or route.get_attr("RTA_DST") is not None:
                continue
            source = route.get_attr("RTA_PREFSRC")
            if isinstance(source, str):
                return source
            oif = route.get_attr("RTA_OIF")
            found = _global_addresses(ipr, family, oif) if oif is not None else []
            if found:
                return found[0]
    usable: set[int] = set()
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME") or ""
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        flags = int(link.get("flags") or 0)
        if (
            flags & _IFF_UP
            and not flags & _IFF_LOOPBACK
            and kind not in WG_LINK_KINDS
            and not str(name).startswith("zl-")
        ):
            usable.add(int(link.get("index")))
    for family in (2, 10):
        for msg in ipr.get_addr(family=family):
            if msg.get("scope") == _SCOPE_UNIVERSE and msg.get("index") in usable:
                addr = msg.get_attr("IFA_ADDRESS")
                if isinstance(addr, str):
                    return addr
    return None
