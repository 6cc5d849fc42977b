"""The hcn driver passes the overlayd conformance kit on the HCN simulator."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import WindowsContainerHandle
from overlayd.testing.conformance import AttachConformance
from overlayd.testing.conformance import LifecycleConformance
from overlayd_hcn.driver import HcnDriver
from overlayd_hcn.simulator import SimulatedHcn

#: The cluster CIDR both segments are carved from.
CLUSTER = "10.252.0.0/16"


def _segment(name: str, owner: str, cidr: str, options: dict[str, str]) -> DeviceSpec:
    """An HCN network on ``cidr``, its gateway the first address."""
    subnet = ipaddress.ip_network(cidr)
    return DeviceSpec(
        kind=DeviceKind.HCN_NETWORK,
        name=name,
        owner=owner,
        addresses=(ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}"),),
        mtu=1420,
        subnet=subnet,
        options=options,
    )


class TestHcnConformance(AttachConformance, LifecycleConformance):
    """DeviceConformance comes in through both mixins."""

    @pytest.fixture
    def driver(self) -> Iterator[HcnDriver]:
        sim = SimulatedHcn()
        yield HcnDriver(api=sim, sleep=lambda _s: None)
        assert sim.service.live_handles == {}, "the driver left HCN handles open"

    @pytest.fixture
    def device_spec(self) -> DeviceSpec:
        options = {
            "mode": "shared",
            "deployment": "conf",
            "instance_id": "",
            "cluster_cidr": CLUSTER,
            "slice_cidr": "10.252.0.0/20",
            "node_ip": "10.252.0.1",
        }
        return _segment("zl-conf-b", "service:conf", "10.252.4.0/22", options)

    @pytest.fixture
    def attach_handle(self) -> WindowsContainerHandle:
        return WindowsContainerHandle(container_id="conformance-1")


class TestHcnDedicatedConformance(TestHcnConformance):
    """The same kit with a dedicated-mode segment (its own HCN network)."""

    @pytest.fixture
    def device_spec(self) -> DeviceSpec:
        options = {"mode": "dedicated", "cluster_cidr": CLUSTER}
        return _segment("zl-conf-d", "service:confd", "10.252.8.0/22", options)
