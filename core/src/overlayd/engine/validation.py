"""Request validation: names, networks, addresses, handles and peer changes.

Every public engine operation checks its input with these before it takes a
lock or touches anything; a bad value raises
:class:`~overlayd.errors.InvalidRequest` naming the field, and nothing changes.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import TypeAdapter

from overlayd.errors import InvalidRequest
from overlayd.errors import clip
from overlayd.errors import quote
from overlayd.model import AnyHandle
from overlayd.model import Handle
from overlayd.model import IPAddress
from overlayd.model import IPNetwork
from overlayd.model import PeerChange

__all__ = [
    "DNS_NAME_RE",
    "HANDLE_ADAPTER",
    "build_change",
    "check_name",
    "parse_handle",
    "parse_ip",
    "parse_net",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
HANDLE_ADAPTER: TypeAdapter[AnyHandle] = TypeAdapter(Handle)


def check_name(what: str, value: object) -> str:
    """``value`` if it is a valid deployment, instance or service name."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidRequest(
            f"invalid {what} {quote(value)}: use 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return value


def parse_net(what: str, value: str | IPNetwork) -> IPNetwork:
    """A network from its text (host bits must be zero)."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(str(value).strip(), strict=True)
    except ValueError as exc:
        raise InvalidRequest(f"invalid {what} {quote(value)}: {clip(str(exc), 200)}") from None


def parse_ip(what: str, value: str | IPAddress) -> IPAddress:
    """An IPv4 or IPv6 address from its text."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise InvalidRequest(
            f"invalid {what} {quote(value)}: not an IPv4 or IPv6 address"
        ) from None


def parse_handle(what: str, value: AnyHandle | dict[str, Any]) -> AnyHandle:
    """A workload handle from its wire form (``what`` names the request in the error)."""
    if not isinstance(value, dict):
        return value
    try:
        return HANDLE_ADAPTER.validate_python(value)
    except ValueError as exc:
        raise InvalidRequest(f"invalid {what}: {exc}") from None


def build_change(**kwargs: Any) -> PeerChange:
    """A PeerChange from loosely typed input, turning validation errors into InvalidRequest."""
    from overlayd.model import parse_cidr_list

    try:
        if "allowed_ips" in kwargs:
            kwargs["allowed_ips"] = tuple(parse_cidr_list(_as_cidr_strings(kwargs["allowed_ips"])))
        if "keepalive" in kwargs:
            keepalive = kwargs.pop("keepalive")
            if not 0 <= int(keepalive) <= 65535:
                raise ValueError("persistent_keepalive_secs must be 0-65535")
            kwargs["persistent_keepalive_secs"] = int(keepalive)
        endpoint = kwargs.get("endpoint")
        if endpoint:
            _check_endpoint(endpoint)
        return PeerChange(**kwargs)
    except ValueError as exc:
        raise InvalidRequest(f"invalid peer: {_first_error(exc)}") from None


def _as_cidr_strings(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    return [str(v) for v in value]


def _check_endpoint(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {quote(endpoint)} must be host:port (port 1-65535)")
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        items = errors()
        if items:
            loc = ".".join(str(p) for p in items[0].get("loc", ()))
            msg = str(items[0].get("msg", exc))
            return f"{loc}: {msg}" if loc else msg
    return str(exc)
