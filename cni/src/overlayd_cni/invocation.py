"""One plugin invocation: the ``CNI_*`` environment and the network configuration.

:func:`parse` checks everything before the daemon is asked anything, so bad
input ends in a CNI error and changes nothing. The plugin's own keys in the
network configuration (all optional):

``socket``
    The daemon's socket (default ``/var/run/zlayer-overlayd.sock``).
``service``
    The service overlay to attach to (default: the network's ``name``).
``mode``
    ``auto``, ``shared`` or ``dedicated``: the mode in which ``ADD`` creates
    the service overlay when it does not exist yet (default ``auto``).
``createService``
    ``false``: never create the service overlay; ``ADD`` fails until the
    orchestrator has set it up (default ``true``).
``defaultRoute``
    ``false``: no default route in the container, only the cluster CIDR via
    the service gateway. Default: a default route unless ``prevResult``
    already has one of the address's family (overlayd chained after another
    interface plugin).
``timeout``
    Seconds to wait for the daemon's answer (default 30).
``dns``
    The specification's ``dns`` object, merged into the result after the
    daemon's own resolver (overlayd's DNS server on the gateway, its zone).

``ipam`` and ``ipMasq: true`` are refused (code 2): overlayd allocates the
addresses itself, and NAT is the node's, set with ``setup_global_overlay``.
"""

from __future__ import annotations

import json
import os
import re

from overlayd.rawclient import DEFAULT_SOCKET
from overlayd_cni import SUPPORTED_VERSIONS
from overlayd_cni.errors import DECODING_FAILURE
from overlayd_cni.errors import INCOMPATIBLE_VERSION
from overlayd_cni.errors import INVALID_CONFIG
from overlayd_cni.errors import INVALID_ENVIRONMENT
from overlayd_cni.errors import UNSUPPORTED_FIELD
from overlayd_cni.errors import CniError

# ``typing`` is not imported at run time: a CNI plugin pays for every import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO
    from typing import Any


#: Operations, and the environment variables each one needs.
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}
#: The specification's rule for container ids and network names.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_MODES = ("auto", "shared", "dedicated")


class Invocation:
    """A parsed, checked invocation (``CNI_COMMAND`` and everything it needs)."""

    command: str
    cni_version: str
    container_id: str
    netns: str
    ifname: str
    name: str
    service: str
    socket: str
    mode: str | None
    default_route: bool | None
    timeout: float
    dns: dict[str, Any]
    prev_result: dict[str, Any] | None
    valid_attachments: list[tuple[str, str]]
    config: dict[str, Any]
    #: Where notes for people go (``None``: this process's standard error).
    notes: IO[str] | None

    def __init__(self, command: str, cni_version: str) -> None:
        self.command = command
        self.cni_version = cni_version
        self.container_id = self.netns = self.ifname = self.name = self.service = ""
        self.socket = DEFAULT_SOCKET
        self.mode = "auto"
        self.default_route = None
        self.timeout = 30.0
        self.dns = {}
        self.prev_result = None
        self.valid_attachments = []
        self.config = {}
        self.notes = None


def command_of(env: dict[str, str]) -> str:
    """``CNI_COMMAND``, checked."""
    command = env.get("CNI_COMMAND", "")
    if command not in REQUIRED_ENV:
        raise CniError(
            INVALID_ENVIRONMENT,
            "invalid CNI_COMMAND",
            f"CNI_COMMAND is {command!r}; expected one of {', '.join(REQUIRED_ENV)}",
        )
    return command


def decode(stdin: bytes) -> dict[str, Any]:
    """The network configuration object from standard input."""
    try:
        config = json.loads(stdin)
    except ValueError as exc:
        raise CniError(
            DECODING_FAILURE,
            "the network configuration is not JSON",
            f"standard input must hold the network configuration as a JSON object: {exc}",
        ) from None
    if not isinstance(config, dict):
        raise CniError(
            DECODING_FAILURE,
            "the network configuration is not a JSON object",
            f"standard input holds a JSON {type(config).__name__}",
        )
    return config


def parse(command: str, env: dict[str, str], config: dict[str, Any]) -> Invocation:
    """Check the environment and configuration of ``command``; raise :class:`CniError`."""
    version = config.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            f"cniVersion {version!r} is not supported; overlayd-cni speaks "
            f"{', '.join(SUPPORTED_VERSIONS)}",
        )
    inv = Invocation(command, str(version))
    inv.config = config
    _environment(inv, env)
    name = config.get("name")
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise CniError(
            INVALID_CONFIG,
            "invalid network name",
            f"'name' is {name!r}; it must start with a letter or digit and continue "
            "with letters, digits, '_', '.' or '-'",
        )
    inv.name = name
    inv.service = _string(config, "service", name)
    inv.socket = _string(config, "socket", DEFAULT_SOCKET)
    mode = _string(config, "mode", "auto")
    if mode not in _MODES:
        raise CniError(
            INVALID_CONFIG, "invalid 'mode'", f"'mode' is {mode!r}; use {', '.join(_MODES)}"
        )
    inv.mode = mode if _boolean(config, "createService", True) else None
    if "defaultRoute" in config:
        inv.default_route = _boolean(config, "defaultRoute", True)
    timeout = config.get("timeout", 30)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < float("inf")  # also NaN, which json reads
    ):
        raise CniError(
            INVALID_CONFIG, "invalid 'timeout'", f"'timeout' is {timeout!r}; give seconds > 0"
        )
    inv.timeout = float(timeout)
    inv.dns = _object(config, "dns")
    if "ipam" in config:
        raise CniError(
            UNSUPPORTED_FIELD,
            "unsupported field 'ipam'",
            f"'ipam' is {json.dumps(config['ipam'])}: overlayd allocates the addresses "
            "itself (durable leases); remove the 'ipam' section",
        )
    if config.get("ipMasq") is True:
        raise CniError(
            UNSUPPORTED_FIELD,
            "unsupported field 'ipMasq'",
            "'ipMasq' is true: masquerading is set for the whole node "
            "(setup_global_overlay nat_enabled), not per network; remove it",
        )
    prev = config.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "invalid prevResult", "'prevResult' must be an object")
    inv.prev_result = prev or None
    if command == "GC":
        inv.valid_attachments = _valid_attachments(config)
    return inv


def _environment(inv: Invocation, env: dict[str, str]) -> None:
    missing = [k for k in REQUIRED_ENV[inv.command] if not env.get(k)]
    if missing:
        raise CniError(
            INVALID_ENVIRONMENT,
            "missing environment variables",
            f"{inv.command} needs {', '.join(missing)} (set by the container runtime)",
        )
    inv.container_id = env.get("CNI_CONTAINERID", "")
    inv.netns = env.get("CNI_NETNS", "")
    inv.ifname = env.get("CNI_IFNAME", "")
    if inv.container_id and not _ID.fullmatch(inv.container_id):
        raise CniError(
            INVALID_ENVIRONMENT,
            "invalid CNI_CONTAINERID",
            f"CNI_CONTAINERID {inv.container_id!r} must start with a letter or digit and "
            "continue with letters, digits, '_', '.' or '-'",
        )
    name = inv.ifname
    if name and (
        name in (".", "..")
        or len(name.encode()) > 15
        or any(c in "/:" or c.isspace() for c in name)
    ):
        raise CniError(
            INVALID_ENVIRONMENT,
            "invalid CNI_IFNAME",
            f"CNI_IFNAME {name!r} is not an interface name: at most 15 bytes, "
            "not '.' or '..', no '/', ':' or whitespace",
        )
    if inv.netns and not os.path.isabs(inv.netns):
        raise CniError(
            INVALID_ENVIRONMENT,
            "invalid CNI_NETNS",
            f"CNI_NETNS {inv.netns!r} must be an absolute path to a network namespace",
        )


def _string(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or not value:
        raise CniError(
            INVALID_CONFIG, f"invalid {key!r}", f"{key!r} is {value!r}; it must be a string"
        )
    return value


def _boolean(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise CniError(
            INVALID_CONFIG, f"invalid {key!r}", f"{key!r} is {value!r}; use true or false"
        )
    return value


def _object(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise CniError(
            INVALID_CONFIG, f"invalid {key!r}", f"{key!r} is {value!r}; it must be an object"
        )
    return value


def _valid_attachments(config: dict[str, Any]) -> list[tuple[str, str]]:
    key = "cni.dev/valid-attachments"
    raw = config.get(key, [])
    problem = f"{key!r} must be a list of objects with 'containerID' and 'ifname' strings"
    if not isinstance(raw, list):
        raise CniError(INVALID_CONFIG, f"invalid {key!r}", problem)
    out: list[tuple[str, str]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise CniError(INVALID_CONFIG, f"invalid {key!r}", problem)
        cid, ifname = item.get("containerID"), item.get("ifname")
        if not isinstance(cid, str) or not isinstance(ifname, str):
            raise CniError(INVALID_CONFIG, f"invalid {key!r}", f"{problem}; got {item!r}")
        out.append((cid, ifname))
    return out
