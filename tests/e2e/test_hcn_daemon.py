"""End to end over the IPC: the daemon with the hcn driver on the HCN simulator.

The daemon runs in-process (:class:`overlayd.testing.inproc.InProcDaemon` on a
temporary socket) with ``drivers = ["hcn", "fake"]``: hcn owns the ``hcn-network``
segments and ``windows_container`` attachments, the fake driver stands in for
the node's WireGuard device (which no Windows-capable driver here creates).
Assertions read the simulator's persisted HCN objects and the marker, i.e.
the exact documents HCN holds.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from overlayd import marker
from overlayd import protocol as p
from overlayd.client import AsyncClient
from overlayd.testing.inproc import InProcDaemon
from overlayd.testing.inproc import setup_overlay
from overlayd_hcn.driver import HcnDriver
from overlayd_hcn.schema import HostComputeEndpoint
from overlayd_hcn.schema import HostComputeNamespace
from overlayd_hcn.schema import IpConfig
from overlayd_hcn.simulator import SimulatedHcn

CLUSTER = "10.200.0.0/16"
SLICE = "10.200.0.0/20"


class Daemon(InProcDaemon):
    """The shared in-process daemon with ``drivers = ["hcn", "fake"]`` on the simulator."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            root,
            drivers=["hcn", "fake"],
            driver_settings={"hcn": {"backend": "simulator"}},
            engine={"segment_kind": "hcn-network"},
        )

    async def serve(self) -> AsyncClient:
        """Start (again) and return a connected client."""
        await self.start()
        return await self.client(request_timeout=10)

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "hcn-sim"

    def hcn(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "hcn-simulator.json").read_text()))

    def endpoints(self) -> dict[str, dict[str, Any]]:
        return {e["ID"].lower(): e for e in self.hcn()["endpoints"]}

    def host_namespaces(self) -> dict[str, dict[str, Any]]:
        return {n["ID"].lower(): n for n in self.hcn()["namespaces"] if n["Type"] == "Host"}

    def networks(self) -> dict[str, dict[str, Any]]:
        return {n["ID"].lower(): n for n in self.hcn()["networks"]}

    def marker(self) -> marker.NetworkMarker:
        return marker.load(marker.marker_path(self.data_dir))


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    """Name: daemon. Scope: function. Depends: tmp_path. Stopped even on failure."""
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        await d.stop()


def win(container: str) -> p.WindowsContainerHandle:
    return p.WindowsContainerHandle(container_id=container)


async def setup(client: AsyncClient) -> None:
    await setup_overlay(client, instance_id="", cluster_cidr=CLUSTER, slice_cidr=SLICE)


async def test_attach_detach_reattach_over_ipc(daemon: Daemon) -> None:
    client = await daemon.serve()
    await setup(client)
    svc = await client.setup_service_overlay("web", "shared")
    attached = await client.attach_container(
        win("c1"), "web", dns_server="10.200.0.1", dns_domain="prod.local"
    )
    assert isinstance(attached, p.AttachedResponse)
    assert attached.namespace_guid is not None
    assert attached.namespace_guid == attached.namespace_guid.lower()
    base = daemon.marker().get("base")
    assert base is not None and base.name == "zlayer-overlay" and base.subnet == SLICE
    assert list(daemon.networks()) == [base.id]
    net = daemon.networks()[base.id]
    assert net["Type"] == "Internal"
    assert net["Ipams"] == [
        {
            "Type": "Static",
            "Subnets": [
                {
                    "IpAddressPrefix": SLICE,
                    "Routes": [{"NextHop": "10.200.0.1", "DestinationPrefix": "0.0.0.0/0"}],
                }
            ],
        }
    ]
    ((ep_id, ep),) = daemon.endpoints().items()
    assert ep["Name"] == "overlayd-c1"
    assert ep["Owner"] == "overlayd"
    assert ep["HostComputeNetwork"].lower() == base.id
    assert ep["HostComputeNamespace"].lower() == attached.namespace_guid
    assert ep["IpConfigurations"] == [{"IpAddress": attached.ip, "PrefixLength": 20}]
    assert ep["Dns"] == {
        "Domain": "prod.local",
        "Search": ["prod.local"],
        "ServerList": ["10.200.0.1"],
    }
    assert ep["Routes"] == [{"NextHop": "10.200.0.1", "DestinationPrefix": "0.0.0.0/0"}]
    assert ep["Policies"] == [
        {"Type": "OutBoundNAT", "Settings": {"Exceptions": [CLUSTER]}},
        {"Type": "SDNRoute", "Settings": {"DestinationPrefix": CLUSTER, "NeedEncap": False}},
        {
            "Type": "ACL",
            "Settings": {
                "Action": "Allow",
                "Direction": "In",
                "RemoteAddresses": CLUSTER,
                "RuleType": "Switch",
                "Priority": 65500,
            },
        },
    ]
    assert svc.mode == "shared"
    assert ipaddress.ip_address(attached.ip) in ipaddress.ip_network(SLICE)
    ns = daemon.host_namespaces()[attached.namespace_guid]
    assert ns["Resources"] == [{"Type": "Endpoint", "Data": {"Id": ep_id}}]
    # Idempotent per handle: the same answer, no second endpoint.
    again = await client.attach_container(win("c1"), "web")
    assert isinstance(again, p.AttachedResponse) and again == attached
    assert len(daemon.endpoints()) == 1

    await client.detach_container(win("c1"))
    assert daemon.endpoints() == {}
    assert daemon.host_namespaces() == {}
    assert await client.list_leases("service:web") == []
    await client.detach_container(win("c1"))

    re = await client.attach_container(win("c1"), "web")
    assert isinstance(re, p.AttachedResponse)
    assert re.namespace_guid != attached.namespace_guid
    assert len(daemon.endpoints()) == 1 and len(daemon.host_namespaces()) == 1


async def test_dedicated_service_gets_its_own_network(daemon: Daemon) -> None:
    client = await daemon.serve()
    await setup(client)
    svc = await client.setup_service_overlay("db", "dedicated")
    entry = daemon.marker().get("service:db")
    assert entry is not None and entry.subnet == svc.subnet
    net = daemon.networks()[entry.id]
    assert net["Name"] == "zlayer-overlay-db"
    assert daemon.marker().get("base") is None
    attached = await client.attach_container(win("d1"), "db")
    assert isinstance(attached, p.AttachedResponse)
    (ep,) = daemon.endpoints().values()
    assert ep["HostComputeNetwork"].lower() == entry.id
    await client.teardown_service_overlay("db")
    assert daemon.networks() == {}
    assert daemon.endpoints() == {} and daemon.host_namespaces() == {}
    assert daemon.marker().get("service:db") is None


async def test_restart_reuses_network_by_marker_guid_then_sweeps_and_purges(
    daemon: Daemon,
) -> None:
    client = await daemon.serve()
    await setup(client)
    await client.setup_service_overlay("web", "shared")
    kept = await client.attach_container(win("keep"), "web")
    lost = await client.attach_container(win("lost"), "web")
    assert isinstance(kept, p.AttachedResponse) and isinstance(lost, p.AttachedResponse)
    base = daemon.marker().get("base")
    assert base is not None
    await daemon.stop()

    # While the daemon is down: a crash left an unrecorded endpoint+namespace of
    # ours, a foreign endpoint exists, and the "lost" container's endpoint vanished.
    sim = SimulatedHcn(daemon.state_dir)
    ghost_ns = sim.create_namespace(HostComputeNamespace(name="overlayd-ghost", owner="overlayd"))
    ghost = sim.create_endpoint(
        UUID(base.id),
        HostComputeEndpoint(
            name="overlayd-ghost",
            owner="overlayd",
            ip_configurations=[IpConfig(ip_address="10.200.4.200", prefix_length=20)],
        ),
    )
    assert ghost.id is not None and ghost_ns.id is not None
    sim.add_namespace_endpoint(ghost_ns.id, ghost.id)
    foreign = sim.create_endpoint(
        UUID(base.id),
        HostComputeEndpoint(
            name="zlayer-other", ip_configurations=[IpConfig(ip_address="10.200.4.201")]
        ),
    )
    lost_ep = next(eid for eid, e in daemon.endpoints().items() if e["Name"] == "overlayd-lost")
    sim.delete_endpoint(UUID(lost_ep))

    client = await daemon.serve()
    # Same network, found by the marker's GUID: nothing was created.
    assert list(daemon.networks()) == [base.id]
    assert daemon.marker().get("base") == base
    endpoints = daemon.endpoints()
    assert str(ghost.id) not in endpoints
    assert str(ghost_ns.id) not in daemon.host_namespaces()
    assert str(foreign.id) in endpoints
    names = sorted(e["Name"] for e in endpoints.values())
    assert names == ["overlayd-keep", "zlayer-other"]
    # The vanished attachment was released (and its namespace removed).
    attachments = await client.list_attachments()
    assert [a.handle for a in attachments] == [win("keep")]
    assert lost.namespace_guid not in daemon.host_namespaces()
    # A new service reuses the same network.
    await client.setup_service_overlay("api", "shared")
    await client.attach_container(win("a1"), "api")
    assert list(daemon.networks()) == [base.id]

    # The agent's graceful shutdown: only the global device goes; containers
    # keep their endpoints. Their own teardown removes them.
    await client.teardown_global_overlay()
    assert list(daemon.networks()) == [base.id]
    names = sorted(e["Name"] for e in daemon.endpoints().values())
    assert names == ["overlayd-a1", "overlayd-keep", "zlayer-other"]
    await client.teardown_service_overlay("api")
    await client.teardown_service_overlay("web")
    assert sorted(e["Name"] for e in daemon.endpoints().values()) == ["zlayer-other"]
    await daemon.stop()

    # Uninstall: purge removes the recorded network (and what is ours on it).
    uninstall = HcnDriver(api=SimulatedHcn(daemon.state_dir), data_dir=daemon.data_dir)
    assert uninstall.purge() == ["zlayer-overlay"]
    assert daemon.networks() == {}
    assert daemon.marker().networks == []
