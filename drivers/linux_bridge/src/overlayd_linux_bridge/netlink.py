"""Netlink mechanisms of the linux_bridge driver: bridges, veths, routes, sysctls.

:class:`PyrouteNetlink` implements the driver's seam
(:class:`overlayd_linux_bridge.linkapi.Netlink`, re-exported here with its
value types) with pyroute2 and the lean requests of :mod:`overlayd_linux.rtnl`;
the in-memory implementation is :class:`overlayd_linux_bridge.fakenetlink.FakeNetlink`.
Its helpers live beside it: :mod:`~overlayd_linux_bridge.nsprobe` (what an
attach reads inside the workload namespace), :mod:`~overlayd_linux_bridge.sysctl`
and :mod:`~overlayd_linux_bridge.deleter` (batched deletion).

Rules this module follows (docs/design-notes.rst, "A lean netlink path for attach"):

* the attach and detach hot path sends its requests through
  :mod:`overlayd_linux.rtnl` (encoded there, ACK read back, no event
  loop): host-namespace sockets are pooled per adapter, the workload
  namespace's socket lives for one attach;
* everything else (dumps, bridges, reconcile) opens one pyroute2 ``IPRoute``
  per adapter call (:func:`overlayd_linux.netlink.open_iproute`), closed
  when the call returns;
* names are resolved once (``SIOCGIFINDEX`` in our own namespace, one
  ``RTM_GETLINK`` elsewhere; absent = ``None``);
* tolerated errnos are named where they are tolerated;
* ``NetlinkError``/``OSError`` become :class:`overlayd.errors.DeviceError` or
  :class:`overlayd.errors.AttachError` with a sentence naming the object.

Namespaces. The adapter acts on a *host* namespace, which is the daemon's own
unless ``host_netns`` (a path such as ``/run/netns/x``) is given: tests run the
adapter inside a throwaway namespace that way and never touch the real host.
Workload namespaces are passed as open descriptors that the caller pins for
the whole operation (see :mod:`overlayd_linux.netns`).

Deferred deletion. Deleting a veth costs the kernel 15-25 ms (the unregister
path waits for RCU grace periods and the netdev refcount drain), and the cost
is per ``RTM_DELLINK``, not per link. :meth:`PyrouteNetlink.delete_links_batch`
therefore renames each link to a ``zx…`` tombstone and puts it in link group
:data:`TOMBSTONE_GROUP` (one ``RTM_NEWLINK`` each, under 1 ms), which frees its
name at once, then wakes a background thread
(:class:`~overlayd_linux_bridge.deleter.DeferredDeleter`) that deletes the
whole group with one ``RTM_DELLINK`` (``ifi_index = 0`` + ``IFLA_GROUP``, the
kernel's ``rtnl_group_dellink``, sent on a pooled raw socket like the hot
path's), i.e. one unregister batch for all links that accumulated.
Tombstones left by a crash are swept by
:meth:`PyrouteNetlink.sweep_tombstones`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from ipaddress import IPv4Network
from ipaddress import IPv6Network
from typing import Any
from typing import Final

from pyroute2 import NetlinkError

from overlayd.errors import AttachError
from overlayd.errors import DeviceError
from overlayd.errors import DriverError
from overlayd.names import is_tombstone
from overlayd.names import tombstone_name
from overlayd_linux import rtnl
from overlayd_linux.netlink import NETLINK_ERRORS
from overlayd_linux.netlink import error_code
from overlayd_linux.netlink import mapped_errors
from overlayd_linux.netlink import open_iproute
from overlayd_linux.netlink import strerror
from overlayd_linux.netns import run_in_netns
from overlayd_linux_bridge import nsprobe
from overlayd_linux_bridge.deleter import DeferredDeleter
from overlayd_linux_bridge.linkapi import FORWARDING_SYSCTLS
from overlayd_linux_bridge.linkapi import TOMBSTONE_GROUP
from overlayd_linux_bridge.linkapi import IPAddress
from overlayd_linux_bridge.linkapi import IPInterface
from overlayd_linux_bridge.linkapi import IPNetwork
from overlayd_linux_bridge.linkapi import LinkExistsError
from overlayd_linux_bridge.linkapi import LinkInfo
from overlayd_linux_bridge.linkapi import RouteSpec
from overlayd_linux_bridge.linkapi import VethResult
from overlayd_linux_bridge.linkapi import VethSpec
from overlayd_linux_bridge.nft import PORT_GROUP
from overlayd_linux_bridge.nsprobe import NsSocket
from overlayd_linux_bridge.nsprobe import if_index
from overlayd_linux_bridge.nsprobe import open_raw_socket
from overlayd_linux_bridge.sysctl import write_static_ipv6_sysctls
from overlayd_linux_bridge.sysctl import write_sysctl

__all__ = ["PyrouteNetlink", "bridge_mac", "netlink_errors"]

# <linux/if_addr.h>: skip duplicate address detection, so an IPv6 address is
# usable at once (a fresh veth cannot have a duplicate we would detect).
_IFA_F_NODAD: Final = 0x02
_DEFAULT_ROUTES: Final[dict[int, IPNetwork]] = {
    4: IPv4Network("0.0.0.0/0"),
    6: IPv6Network("::/0"),
}
_DEFAULT_LINGER: Final = 0.05

log = logging.getLogger(__name__)


def netlink_errors(
    action: str, error: type[DriverError] = DeviceError
) -> AbstractContextManager[None]:
    """Map netlink and OS errors raised in the block to ``error`` naming ``action``."""
    return mapped_errors(lambda exc: error(f"Could not {action}: {strerror(exc)}."))


def _kind(msg: Any) -> str | None:
    info = msg.get("IFLA_LINKINFO")
    if info is None:
        return None
    kind = info.get("IFLA_INFO_KIND")
    return str(kind) if kind is not None else None


def _link_up(
    sock: rtnl.RtnlSocket, index: int, *, quiet_ipv6: bool, master: int | None = None
) -> None:
    """Set link ``index`` up (and on ``master``), optionally without IPv6 link-local.

    Without a link-local address the link sends no DAD probe, MLD report or
    router solicitation when it comes up; a bridge floods each of those to
    every port, i.e. into every other container's namespace, which made the
    N-th attach cost grow with N (docs/design-notes.rst, "Quiet IPv6").
    The address generation mode travels in the same ``RTM_NEWLINK`` as the
    state change. A kernel without IPv6, or a link IPv6 cannot run on (MTU
    below 1280), refuses ``AF_INET6`` attributes with ``EAFNOSUPPORT`` before
    it changes anything; the link is then silent on IPv6 anyway and is set up
    without them.
    """
    if quiet_ipv6:
        try:
            sock.request(
                rtnl.RTM_NEWLINK, rtnl.link_change(index, up=True, master=master, quiet_ipv6=True)
            )
            return
        except NETLINK_ERRORS as exc:
            if error_code(exc) != errno.EAFNOSUPPORT:
                raise
    sock.request(rtnl.RTM_NEWLINK, rtnl.link_change(index, up=True, master=master))


#: A request that creates something that must not exist yet (``EEXIST``).
_CREATE: Final = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL


def _address_request(index: int, iface: IPInterface) -> tuple[int, bytes, int]:
    """The request adding ``iface`` to link ``index`` (``EEXIST``: already there, fine)."""
    flags = _IFA_F_NODAD if iface.version == 6 else 0
    return rtnl.RTM_NEWADDR, rtnl.address(index, iface, flags), _CREATE


def _add_address(sock: rtnl.RtnlSocket, index: int, iface: IPInterface) -> None:
    """Add ``iface`` to link ``index``; already present is fine."""
    try:
        sock.request(*_address_request(index, iface))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:  # already there: the goal is reached
            raise


def _configure_in_one_batch(
    ns: rtnl.RtnlSocket,
    index: int,
    addresses: Sequence[IPInterface],
    gateways: Sequence[IPAddress],
    routes: Sequence[RouteSpec],
    ipv6: bool,
    loopback: int | None,
) -> None:
    """Addresses, link up, ``lo`` up and routes of a container end, in one netlink datagram.

    The kernel handles them in this order, as separate requests would be
    (:meth:`overlayd_linux.rtnl.RtnlSocket.batch`); one ``send`` instead of
    one round trip each saved about 0.1 ms of a first attach
    (docs/design-notes.rst, "CNI plugin start-up"). An address already
    present is fine, as in :func:`_add_address`. A kernel that refuses the
    quiet IPv6 attributes (see :func:`_link_up`) has left the link down, so
    what followed it failed too: from the link on, the steps are then
    repeated one by one.
    """
    steps = [_address_request(index, iface) for iface in addresses]
    link_at = len(steps)
    steps.append((rtnl.RTM_NEWLINK, rtnl.link_change(index, up=True, quiet_ipv6=not ipv6), 0))
    if loopback is not None:
        steps.append((rtnl.RTM_NEWLINK, rtnl.link_change(loopback, up=True), 0))
    for gw in gateways:
        steps.append(
            (rtnl.RTM_NEWROUTE, rtnl.route(_DEFAULT_ROUTES[gw.version], index, gw), _CREATE)
        )
    for spec in routes:
        steps.append((rtnl.RTM_NEWROUTE, rtnl.route(spec.dst, index, spec.gateway), _CREATE))
    outcomes = ns.batch(steps)
    for error in outcomes[:link_at]:
        if error is not None and error.code != errno.EEXIST:
            raise error
    refused = outcomes[link_at]
    if refused is not None and not ipv6 and refused.code == errno.EAFNOSUPPORT:
        _link_up(ns, index, quiet_ipv6=False)
        for msg_type, body, flags in steps[link_at + 1 :]:
            try:
                ns.request(msg_type, body, flags)
            except NetlinkError as exc:
                # A route the batch did add after all is not a conflict.
                if not (msg_type == rtnl.RTM_NEWROUTE and exc.code == errno.EEXIST):
                    raise
        return
    for error in outcomes[link_at:]:
        if error is not None:
            raise error


@functools.lru_cache(maxsize=64)
def bridge_mac(name: str) -> str:
    """The MAC address overlayd gives bridge ``name``: stable, locally administered.

    Derived from the name, so a bridge recreated after a reboot gets the same
    address and containers' cached gateway entries stay valid.
    """
    digest = hashlib.sha256(b"overlayd-bridge:" + name.encode()).digest()
    # 0x02: locally administered, unicast.
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _link_info(msg: Any) -> LinkInfo:
    master = msg.get("IFLA_MASTER")
    alias = msg.get("IFLA_IFALIAS")
    return LinkInfo(
        name=str(msg.get("IFLA_IFNAME")),
        index=int(msg["index"]),
        kind=_kind(msg),
        master=int(master) if master else None,
        group=int(msg.get("IFLA_GROUP") or 0),
        up=bool(int(msg["flags"]) & 1),
        mtu=int(msg.get("IFLA_MTU") or 0),
        alias=str(alias) if alias else None,
    )


class PyrouteNetlink:
    """:class:`Netlink` implemented with pyroute2."""

    def __init__(
        self,
        host_netns: str | None = None,
        *,
        tombstone_group: int = TOMBSTONE_GROUP,
        linger: float = _DEFAULT_LINGER,
    ) -> None:
        #: Descriptor of the host namespace when it is not our own; pinned
        #: for the adapter's life.
        self._host_fd: int | None = None
        if host_netns is not None:
            self._host_fd = os.open(host_netns, os.O_RDONLY | os.O_CLOEXEC)
        self._group = tombstone_group
        #: Raw netlink sockets of the host namespace for the hot path.
        self._host_sockets = rtnl.SocketPool(self._open_host_socket)
        self._deleter = DeferredDeleter(self._delete_group, tombstone_group, linger)
        #: Previous values of the sysctls :meth:`enable_forwarding` changed.
        self.previous_sysctls: dict[str, str] = {}
        #: Bridges without multicast snooping: their ports join PORT_GROUP,
        #: whose MLD reports the MLD filter drops (:func:`.nft.mld_filter_ruleset`).
        self._quiet_bridges: set[str] = set()
        #: Open ``/proc/sys/net/ipv{4,6}/conf`` of the host namespace, by family.
        self._conf_dirs: dict[str, int] = {}
        self._conf_lock = threading.Lock()

    @property
    def deleter_batches(self) -> int:
        """How many batched ``RTM_DELLINK`` requests the background thread sent."""
        return self._deleter.batches

    def _host_ipr(self) -> Any:
        return open_iproute(self._host_fd)

    def _delete_group(self, group: int) -> None:
        """Delete every link of ``group`` in one request, through a pooled raw socket.

        The deleter thread used to open a pyroute2 ``IPRoute`` for each
        batch: 0.7-1.2 ms that every ``DEL`` waited for, beside the kernel's
        own 15-25 ms.
        """
        with self._host_sockets.socket() as host:
            host.request(rtnl.RTM_DELLINK, rtnl.link_change(0, group=group))

    def _open_host_socket(self) -> socket.socket:
        if self._host_fd is None:
            return open_raw_socket()
        return run_in_netns(self._host_fd, open_raw_socket)

    def warm_up(self) -> None:
        """Open a host socket for the pool and the host's sysctl directories now.

        The first attach would open them (the directories from a thread in
        the host namespace when it is not the daemon's own). Reading and
        opening only: nothing is created or changed.
        """
        with self._host_sockets.socket():
            pass
        run_in_netns(self._host_fd, lambda: [self._conf_dir(family) for family in ("ipv6", "ipv4")])

    def close(self, timeout: float = 10.0) -> None:
        try:
            self._deleter.close(timeout)
        finally:
            self._host_sockets.close()
            with self._conf_lock:
                for fd in self._conf_dirs.values():
                    os.close(fd)
                self._conf_dirs.clear()
            if self._host_fd is not None:
                os.close(self._host_fd)
                self._host_fd = None

    # -- links -----------------------------------------------------------------

    def link_exists(self, name: str) -> bool:
        with netlink_errors(f"look up link {name}"), self._host_sockets.socket() as host:
            return self._host_index(host, name) is not None

    def list_links(self, prefix: str = "") -> list[LinkInfo]:
        with netlink_errors("list links"), self._host_ipr() as ipr:
            links = [_link_info(m) for m in ipr.link("dump")]
        return [link for link in links if link.name.startswith(prefix)]

    def delete_link(self, name: str) -> bool:
        with netlink_errors(f"delete link {name}"), self._host_sockets.socket() as host:
            index = self._host_index(host, name)
            if index is None:
                return False
            try:
                host.request(rtnl.RTM_DELLINK, rtnl.link_change(index))
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:  # deleted meanwhile (e.g. peer netns died)
                    raise
                return False
            return True

    def ensure_bridge(
        self,
        name: str,
        addresses: Sequence[IPInterface],
        mtu: int | None = None,
        alias: str | None = None,
    ) -> int:
        with netlink_errors(f"create or adopt bridge {name}"), self._host_ipr() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                spec: dict[str, Any] = {"ifname": name, "kind": "bridge"}
                # IFLA_BR_STP_STATE: no spanning tree, ports forward at once.
                spec["br_stp_state"] = 0
                # No multicast snooping: without a querier on the segment the
                # bridge floods all multicast anyway, and snooping costs a
                # pass over every port (timers) on each port state change.
                spec["br_mcast_snooping"] = 0
                # A fixed MAC: the bridge keeps it whatever ports come and go
                # (containers' ARP entries for the gateway stay right), and
                # the kernel stops scanning all ports for the lowest MAC on
                # each port added or removed.
                spec["address"] = bridge_mac(name)
                if mtu is not None:
                    spec["mtu"] = mtu
                if alias is not None:
                    spec["ifalias"] = alias
                try:
                    ipr.link("add", **spec)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:  # created concurrently: adopt it
                        raise
                found = ipr.link_lookup(ifname=name)
                if not found:
                    raise DeviceError(
                        f"Bridge {name} was created but is not visible; retry the operation."
                    )
            index = int(found[0])
            msg = ipr.link("get", index=index)[0]
            kind = _kind(msg)
            if kind != "bridge":
                raise DeviceError(
                    f"Link {name} exists but is a {kind or 'plain device'}, "
                    "not a bridge; remove it or choose another name."
                )
            snooping = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_BR_MCAST_SNOOPING")
            if snooping == 0:
                self._quiet_bridges.add(name)
            else:
                # A snooping bridge with a querier on the segment would send
                # IPv6 multicast (neighbour solicitations included) only to
                # the ports that reported the group: its ports keep reporting.
                self._quiet_bridges.discard(name)
            changes: dict[str, Any] = {}
            if not int(msg["flags"]) & 1:
                changes["state"] = "up"
            if mtu is not None and int(msg.get("IFLA_MTU") or 0) != mtu:
                changes["mtu"] = mtu
            if alias is not None and msg.get("IFLA_IFALIAS") != alias:
                changes["ifalias"] = alias
            if changes:
                ipr.link("set", index=index, **changes)
            have = {
                (str(a.get("IFA_ADDRESS")), int(a["prefixlen"])) for a in ipr.get_addr(index=index)
            }
            missing = [
                iface for iface in addresses if (str(iface.ip), iface.network.prefixlen) not in have
            ]
            if missing:
                with self._host_sockets.socket() as host:
                    for iface in missing:
                        _add_address(host, index, iface)
            return index

    # -- veth ------------------------------------------------------------------

    def create_veth_into_netns(self, spec: VethSpec) -> VethResult:
        # The container end is configured through a socket that only a thread
        # inside its namespace can open: that thread starts now and does so
        # while the kernel creates the veth, not after.
        ns_socket = NsSocket(spec.netns_fd)
        try:
            return self._create_veth(spec, ns_socket, retry_after_flush=True)
        except NETLINK_ERRORS as exc:
            raise AttachError(
                f"Could not attach {spec.container_ifname} (host end {spec.host_name}): "
                f"{strerror(exc)}."
            ) from exc
        finally:
            ns_socket.close()

    def _create_veth(
        self,
        spec: VethSpec,
        ns_socket: NsSocket,
        *,
        retry_after_flush: bool,
    ) -> VethResult:
        with self._host_sockets.socket() as host:
            if self._host_index(host, spec.host_name) is not None:
                raise LinkExistsError(
                    f"Host-side veth {spec.host_name} already exists; detach the "
                    "previous attachment (or let reconcile sweep it) first."
                )
            bridge_index: int | None = None
            if spec.bridge is not None:
                bridge_index = self._host_index(host, spec.bridge)
                if bridge_index is None:
                    raise AttachError(
                        f"Bridge {spec.bridge} does not exist; create the network "
                        "before attaching workloads to it."
                    )
            try:
                # The peer is created directly inside the workload namespace
                # (IFLA_NET_NS_FD in VETH_INFO_PEER) under its final name: no
                # temporary host-side name, no move, no rename.
                # A bridge port's host end gets the MAC overlayd gives the
                # bridge: the kernel then keeps no local FDB entry per port
                # (one shared entry on an adopted bridge), whose handling
                # walks every port and every entry on each join.
                # On a bridge without snooping its link group marks it for
                # the MLD filter.
                host.create(
                    rtnl.RTM_NEWLINK,
                    rtnl.veth_with_peer(
                        spec.host_name,
                        spec.container_ifname,
                        spec.netns_fd,
                        spec.mtu,
                        address=bridge_mac(spec.bridge) if spec.bridge is not None else None,
                        group=PORT_GROUP if spec.bridge in self._quiet_bridges else None,
                        peer_address=spec.container_mac,
                    ),
                )
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                if self._host_index(host, spec.host_name) is not None:
                    raise LinkExistsError(
                        f"Host-side veth {spec.host_name} was created concurrently by another "
                        "operation."
                    ) from exc
                if retry_after_flush:
                    # The name may belong to the peer of a tombstoned veth that
                    # the background deleter has not reached yet, or that a
                    # previous run left behind (nothing is scheduled for those:
                    # sweep them into the batch first).
                    self.sweep_tombstones()
                    self._deleter.flush(10.0)
                    return self._create_veth(spec, ns_socket, retry_after_flush=False)
                raise LinkExistsError(
                    f"Interface {spec.container_ifname} already exists in the workload's "
                    "network namespace; pick another interface name or detach "
                    "first."
                ) from exc
            try:
                found_index = self._host_index(host, spec.host_name)
                if found_index is None:
                    raise AttachError(
                        f"Host-side veth {spec.host_name} disappeared right after its creation."
                    )
                host_index = found_index
                container_index, mac = self._configure_container_end(
                    ns_socket.take(),
                    spec.netns_fd,
                    spec.container_ifname,
                    spec.addresses,
                    spec.gateways,
                    spec.routes,
                )
                # The host end needs no IPv6 of its own: the bridge (or a host
                # route) carries the gateway addresses, and a next hop for the
                # namespace comes in host_addresses.
                ipv6 = any(iface.version == 6 for iface in spec.host_addresses)
                self._write_host_sysctls(spec.host_name, proxy_arp=spec.proxy_arp, ipv6=ipv6)
                _link_up(host, host_index, quiet_ipv6=True, master=bridge_index)
                for iface in spec.host_addresses:
                    _add_address(host, host_index, iface)
                for dst in spec.host_routes:
                    host.create(rtnl.RTM_NEWROUTE, rtnl.route(dst, host_index))
            except BaseException:
                self._rollback_veth(host, spec.host_name)
                raise
        return VethResult(host_index, container_index, mac)

    def _host_index(self, host: rtnl.RtnlSocket, name: str) -> int | None:
        """Index of host link ``name``; ``host`` is a socket in the host namespace."""
        if self._host_fd is None:
            return if_index(name)  # the host namespace is this thread's own
        return host.link_index(name)

    def _write_host_sysctls(self, ifname: str, *, proxy_arp: bool, ipv6: bool) -> None:
        """Per-link sysctls of a host end, written before it comes up.

        Without IPv6 addresses the end gets ``disable_ipv6``: besides the
        link-local address, IPv6 would give every host end an ``ff00::/8``
        route in the host's one IPv6 table and a pass over that table on
        each carrier change, i.e. work growing with the number of attached
        containers. ``proxy_arp`` is required where asked for.
        """
        if ipv6 and not proxy_arp:
            return

        def write() -> None:
            if not ipv6:
                conf6 = self._conf_dir("ipv6")
                if conf6 is not None:  # else no IPv6 on this host: nothing to turn off
                    write_sysctl(f"{ifname}/disable_ipv6", "1", dir_fd=conf6)
            if proxy_arp:
                conf4 = self._conf_dir("ipv4")
                path = (
                    f"{ifname}/proxy_arp"
                    if conf4 is not None
                    else f"/proc/sys/net/ipv4/conf/{ifname}/proxy_arp"
                )
                write_sysctl(path, "1", required=True, dir_fd=conf4)

        # /proc/sys/net resolves the namespace of the writing thread.
        run_in_netns(self._host_fd, write)

    def _conf_dir(self, family: str) -> int | None:
        """``/proc/sys/net/<family>/conf`` of the host namespace, kept open.

        Called from a thread in the host namespace. The ``conf`` entries of
        all namespaces share one dentry hash chain: once a thousand container
        namespaces have looked at their IPv6 ``conf``, each lookup of the
        path from ``/proc/sys`` walks them all (about 0.25 ms instead of 5 µs
        on the development VM). Opening names relative to this descriptor
        skips that step.
        """
        with self._conf_lock:
            fd = self._conf_dirs.get(family)
            if fd is None:
                try:
                    fd = os.open(
                        f"/proc/sys/net/{family}/conf", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                    )
                except FileNotFoundError:
                    return None
                self._conf_dirs[family] = fd
            return fd

    def _rollback_veth(self, host: rtnl.RtnlSocket, host_name: str) -> None:
        try:
            index = self._host_index(host, host_name)
            if index is not None:
                host.request(rtnl.RTM_DELLINK, rtnl.link_change(index))
        except NETLINK_ERRORS as exc:
            # The original failure is what the caller needs to see; this one is
            # logged so that the leftover link can be found.
            log.warning("rollback: could not delete veth %s: %s", host_name, exc)

    @staticmethod
    def _configure_container_end(
        sock: socket.socket,
        netns_fd: int,
        ifname: str,
        addresses: Sequence[IPInterface],
        gateways: Sequence[IPAddress],
        routes: Sequence[RouteSpec],
    ) -> tuple[int, str]:
        """Configure the container end through ``sock`` (opened in its namespace; closed here).

        The indexes and the MAC are read with ioctls on the socket: no
        ``RTM_GETLINK`` round trips, and no thread in the namespace except
        for the IPv6 sysctls (``/proc/sys/net`` is the writer's namespace).
        """
        with rtnl.RtnlSocket(sock) as ns:
            ipv6 = any(a.version == 6 for a in addresses)
            probe = nsprobe.probe(sock, ifname)
            if probe.index is None:
                raise AttachError(
                    f"Interface {ifname} did not appear in the workload's network "
                    "namespace after veth creation."
                )
            if ipv6:
                run_in_netns(netns_fd, lambda: write_static_ipv6_sysctls(ifname))
            index = probe.index
            # An interface without IPv6 addresses gets no link-local one
            # either (as Docker does on IPv4-only networks).
            _configure_in_one_batch(ns, index, addresses, gateways, routes, ipv6, probe.loopback)
        return index, probe.mac

    # -- deferred deletion -----------------------------------------------------

    def delete_links_batch(self, names: Sequence[str]) -> int:
        count = self._tombstone_names(names)
        if count:
            self._deleter.schedule(count)
        return count

    def delete_links(self, names: Sequence[str], timeout: float = 10.0) -> int:
        count = self._tombstone_names(names)
        if count:
            self._deleter.wait(self._deleter.schedule(count), timeout)
        return count

    def _tombstone_names(self, names: Sequence[str]) -> int:
        """Tombstone each existing link of ``names``; return how many existed."""
        count = 0
        with netlink_errors("queue links for deletion"), self._host_sockets.socket() as host:
            for name in names:
                index = self._host_index(host, name)
                if index is None:
                    continue
                if self._tombstone(host, index):
                    count += 1
        return count

    def _tombstone(self, host: rtnl.RtnlSocket, index: int) -> bool:
        """Rename link ``index`` to a fresh tombstone in the tombstone group."""
        for _ in range(8):
            name = tombstone_name(secrets.randbits(52))
            try:
                host.request(
                    rtnl.RTM_NEWLINK, rtnl.link_change(index, name=name, group=self._group)
                )
                return True
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:  # gone already (peer netns died)
                    return False
                if exc.code == errno.EBUSY:
                    # Kernels before 6.2 refuse to rename an UP link.
                    host.request(rtnl.RTM_NEWLINK, rtnl.link_change(index, up=False))
                elif exc.code != errno.EEXIST:  # tombstone name collision: retry
                    raise
        raise DeviceError(f"Could not find a free tombstone name for link index {index}.")

    def flush_deletions(self, timeout: float = 10.0) -> None:
        self._deleter.flush(timeout)

    def sweep_tombstones(self) -> int:
        """Queue the deletion of tombstones a previous run left behind."""
        count = 0
        with netlink_errors("sweep tombstoned links"), self._host_ipr() as ipr:
            for msg in ipr.link("dump"):
                info = _link_info(msg)
                if info.group == self._group:
                    count += 1
                elif is_tombstone(info.name):
                    ipr.link("set", index=info.index, group=self._group)
                    count += 1
        if count:
            self._deleter.schedule(count)
        return count

    # -- sysctls ---------------------------------------------------------------

    def enable_forwarding(self, *, ipv4: bool = True, ipv6: bool = False) -> dict[str, str]:
        # NOTE: turning IPv6 forwarding on makes the kernel ignore router
        # advertisements on interfaces with accept_ra=1, so it is opt-in.
        paths = [FORWARDING_SYSCTLS[v] for v, on in ((4, ipv4), (6, ipv6)) if on]

        def write_all() -> dict[str, str]:
            changed: dict[str, str] = {}
            for path in paths:
                with open(path, encoding="ascii") as f:
                    current = f.read().strip()
                if current != "1":
                    with open(path, "w", encoding="ascii") as f:
                        f.write("1\n")
                    changed[path] = current
            return changed

        with netlink_errors("enable IP forwarding"):
            # /proc/sys/net resolves the namespace of the writing thread.
            changed = run_in_netns(self._host_fd, write_all)
        for path, previous in changed.items():
            self.previous_sysctls.setdefault(path, previous)
        return changed
