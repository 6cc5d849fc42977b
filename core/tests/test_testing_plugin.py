"""The fixtures overlayd.testing ships work as documented."""

from __future__ import annotations

from typing import Any

import pytest

from overlayd.testing.conformance import check_driver
from overlayd.testing.plugin import HookRecorder


async def test_fake_engine_and_hook_recorder(fake_engine: Any, hook_recorder: HookRecorder) -> None:
    hook_recorder.attach(fake_engine.pm)
    await fake_engine.setup_global_overlay(
        deployment="t", instance_id="i", cluster_cidr="10.230.0.0/16", wg_port=51820
    )
    names = hook_recorder.names()
    assert "overlayd_device_create" in names
    assert "overlayd_ipam_pool_create" in names
    (call,) = hook_recorder.getcalls("overlayd_device_create")
    assert call.kwargs["spec"].name == "zl-t-i-g"


def test_make_hooks_builds_a_facade(make_hooks: Any, fake_driver: Any) -> None:
    hooks = make_hooks(fake_driver)
    assert [info.name for info in hooks.describe()] == ["fake"]


def test_check_driver_reports_problems(fake_driver: Any) -> None:
    assert check_driver(fake_driver) == []

    class Nameless:
        pass

    assert check_driver(Nameless()) == ["driver does not implement overlayd_describe"]


def test_privileged_tests_skip_without_flag_and_run_with_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.privileged
        def test_needs_root():
            pass
        """
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    skipped = pytester.runpytest_subprocess("-p", "overlayd.testing.plugin")
    skipped.assert_outcomes(skipped=1)
    import overlayd.testing.plugin as plugin

    if plugin._has_net_admin():
        ran = pytester.runpytest_subprocess("-p", "overlayd.testing.plugin", "--run-privileged")
        ran.assert_outcomes(passed=1)


def test_the_ipam_kit_skips_only_its_own_tests(pytester: pytest.Pytester) -> None:
    """A driver without IPAM that takes every mixin (as the fake driver's test
    does) still runs the device tests; only the IPAM ones skip."""
    pytester.makepyfile(
        """
        import pytest
        from overlayd.testing.conformance import DeviceConformance, IpamConformance
        from overlayd_fake.driver import FakeDriver

        class TestMixed(DeviceConformance, IpamConformance):
            @pytest.fixture
            def driver(self):
                return FakeDriver()

            @pytest.fixture
            def capabilities(self, info):
                from overlayd.model import Capability
                return info.capabilities - {Capability.IPAM}
        """
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_subprocess("-p", "overlayd.testing.plugin", "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= 5, result.stdout.str()
    skips = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    assert skips and all("ipam capability" in line for line in skips), skips
    assert all("_ipam.py" in line for line in skips), skips
