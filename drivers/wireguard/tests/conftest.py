from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd_wireguard.fakeuapi import FakeUapiServer
from overlayd_wireguard.uapi import UapiClient


@pytest.fixture
def sock_dir(short_tmp_path: Path) -> Path:
    """A short private directory for UAPI sockets (sun_path is 108 bytes)."""
    return short_tmp_path


@pytest.fixture
def fake_server(sock_dir: Path) -> Iterator[FakeUapiServer]:
    """A running fake wireguard-go UAPI for device ``wgt0``."""
    with FakeUapiServer(sock_dir, "wgt0") as server:
        yield server


@pytest.fixture
def client(sock_dir: Path) -> UapiClient:
    return UapiClient(sock_dir, timeout=2.0)
