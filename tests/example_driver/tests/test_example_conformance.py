"""The example driver, as a third party would test it: a few lines."""

from __future__ import annotations

import pytest
from overlayd_example.driver import ExampleDriver
from overlayd_example.ipam import ExampleIpam

from overlayd.testing.conformance import AttachConformance
from overlayd.testing.conformance import IpamConformance
from overlayd.testing.conformance import LifecycleConformance


class TestExampleDriver(AttachConformance, LifecycleConformance):
    @pytest.fixture
    def driver(self) -> ExampleDriver:
        return ExampleDriver()


class TestExampleIpam(IpamConformance):
    """The IPAM driver takes over the kit's pool and passes the IPAM part."""

    @pytest.fixture
    def driver(self) -> ExampleIpam:
        return ExampleIpam()
