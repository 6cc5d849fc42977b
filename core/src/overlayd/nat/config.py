"""The ``[nat]`` table: NAT traversal settings."""

from __future__ import annotations

import ipaddress
from typing import Annotated
from typing import Literal
from urllib.parse import parse_qs
from urllib.parse import urlsplit

from pydantic import AfterValidator
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import model_validator

__all__ = ["NatSettings", "TurnServer", "split_host_port"]

STUN_PORT = 3478


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or (with ``default_port``) a bare host -> (host, port)."""
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: an IPv6 address needs the form '[addr]:port'")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif value.count(":") > 1:
        raise ValueError(f"{text!r}: write an IPv6 address as '[addr]:port'")
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r} has no ':port'")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: port {port_text!r} is not in 1..65535")
    return host, int(port_text)


def _stun_server(value: str) -> str:
    split_host_port(value, STUN_PORT)
    return value


StunServer = Annotated[str, AfterValidator(_stun_server)]


class TurnServer(BaseModel):
    """One ``[[nat.turn_servers]]`` entry: a TURN server with long-term credentials."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``turn:host[:port][?transport=udp]`` (RFC 7065); only UDP is supported.
    url: str
    username: str = Field(min_length=1)
    credential: str = Field(min_length=1, repr=False)

    @model_validator(mode="after")
    def _check_url(self) -> TurnServer:
        self.address()
        return self

    def address(self) -> tuple[str, int]:
        """The server's ``(host, port)``; raises ValueError for an unusable URL."""
        parts = urlsplit(self.url)
        if parts.scheme != "turn":
            raise ValueError(
                f"turn server url {self.url!r} must start with 'turn:' "
                "('turns:' (TLS) is not supported)"
            )
        query = parse_qs(parts.query)
        transport = query.get("transport", ["udp"])[0]
        if transport != "udp":
            raise ValueError(
                f"turn server url {self.url!r}: transport={transport} is not supported, only UDP"
            )
        return split_host_port(parts.path, STUN_PORT)

    def is_numeric(self) -> bool:
        host, _ = self.address()
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True


class NatSettings(BaseModel):
    """The ``[nat]`` table.

    NAT traversal runs for the global overlay when it was set up with
    ``nat_enabled: true`` and ``enabled`` is true here. No server is
    contacted unless it is listed: without STUN and TURN servers only host
    candidates are offered.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Run NAT traversal for overlays set up with ``nat_enabled``.
    enabled: bool = True
    #: STUN servers (``host:port``, port 3478 when omitted) asked for this node's mapping.
    stun_servers: list[StunServer] = Field(default_factory=list)
    #: TURN servers for relayed paths, tried in order.
    turn_servers: list[TurnServer] = Field(default_factory=list)
    #: Seconds between re-probes of the candidates and of each peer's path.
    refresh: float = Field(default=25.0, ge=1.0, le=3600.0)
    #: Seconds connectivity checks towards a peer's candidates go on before
    #: the peer is left on its relay (or without a path) until the next refresh.
    punch_timeout: float = Field(default=5.0, gt=0.0, le=120.0)
    #: What moves relayed datagrams: ``native`` (a small C forwarder, built on
    #: first use with the system's C compiler), ``python``, or ``auto``
    #: (native when it builds, else Python).
    relay_forwarder: Literal["auto", "native", "python"] = "auto"
