"""Netlink mechanisms of the linux_bridge driver: bridges, veths, routes, sysctls.

:class:`Netlink` is the seam the driver policy is written against; the real
implementation is :class:`PyrouteNetlink` (pyroute2), the in-memory one is
:class:`overlayd_linux_bridge.fakenetlink.FakeNetlink`.

Rules this module follows (STYLE.md §5, §7):

* the attach and detach hot path sends its requests through
  :mod:`overlayd_linux_bridge.rtnl` (encoded here, ACK read back, no event
  loop): host-namespace sockets are pooled per adapter, the workload
  namespace's socket lives for one attach;
* everything else (dumps, bridges, reconcile) opens one pyroute2 ``IPRoute``
  per adapter call, closed when the call returns;
* names are resolved once (``SIOCGIFINDEX`` in our own namespace, one
  ``RTM_GETLINK`` elsewhere; absent = ``None``);
* tolerated errnos are named where they are tolerated;
* ``NetlinkError``/``OSError`` become :class:`overlayd.errors.DeviceError` or
  :class:`overlayd.errors.AttachError` with a sentence naming the object.

Namespaces. The adapter acts on a *host* namespace, which is the daemon's own
unless ``host_netns`` (a path such as ``/run/netns/x``) is given: tests run the
adapter inside a throwaway namespace that way and never touch the real host.
Workload namespaces are passed as open descriptors that the caller pins for
the whole operation (see :mod:`overlayd_linux_bridge.netns`).

Deferred deletion. Deleting a veth costs the kernel 15-25 ms (the unregister
path waits for RCU grace periods and the netdev refcount drain), and the cost
is per ``RTM_DELLINK``, not per link. :meth:`PyrouteNetlink.delete_links_batch`
therefore renames each link to a ``zx…`` tombstone and puts it in link group
:data:`TOMBSTONE_GROUP` (one ``RTM_NEWLINK`` each, under 1 ms), which frees its
name at once, then wakes a background thread that deletes the whole group with
one ``RTM_DELLINK`` (``ifi_index = 0`` + ``IFLA_GROUP``, the kernel's
``rtnl_group_dellink``), i.e. one unregister batch for all links that
accumulated. Tombstones left by a crash are swept by
:meth:`PyrouteNetlink.sweep_tombstones`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from ipaddress import IPv6Network
from typing import Any
from typing import Final
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2 import NetlinkError

from overlayd.errors import AttachError
from overlayd.errors import DeviceError
from overlayd.errors import DriverError
from overlayd.names import is_tombstone
from overlayd.names import tombstone_name
from overlayd_linux_bridge import rtnl
from overlayd_linux_bridge.netns import run_in_netns
from overlayd_linux_bridge.nft import PORT_GROUP
from overlayd_linux_bridge.rtnl import IPAddress
from overlayd_linux_bridge.rtnl import IPInterface
from overlayd_linux_bridge.rtnl import IPNetwork

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
    "PyrouteNetlink",
    "RouteSpec",
    "VethResult",
]

log = logging.getLogger(__name__)


#: Link group of links waiting for batched deletion ("ovld" in ASCII). Link
#: groups are a u32 the kernel only uses for matching (``ip link ... group``).
TOMBSTONE_GROUP: Final = 0x6F766C64
#: The forwarding sysctls, per family.
FORWARDING_SYSCTLS: Final = {
    4: "/proc/sys/net/ipv4/ip_forward",
    6: "/proc/sys/net/ipv6/conf/all/forwarding",
}

# <linux/if_addr.h>: skip duplicate address detection, so an IPv6 address is
# usable at once (a fresh veth cannot have a duplicate we would detect).
_IFA_F_NODAD: Final = 0x02
_NETLINK_ROUTE: Final = 0
_DEFAULT_ROUTES: Final[dict[int, IPNetwork]] = {
    4: IPv4Network("0.0.0.0/0"),
    6: IPv6Network("::/0"),
}
_DEFAULT_LINGER: Final = 0.05
#: ``SIOCGIFHWADDR`` from ``<linux/sockios.h>``: read a link's MAC address.
_SIOCGIFHWADDR: Final = 0x8927


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

    def create_veth_into_netns(
        self,
        *,
        host_name: str,
        netns_fd: int,
        container_ifname: str,
        addresses: Sequence[IPInterface],
        gateways: Sequence[IPAddress] = (),
        routes: Sequence[RouteSpec] = (),
        mtu: int | None = None,
        bridge: str | None = None,
        host_routes: Sequence[IPNetwork] = (),
        proxy_arp: bool = False,
        host_addresses: Sequence[IPInterface] = (),
    ) -> VethResult:
        """Create a veth whose peer lives in ``netns_fd`` as ``container_ifname``.

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

    def close(self) -> None:
        """Finish deferred deletions and release resources."""
        ...


def _strerror(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        reason = f"{os.strerror(code)} (errno {code})"
        extack = getattr(exc, "extack", None)
        return f"{reason}: {extack}" if extack else reason
    return str(exc)


def _errno(exc: BaseException) -> int | None:
    if isinstance(exc, NetlinkError):
        return int(exc.code)
    if isinstance(exc, OSError):
        return exc.errno
    return None


@contextmanager
def netlink_errors(action: str, error: type[DriverError] = DeviceError) -> Iterator[None]:
    """Map ``NetlinkError``/``OSError`` raised in the block to ``error``."""
    try:
        yield
    except (NetlinkError, OSError) as exc:
        raise error(f"Could not {action}: {_strerror(exc)}.") from exc


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
        except NetlinkError as exc:
            if exc.code != errno.EAFNOSUPPORT:
                raise
    sock.request(rtnl.RTM_NEWLINK, rtnl.link_change(index, up=True, master=master))


def _add_address(sock: rtnl.RtnlSocket, index: int, iface: IPInterface) -> None:
    """Add ``iface`` to link ``index``; already present is fine."""
    flags = _IFA_F_NODAD if iface.version == 6 else 0
    try:
        sock.create(rtnl.RTM_NEWADDR, rtnl.address(index, iface, flags))
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:  # already there: the goal is reached
            raise


def _open_raw_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)


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


def _open_iproute(netns_fd: int | None) -> Any:
    """An ``IPRoute`` bound to ``netns_fd`` (``None``: the caller's namespace).

    The netlink socket is created by a thread moved into the namespace and then
    handed to ``IPRoute(fileno=...)``: a socket keeps its namespace for life.
    ``IPRoute(netns=fd)`` does the same through a forked helper process, which
    costs about 8 ms per socket here instead of 0.4 ms.
    """
    if netns_fd is None:
        return IPRoute()
    sock = run_in_netns(
        netns_fd,
        lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE),
    )
    return IPRoute(fileno=sock.detach())


def _if_index(name: str) -> int | None:
    """Index of link ``name`` in the calling thread's namespace, or ``None``.

    One ``SIOCGIFINDEX`` ioctl (about 7 µs) instead of an ``RTM_GETLINK``
    round trip whose answer pyroute2 decodes in full (about 0.4 ms).
    """
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def _if_mac(sock: socket.socket, name: str) -> str:
    """MAC address of link ``name`` (``aa:bb:...``), read with ``SIOCGIFHWADDR``."""
    request = struct.pack("16s16s", name.encode(), b"")
    answer = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, request)
    return ":".join(f"{b:02x}" for b in answer[18:24])


@dataclass(frozen=True)
class _NetnsProbe:
    """What the container end needs, gathered by one thread inside the namespace."""

    sock: socket.socket
    index: int | None
    loopback: int | None
    mac: str


def _probe_netns(ifname: str, ipv6: bool) -> _NetnsProbe:
    """Open a netlink socket and look up ``ifname`` and ``lo``; runs inside the namespace.

    With ``ipv6`` the interface's :data:`STATIC_IPV6_SYSCTLS` are written too
    (``/proc/sys/net`` is the namespace of the writing thread).
    """
    sock = _open_raw_socket()
    try:
        index = _if_index(ifname)
        mac = _if_mac(sock, ifname) if index is not None else ""
        if ipv6 and index is not None:
            _write_static_ipv6_sysctls(ifname)
        return _NetnsProbe(sock, index, _if_index("lo"), mac)
    except BaseException:
        sock.close()
        raise


def _write_sysctl(
    path: str, value: str, *, required: bool = False, dir_fd: int | None = None
) -> None:
    """Write ``value`` to ``path`` under ``/proc/sys`` (the calling thread's namespace).

    ``path`` is relative to ``dir_fd`` when given. A failed optional write is
    logged (none when the file does not exist: no IPv6 in this namespace,
    nothing to quiet); a required one raises.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.write(fd, value.encode("ascii"))
        finally:
            os.close(fd)
    except OSError as exc:  # e.g. /proc/sys mounted read-only
        if required:
            raise
        if not isinstance(exc, FileNotFoundError):
            log.warning("could not set %s to %s: %s", path, value, exc)


def _write_static_ipv6_sysctls(ifname: str) -> None:
    # The directory is looked up once, not once per key: the "conf" entries of
    # all namespaces share one dentry hash chain, and each lookup of a path
    # through it walks the entries of every namespace that has used it.
    directory = f"/proc/sys/net/ipv6/conf/{ifname}"
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):  # no IPv6 here: nothing to quiet
            log.warning("could not open %s: %s", directory, exc)
        return
    try:
        for key, value in STATIC_IPV6_SYSCTLS.items():
            _write_sysctl(key, value, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


class _DeferredDeleter:
    """Background thread deleting the tombstone group whenever work accumulates."""

    def __init__(self, open_ipr: Callable[[], Any], group: int, linger: float) -> None:
        self._open_ipr = open_ipr
        self._group = group
        self._linger = linger
        self._cond = threading.Condition()
        self._pending = 0
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Last failure of a batch, reported by :meth:`flush` (then cleared).
        self.last_error: BaseException | None = None
        #: Number of ``RTM_DELLINK`` batches sent, for tests and metrics.
        self.batches = 0

    def schedule(self, count: int) -> None:
        with self._cond:
            if self._closed:
                raise DeviceError("The netlink adapter is closed; it cannot delete links any more.")
            self._pending += count
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="overlayd-link-deleter", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending == 0 and not self._closed:
                    self._cond.wait()
                if self._pending == 0 and self._closed:
                    return
            # Let more detaches pile up so that one kernel batch covers them.
            time.sleep(self._linger)
            with self._cond:
                taken = self._pending
                self._pending = 0
                self._busy = True
            try:
                self._delete_group()
            except (NetlinkError, OSError) as exc:
                log.warning("deferred deletion of %d link(s) failed: %s", taken, exc)
                with self._cond:
                    self.last_error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self.batches += 1
                    self._cond.notify_all()

    def _delete_group(self) -> None:
        with self._open_ipr() as ipr:
            try:
                ipr.link("del", index=0, group=self._group)
            except NetlinkError as exc:
                # ENODEV: nothing left in the group (an earlier batch took it).
                if exc.code != errno.ENODEV:
                    raise

    def flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceError(
                        f"Deferred link deletion did not finish within {timeout} s; "
                        "the kernel may be stuck releasing a device."
                    )
                self._cond.wait(left)
            error, self.last_error = self.last_error, None
        if error is not None:
            raise DeviceError(
                f"Deferred link deletion failed: {_strerror(error)}; "
                "the links stay in the tombstone group and are retried by "
                "sweep_tombstones()."
            ) from error

    def close(self, timeout: float) -> None:
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()


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
        self._deleter = _DeferredDeleter(self._host_ipr, tombstone_group, linger)
        #: Raw netlink sockets of the host namespace for the hot path.
        self._host_sockets = rtnl.SocketPool(self._open_host_socket)
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
        return _open_iproute(self._host_fd)

    def _open_host_socket(self) -> socket.socket:
        if self._host_fd is None:
            return _open_raw_socket()
        return run_in_netns(self._host_fd, _open_raw_socket)

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

    def create_veth_into_netns(
        self,
        *,
        host_name: str,
        netns_fd: int,
        container_ifname: str,
        addresses: Sequence[IPInterface],
        gateways: Sequence[IPAddress] = (),
        routes: Sequence[RouteSpec] = (),
        mtu: int | None = None,
        bridge: str | None = None,
        host_routes: Sequence[IPNetwork] = (),
        proxy_arp: bool = False,
        host_addresses: Sequence[IPInterface] = (),
    ) -> VethResult:
        try:
            return self._create_veth(
                host_name=host_name,
                netns_fd=netns_fd,
                container_ifname=container_ifname,
                addresses=addresses,
                gateways=gateways,
                routes=routes,
                mtu=mtu,
                bridge=bridge,
                host_routes=host_routes,
                proxy_arp=proxy_arp,
                host_addresses=host_addresses,
                retry_after_flush=True,
            )
        except (NetlinkError, OSError) as exc:
            raise AttachError(
                f"Could not attach {container_ifname} (host end {host_name}): {_strerror(exc)}."
            ) from exc

    def _create_veth(
        self,
        *,
        host_name: str,
        netns_fd: int,
        container_ifname: str,
        addresses: Sequence[IPInterface],
        gateways: Sequence[IPAddress],
        routes: Sequence[RouteSpec],
        mtu: int | None,
        bridge: str | None,
        host_routes: Sequence[IPNetwork],
        proxy_arp: bool,
        host_addresses: Sequence[IPInterface],
        retry_after_flush: bool,
    ) -> VethResult:
        with self._host_sockets.socket() as host:
            if self._host_index(host, host_name) is not None:
                raise LinkExistsError(
                    f"Host-side veth {host_name} already exists; detach the "
                    "previous attachment (or let reconcile sweep it) first."
                )
            bridge_index: int | None = None
            if bridge is not None:
                bridge_index = self._host_index(host, bridge)
                if bridge_index is None:
                    raise AttachError(
                        f"Bridge {bridge} does not exist; create the network "
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
                        host_name,
                        container_ifname,
                        netns_fd,
                        mtu,
                        address=bridge_mac(bridge) if bridge is not None else None,
                        group=PORT_GROUP if bridge in self._quiet_bridges else None,
                    ),
                )
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                if self._host_index(host, host_name) is not None:
                    raise LinkExistsError(
                        f"Host-side veth {host_name} was created concurrently by another operation."
                    ) from exc
                if retry_after_flush:
                    # The name may belong to the peer of a tombstoned veth that
                    # the background deleter has not reached yet, or that a
                    # previous run left behind (nothing is scheduled for those:
                    # sweep them into the batch first).
                    self.sweep_tombstones()
                    self._deleter.flush(10.0)
                    return self._create_veth(
                        host_name=host_name,
                        netns_fd=netns_fd,
                        container_ifname=container_ifname,
                        addresses=addresses,
                        gateways=gateways,
                        routes=routes,
                        mtu=mtu,
                        bridge=bridge,
                        host_routes=host_routes,
                        proxy_arp=proxy_arp,
                        host_addresses=host_addresses,
                        retry_after_flush=False,
                    )
                raise LinkExistsError(
                    f"Interface {container_ifname} already exists in the workload's "
                    "network namespace; pick another interface name or detach "
                    "first."
                ) from exc
            try:
                found_index = self._host_index(host, host_name)
                if found_index is None:
                    raise AttachError(
                        f"Host-side veth {host_name} disappeared right after its creation."
                    )
                host_index = found_index
                container_index, mac = self._configure_container_end(
                    netns_fd, container_ifname, addresses, gateways, routes
                )
                # The host end needs no IPv6 of its own: the bridge (or a host
                # route) carries the gateway addresses, and a next hop for the
                # namespace comes in host_addresses.
                ipv6 = any(iface.version == 6 for iface in host_addresses)
                self._write_host_sysctls(host_name, proxy_arp=proxy_arp, ipv6=ipv6)
                _link_up(host, host_index, quiet_ipv6=True, master=bridge_index)
                for iface in host_addresses:
                    _add_address(host, host_index, iface)
                for dst in host_routes:
                    host.create(rtnl.RTM_NEWROUTE, rtnl.route(dst, host_index))
            except BaseException:
                self._rollback_veth(host, host_name)
                raise
        return VethResult(host_index, container_index, mac)

    def _host_index(self, host: rtnl.RtnlSocket, name: str) -> int | None:
        """Index of host link ``name``; ``host`` is a socket in the host namespace."""
        if self._host_fd is None:
            return _if_index(name)  # the host namespace is this thread's own
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
                    _write_sysctl(f"{ifname}/disable_ipv6", "1", dir_fd=conf6)
            if proxy_arp:
                conf4 = self._conf_dir("ipv4")
                path = (
                    f"{ifname}/proxy_arp"
                    if conf4 is not None
                    else f"/proc/sys/net/ipv4/conf/{ifname}/proxy_arp"
                )
                _write_sysctl(path, "1", required=True, dir_fd=conf4)

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
        except (NetlinkError, OSError) as exc:
            # The original failure is what the caller needs to see; this one is
            # logged so that the leftover link can be found.
            log.warning("rollback: could not delete veth %s: %s", host_name, exc)

    @staticmethod
    def _configure_container_end(
        netns_fd: int,
        ifname: str,
        addresses: Sequence[IPInterface],
        gateways: Sequence[IPAddress],
        routes: Sequence[RouteSpec],
    ) -> tuple[int, str]:
        # One thread in the namespace opens the socket and reads the indexes
        # and the MAC with ioctls: no RTM_GETLINK round trips.
        ipv6 = any(a.version == 6 for a in addresses)
        probe = run_in_netns(netns_fd, lambda: _probe_netns(ifname, ipv6))
        if probe.index is None:
            probe.sock.close()
            raise AttachError(
                f"Interface {ifname} did not appear in the workload's network "
                "namespace after veth creation."
            )
        index = probe.index
        with rtnl.RtnlSocket(probe.sock) as ns:
            for iface in addresses:
                _add_address(ns, index, iface)
            # An interface without IPv6 addresses gets no link-local one
            # either (as Docker does on IPv4-only networks).
            _link_up(ns, index, quiet_ipv6=not ipv6)
            if probe.loopback is not None:
                ns.request(rtnl.RTM_NEWLINK, rtnl.link_change(probe.loopback, up=True))
            for gw in gateways:
                default = _DEFAULT_ROUTES[gw.version]
                ns.create(rtnl.RTM_NEWROUTE, rtnl.route(default, index, gw))
            for spec in routes:
                ns.create(rtnl.RTM_NEWROUTE, rtnl.route(spec.dst, index, spec.gateway))
        return index, probe.mac

    # -- deferred deletion -----------------------------------------------------

    def delete_links_batch(self, names: Sequence[str]) -> int:
        count = 0
        with netlink_errors("queue links for deletion"), self._host_sockets.socket() as host:
            for name in names:
                index = self._host_index(host, name)
                if index is None:
                    continue
                if self._tombstone(host, index):
                    count += 1
        if count:
            self._deleter.schedule(count)
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
