"""``[drivers.wireguard] socket_dir``: refused where wireguard-go cannot honour it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from overlayd.config import EngineConfig
from overlayd.errors import ConfigError
from overlayd.testing.daemon import serve_command
from overlayd_wireguard.driver import WireGuardDriver


def _configure(**options: object) -> WireGuardDriver:
    driver = WireGuardDriver()
    driver.overlayd_configure(
        config=EngineConfig(drivers=[], driver_settings={"wireguard": dict(options)})
    )
    return driver


@pytest.mark.parametrize(
    "command", ["wireguard-go", "/usr/bin/wireguard-go", ["nice", "wireguard-go"]]
)
def test_another_socket_dir_with_wireguard_go_is_refused(tmp_path: Path, command: object) -> None:
    with pytest.raises(ConfigError, match="always creates its UAPI sockets in /var/run/wireguard"):
        _configure(socket_dir=str(tmp_path), userspace_command=command)


@pytest.mark.parametrize(
    "socket_dir", ["/var/run/wireguard", "/var/run/wireguard/", "/run/wireguard"]
)
def test_the_directory_wireguard_go_uses_is_accepted(socket_dir: str) -> None:
    assert _configure(socket_dir=socket_dir).options.socket_dir == socket_dir


def test_another_userspace_program_may_use_its_own_directory(tmp_path: Path) -> None:
    driver = _configure(socket_dir=str(tmp_path), userspace_command="my-wireguard --uapi-dir x")
    assert driver.options.socket_dir == str(tmp_path)


def test_the_daemon_refuses_it_at_once_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[drivers]\nenabled = ["wireguard"]\n'
        f'[drivers.wireguard]\nsocket_dir = "{tmp_path}"\n[dns]\nenabled = false\n'
    )
    out = subprocess.run(
        serve_command("--config", str(config), "--socket", str(tmp_path / "s.sock"), "--in-memory"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "socket_dir" in out.stderr + out.stdout
    assert "/var/run/wireguard" in out.stderr + out.stdout
