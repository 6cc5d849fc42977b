"""Pydantic models of the HCN schema v2 documents overlayd sends and reads.

Field names and casing follow docs/reference/hcn.rst §2: PascalCase as hcsshim emits them
(``IpConfigurations``, ``IpAddress``), enums as strings, GUIDs bare lowercase.
Documents serialize by alias with ``None`` omitted (:meth:`HcnModel.to_json`).

Parsing is tolerant, because query results come from the service and from other
tools (docs/reference/hcn.rst §2): keys match case-insensitively, unknown keys are ignored,
missing fields stay ``None``, enum values are accepted as strings in any case or
as numbers, a missing network ``Type`` means ``NAT`` (hcsshim hcnnetwork.go), and
GUIDs may carry braces or upper case.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Self
from uuid import UUID

from pydantic import BaseModel
from pydantic import BeforeValidator
from pydantic import ConfigDict
from pydantic import Discriminator
from pydantic import Field
from pydantic import PlainSerializer
from pydantic import Tag
from pydantic import model_validator

__all__ = [
    "AclPolicy",
    "AclSettings",
    "Dns",
    "EndpointPolicy",
    "EndpointPolicyType",
    "GenericEndpointPolicy",
    "GenericNetworkPolicy",
    "HcnGuid",
    "HcnModel",
    "HostComputeEndpoint",
    "HostComputeNamespace",
    "HostComputeNetwork",
    "HostComputeQuery",
    "IpConfig",
    "Ipam",
    "MacPool",
    "MacRange",
    "ModifyRequestType",
    "ModifySettingRequest",
    "NamespaceEndpointSettings",
    "NamespaceResource",
    "NamespaceType",
    "NetAdapterNamePolicy",
    "NetAdapterNameSettings",
    "NetworkFlags",
    "NetworkPolicy",
    "NetworkPolicyType",
    "NetworkType",
    "OutBoundNatPolicy",
    "OutBoundNatSettings",
    "PortMappingPolicy",
    "PortMappingSettings",
    "Route",
    "SchemaVersion",
    "SdnRoutePolicy",
    "SdnRouteSettings",
    "Subnet",
    "SubnetPolicy",
    "canonical",
]


# -- enums --------------------------------------------------------------------------


class NetworkType(StrEnum):
    """NetworkMode (MSDOC; docs/reference/hcn.rst §2). Numeric form = position in this list."""

    NAT = "NAT"
    ICS = "ICS"
    TRANSPARENT = "Transparent"
    L2_BRIDGE = "L2Bridge"
    L2_TUNNEL = "L2Tunnel"
    OVERLAY = "Overlay"
    PRIVATE = "Private"
    INTERNAL = "Internal"
    MIRRORED = "Mirrored"
    INFINIBAND = "Infiniband"
    CONSTRAINED_ICS = "ConstrainedICS"


class NetworkFlags:
    """NetworkFlags bits as hcsshim defines them (docs/reference/hcn.rst §2)."""

    NONE: ClassVar[int] = 0
    ENABLE_NON_PERSISTENT: ClassVar[int] = 8
    DISABLE_HOST_PORT: ClassVar[int] = 1024
    ENABLE_IOV: ClassVar[int] = 8192


class EndpointPolicyType(StrEnum):
    """EndpointPolicyType (MSDOC; docs/reference/hcn.rst §2)."""

    PORT_MAPPING = "PortMapping"
    ACL = "ACL"
    QOS = "QOS"
    L2_DRIVER = "L2Driver"
    OUTBOUND_NAT = "OutBoundNAT"
    SDN_ROUTE = "SDNRoute"
    L4_PROXY = "L4Proxy"
    L4_WFP_PROXY = "L4WFPPROXY"
    PROVIDER_ADDRESS = "ProviderAddress"
    PORT_NAME = "PortName"
    ENCAP_OVERHEAD = "EncapOverhead"
    INTERFACE_CONSTRAINT = "InterfaceConstraint"
    ENCRYPTION = "Encryption"
    VLAN = "VLAN"
    INTERFACE_PARAMETERS = "InterfaceParameters"
    IOV = "Iov"
    TIER_ACL = "TierAcl"


class NetworkPolicyType(StrEnum):
    """NetworkPolicyType (MSDOC / hcsshim hcnpolicy.go; docs/reference/hcn.rst §2)."""

    SOURCE_MAC_ADDRESS = "SourceMacAddress"
    NET_ADAPTER_NAME = "NetAdapterName"
    INTERFACE_CONSTRAINT = "InterfaceConstraint"
    VSWITCH_EXTENSION = "VSwitchExtension"
    PROVIDER_ADDRESS = "ProviderAddress"
    DR_MAC_ADDRESS = "DrMacAddress"
    AUTOMATIC_DNS = "AutomaticDNS"
    REMOTE_SUBNET_ROUTE = "RemoteSubnetRoute"
    VXLAN_PORT = "VxlanPort"
    HOST_ROUTE = "HostRoute"
    SET_POLICY = "SetPolicy"
    L4_PROXY = "L4Proxy"
    LAYER_CONSTRAINT = "LayerConstraint"
    NETWORK_ACL = "NetworkACL"


class NamespaceType(StrEnum):
    """Namespace Type (MSDOC; docs/reference/hcn.rst §2). Per-container namespaces are ``Host``."""

    HOST = "Host"
    HOST_DEFAULT = "HostDefault"
    GUEST = "Guest"
    GUEST_DEFAULT = "GuestDefault"


class ModifyRequestType(StrEnum):
    """ModifyRequestType (MSDOC; docs/reference/hcn.rst §2). Numeric form = position."""

    ADD = "Add"
    REMOVE = "Remove"
    UPDATE = "Update"
    REFRESH = "Refresh"
    RESET = "Reset"


#: Namespace modify ``ResourceType`` values; MSSCN samples send ``1`` for Endpoint.
NAMESPACE_RESOURCE_TYPES = ("Container", "Endpoint")


def canonical(value: object, choices: type[StrEnum] | tuple[str, ...]) -> object:
    """``value`` spelled as in ``choices`` (case-insensitive; ints index the list).

    Unknown strings come back unchanged so that foreign documents still parse;
    whoever enforces a closed set checks membership afterwards.
    """
    names = [str(c) for c in choices]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return names[value] if 0 <= value < len(names) else value
    if isinstance(value, str):
        for name in names:
            if name.lower() == value.lower():
                return name
    return value


def _canon(choices: type[StrEnum] | tuple[str, ...]) -> BeforeValidator:
    return BeforeValidator(lambda v: canonical(v, choices))


# -- GUIDs --------------------------------------------------------------------------


def _parse_guid(value: object) -> object:
    if isinstance(value, str):
        # docs/reference/hcn.rst §1: the service returns upper case; ZL saw braces. Compare bare.
        return UUID(value.strip().strip("{}"))
    return value


#: A GUID in JSON: bare, lowercase, no braces (docs/reference/hcn.rst §1, "GUID formats").
HcnGuid = Annotated[
    UUID,
    BeforeValidator(_parse_guid),
    PlainSerializer(str, return_type=str),
]


# -- base ---------------------------------------------------------------------------


class HcnModel(BaseModel):
    """Base of every HCN document: aliases on the wire, any key case on input."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _match_keys_case_insensitively(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        lookup: dict[str, str] = {}
        for name, field in cls.model_fields.items():
            lookup[name.lower()] = name
            if field.alias is not None:
                lookup[field.alias.lower()] = field.alias
        return {
            (lookup.get(key.lower(), key) if isinstance(key, str) else key): value
            for key, value in data.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """The document as HCN expects it: aliases, ``None`` omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_json(self) -> str:
        """The compact JSON text sent to HCN."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Parse a document returned by HCN."""
        return cls.model_validate_json(text)


class SchemaVersion(HcnModel):
    """``{"Major": 2, "Minor": 0}``: "should be present in all objects" (MSDOC)."""

    major: int = Field(default=2, alias="Major")
    minor: int = Field(default=0, alias="Minor")


# -- shared pieces ------------------------------------------------------------------


class Route(HcnModel):
    """A route (MSDOC): ``NextHop``, ``DestinationPrefix``, ``Metric`` (uint16)."""

    next_hop: str | None = Field(default=None, alias="NextHop")
    destination_prefix: str | None = Field(default=None, alias="DestinationPrefix")
    metric: int | None = Field(default=None, alias="Metric", ge=0, le=0xFFFF)


class Dns(HcnModel):
    """DNS settings (MSDOC DNS): ``Domain``, ``Search``, ``ServerList``, ``Options``."""

    domain: str | None = Field(default=None, alias="Domain")
    search: list[str] | None = Field(default=None, alias="Search")
    server_list: list[str] | None = Field(default=None, alias="ServerList")
    options: list[str] | None = Field(default=None, alias="Options")


def _policy_type(value: object) -> object:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and key.lower() == "type":
                return item
        return None
    return getattr(value, "type", None)


# -- network ------------------------------------------------------------------------


class SubnetPolicy(HcnModel):
    """A subnet policy, e.g. ``{"Type": "VSID", "Settings": {"IsolationId": 5000}}``."""

    type: str = Field(alias="Type")
    settings: dict[str, Any] | None = Field(default=None, alias="Settings")


class Subnet(HcnModel):
    """An IPAM subnet: ``IpAddressPrefix`` (CIDR), ``Policies``, ``Routes``."""

    ip_address_prefix: str | None = Field(default=None, alias="IpAddressPrefix")
    policies: list[SubnetPolicy] | None = Field(default=None, alias="Policies")
    routes: list[Route] | None = Field(default=None, alias="Routes")
    flags: int | None = Field(default=None, alias="Flags")


class Ipam(HcnModel):
    """``{"Type": "Static"|"Dhcp", "Subnets": [...]}`` (docs/reference/hcn.rst §2)."""

    type: Annotated[str, _canon(("Static", "Dhcp"))] = Field(default="Static", alias="Type")
    subnets: list[Subnet] | None = Field(default=None, alias="Subnets")


class MacRange(HcnModel):
    """A MAC pool range in dash form (``00-15-5D-52-C0-00``)."""

    start_mac_address: str = Field(alias="StartMacAddress")
    end_mac_address: str = Field(alias="EndMacAddress")


class MacPool(HcnModel):
    """``{"Ranges": [...]}``."""

    ranges: list[MacRange] = Field(default_factory=list, alias="Ranges")


class NetAdapterNameSettings(HcnModel):
    """Settings of the ``NetAdapterName`` network policy (Transparent/L2 networks)."""

    network_adapter_name: str = Field(alias="NetworkAdapterName")


class NetAdapterNamePolicy(HcnModel):
    """``{"Type":"NetAdapterName","Settings":{"NetworkAdapterName":"Ethernet 2"}}``."""

    type: Annotated[Literal["NetAdapterName"], _canon(NetworkPolicyType)] = Field(
        default="NetAdapterName", alias="Type"
    )
    settings: NetAdapterNameSettings = Field(alias="Settings")


class GenericNetworkPolicy(HcnModel):
    """Any other network policy, kept as raw settings."""

    type: Annotated[str, _canon(NetworkPolicyType)] = Field(alias="Type")
    settings: dict[str, Any] | None = Field(default=None, alias="Settings")


def _network_policy_tag(value: object) -> str:
    kind = canonical(_policy_type(value), NetworkPolicyType)
    return "NetAdapterName" if kind == "NetAdapterName" else "other"


NetworkPolicy = Annotated[
    Annotated[NetAdapterNamePolicy, Tag("NetAdapterName")]
    | Annotated[GenericNetworkPolicy, Tag("other")],
    Discriminator(_network_policy_tag),
]


class HostComputeNetwork(HcnModel):
    """A HostComputeNetwork document (MSDOC; docs/reference/hcn.rst §2), field order as hcsshim."""

    id: HcnGuid | None = Field(default=None, alias="ID")
    name: str | None = Field(default=None, alias="Name")
    owner: str | None = Field(default=None, alias="Owner")
    # docs/reference/hcn.rst §2: the service omits Type for NAT networks; parse that as NAT.
    type: Annotated[str, _canon(NetworkType)] = Field(default=NetworkType.NAT, alias="Type")
    policies: list[NetworkPolicy] | None = Field(default=None, alias="Policies")
    mac_pool: MacPool | None = Field(default=None, alias="MacPool")
    dns: Dns | None = Field(default=None, alias="Dns")
    ipams: list[Ipam] | None = Field(default=None, alias="Ipams")
    flags: int | None = Field(default=None, alias="Flags")
    schema_version: SchemaVersion = Field(default_factory=SchemaVersion, alias="SchemaVersion")
    state: int | None = Field(default=None, alias="State")
    version: int | None = Field(default=None, alias="Version")

    def subnet_prefixes(self) -> list[str]:
        """Every ``IpAddressPrefix`` of every IPAM block."""
        return [
            subnet.ip_address_prefix
            for ipam in self.ipams or []
            for subnet in ipam.subnets or []
            if subnet.ip_address_prefix
        ]


# -- endpoint -----------------------------------------------------------------------


class IpConfig(HcnModel):
    """``{"IpAddress", "PrefixLength" (uint8, optional), "IpSubnetId"}``."""

    ip_address: str = Field(alias="IpAddress")
    prefix_length: int | None = Field(default=None, alias="PrefixLength", ge=0, le=128)
    ip_subnet_id: str | None = Field(default=None, alias="IpSubnetId")


class OutBoundNatSettings(HcnModel):
    """``OutBoundNAT`` settings (hcsshim OutboundNatPolicySetting)."""

    virtual_ip: str | None = Field(default=None, alias="VirtualIP")
    exceptions: list[str] | None = Field(default=None, alias="Exceptions")
    destinations: list[str] | None = Field(default=None, alias="Destinations")
    flags: int | None = Field(default=None, alias="Flags")
    max_port_pool_usage: int | None = Field(default=None, alias="MaxPortPoolUsage")


class SdnRouteSettings(HcnModel):
    """``SDNRoute`` settings."""

    destination_prefix: str = Field(alias="DestinationPrefix")
    next_hop: str | None = Field(default=None, alias="NextHop")
    need_encap: bool | None = Field(default=None, alias="NeedEncap")
    automatic_endpoint_monitor: bool | None = Field(default=None, alias="AutomaticEndpointMonitor")


class AclSettings(HcnModel):
    """``ACL`` settings; addresses, ports and protocols are comma-separated strings."""

    protocols: str | None = Field(default=None, alias="Protocols")
    action: Annotated[str, _canon(("Allow", "Block", "Pass"))] = Field(alias="Action")
    direction: Annotated[str, _canon(("In", "Out"))] = Field(alias="Direction")
    local_addresses: str | None = Field(default=None, alias="LocalAddresses")
    remote_addresses: str | None = Field(default=None, alias="RemoteAddresses")
    local_ports: str | None = Field(default=None, alias="LocalPorts")
    remote_ports: str | None = Field(default=None, alias="RemotePorts")
    # ZL: on a Transparent endpoint both RuleType and Priority were required.
    rule_type: Annotated[str, _canon(("Host", "Switch"))] | None = Field(
        default=None, alias="RuleType"
    )
    priority: int | None = Field(default=None, alias="Priority", ge=0, le=0xFFFF)


class PortMappingSettings(HcnModel):
    """``PortMapping`` settings; ``Protocol`` 6 (TCP) or 17 (UDP)."""

    protocol: int = Field(alias="Protocol")
    internal_port: int | None = Field(default=None, alias="InternalPort", ge=0, le=0xFFFF)
    external_port: int | None = Field(default=None, alias="ExternalPort", ge=0, le=0xFFFF)
    vip: str | None = Field(default=None, alias="VIP")
    flags: int | None = Field(default=None, alias="Flags")


class OutBoundNatPolicy(HcnModel):
    """``{"Type": "OutBoundNAT", "Settings": {...}}``."""

    type: Annotated[Literal["OutBoundNAT"], _canon(EndpointPolicyType)] = Field(
        default="OutBoundNAT", alias="Type"
    )
    settings: OutBoundNatSettings = Field(default_factory=OutBoundNatSettings, alias="Settings")


class SdnRoutePolicy(HcnModel):
    """``{"Type": "SDNRoute", "Settings": {...}}`` (Calico sends ``SDNROUTE``)."""

    type: Annotated[Literal["SDNRoute"], _canon(EndpointPolicyType)] = Field(
        default="SDNRoute", alias="Type"
    )
    settings: SdnRouteSettings = Field(alias="Settings")


class AclPolicy(HcnModel):
    """``{"Type": "ACL", "Settings": {...}}``."""

    type: Annotated[Literal["ACL"], _canon(EndpointPolicyType)] = Field(default="ACL", alias="Type")
    settings: AclSettings = Field(alias="Settings")


class PortMappingPolicy(HcnModel):
    """``{"Type": "PortMapping", "Settings": {...}}``."""

    type: Annotated[Literal["PortMapping"], _canon(EndpointPolicyType)] = Field(
        default="PortMapping", alias="Type"
    )
    settings: PortMappingSettings = Field(alias="Settings")


class GenericEndpointPolicy(HcnModel):
    """Any other endpoint policy, kept as raw settings."""

    type: Annotated[str, _canon(EndpointPolicyType)] = Field(alias="Type")
    settings: dict[str, Any] | None = Field(default=None, alias="Settings")


_TYPED_ENDPOINT_POLICIES = ("OutBoundNAT", "SDNRoute", "ACL", "PortMapping")


def _endpoint_policy_tag(value: object) -> str:
    kind = canonical(_policy_type(value), EndpointPolicyType)
    return kind if isinstance(kind, str) and kind in _TYPED_ENDPOINT_POLICIES else "other"


EndpointPolicy = Annotated[
    Annotated[OutBoundNatPolicy, Tag("OutBoundNAT")]
    | Annotated[SdnRoutePolicy, Tag("SDNRoute")]
    | Annotated[AclPolicy, Tag("ACL")]
    | Annotated[PortMappingPolicy, Tag("PortMapping")]
    | Annotated[GenericEndpointPolicy, Tag("other")],
    Discriminator(_endpoint_policy_tag),
]


class HostComputeEndpoint(HcnModel):
    """A HostComputeEndpoint document (MSDOC; docs/reference/hcn.rst §2), field order as hcsshim.

    ``HostComputeNamespace`` is read-only: the service fills it after a namespace
    ``Add``; never send it (hcsshim refuses to).
    """

    id: HcnGuid | None = Field(default=None, alias="ID")
    name: str | None = Field(default=None, alias="Name")
    owner: str | None = Field(default=None, alias="Owner")
    host_compute_network: HcnGuid | None = Field(default=None, alias="HostComputeNetwork")
    host_compute_namespace: HcnGuid | None = Field(default=None, alias="HostComputeNamespace")
    policies: list[EndpointPolicy] | None = Field(default=None, alias="Policies")
    ip_configurations: list[IpConfig] | None = Field(default=None, alias="IpConfigurations")
    dns: Dns | None = Field(default=None, alias="Dns")
    routes: list[Route] | None = Field(default=None, alias="Routes")
    mac_address: str | None = Field(default=None, alias="MacAddress")
    flags: int | None = Field(default=None, alias="Flags")
    schema_version: SchemaVersion = Field(default_factory=SchemaVersion, alias="SchemaVersion")
    state: int | None = Field(default=None, alias="State")


# -- namespace ----------------------------------------------------------------------


class NamespaceResource(HcnModel):
    """``{"Type": "Container"|"Endpoint", "Data": {...}}``.

    Endpoint data is ``{"Id": "<guid>"}`` (MSDOC NamespaceResourceEndpoint).
    """

    type: Annotated[str, _canon(NAMESPACE_RESOURCE_TYPES)] = Field(alias="Type")
    data: dict[str, Any] = Field(default_factory=dict, alias="Data")

    @classmethod
    def endpoint(cls, endpoint_id: UUID) -> NamespaceResource:
        """The resource entry of an attached endpoint."""
        return cls(type="Endpoint", data={"Id": str(endpoint_id)})

    @property
    def endpoint_id(self) -> UUID | None:
        """The endpoint GUID of an ``Endpoint`` resource (``Id``, any case)."""
        if self.type != "Endpoint":
            return None
        for key, value in self.data.items():
            if key.lower() == "id" and isinstance(value, str):
                parsed = _parse_guid(value)
                return parsed if isinstance(parsed, UUID) else None
        return None


class HostComputeNamespace(HcnModel):
    """A HostComputeNamespace document (MSDOC; docs/reference/hcn.rst §2).

    Create body (hcsshim ``NewNamespace``): ``{"Type":"Host","SchemaVersion":{...}}``.
    """

    id: HcnGuid | None = Field(default=None, alias="ID")
    name: str | None = Field(default=None, alias="Name")
    owner: str | None = Field(default=None, alias="Owner")
    namespace_id: int | None = Field(default=None, alias="NamespaceId")
    namespace_guid: HcnGuid | None = Field(default=None, alias="NamespaceGuid")
    type: Annotated[str, _canon(NamespaceType)] = Field(default=NamespaceType.HOST, alias="Type")
    resources: list[NamespaceResource] | None = Field(default=None, alias="Resources")
    schema_version: SchemaVersion = Field(default_factory=SchemaVersion, alias="SchemaVersion")
    state: int | None = Field(default=None, alias="State")

    def endpoint_ids(self) -> list[UUID]:
        """GUIDs of the endpoints in this namespace."""
        return [
            resource.endpoint_id
            for resource in self.resources or []
            if resource.endpoint_id is not None
        ]


# -- modify requests ----------------------------------------------------------------


class NamespaceEndpointSettings(HcnModel):
    """``{"EndpointId": "<guid>"}``, bare lowercase (ZL saw braces rejected)."""

    endpoint_id: HcnGuid = Field(alias="EndpointId")


class ModifySettingRequest(HcnModel):
    """``{"ResourceType", "RequestType", "Settings": {...}}`` (MSDOC).

    ``Settings`` must be an embedded object, not a JSON string (ZL "ExpectedObject").
    """

    resource_type: str = Field(alias="ResourceType")
    request_type: Annotated[str, _canon(ModifyRequestType)] = Field(alias="RequestType")
    settings: NamespaceEndpointSettings | dict[str, Any] = Field(alias="Settings")

    @model_validator(mode="before")
    @classmethod
    def _namespace_endpoint_settings(cls, data: Any) -> Any:
        # Runs after the base class key matching (before-validators run child first;
        # so match keys here too).
        if not isinstance(data, Mapping):
            return data
        items = {k.lower() if isinstance(k, str) else k: v for k, v in data.items()}
        resource = canonical(items.get("resourcetype"), NAMESPACE_RESOURCE_TYPES)
        settings = items.get("settings")
        out = dict(data)
        for key in data:
            if isinstance(key, str) and key.lower() == "resourcetype":
                out[key] = resource
            if (
                isinstance(key, str)
                and key.lower() == "settings"
                and resource == "Endpoint"
                and isinstance(settings, Mapping)
            ):
                out[key] = NamespaceEndpointSettings.model_validate(settings)
        return out

    @classmethod
    def namespace_endpoint(
        cls, request: ModifyRequestType, endpoint_id: UUID
    ) -> ModifySettingRequest:
        """Attach (``Add``) or detach (``Remove``) an endpoint to/from a namespace."""
        return cls(
            resource_type="Endpoint",
            request_type=request,
            settings=NamespaceEndpointSettings(endpoint_id=endpoint_id),
        )


# -- queries ------------------------------------------------------------------------


class HostComputeQuery(HcnModel):
    """``{"SchemaVersion", "Flags": 0|1, "Filter": "<JSON string>"}`` (docs/reference/hcn.rst §2).

    ``Filter`` is a JSON document serialized into a string.
    """

    schema_version: SchemaVersion = Field(default_factory=SchemaVersion, alias="SchemaVersion")
    flags: int = Field(default=0, alias="Flags")
    filter: str | None = Field(default=None, alias="Filter")

    @classmethod
    def filtered(
        cls,
        *,
        id: UUID | None = None,
        name: str | None = None,
        owner: str | None = None,
        network: UUID | None = None,
        detailed: bool = False,
    ) -> HostComputeQuery:
        """A query whose ``Filter`` holds the given keys (``None`` keys left out).

        ``network`` filters endpoints by network with the v1 key ``VirtualNetwork``,
        as hcsshim ``ListEndpointsOfNetwork`` does.
        """
        keys: dict[str, str] = {}
        if id is not None:
            keys["ID"] = str(id)
        if name is not None:
            keys["Name"] = name
        if owner is not None:
            keys["Owner"] = owner
        if network is not None:
            keys["VirtualNetwork"] = str(network)
        return cls(
            flags=1 if detailed else 0,
            filter=json.dumps(keys, separators=(",", ":")) if keys else None,
        )

    def filter_keys(self) -> dict[str, Any]:
        """The parsed ``Filter`` (``{}`` if absent); ``ValueError`` if not JSON."""
        if not self.filter:
            return {}
        parsed = json.loads(self.filter)
        if not isinstance(parsed, dict):
            raise ValueError("the query Filter is not a JSON object")
        return parsed
