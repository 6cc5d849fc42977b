"""In-memory :class:`~overlayd_linux_bridge.netlink.Netlink` for unit tests.

It models the kernel rules the driver policy depends on, so that policy bugs
fail against the fake the way they would against Linux:

* names longer than 15 bytes are refused (``EINVAL``);
* creating a link whose name is taken raises, in the host namespace or in the
  workload namespace;
* deleting the host end of a veth deletes the container end too;
* batched deletion frees the names at once and removes the links only when
  :meth:`FakeNetlink.flush_deletions` runs (or :attr:`auto_flush` is set);
* a workload namespace must be registered (:meth:`FakeNetlink.new_netns`), an
  unknown descriptor fails like ``EBADF``.

It records every call in :attr:`FakeNetlink.calls` and can inject failures
with :meth:`FakeNetlink.fail_next`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from ipaddress import ip_network
from typing import Any

from overlayd.errors import AttachError
from overlayd.errors import DeviceError
from overlayd.errors import OverlaydError
from overlayd.names import MAX_IFNAME
from overlayd.names import is_tombstone
from overlayd.names import tombstone_name
from overlayd_linux_bridge.linkapi import FORWARDING_SYSCTLS
from overlayd_linux_bridge.linkapi import TOMBSTONE_GROUP
from overlayd_linux_bridge.linkapi import IPInterface
from overlayd_linux_bridge.linkapi import IPNetwork
from overlayd_linux_bridge.linkapi import LinkExistsError
from overlayd_linux_bridge.linkapi import LinkInfo
from overlayd_linux_bridge.linkapi import RouteSpec
from overlayd_linux_bridge.linkapi import VethResult
from overlayd_linux_bridge.linkapi import VethSpec
from overlayd_linux_bridge.nft import PORT_GROUP

__all__ = ["FakeLink", "FakeNamespace", "FakeNetlink"]


@dataclass
class FakeLink:
    """One link in a fake namespace."""

    #: Interface name.
    name: str
    #: Interface index, unique within its namespace.
    index: int
    #: ``bridge``, ``veth`` or ``None``.
    kind: str | None
    #: MTU in bytes.
    mtu: int = 1500
    #: Administratively up.
    up: bool = False
    #: Index of the master bridge.
    master: int | None = None
    #: Link group.
    group: int = 0
    #: Addresses in the order they were added.
    addresses: list[IPInterface] = field(default_factory=list)
    #: For a veth: the namespace key (``None`` = host) and index of the peer.
    peer: tuple[int | None, int] | None = None
    #: MAC address, where the fake assigns one (the container end of a veth).
    mac: str | None = None
    #: ``IFLA_IFALIAS``.
    alias: str | None = None
    #: Host-namespace routes pointing on-link at this link.
    host_routes: list[IPNetwork] = field(default_factory=list)
    #: IPv4 proxy ARP enabled.
    proxy_arp: bool = False


@dataclass
class FakeNamespace:
    """Links and routes of one fake namespace."""

    #: Links by name.
    links: dict[str, FakeLink] = field(default_factory=dict)
    #: Routes added inside the namespace, with their interface name.
    routes: list[tuple[str, RouteSpec]] = field(default_factory=list)
    _indexes: itertools.count[int] = field(default_factory=lambda: itertools.count(2))

    def next_index(self) -> int:
        return next(self._indexes)

    def by_index(self, index: int) -> FakeLink | None:
        return next((lk for lk in self.links.values() if lk.index == index), None)


def _check_name(name: str) -> None:
    if not name or len(name.encode()) > MAX_IFNAME or "/" in name or name.isspace():
        raise DeviceError(f"Could not use interface name {name!r}: Invalid argument (errno 22).")


class FakeNetlink:
    """Kernel-like in-memory implementation of the netlink adapter."""

    def __init__(self, *, auto_flush: bool = False) -> None:
        #: The host namespace.
        self.host = FakeNamespace()
        lo = FakeLink("lo", 1, None, mtu=65536, up=True)
        self.host.links["lo"] = lo
        #: Workload namespaces by (fake) descriptor.
        self.namespaces: dict[int, FakeNamespace] = {}
        #: Values of the forwarding sysctls.
        self.sysctls: dict[str, str] = dict.fromkeys(FORWARDING_SYSCTLS.values(), "0")
        #: Previous values :meth:`enable_forwarding` replaced.
        self.previous_sysctls: dict[str, str] = {}
        #: Every call: (method name, keyword arguments).
        self.calls: list[tuple[str, dict[str, Any]]] = []
        #: Delete tombstones at once instead of waiting for a flush.
        self.auto_flush = auto_flush
        #: Number of batched deletions performed.
        self.deleter_batches = 0
        #: Whether deletions were queued since the last batch (like the real
        #: deleter, a flush with nothing queued deletes nothing).
        self._queued = False
        self._fail: dict[str, OverlaydError] = {}
        self._fds = itertools.count(1000)
        self._tokens = itertools.count(1)
        self.closed = False

    # -- test helpers -------------------------------------------------------------

    def new_netns(self) -> int:
        """Register a workload namespace and return its fake descriptor."""
        fd = next(self._fds)
        ns = FakeNamespace()
        ns.links["lo"] = FakeLink("lo", 1, None, mtu=65536)
        self.namespaces[fd] = ns
        return fd

    def remove_netns(self, fd: int) -> None:
        """Destroy a workload namespace: its veth ends die with it, as in Linux."""
        ns = self.namespaces.pop(fd)
        for link in ns.links.values():
            if link.peer is not None and link.peer[0] is None:
                host_end = self.host.by_index(link.peer[1])
                if host_end is not None:
                    del self.host.links[host_end.name]

    def fail_next(self, method: str, exc: OverlaydError) -> None:
        """Make the next call of ``method`` raise ``exc`` (before any change)."""
        self._fail[method] = exc

    def _record(self, method: str, **kwargs: Any) -> None:
        self.calls.append((method, kwargs))
        exc = self._fail.pop(method, None)
        if exc is not None:
            raise exc

    def _ns(self, fd: int) -> FakeNamespace:
        ns = self.namespaces.get(fd)
        if ns is None:
            raise AttachError(
                f"Could not enter network namespace fd {fd}: Bad file descriptor (errno 9)."
            )
        return ns

    # -- Netlink ------------------------------------------------------------------

    def ensure_bridge(
        self,
        name: str,
        addresses: Sequence[IPInterface],
        mtu: int | None = None,
        alias: str | None = None,
    ) -> int:
        self._record("ensure_bridge", name=name, addresses=list(addresses), mtu=mtu, alias=alias)
        _check_name(name)
        link = self.host.links.get(name)
        if link is None:
            link = FakeLink(name, self.host.next_index(), "bridge")
            self.host.links[name] = link
        elif link.kind != "bridge":
            raise DeviceError(
                f"Link {name} exists but is a {link.kind or 'plain device'}, "
                "not a bridge; remove it or choose another name."
            )
        link.up = True
        if mtu is not None:
            link.mtu = mtu
        if alias is not None:
            link.alias = alias
        for iface in addresses:
            if iface not in link.addresses:
                link.addresses.append(iface)
        return link.index

    def delete_link(self, name: str) -> bool:
        self._record("delete_link", name=name)
        link = self.host.links.get(name)
        if link is None:
            return False
        self._remove(link)
        return True

    def _remove(self, link: FakeLink) -> None:
        del self.host.links[link.name]
        for other in self.host.links.values():
            if other.master == link.index:
                other.master = None
        if link.peer is not None and link.peer[0] is not None:
            ns = self.namespaces.get(link.peer[0])
            if ns is not None:
                peer = ns.by_index(link.peer[1])
                if peer is not None:
                    del ns.links[peer.name]
                    ns.routes = [r for r in ns.routes if r[0] != peer.name]

    def create_veth_into_netns(self, spec: VethSpec) -> VethResult:
        self._record("create_veth_into_netns", spec=spec)
        _check_name(spec.host_name)
        _check_name(spec.container_ifname)
        ns = self._ns(spec.netns_fd)
        if spec.host_name in self.host.links:
            raise LinkExistsError(
                f"Host-side veth {spec.host_name} already exists; detach the "
                "previous attachment (or let reconcile sweep it) first."
            )
        master: int | None = None
        if spec.bridge is not None:
            br = self.host.links.get(spec.bridge)
            if br is None:
                raise AttachError(
                    f"Bridge {spec.bridge} does not exist; create the network "
                    "before attaching workloads to it."
                )
            master = br.index
        if spec.container_ifname in ns.links:
            # Like the real adapter: a pending tombstone may hold the peer name.
            self.sweep_tombstones()
            self.flush_deletions()
            if spec.container_ifname in ns.links:
                raise LinkExistsError(
                    f"Interface {spec.container_ifname} already exists in the "
                    "workload's network namespace; pick another interface name "
                    "or detach first."
                )
        for gw in spec.gateways:
            if not any(gw in a.network for a in spec.addresses):
                raise AttachError(
                    f"Could not attach {spec.container_ifname} (host end {spec.host_name}): "
                    "Network is unreachable (errno 101)."
                )
        h_index = self.host.next_index()
        c_index = ns.next_index()
        size = spec.mtu if spec.mtu is not None else 1500
        self.host.links[spec.host_name] = FakeLink(
            spec.host_name,
            h_index,
            "veth",
            mtu=size,
            up=True,
            master=master,
            group=PORT_GROUP if master is not None else 0,
            peer=(spec.netns_fd, c_index),
            host_routes=list(spec.host_routes),
            proxy_arp=spec.proxy_arp,
            addresses=list(spec.host_addresses),
        )
        ns.links[spec.container_ifname] = FakeLink(
            spec.container_ifname,
            c_index,
            "veth",
            mtu=size,
            up=True,
            addresses=list(spec.addresses),
            peer=(None, h_index),
            mac=spec.container_mac
            or f"02:00:00:00:{(c_index >> 8) & 0xFF:02x}:{c_index & 0xFF:02x}",
        )
        ns.links["lo"].up = True
        for gw in spec.gateways:
            default = "0.0.0.0/0" if gw.version == 4 else "::/0"
            ns.routes.append((spec.container_ifname, RouteSpec(ip_network(default), gw)))
        ns.routes.extend((spec.container_ifname, r) for r in spec.routes)
        return VethResult(h_index, c_index, ns.links[spec.container_ifname].mac or "")

    def delete_links_batch(self, names: Sequence[str]) -> int:
        self._record("delete_links_batch", names=list(names))
        count = 0
        for name in names:
            link = self.host.links.pop(name, None)
            if link is None:
                continue
            link.name = tombstone_name(next(self._tokens))
            link.group = TOMBSTONE_GROUP
            self.host.links[link.name] = link
            count += 1
        self._queued = self._queued or count > 0
        if self.auto_flush:
            self.flush_deletions()
        return count

    def delete_links(self, names: Sequence[str], timeout: float = 10.0) -> int:
        count = self.delete_links_batch(names)
        self.flush_deletions(timeout)
        return count

    def flush_deletions(self, timeout: float = 10.0) -> None:
        if not self._queued:
            return
        self._queued = False
        doomed = [lk for lk in self.host.links.values() if lk.group == TOMBSTONE_GROUP]
        if doomed:
            self.deleter_batches += 1
        for link in doomed:
            self._remove(link)

    def list_links(self, prefix: str = "") -> list[LinkInfo]:
        self._record("list_links", prefix=prefix)
        return [
            LinkInfo(lk.name, lk.index, lk.kind, lk.master, lk.group, lk.up, lk.mtu, lk.alias)
            for lk in sorted(self.host.links.values(), key=lambda lk: lk.index)
            if lk.name.startswith(prefix)
        ]

    def sweep_tombstones(self) -> int:
        self._record("sweep_tombstones")
        doomed = [
            lk
            for lk in self.host.links.values()
            if lk.group == TOMBSTONE_GROUP or is_tombstone(lk.name)
        ]
        for link in doomed:
            link.group = TOMBSTONE_GROUP
        self._queued = self._queued or bool(doomed)
        if self.auto_flush:
            self.flush_deletions()
        return len(doomed)

    def crash(self) -> None:
        """Forget the queued deletions, as a killed daemon's deleter thread does.

        The tombstones stay on the (fake) host, still holding their container
        ends, until something sweeps them again.
        """
        self._queued = False

    def link_exists(self, name: str) -> bool:
        return name in self.host.links

    def enable_forwarding(self, *, ipv4: bool = True, ipv6: bool = False) -> dict[str, str]:
        self._record("enable_forwarding", ipv4=ipv4, ipv6=ipv6)
        changed: dict[str, str] = {}
        for version, on in ((4, ipv4), (6, ipv6)):
            path = FORWARDING_SYSCTLS[version]
            if on and self.sysctls[path] != "1":
                changed[path] = self.sysctls[path]
                self.sysctls[path] = "1"
        for path, previous in changed.items():
            self.previous_sysctls.setdefault(path, previous)
        return changed

    def warm_up(self) -> None:
        self._record("warm_up")

    def close(self) -> None:
        self.flush_deletions()
        self.closed = True
