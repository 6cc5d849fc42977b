"""Drivers are found through real entry points, loaded by name, in order."""

from __future__ import annotations

from typing import Any

import pytest

from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.engine import Engine
from overlayd.errors import ConfigError
from overlayd.plugins import installed_drivers
from overlayd.plugins import load_drivers
from overlayd.plugins import make_plugin_manager
from overlayd.testing.conformance import AttachConformance
from overlayd.testing.conformance import LifecycleConformance
from overlayd.testing.conformance import PeerConformance


def test_installed_drivers_include_fake_and_third_party() -> None:
    names = installed_drivers()
    assert {"fake", "example"} <= set(names)


def test_load_by_name_in_configured_order() -> None:
    pm = make_plugin_manager()
    drivers = load_drivers(pm, ["example", "fake"])
    assert [d.name for d in drivers] == ["example", "fake"]  # type: ignore[attr-defined]
    # pluggy calls the first configured driver first
    impls = [i.plugin_name for i in pm.hook.overlayd_device_create.get_hookimpls()]
    assert impls[::-1][:2] == ["example", "fake"]


def test_unknown_driver_names_installed_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_drivers(make_plugin_manager(), ["fake", "nosuch"])
    message = str(info.value)
    assert "unknown driver(s) nosuch" in message
    assert "example" in message
    assert "fake" in message


def test_import_error_names_driver_and_missing_module() -> None:
    with pytest.raises(ConfigError) as info:
        load_drivers(make_plugin_manager(), ["example_broken"])
    message = str(info.value)
    assert "example_broken" in message
    assert "overlayd_missing_dependency" in message


def test_disable_env_var_blocks_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAYD_DISABLE_DRIVERS", "example")
    pm = make_plugin_manager()
    load_drivers(pm, ["example", "fake"])
    assert pm.get_plugin("example") is None
    assert pm.get_plugin("fake") is not None


async def test_engine_loads_third_party_driver_by_name() -> None:
    cfg = EngineConfig(drivers=["example", "fake"], dns=DnsSettings(enabled=False))
    async with Engine(cfg) as engine:
        await engine.setup_global_overlay(
            deployment="d", instance_id="i", cluster_cidr="10.220.0.0/16", wg_port=51820
        )
        svc = await engine.setup_service_overlay("web", "shared")
        # the bridge came from the first driver that creates bridges: example
        assert svc.bridge.driver == "example"
        assert svc.dedicated is None
        att = await engine.attach({"platform": "netns", "path": "/run/netns/x"}, "web")
        assert att.driver == "example"


def _load(name: str) -> Any:
    return load_drivers(make_plugin_manager(include_core_defaults=False), [name])[0]


class TestThirdPartyDriverThroughEntryPoint(AttachConformance, LifecycleConformance):
    @pytest.fixture
    def driver(self) -> Any:
        return _load("example")


class TestFakeThroughEntryPoint(PeerConformance, AttachConformance, LifecycleConformance):
    @pytest.fixture
    def driver(self) -> Any:
        return _load("fake")
