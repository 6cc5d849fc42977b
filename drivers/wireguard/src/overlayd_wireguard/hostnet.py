"""Host networking the WireGuard driver needs besides the device itself (pyroute2).

Two things, both scoped to the driver's network namespace:

* routes for peers' allowed IPs that the device's own (connected) prefixes do
  not cover, as wg-quick adds them -- needed for dedicated devices, whose
  address is a /32;
* a listing of the WireGuard links in the namespace (``tun`` links of
  userspace implementations, ``wireguard`` links of the kernel), so that
  reconcile only ever looks at devices that are really in *this* node's
  namespace (``/var/run/wireguard`` is shared by every namespace of the host).

One ``IPRoute`` per call (STYLE.md §7).
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable
from typing import Any
from typing import Protocol

from overlayd.errors import DeviceError
from overlayd_wireguard.links import NETLINK_ERRORS
from overlayd_wireguard.links import error_code

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


def _iproute(netns: str | None) -> Any:
    from pyroute2 import IPRoute

    return IPRoute(netns=netns) if netns else IPRoute()


class PyRoute2HostNet:
    """:class:`HostNet` over pyroute2 ``IPRoute``."""

    def _index(self, ipr: Any, ifname: str) -> int | None:
        found = ipr.link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    def add_routes(self, ifname: str, prefixes: Iterable[str], *, netns: str | None) -> None:
        todo = list(prefixes)
        if not todo:
            return
        try:
            with _iproute(netns) as ipr:
                idx = self._index(ipr, ifname)
                if idx is None:
                    raise DeviceError(
                        f"cannot add routes through {ifname}: the link does not exist; "
                        "the WireGuard process may have exited",
                        op="add_routes",
                        driver="wireguard",
                    )
                for prefix in todo:
                    net = ipaddress.ip_network(prefix)
                    ipr.route(
                        "replace",
                        dst=str(net.network_address),
                        dst_len=net.prefixlen,
                        oif=idx,
                        family=10 if net.version == 6 else 2,
                    )
        except NETLINK_ERRORS as exc:
            raise DeviceError(
                f"adding routes through WireGuard device {ifname} failed: {exc}",
                op="add_routes",
                driver="wireguard",
            ) from exc

    def delete_routes(self, ifname: str, prefixes: Iterable[str], *, netns: str | None) -> None:
        todo = list(prefixes)
        if not todo:
            return
        try:
            with _iproute(netns) as ipr:
                idx = self._index(ipr, ifname)
                if idx is None:
                    return  # the link's routes went with it
                for prefix in todo:
                    net = ipaddress.ip_network(prefix)
                    try:
                        ipr.route(
                            "del",
                            dst=str(net.network_address),
                            dst_len=net.prefixlen,
                            oif=idx,
                            family=10 if net.version == 6 else 2,
                        )
                    except NETLINK_ERRORS as exc:
                        if error_code(exc) not in {errno.ESRCH, errno.ENOENT}:
                            raise
        except NETLINK_ERRORS as exc:
            raise DeviceError(
                f"removing routes through WireGuard device {ifname} failed: {exc}",
                op="delete_routes",
                driver="wireguard",
            ) from exc

    def wireguard_links(self, *, netns: str | None) -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            with _iproute(netns) as ipr:
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
