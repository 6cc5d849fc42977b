"""Every configuration key appears in the configuration reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from overlayd.config import DaemonConfig
from overlayd.config import DnsSettings
from overlayd.config import EngineSettings
from overlayd.config import IpamSettings

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "configuration.rst").read_text()

TOP = [
    k for k in DaemonConfig.model_fields if k not in {"driver_settings", "dns", "ipam", "engine"}
]
TABLES: list[tuple[str, type[BaseModel]]] = [
    ("dns", DnsSettings),
    ("ipam", IpamSettings),
    ("engine", EngineSettings),
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
