"""Semantics of the HCN simulator (docs/reference/hcn.rst §6) through the typed client."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from overlayd.errors import StateError
from overlayd_hcn.errors import ERROR_NOT_FOUND
from overlayd_hcn.errors import HCN_E_ADDR_INVALID_OR_RESERVED
from overlayd_hcn.errors import HCN_E_ENDPOINT_NOT_FOUND
from overlayd_hcn.errors import HCN_E_INVALID_JSON
from overlayd_hcn.errors import HCN_E_NETWORK_NOT_FOUND
from overlayd_hcn.errors import RPC_S_SERVER_UNAVAILABLE
from overlayd_hcn.errors import HcnAccessDeniedError
from overlayd_hcn.errors import HcnAddressError
from overlayd_hcn.errors import HcnAlreadyExistsError
from overlayd_hcn.errors import HcnInUseError
from overlayd_hcn.errors import HcnInvalidConfigError
from overlayd_hcn.errors import HcnInvalidJsonError
from overlayd_hcn.errors import HcnNotFoundError
from overlayd_hcn.errors import HcnOtherError
from overlayd_hcn.errors import HcnPolicyInvalidError
from overlayd_hcn.errors import HcnSubnetConflictError
from overlayd_hcn.errors import HcnTimeoutError
from overlayd_hcn.errors import HcnUnavailableError
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.schema import HostComputeQuery
from overlayd_hcn.schema import Ipam
from overlayd_hcn.schema import IpConfig
from overlayd_hcn.schema import NamespaceType
from overlayd_hcn.schema import NetworkFlags
from overlayd_hcn.schema import OutBoundNatPolicy
from overlayd_hcn.schema import OutBoundNatSettings
from overlayd_hcn.schema import PortMappingPolicy
from overlayd_hcn.schema import PortMappingSettings
from overlayd_hcn.schema import Route
from overlayd_hcn.schema import Subnet
from overlayd_hcn.simulator import STATE_FILE
from overlayd_hcn.simulator import SimulatedHcn
from overlayd_hcn.simulator import SimulatedService


def _network(name: str, prefix: str, **extra: object) -> HostComputeNetwork:
    gateway = prefix.rsplit(".", 1)[0] + ".1"
    return HostComputeNetwork.model_validate(
        {
            "name": name,
            "type": "Internal",
            "owner": "overlayd",
            "ipams": [
                Ipam(
                    subnets=[
                        Subnet(
                            ip_address_prefix=prefix,
                            routes=[Route(next_hop=gateway, destination_prefix="0.0.0.0/0")],
                        )
                    ]
                )
            ],
            **extra,
        }
    )


def _endpoint(ip: str | None = None, **extra: object) -> HostComputeEndpoint:
    configs = [IpConfig(ip_address=ip, prefix_length=24)] if ip else None
    return HostComputeEndpoint.model_validate({"ip_configurations": configs, **extra})


def _id(value: uuid.UUID | None) -> uuid.UUID:
    assert value is not None
    return value


# -- create / open / query / delete ------------------------------------------------


def test_create_returns_service_assigned_id_and_records_exact_document(
    sim: SimulatedHcn,
) -> None:
    wanted = _network("base", "10.200.1.0/24")
    net = sim.create_network(wanted)
    assert net.id is not None
    assert net.name == "base"
    assert net.state == 1
    create = sim.service.calls_of("HcnCreateNetwork")
    assert create[0].document == wanted.to_json()
    assert create[0].id == uuid.UUID(int=0)
    assert sim.open_network(net.id) == net


def test_create_with_requested_guid_uses_it(sim: SimulatedHcn) -> None:
    gid = uuid.uuid4()
    assert sim.create_network(_network("n", "10.1.0.0/24"), id=gid).id == gid


def test_query_reply_has_upper_case_guids_and_omits_nat_type(sim: SimulatedHcn) -> None:
    nat = sim.create_network(HostComputeNetwork(name="nat", type="NAT"))
    svc = sim.service
    handle = svc.open_network(_id(nat.id))
    try:
        raw = json.loads(svc.query_network_properties(handle, "{}"))
    finally:
        svc.close_network(handle)
    assert raw["ID"] == str(nat.id).upper()
    assert "Type" not in raw
    assert nat.type == "NAT"


def test_duplicate_name_is_network_already_exists(sim: SimulatedHcn) -> None:
    sim.create_network(_network("dup", "10.2.0.0/24"))
    with pytest.raises(HcnAlreadyExistsError) as info:
        sim.create_network(_network("dup", "10.3.0.0/24"))
    assert info.value.hresult_hex == "0x803B0010"
    assert "already exists" in str(info.value)


def test_duplicate_guid_is_error_already_exists(sim: SimulatedHcn) -> None:
    gid = uuid.uuid4()
    sim.create_network(_network("a", "10.4.0.0/24"), id=gid)
    with pytest.raises(HcnAlreadyExistsError) as info:
        sim.create_network(_network("b", "10.5.0.0/24"), id=gid)
    assert info.value.hresult == 0x800700B7


def test_overlapping_subnet_between_networks_is_subnet_conflict(sim: SimulatedHcn) -> None:
    sim.create_network(_network("a", "10.6.0.0/24"))
    with pytest.raises(HcnSubnetConflictError, match="overlaps"):
        sim.create_network(_network("b", "10.6.0.128/25"))


def test_invalid_prefix_is_subnet_error(sim: SimulatedHcn) -> None:
    with pytest.raises(HcnSubnetConflictError) as info:
        sim.create_network(_network("a", "10.7.0.1/24"))
    assert info.value.hresult_hex == "0x803B0030"


def test_not_found_codes_per_kind(sim: SimulatedHcn) -> None:
    missing = uuid.uuid4()
    with pytest.raises(HcnNotFoundError) as net:
        sim.open_network(missing)
    with pytest.raises(HcnNotFoundError) as ep:
        sim.delete_endpoint(missing)
    with pytest.raises(HcnNotFoundError) as ns:
        sim.open_namespace(missing)
    assert (net.value.hresult, ep.value.hresult, ns.value.hresult) == (
        HCN_E_NETWORK_NOT_FOUND,
        HCN_E_ENDPOINT_NOT_FOUND,
        ERROR_NOT_FOUND,
    )


def test_v1_not_found_knob_answers_element_not_found_everywhere() -> None:
    sim = SimulatedHcn(v1_not_found=True)
    with pytest.raises(HcnNotFoundError) as info:
        sim.delete_network(uuid.uuid4())
    assert info.value.hresult == ERROR_NOT_FOUND


def test_invalid_json_settings_and_filter(service: SimulatedService) -> None:
    with pytest.raises(HcnInvalidJsonError) as info:
        service.create_network(uuid.uuid4(), "{not json")
    assert info.value.hresult == HCN_E_INVALID_JSON
    with pytest.raises(HcnInvalidJsonError):
        service.enumerate_networks('{"Filter":{"Name":"x"}}')  # object, not a string
    with pytest.raises(HcnInvalidJsonError):
        service.enumerate_networks('{"Filter":"{nope"}')


def test_missing_schema_version_and_bad_type_are_rejected(service: SimulatedService) -> None:
    with pytest.raises(HcnInvalidConfigError) as missing:
        service.create_network(uuid.uuid4(), '{"Name":"x","Type":"Internal"}')
    assert missing.value.hresult_hex == "0x80070057"
    with pytest.raises(HcnInvalidConfigError) as bad:
        service.create_network(uuid.uuid4(), '{"Type":"Bogus","SchemaVersion":{"Major":2}}')
    assert bad.value.hresult_hex == "0x803B000B"


# -- enumerate -----------------------------------------------------------------------


def test_enumerate_filters_by_name_owner_id_and_network(sim: SimulatedHcn) -> None:
    a = sim.create_network(_network("a", "10.8.0.0/24"))
    b = sim.create_network(_network("b", "10.9.0.0/24", owner="someone-else"))
    assert set(sim.enumerate_networks()) == {a.id, b.id}
    assert sim.enumerate_networks(HostComputeQuery.filtered(name="a")) == [a.id]
    assert sim.enumerate_networks(HostComputeQuery.filtered(owner="overlayd")) == [a.id]
    assert sim.enumerate_networks(HostComputeQuery.filtered(id=_id(b.id))) == [b.id]
    assert sim.enumerate_networks(HostComputeQuery.filtered(name="zzz")) == []
    ea = sim.create_endpoint(_id(a.id), _endpoint())
    sim.create_endpoint(_id(b.id), _endpoint())
    assert sim.enumerate_endpoints(HostComputeQuery.filtered(network=_id(a.id))) == [ea.id]


# -- endpoints ----------------------------------------------------------------------


def test_endpoint_gets_next_free_address_mac_and_network(sim: SimulatedHcn) -> None:
    net = sim.create_network(_network("n", "10.10.0.0/24"))
    first = sim.create_endpoint(_id(net.id), _endpoint())
    second = sim.create_endpoint(_id(net.id), _endpoint())
    assert first.ip_configurations == [IpConfig(ip_address="10.10.0.2", prefix_length=24)]
    assert second.ip_configurations == [IpConfig(ip_address="10.10.0.3", prefix_length=24)]
    assert first.host_compute_network == net.id
    assert first.mac_address is not None
    assert first.mac_address.startswith("00-15-5D-")


@pytest.mark.parametrize(
    ("ip", "hresult"),
    [
        ("10.11.1.5", "0x803B001E"),  # outside the subnet
        ("10.11.0.1", "0x803B002F"),  # the gateway
        ("10.11.0.0", "0x803B002F"),  # the network address
        ("10.11.0.255", "0x803B002F"),  # broadcast
    ],
)
def test_static_ip_outside_or_reserved_is_refused(sim: SimulatedHcn, ip: str, hresult: str) -> None:
    net = sim.create_network(_network("n", "10.11.0.0/24"))
    with pytest.raises(HcnAddressError) as info:
        sim.create_endpoint(_id(net.id), _endpoint(ip))
    assert info.value.hresult_hex == hresult


def test_static_ip_in_use_is_refused(sim: SimulatedHcn) -> None:
    net = sim.create_network(_network("n", "10.12.0.0/24"))
    sim.create_endpoint(_id(net.id), _endpoint("10.12.0.7"))
    with pytest.raises(HcnAddressError):
        sim.create_endpoint(_id(net.id), _endpoint("10.12.0.7"))


def test_unknown_policy_type_and_malformed_policy(service: SimulatedService) -> None:
    sim = SimulatedHcn(service=service)
    net = sim.create_network(_network("n", "10.13.0.0/24"))
    handle = service.open_network(_id(net.id))
    try:
        base = '{"SchemaVersion":{"Major":2,"Minor":0},"Policies":[%s]}'
        with pytest.raises(HcnPolicyInvalidError) as unknown:
            service.create_endpoint(handle, uuid.uuid4(), base % '{"Type":"Nope"}')
        assert unknown.value.hresult_hex == "0x803B000E"
        with pytest.raises(HcnPolicyInvalidError) as malformed:
            service.create_endpoint(
                handle, uuid.uuid4(), base % '{"Type":"ACL","Settings":{"Priority":"x"}}'
            )
        assert malformed.value.hresult_hex == "0x803B000D"
    finally:
        service.close_network(handle)


def test_host_compute_namespace_is_read_only_on_create(sim: SimulatedHcn) -> None:
    net = sim.create_network(_network("n", "10.14.0.0/24"))
    with pytest.raises(HcnInvalidConfigError) as info:
        sim.create_endpoint(_id(net.id), _endpoint(host_compute_namespace=uuid.uuid4()))
    assert info.value.hresult_hex == "0x803B000C"


def test_duplicate_port_mapping_is_port_already_exists(sim: SimulatedHcn) -> None:
    net = sim.create_network(_network("n", "10.15.0.0/24"))
    mapping = PortMappingPolicy(
        settings=PortMappingSettings(protocol=6, internal_port=80, external_port=8080)
    )
    sim.create_endpoint(_id(net.id), _endpoint(policies=[mapping]))
    with pytest.raises(HcnAlreadyExistsError) as info:
        sim.create_endpoint(_id(net.id), _endpoint(policies=[mapping]))
    assert info.value.hresult_hex == "0x803B0013"


def test_endpoint_policies_survive_round_trip(sim: SimulatedHcn) -> None:
    net = sim.create_network(_network("n", "10.16.0.0/24"))
    nat = OutBoundNatPolicy(settings=OutBoundNatSettings(exceptions=["10.16.0.0/16"]))
    ep = sim.create_endpoint(_id(net.id), _endpoint(policies=[nat]))
    assert ep.policies == [nat]


# -- namespaces ---------------------------------------------------------------------


def test_attach_detach_and_error_codes(sim: SimulatedHcn) -> None:
    net = sim.create_network(_network("n", "10.17.0.0/24"))
    ep = _id(sim.create_endpoint(_id(net.id), _endpoint()).id)
    ns = _id(sim.create_namespace(HostComputeNamespace()).id)
    other = _id(sim.create_namespace(HostComputeNamespace()).id)
    sim.add_namespace_endpoint(ns, ep)
    assert sim.open_endpoint(ep).host_compute_namespace == ns
    with pytest.raises(HcnAlreadyExistsError) as twice:
        sim.add_namespace_endpoint(other, ep)
    assert twice.value.hresult_hex == "0x803B002B"
    with pytest.raises(HcnOtherError) as not_attached:
        sim.remove_namespace_endpoint(other, ep)
    assert not_attached.value.hresult_hex == "0x803B0034"
    sim.remove_namespace_endpoint(ns, ep)
    assert sim.open_namespace(ns).endpoint_ids() == []
    assert sim.open_endpoint(ep).host_compute_namespace is None
    with pytest.raises(HcnNotFoundError):
        sim.add_namespace_endpoint(ns, uuid.uuid4())


def test_modify_namespace_with_settings_string_is_invalid_json(
    service: SimulatedService,
) -> None:
    handle = service.create_namespace(uuid.uuid4(), HostComputeNamespace().to_json())
    try:
        with pytest.raises(HcnInvalidJsonError):
            service.modify_namespace(
                handle,
                '{"ResourceType":"Endpoint","RequestType":"Add",'
                '"Settings":"{\\"EndpointId\\":\\"x\\"}"}',
            )
    finally:
        service.close_namespace(handle)


def test_host_default_namespace_is_a_singleton_ignoring_requested_guid(
    sim: SimulatedHcn,
) -> None:
    requested = uuid.uuid4()
    ns = sim.create_namespace(HostComputeNamespace(type=NamespaceType.HOST_DEFAULT), id=requested)
    assert ns.id != requested
    assert ns.id == sim.service.host_default_namespace()


def test_namespaces_get_increasing_compartment_ids(sim: SimulatedHcn) -> None:
    first = sim.create_namespace(HostComputeNamespace())
    second = sim.create_namespace(HostComputeNamespace())
    assert first.namespace_id is not None
    assert second.namespace_id == first.namespace_id + 1


def test_delete_endpoint_detaches_it_from_its_namespace(sim: SimulatedHcn) -> None:
    net = sim.create_network(_network("n", "10.18.0.0/24"))
    ep = _id(sim.create_endpoint(_id(net.id), _endpoint()).id)
    ns = _id(sim.create_namespace(HostComputeNamespace()).id)
    sim.add_namespace_endpoint(ns, ep)
    sim.delete_endpoint(ep)
    assert sim.open_namespace(ns).endpoint_ids() == []


def test_delete_network_cascades_or_refuses_in_strict_mode() -> None:
    for strict in (False, True):
        sim = SimulatedHcn(strict_delete=strict)
        net = _id(sim.create_network(_network("n", "10.19.0.0/24")).id)
        ep = _id(sim.create_endpoint(net, _endpoint()).id)
        if strict:
            with pytest.raises(HcnInUseError):
                sim.delete_network(net)
            sim.delete_endpoint(ep)
        sim.delete_network(net)
        with pytest.raises(HcnNotFoundError):
            sim.open_endpoint(ep)


# -- fault injection ----------------------------------------------------------------


def test_fail_next_fails_exactly_that_many_calls(sim: SimulatedHcn) -> None:
    sim.fail_next("HcnEnumerateNetworks", 0x80070005, times=2)
    for _ in range(2):
        with pytest.raises(HcnAccessDeniedError):
            sim.enumerate_networks()
    assert sim.enumerate_networks() == []


def test_fail_next_on_create_leaves_no_object(sim: SimulatedHcn) -> None:
    sim.fail_next("HcnCreateNetwork", HCN_E_INVALID_JSON)
    with pytest.raises(HcnInvalidJsonError):
        sim.create_network(_network("n", "10.20.0.0/24"))
    assert sim.enumerate_networks() == []


def test_fail_next_rejects_unknown_function(sim: SimulatedHcn) -> None:
    with pytest.raises(ValueError, match="HcnFrobnicate"):
        sim.fail_next("HcnFrobnicate", 0x80004005)


def test_service_down_answers_rpc_unavailable(sim: SimulatedHcn) -> None:
    sim.service.service_down = True
    with pytest.raises(HcnUnavailableError) as info:
        sim.enumerate_namespaces()
    assert info.value.hresult == RPC_S_SERVER_UNAVAILABLE


def test_latency_drives_the_client_timeout() -> None:
    sim = SimulatedHcn(call_timeout=0.05)
    sim.set_latency(0.5, "HcnEnumerateNetworks")
    start = time.monotonic()
    with pytest.raises(HcnTimeoutError, match="did not return within"):
        sim.enumerate_networks()
    assert time.monotonic() - start < 0.4
    assert sim.enumerate_endpoints() == []  # other functions are not delayed


def test_settle_window_refuses_static_ip_then_accepts() -> None:
    now = [100.0]
    service = SimulatedService(settle_seconds=2.0, clock=lambda: now[0])
    sim = SimulatedHcn(service=service)
    net = _id(sim.create_network(_network("n", "10.21.0.0/24")).id)
    with pytest.raises(HcnAddressError) as info:
        sim.create_endpoint(net, _endpoint("10.21.0.9"))
    assert info.value.hresult == HCN_E_ADDR_INVALID_OR_RESERVED
    now[0] += 2.5
    assert sim.create_endpoint(net, _endpoint("10.21.0.9")).ip_configurations


# -- persistence --------------------------------------------------------------------


def test_objects_outlive_the_instance(state_dir: Path) -> None:
    first = SimulatedHcn(state_dir)
    net = _id(first.create_network(_network("base", "10.22.0.0/24")).id)
    ep = _id(first.create_endpoint(net, _endpoint()).id)
    ns = _id(first.create_namespace(HostComputeNamespace()).id)
    first.add_namespace_endpoint(ns, ep)
    default = first.service.host_default_namespace()

    second = SimulatedHcn(state_dir)
    assert second.open_network(net).name == "base"
    assert second.open_endpoint(ep).host_compute_namespace == ns
    assert second.open_namespace(ns).endpoint_ids() == [ep]
    assert second.service.host_default_namespace() == default
    # the next namespace does not reuse a compartment id
    assert second.create_namespace(HostComputeNamespace()).namespace_id == 2
    assert sorted(p.name for p in state_dir.iterdir()) == [STATE_FILE]  # no temp left


def test_reboot_drops_non_persistent_networks_and_all_endpoints(state_dir: Path) -> None:
    sim = SimulatedHcn(state_dir)
    keep = _id(sim.create_network(_network("keep", "10.23.0.0/24")).id)
    gone = _id(
        sim.create_network(
            _network("gone", "10.24.0.0/24", flags=NetworkFlags.ENABLE_NON_PERSISTENT)
        ).id
    )
    sim.create_endpoint(keep, _endpoint())
    sim.create_namespace(HostComputeNamespace())
    sim.service.reboot()
    after = SimulatedHcn(state_dir)
    assert after.enumerate_networks() == [keep]
    assert gone not in after.enumerate_networks()
    assert after.enumerate_endpoints() == []
    assert after.enumerate_namespaces() == [after.service.host_default_namespace()]


def test_corrupt_state_file_is_a_state_error(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / STATE_FILE).write_text("{broken", encoding="utf-8")
    with pytest.raises(StateError, match="move it away"):
        SimulatedHcn(state_dir)
