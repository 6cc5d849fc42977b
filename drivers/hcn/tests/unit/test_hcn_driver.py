"""The hcn driver's flows against the HCN simulator, asserting the exact JSON sent."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from overlayd import marker
from overlayd.config import EngineConfig
from overlayd.errors import AttachError
from overlayd.errors import ConfigError
from overlayd.errors import DeviceError
from overlayd.errors import NoDriverError
from overlayd.errors import NotSupported
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Device
from overlayd.model import DeviceSpec
from overlayd.model import ReconcileRequest
from overlayd.model import WindowsContainerHandle
from overlayd.plugins import DriverContext
from overlayd.plugins import Hooks
from overlayd.plugins import make_plugin_manager
from overlayd.plugins import register_drivers
from overlayd.testing.nodes import node_info
from overlayd_hcn.driver import HcnDriver
from overlayd_hcn.errors import E_ACCESSDENIED
from overlayd_hcn.errors import HCN_E_ADDR_INVALID_OR_RESERVED
from overlayd_hcn.errors import HCN_E_ENTITY_HAS_REFERENCES
from overlayd_hcn.errors import HCN_E_INVALID_POLICY
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.schema import Ipam
from overlayd_hcn.schema import IpConfig
from overlayd_hcn.schema import Route
from overlayd_hcn.schema import Subnet
from overlayd_hcn.simulator import SimulatedHcn

SV = '"SchemaVersion":{"Major":2,"Minor":0}'
CLUSTER = "10.200.0.0/16"
SLICE = "10.200.0.0/20"
NODE_IP = "10.200.0.1"

BASE_NETWORK_JSON = (
    '{"Name":"zlayer-overlay","Type":"Internal","Ipams":[{"Type":"Static","Subnets":'
    '[{"IpAddressPrefix":"10.200.0.0/20","Routes":[{"NextHop":"10.200.0.1",'
    '"DestinationPrefix":"0.0.0.0/0"}]}]}],"Flags":0,' + SV + "}"
)


def endpoint_json(name: str, network: str, ip: str, prefix: int, gateway: str, dns: str) -> str:
    return (
        f'{{"Name":"{name}","Owner":"overlayd","HostComputeNetwork":"{network}",'
        '"Policies":[{"Type":"OutBoundNAT","Settings":{"Exceptions":["10.200.0.0/16"]}},'
        '{"Type":"SDNRoute","Settings":{"DestinationPrefix":"10.200.0.0/16","NeedEncap":false}},'
        '{"Type":"ACL","Settings":{"Action":"Allow","Direction":"In",'
        '"RemoteAddresses":"10.200.0.0/16","RuleType":"Switch","Priority":65500}}],'
        f'"IpConfigurations":[{{"IpAddress":"{ip}","PrefixLength":{prefix}}}],'
        f"{dns}"
        f'"Routes":[{{"NextHop":"{gateway}","DestinationPrefix":"0.0.0.0/0"}}],' + SV + "}"
    )


class Host:
    """A simulated Windows host: HCN state dir + overlayd data dir survive 'restarts'."""

    def __init__(self, root: Path) -> None:
        self.state_dir = root / "hcn-state"
        self.data_dir = root / "data"
        self.sleeps: list[float] = []
        self.sim = SimulatedHcn(self.state_dir)
        self.driver = self._driver()

    def _driver(self) -> HcnDriver:
        driver = HcnDriver(api=self.sim, sleep=self.sleeps.append)
        driver.overlayd_configure(config=EngineConfig(drivers=[]))
        driver.overlayd_startup(context=DriverContext(data_dir=self.data_dir, emit=lambda e: None))
        return driver

    def restart(self) -> None:
        """A new daemon (and a fresh simulator process view) over the same files."""
        self.sim = SimulatedHcn(self.state_dir)
        self.driver = self._driver()

    def web(self) -> Device:
        """The shared segment of service ``web`` (``10.200.4.0/22``), created."""
        segment = self.driver.overlayd_device_create(spec=seg_spec("web", "10.200.4.0/22"))
        assert segment is not None
        return segment

    def docs(self, function: str) -> list[str | None]:
        return [c.document for c in self.sim.service.calls_of(function)]

    def marker(self) -> marker.NetworkMarker:
        return marker.load(marker.marker_path(self.data_dir))

    def objects(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "hcn-simulator.json").read_text()))

    def endpoint_ids(self) -> set[str]:
        return {e["ID"].lower() for e in self.objects()["endpoints"]}

    def host_namespaces(self) -> set[str]:
        return {n["ID"].lower() for n in self.objects()["namespaces"] if n["Type"] == "Host"}


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """Name: host. Scope: function. Depends: tmp_path. A simulated host."""
    return Host(tmp_path)


def seg_spec(service: str, subnet: str, mode: str = "shared") -> DeviceSpec:
    net = ipaddress.ip_network(subnet)
    return DeviceSpec(
        kind="hcn-network",
        name=f"zl-t-{service}-b",
        owner=f"service:{service}",
        addresses=(ipaddress.ip_interface(f"{net.network_address + 1}/{net.prefixlen}"),),
        mtu=1420,
        subnet=net,
        options={
            "mode": mode,
            "deployment": "t",
            "instance_id": "",
            "cluster_cidr": CLUSTER,
            "slice_cidr": SLICE,
            "node_ip": NODE_IP,
        },
    )


def attach_request(
    segment: Device,
    container: str,
    ip: str,
    *,
    dns_server: str | None = "10.200.4.1",
    dns_domain: str | None = "prod.local",
) -> AttachRequest:
    assert segment.subnet is not None
    return AttachRequest(
        handle=WindowsContainerHandle(container_id=container),
        service=segment.owner.removeprefix("service:"),
        segment=segment,
        address=ipaddress.ip_interface(f"{ip}/{segment.subnet.prefixlen}"),
        gateway=segment.subnet.network_address + 1,
        node=node_info(CLUSTER, SLICE),
        dns_server=ipaddress.ip_address(dns_server) if dns_server else None,
        dns_domain=dns_domain,
    )


DNS_JSON = '"Dns":{"Domain":"prod.local","Search":["prod.local"],"ServerList":["10.200.4.1"]},'


# -- base network -------------------------------------------------------------------


def test_shared_segment_creates_base_network_once_and_records_it(host: Host) -> None:
    web = host.driver.overlayd_device_create(spec=seg_spec("web", "10.200.4.0/22"))
    api = host.driver.overlayd_device_create(spec=seg_spec("api", "10.200.8.0/22"))
    assert web is not None and api is not None
    assert host.docs("HcnCreateNetwork") == [BASE_NETWORK_JSON]
    assert host.docs("HcnEnumerateNetworks") == [
        "{" + SV + ',"Flags":0,"Filter":"{\\"Name\\":\\"zlayer-overlay\\"}"}'
    ]
    assert web.id == api.id
    assert web.driver == "hcn" and web.kind == "hcn-network" and web.name == "zl-t-web-b"
    entry = host.marker().get("base")
    assert entry is not None
    assert (entry.kind, entry.name, entry.id, entry.subnet) == (
        "hcn-internal",
        "zlayer-overlay",
        web.id,
        SLICE,
    )
    assert host.driver.overlayd_device_create(spec=seg_spec("web", "10.200.4.0/22")) == web
    assert len(host.docs("HcnCreateNetwork")) == 1


def test_transparent_network_on_the_uplink_adapter(tmp_path: Path) -> None:
    sim = SimulatedHcn()
    driver = HcnDriver(api=sim)
    config = EngineConfig(
        drivers=[],
        driver_settings={"hcn": {"network_type": "Transparent", "uplink_adapter": "Ethernet 2"}},
    )
    driver.overlayd_configure(config=config)
    driver.overlayd_startup(context=DriverContext(data_dir=tmp_path, emit=lambda e: None))
    driver.overlayd_device_create(spec=seg_spec("web", "10.200.4.0/22"))
    assert [c.document for c in sim.service.calls_of("HcnCreateNetwork")] == [
        '{"Name":"zlayer-overlay","Type":"Transparent","Policies":[{"Type":"NetAdapterName",'
        '"Settings":{"NetworkAdapterName":"Ethernet 2"}}],"Ipams":[{"Type":"Static","Subnets":'
        '[{"IpAddressPrefix":"10.200.0.0/20","Routes":[{"NextHop":"10.200.0.1",'
        '"DestinationPrefix":"0.0.0.0/0"}]}]}],"Flags":0,' + SV + "}"
    ]
    entry = marker.load(marker.marker_path(tmp_path)).get("base")
    assert entry is not None and entry.kind == "hcn-transparent"


def test_restart_reuses_base_network_by_marker_guid(host: Host) -> None:
    first = host.web()
    assert first.id is not None
    host.restart()
    again = host.driver.overlayd_device_create(spec=seg_spec("api", "10.200.8.0/22"))
    assert again is not None
    assert again.id == first.id
    assert host.docs("HcnCreateNetwork") == []
    assert host.docs("HcnEnumerateNetworks") == []
    assert [c.id for c in host.sim.service.calls_of("HcnOpenNetwork")] == [UUID(first.id)]
    # The segments survive the restart too: device_list reports both services.
    listed = {d.name for d in host.driver.overlayd_device_list(kind="hcn-network")}
    assert listed == {"zl-t-web-b", "zl-t-api-b"}


def test_existing_network_is_adopted_by_name_when_marker_is_missing(host: Host) -> None:
    zlayer_made = host.sim.create_network(
        HostComputeNetwork(
            name="zlayer-overlay",
            type="Internal",
            ipams=[
                Ipam(
                    subnets=[
                        Subnet(
                            ip_address_prefix=SLICE,
                            routes=[Route(next_hop=NODE_IP, destination_prefix="0.0.0.0/0")],
                        )
                    ]
                )
            ],
        )
    )
    host.sim.calls.clear()
    web = host.web()
    assert web.id == str(zlayer_made.id)
    assert host.docs("HcnCreateNetwork") == []
    entry = host.marker().get("base")
    assert entry is not None and entry.id == str(zlayer_made.id)


def test_base_network_with_another_slice_is_refused(host: Host) -> None:
    host.web()
    moved = seg_spec("api", "10.201.4.0/22").model_copy(
        update={
            "options": {"mode": "shared", "slice_cidr": "10.201.0.0/20", "node_ip": "10.201.0.1"}
        }
    )
    with pytest.raises(DeviceError, match="slice changed"):
        host.driver.overlayd_device_create(spec=moved)


def test_shared_delete_keeps_base_network_for_other_services_and_purge(host: Host) -> None:
    web = host.driver.overlayd_device_create(spec=seg_spec("web", "10.200.4.0/22"))
    api = host.driver.overlayd_device_create(spec=seg_spec("api", "10.200.8.0/22"))
    assert web is not None and api is not None
    assert host.driver.overlayd_device_delete(device=web) is True
    assert host.docs("HcnDeleteNetwork") == []
    assert host.driver.overlayd_device_delete(device=web) is False
    assert host.driver.overlayd_device_delete(device=api) is True
    # The base network stays until purge (uninstall), like ZLayer's marker network.
    assert [n["ID"].lower() for n in host.objects()["networks"]] == [web.id]
    assert host.driver.overlayd_device_list(kind="hcn-network") == []


# -- dedicated ----------------------------------------------------------------------


def test_dedicated_service_gets_its_own_network_deleted_with_the_segment(host: Host) -> None:
    db = host.driver.overlayd_device_create(spec=seg_spec("db", "10.200.12.0/22", "dedicated"))
    assert db is not None and db.id is not None
    assert host.docs("HcnCreateNetwork") == [
        '{"Name":"zlayer-overlay-db","Type":"Internal","Ipams":[{"Type":"Static","Subnets":'
        '[{"IpAddressPrefix":"10.200.12.0/22","Routes":[{"NextHop":"10.200.12.1",'
        '"DestinationPrefix":"0.0.0.0/0"}]}]}],"Flags":0,' + SV + "}"
    ]
    entry = host.marker().get("service:db")
    assert entry is not None and (entry.id, entry.subnet) == (db.id, "10.200.12.0/22")
    att = host.driver.overlayd_attach(request=attach_request(db, "d1", "10.200.12.2"))
    assert att is not None
    assert host.docs("HcnCreateEndpoint") == [
        endpoint_json("overlayd-d1", db.id, "10.200.12.2", 22, "10.200.12.1", DNS_JSON)
    ]
    assert host.driver.overlayd_detach(attachment=att) is True
    assert host.driver.overlayd_device_delete(device=db) is True
    assert [c.id for c in host.sim.service.calls_of("HcnDeleteNetwork")] == [UUID(db.id)]
    assert host.marker().get("service:db") is None
    assert host.objects()["networks"] == []
    assert host.driver.overlayd_device_delete(device=db) is False


def test_dedicated_network_overlapping_the_base_is_a_clear_error(host: Host) -> None:
    host.web()
    with pytest.raises(DeviceError, match="overlaps another HCN network"):
        host.driver.overlayd_device_create(spec=seg_spec("db", "10.200.12.0/22", "dedicated"))
    assert host.marker().get("service:db") is None


# -- attach / detach ----------------------------------------------------------------


def test_attach_sends_exact_documents_and_detach_removes_endpoint_and_namespace(
    host: Host,
) -> None:
    web = host.web()
    assert web.id is not None
    host.sim.calls.clear()
    att = host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert att is not None and att.endpoint_id is not None and att.namespace_guid is not None
    assert host.docs("HcnCreateNamespace") == [
        '{"Name":"overlayd-c1","Owner":"overlayd","Type":"Host",' + SV + "}"
    ]
    assert host.docs("HcnCreateEndpoint") == [
        endpoint_json("overlayd-c1", web.id, "10.200.4.2", 20, NODE_IP, DNS_JSON)
    ]
    assert host.docs("HcnModifyNamespace") == [
        '{"ResourceType":"Endpoint","RequestType":"Add","Settings":{"EndpointId":"'
        + att.endpoint_id
        + '"}}'
    ]
    assert att.namespace_guid == att.namespace_guid.lower()
    assert "{" not in att.namespace_guid
    assert att.interfaces == (att.endpoint_id,)
    assert att.ip == ipaddress.ip_address("10.200.4.2")
    assert host.endpoint_ids() == {att.endpoint_id}
    assert host.host_namespaces() == {att.namespace_guid}
    assert host.driver.overlayd_attachment_alive(attachment=att) is True

    host.sim.calls.clear()
    assert host.driver.overlayd_detach(attachment=att) is True
    assert host.docs("HcnModifyNamespace") == [
        '{"ResourceType":"Endpoint","RequestType":"Remove","Settings":{"EndpointId":"'
        + att.endpoint_id
        + '"}}'
    ]
    assert [c.id for c in host.sim.service.calls_of("HcnDeleteEndpoint")] == [UUID(att.endpoint_id)]
    assert [c.id for c in host.sim.service.calls_of("HcnDeleteNamespace")] == [
        UUID(att.namespace_guid)
    ]
    assert host.endpoint_ids() == set()
    assert host.host_namespaces() == set()
    assert host.driver.overlayd_attachment_alive(attachment=att) is False
    assert host.driver.overlayd_detach(attachment=att) is False

    again = host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert again is not None and again.endpoint_id != att.endpoint_id
    assert host.endpoint_ids() == {again.endpoint_id}
    assert host.sim.service.live_handles == {}


def test_attach_without_dns_omits_the_dns_block(host: Host) -> None:
    web = host.web()
    assert web.id is not None
    host.driver.overlayd_attach(
        request=attach_request(web, "c2", "10.200.4.3", dns_server=None, dns_domain=None)
    )
    assert host.docs("HcnCreateEndpoint") == [
        endpoint_json("overlayd-c2", web.id, "10.200.4.3", 20, NODE_IP, "")
    ]


def _facade(driver: object) -> Hooks:
    """The engine's hook facade with only ``driver`` loaded."""
    pm = make_plugin_manager(include_core_defaults=False)
    register_drivers(pm, [driver])
    return Hooks(pm)


def test_attach_of_foreign_segments_never_reaches_the_driver(host: Host) -> None:
    web = host.web()
    foreign = web.model_copy(update={"driver": "fake"})
    with pytest.raises(NoDriverError, match="'fake', which is not loaded"):
        _facade(host.driver).attach(attach_request(foreign, "c1", "10.200.4.2"))
    assert host.docs("HcnCreateEndpoint") == []


def test_attach_replaces_leftover_endpoint_of_a_crashed_attempt(host: Host) -> None:
    web = host.web()
    assert web.id is not None
    stale = host.sim.create_endpoint(
        UUID(web.id),
        HostComputeEndpoint(
            name="overlayd-c1",
            owner="overlayd",
            ip_configurations=[IpConfig(ip_address="10.200.4.9", prefix_length=20)],
        ),
    )
    att = host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert att is not None
    assert host.endpoint_ids() == {att.endpoint_id}
    assert str(stale.id) not in host.endpoint_ids()


@pytest.mark.parametrize(
    ("function", "hresult", "match", "endpoints_deleted"),
    [
        # The endpoint was created before the namespace step failed: deleted again.
        ("HcnModifyNamespace", E_ACCESSDENIED, "0x80070005", 1),
        # Not a settling error: no retry, and no endpoint to delete.
        ("HcnCreateEndpoint", HCN_E_INVALID_POLICY, "HCN_E_INVALID_POLICY", 0),
    ],
)
def test_rollback_when_an_attach_step_fails(
    host: Host, function: str, hresult: int, match: str, endpoints_deleted: int
) -> None:
    web = host.web()
    host.sim.fail_next(function, hresult)
    with pytest.raises(AttachError, match=match):
        host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert len(host.sim.service.calls_of("HcnDeleteEndpoint")) == endpoints_deleted
    assert len(host.sim.service.calls_of("HcnDeleteNamespace")) == 1
    assert host.endpoint_ids() == set()
    assert host.host_namespaces() == set()
    assert host.sleeps == []


def test_endpoint_create_retries_while_static_ipam_settles(host: Host) -> None:
    web = host.web()
    host.sim.fail_next("HcnCreateEndpoint", HCN_E_ADDR_INVALID_OR_RESERVED, times=2)
    att = host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert att is not None
    assert len(host.sim.service.calls_of("HcnCreateEndpoint")) == 3
    assert host.sleeps == [0.05, 0.1]
    assert host.endpoint_ids() == {att.endpoint_id}


def test_settling_retries_are_bounded_and_roll_back(host: Host) -> None:
    web = host.web()
    host.sim.fail_next("HcnCreateEndpoint", HCN_E_ADDR_INVALID_OR_RESERVED, times=50)
    with pytest.raises(AttachError, match="HCN_E_ADDR_INVALID_OR_RESERVED"):
        host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert len(host.sim.service.calls_of("HcnCreateEndpoint")) == 6
    assert len(host.sleeps) == 5
    assert host.host_namespaces() == set()


def test_real_settle_window_is_waited_out(tmp_path: Path) -> None:
    sim = SimulatedHcn(settle_seconds=0.2)
    driver = HcnDriver(api=sim)
    driver.overlayd_startup(context=DriverContext(data_dir=tmp_path, emit=lambda e: None))
    web = driver.overlayd_device_create(spec=seg_spec("web", "10.200.4.0/22"))
    assert web is not None
    att = driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert att is not None
    assert len(sim.service.calls_of("HcnCreateEndpoint")) > 1


def test_namespace_delete_retries_while_references_settle(host: Host) -> None:
    web = host.web()
    att = host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert att is not None
    host.sim.fail_next("HcnDeleteNamespace", HCN_E_ENTITY_HAS_REFERENCES)
    assert host.driver.overlayd_detach(attachment=att) is True
    assert len(host.sim.service.calls_of("HcnDeleteNamespace")) == 2
    assert host.sleeps == [0.05]
    assert host.host_namespaces() == set()


def test_detach_failure_raises_attach_error_and_keeps_retryable(host: Host) -> None:
    web = host.web()
    att = host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert att is not None
    host.sim.fail_next("HcnDeleteEndpoint", E_ACCESSDENIED)
    with pytest.raises(AttachError, match="detaching windows_container:c1"):
        host.driver.overlayd_detach(attachment=att)
    assert host.driver.overlayd_detach(attachment=att) is True
    assert host.endpoint_ids() == set()


# -- reconcile ----------------------------------------------------------------------


def test_reconcile_sweeps_unrecorded_own_endpoints_and_namespaces_only(host: Host) -> None:
    web = host.web()
    assert web.id is not None
    kept = host.driver.overlayd_attach(request=attach_request(web, "keep", "10.200.4.2"))
    orphan = host.driver.overlayd_attach(request=attach_request(web, "orphan", "10.200.4.3"))
    assert kept is not None and orphan is not None
    foreign = host.sim.create_endpoint(
        UUID(web.id),
        HostComputeEndpoint(
            name="zlayer-abc", ip_configurations=[IpConfig(ip_address="10.200.4.4")]
        ),
    )
    lone_ns = host.sim.create_namespace(
        HostComputeNamespace(name="overlayd-crashed", owner="overlayd")
    )
    report = host.driver.overlayd_reconcile(
        request=ReconcileRequest(devices=(web,), attachments=(kept,), startup=True)
    )
    assert report is not None
    assert set(report.removed) == {
        f"endpoint:{orphan.endpoint_id}",
        f"namespace:{str(lone_ns.id).lower()}",
    }
    assert set(report.adopted) == {web.name, kept.key}
    assert report.gone == () and report.errors == ()
    assert host.endpoint_ids() == {kept.endpoint_id, str(foreign.id)}
    assert host.host_namespaces() == {kept.namespace_guid}
    second = host.driver.overlayd_reconcile(
        request=ReconcileRequest(devices=(web,), attachments=(kept,))
    )
    assert second is not None and second.removed == () and second.recreated == ()


def test_reconcile_reports_vanished_endpoints_as_gone(host: Host) -> None:
    web = host.web()
    att = host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert att is not None and att.endpoint_id is not None
    host.sim.delete_endpoint(UUID(att.endpoint_id))
    report = host.driver.overlayd_reconcile(
        request=ReconcileRequest(devices=(web,), attachments=(att,))
    )
    assert report is not None and report.gone == (att.key,)
    assert host.driver.overlayd_detach(attachment=att) is True
    assert host.host_namespaces() == set()


def test_reconcile_recreates_a_recorded_network_that_vanished(host: Host) -> None:
    web = host.web()
    assert web.id is not None
    host.sim.delete_network(UUID(web.id))
    host.sim.calls.clear()
    report = host.driver.overlayd_reconcile(request=ReconcileRequest(devices=(web,)))
    assert report is not None and report.recreated == (web.name,)
    assert host.docs("HcnCreateNetwork") == [BASE_NETWORK_JSON]
    entry = host.marker().get("base")
    assert entry is not None and entry.id != web.id
    assert [d.id for d in host.driver.overlayd_device_list(kind="hcn-network")] == [entry.id]


# -- purge --------------------------------------------------------------------------


def test_purge_deletes_every_recorded_network_and_clears_the_marker(host: Host) -> None:
    web = host.web()
    att = host.driver.overlayd_attach(request=attach_request(web, "c1", "10.200.4.2"))
    assert att is not None
    foreign = host.sim.create_network(
        HostComputeNetwork(
            name="nat",
            type="NAT",
            ipams=[Ipam(subnets=[Subnet(ip_address_prefix="172.30.0.0/24")])],
        )
    )
    host.restart()
    assert host.driver.purge() == ["zlayer-overlay"]
    assert host.marker().networks == []
    assert [n["ID"].lower() for n in host.objects()["networks"]] == [str(foreign.id)]
    assert host.endpoint_ids() == set()
    assert host.host_namespaces() == set()
    assert host.driver.purge() == []


# -- configuration ------------------------------------------------------------------


def test_unknown_option_is_a_config_error_naming_it() -> None:
    driver = HcnDriver()
    config = EngineConfig(drivers=[], driver_settings={"hcn": {"bakend": "simulator"}})
    with pytest.raises(ConfigError, match="bakend"):
        driver.overlayd_configure(config=config)


def test_transparent_without_uplink_is_a_config_error() -> None:
    config = EngineConfig(drivers=[], driver_settings={"hcn": {"network_type": "Transparent"}})
    with pytest.raises(ConfigError, match="uplink_adapter"):
        HcnDriver().overlayd_configure(config=config)


def test_native_backend_refuses_to_start_off_windows(tmp_path: Path) -> None:
    driver = HcnDriver()
    driver.overlayd_configure(config=EngineConfig(drivers=[]))
    with pytest.raises(NotSupported, match='backend = "simulator"'):
        driver.overlayd_startup(context=DriverContext(data_dir=tmp_path, emit=lambda e: None))


def test_simulator_backend_persists_under_data_dir(tmp_path: Path) -> None:
    config = EngineConfig(drivers=[], driver_settings={"hcn": {"backend": "simulator"}})
    driver = HcnDriver()
    driver.overlayd_configure(config=config)
    driver.overlayd_startup(context=DriverContext(data_dir=tmp_path, emit=lambda e: None))
    web = driver.overlayd_device_create(spec=seg_spec("web", "10.200.4.0/22"))
    assert web is not None
    state = json.loads((tmp_path / "hcn-sim" / "hcn-simulator.json").read_text())
    assert [n["ID"].lower() for n in state["networks"]] == [web.id]
    assert (tmp_path / "agent_network.json").exists()
    assert (tmp_path / "hcn-segments.json").exists()


def test_detach_of_foreign_attachment_never_reaches_the_driver(host: Host) -> None:
    foreign = Attachment(
        handle=WindowsContainerHandle(container_id="x"),
        service="web",
        driver="fake",
        ip=ipaddress.ip_address("10.200.4.2"),
    )
    hooks = _facade(host.driver)
    calls: list[str] = []
    hooks.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.extend(i.plugin_name for i in impls),
        lambda outcome, name, impls, kwargs: None,
    )
    with pytest.raises(NoDriverError, match="'fake', which is not loaded"):
        hooks.detach(foreign)
    assert hooks.attachment_alive(foreign) is True  # unsure: GC keeps it
    assert calls == []
