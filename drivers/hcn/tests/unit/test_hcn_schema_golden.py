"""Golden JSON of every HCN document overlayd sends, and tolerant parsing of replies.

The expected strings follow docs/reference/hcn.rst §2 (hcsshim spelling, string enums, bare
lowercase GUIDs, None omitted, SchemaVersion 2.0).
"""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import BaseModel

from overlayd_hcn.schema import AclPolicy
from overlayd_hcn.schema import AclSettings
from overlayd_hcn.schema import Dns
from overlayd_hcn.schema import GenericEndpointPolicy
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.schema import HostComputeQuery
from overlayd_hcn.schema import Ipam
from overlayd_hcn.schema import IpConfig
from overlayd_hcn.schema import ModifyRequestType
from overlayd_hcn.schema import ModifySettingRequest
from overlayd_hcn.schema import NamespaceEndpointSettings
from overlayd_hcn.schema import NetAdapterNamePolicy
from overlayd_hcn.schema import NetAdapterNameSettings
from overlayd_hcn.schema import NetworkType
from overlayd_hcn.schema import OutBoundNatPolicy
from overlayd_hcn.schema import OutBoundNatSettings
from overlayd_hcn.schema import PortMappingPolicy
from overlayd_hcn.schema import PortMappingSettings
from overlayd_hcn.schema import Route
from overlayd_hcn.schema import SdnRoutePolicy
from overlayd_hcn.schema import SdnRouteSettings
from overlayd_hcn.schema import Subnet

NET = uuid.UUID("7198d0ab-1111-4222-8333-444455556666")
EP = uuid.UUID("0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3")
SV = '"SchemaVersion":{"Major":2,"Minor":0}'

INTERNAL = HostComputeNetwork(
    name="zlayer-overlay",
    type=NetworkType.INTERNAL,
    ipams=[
        Ipam(
            type="Static",
            subnets=[
                Subnet(
                    ip_address_prefix="10.200.1.0/24",
                    routes=[Route(next_hop="10.200.1.1", destination_prefix="0.0.0.0/0")],
                )
            ],
        )
    ],
    flags=0,
)
TRANSPARENT = HostComputeNetwork(
    name="svc-web",
    type=NetworkType.TRANSPARENT,
    policies=[
        NetAdapterNamePolicy(settings=NetAdapterNameSettings(network_adapter_name="Ethernet 2"))
    ],
    ipams=[Ipam(subnets=[Subnet(ip_address_prefix="10.200.2.0/28")])],
)
OUTBOUND_NAT = OutBoundNatPolicy(settings=OutBoundNatSettings(exceptions=["10.200.0.0/16"]))
SDN_ROUTE = SdnRoutePolicy(
    settings=SdnRouteSettings(destination_prefix="10.200.0.0/16", need_encap=False)
)
ACL = AclPolicy(
    settings=AclSettings(
        action="Allow",
        direction="In",
        remote_addresses="10.200.0.0/16",
        rule_type="Switch",
        priority=65500,
    )
)
PORT_MAPPING = PortMappingPolicy(
    settings=PortMappingSettings(protocol=6, internal_port=80, external_port=8080)
)


def _endpoint(*policies: object) -> HostComputeEndpoint:
    return HostComputeEndpoint.model_validate(
        {
            "name": "base-c1",
            "host_compute_network": NET,
            "policies": list(policies),
            "ip_configurations": [IpConfig(ip_address="10.200.1.5", prefix_length=24)],
            "routes": [Route(next_hop="10.200.1.1", destination_prefix="0.0.0.0/0")],
            "dns": Dns(domain="svc.local", server_list=["10.200.1.1"], search=["svc.local"]),
        }
    )


EP_HEAD = '{"Name":"base-c1","HostComputeNetwork":"7198d0ab-1111-4222-8333-444455556666",'
EP_TAIL = (
    '"IpConfigurations":[{"IpAddress":"10.200.1.5","PrefixLength":24}],'
    '"Dns":{"Domain":"svc.local","Search":["svc.local"],"ServerList":["10.200.1.1"]},'
    '"Routes":[{"NextHop":"10.200.1.1","DestinationPrefix":"0.0.0.0/0"}],' + SV + "}"
)

GOLDEN: list[tuple[str, BaseModel, str]] = [
    (
        "network-internal",
        INTERNAL,
        '{"Name":"zlayer-overlay","Type":"Internal","Ipams":[{"Type":"Static","Subnets":'
        '[{"IpAddressPrefix":"10.200.1.0/24","Routes":[{"NextHop":"10.200.1.1",'
        '"DestinationPrefix":"0.0.0.0/0"}]}]}],"Flags":0,' + SV + "}",
    ),
    (
        "network-transparent-netadaptername",
        TRANSPARENT,
        '{"Name":"svc-web","Type":"Transparent","Policies":[{"Type":"NetAdapterName",'
        '"Settings":{"NetworkAdapterName":"Ethernet 2"}}],"Ipams":[{"Type":"Static",'
        '"Subnets":[{"IpAddressPrefix":"10.200.2.0/28"}]}],' + SV + "}",
    ),
    (
        "endpoint-outboundnat",
        _endpoint(OUTBOUND_NAT),
        EP_HEAD + '"Policies":[{"Type":"OutBoundNAT","Settings":{"Exceptions":'
        '["10.200.0.0/16"]}}],' + EP_TAIL,
    ),
    (
        "endpoint-sdnroute",
        _endpoint(SDN_ROUTE),
        EP_HEAD + '"Policies":[{"Type":"SDNRoute","Settings":{"DestinationPrefix":'
        '"10.200.0.0/16","NeedEncap":false}}],' + EP_TAIL,
    ),
    (
        "endpoint-acl",
        _endpoint(ACL),
        EP_HEAD + '"Policies":[{"Type":"ACL","Settings":{"Action":"Allow","Direction":'
        '"In","RemoteAddresses":"10.200.0.0/16","RuleType":"Switch","Priority":65500}}],' + EP_TAIL,
    ),
    (
        "endpoint-portmapping",
        _endpoint(PORT_MAPPING),
        EP_HEAD + '"Policies":[{"Type":"PortMapping","Settings":{"Protocol":6,'
        '"InternalPort":80,"ExternalPort":8080}}],' + EP_TAIL,
    ),
    ("namespace-host", HostComputeNamespace(), '{"Type":"Host",' + SV + "}"),
    (
        "modify-namespace-add",
        ModifySettingRequest.namespace_endpoint(ModifyRequestType.ADD, EP),
        '{"ResourceType":"Endpoint","RequestType":"Add","Settings":'
        '{"EndpointId":"0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3"}}',
    ),
    (
        "modify-namespace-remove",
        ModifySettingRequest.namespace_endpoint(ModifyRequestType.REMOVE, EP),
        '{"ResourceType":"Endpoint","RequestType":"Remove","Settings":'
        '{"EndpointId":"0a1b2c3d-4e5f-4a6b-8c7d-8e9fa0b1c2d3"}}',
    ),
    ("query-default", HostComputeQuery(), "{" + SV + ',"Flags":0}'),
    (
        "query-owner-name",
        HostComputeQuery.filtered(name="zlayer-overlay", owner="overlayd"),
        "{" + SV + ',"Flags":0,"Filter":"{\\"Name\\":\\"zlayer-overlay\\",'
        '\\"Owner\\":\\"overlayd\\"}"}',
    ),
    (
        "query-endpoints-of-network",
        HostComputeQuery.filtered(network=NET, detailed=True),
        "{" + SV + ',"Flags":1,"Filter":"{\\"VirtualNetwork\\":'
        '\\"7198d0ab-1111-4222-8333-444455556666\\"}"}',
    ),
]


@pytest.mark.parametrize(
    ("document", "expected"), [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN]
)
def test_document_serializes_to_golden_json(document: BaseModel, expected: str) -> None:
    assert document.to_json() == expected  # type: ignore[attr-defined]
    json.loads(expected)  # the golden itself is valid JSON


@pytest.mark.parametrize(
    ("document", "expected"), [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN]
)
def test_golden_json_parses_back_to_the_same_document(document: BaseModel, expected: str) -> None:
    assert type(document).model_validate_json(expected) == document


def test_modify_settings_is_an_embedded_object_not_a_string() -> None:
    """ZL: HcnModifyNamespace rejects Settings given as a JSON string."""
    data = json.loads(ModifySettingRequest.namespace_endpoint(ModifyRequestType.ADD, EP).to_json())
    assert isinstance(data["Settings"], dict)


def test_service_reply_parses_case_insensitively_with_upper_case_guids() -> None:
    """Keys in any case, numeric enums, braces and upper case GUIDs, unknown keys."""
    reply = (
        '{"ID":"{0A1B2C3D-4E5F-4A6B-8C7D-8E9FA0B1C2D3}","HOSTCOMPUTENETWORK":'
        '"7198D0AB-1111-4222-8333-444455556666","IPConfigurations":[{"IPAddress":'
        '"10.200.1.5"}],"Policies":[{"Type":"SDNROUTE","Settings":{"DestinationPrefix":'
        '"10.0.0.0/8"}},{"Type":"Foo","Settings":{"X":1}}],"Health":{"Data":1}}'
    )
    ep = HostComputeEndpoint.from_json(reply)
    assert ep.id == EP
    assert ep.host_compute_network == NET
    assert ep.ip_configurations == [IpConfig(ip_address="10.200.1.5")]
    assert ep.policies is not None
    assert isinstance(ep.policies[0], SdnRoutePolicy)
    assert ep.policies[0].type == "SDNRoute"
    assert isinstance(ep.policies[1], GenericEndpointPolicy)
    assert ep.policies[1].settings == {"X": 1}


def test_missing_network_type_parses_as_nat() -> None:
    """hcsshim: HNS omits Type for NAT networks."""
    assert HostComputeNetwork.from_json('{"Name":"nat"}').type == NetworkType.NAT


def test_numeric_enums_parse_to_their_names() -> None:
    """MSSCN samples send numbers: ResourceType 1 = Endpoint, RequestType 0 = Add."""
    request = ModifySettingRequest.model_validate_json(
        '{"ResourceType":1,"RequestType":0,"Settings":{"EndpointId":"' + str(EP) + '"}}'
    )
    assert request.resource_type == "Endpoint"
    assert request.request_type == "Add"
    assert request.settings == NamespaceEndpointSettings(endpoint_id=EP)
    assert HostComputeNetwork.model_validate({"Type": 7}).type == NetworkType.INTERNAL


def test_namespace_resources_list_endpoint_ids() -> None:
    ns = HostComputeNamespace.from_json(
        '{"ID":"' + str(NET).upper() + '","Type":"Host","Resources":[{"Type":"Endpoint",'
        '"Data":{"Id":"' + str(EP).upper() + '"}},{"Type":"Container","Data":{}}]}'
    )
    assert ns.endpoint_ids() == [EP]
