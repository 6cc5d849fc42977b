"""The fake driver passes the whole conformance kit."""

from __future__ import annotations

import pytest

from overlayd.testing.conformance import AttachConformance
from overlayd.testing.conformance import IpamConformance
from overlayd.testing.conformance import LifecycleConformance
from overlayd.testing.conformance import NatConformance
from overlayd.testing.conformance import PeerConformance
from overlayd_fake.driver import FakeDriver


class TestFakeDriver(
    PeerConformance,
    AttachConformance,
    IpamConformance,
    NatConformance,
    LifecycleConformance,
):
    @pytest.fixture
    def driver(self) -> FakeDriver:
        return FakeDriver()


class TestFakeDriverPlanningAttaches(AttachConformance):
    """With ``plan_attach`` the fake answers ``overlayd_attach_plan`` and keeps its plans."""

    @pytest.fixture
    def driver(self) -> FakeDriver:
        return FakeDriver(plan_attach=True)
