"""The ``linux_bridge`` driver: per-service Linux bridges, veth attach and nftables NAT.

Policy lives here; the mechanisms are injected (:class:`~.netlink.Netlink`,
:class:`~.nft.Nftables`, :class:`NamespaceResolver`), so unit tests run the
policy against :mod:`overlayd_linux_bridge.fakenetlink` without privileges.

Ownership. overlayd recognises its host objects without any state of its own:

* **bridges** carry the alias (``IFLA_IFALIAS``, ``ip link show`` prints it)
  ``overlayd:<owner>`` (e.g. ``overlayd:service:web``), set when the bridge is
  created or adopted. A bridge without that tag is never listed, removed or
  swept, even when its name looks like ours (ZLayer's own ``zl-*-b`` bridges);
* **veths**: the host end is named ``veth_host_name(handle_key, i)``
  (``zv`` + 13 hex digits, :func:`overlayd.names.is_overlayd_veth`);
* **tombstones** (``zx`` + 13 hex, link group ``TOMBSTONE_GROUP``) are links
  waiting for the batched deleter.

Attach. ``eth0`` gets the service address, a default route via the gateway
and its host end on the service bridge. With a global address (``join_global``)
``eth1`` gets the node-slice address with the *cluster* prefix: the kernel's
connected route makes the whole cluster CIDR on-link through ``eth1``. Its host
end is routed, not bridged: it has proxy ARP on (it answers ARP for every
cluster address, so the container hands such packets to the host), and the
host gets an on-link route ``<global ip>/32 dev <host end>`` for the way back.
The host then forwards cluster traffic to the WireGuard device like its own.
The driver chooses ``eth0``'s MAC (random, locally administered) in its
attach plan (``overlayd_attach_plan``), so the engine can write the record
while the veth is made; a veth that reconcile recreates gets the MAC back.
Linux has no proxy NDP for a whole prefix, so an IPv6 ``eth1`` gets its address
as a /128 and a route for the cluster prefix via ``fe80::1``, which its host
end holds; the host's way back is ``<global ip>/128 dev <host end>``.

Quiet IPv6. Interfaces that carry no IPv6 address come up with IPv6 address
generation off (no link-local address), so attaching an IPv4-only container
floods no DAD, MLD or router solicitation through the bridge into every other
container; host ends without IPv6 addresses get ``disable_ipv6``. Bridges
overlayd creates have STP and multicast snooping off and a fixed MAC derived
from their name (:func:`~.netlink.bridge_mac`); the host end of every bridge
port takes that same MAC, so the bridge keeps no local FDB entry per port; on
a bridge without snooping it also joins link group :data:`~.nft.PORT_GROUP`, on
which table ``bridge overlayd`` drops the MLD reports that IPv6 containers
send (the bridge would flood them into every other container).
Each of these removed kernel work that grew with the number of ports already
attached. What still grows is the bridge's own per-port bookkeeping when a
port joins (about 1.3 ms per attach at 1,000 ports on the development VM,
the same for the raw pyroute2 floor); see docs/design-notes.rst.

Resolver configuration (``overlayd_dns_endpoint_configure``) is declined
(returns ``None``): the container's ``/etc/resolv.conf`` belongs to its runtime,
which bind-mounts it; a file written into the mount namespace from outside
would be replaced on the next container restart and race with the runtime.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any
from typing import Final

from overlayd import DRIVER_API
from overlayd import hookimpl
from overlayd.driver_options import parse_driver_options
from overlayd.errors import AttachError
from overlayd.errors import DeviceError
from overlayd.errors import NotSupported
from overlayd.errors import OverlaydError
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import DriverInfo
from overlayd.model import HandleKind
from overlayd.model import LinuxPidHandle
from overlayd.model import MasqueradeRule
from overlayd.model import NetnsHandle
from overlayd.model import NodeInfo
from overlayd.model import PortMapping
from overlayd.model import ReconcileReport
from overlayd.model import ReconcileRequest
from overlayd.model import ReconcileTally
from overlayd.model import handle_key
from overlayd.names import is_overlayd_veth
from overlayd.names import is_tombstone
from overlayd.names import veth_host_name
from overlayd_linux_bridge import __version__
from overlayd_linux_bridge.linkapi import LinkExistsError
from overlayd_linux_bridge.linkapi import LinkInfo
from overlayd_linux_bridge.linkapi import Netlink
from overlayd_linux_bridge.linkapi import RouteSpec
from overlayd_linux_bridge.linkapi import VethResult
from overlayd_linux_bridge.linkapi import VethSpec
from overlayd_linux_bridge.namespaces import NamespaceResolver
from overlayd_linux_bridge.namespaces import PinnedNamespace
from overlayd_linux_bridge.namespaces import ProcNamespaceResolver
from overlayd_linux_bridge.natpolicy import NatPolicy
from overlayd_linux_bridge.nft import NatState
from overlayd_linux_bridge.nft import Nftables
from overlayd_linux_bridge.nft import NftBackend
from overlayd_linux_bridge.options import LinuxBridgeOptions

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["ALIAS_PREFIX", "LinuxBridgeDriver", "NamespaceResolver", "PinnedNamespace"]

log = logging.getLogger(__name__)

#: Prefix of the ``IFLA_IFALIAS`` tag on every bridge overlayd owns.
ALIAS_PREFIX: Final = "overlayd:"
#: Interface names inside the workload.
CONTAINER_IFNAMES: Final = ("eth0", "eth1")
#: Link-local address of every IPv6 ``eth1``'s host end: the next hop of the
#: cluster prefix inside the workload (each host end is a link of its own).
GLOBAL_NEXT_HOP6: Final = ipaddress.IPv6Interface("fe80::1/64")


def _namespace_path(handle: LinuxPidHandle | NetnsHandle) -> str:
    if isinstance(handle, LinuxPidHandle):
        return f"/proc/{handle.pid}/ns/net"
    if handle.path is None:
        # The engine refuses to attach such a handle; a record always has a path.
        raise AttachError(f"netns handle {handle_key(handle)} has no namespace path.")
    return handle.path


def _service_ifname(handle: LinuxPidHandle | NetnsHandle) -> str:
    """The workload-side name of the service interface (CNI ``CNI_IFNAME``)."""
    return handle.container_ifname if isinstance(handle, NetnsHandle) else CONTAINER_IFNAMES[0]


def _service_routes(request: AttachRequest) -> tuple[IPNetwork, ...]:
    """What the workload routes via the service gateway.

    The default route, or with ``request.default_route`` false (the workload
    has its default route from another network) the cluster CIDR.
    """
    if request.default_route:
        return (ipaddress.ip_network("0.0.0.0/0" if request.gateway.version == 4 else "::/0"),)
    if request.node is None:
        raise AttachError(
            "an attach without a default route needs the cluster CIDR (request.node).",
            op="attach",
        )
    return (request.node.cluster_cidr,)


def _host_route(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> IPNetwork:
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


def _global_plumbing(address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> dict[str, Any]:
    """How ``eth1`` reaches the cluster through its routed (unbridged) host end.

    IPv4: the address carries the cluster prefix, so the whole cluster is
    on-link through ``eth1``, and proxy ARP on the host end answers for all of
    it. IPv6 has no proxy NDP for a whole prefix (Linux proxies listed
    addresses only), so the address is a /128 and the cluster prefix is routed
    via :data:`GLOBAL_NEXT_HOP6`, which the host end holds.
    """
    if address.version == 4:
        return {"addresses": [address], "proxy_arp": True}
    host_ip = ipaddress.ip_interface(f"{address.ip}/128")
    return {
        "addresses": [host_ip],
        "routes": [RouteSpec(address.network, GLOBAL_NEXT_HOP6.ip)],
        "host_addresses": [GLOBAL_NEXT_HOP6],
    }


class LinuxBridgeDriver(NatPolicy):
    """Per-service Linux bridges, veth attach (pid / netns) and nftables NAT (Linux only).

    The NAT hooks are :class:`~overlayd_linux_bridge.natpolicy.NatPolicy`'s.
    """

    name: Final = "linux_bridge"

    def __init__(
        self,
        netlink: Netlink | None = None,
        nft: Nftables | None = None,
        namespaces: NamespaceResolver | None = None,
    ) -> None:
        self._netlink = netlink
        self._nft = nft
        self._owns_netlink = False
        self._owns_nft = False
        self._namespaces: NamespaceResolver = namespaces or ProcNamespaceResolver()
        self._nat_backend = "auto"
        self._host_netns: str | None = None
        self._nft_unavailable: str | None = None
        #: Whether table ``bridge overlayd`` (the MLD filter) was applied.
        self._mld_filter_applied = False
        #: Tables found missing (a firewall reload) and created again since the
        #: last reconcile, which reports them.
        self._tables_recreated: list[str] = []
        #: IP versions whose forwarding sysctl this driver has turned on.
        self._forwarding: set[int] = set()
        #: Desired NAT state: masquerade rules by subnet, port mappings by key.
        self._masq: dict[IPNetwork, MasqueradeRule] = {}
        self._mappings: dict[tuple[Any, ...], PortMapping] = {}
        #: What the table holds as far as this driver knows (``None``: not read yet).
        self._pushed: NatState | None = None
        #: Serialises NAT changes (the engine runs hooks from several threads).
        self._nat_lock = threading.RLock()
        self._netlink_lock = threading.Lock()

    # -- helpers ----------------------------------------------------------------

    def _nl(self) -> Netlink:
        """The netlink adapter: injected, or created on first use (startup)."""
        with self._netlink_lock:
            return self._nl_locked()

    def _nl_locked(self) -> Netlink:
        if self._netlink is None:
            if sys.platform != "linux":
                raise NotSupported(
                    f"The linux_bridge driver needs Linux; this host is {sys.platform}."
                )
            from overlayd_linux_bridge.netlink import PyrouteNetlink

            self._netlink = PyrouteNetlink(self._host_netns)
            self._owns_netlink = True
        return self._netlink

    def _ensure_forwarding(self, version: int) -> None:
        if version in self._forwarding:
            return
        changed = self._nl().enable_forwarding(ipv4=version == 4, ipv6=version == 6)
        if changed:
            log.info("enabled IP forwarding: %s", ", ".join(sorted(changed)))
        self._forwarding.add(version)

    # -- lifecycle --------------------------------------------------------------

    @hookimpl
    def overlayd_describe(self) -> DriverInfo:
        return DriverInfo(
            name=self.name,
            api=DRIVER_API,
            platforms=frozenset({"linux"}),
            device_kinds=frozenset({DeviceKind.BRIDGE.value}),
            attach_kinds=frozenset({HandleKind.LINUX_PID.value, HandleKind.NETNS.value}),
            capabilities=frozenset(
                {Capability.DEVICES, Capability.ATTACH, Capability.NAT, Capability.RECONCILE}
            ),
            version=__version__,
        )

    @hookimpl
    def overlayd_configure(self, config: Any) -> None:
        options = parse_driver_options(
            LinuxBridgeOptions, self.name, config.driver_options(self.name)
        )
        self._nat_backend = options.nat_backend
        host_netns = options.host_netns
        self._host_netns = host_netns
        if isinstance(self._namespaces, ProcNamespaceResolver):
            self._namespaces.host_netns = host_netns

    @hookimpl
    def overlayd_startup(self, context: Any) -> None:
        if sys.platform != "linux":
            raise NotSupported(f"The linux_bridge driver needs Linux; this host is {sys.platform}.")
        self._nl()
        if self._nft is None:
            try:
                self._nft = Nftables(self._make_nft_backend())
                self._owns_nft = True
            except NotSupported as exc:
                # Bridges and attach work without nftables; NAT hooks report this.
                self._nft_unavailable = str(exc)
                log.warning("NAT is unavailable: %s", exc)

    @hookimpl
    def overlayd_warm_up(self) -> None:
        # The host netlink socket and sysctl directories the first attach uses,
        # and the namespaces it refuses to attach (read, not changed).
        self._nl().warm_up()
        if isinstance(self._namespaces, ProcNamespaceResolver):
            self._namespaces.warm_up()

    def _make_nft_backend(self) -> NftBackend:
        from overlayd_linux_bridge.nft import LibNftables
        from overlayd_linux_bridge.nft import NftCli
        from overlayd_linux_bridge.nft import default_backend

        if self._nat_backend == "library":
            return LibNftables(self._host_netns)
        if self._nat_backend == "cli":
            return NftCli(self._host_netns)
        return default_backend(self._host_netns)

    @hookimpl
    def overlayd_shutdown(self) -> None:
        netlink, self._netlink = self._netlink, None
        nft, self._nft = self._nft, None
        try:
            if netlink is not None:
                if self._owns_netlink:
                    netlink.close()
                else:
                    netlink.flush_deletions()
        finally:
            if nft is not None and self._owns_nft:
                nft.close()
            if not self._owns_netlink:
                self._netlink = netlink
            if not self._owns_nft:
                self._nft = nft
            self._owns_netlink = self._owns_nft = False

    # -- devices ----------------------------------------------------------------

    @hookimpl
    def overlayd_device_create(self, spec: DeviceSpec) -> Device | None:
        if spec.kind != DeviceKind.BRIDGE:
            return None
        versions = {iface.version for iface in spec.addresses}
        if spec.subnet is not None:
            versions.add(spec.subnet.version)
        for version in sorted(versions or {4}):
            self._ensure_forwarding(version)
        index = self._nl().ensure_bridge(
            spec.name, spec.addresses, spec.mtu, alias=f"{ALIAS_PREFIX}{spec.owner}"
        )
        self._ensure_mld_filter()
        return spec.as_device(self.name, id=str(index), options=dict(spec.options))

    def _our_bridges(self) -> dict[str, LinkInfo]:
        return _bridges_of_ours(self._nl().list_links())

    @hookimpl
    def overlayd_device_delete(self, device: Device) -> bool | None:
        if device.kind != DeviceKind.BRIDGE:
            return None
        link = next(
            (lk for lk in self._nl().list_links(device.name) if lk.name == device.name), None
        )
        if link is None:
            return False
        if link.kind != "bridge" or not (link.alias or "").startswith(ALIAS_PREFIX):
            raise DeviceError(
                f"Link {device.name} is not a bridge created by overlayd (no "
                f"'{ALIAS_PREFIX}' alias); it was left in place.",
                op="device_delete",
                driver=self.name,
            )
        return self._nl().delete_link(device.name)

    @hookimpl
    def overlayd_device_list(self, kind: str) -> list[Device]:
        if kind != DeviceKind.BRIDGE:
            return []
        return [
            Device(
                kind=DeviceKind.BRIDGE,
                name=link.name,
                owner=(link.alias or "")[len(ALIAS_PREFIX) :],
                driver=self.name,
                mtu=link.mtu or None,
                id=str(link.index),
            )
            for link in self._our_bridges().values()
        ]

    # -- attach -----------------------------------------------------------------

    @hookimpl
    def overlayd_attach_plan(self, request: AttachRequest) -> Attachment | None:
        # Everything the attach reports is known up front except the MAC,
        # which the plan chooses and the attach gives the container end.
        handle = request.handle
        if not isinstance(handle, LinuxPidHandle | NetnsHandle):
            return None
        try:
            inode = self._namespaces.inode(_namespace_path(handle))
        except OSError:
            inode = None
        if inode is None:
            return None  # the attach says what is wrong with the namespace
        return self._attachment(
            request, _host_ends(request, handle_key(handle)), local_mac(), inode
        )

    @hookimpl
    def overlayd_attach(self, request: AttachRequest) -> Attachment | None:
        handle = request.handle
        if not isinstance(handle, LinuxPidHandle | NetnsHandle):
            return None
        path = _namespace_path(handle)
        planned_mac = request.planned.mac if request.planned is not None else None
        try:
            with self._namespaces.open(path) as ns:
                interfaces, mac = self._plumb(request, ns, handle_key(handle), planned_mac)
                inode = ns.inode
        except FileNotFoundError as exc:
            if isinstance(handle, LinuxPidHandle):
                raise AttachError(
                    f"process {handle.pid} does not exist (no {path}); it cannot be attached.",
                    op="attach",
                    driver=self.name,
                ) from exc
            raise AttachError(
                f"network namespace {path} does not exist; it cannot be attached.",
                op="attach",
                driver=self.name,
            ) from exc
        except PermissionError as exc:
            raise AttachError(
                f"Could not open {path}: permission denied; the daemon needs "
                "CAP_SYS_ADMIN and CAP_NET_ADMIN to attach workloads.",
                op="attach",
                driver=self.name,
            ) from exc
        planned = request.planned
        if planned is not None and planned.mac == mac and planned.extra["netns_inode"] == inode:
            return planned  # what the plan said, made true: no second model to build
        return self._attachment(request, interfaces, mac, inode)

    def _attachment(
        self, request: AttachRequest, interfaces: list[str], mac: str, inode: int
    ) -> Attachment:
        """What an attach of ``request`` reports (``overlayd_attach`` and its plan)."""
        assert isinstance(request.handle, LinuxPidHandle | NetnsHandle)
        extra: dict[str, Any] = {
            "netns_inode": inode,
            "address": str(request.address),
            "gateway": str(request.gateway),
            "bridge": request.segment.name,
            "mtu": request.mtu,
        }
        if request.global_address is not None:
            extra["global_address"] = str(request.global_address)
        if not request.default_route:
            extra["default_route"] = False
            if request.node is not None:
                extra["cluster_cidr"] = str(request.node.cluster_cidr)
        return request.as_attachment(
            self.name,
            interfaces=tuple(interfaces),
            ifname=_service_ifname(request.handle),
            mac=mac,
            mtu=request.mtu,
            routes=_service_routes(request),
            extra=extra,
        )

    def _plumb(
        self, request: AttachRequest, ns: PinnedNamespace, key: str, mac: str | None = None
    ) -> tuple[list[str], str]:
        """Create the service interface (and eth1); on failure remove what was created.

        ``mac`` is the service interface's MAC (``None``: the kernel picks).
        Returns the host ends created and the MAC of the service interface.
        """
        assert isinstance(request.handle, LinuxPidHandle | NetnsHandle)
        created: list[str] = []
        try:
            name, *global_end = _host_ends(request, key)
            routes = [RouteSpec(dst, request.gateway) for dst in _service_routes(request)]
            default = request.default_route
            veth = self._create_veth(
                VethSpec(
                    host_name=name,
                    netns_fd=ns.fd,
                    container_ifname=_service_ifname(request.handle),
                    addresses=[request.address],
                    gateways=[request.gateway] if default else [],
                    routes=[] if default else routes,
                    mtu=request.mtu,
                    bridge=request.segment.name,
                    container_mac=mac,
                )
            )
            created.append(name)
            if request.global_address is not None:
                (gname,) = global_end
                self._ensure_forwarding(request.global_address.version)
                self._create_veth(
                    VethSpec(
                        host_name=gname,
                        netns_fd=ns.fd,
                        container_ifname=CONTAINER_IFNAMES[1],
                        mtu=request.mtu,
                        host_routes=[_host_route(request.global_address.ip)],
                        **_global_plumbing(request.global_address),
                    )
                )
                created.append(gname)
        except BaseException:
            if created:
                try:
                    self._nl().delete_links_batch(created)
                except OverlaydError as undo:
                    log.warning("attach rollback could not remove %s: %s", created, undo)
            raise
        return created, veth.container_mac

    def _create_veth(self, spec: VethSpec) -> VethResult:
        """Create one veth; a leftover host end of a crashed attempt is replaced once."""
        try:
            return self._nl().create_veth_into_netns(spec)
        except LinkExistsError:
            if not self._nl().link_exists(spec.host_name):
                raise  # the container-side name is taken: not ours to remove
            log.info("replacing leftover veth %s of an earlier attach", spec.host_name)
            self._nl().delete_links_batch([spec.host_name])
            return self._nl().create_veth_into_netns(spec)

    @hookimpl
    def overlayd_detach(self, attachment: Attachment) -> bool | None:
        names = [n for n in attachment.interfaces if is_overlayd_veth(n)]
        if not names:
            return False
        # Waits for the kernel: the container end goes only with the host end,
        # and a CNI runtime may reuse the interface name as soon as DEL returns.
        return self._nl().delete_links(names) > 0

    @hookimpl
    def overlayd_attachment_alive(self, attachment: Attachment) -> bool | None:
        handle = attachment.handle
        if not isinstance(handle, LinuxPidHandle | NetnsHandle):
            return True
        try:
            inode = self._namespaces.inode(_namespace_path(handle))
        except OSError as exc:
            log.warning("cannot tell whether %s is alive: %s", attachment.key, exc)
            return True
        if inode is None:
            return False
        recorded = attachment.extra.get("netns_inode")
        return recorded is None or int(recorded) == inode

    @hookimpl
    def overlayd_dns_endpoint_configure(
        self, attachment: Attachment, servers: Any, domain: str | None
    ) -> bool | None:
        # The runtime owns the container's resolv.conf (module docstring).
        return None

    # -- reconcile --------------------------------------------------------------

    @hookimpl
    def overlayd_reconcile(self, request: ReconcileRequest) -> ReconcileReport | None:
        found = ReconcileTally()
        links = self._nl().list_links()
        if any(is_tombstone(lk.name) for lk in links):
            # Veths a previous run was deleting (it crashed first) still hold
            # their container ends (eth0 in the workload): delete them before
            # any attachment is plumbed again, or eth0 "already exists".
            try:
                self._nl().sweep_tombstones()
                self._nl().flush_deletions()
            except OverlaydError as exc:
                found.errors.append(f"sweeping tombstones: {exc}")
            links = self._nl().list_links()
        by_name = {link.name: link for link in links}
        bridges = _bridges_of_ours(links)

        recorded_devices = [
            d for d in request.devices if d.driver == self.name and d.kind == DeviceKind.BRIDGE
        ]
        for device in recorded_devices:
            try:
                if device.name in bridges:
                    found.adopted.append(device.name)
                else:
                    self.overlayd_device_create(device.as_spec())
                    found.recreated.append(device.name)
            except OverlaydError as exc:
                found.errors.append(f"bridge {device.name}: {exc}")

        if found.recreated:
            links = self._nl().list_links()
            by_name = {link.name: link for link in links}
            bridges = _bridges_of_ours(links)

        recorded_ifaces: set[str] = set()
        for att in request.attachments:
            recorded_ifaces.update(att.interfaces)
            if not self.overlayd_attachment_alive(att):
                found.gone.append(att.key)
                continue
            missing = [n for n in att.interfaces if n not in by_name]
            bridge = bridges.get(str(att.extra.get("bridge", "")))
            first = by_name.get(att.interfaces[0]) if att.interfaces else None
            detached = bridge is not None and first is not None and first.master != bridge.index
            if not missing and not detached:
                found.adopted.append(att.key)
                continue
            try:
                self._replumb(att)
                found.recreated.append(att.key)
            except OverlaydError as exc:
                found.errors.append(f"attachment {att.key}: {exc}")

        stale = [
            lk.name
            for lk in links
            if lk.kind == "veth" and is_overlayd_veth(lk.name) and lk.name not in recorded_ifaces
        ]
        if stale:
            try:
                self._nl().delete_links_batch(stale)
                found.removed.extend(stale)
            except OverlaydError as exc:
                found.errors.append(f"removing unrecorded veths: {exc}")
        recorded_names = {d.name for d in recorded_devices}
        for name in sorted(set(bridges) - recorded_names):
            try:
                if self._nl().delete_link(name):
                    found.removed.append(name)
            except OverlaydError as exc:
                found.errors.append(f"removing unrecorded bridge {name}: {exc}")
        if any(is_tombstone(lk.name) for lk in links):
            try:
                self._nl().sweep_tombstones()
            except OverlaydError as exc:
                found.errors.append(f"sweeping tombstones: {exc}")

        self._reconcile_nat(request, found.errors)
        found.recreated.extend(self._tables_recreated)
        self._tables_recreated = []
        return found.report(self.name)

    def _replumb(self, att: Attachment) -> None:
        """Recreate the veths of a live attachment whose host ends vanished."""
        extra = att.extra
        if "address" not in extra or "bridge" not in extra:
            raise AttachError(
                "its veth is missing and the record lacks the address to recreate it; "
                "detach and attach it again.",
                op="reconcile",
                driver=self.name,
            )
        handle = att.handle
        assert isinstance(handle, LinuxPidHandle | NetnsHandle)
        global_address = extra.get("global_address")
        cluster = extra.get("cluster_cidr")
        request = AttachRequest(
            handle=handle,
            service=att.service,
            segment=Device(
                kind=DeviceKind.BRIDGE, name=extra["bridge"], owner="", driver=self.name
            ),
            address=ipaddress.ip_interface(extra["address"]),
            gateway=ipaddress.ip_address(extra["gateway"]),
            global_address=ipaddress.ip_interface(global_address) if global_address else None,
            mtu=extra.get("mtu"),
            default_route=extra.get("default_route", True),
            node=_route_only_node(cluster) if cluster else None,
        )
        # Leftover halves (one of two veths) are removed first: names are per key.
        self._nl().delete_links_batch(list(att.interfaces))
        with self._namespaces.open(_namespace_path(handle)) as ns:
            # The interface comes back with its recorded MAC: neighbours' caches
            # and the CNI result stay right.
            self._plumb(request, ns, att.key, att.mac)


def _host_ends(request: AttachRequest, key: str) -> list[str]:
    """The host ends an attach of ``request`` creates: the service veth's, then eth1's."""
    names = [veth_host_name(key, 0)]
    if request.global_address is not None:
        names.append(veth_host_name(key, 1))
    return names


def local_mac() -> str:
    """A random unicast, locally administered MAC, as the kernel picks for a veth."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def _bridges_of_ours(links: Iterable[LinkInfo]) -> dict[str, LinkInfo]:
    """The bridges among ``links`` that overlayd made (their alias says so), by name."""
    return {
        link.name: link
        for link in links
        if link.kind == "bridge" and (link.alias or "").startswith(ALIAS_PREFIX)
    }


def _route_only_node(cluster_cidr: str) -> NodeInfo:
    """A :class:`NodeInfo` carrying only what a replumb without default route reads."""
    cluster = ipaddress.ip_network(cluster_cidr)
    return NodeInfo(
        interface="",
        public_key=None,
        node_ip=cluster.network_address,
        cluster_cidr=cluster,
        slice_cidr=cluster,
        listen_port=0,
    )
