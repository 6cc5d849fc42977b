"""Every configuration key appears in the configuration reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from overlayd.cluster.config import ClusterSettings
from overlayd.config import DaemonConfig
from overlayd.config import DnsSettings
from overlayd.config import EngineSettings
from overlayd.config import IpamSettings
from overlayd.config import MetricsSettings
from overlayd.config import NatSettings

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "configuration.rst").read_text()

TOP = [
    k
    for k in DaemonConfig.model_fields
    if k not in {"driver_settings", "dns", "ipam", "engine", "nat", "cluster", "metrics"}
]
TABLES: list[tuple[str, type[BaseModel]]] = [
    ("dns", DnsSettings),
    ("ipam", IpamSettings),
    ("engine", EngineSettings),
    ("nat", NatSettings),
    ("cluster", ClusterSettings),
    ("metrics", MetricsSettings),
]


@pytest.mark.parametrize("key", TOP)
def test_top_level_key_documented(key: str) -> None:
    assert f"``{key}``" in REFERENCE


@pytest.mark.parametrize(
    ("table", "key"), [(t, k) for t, model in TABLES for k in model.model_fields]
)
def test_table_key_documented(table: str, key: str) -> None:
    section = REFERENCE.split(f"``[{table}]``", 1)[1]
    assert f"``{key}``" in section.split("\n``[", 1)[0]


DRIVERS = {
    "fake": "overlayd_fake.driver:FakeDriver",
    "linux_bridge": "overlayd_linux_bridge.driver:LinuxBridgeDriver",
    "wireguard": "overlayd_wireguard.driver:WireGuardDriver",
    "hcn": "overlayd_hcn.driver:HcnDriver",
}


def _imported(target: str) -> Any:
    """The object named by ``module:name``."""
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _known_keys(name: str) -> list[str]:
    """The keys a driver accepts, from the error it gives for an unknown one."""
    import re

    from overlayd.config import EngineConfig
    from overlayd.errors import ConfigError

    driver = _imported(DRIVERS[name])()
    config = EngineConfig(driver_settings={name: {"no_such_key_xyz": 1}})
    with pytest.raises(ConfigError, match="no_such_key_xyz") as info:
        driver.overlayd_configure(config=config)
    match = re.search(r"known: ([\w, ]+)", str(info.value))
    assert match, str(info.value)
    return [k.strip() for k in match.group(1).split(",")]


OPTIONS = {
    "fake": "overlayd_fake.options:FakeOptions",
    "linux_bridge": "overlayd_linux_bridge.options:LinuxBridgeOptions",
    "wireguard": "overlayd_wireguard.options:WireGuardOptions",
    "hcn": "overlayd_hcn.options:HcnOptions",
}


def _options_model(name: str) -> type[BaseModel]:
    model: type[BaseModel] = _imported(OPTIONS[name])
    return model


def _shown(default: object) -> str:
    """A default as the reference writes it."""
    return f"{default:g}" if isinstance(default, float) else str(default)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_driver_options_reference_is_the_model(name: str) -> None:
    """The reference lists exactly the options model's fields, each with its default."""
    import re

    model = _options_model(name)
    section = REFERENCE.split(f"``[drivers.{name}]``", 1)[1].split("\n``[", 1)[0]
    documented = re.findall(r"^``(\w+)``$", section, re.MULTILINE)
    assert sorted(documented) == sorted(model.model_fields), f"[drivers.{name}]"
    assert sorted(_known_keys(name)) == sorted(model.model_fields)
    for key, field in model.model_fields.items():
        assert field.description, f"[drivers.{name}] {key} has no description in the model"
        entry = section.split(f"``{key}``\n", 1)[1].split("\n``", 1)[0]
        if field.default is not None:
            assert _shown(field.default) in entry, f"[drivers.{name}] {key}: default not shown"


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_driver_keys_documented(name: str) -> None:
    keys = _known_keys(name)
    assert keys
    section = REFERENCE.split(f"``[drivers.{name}]``", 1)[1].split("\n``[", 1)[0]
    for key in keys:
        assert f"``{key}``" in section, f"[drivers.{name}] {key} is not documented"
