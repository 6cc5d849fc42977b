"""The example driver, as a third party would test it: a few lines."""

from __future__ import annotations

import pytest
from overlayd_example.driver import ExampleDriver

from overlayd.testing.conformance import AttachConformance
from overlayd.testing.conformance import LifecycleConformance


class TestExampleDriver(AttachConformance, LifecycleConformance):
    @pytest.fixture
    def driver(self) -> ExampleDriver:
        return ExampleDriver()
