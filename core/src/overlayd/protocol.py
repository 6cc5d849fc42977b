"""The IPC wire contract: frames, requests, responses and events.

This module is the single source of truth for what crosses the overlayd socket.
It follows ZLayer's ``zlayer_types::overlayd`` (PROTOCOL_VERSION 1) byte for
byte, as ``docs/reference/zlayer.rst`` states it; the sections cited below
are that page's, and ``docs/protocol.rst`` shows every frame.

Shapes (docs/reference/zlayer.rst §2)::

    {"frame":"request","id":1,"request":{"op":"status"}}
    {"frame":"response","id":1,"response":{"result":"ip","ip":"10.0.0.5"}}
    {"frame":"event","event":"peer_health_changed","pubkey":"...","healthy":true}

Encoding rules, chosen to produce the same bytes as ZLayer's serde types:

* compact JSON (``separators=(",", ":")``), UTF-8 without ``\\u`` escapes for
  non-ASCII text (serde_json's behaviour);
* the tag first, then the fields in ZLayer's declaration order (serde emits
  internally tagged enums as tag + fields in declaration order);
* optional fields that are ``None`` are omitted; ``status`` also omits its empty
  lists (serde ``skip_serializing_if = "Vec::is_empty"``);
* ``scope`` is always emitted (ZLayer declares it ``#[serde(default)]`` without
  ``skip_serializing_if``); a missing ``scope`` decodes as global.

Decoding ignores unknown fields and field order. A body that is not a valid frame
raises :class:`ProtocolError`, which carries the frame's ``id`` whenever the JSON
has one, so the server can answer ``err`` and keep the connection (docs/reference/zlayer.rst
§8).

Value checks (overlayd is stricter than the Rust types, where that cannot reject
anything ZLayer sends): IPs are IPv4/IPv6 text (normalised to the canonical form,
as Rust's ``IpAddr`` does), CIDRs and endpoints are checked but kept verbatim,
WireGuard keys are standard base64 of 32 bytes, GUIDs are bare lowercase.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import struct
from collections.abc import Mapping
from typing import Annotated
from typing import Any
from typing import ClassVar
from typing import Final
from typing import Literal
from typing import TypeAlias
from typing import cast

from pydantic import AfterValidator
from pydantic import BaseModel
from pydantic import BeforeValidator
from pydantic import ConfigDict
from pydantic import Field
from pydantic import StrictBool
from pydantic import StrictInt
from pydantic import StrictStr
from pydantic import ValidationError
from pydantic import model_validator

from overlayd.errors import InvalidRequest
from overlayd.errors import clip
from overlayd.errors import quote
from overlayd.model import check_netns_identity

__all__ = [
    "ALL_OPS",
    "EVENT_KINDS",
    "EXPECTED_RESULTS",
    "EXTENSION_OPS",
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "ZLAYER_OPS",
    "AddAllowedIpRequest",
    "AddPeerRequest",
    "AllocateIpRequest",
    "AnyEvent",
    "AnyHandle",
    "AnyRequest",
    "AnyResponse",
    "AnyScope",
    "ApplyPeersRequest",
    "AttachContainerRequest",
    "AttachInterfaceRequest",
    "AttachedEvent",
    "AttachedResponse",
    "AttachmentInfo",
    "AttachmentResponse",
    "AttachmentsResponse",
    "BridgeNameResponse",
    "ClusterNodeInfo",
    "ClusterStats",
    "ClusterStatusRequest",
    "ClusterStatusResponse",
    "CniExecRequest",
    "CniResultResponse",
    "DedicatedServiceStatus",
    "DetachContainerRequest",
    "DetachedEvent",
    "DriverDescription",
    "ErrResponse",
    "Event",
    "EventFrame",
    "Frame",
    "GcReportResponse",
    "GcRequest",
    "GlobalScope",
    "GuestConfigResponse",
    "GuestManagedHandle",
    "HelloRequest",
    "HelloResponse",
    "IpResponse",
    "LeaseInfo",
    "LeasesResponse",
    "LinuxPidHandle",
    "ListAttachmentsRequest",
    "ListLeasesRequest",
    "MapPortRequest",
    "NatCandidateInfo",
    "NatEndpointChangedEvent",
    "NatPeerCandidatesRequest",
    "NatPeerPathInfo",
    "NatStatusInfo",
    "NatTickRequest",
    "NetnsHandle",
    "OkResponse",
    "OverlayModeName",
    "PeerChange",
    "PeerHealthChangedEvent",
    "PeerSpec",
    "PeerStatus",
    "ProtocolError",
    "ReconcileRepairedEvent",
    "ReconcileReportResponse",
    "ReconcileRequest",
    "RegisterDnsRequest",
    "ReleaseIpRequest",
    "RemoveAllowedIpRequest",
    "RemovePeerRequest",
    "Request",
    "RequestFrame",
    "Response",
    "ResponseFrame",
    "ServiceOverlayResponse",
    "ServiceScope",
    "SetLocalNodeIdRequest",
    "SetLocalWgPubkeyRequest",
    "SetupGlobalOverlayRequest",
    "SetupServiceOverlayRequest",
    "ShutdownRequest",
    "StatusRequest",
    "StatusResponse",
    "TeardownGlobalOverlayRequest",
    "TeardownServiceOverlayRequest",
    "UnmapPortRequest",
    "UnregisterDnsRequest",
    "WindowsContainerHandle",
    "build_models",
    "decode_frame",
    "decode_request",
    "encode_body",
    "encode_frame",
    "encode_json",
    "encode_response",
    "peek_bare_request",
    "response_body",
]

#: Wire protocol version (ZLayer ``PROTOCOL_VERSION``); ``hello`` reports it.
PROTOCOL_VERSION: Final = 1
#: Largest frame body in bytes (docs/reference/zlayer.rst §1); checked before allocating.
MAX_FRAME: Final = 8 * 1024 * 1024

_HEADER: Final = struct.Struct("<I")
_U64_MAX: Final = 2**64 - 1


class ProtocolError(InvalidRequest):
    """A frame body that is not a valid frame of the contract.

    ``request_id`` is the frame's ``id`` when the JSON held an unsigned 64-bit
    integer ``id`` (so the server can answer ``err`` to it), else ``None``.
    """

    code = "protocol"

    def __init__(self, message: str, request_id: int | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)


# ---------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------


def _check_ip(value: str) -> str:
    if "%" not in value:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    raise ValueError(f"{quote(value)} is not an IPv4 or IPv6 address")


def _check_cidr(value: str) -> str:
    text = value.strip()
    if text and "%" not in text:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            pass
        else:
            return value
    raise ValueError(f"{quote(value)} is not a CIDR such as '10.200.0.0/16' or 'fd00::/64'")


def _check_cidr_list(value: str) -> str:
    """A comma-separated CIDR list (PeerSpec ``allowed_ips``); empty means none."""
    for item in value.split(","):
        if item.strip():
            try:
                _check_cidr(item)
            except ValueError:
                raise ValueError(
                    f"{quote(item.strip())} in {quote(value)} is not a CIDR; allowed_ips is a "
                    "comma-separated list such as '10.200.0.5/32,10.200.1.0/28'"
                ) from None
    return value


_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$")


def _check_endpoint(value: str) -> str:
    """``host:port``; the empty string means "no endpoint known" (a roaming peer)."""
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    problem = ""
    if not sep or not host:
        problem = "it has no ':port'"
    elif not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        # isdigit() alone accepts '٣' (which int() reads as 3) and '¹' (which it refuses).
        problem = f"port {quote(port)} is not a number in 1..65535"
    elif host.startswith("["):
        if not host.endswith("]"):
            problem = f"{quote(host)} lacks the closing ']'"
        else:
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                problem = f"{quote(host)} is not a bracketed IPv6 address"
    elif ":" in host:
        problem = "an IPv6 host must be bracketed, like '[fd00::1]:51820'"
    elif not _HOSTNAME.match(host):
        problem = f"{quote(host)} is not a hostname or IPv4 address"
    if problem:
        raise ValueError(f"endpoint {quote(value)} is not 'host:port': {problem}")
    return value


def _check_key(value: str) -> str:
    problem = ""
    if len(value) != 44:
        problem = f"it has {len(value)} characters"
    else:
        try:
            if len(base64.b64decode(value, validate=True)) != 32:
                problem = "it does not decode to 32 bytes"
        except (binascii.Error, ValueError):
            problem = "it is not standard base64"
    if problem:
        raise ValueError(
            "a WireGuard key is 44 characters of standard base64 with padding "
            f"(32 bytes), but {problem}"
        )
    return value


_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _check_guid(value: str) -> str:
    if not _GUID.match(value):
        raise ValueError(
            f"{quote(value)} is not a bare lowercase GUID like "
            "'aabbccdd-eeff-0011-2233-445566778899' (no braces)"
        )
    return value


#: Event kinds a connection may subscribe to with ``hello`` ``events`` (an extension).
EVENT_KINDS: Final[tuple[str, ...]] = (
    "peer_health_changed",
    "nat_endpoint_changed",
    "attached",
    "detached",
    "reconcile_repaired",
)


def _check_event_kind(value: str) -> str:
    if value not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {value!r}; known: {', '.join(EVENT_KINDS)}")
    return value


IpStr = Annotated[StrictStr, AfterValidator(_check_ip)]
CidrStr = Annotated[StrictStr, AfterValidator(_check_cidr)]
CidrListStr = Annotated[StrictStr, AfterValidator(_check_cidr_list)]
EndpointStr = Annotated[StrictStr, AfterValidator(_check_endpoint)]
WgKey = Annotated[StrictStr, AfterValidator(_check_key)]
GuidStr = Annotated[StrictStr, AfterValidator(_check_guid)]
EventKind = Annotated[StrictStr, AfterValidator(_check_event_kind)]
NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
U8Prefix = Annotated[StrictInt, Field(ge=0, le=128)]
U16 = Annotated[StrictInt, Field(ge=0, le=65535)]
U32 = Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]
U64 = Annotated[StrictInt, Field(ge=0, le=_U64_MAX)]
I64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
#: ``OverlayMode`` (docs/reference/zlayer.rst §2): ``auto`` resolves to ``shared``.
OverlayModeName: TypeAlias = Literal["auto", "shared", "dedicated"]


class _Wire(BaseModel):
    """Base of every wire model: ignores unknown fields, immutable, equal by value."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    #: Fields omitted from the wire when they are empty lists (``status``).
    _omit_empty: ClassVar[tuple[str, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The JSON object of this model: tag first, ``None`` fields omitted."""
        data = self.model_dump(mode="json", exclude_none=True)
        for name in self._omit_empty:
            if not data.get(name):
                data.pop(name, None)
        return data


# ---------------------------------------------------------------------------
# Attach handles and peer scope
# ---------------------------------------------------------------------------


class LinuxPidHandle(_Wire):
    """``linux_pid {pid}``: the container end goes into ``/proc/<pid>/ns/net``."""

    platform: Literal["linux_pid"] = "linux_pid"
    pid: Annotated[StrictInt, Field(ge=1, le=2**32 - 1)]


class WindowsContainerHandle(_Wire):
    """``windows_container {container_id, ip?}``: an HCS container (HCN endpoint)."""

    platform: Literal["windows_container"] = "windows_container"
    container_id: StrictStr
    ip: IpStr | None = None


class GuestManagedHandle(_Wire):
    """``guest_managed {id}``: a VM with its own WireGuard (gets ``guest_config``)."""

    platform: Literal["guest_managed"] = "guest_managed"
    id: StrictStr


class NetnsHandle(_Wire):
    """``netns {path, container_id?, ifname?, network?}``: overlayd extension.

    A network namespace by path. With ``container_id`` (a CNI attachment) the
    handle's identity is ``(network, container_id, ifname)`` and the path is
    only needed to attach (see :class:`overlayd.model.NetnsHandle`).
    """

    platform: Literal["netns"] = "netns"
    path: NonEmptyStr | None = None
    container_id: StrictStr | None = None
    ifname: StrictStr | None = None
    network: StrictStr | None = None

    @model_validator(mode="after")
    def _identity(self) -> NetnsHandle:
        check_netns_identity(self.path, self.container_id, self.ifname, self.network)
        return self


AnyHandle: TypeAlias = LinuxPidHandle | WindowsContainerHandle | GuestManagedHandle | NetnsHandle
Handle = Annotated[AnyHandle, Field(discriminator="platform")]


class GlobalScope(_Wire):
    """``{"scope":"global"}``: the node's global WireGuard device."""

    scope: Literal["global"] = "global"


class ServiceScope(_Wire):
    """``{"scope":"service","service":"web"}``: a dedicated service device."""

    scope: Literal["service"] = "service"
    service: NonEmptyStr


def _scope_not_string(value: object) -> object:
    # docs/reference/zlayer.rst §2: the scope is a nested object; a bare string is invalid.
    if isinstance(value, str):
        raise ValueError('scope must be an object like {"scope":"global"}, not a string')
    return value


AnyScope: TypeAlias = GlobalScope | ServiceScope
Scope = Annotated[
    AnyScope,
    Field(discriminator="scope"),
    BeforeValidator(_scope_not_string),
]


def _global() -> AnyScope:
    return GlobalScope()


# ---------------------------------------------------------------------------
# Shared records
# ---------------------------------------------------------------------------


class PeerSpec(_Wire):
    """``PeerSpec {public_key, endpoint, allowed_ips, persistent_keepalive_secs}``.

    ``allowed_ips`` is a comma-separated CIDR list; ``endpoint`` is ``host:port``
    (a hostname is fine) or empty when unknown. The keepalive is a u64 on the wire
    (as in ZLayer); the engine rejects values WireGuard cannot hold.
    """

    public_key: WgKey
    endpoint: EndpointStr
    allowed_ips: CidrListStr
    persistent_keepalive_secs: U64


class PeerChange(_Wire):
    """One peer change in ``apply_peers`` (overlayd extension).

    ``remove`` deletes the peer; otherwise the peer is created if absent and the
    given fields updated. ``allowed_ips`` (when present) replaces the whole set;
    ``add_allowed_ips`` / ``remove_allowed_ips`` edit it. All are comma lists.
    """

    public_key: WgKey
    remove: StrictBool | None = None
    endpoint: EndpointStr | None = None
    persistent_keepalive_secs: U64 | None = None
    allowed_ips: CidrListStr | None = None
    add_allowed_ips: CidrListStr | None = None
    remove_allowed_ips: CidrListStr | None = None


class PeerStatus(_Wire):
    """A peer in ``status``; ``last_handshake_unix_secs`` is 0 when never."""

    public_key: WgKey
    endpoint: EndpointStr
    allowed_ips: CidrListStr
    last_handshake_unix_secs: I64
    #: overlayd extension (ZLayer ignores them): bytes received from and sent to the peer.
    rx_bytes: U64 | None = None
    tx_bytes: U64 | None = None


class DedicatedServiceStatus(_Wire):
    """A dedicated service device in ``status``."""

    service: StrictStr
    interface: StrictStr
    public_key: WgKey
    listen_port: U16
    overlay_ip: IpStr
    subnet: CidrStr
    peer_count: U32


class DriverDescription(_Wire):
    """A loaded driver as ``hello`` reports it (overlayd extension)."""

    name: StrictStr
    api: StrictInt
    platforms: list[StrictStr]
    capabilities: list[StrictStr]


class AttachmentInfo(_Wire):
    """An attachment as ``list_attachments`` and ``attach_interface`` report it.

    (overlayd extension.) The fields after ``created_unix_secs`` describe the
    workload's view of its service interface, as far as the daemon knows it:
    its name and MAC, the prefix length and gateway of its address, the
    destinations routed via the gateway, the MTU, and the resolver the
    workload should use (overlayd's DNS server on the gateway, and its zone).
    """

    handle: Handle
    service: StrictStr
    ip: IpStr
    global_ip: IpStr | None = None
    namespace_guid: GuidStr | None = None
    interfaces: list[StrictStr]
    driver: StrictStr
    created_unix_secs: I64
    #: ``true`` while a detach is recorded as under way (a crash or a failed
    #: store write interrupted it); the next detach, reconcile or start finishes it.
    detaching: StrictBool | None = None
    ifname: StrictStr | None = None
    mac: StrictStr | None = None
    prefix_len: U8Prefix | None = None
    gateway: IpStr | None = None
    routes: list[CidrStr] | None = None
    mtu: U32 | None = None
    dns_servers: list[IpStr] | None = None
    dns_domain: StrictStr | None = None


class LeaseInfo(_Wire):
    """An address lease as ``list_leases`` reports it (overlayd extension)."""

    ip: IpStr
    pool: StrictStr
    owner: StrictStr
    created_unix_secs: I64


class NatCandidateInfo(_Wire):
    """A NAT-traversal candidate (overlayd extension): ``status.nat`` and ``nat_peer_candidates``.

    ``endpoint`` is a numeric ``IP:port``; ``priority`` orders candidates
    (higher first); ``guessed`` is true for a reflexive candidate behind a NAT
    whose mapping depends on the destination (the peer's mapping may differ).
    """

    kind: Literal["host", "reflexive", "relay"]
    endpoint: EndpointStr
    priority: U32 | None = None
    guessed: StrictBool | None = None


class NatPeerPathInfo(_Wire):
    """How a peer is reached: ``pending``, ``direct``, ``guessed`` or ``relayed``."""

    public_key: WgKey
    path: Literal["pending", "direct", "guessed", "relayed"]
    endpoint: EndpointStr | None = None
    candidates: list[NatCandidateInfo]


class NatStatusInfo(_Wire):
    """``status.nat`` (overlayd extension): this node's candidates and its peers' paths."""

    candidates: list[NatCandidateInfo]
    peers: list[NatPeerPathInfo]
    warnings: list[StrictStr]


class ClusterNodeInfo(_Wire):
    """A node as ``cluster_status`` reports it (overlayd extension, cluster mode).

    ``last_handshake_unix_secs`` is the last WireGuard handshake with that node
    (0 = never; absent for the answering node itself); ``lease_ttl_secs`` the
    seconds its etcd lease has left (absent when etcd could not be asked).
    """

    name: StrictStr
    slices: list[CidrStr]
    endpoint: EndpointStr
    public_key: WgKey
    node_ip: IpStr
    local: StrictBool
    last_handshake_unix_secs: I64 | None = None
    lease_ttl_secs: I64 | None = None


class ClusterStats(_Wire):
    """Counters of the cluster agent since the daemon started."""

    sessions: U64
    peer_batches: U64
    peers_added: U64
    peers_updated: U64
    peers_removed: U64
    events: U64
    bad_records: U64
    etcd_requests: U64


# ---------------------------------------------------------------------------
# Requests (docs/reference/zlayer.rst §3)
# ---------------------------------------------------------------------------


class Request(_Wire):
    """Base of every request; ``op`` is its tag."""

    op: str


class SetLocalNodeIdRequest(Request):
    op: Literal["set_local_node_id"] = "set_local_node_id"
    node_id: U64


class SetLocalWgPubkeyRequest(Request):
    op: Literal["set_local_wg_pubkey"] = "set_local_wg_pubkey"
    pubkey: WgKey


class SetupGlobalOverlayRequest(Request):
    """Answered with ``bridge_name``; idempotent (docs/reference/zlayer.rst §4)."""

    op: Literal["setup_global_overlay"] = "setup_global_overlay"
    deployment: StrictStr
    instance_id: StrictStr
    cluster_cidr: CidrStr
    slice_cidr: CidrStr | None = None
    wg_port: U16
    nat_enabled: StrictBool


class TeardownGlobalOverlayRequest(Request):
    op: Literal["teardown_global_overlay"] = "teardown_global_overlay"


class SetupServiceOverlayRequest(Request):
    """``mode`` is required on the wire (ZLayer has no default for it)."""

    op: Literal["setup_service_overlay"] = "setup_service_overlay"
    service: StrictStr
    mode: OverlayModeName


class TeardownServiceOverlayRequest(Request):
    op: Literal["teardown_service_overlay"] = "teardown_service_overlay"
    service: StrictStr


class AllocateIpRequest(Request):
    op: Literal["allocate_ip"] = "allocate_ip"
    service: StrictStr
    join_global: StrictBool


class ReleaseIpRequest(Request):
    op: Literal["release_ip"] = "release_ip"
    ip: IpStr


class AttachContainerRequest(Request):
    """Answered with ``attached`` (``guest_config`` for a ``guest_managed`` handle)."""

    op: Literal["attach_container"] = "attach_container"
    handle: Handle
    service: StrictStr
    join_global: StrictBool
    dns_server: IpStr | None = None
    dns_domain: StrictStr | None = None


class DetachContainerRequest(Request):
    op: Literal["detach_container"] = "detach_container"
    handle: Handle


class AddPeerRequest(Request):
    """The PeerSpec fields sit flat in the request (ZLayer ``#[serde(flatten)]``)."""

    op: Literal["add_peer"] = "add_peer"
    public_key: WgKey
    endpoint: EndpointStr
    allowed_ips: CidrListStr
    persistent_keepalive_secs: U64
    scope: Scope = Field(default_factory=_global)

    @property
    def peer(self) -> PeerSpec:
        """The flattened PeerSpec as its own record."""
        return PeerSpec(
            public_key=self.public_key,
            endpoint=self.endpoint,
            allowed_ips=self.allowed_ips,
            persistent_keepalive_secs=self.persistent_keepalive_secs,
        )


class RemovePeerRequest(Request):
    op: Literal["remove_peer"] = "remove_peer"
    pubkey: WgKey
    scope: Scope = Field(default_factory=_global)


class AddAllowedIpRequest(Request):
    op: Literal["add_allowed_ip"] = "add_allowed_ip"
    pubkey: WgKey
    cidr: CidrStr
    scope: Scope = Field(default_factory=_global)


class RemoveAllowedIpRequest(Request):
    op: Literal["remove_allowed_ip"] = "remove_allowed_ip"
    pubkey: WgKey
    cidr: CidrStr
    scope: Scope = Field(default_factory=_global)


class RegisterDnsRequest(Request):
    op: Literal["register_dns"] = "register_dns"
    name: StrictStr
    ip: IpStr


class UnregisterDnsRequest(Request):
    op: Literal["unregister_dns"] = "unregister_dns"
    name: StrictStr


class StatusRequest(Request):
    op: Literal["status"] = "status"


class NatTickRequest(Request):
    op: Literal["nat_tick"] = "nat_tick"


class ShutdownRequest(Request):
    """Answered with ``ok``, then the daemon exits gracefully."""

    op: Literal["shutdown"] = "shutdown"


# -- overlayd extensions: new op names only ---------------------------------


class HelloRequest(Request):
    """Version handshake; answered with ``hello``. Also subscribes to events.

    A connection receives no event frame until it asks: ``events`` lists the
    kinds it wants pushed from now on (``[]`` stops them); absent, the
    subscription stays as it is. ZLayer never sends ``events``, so its
    connections never see an event.
    """

    op: Literal["hello"] = "hello"
    client: StrictStr | None = None
    protocol_version: StrictInt | None = None
    events: list[EventKind] | None = None


class ApplyPeersRequest(Request):
    """A batch of peer changes on one device, applied together; answered ``ok``."""

    op: Literal["apply_peers"] = "apply_peers"
    changes: list[PeerChange]
    scope: Scope = Field(default_factory=_global)


class ListAttachmentsRequest(Request):
    """Answered with ``attachments``: all, one service's, or the one of ``handle``."""

    op: Literal["list_attachments"] = "list_attachments"
    service: StrictStr | None = None
    handle: Handle | None = None


class ListLeasesRequest(Request):
    op: Literal["list_leases"] = "list_leases"
    pool: StrictStr | None = None


class GcRequest(Request):
    """Detach every attachment whose handle is not in ``live``; ``gc_report``.

    With ``network``, only the ``netns`` attachments of that CNI network are
    candidates (a CNI ``GC`` lists the live attachments of one network).
    """

    op: Literal["gc"] = "gc"
    live: list[Handle]
    dry_run: StrictBool | None = None
    network: StrictStr | None = None


class AttachInterfaceRequest(Request):
    """Attach a workload and answer with its interface's details (``attachment``).

    For callers that report the workload's network configuration themselves
    (the CNI plugin). ``default_route`` false routes only the cluster CIDR via
    the gateway (the workload has its default route from another network);
    ``create_mode`` creates the service overlay in that mode first when it
    does not exist yet. ``guest_managed`` handles use ``attach_container``.
    """

    op: Literal["attach_interface"] = "attach_interface"
    handle: Handle
    service: StrictStr
    join_global: StrictBool | None = None
    dns_server: IpStr | None = None
    dns_domain: StrictStr | None = None
    default_route: StrictBool | None = None
    create_mode: OverlayModeName | None = None


class ReconcileRequest(Request):
    """Run a reconcile pass now; answered with ``reconcile_report``."""

    op: Literal["reconcile"] = "reconcile"


class _PortMapping(Request):
    """Fields shared by ``map_port`` and ``unmap_port``."""

    protocol: Literal["tcp", "udp"]
    host_port: Annotated[StrictInt, Field(ge=1, le=65535)]
    container_ip: IpStr
    container_port: Annotated[StrictInt, Field(ge=1, le=65535)]
    host_ip: IpStr | None = None


class MapPortRequest(_PortMapping):
    """Forward ``host_port`` on the node to a container (DNAT with hairpin); ``ok``."""

    op: Literal["map_port"] = "map_port"


class UnmapPortRequest(_PortMapping):
    """Remove a port mapping added with ``map_port``; ``ok`` also when absent."""

    op: Literal["unmap_port"] = "unmap_port"


class NatPeerCandidatesRequest(Request):
    """Pass a peer's NAT candidates (read from its ``status.nat``); answered ``ok``.

    An empty list forgets them. The peer must already be a peer of the global
    device (``add_peer``).
    """

    op: Literal["nat_peer_candidates"] = "nat_peer_candidates"
    public_key: WgKey
    candidates: list[NatCandidateInfo]


class ClusterStatusRequest(Request):
    """Cluster mode: the nodes this node sees; answered with ``cluster_status``."""

    op: Literal["cluster_status"] = "cluster_status"


class CniExecRequest(Request):
    """Run one CNI plugin invocation inside the daemon; answered with ``cni_result``.

    For the compiled ``overlayd-cni`` front end (cni/src/overlayd_cni/native/):
    ``command`` is ``CNI_COMMAND``; ``container_id``, ``netns``, ``ifname``,
    ``args`` and ``path`` are ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``,
    ``CNI_ARGS`` and ``CNI_PATH`` (absent when the runtime did not set them);
    ``stdin`` is the network configuration as the runtime wrote it. The daemon
    runs the plugin's own logic (the overlayd-cni distribution must be
    installed beside it) and answers what the plugin would have printed and
    its exit status. ``CHECK`` is answered ``err`` (it reads the container's
    namespace from inside, which the plugin process does for itself): the
    front end runs the Python plugin for it, as for every ``err``.
    """

    op: Literal["cni_exec"] = "cni_exec"
    command: StrictStr
    container_id: StrictStr | None = None
    netns: StrictStr | None = None
    ifname: StrictStr | None = None
    args: StrictStr | None = None
    path: StrictStr | None = None
    stdin: StrictStr


AnyRequest: TypeAlias = (
    SetLocalNodeIdRequest
    | SetLocalWgPubkeyRequest
    | SetupGlobalOverlayRequest
    | TeardownGlobalOverlayRequest
    | SetupServiceOverlayRequest
    | TeardownServiceOverlayRequest
    | AllocateIpRequest
    | ReleaseIpRequest
    | AttachContainerRequest
    | DetachContainerRequest
    | AddPeerRequest
    | RemovePeerRequest
    | AddAllowedIpRequest
    | RemoveAllowedIpRequest
    | RegisterDnsRequest
    | UnregisterDnsRequest
    | StatusRequest
    | NatTickRequest
    | ShutdownRequest
    | HelloRequest
    | ApplyPeersRequest
    | ListAttachmentsRequest
    | ListLeasesRequest
    | GcRequest
    | ReconcileRequest
    | MapPortRequest
    | UnmapPortRequest
    | NatPeerCandidatesRequest
    | ClusterStatusRequest
    | AttachInterfaceRequest
    | CniExecRequest
)

# ---------------------------------------------------------------------------
# Responses (payload fields merged beside ``result``)
# ---------------------------------------------------------------------------


class Response(_Wire):
    """Base of every response; ``result`` is its tag."""

    result: str


class OkResponse(Response):
    result: Literal["ok"] = "ok"


class IpResponse(Response):
    result: Literal["ip"] = "ip"
    ip: IpStr


class AttachedResponse(Response):
    """``namespace_guid`` is the HCN namespace on Windows, absent on Linux."""

    result: Literal["attached"] = "attached"
    ip: IpStr
    namespace_guid: GuidStr | None = None


class GuestConfigResponse(Response):
    """The overlay identity of a ``guest_managed`` attach."""

    result: Literal["guest_config"] = "guest_config"
    overlay_ip: IpStr
    prefix_len: U8Prefix
    private_key: WgKey
    public_key: WgKey
    listen_port: U16
    peers: list[PeerSpec]
    dns_server: IpStr | None = None
    dns_domain: StrictStr | None = None

    def __repr_args__(self) -> Any:
        # Never print the guest's private key (docs/security.rst, "Where keys live").
        for key, value in super().__repr_args__():
            yield key, ("<redacted>" if key == "private_key" else value)


class BridgeNameResponse(Response):
    result: Literal["bridge_name"] = "bridge_name"
    name: StrictStr


class StatusResponse(Response):
    """StatusSnapshot flattened; empty ``peers``/``dedicated_services`` omitted."""

    result: Literal["status"] = "status"
    interface: StrictStr | None = None
    node_ip: IpStr | None = None
    public_key: WgKey | None = None
    overlay_cidr: CidrStr | None = None
    slice_cidr: CidrStr | None = None
    peer_count: U32
    service_count: U32
    peers: list[PeerStatus] = Field(default_factory=list)
    dedicated_services: list[DedicatedServiceStatus] = Field(default_factory=list)
    #: overlayd extension, present while NAT traversal runs (ZLayer ignores it).
    nat: NatStatusInfo | None = None

    _omit_empty: ClassVar[tuple[str, ...]] = ("peers", "dedicated_services")


class ServiceOverlayResponse(Response):
    """A service overlay's identity; the ``wg_*`` fields are set in dedicated mode."""

    result: Literal["service_overlay"] = "service_overlay"
    name: StrictStr
    mode: OverlayModeName
    wg_public_key: WgKey | None = None
    wg_port: U16 | None = None
    overlay_ip: IpStr | None = None
    subnet: CidrStr | None = None


class ErrResponse(Response):
    """The request failed; ``message`` is a sentence a person can act on."""

    result: Literal["err"] = "err"
    message: StrictStr


class HelloResponse(Response):
    """``events``: the kinds this connection now receives, present when the
    request carried ``events``; ``events_dropped``: how many events the
    connection lost so far because it did not read them fast enough."""

    result: Literal["hello"] = "hello"
    protocol_version: StrictInt
    server_version: StrictStr
    drivers: list[DriverDescription]
    ops: list[StrictStr]
    events: list[StrictStr] | None = None
    events_dropped: U64 | None = None


class AttachmentsResponse(Response):
    result: Literal["attachments"] = "attachments"
    attachments: list[AttachmentInfo]


class AttachmentResponse(Response):
    """The attachment an ``attach_interface`` made (or found)."""

    result: Literal["attachment"] = "attachment"
    attachment: AttachmentInfo


class LeasesResponse(Response):
    result: Literal["leases"] = "leases"
    leases: list[LeaseInfo]


class GcReportResponse(Response):
    """``released``: handles detached (or that would be, with ``dry_run``)."""

    result: Literal["gc_report"] = "gc_report"
    released: list[Handle]
    kept: U64


class ReconcileReportResponse(Response):
    result: Literal["reconcile_report"] = "reconcile_report"
    adopted: U64
    recreated: U64
    removed: U64
    released: U64
    errors: list[StrictStr]


class ClusterStatusResponse(Response):
    """This node's view of the cluster: ``connected`` tells whether etcd answers now."""

    result: Literal["cluster_status"] = "cluster_status"
    name: StrictStr
    prefix: StrictStr
    connected: StrictBool
    nodes: list[ClusterNodeInfo]
    stats: ClusterStats
    last_error: StrictStr | None = None


class CniResultResponse(Response):
    """What the CNI plugin would have done: its exit status, standard output and error."""

    result: Literal["cni_result"] = "cni_result"
    exit_code: Annotated[StrictInt, Field(ge=0, le=255)]
    stdout: StrictStr
    stderr: StrictStr | None = None


AnyResponse: TypeAlias = (
    OkResponse
    | IpResponse
    | AttachedResponse
    | GuestConfigResponse
    | BridgeNameResponse
    | StatusResponse
    | ServiceOverlayResponse
    | ErrResponse
    | HelloResponse
    | AttachmentsResponse
    | LeasesResponse
    | GcReportResponse
    | ReconcileReportResponse
    | ClusterStatusResponse
    | AttachmentResponse
    | CniResultResponse
)

# ---------------------------------------------------------------------------
# Events (fields sit in the frame itself)
# ---------------------------------------------------------------------------


class Event(_Wire):
    """Base of every event; ``event`` is its tag."""

    event: str


class PeerHealthChangedEvent(Event):
    event: Literal["peer_health_changed"] = "peer_health_changed"
    pubkey: WgKey
    healthy: StrictBool


class NatEndpointChangedEvent(Event):
    event: Literal["nat_endpoint_changed"] = "nat_endpoint_changed"
    pubkey: WgKey
    endpoint: EndpointStr


class AttachedEvent(Event):
    """A workload was attached: its attachment key, service and address."""

    event: Literal["attached"] = "attached"
    handle: NonEmptyStr
    service: StrictStr
    ip: IpStr


class DetachedEvent(Event):
    """A workload was detached (by a request, a GC or a reconcile)."""

    event: Literal["detached"] = "detached"
    handle: NonEmptyStr
    service: StrictStr
    ip: IpStr


class ReconcileRepairedEvent(Event):
    """Reconcile repaired one object: a device or interface ``recreated``, a stray
    host object ``removed``, or an attachment whose workload is gone ``released``."""

    event: Literal["reconcile_repaired"] = "reconcile_repaired"
    kind: Literal["recreated", "removed", "released"]
    object: StrictStr


AnyEvent: TypeAlias = (
    PeerHealthChangedEvent
    | NatEndpointChangedEvent
    | AttachedEvent
    | DetachedEvent
    | ReconcileRepairedEvent
)

# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------


class RequestFrame(_Wire):
    """``{"frame":"request","id":N,"request":{"op":...}}``."""

    frame: Literal["request"] = "request"
    id: U64
    request: Annotated[AnyRequest, Field(discriminator="op")]

    def to_wire(self) -> dict[str, Any]:
        return {"frame": "request", "id": self.id, "request": self.request.to_wire()}


class ResponseFrame(_Wire):
    """``{"frame":"response","id":N,"response":{"result":...}}``."""

    frame: Literal["response"] = "response"
    id: U64
    response: Annotated[AnyResponse, Field(discriminator="result")]

    def to_wire(self) -> dict[str, Any]:
        return {"frame": "response", "id": self.id, "response": self.response.to_wire()}

    @classmethod
    def ok(cls, id: int) -> ResponseFrame:
        """An ``ok`` answer to request ``id``."""
        return cls(id=id, response=OkResponse())

    @classmethod
    def err(cls, id: int, message: str) -> ResponseFrame:
        """An ``err`` answer to request ``id``."""
        return cls(id=id, response=ErrResponse(message=message))


class EventFrame(_Wire):
    """``{"frame":"event","event":...,<fields>}``: the event's fields are merged."""

    frame: Literal["event"] = "event"
    event: Annotated[AnyEvent, Field(discriminator="event")]

    def to_wire(self) -> dict[str, Any]:
        return {"frame": "event", **self.event.to_wire()}


Frame: TypeAlias = RequestFrame | ResponseFrame | EventFrame


def _requests(*types: type[Request]) -> dict[str, type[Request]]:
    return {str(t.model_fields["op"].default): t for t in types}


_ZLAYER_REQUESTS: Final = _requests(
    SetLocalNodeIdRequest,
    SetLocalWgPubkeyRequest,
    SetupGlobalOverlayRequest,
    TeardownGlobalOverlayRequest,
    SetupServiceOverlayRequest,
    TeardownServiceOverlayRequest,
    AllocateIpRequest,
    ReleaseIpRequest,
    AttachContainerRequest,
    DetachContainerRequest,
    AddPeerRequest,
    RemovePeerRequest,
    AddAllowedIpRequest,
    RemoveAllowedIpRequest,
    RegisterDnsRequest,
    UnregisterDnsRequest,
    StatusRequest,
    NatTickRequest,
    ShutdownRequest,
)
_EXTENSION_REQUESTS: Final = _requests(
    HelloRequest,
    ApplyPeersRequest,
    ListAttachmentsRequest,
    ListLeasesRequest,
    GcRequest,
    ReconcileRequest,
    MapPortRequest,
    UnmapPortRequest,
    NatPeerCandidatesRequest,
    ClusterStatusRequest,
    AttachInterfaceRequest,
    CniExecRequest,
)
#: The 19 ops of ZLayer's contract, in the order of docs/reference/zlayer.rst §3.
ZLAYER_OPS: Final[tuple[str, ...]] = tuple(_ZLAYER_REQUESTS)
#: overlayd's own ops (new names only; existing ops never change shape).
EXTENSION_OPS: Final[tuple[str, ...]] = tuple(_EXTENSION_REQUESTS)
#: Every op this protocol module knows, for ``hello``.
ALL_OPS: Final[tuple[str, ...]] = ZLAYER_OPS + EXTENSION_OPS
REQUEST_TYPES: Final[Mapping[str, type[Request]]] = {
    **_ZLAYER_REQUESTS,
    **_EXTENSION_REQUESTS,
}
RESPONSE_TYPES: Final[Mapping[str, type[Response]]] = {
    str(t.model_fields["result"].default): t
    for t in (
        OkResponse,
        IpResponse,
        AttachedResponse,
        GuestConfigResponse,
        BridgeNameResponse,
        StatusResponse,
        ServiceOverlayResponse,
        ErrResponse,
        HelloResponse,
        AttachmentsResponse,
        LeasesResponse,
        GcReportResponse,
        ReconcileReportResponse,
        ClusterStatusResponse,
        AttachmentResponse,
        CniResultResponse,
    )
}
EVENT_TYPES: Final[Mapping[str, type[Event]]] = {
    "peer_health_changed": PeerHealthChangedEvent,
    "nat_endpoint_changed": NatEndpointChangedEvent,
    "attached": AttachedEvent,
    "detached": DetachedEvent,
    "reconcile_repaired": ReconcileRepairedEvent,
}
assert tuple(EVENT_TYPES) == EVENT_KINDS
#: The successful ``result`` kinds each op may be answered with (``err`` always may).
#: ``setup_service_overlay`` also accepts ``bridge_name``: ZLayer's daemon answers so.
EXPECTED_RESULTS: Final[Mapping[str, tuple[str, ...]]] = {
    **dict.fromkeys(ALL_OPS, ("ok",)),
    "setup_global_overlay": ("bridge_name",),
    "setup_service_overlay": ("service_overlay", "bridge_name"),
    "allocate_ip": ("ip",),
    "attach_container": ("attached", "guest_config"),
    "status": ("status",),
    "hello": ("hello",),
    "list_attachments": ("attachments",),
    "list_leases": ("leases",),
    "gc": ("gc_report",),
    "reconcile": ("reconcile_report",),
    "cluster_status": ("cluster_status",),
    "attach_interface": ("attachment",),
    "cni_exec": ("cni_result",),
}

# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def _utf8_json(data: object, what: str, frame_id: int | None) -> bytes:
    """``data`` as compact UTF-8 JSON, or :class:`ProtocolError` for text that is not Unicode."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolError(
            f"cannot encode the {what} frame: it holds text that is not valid "
            f"Unicode ({exc.reason} at character {exc.start})",
            frame_id,
        ) from None


def _check_body(body: bytes, what: str, frame_id: int | None) -> bytes:
    if len(body) > MAX_FRAME:
        raise ProtocolError(
            f"the {what} frame is {len(body)} bytes, more than the "
            f"{MAX_FRAME}-byte limit; split the request (e.g. several apply_peers)",
            frame_id,
        )
    return body


def encode_body(frame: Frame) -> bytes:
    """The compact UTF-8 JSON body of ``frame`` (no length prefix).

    Raises :class:`ProtocolError` when the body would exceed :data:`MAX_FRAME`
    (a sender never sends more) or holds text that is not valid Unicode.
    """
    frame_id = None if isinstance(frame, EventFrame) else frame.id
    return _check_body(_utf8_json(frame.to_wire(), frame.frame, frame_id), frame.frame, frame_id)


def encode_json(data: object, what: str) -> bytes:
    """``data`` (a wire object) as the compact UTF-8 JSON frames carry.

    :raises ProtocolError: text that is not valid Unicode (``what`` names the frame).
    """
    return _utf8_json(data, what, None)


def encode_response(response: AnyResponse) -> bytes:
    """The compact UTF-8 JSON of ``response`` alone, for :func:`response_body`.

    A server that answers many requests with the same response object (an
    unchanged ``status``) encodes it once and frames it per request.

    :raises ProtocolError: text that is not valid Unicode.
    """
    return _utf8_json(response.to_wire(), "response", None)


def response_body(frame_id: int, encoded: bytes) -> bytes:
    """The body of the response frame ``frame_id`` around ``encoded`` (:func:`encode_response`).

    Byte for byte what :func:`encode_body` gives for
    ``ResponseFrame(id=frame_id, response=...)``: the frame's keys are always
    ``frame``, ``id``, ``response`` in that order.

    :raises ProtocolError: the body would exceed :data:`MAX_FRAME`.
    """
    body = b'{"frame":"response","id":%d,"response":%b}' % (frame_id, encoded)
    return _check_body(body, "response", frame_id)


def encode_frame(frame: Frame) -> bytes:
    """``frame`` as sent: a 4-byte unsigned little-endian length, then the body."""
    body = encode_body(frame)
    return _HEADER.pack(len(body)) + body


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


#: Tag values pydantic inserts into error locations of discriminated unions.
_UNION_TAGS: Final = frozenset(
    {"linux_pid", "windows_container", "guest_managed", "netns", "global", "service"}
)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    """``('changes', 0, 'public_key')`` -> ``changes[0].public_key``, tags dropped."""
    out = ""
    for index, part in enumerate(loc):
        if part in _UNION_TAGS and index < len(loc) - 1:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


#: Longest description of one validation problem in an ``err`` message.
_MAX_PART: Final = 300


def _describe(exc: ValidationError, what: str) -> str:
    """Turn pydantic's errors into one sentence per problem."""
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        loc = _format_loc(error["loc"])
        if error["type"] == "missing":
            parts.append(f"{what} needs field '{loc}'")
            continue
        ctx = error.get("ctx") or {}
        message = str(ctx["error"]) if "error" in ctx else error["msg"]
        # Some of pydantic's messages quote the input (a union's tag).
        message = clip(message, _MAX_PART)
        parts.append(f"{what} field '{loc}': {message}" if loc else f"{what}: {message}")
    return "; ".join(parts)


#: One shared instance of each request that has no field but ``op`` (``status``,
#: ``nat_tick``, ...); the models are frozen, so sharing them is safe, and a
#: poller's ``status`` is decoded without running validation.
_BARE: Final[dict[str, Any]] = {
    op: model.model_validate({"op": op})
    for op, model in REQUEST_TYPES.items()
    if set(model.model_fields) == {"op"}
}


def _validate(
    model: type[_Wire], data: dict[str, Any], what: str, where: str, fid: int | None
) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(f"{where}: {_describe(exc, what)}", fid) from None


def _object(value: object, where: str, name: str, fid: int | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(
            f"{where}: '{name}' must be a JSON object, not {type(value).__name__}",
            fid,
        )
    return value


def _tag(data: Mapping[str, Any], tag: str, where: str, fid: int | None) -> str:
    value = data.get(tag)
    if value is None:
        raise ProtocolError(f"{where}: missing the '{tag}' tag", fid)
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: '{tag}' must be a string, not {quote(value)}", fid)
    return value


def build_models() -> None:
    """Build every wire model's validator and serializer now.

    They are built on first use (``defer_build``), which keeps the daemon's
    start short; a long-running daemon calls this once it is serving, in a
    worker thread, so that the first request of each kind does not pay for
    its model (about 50 ms for all of them on the development VM).
    """
    pending: list[type[_Wire]] = [_Wire]
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        if not model.__pydantic_complete__:
            model.model_rebuild(force=True)


def peek_bare_request(body: bytes) -> tuple[int, AnyRequest] | None:
    """The id and request of a request frame whose request is its op alone (``status``).

    What :func:`decode_frame` gives for such a body (the shared request
    instance, the same id), without building the frame; ``None`` for every
    other body, valid or not, which :func:`decode_frame` then decodes and
    reports. For a poller's fast lane (:mod:`overlayd.connections`): decoding
    the whole frame was two thirds of the lane's own work (docs/design-notes.rst,
    "The IPC fast path").
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError too
        return None
    if type(data) is not dict or data.get("frame") != "request":
        return None
    fid = _frame_id(data.get("id"))
    payload = data.get("request")
    if fid is None or type(payload) is not dict:
        return None
    request = _bare(payload)
    return None if request is None else (fid, request)


def _frame_id(value: object) -> int | None:
    """``value`` as a frame's id: an unsigned 64-bit integer that is not a boolean."""
    return value if type(value) is int and 0 <= value <= _U64_MAX else None


def _bare(payload: dict[str, Any]) -> AnyRequest | None:
    """The shared instance of a request that is its op alone (``{"op": "status"}``)."""
    op = payload.get("op") if len(payload) == 1 else None
    return _BARE.get(op) if type(op) is str else None


def decode_request(payload: object, fid: int = 0) -> AnyRequest:
    """A request frame's request given as its wire object, checked as in :func:`decode_frame`.

    For requests made inside the daemon (the ``cni_exec`` op runs the CNI
    plugin's requests in-process): the same checks and messages as the
    frame ``{"frame": "request", "id": fid, "request": payload}`` would get,
    without encoding it as JSON to decode it again.
    """
    where = f"request {fid}"
    return _request(_object(payload, where, "request", fid), where, fid)


def _request(payload: dict[str, Any], where: str, fid: int) -> AnyRequest:
    op = _tag(payload, "op", where, fid)
    request_type = REQUEST_TYPES.get(op)
    if request_type is None:
        raise ProtocolError(f"{where}: unknown op {quote(op)}", fid)
    request = _bare(payload)  # ``{"op": "status"}``: nothing to validate
    if request is None:
        request = _validate(request_type, payload, op, where, fid)
    return cast(AnyRequest, request)


def decode_frame(body: bytes) -> Frame:
    """Decode one frame body (without its length prefix).

    Unknown fields are ignored and field order does not matter. Anything else
    that does not match the contract raises :class:`ProtocolError` with the
    frame's ``id`` when one could be read.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"frame body is not UTF-8 (byte {exc.start}); frames are UTF-8 JSON"
        ) from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"frame body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(
            "frame body nests arrays or objects too deeply to decode; frames of the "
            "contract nest a few levels only"
        ) from None
    except ValueError:
        # The only other ValueError of json.loads: Python refuses to convert
        # integers of more than 4,300 digits (its int_max_str_digits guard).
        raise ProtocolError(
            "frame body holds a number with thousands of digits; no field of the "
            "contract is larger than an unsigned 64-bit integer"
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError(f"a frame must be a JSON object, not {type(data).__name__}")
    raw_id = data.get("id")
    fid = _frame_id(raw_id)
    kind = _tag(data, "frame", "frame", fid)
    if kind == "event":
        name = _tag(data, "event", "event frame", None)
        event_type = EVENT_TYPES.get(name)
        if event_type is None:
            raise ProtocolError(f"event frame: unknown event {quote(name)}")
        event = _validate(event_type, data, name, "event frame", None)
        return EventFrame(event=event)
    if kind not in ("request", "response"):
        raise ProtocolError(
            f"unknown frame kind {quote(kind)}; expected request, response or event", fid
        )
    where = f"{kind} {fid}" if fid is not None else kind
    if fid is None:
        problem = "is missing" if raw_id is None else f"is {quote(raw_id)}"
        raise ProtocolError(f"{kind} frame: 'id' {problem}; it must be an unsigned 64-bit integer")
    payload = _object(data.get(kind), where, kind, fid)
    if kind == "request":
        # The parts are validated: building the frame must not validate them again.
        return RequestFrame.model_construct(id=fid, request=_request(payload, where, fid))
    result = _tag(payload, "result", where, fid)
    response_type = RESPONSE_TYPES.get(result)
    if response_type is None:
        raise ProtocolError(f"{where}: unknown result {quote(result)}", fid)
    response = _validate(response_type, payload, result, where, fid)
    return ResponseFrame.model_construct(id=fid, response=response)
