"""The netlink seam of the linux_bridge driver: the :class:`Netlink` protocol and its values.

The driver's policy (:mod:`overlayd_linux_bridge.driver`) is written against
:class:`Netlink`; :class:`overlayd_linux_bridge.netlink.PyrouteNetlink` is the
real implementation and :class:`overlayd_linux_bridge.fakenetlink.FakeNetlink`
the in-memory one. This module holds what both share and nothing that needs
Linux, so the driver and the fake import it anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from ipaddress import IPv4Interface
from ipaddress import IPv4Network
from ipaddress import IPv6Address
from ipaddress import IPv6Interface
from ipaddress import IPv6Network
from typing import Final
from typing import Protocol

from overlayd.errors import AttachError

__all__ = [
    "FORWARDING_SYSCTLS",
    "STATIC_IPV6_SYSCTLS",
    "TOMBSTONE_GROUP",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "LinkExistsError",
    "LinkInfo",
    "Netlink",
    "RouteSpec",
    "VethResult",
    "VethSpec",
]

IPInterface = IPv4Interface | IPv6Interface
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

#: Link group of links waiting for batched deletion ("ovld" in ASCII). Link
#: groups are a u32 the kernel only uses for matching (``ip link ... group``).
TOMBSTONE_GROUP: Final = 0x6F766C64
#: The forwarding sysctls, per family.
FORWARDING_SYSCTLS: Final = {
    4: "/proc/sys/net/ipv4/ip_forward",
    6: "/proc/sys/net/ipv6/conf/all/forwarding",
}

#: Written under ``/proc/sys/net/ipv6/conf/<ifname>/`` for a workload interface
#: with IPv6 addresses, before it comes up. Its addresses and routes are
#: static, so it neither solicits nor accepts router advertisements (a rogue
#: RA from another container could otherwise redirect its traffic), and its
#: addresses are unique by allocation, so no duplicate address detection,
#: whose probes the bridge would flood to every port.
STATIC_IPV6_SYSCTLS: Final = {"accept_ra": "0", "router_solicitations": "0", "accept_dad": "0"}


class LinkExistsError(AttachError):
    """A link the operation must create already exists."""

    code = "conflict"


@dataclass(frozen=True)
class RouteSpec:
    """A route inside a workload namespace."""

    #: Destination (``0.0.0.0/0`` / ``::/0`` for a default route).
    dst: IPNetwork
    #: Next hop; ``None`` makes an on-link route (the ``join_global`` host route).
    gateway: IPAddress | None = None


@dataclass(frozen=True)
class LinkInfo:
    """What a link listing reports."""

    #: Interface name.
    name: str
    #: Interface index in its namespace.
    index: int
    #: ``IFLA_INFO_KIND`` (``bridge``, ``veth``...) or ``None`` for plain devices.
    kind: str | None
    #: Index of the master (bridge) or ``None``.
    master: int | None
    #: Link group (``0`` by default, :data:`TOMBSTONE_GROUP` when pending deletion).
    group: int
    #: Administratively up.
    up: bool
    #: MTU in bytes.
    mtu: int
    #: ``IFLA_IFALIAS`` (``ip link set ... alias``), the ownership tag of bridges.
    alias: str | None = None


@dataclass(frozen=True)
class VethSpec:
    """A veth to create: a host end and its peer inside a workload namespace.

    What :meth:`Netlink.create_veth_into_netns` does with each field is in its
    docstring.
    """

    #: Name of the host end.
    host_name: str
    #: Descriptor of the workload's network namespace, where the peer is created.
    netns_fd: int
    #: Name of the peer inside the namespace (``eth0``...).
    container_ifname: str
    #: Addresses of the container end.
    addresses: Sequence[IPInterface]
    #: One default route inside the namespace per gateway.
    gateways: Sequence[IPAddress] = ()
    #: Further routes inside the namespace.
    routes: Sequence[RouteSpec] = ()
    #: MTU of both ends; ``None`` keeps the kernel's default.
    mtu: int | None = None
    #: Bridge the host end is enslaved to, if any.
    bridge: str | None = None
    #: On-link routes on the host pointing at the host end.
    host_routes: Sequence[IPNetwork] = ()
    #: IPv4 proxy ARP on the host end.
    proxy_arp: bool = False
    #: Addresses of the host end.
    host_addresses: Sequence[IPInterface] = ()
    #: MAC of the container end (``"02:…"``); ``None`` lets the kernel pick one.
    container_mac: str | None = None


@dataclass(frozen=True)
class VethResult:
    """The two ends of a veth created by :meth:`Netlink.create_veth_into_netns`."""

    #: Index of the host end in the host namespace.
    host_index: int
    #: Index of the container end inside the workload namespace.
    container_index: int
    #: MAC address of the container end.
    container_mac: str


class Netlink(Protocol):
    """The netlink mechanisms the linux_bridge driver needs."""

    def ensure_bridge(
        self,
        name: str,
        addresses: Sequence[IPInterface],
        mtu: int | None = None,
        alias: str | None = None,
    ) -> int:
        """Create or adopt bridge ``name`` (STP off, up, ``addresses`` present).

        Idempotent: an existing bridge is kept (never deleted and recreated), the
        missing addresses are added and foreign ones left alone; ``alias`` (when
        given) is set as ``IFLA_IFALIAS``. Returns the ifindex. Raises
        :class:`DeviceError` when ``name`` exists but is not a bridge, or the
        kernel refuses.
        """
        ...

    def delete_link(self, name: str) -> bool:
        """Delete link ``name`` now; ``False`` when it did not exist."""
        ...

    def create_veth_into_netns(self, spec: VethSpec) -> VethResult:
        """Create the veth ``spec`` describes, its peer directly in the workload namespace.

        Inside the namespace: the addresses, ``lo`` and the interface up, one
        default route per gateway, then ``routes``. On the host: the end is
        enslaved to ``bridge`` (if given) and set up, ``host_routes`` point
        on-link at it, ``proxy_arp`` turns on IPv4 proxy ARP on it (a
        routed, unbridged end answering ARP for the addresses it routes) and
        ``host_addresses`` are added to it (e.g. ``fe80::1/64``, a next hop
        that routes inside the namespace can name). Interfaces without an
        IPv6 address (the host end unless ``host_addresses`` has one) get no
        IPv6 link-local address: nothing is flooded to other bridge ports; a
        container end with IPv6 addresses gets :data:`STATIC_IPV6_SYSCTLS`. All
        or nothing: on failure the pair is deleted. Raises
        :class:`LinkExistsError` when ``host_name`` or ``container_ifname`` is
        taken, :class:`AttachError` otherwise.
        """
        ...

    def delete_links_batch(self, names: Sequence[str]) -> int:
        """Free ``names`` now and delete the links in the background.

        Returns how many existed. The names are reusable on return.
        """
        ...

    def delete_links(self, names: Sequence[str], timeout: float = 10.0) -> int:
        """Delete ``names`` and return once the kernel has removed them.

        Returns how many existed. Like :meth:`delete_links_batch`, but waits
        for the batch that takes these links (concurrent callers share it), so
        the container end of a deleted veth is gone on return too. Raises
        :class:`~overlayd.errors.DeviceError` when the deletion fails or takes
        longer than ``timeout`` (the names are free all the same).
        """
        ...

    def flush_deletions(self, timeout: float = 10.0) -> None:
        """Wait until every deferred deletion has been done."""
        ...

    def sweep_tombstones(self) -> int:
        """Queue the deletion of tombstones a previous run left behind; return how many."""
        ...

    def list_links(self, prefix: str = "") -> list[LinkInfo]:
        """Links of the host namespace whose name starts with ``prefix``."""
        ...

    def link_exists(self, name: str) -> bool:
        """Whether link ``name`` exists in the host namespace."""
        ...

    def enable_forwarding(self, *, ipv4: bool = True, ipv6: bool = False) -> dict[str, str]:
        """Turn the forwarding sysctls on; return the previous value of each written.

        Never turns them off again: other software may rely on them.
        """
        ...

    def warm_up(self) -> None:
        """Open what the first attach would open lazily; create and change nothing."""
        ...

    def close(self) -> None:
        """Finish deferred deletions and release resources."""
        ...
