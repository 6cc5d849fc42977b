"""The daemon's TOML configuration and how command-line flags override it."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlayd.cli import build_overlayd_parser
from overlayd.cli.overlayd import serve_config
from overlayd.config import DEFAULT_SOCKET
from overlayd.config import load_config
from overlayd.errors import ConfigError

FULL = """
socket = "/run/od/od.sock"
data_dir = "/var/lib/od"
socket_group = "zlayer"
allowed_uids = [1000, 1001]
allowed_gids = [50]
log_format = "json"
log_level = "debug"

[drivers]
enabled = ["linux_bridge", "wireguard"]

[drivers.wireguard]
backend = "userspace"
port_band = 256

[dns]
enabled = false
ttl = 30
listen = ["127.0.0.1:5353"]

[ipam]
service_prefix_v4 = 24

[engine]
mtu = 1380
peer_stale_secs = 60
health_interval_secs = 0.5
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "overlayd.toml"
    path.write_text(text)
    return path


@pytest.fixture
def platform_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the platform's drivers are installed (this env may have only core)."""
    import overlayd.plugins

    monkeypatch.setattr(
        overlayd.plugins, "installed_drivers", lambda: ["linux_bridge", "wireguard"]
    )


@pytest.mark.usefixtures("platform_installed")
def test_defaults_without_a_file_are_the_real_drivers_and_durable_state() -> None:
    config = load_config(None)
    assert config.socket == Path(DEFAULT_SOCKET)
    assert config.drivers == ["linux_bridge", "wireguard"]  # not the fake
    assert config.data_dir == Path("/var/lib/overlayd")  # not in memory
    assert config.in_memory is False
    assert config.log_format == "text"
    assert config.dns.enabled is True


def test_in_memory_and_fake_only_when_asked(tmp_path: Path) -> None:
    config = load_config(None, in_memory=True, drivers=["fake"])
    assert config.data_dir is None and config.drivers == ["fake"]
    config = load_config(_write(tmp_path, 'in_memory = true\ndrivers = ["fake"]\n'))
    assert config.data_dir is None
    with pytest.raises(ConfigError, match="in_memory and data_dir exclude each other"):
        load_config(None, in_memory=True, data_dir=tmp_path)


def test_missing_platform_drivers_are_refused_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import overlayd.plugins

    monkeypatch.setattr(overlayd.plugins, "installed_drivers", lambda: ["fake", "linux_bridge"])
    with pytest.raises(ConfigError, match=r"wireguard is not installed .*overlayd-wireguard"):
        load_config(None)
    # Naming the drivers skips the platform default (and its check).
    assert load_config(None, drivers=["fake"]).drivers == ["fake"]


def test_full_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, FULL))
    assert config.socket == Path("/run/od/od.sock")
    assert config.data_dir == Path("/var/lib/od")
    assert config.socket_group == "zlayer"
    assert config.allowed_uids == [1000, 1001]
    assert config.allowed_gids == [50]
    assert config.log_format == "json"
    assert config.log_level == "debug"
    assert config.drivers == ["linux_bridge", "wireguard"]
    assert config.driver_options("wireguard") == {"backend": "userspace", "port_band": 256}
    assert config.driver_options("linux_bridge") == {}
    assert config.dns.enabled is False
    assert config.dns.ttl == 30
    assert config.dns.listen == ["127.0.0.1:5353"]
    assert config.ipam.service_prefix_v4 == 24
    assert config.engine.mtu == 1380
    assert config.engine.health_interval_secs == 0.5


def test_drivers_as_a_plain_list(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, 'drivers = ["wireguard", "linux_bridge"]\n'))
    assert config.drivers == ["wireguard", "linux_bridge"]  # order kept
    assert config.driver_settings == {}


@pytest.mark.usefixtures("platform_installed")
def test_drivers_table_without_enabled_keeps_default_list(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[drivers.wireguard]\nbackend = "userspace"\n'))
    assert config.drivers == ["linux_bridge", "wireguard"]
    assert config.driver_options("wireguard") == {"backend": "userspace"}


def test_list_and_table_together_is_a_toml_error(tmp_path: Path) -> None:
    path = _write(tmp_path, 'drivers = ["fake"]\n[drivers.fake]\nstate_file = "x"\n')
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 1\n", "colour"),
        ("[engine]\nmtu = 1400\nturbo = true\n", "engine.turbo"),
        ("[dns]\nzonefile = 'x'\n", "dns.zonefile"),
        ('[drivers]\nenabled = ["fake"]\nextra = 1\n', "drivers.extra"),
    ],
)
def test_unknown_keys_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"unknown key `{key}`" in message
    assert str(path) in message


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, 'log_format = "xml"\n')
    with pytest.raises(ConfigError, match="`log_format`") as info:
        load_config(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(_write(tmp_path, 'drivers = ["fake", "fake"]\n'))


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_write(tmp_path, "socket = \n"))


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL)
    args = build_overlayd_parser().parse_args(
        [
            "serve",
            "--config",
            str(path),
            "--socket",
            "/tmp/flag.sock",
            "--data-dir",
            "/tmp/flagdata",
            "--driver",
            "fake",
            "--driver",
            "example",
            "--log-format",
            "text",
            "--allow-uid",
            "7",
        ]
    )
    config = serve_config(args)
    assert config.socket == Path("/tmp/flag.sock")
    assert config.data_dir == Path("/tmp/flagdata")
    assert config.drivers == ["fake", "example"]  # repeated --driver, in order
    assert config.log_format == "text"
    assert config.allowed_uids == [7]
    # Not given on the command line: the file's values stay.
    assert config.log_level == "debug"
    assert config.allowed_gids == [50]
    assert config.socket_group == "zlayer"
    assert config.driver_options("wireguard") == {"backend": "userspace", "port_band": 256}
    assert config.dns.enabled is False


def test_serve_reports_config_errors_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from overlayd.cli import overlayd_main

    path = _write(tmp_path, "bogus = 1\n")
    assert overlayd_main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key `bogus`" in err
    assert str(path) in err


def test_no_dns_flag_turns_the_dns_server_off(tmp_path: Path) -> None:
    path = _write(tmp_path, 'drivers = ["fake"]\n\n[dns]\nenabled = true\n')
    parser = build_overlayd_parser()
    assert serve_config(parser.parse_args(["serve", "--config", str(path)])).dns.enabled
    args = parser.parse_args(["serve", "--config", str(path), "--no-dns"])
    assert serve_config(args).dns.enabled is False


def test_event_loop_from_the_file_and_the_flag(tmp_path: Path) -> None:
    parser = build_overlayd_parser()
    path = _write(tmp_path, 'drivers = ["fake"]\nevent_loop = "uvloop"\n')
    assert serve_config(parser.parse_args(["serve", "--config", str(path)])).event_loop == "uvloop"
    args = parser.parse_args(["serve", "--config", str(path), "--event-loop", "asyncio"])
    assert serve_config(args).event_loop == "asyncio"
    assert load_config(None, drivers=["fake"]).event_loop == "asyncio"  # the default
    with pytest.raises(ConfigError, match="event_loop"):
        load_config(_write(tmp_path, 'event_loop = "trio"\n'))


def test_uvloop_when_it_is_not_installed_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from overlayd.cli.overlayd import event_loop_factory

    assert event_loop_factory("asyncio") is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'overlayd\[uvloop\]'"):
        event_loop_factory("uvloop")
