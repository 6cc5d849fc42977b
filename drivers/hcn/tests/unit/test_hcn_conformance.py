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


class TestHcnConformance(AttachConformance, LifecycleConformance):
    """DeviceConformance comes in through both mixins."""

    @pytest.fixture
    def driver(self) -> Iterator[HcnDriver]:
        sim = SimulatedHcn()
        yield HcnDriver(api=sim, sleep=lambda _s: None)
        assert sim.service.live_handles == {}, "the driver left HCN handles open"

    @pytest.fixture
    def device_spec(self) -> DeviceSpec:
        return DeviceSpec(
            kind=DeviceKind.HCN_NETWORK,
            name="zl-conf-b",
            owner="service:conf",
            addresses=(ipaddress.ip_interface("10.252.4.1/22"),),
            mtu=1420,
            subnet=ipaddress.ip_network("10.252.4.0/22"),
            options={
                "mode": "shared",
                "deployment": "conf",
                "instance_id": "",
                "cluster_cidr": "10.252.0.0/16",
                "slice_cidr": "10.252.0.0/20",
                "node_ip": "10.252.0.1",
            },
        )

    @pytest.fixture
    def attach_handle(self) -> WindowsContainerHandle:
        return WindowsContainerHandle(container_id="conformance-1")


class TestHcnDedicatedConformance(TestHcnConformance):
    """The same kit with a dedicated-mode segment (its own HCN network)."""

    @pytest.fixture
    def device_spec(self) -> DeviceSpec:
        return DeviceSpec(
            kind=DeviceKind.HCN_NETWORK,
            name="zl-conf-d",
            owner="service:confd",
            addresses=(ipaddress.ip_interface("10.252.8.1/22"),),
            mtu=1420,
            subnet=ipaddress.ip_network("10.252.8.0/22"),
            options={"mode": "dedicated", "cluster_cidr": "10.252.0.0/16"},
        )
