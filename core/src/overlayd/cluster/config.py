"""The ``[cluster]`` table: cluster mode through etcd (see ``docs/cluster.rst``).

This module imports nothing beyond pydantic, so ``overlayd.config`` can load
and check a ``[cluster]`` table on a machine without the ``cluster`` extra;
the etcd client is imported only when the daemon joins.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import ValidationInfo
from pydantic import field_validator
from pydantic import model_validator

from overlayd.model import IPNetwork

__all__ = ["NODE_NAME_RE", "ClusterSettings", "default_node_name"]

#: Node names: one DNS label (they appear in etcd keys and in ``overlayctl cluster``).
NODE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PREFIX_RE = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
#: Field -> the pattern its value must match, and what a mismatch says (``{value}``).
_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "prefix": (
        _PREFIX_RE,
        "prefix {value!r} must start with '/', have no trailing '/' and use only "
        "letters, digits, '_', '-', '.'",
    ),
    "name": (
        NODE_NAME_RE,
        "node name {value!r} must be one DNS label: 1-63 lower-case letters, "
        "digits or '-', not starting or ending with '-'",
    ),
}


def default_node_name() -> str:
    """The host name, lower-cased, up to its first dot (``name`` default)."""
    return socket.gethostname().split(".", 1)[0].lower()


class ClusterSettings(BaseModel):
    """The ``[cluster]`` table. Present: the node joins the cluster on ``serve``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The distributed store; only etcd v3 is supported.
    backend: Literal["etcd"] = "etcd"
    #: etcd client URLs (``http://10.0.0.1:2379``, ``https://etcd.example:2379``).
    endpoints: list[str] = Field(min_length=1)
    #: Key prefix of every key overlayd writes.
    prefix: str = "/overlayd"
    #: This node's name (default: the host name); unique in the cluster.
    name: str = Field(default_factory=default_node_name)
    #: Underlay address peers dial (default: the address of the default route's interface).
    advertise: str | None = None
    #: The cluster CIDR: IPv4 (or IPv6), optionally a second, IPv6, one.
    cluster_cidr: tuple[IPNetwork, ...]
    #: Prefix length of a node's slice of an IPv4 cluster CIDR.
    slice_prefix: int = Field(default=24, ge=8, le=28)
    #: Prefix length of a node's slice of an IPv6 cluster CIDR.
    slice_prefix6: int = Field(default=64, ge=16, le=124)
    #: The WireGuard port of the global device (peers dial ``advertise:wg_port``).
    wg_port: int = Field(default=51820, gt=0, lt=65536 - 256)
    #: Lease time-to-live in seconds: a node silent this long leaves every peer set.
    ttl: int = Field(default=15, ge=3, le=3600)
    #: Deployment name shared by every node: the DNS zone is ``<deployment>.local.``.
    deployment: str = Field(
        default="overlay", pattern=r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
    )
    #: ``persistent_keepalive`` of the peers the cluster programs (0: off).
    keepalive_secs: int = Field(default=25, ge=0, le=65535)
    #: Outbound NAT (masquerade) for the node's slice, as ``nat_enabled`` of
    #: ``setup_global_overlay``; with ``[nat] enabled`` also NAT traversal, its
    #: candidates carried in the node record (``overlayd.cluster.exchange``).
    nat: bool = False
    #: CA bundle that signs the etcd servers' certificates (``https`` endpoints).
    ca_file: Path | None = None
    #: Client certificate for etcd (with ``key_file``).
    cert_file: Path | None = None
    #: Private key of ``cert_file``.
    key_file: Path | None = None

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"endpoint {url!r} is not an http:// or https:// URL")
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise ValueError(f"endpoint {url!r} has an invalid port") from None
            if parts.path not in ("", "/"):
                raise ValueError(f"endpoint {url!r} must not have a path")
        return value

    @field_validator(*_PATTERNS)
    @classmethod
    def _matches(cls, value: str, info: ValidationInfo) -> str:
        pattern, problem = _PATTERNS[info.field_name or ""]
        if not pattern.match(value):
            raise ValueError(problem.format(value=value))
        return value

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"advertise {value!r} is not an IP address") from None

    @field_validator("cluster_cidr", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not 1 <= len(value) <= 2:
            raise ValueError("cluster_cidr must be one CIDR or a list of two (IPv4, then IPv6)")
        out = []
        for item in value:
            try:
                out.append(ipaddress.ip_network(str(item), strict=True))
            except ValueError as exc:
                raise ValueError(f"cluster_cidr {item!r}: {exc}") from None
        if len(out) == 2 and (out[0].version, out[1].version) != (4, 6):
            raise ValueError("with two cluster CIDRs the first is IPv4 and the second IPv6")
        return tuple(out)

    @model_validator(mode="after")
    def _fits(self) -> ClusterSettings:
        for net in self.cluster_cidr:
            want = self.slice_length(net)
            if want <= net.prefixlen:
                raise ValueError(
                    f"slice prefix /{want} must be longer than cluster_cidr {net} "
                    f"(/{net.prefixlen})"
                )
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        tls = any(u.startswith("https://") for u in self.endpoints)
        if not tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file, cert_file and key_file need https:// endpoints")
        return self

    def slice_length(self, net: IPNetwork) -> int:
        """The prefix length of a slice of ``net``."""
        return self.slice_prefix if net.version == 4 else self.slice_prefix6
