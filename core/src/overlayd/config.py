"""Configuration: the engine's settings and the daemon's TOML file.

The file has top-level keys ``socket``, ``data_dir``, ``in_memory``,
``drivers``, ``socket_group``, ``allowed_uids``, ``allowed_gids``,
``max_connections``, ``log_format``, ``log_level`` and the tables ``[dns]``,
``[ipam]``, ``[engine]``, ``[nat]``, ``[drivers.<name>]``, ``[cluster]``
(cluster mode, :mod:`overlayd.cluster.config`) and ``[metrics]``
(:mod:`overlayd.metrics`).

The daemon's defaults are a real data plane with durable state: without
``drivers`` it loads the platform's drivers (:func:`platform_drivers`; it
refuses to start, naming what to install, when they are missing), and
without ``data_dir`` it keeps its state in ``/var/lib/overlayd``. The fake
data plane runs only when ``drivers`` names ``fake``, and state stays in
memory only with ``in_memory = true`` (``--in-memory``). An embedded
:class:`EngineConfig` keeps the library defaults (the fake, in memory).

NOTE: TOML cannot hold both ``drivers = ["a", "b"]`` and a table
``[drivers.a]`` (the key would be defined twice). So ``drivers`` is either the
ordered list of driver names, or a table whose ``enabled`` key is that list and
whose sub-tables are the per-driver options::

    [drivers]
    enabled = ["linux_bridge", "wireguard"]

    [drivers.wireguard]
    backend = "userspace"

Unknown keys anywhere are an error naming the key and the file.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import ValidationError
from pydantic import field_validator
from pydantic import model_validator

from overlayd.cluster.config import ClusterSettings
from overlayd.errors import ConfigError
from overlayd.nat.config import NatSettings

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_SOCKET",
    "DaemonConfig",
    "DnsSettings",
    "EngineConfig",
    "EngineSettings",
    "IpamSettings",
    "MetricsSettings",
    "NatSettings",
    "load_config",
    "platform_drivers",
    "split_listen",
]

DEFAULT_SOCKET = "/var/run/zlayer-overlayd.sock"
#: Where ``overlayd serve`` keeps its state unless told otherwise.
DEFAULT_DATA_DIR = "/var/lib/overlayd"


def platform_drivers() -> list[str]:
    """The drivers ``overlayd serve`` loads when the configuration names none.

    Linux: ``linux_bridge`` (bridges, veth, NAT) and ``wireguard``; Windows:
    ``hcn`` and ``wireguard``.
    """
    windows = sys.platform == "win32"
    return ["hcn", "wireguard"] if windows else ["linux_bridge", "wireguard"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DnsSettings(_Settings):
    """The ``[dns]`` table: the built-in DNS server."""

    #: Run the built-in DNS server at all.
    enabled: bool = True
    #: Overlay zone; default ``<deployment>.local.`` once the global overlay is set up.
    zone: str | None = None
    #: TTL of answers in seconds (short, so moves propagate).
    ttl: int = Field(default=5, ge=0, le=86400)
    #: Forward queries outside the zone to the upstreams.
    forward: bool = True
    #: Upstream resolvers (``ip`` or ``ip:port``); default: the host's resolv.conf
    #: without loopback stubs.
    upstreams: list[str] = Field(default_factory=list)
    #: Extra listen addresses (``127.0.0.1:5353``, ``[::1]:53``), e.g. for the host.
    listen: list[str] = Field(default_factory=list)
    #: Also listen on every service bridge's gateway address.
    listen_on_gateways: bool = True
    #: Port used on the gateways.
    gateway_port: int = Field(default=53, gt=0, lt=65536)


class IpamSettings(_Settings):
    """The ``[ipam]`` table: how the node slice is divided.

    The node slice (``slice_cidr`` of ``setup_global_overlay``, else the whole
    cluster CIDR) holds the node's own address, the node pool (addresses of
    ``join_global`` containers) and, in the ``carved`` layout, the service
    subnets, so one AllowedIPs entry per node covers everything it hosts.
    ZLayer gives each service a /28 per node (13 containers); overlayd defaults
    to /22 (1,021 containers), and shrinks the blocks when the slice is too
    small to hold at least four of them. Small slices and Windows use other
    layouts (:mod:`overlayd.engine.layout`).
    """

    #: The driver that owns the node's address pools and service subnets: it
    #: answers the IPAM hooks for them (``Pool.driver``). ``None``: the built-in
    #: allocator and carving.
    driver: str | None = None

    #: Prefix length of a service subnet (IPv4).
    service_prefix_v4: int = Field(default=22, ge=8, le=30)
    #: Prefix length of a service subnet (IPv6).
    service_prefix_v6: int = Field(default=112, ge=64, le=126)
    #: Prefix length of a service subnet carved from the cluster CIDR outside
    #: the node slice (small slices; dedicated services on Windows): ZLayer's /28.
    outside_prefix_v4: int = Field(default=28, ge=8, le=30)
    #: The same for IPv6 (ZLayer's /120).
    outside_prefix_v6: int = Field(default=120, ge=64, le=126)


class MetricsSettings(_Settings):
    """The ``[metrics]`` table: Prometheus metrics (:mod:`overlayd.metrics`)."""

    #: ``host:port`` to serve ``/metrics`` on (e.g. ``127.0.0.1:9464``); ``None``: off.
    listen: str | None = None
    #: Most per-peer series (handshake age, bytes) in one scrape; peers beyond
    #: it are counted in ``overlayd_peer_series_dropped``.
    max_peer_series: int = Field(default=1024, ge=0)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ``ValueError`` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9464 or [::1]:9464)")
    return host.removeprefix("[").removesuffix("]"), int(port)


class EngineSettings(_Settings):
    """The ``[engine]`` table."""

    #: MTU of overlay devices and container interfaces (WireGuard overhead: 80).
    mtu: int = Field(default=1420, ge=576, le=65535)
    #: A peer without a handshake for this long (while traffic is expected) is unhealthy.
    peer_stale_secs: int = Field(default=180, ge=1)
    #: How often peer health is checked; 0 disables the checker.
    health_interval_secs: float = Field(default=30.0, ge=0)
    #: How often the periodic reconcile runs; 0 disables it.
    reconcile_interval_secs: float = Field(default=0.0, ge=0)
    #: Device kind of a service's segment: ``bridge`` (Linux) or ``hcn-network`` (Windows).
    segment_kind: str = "bridge"
    #: Worker threads for hook calls.
    workers: int = Field(default=16, ge=1, le=256)
    #: At stop, how long work in flight (a periodic reconcile, a request) may
    #: take to finish before the drivers shut down anyway; what is cut off is logged.
    stop_timeout_secs: float = Field(default=15.0, ge=0)


class EngineConfig(_Settings):
    """Everything the engine needs; embedders build this directly."""

    #: Directory for durable state; ``None`` keeps state in memory only.
    data_dir: Path | None = None
    #: Driver entry-point names, in call order.
    drivers: list[str] = Field(default_factory=lambda: ["fake"])
    #: ``[drivers.<name>]`` tables.
    driver_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    dns: DnsSettings = Field(default_factory=DnsSettings)
    ipam: IpamSettings = Field(default_factory=IpamSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    nat: NatSettings = Field(default_factory=NatSettings)

    def driver_options(self, name: str) -> Mapping[str, Any]:
        """The ``[drivers.<name>]`` table (empty when absent)."""
        return self.driver_settings.get(name, {})

    @field_validator("drivers")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise ValueError(f"driver {name!r} is listed twice")
            seen.add(name)
        return value


class DaemonConfig(EngineConfig):
    """The daemon's configuration: the engine's plus the socket and logging.

    Unlike an embedded engine's, the defaults are the platform's real drivers
    and durable state in :data:`DEFAULT_DATA_DIR`; ``in_memory`` keeps the state
    in memory (and excludes ``data_dir``).
    """

    drivers: list[str] = Field(default_factory=platform_drivers)
    data_dir: Path | None = Path(DEFAULT_DATA_DIR)
    #: Keep the state in memory only (lost at exit): tests and demos.
    in_memory: bool = False
    socket: Path = Path(DEFAULT_SOCKET)
    #: Group owning the socket (mode 0660); default ``zlayer`` when that group exists.
    socket_group: str | None = None
    #: Peers (SO_PEERCRED) allowed besides root.
    allowed_uids: list[int] = Field(default_factory=list)
    allowed_gids: list[int] = Field(default_factory=list)
    #: Client connections served at once; ``None``: derived from RLIMIT_NOFILE
    #: (see :func:`overlayd.connections.default_max_connections`).
    max_connections: int | None = Field(default=None, ge=1)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: The daemon's event loop: the standard library's, or uvloop's (the
    #: ``uvloop`` extra; docs/configuration.rst says what it measured).
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    #: ``[cluster]``: join a cluster through etcd (``None``: orchestrated mode).
    cluster: ClusterSettings | None = None
    #: ``[metrics]``: Prometheus metrics (off unless ``listen`` is set).
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="before")
    @classmethod
    def _memory(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("in_memory"):
            if data.get("data_dir") is not None:
                raise ValueError(
                    "in_memory and data_dir exclude each other: state is either in "
                    "memory or under data_dir"
                )
            data = {**data, "data_dir": None}
        return data


_TOP_KEYS = {
    "socket",
    "data_dir",
    "in_memory",
    "drivers",
    "socket_group",
    "allowed_uids",
    "allowed_gids",
    "max_connections",
    "log_format",
    "log_level",
    "event_loop",
    "dns",
    "ipam",
    "engine",
    "nat",
    "cluster",
    "metrics",
}


def _split_drivers(raw: Any, path: Path) -> tuple[list[str] | None, dict[str, dict[str, Any]]]:
    if raw is None:
        return None, {}
    if isinstance(raw, list):
        return [str(x) for x in raw], {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: `drivers` must be a list of names or a table")
    enabled = raw.get("enabled")
    tables: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key == "enabled":
            continue
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path}: unknown key `drivers.{key}` (expected `enabled` or a "
                f"[drivers.<name>] table)"
            )
        tables[key] = value
    if enabled is not None and not isinstance(enabled, list):
        raise ConfigError(f"{path}: `drivers.enabled` must be a list of driver names")
    return ([str(x) for x in enabled] if enabled is not None else None), tables


def load_config(path: Path | None, **overrides: Any) -> DaemonConfig:
    """Read the TOML file at ``path`` (if any) and apply command-line ``overrides``.

    ``overrides`` with value ``None`` are ignored, so callers can pass every
    flag unconditionally. Flags win over the file.
    """
    data: dict[str, Any] = {}
    where = path or Path("<command line>")
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where}: unknown key `{key}`")
    names, tables = _split_drivers(data.pop("drivers", None), where)
    if names is not None:
        data["drivers"] = names
    data["driver_settings"] = tables
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    try:
        config = DaemonConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{where}: unknown key `{loc}`") from None
        if not loc:
            raise ConfigError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
        raise ConfigError(f"{where}: `{loc}`: {first['msg']}") from None
    if "drivers" not in data:
        _check_platform_drivers(config.drivers)
    return config


def _check_platform_drivers(names: list[str]) -> None:
    """Refuse, naming what to install, when the default drivers are not installed."""
    from overlayd.plugins import installed_drivers

    installed = installed_drivers()
    missing = [n for n in names if n not in installed]
    if missing:
        packages = ", ".join(f"overlayd-{n.replace('_', '-')}" for n in missing)
        raise ConfigError(
            f"no drivers are configured, so overlayd serves this platform's real data plane "
            f"({', '.join(names)}), but {', '.join(missing)} is not installed (install "
            f"{packages}); or name the drivers to use (`drivers` in the file, --driver; "
            "`--driver fake` for an in-memory test data plane)"
        )
