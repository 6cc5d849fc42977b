"""Domain models shared by the engine and the drivers.

These are the types that cross the hook boundary. They are pydantic models so
that they validate on construction, serialise to the state store unchanged and
compare by value (the conformance kit relies on that). They are frozen: a driver
returns a new object rather than mutating the one it was given.

Addresses are :mod:`ipaddress` objects, never strings, inside the engine; the
IPC layer converts at the edge.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum
from typing import Annotated
from typing import Any
from typing import Literal
from typing import Protocol
from typing import TypeAlias
from typing import cast

from pydantic import BaseModel
from pydantic import BeforeValidator
from pydantic import ConfigDict
from pydantic import Field
from pydantic import field_validator
from pydantic import model_validator

from overlayd.names import check_attachment_id
from overlayd.names import check_workload_ifname

__all__ = [
    "DRIVER_API",
    "AnyHandle",
    "AttachRequest",
    "Attachment",
    "Capability",
    "Device",
    "DeviceKind",
    "DeviceSpec",
    "DnsRecord",
    "DnsRecordLike",
    "DriverInfo",
    "Event",
    "GlobalOverlay",
    "GuestConfig",
    "GuestManagedHandle",
    "Handle",
    "HandleKind",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "Lease",
    "LinuxPidHandle",
    "MasqueradeRule",
    "NatCandidate",
    "NetnsHandle",
    "NodeInfo",
    "OverlayMode",
    "PeerChange",
    "PeerConfig",
    "PeerScope",
    "PeerStatus",
    "Pool",
    "PortMapping",
    "ReconcileReport",
    "ReconcileRequest",
    "ReconcileTally",
    "ServiceOverlay",
    "SubnetRequest",
    "WindowsContainerHandle",
    "check_netns_identity",
    "handle_key",
    "parse_cidr_list",
    "shared_address",
    "validate_wg_key",
]

#: Major version of the driver API (the hookspecs and these models). A driver
#: declares the version it was written for in :class:`DriverInfo`; the engine
#: refuses a driver whose major version differs.
DRIVER_API = 1


@functools.lru_cache(maxsize=1 << 16)
def _parsed(parse: Callable[[str], Any], text: str) -> Any:
    try:
        return parse(text)
    except ValueError:
        return text  # left to the union's validators, which report it as before


def shared_address(text: str) -> IPAddress:
    """``ipaddress.ip_address(text)``, the object the models' validation shares for ``text``.

    :raises ValueError: ``text`` is not an address.
    """
    parsed = _parsed(ipaddress.ip_address, text)
    if type(parsed) is str:
        raise ValueError(f"{text!r} does not appear to be an IPv4 or IPv6 address")
    return cast(IPAddress, parsed)


def _cached(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def before(value: Any) -> Any:
        return _parsed(parse, value) if type(value) is str else value

    return before


# Text is parsed once per distinct value (a bounded cache; the objects are
# immutable and shared), and the union is validated left to right: the first
# family that parses wins, as the default ("smart") mode would choose too,
# without trying the other family on every value. Both were most of
# validating stored attachments and peers at start (docs/design-notes.rst,
# "Footprint of a large node"); invalid text still gets the union's errors.
IPAddress: TypeAlias = Annotated[
    ipaddress.IPv4Address | ipaddress.IPv6Address,
    Field(union_mode="left_to_right"),
    BeforeValidator(_cached(ipaddress.ip_address)),
]
IPNetwork: TypeAlias = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    Field(union_mode="left_to_right"),
    BeforeValidator(_cached(ipaddress.ip_network)),
]
IPInterface: TypeAlias = Annotated[
    ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    Field(union_mode="left_to_right"),
    BeforeValidator(_cached(ipaddress.ip_interface)),
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def validate_wg_key(value: object) -> str:
    """Return ``value`` if it is standard base64 of exactly 32 bytes, else raise ValueError."""
    if not isinstance(value, str) or len(value) != 44:
        raise ValueError(
            "a WireGuard key is 44 characters of standard base64 (32 bytes), "
            f"got {len(value) if isinstance(value, str) else type(value).__name__}"
        )
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"a WireGuard key must be standard base64: {exc}") from None
    if len(raw) != 32:
        raise ValueError("a WireGuard key must decode to exactly 32 bytes")
    return value


WgKey = Annotated[str, Field(min_length=44, max_length=44)]


def parse_cidr_list(value: str | list[str] | tuple[str, ...]) -> list[IPNetwork]:
    """Parse a comma-separated CIDR list (ZLayer's ``allowed_ips``) or a list of CIDRs.

    Host bits set (``10.0.0.5/24``) are an error, like ``wg`` reports them, and a
    bare address means a host route (``/32`` or ``/128``).
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[IPNetwork] = []
    for raw in items:
        text = raw.strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid CIDR {text!r}: {exc}") from None
    return out


# ---------------------------------------------------------------------------
# Driver description
# ---------------------------------------------------------------------------


class Capability(StrEnum):
    """What a driver can do; the conformance kit skips what a driver does not declare."""

    DEVICES = "devices"
    PEERS = "peers"
    IPAM = "ipam"
    DNS = "dns"
    NAT = "nat"
    ATTACH = "attach"
    RECONCILE = "reconcile"


class DriverInfo(_Model):
    """What :func:`~overlayd.hookspecs.overlayd_describe` returns."""

    #: Entry-point name, stamped on every object the driver owns.
    name: str
    #: Major driver API version the driver was written for (:data:`DRIVER_API`).
    api: int
    #: ``sys.platform`` values the driver runs on; empty means any.
    platforms: frozenset[str] = frozenset()
    #: Device kinds the driver creates (see :class:`DeviceKind`).
    device_kinds: frozenset[str] = frozenset()
    #: Handle platforms the driver attaches (see :class:`HandleKind`).
    attach_kinds: frozenset[str] = frozenset()
    #: Capabilities, for the conformance kit and the ``hello`` handshake.
    capabilities: frozenset[Capability] = frozenset()
    #: Free-form version of the driver distribution.
    version: str = ""


# ---------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------


class DeviceKind(StrEnum):
    """Device kinds the built-in drivers know. Third-party kinds are plain strings."""

    #: A Linux bridge holding a service's containers (gateway address on it).
    BRIDGE = "bridge"
    #: A WireGuard device: the node's global device or a dedicated service device.
    WIREGUARD = "wireguard"
    #: A Windows HCN network (Internal or Transparent).
    HCN_NETWORK = "hcn-network"


#: What a device spec and the device created from it describe alike.
_SPEC_AND_DEVICE: tuple[str, ...] = ("kind", "name", "owner", "addresses", "mtu", "subnet")


class DeviceSpec(_Model):
    """The desired device, as the engine asks a driver to create it."""

    kind: str
    #: Interface name (at most 15 bytes on Linux; see :mod:`overlayd.names`).
    name: str
    #: ``base`` for node-wide devices, ``service:<name>`` for a service's.
    owner: str
    addresses: tuple[IPInterface, ...] = ()
    mtu: int | None = None
    #: WireGuard: UDP listen port.
    listen_port: int | None = None
    #: WireGuard: the device's private key (base64). Never logged; see ``__repr_args__``.
    private_key: str | None = None
    #: The subnet the device serves (bridge / HCN network).
    subnet: IPNetwork | None = None
    #: Driver-specific extras (e.g. ``{"network_type": "Transparent"}`` for HCN).
    options: Mapping[str, Any] = Field(default_factory=dict)

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, ("<redacted>" if key == "private_key" and value else value)

    def as_device(self, driver: str, **reported: Any) -> Device:
        """The device this spec asks for, as ``driver`` reports it once created:
        the spec's kind, name, owner, addresses, MTU and subnet, and what the host
        ``reported`` (``id``, ``public_key``, ``options``...) beside or over them."""
        fields = {name: getattr(self, name) for name in _SPEC_AND_DEVICE}
        return Device(driver=driver, **{**fields, **reported})


class Device(_Model):
    """A device that exists on the host, as a driver reports it."""

    kind: str
    name: str
    owner: str
    #: Entry-point name of the driver that owns it.
    driver: str
    addresses: tuple[IPInterface, ...] = ()
    mtu: int | None = None
    listen_port: int | None = None
    public_key: str | None = None
    subnet: IPNetwork | None = None
    #: Host identifier when there is one (ifindex as string, HCN GUID).
    id: str | None = None
    options: Mapping[str, Any] = Field(default_factory=dict)

    def as_spec(self, **changes: Any) -> DeviceSpec:
        """The spec that creates this device again (a reconcile that found it
        missing): its kind, name, owner, addresses, MTU, subnet and options, with
        ``changes`` over them. No key: the engine re-creates WireGuard devices."""
        fields = {name: getattr(self, name) for name in (*_SPEC_AND_DEVICE, "options")}
        return DeviceSpec(**{**fields, **changes})


# ---------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------


class PeerScope(_Model):
    """Which WireGuard device a peer operation targets."""

    scope: Literal["global", "service"] = "global"
    service: str | None = None

    @field_validator("service")
    @classmethod
    def _service_name(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("service scope needs a non-empty service name")
        return value

    @property
    def is_global(self) -> bool:
        return self.scope == "global"


class PeerConfig(_Model):
    """A peer as the engine records it (the desired state)."""

    public_key: str
    #: ``host:port``; ``host`` may be a name (resolved by the driver) or an address.
    endpoint: str | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    persistent_keepalive_secs: int = 0

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return validate_wg_key(value)


class PeerChange(_Model):
    """One change to one peer in a batch given to ``overlayd_peer_apply``.

    ``remove`` deletes the peer. Otherwise the peer is created if absent and the
    given fields are updated; ``allowed_ips`` (when not ``None``) replaces the
    whole set, ``add_allowed_ips``/``remove_allowed_ips`` edit it.
    """

    public_key: str
    remove: bool = False
    endpoint: str | None = None
    persistent_keepalive_secs: int | None = None
    allowed_ips: tuple[IPNetwork, ...] | None = None
    add_allowed_ips: tuple[IPNetwork, ...] = ()
    remove_allowed_ips: tuple[IPNetwork, ...] = ()

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        return validate_wg_key(value)


class PeerStatus(_Model):
    """A peer as the device reports it."""

    public_key: str
    endpoint: str | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    persistent_keepalive_secs: int = 0
    #: Unix seconds of the last handshake; 0 means never.
    last_handshake_unix_secs: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0


# ---------------------------------------------------------------------------
# IPAM
# ---------------------------------------------------------------------------


class Pool(_Model):
    """An address pool: the node slice or a service subnet."""

    #: ``node`` for the node slice pool, ``service:<name>`` for a service subnet.
    name: str
    cidr: IPNetwork
    #: Addresses never handed out (gateway, node address, dedicated device address).
    reserved: tuple[IPAddress, ...] = ()
    #: The driver that answers IPAM for this pool, when not the built-in allocator.
    driver: str | None = None


class Lease(_Model):
    """An address held by an owner in a pool."""

    ip: IPAddress
    pool: str
    #: ``handle:<key>`` for an attachment, ``manual`` for ``allocate_ip``.
    owner: str
    created_unix_secs: int = 0


# ---------------------------------------------------------------------------
# Attach
# ---------------------------------------------------------------------------


class HandleKind(StrEnum):
    LINUX_PID = "linux_pid"
    WINDOWS_CONTAINER = "windows_container"
    GUEST_MANAGED = "guest_managed"
    NETNS = "netns"


class LinuxPidHandle(_Model):
    """A Linux process whose network namespace (``/proc/<pid>/ns/net``) is attached."""

    platform: Literal["linux_pid"] = "linux_pid"
    pid: int = Field(gt=0, lt=2**22)


class WindowsContainerHandle(_Model):
    """A Windows container; ``ip`` asks for a specific address."""

    platform: Literal["windows_container"] = "windows_container"
    container_id: str = Field(min_length=1, max_length=256)
    ip: IPAddress | None = None


class GuestManagedHandle(_Model):
    """A guest (VM) that runs its own WireGuard; it gets a ``guest_config``."""

    platform: Literal["guest_managed"] = "guest_managed"
    id: str = Field(min_length=1, max_length=256)


class NetnsHandle(_Model):
    """A network namespace given by path (``/run/netns/x``); an overlayd extension.

    Without ``container_id`` the path is the handle's identity and the
    workload's interface is ``eth0``. With ``container_id`` (a CNI attachment)
    the identity is ``(network, container_id, ifname)``: the workload's
    interface is ``ifname`` (default ``eth0``), and ``path`` is needed to
    attach but not to detach, so a detach works after the namespace is gone.
    """

    platform: Literal["netns"] = "netns"
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    #: CNI ``CNI_CONTAINERID``: makes ``(network, container_id, ifname)`` the identity.
    container_id: str | None = None
    #: Interface name inside the namespace (CNI ``CNI_IFNAME``); needs ``container_id``.
    ifname: str | None = None
    #: CNI network name (``name`` of the network configuration); needs ``container_id``.
    network: str | None = None

    @model_validator(mode="after")
    def _identity(self) -> NetnsHandle:
        check_netns_identity(self.path, self.container_id, self.ifname, self.network)
        return self

    @property
    def container_ifname(self) -> str:
        """The interface name inside the namespace."""
        return self.ifname or "eth0"


AnyHandle: TypeAlias = LinuxPidHandle | WindowsContainerHandle | GuestManagedHandle | NetnsHandle
Handle = Annotated[AnyHandle, Field(discriminator="platform")]


def handle_key(handle: AnyHandle) -> str:
    """The stable identity of a handle: attach is idempotent per key."""
    if isinstance(handle, LinuxPidHandle):
        return f"linux_pid:{handle.pid}"
    if isinstance(handle, WindowsContainerHandle):
        return f"windows_container:{handle.container_id}"
    if isinstance(handle, GuestManagedHandle):
        return f"guest_managed:{handle.id}"
    if handle.container_id is not None:
        return f"cni:{handle.network or ''}:{handle.container_id}:{handle.container_ifname}"
    return f"netns:{handle.path}"


def check_netns_identity(
    path: str | None, container_id: str | None, ifname: str | None, network: str | None
) -> None:
    """Raise ``ValueError`` unless these fields make a valid ``netns`` handle.

    A handle needs ``path`` or ``container_id``; ``ifname`` and ``network``
    only come with ``container_id``, whose values must be valid CNI names.
    Shared by the wire model (:class:`overlayd.protocol.NetnsHandle`).
    """
    if container_id is None:
        if ifname is not None or network is not None:
            raise ValueError(
                "ifname and network need container_id: with them the attachment's "
                "identity is (network, container_id, ifname) instead of the path"
            )
        if path is None:
            raise ValueError("a netns handle needs a path (or a CNI container_id)")
        return
    check_attachment_id("container_id", container_id)
    if network is not None:
        check_attachment_id("network", network)
    if ifname is not None:
        check_workload_ifname(ifname)


class NodeInfo(_Model):
    """This node's overlay identity, given to attach hooks (guests peer with it)."""

    interface: str
    public_key: str | None
    node_ip: IPAddress
    cluster_cidr: IPNetwork
    slice_cidr: IPNetwork
    listen_port: int
    mtu: int | None = None


class AttachRequest(_Model):
    """Everything a driver needs to attach one workload. Addresses are already leased."""

    handle: Handle
    service: str
    #: The service's segment (bridge, HCN network) created by ``overlayd_device_create``.
    segment: Device
    #: The container's address on the service subnet, with the subnet's prefix.
    address: IPInterface
    gateway: IPAddress
    #: With ``join_global``: the container's address from the node slice.
    global_address: IPInterface | None = None
    node: NodeInfo | None = None
    dns_server: IPAddress | None = None
    dns_domain: str | None = None
    mtu: int | None = None
    #: Interface names the engine chose (host-side veth names etc.); drivers may ignore.
    names: Mapping[str, str] = Field(default_factory=dict)
    #: ``False``: no default route in the workload (it has one from another
    #: network); the cluster CIDR (``node.cluster_cidr``) is routed via ``gateway``.
    default_route: bool = True
    #: What the driver's ``overlayd_attach_plan`` answered for this request:
    #: the attachment its ``overlayd_attach`` must now make true (the engine
    #: is writing it to the store meanwhile). ``None``: no plan.
    planned: Attachment | None = None

    def as_attachment(self, driver: str, **host: Any) -> Attachment:
        """The :class:`Attachment` ``driver`` reports for this request: its handle,
        service and addresses, and what the host gave (``interfaces``...)."""
        global_ip = self.global_address.ip if self.global_address else None
        return Attachment(
            handle=self.handle,
            service=self.service,
            driver=driver,
            ip=self.address.ip,
            global_ip=global_ip,
            **host,
        )

    def guest_config(
        self, private_key: str, public_key: str, *, endpoint: str | None, keepalive_secs: int
    ) -> GuestConfig:
        """The :class:`GuestConfig` of a guest with this key pair: its address, and
        the node's WireGuard device (reached at ``endpoint``) as its one peer for
        the whole cluster.

        :raises ValueError: the request carries no node with a public key.
        """
        node = self.node
        if node is None or node.public_key is None:
            raise ValueError("a guest needs the node's WireGuard device (node.public_key)")
        peer = PeerConfig(
            public_key=node.public_key,
            endpoint=endpoint,
            allowed_ips=(node.cluster_cidr,),
            persistent_keepalive_secs=keepalive_secs,
        )
        return GuestConfig(
            overlay_ip=self.address.ip,
            prefix_len=self.address.network.prefixlen,
            private_key=private_key,
            public_key=public_key,
            listen_port=node.listen_port,
            peers=(peer,),
            dns_server=self.dns_server,
            dns_domain=self.dns_domain,
        )


class GuestConfig(_Model):
    """What a guest-managed workload needs to configure its own WireGuard."""

    overlay_ip: IPAddress
    prefix_len: int
    private_key: str
    public_key: str
    listen_port: int
    peers: tuple[PeerConfig, ...] = ()
    dns_server: IPAddress | None = None
    dns_domain: str | None = None

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, ("<redacted>" if key == "private_key" else value)


class Attachment(_Model):
    """A workload attached to a service, as recorded by the engine."""

    handle: Handle
    service: str
    #: Entry-point name of the driver that attached it.
    driver: str
    ip: IPAddress
    global_ip: IPAddress | None = None
    #: Host objects the driver created (interface names), so detach can remove them.
    interfaces: tuple[str, ...] = ()
    #: Windows: the HCN namespace GUID, bare lowercase.
    namespace_guid: str | None = None
    #: Windows: the HCN endpoint GUID.
    endpoint_id: str | None = None
    #: The workload-side name of the service interface (``eth0``, CNI ``CNI_IFNAME``).
    ifname: str | None = None
    #: MAC address of that interface (``02:42:…``), when the driver knows it.
    mac: str | None = None
    #: MTU of that interface, when the driver set it.
    mtu: int | None = None
    #: Destinations routed via the service gateway in the workload
    #: (``0.0.0.0/0`` for the default route).
    routes: tuple[IPNetwork, ...] = ()
    guest: GuestConfig | None = None
    created_unix_secs: int = 0
    #: Driver-specific facts detach or reconcile need (e.g. netns inode).
    extra: Mapping[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return handle_key(self.handle)


# ``AttachRequest.planned`` names ``Attachment``, defined after it: build the
# request's validator now, at import, not on the first attach (measured in a
# fresh daemon: 3 ms added to its first attach).
AttachRequest.model_rebuild()


# ---------------------------------------------------------------------------
# DNS and NAT
# ---------------------------------------------------------------------------


class DnsRecord(_Model):
    """One name → address record (A or AAAA by the address family)."""

    #: Name relative to the overlay zone (``web``, ``c-1234.web``) or absolute with a dot.
    name: str = Field(min_length=1, max_length=253)
    ip: IPAddress
    #: ``manual`` (register_dns) or ``handle:<key>`` (from an attachment).
    source: str = "manual"


class DnsRecordLike(Protocol):
    """The read-only fields of a :class:`DnsRecord`, without the model.

    What ``overlayd_dns_records_loaded`` hands over: the engine's own light
    records (a large node holds 120,000), valid by construction. A
    ``DnsRecord`` is one too.
    """

    @property
    def name(self) -> str: ...

    @property
    def ip(self) -> IPAddress: ...

    @property
    def source(self) -> str: ...


class MasqueradeRule(_Model):
    """Outbound NAT for a subnet leaving the node, with exempt destinations."""

    subnet: IPNetwork
    exempt: tuple[IPNetwork, ...] = ()
    #: Uplink interface name; ``None`` means any non-overlay interface.
    uplink: str | None = None


class PortMapping(_Model):
    """A host port forwarded to a container (DNAT, with hairpin)."""

    protocol: Literal["tcp", "udp"]
    host_port: int = Field(gt=0, lt=65536)
    container_ip: IPAddress
    container_port: int = Field(gt=0, lt=65536)
    host_ip: IPAddress | None = None


class NatCandidate(_Model):
    """A NAT-traversal candidate endpoint of a node (host, reflexive or relay).

    ``endpoint`` is a numeric ``IP:port`` (``[IPv6]:port``). ``priority``
    orders candidates, higher first (RFC 8445 §5.1.2 formula, see
    :func:`overlayd.nat.candidates.priority`); 0 means "not ranked yet".
    ``guessed`` marks a reflexive candidate seen through a NAT whose mapping
    depends on the destination (a symmetric NAT): the mapping the STUN server
    saw does not predict the one towards a peer.
    """

    kind: Literal["host", "reflexive", "relay"]
    endpoint: str
    priority: int = Field(default=0, ge=0, lt=2**32)
    guessed: bool = False


# ---------------------------------------------------------------------------
# Engine-level records (stored, returned to clients)
# ---------------------------------------------------------------------------


class OverlayMode(StrEnum):
    AUTO = "auto"
    SHARED = "shared"
    DEDICATED = "dedicated"

    def resolve(self) -> OverlayMode:
        return OverlayMode.SHARED if self is OverlayMode.AUTO else self


class GlobalOverlay(_Model):
    """The node's global overlay as set up by ``setup_global_overlay``."""

    deployment: str
    #: The instance that first set it up; device and bridge names derive from it,
    #: so a later instance (an agent restart) adopts them unchanged.
    instance_id: str
    cluster_cidr: IPNetwork
    #: The node slice; the whole cluster CIDR when the request gave none.
    slice_cidr: IPNetwork
    node_ip: IPAddress
    wg_port: int
    nat_enabled: bool
    device: Device
    #: Whether the request gave ``slice_cidr`` (``status`` reports only a given
    #: slice). ``None`` in older records: given when it differs from the cluster.
    slice_given: bool | None = None
    #: The address layout (:mod:`overlayd.engine.layout`); ``None`` in older records: ``carved``.
    layout: Literal["carved", "local", "base-network"] | None = None

    @property
    def reported_slice(self) -> IPNetwork | None:
        """The slice ``status`` reports: only one the request gave."""
        given = self.slice_given
        if given is None:
            given = self.slice_cidr != self.cluster_cidr
        return self.slice_cidr if given else None


class ServiceOverlay(_Model):
    """A service's overlay on this node."""

    service: str
    mode: OverlayMode
    subnet: IPNetwork
    gateway: IPAddress
    bridge: Device
    #: Dedicated mode: the service's own WireGuard device.
    dedicated: Device | None = None
    overlay_ip: IPAddress | None = None


class SubnetRequest(_Model):
    """A new service's subnet, as the subnet hook is asked for it.

    See :func:`~overlayd.hookspecs.overlayd_ipam_subnet_allocate`.
    """

    service: str
    #: ``shared`` or ``dedicated`` (never ``auto``: resolved before).
    mode: OverlayMode
    cluster_cidr: IPNetwork
    slice_cidr: IPNetwork
    #: The node's address layout: ``carved``, ``local`` or ``base-network``.
    layout: str
    #: What this node already uses (the node pool's block and every service
    #: subnet, set up or being set up): the answer must overlap none of them.
    taken: tuple[IPNetwork, ...] = ()
    #: The driver that owns the node's address pools (``[ipam] driver``);
    #: ``None`` for the built-in carving.
    driver: str | None = None


class Event(_Model):
    """An event the engine pushes to subscribed clients."""

    event: Literal[
        "peer_health_changed", "nat_endpoint_changed", "attached", "detached", "reconcile_repaired"
    ]
    pubkey: str = ""
    healthy: bool | None = None
    endpoint: str | None = None
    #: ``attached``/``detached``: the attachment's handle key, service and address.
    handle: str | None = None
    service: str | None = None
    ip: str | None = None
    #: ``reconcile_repaired``: ``recreated``, ``removed`` or ``released``, and what.
    kind: str | None = None
    object: str | None = None


class ReconcileRequest(_Model):
    """What the engine recorded, given to each driver's reconcile hook."""

    devices: tuple[Device, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    masquerades: tuple[MasqueradeRule, ...] = ()
    port_mappings: tuple[PortMapping, ...] = ()
    #: True on startup; False for a periodic or on-demand pass.
    startup: bool = False


class ReconcileReport(_Model):
    """What one driver's reconcile pass found and did."""

    driver: str
    #: Recorded objects found intact on the host.
    adopted: tuple[str, ...] = ()
    #: Recorded objects that were missing and were created again.
    recreated: tuple[str, ...] = ()
    #: Host objects that were ours but not recorded, and were removed.
    removed: tuple[str, ...] = ()
    #: Attachment keys whose workload no longer exists (the engine releases them).
    gone: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass
class ReconcileTally:
    """What a driver's reconcile pass has found so far, one list per outcome of
    :class:`ReconcileReport`; :meth:`report` gives the report of the pass."""

    adopted: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def report(self, driver: str) -> ReconcileReport:
        """The :class:`ReconcileReport` of ``driver``'s pass, in the order found."""
        return ReconcileReport(
            driver=driver,
            adopted=tuple(self.adopted),
            recreated=tuple(self.recreated),
            removed=tuple(self.removed),
            gone=tuple(self.gone),
            errors=tuple(self.errors),
        )
