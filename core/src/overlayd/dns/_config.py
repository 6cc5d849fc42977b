"""Configuration of the embedded DNS server and the address strings it accepts."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Final
from typing import NamedTuple

import dns.exception
import dns.name
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import field_validator

from overlayd.errors import InvalidRequest

__all__ = [
    "DnsConfig",
    "HostPort",
    "parse_hostport",
    "upstreams_from_resolv_conf",
]

logger = logging.getLogger(__name__)

RESOLV_CONF: Final = Path("/etc/resolv.conf")


class HostPort(NamedTuple):
    """A parsed ``ip``, ``ip:port`` or ``[ipv6]:port`` string."""

    #: Address text as given to ``bind()``/``connect()`` (may carry an IPv6 ``%scope``).
    host: str
    port: int
    #: 4 or 6.
    version: int

    def __str__(self) -> str:
        if self.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_hostport(text: str, default_port: int = 53) -> HostPort:
    """Parse ``ip``, ``ip:port``, ``[ipv6]`` or ``[ipv6]:port`` (InvalidRequest)."""
    s = text.strip()
    port = default_port
    if s.startswith("["):
        host, sep, rest = s[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidRequest(f"DNS address {text!r} is not valid; write IPv6 as '[addr]:port'.")
        if rest:
            port = _parse_port(text, rest[1:])
    elif s.count(":") == 1:
        host, _, port_text = s.partition(":")
        port = _parse_port(text, port_text)
    else:
        host = s  # bare IPv4, or bare IPv6 without a port
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidRequest(
            f"DNS address {text!r} does not contain an IP address; "
            "use 'ip', 'ip:port' or '[ipv6]:port' (host names are not resolved)."
        ) from None
    # ip_address() keeps an IPv6 scope id; str() gives it back for bind()/connect().
    return HostPort(str(addr), port, addr.version)


def _parse_port(text: str, port_text: str) -> int:
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise InvalidRequest(f"DNS address {text!r} has an invalid port; use a number 0-65535.")
    return int(port_text)


def upstreams_from_resolv_conf(path: Path = RESOLV_CONF) -> list[str]:
    """Name servers listed in ``path``, without loopback stubs (127.0.0.53, ::1).

    A loopback stub such as systemd-resolved's 127.0.0.53 is not reachable from
    a container namespace and would often be ourselves, so it is left out. A
    missing or unreadable file gives an empty list (forwarding is then off).
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        logger.info("cannot read %s (%s); DNS forwarding has no upstreams", path, exc)
        return []
    result: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            addr = ipaddress.ip_address(fields[1])
        except ValueError:
            continue
        if addr.is_loopback or addr.is_unspecified:
            continue
        text_addr = f"[{addr}]:53" if addr.version == 6 else f"{addr}:53"
        if text_addr not in result:
            result.append(text_addr)
    return result


class DnsConfig(BaseModel):
    """Settings of :class:`~overlayd.dns.DnsServer`.

    Forwarding needs ``forward=True`` *and* at least one upstream. With no
    upstream left (e.g. ``/etc/resolv.conf`` lists only the 127.0.0.53 stub),
    forwarding is off and names outside the zone are answered ``REFUSED``, the
    same as ``forward=False``: REFUSED makes a stub resolver move on to its next
    server at once, where SERVFAIL would suggest a transient failure worth
    retrying. ``SERVFAIL`` is reserved for upstreams that fail or time out.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Absolute zone we are authoritative for; made lower case with a final dot.
    zone: str = "overlay.local."
    #: TTL of every answer and the SOA minimum (negative-caching TTL), seconds.
    ttl: int = Field(default=5, ge=0, le=2_147_483_647)
    #: Forward names outside the zone to ``upstreams``.
    forward: bool = True
    #: ``ip`` or ``ip:port`` / ``[ipv6]:port``, tried in order.
    upstreams: list[str] = Field(default_factory=upstreams_from_resolv_conf)
    #: Addresses opened by ``start()`` (UDP and TCP each); port 53 when omitted.
    listen: list[str] = Field(default_factory=list)
    #: Time allowed to each upstream (UDP, plus its TCP retry), seconds.
    upstream_timeout: float = Field(default=2.0, gt=0, le=60)
    #: A TCP connection with no complete query for this long is closed, seconds.
    tcp_idle_timeout: float = Field(default=10.0, gt=0)
    #: TCP connections served at once over all listeners; more are closed at accept.
    max_tcp_connections: int = Field(default=256, ge=1)
    #: Forwarded queries in flight at once; beyond that the answer is SERVFAIL.
    max_forwarded_inflight: int = Field(default=1024, ge=1)
    #: EDNS UDP payload size we advertise.
    edns_payload: int = Field(default=1232, ge=512, le=65535)
    #: Answer plain A/AAAA queries in the zone without dnspython (same answers).
    fast_path: bool = True

    @field_validator("zone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        # pydantic turns ValueError (not our InvalidRequest) into a ValidationError.
        try:
            return normalize_zone(value)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None

    @field_validator("upstreams", "listen")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        try:
            return [str(parse_hostport(v)) for v in value]
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None


def normalize_zone(value: str) -> str:
    """Return ``value`` as an absolute, lower-case zone name; raise InvalidRequest."""
    try:
        name = dns.name.from_text(value.strip() or ".")
    except dns.exception.DNSException as exc:
        raise InvalidRequest(f"DNS zone {value!r} is not a valid name: {exc}") from None
    if name == dns.name.root:
        raise InvalidRequest("The DNS zone must not be the root; use e.g. 'prod.local.'.")
    return name.to_text().lower()
