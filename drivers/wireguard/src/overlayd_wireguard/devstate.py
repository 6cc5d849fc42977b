"""What the wireguard driver keeps per device, and the conversions its peer path uses.

:class:`DevState` is the driver's cache of one device: the desired peers it
last programmed, which peer holds each allowed IP, host-name endpoints and
the routes it added. The functions turn changes and UAPI state into the
forms the driver compares and reports (numeric endpoints, normal-form
allowed IPs, :class:`~overlayd.model.PeerStatus`).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final

from overlayd.errors import PeerError
from overlayd.model import Device
from overlayd.model import PeerStatus
from overlayd_wireguard.options import split_host_port
from overlayd_wireguard.uapi import PeerConfig
from overlayd_wireguard.uapi import PeerState
from overlayd_wireguard.uapi import normalize_allowed_ip
from overlayd_wireguard.uapi import normalize_endpoint
from overlayd_wireguard.uapi import split_prefix

__all__ = [
    "DevState",
    "allowed_ip",
    "build_status",
    "handshake_unix",
    "is_ip",
    "network",
    "networks",
    "numeric_endpoint",
    "prefix_bits",
    "resolve_endpoint",
    "state_of",
    "status_builder",
]

log = logging.getLogger(__name__)

#: Below this, a handshake "time" is boringtun's elapsed seconds, not a Unix time.
_UNIX_TIME_FLOOR: Final = 1_000_000_000


@dataclass
class DevState:
    """What the driver knows about one device it manages."""

    device: Device
    #: Connected prefixes (the device's addresses' networks): no route needed.
    connected: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    #: public key -> desired configuration (numeric endpoints).
    peers: dict[str, PeerConfig] = field(default_factory=dict)
    #: allowed IP -> public key of the peer that holds it.
    owner: dict[str, str] = field(default_factory=dict)
    #: public key -> ``host:port`` as given, for peers configured by host name.
    hostnames: dict[str, str] = field(default_factory=dict)
    #: public key -> monotonic time of the last re-resolution attempt.
    resolved_at: dict[str, float] = field(default_factory=dict)
    #: prefixes routed through the device (outside ``connected``).
    routes: set[str] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: prefix -> needs_route answer, valid for ``_route_cache_for``.
    _route_cache: dict[str, bool] = field(default_factory=dict)
    _route_cache_for: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def set_peers(self, peers: Iterable[PeerConfig]) -> None:
        self.peers = {p.public_key: p for p in peers}
        self.owner = {a: p.public_key for p in self.peers.values() for a in p.allowed_ips}

    def needs_route(self, prefix: str) -> bool:
        cache = self._route_cache
        if self._route_cache_for is not self.connected:
            cache.clear()
            self._route_cache_for = self.connected
        hit = cache.get(prefix)
        if hit is None:
            fast = prefix_bits(prefix)
            if fast is not None:
                version, value, length = fast
                hit = not any(
                    version == c.version
                    and length >= c.prefixlen
                    and value >> (c.max_prefixlen - c.prefixlen)
                    == int(c.network_address) >> (c.max_prefixlen - c.prefixlen)
                    for c in self.connected
                )
            else:
                net = ipaddress.ip_network(prefix)
                hit = not any(
                    net.version == c.version and net.subnet_of(c)  # type: ignore[arg-type]
                    for c in self.connected
                )
            if len(cache) >= 1 << 16:
                cache.clear()
            cache[prefix] = hit
        return hit


def prefix_bits(prefix: str) -> tuple[int, int, int] | None:
    """``(version, address as int, length)`` of a masked ``address/length``, or None.

    The cheap form of ``ipaddress.ip_network(prefix)`` for the normalized
    prefixes the driver stores; anything else (host bits set, odd text) is
    left to :mod:`ipaddress`.
    """
    split = split_prefix(prefix)
    if split is None:
        return None
    family, packed, plen = split
    value = int.from_bytes(packed, "big")
    if value & ((1 << (8 * len(packed) - plen)) - 1):
        return None
    return (6 if family == socket.AF_INET6 else 4), value, plen


@functools.lru_cache(maxsize=65536)
def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_endpoint(endpoint: str, attempts: int = 2) -> str:
    """``host:port`` -> numeric ``IP:port`` (IPv4 preferred); retried once on failure."""
    host, port = split_host_port(endpoint)
    if is_ip(host):
        return normalize_endpoint(endpoint)
    last: OSError | None = None
    for attempt in range(attempts):
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(0.2)
            continue
        infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
        for family, _, _, _, sockaddr in infos:
            addr = str(sockaddr[0])
            if family == socket.AF_INET6:
                return normalize_endpoint(f"[{addr}]:{port}")
            if family == socket.AF_INET:
                return normalize_endpoint(f"{addr}:{port}")
    raise PeerError(
        f"cannot resolve the host name in peer endpoint {endpoint!r}: {last}; "
        "check the name or give a numeric IP:port",
        op="peer_apply",
        driver="wireguard",
    )


@functools.lru_cache(maxsize=65536)
def numeric_endpoint(endpoint: str) -> str | None:
    """The normalized endpoint when its host is an IP address, else None (a name).

    Raises ``InvalidRequest`` for a malformed endpoint, as :func:`resolve_endpoint` does.
    """
    host, _ = split_host_port(endpoint)
    return normalize_endpoint(endpoint) if is_ip(host) else None


def allowed_ip(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """A change's allowed IP as this driver spells it (the UAPI normal form)."""
    return normalize_allowed_ip(str(net))


def state_of(cfg: PeerConfig) -> PeerState:
    return PeerState(
        public_key=cfg.public_key,
        preshared_key=cfg.preshared_key,
        endpoint=cfg.endpoint,
        allowed_ips=cfg.allowed_ips,
        persistent_keepalive_interval=cfg.persistent_keepalive_interval or 0,
    )


@functools.lru_cache(maxsize=65536)
def network(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(prefix)


@functools.lru_cache(maxsize=65536)
def networks(
    prefixes: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A peer's allowed IPs (already normalized strings) as networks, cached per tuple."""
    return tuple(network(a) for a in prefixes)


_STATUS_FIELDS: Final = (
    "public_key",
    "endpoint",
    "allowed_ips",
    "persistent_keepalive_secs",
    "last_handshake_unix_secs",
    "rx_bytes",
    "tx_bytes",
)


def status_builder() -> Callable[[tuple[Any, ...]], PeerStatus]:
    """The cheapest way to build a :class:`PeerStatus` from trusted values.

    ``model_construct`` walks the model's fields for every object (about 4 µs);
    a 10,000-peer status builds 10,000 of them. The fast path sets the same
    instance attributes ``model_construct`` sets and is used only if a probe
    object built both ways compares equal with the same fields set, so a
    pydantic that stores instances differently falls back to ``model_construct``.
    """
    fields = _STATUS_FIELDS
    new = PeerStatus.__new__
    setattr_ = object.__setattr__

    def fast(values: tuple[Any, ...]) -> PeerStatus:
        obj = new(PeerStatus)
        key, endpoint, allowed, keepalive, handshake, rx, tx = values
        setattr_(
            obj,
            "__dict__",
            {
                "public_key": key,
                "endpoint": endpoint,
                "allowed_ips": allowed,
                "persistent_keepalive_secs": keepalive,
                "last_handshake_unix_secs": handshake,
                "rx_bytes": rx,
                "tx_bytes": tx,
            },
        )
        setattr_(obj, "__pydantic_fields_set__", set(fields))
        setattr_(obj, "__pydantic_extra__", None)
        setattr_(obj, "__pydantic_private__", None)
        return obj

    def slow(values: tuple[Any, ...]) -> PeerStatus:
        return PeerStatus.model_construct(**dict(zip(fields, values, strict=True)))

    probe = ("A" * 43 + "=", "192.0.2.1:1", (network("10.0.0.0/8"),), 1, 2, 3, 4)
    try:
        a, b = fast(probe), slow(probe)
        same = (
            a == b
            and a.model_fields_set == b.model_fields_set
            and a.__dict__ == b.__dict__
            and a.model_dump() == b.model_dump()
            and not PeerStatus.__pydantic_post_init__
        )
    except (AttributeError, TypeError) as exc:
        log.debug("PeerStatus fast construction unavailable: %s", exc)
        same = False
    return fast if same else slow


build_status: Final = status_builder()


def handshake_unix(peer: PeerState, now: float) -> int:
    sec = peer.last_handshake_time_sec
    if 0 < sec < _UNIX_TIME_FLOOR:
        return int(now) - sec  # boringtun reports elapsed time (docs/reference/wireguard.rst §5)
    return sec
