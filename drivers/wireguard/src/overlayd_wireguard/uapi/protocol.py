"""The WireGuard cross-platform userspace API (UAPI) on the wire: values, ``set``, ``get``.

Protocol facts (docs/reference/wireguard.rst §1, https://www.wireguard.com/xplatform/): a unix
stream socket ``<dir>/<ifname>.sock``; ``key=value`` lines; a request ends with an
empty line and every answer ends with ``errno=N`` and an empty line. Keys are
lowercase hex on the socket (base64 everywhere else in overlayd).

Rules overlayd's client follows, each learnt the hard way (docs/reference/wireguard.rst §6):

* one transaction per connection (wireguard-go drops pipelined requests and
  boringtun answers one command per connection);
* every value is validated *before* sending, because a rejected ``set`` is
  partially applied (lines are applied as they are read);
* any non-zero ``errno`` is a failure (wireguard-go sends it negative, boringtun
  positive);
* device keys come before the first ``public_key``.
"""

from __future__ import annotations

import binascii
import functools
import ipaddress
import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final
from typing import cast

from overlayd.errors import DeviceError
from overlayd.errors import InvalidRequest
from overlayd.errors import PeerError
from overlayd_wireguard.keys import PresharedKey
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.keys import b64_to_hex
from overlayd_wireguard.keys import hex_to_b64
from overlayd_wireguard.keys import validate_key

__all__ = [
    "DEFAULT_SOCKET_DIR",
    "DeviceState",
    "PeerOp",
    "PeerState",
    "SetRequest",
    "UapiDeviceError",
    "UapiPeerError",
    "UapiProtocolError",
    "UapiUnavailableError",
    "encode_set",
    "normalize_allowed_ip",
    "normalize_endpoint",
    "parse_get",
    "redact",
    "split_prefix",
    "validate_ifname",
]

log = logging.getLogger(__name__)

#: Where wireguard-go and boringtun put their sockets (hard-coded in both).
DEFAULT_SOCKET_DIR: Final = "/var/run/wireguard"
MAX_ANSWER: Final = 64 * 1024 * 1024
_IFNAME_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
U16: Final = 0xFFFF
U32: Final = 0xFFFFFFFF
#: A zero preshared key as ``get`` reports it ("no preshared key").
_ZERO_KEY_HEX: Final = "0" * 64
#: Peer keys of a ``get`` answer whose values are non-negative integers.
_PEER_INT_KEYS: Final = frozenset(
    {
        "persistent_keepalive_interval",
        "last_handshake_time_sec",
        "last_handshake_time_nsec",
        "rx_bytes",
        "tx_bytes",
        "protocol_version",
    }
)


# --------------------------------------------------------------------------- errors


class UapiDeviceError(DeviceError):
    """A UAPI transaction on a device failed; ``errno`` is the positive errno."""

    def __init__(self, message: str, *, errno: int = 0, op: str = "") -> None:
        self.errno = errno
        super().__init__(message, op=op, driver="wireguard")


class UapiPeerError(PeerError):
    """A UAPI ``set`` touching peers failed; ``errno`` is the positive errno."""

    def __init__(self, message: str, *, errno: int = 0, op: str = "") -> None:
        self.errno = errno
        super().__init__(message, op=op, driver="wireguard")


class UapiUnavailableError(UapiDeviceError):
    """No process answers on the device's UAPI socket (not running or stale)."""


class UapiProtocolError(UapiDeviceError):
    """The UAPI peer answered something that is not the protocol."""


# --------------------------------------------------------------------------- values


def validate_ifname(name: str) -> str:
    """Return ``name`` if it is a usable interface name (1-15 safe characters)."""
    value: object = name
    if not isinstance(value, str) or not _IFNAME_RE.match(name) or name in {".", ".."}:
        raise InvalidRequest(
            f"interface name {name!r} is invalid: use 1 to 15 characters "
            "from letters, digits, '_', '.', '-'"
        )
    return name


def _canonical_ip(family: int, packed: bytes) -> str | None:
    """``packed`` in the text form :mod:`ipaddress` prints, or ``None`` when unsure.

    inet_ntop and :mod:`ipaddress` both print RFC 5952 text, except for IPv6
    with an embedded IPv4 tail (``::ffff:1.2.3.4``), which is left to
    :mod:`ipaddress`.
    """
    text = socket.inet_ntop(family, packed)
    if family == socket.AF_INET6 and "." in text:
        return None
    return text


def split_prefix(text: str) -> tuple[int, bytes, int] | None:
    """``(family, packed address, length)`` of a plain ``address/length``, or ``None``.

    Plain: an address :func:`socket.inet_pton` reads and a decimal length
    without leading zeros that fits it. About 1 µs of C calls where
    :func:`ipaddress.ip_network` costs about 10 µs; anything unusual (spaces,
    netmask notation, leading zeros, scope ids) returns ``None`` so that
    :mod:`ipaddress` decides, with its messages.
    """
    addr, _, length = text.partition("/")
    if not (length.isascii() and length.isdigit()) or (len(length) > 1 and length[0] == "0"):
        return None
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        packed = socket.inet_pton(family, addr)
    except OSError:
        return None
    prefixlen = int(length)
    if prefixlen > 8 * len(packed):
        return None
    return family, packed, prefixlen


def _fast_prefix(text: str) -> str | None:
    """Masked canonical form of a plain ``address/length`` (see :func:`split_prefix`),
    or ``None`` (slow path): a 10,000-peer ``get`` reports thousands of distinct prefixes."""
    split = split_prefix(text)
    if split is None:
        return None
    family, packed, prefixlen = split
    value = int.from_bytes(packed, "big")
    host_bits = 8 * len(packed) - prefixlen
    masked = (value >> host_bits) << host_bits
    if masked != value:
        packed = masked.to_bytes(len(packed), "big")
    canonical = _canonical_ip(family, packed)
    return None if canonical is None else f"{canonical}/{prefixlen}"


@functools.lru_cache(maxsize=1 << 17)  # pure; a 10,000-peer get parses each once
def normalize_allowed_ip(text: str) -> str:
    """Return the masked CIDR (``10.0.0.5/24`` -> ``10.0.0.0/24``) peers store."""
    if not isinstance(cast("object", text), str) or "/" not in text:
        raise InvalidRequest(f"allowed IP {text!r} must be a CIDR prefix such as 10.0.0.0/24")
    fast = _fast_prefix(text)
    if fast is not None:
        return fast
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError as exc:
        raise InvalidRequest(f"allowed IP {text!r} is not a valid CIDR prefix") from exc


@functools.lru_cache(maxsize=1 << 17)
def normalize_endpoint(text: str) -> str:
    """Return ``IP:port`` / ``[IPv6]:port`` in canonical form; names are refused."""
    bad = InvalidRequest(
        f"endpoint {text!r} must be a numeric IP:port or [IPv6]:port; "
        "resolve host names before configuring a peer"
    )
    if not isinstance(text, str):
        raise bad
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise bad
        family = socket.AF_INET6
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise bad
        family = socket.AF_INET
    if port.isascii() and port.isdigit() and 0 < int(port, 10) <= U16:
        # Fast path (C calls) for what wireguard-go reports; the rest below.
        try:
            canonical = _canonical_ip(family, socket.inet_pton(family, host))
        except OSError:
            canonical = None
        if canonical is not None:
            port_no = int(port, 10)
            return (
                f"[{canonical}]:{port_no}"
                if family == socket.AF_INET6
                else f"{canonical}:{port_no}"
            )
    try:
        addr = ipaddress.ip_address(host)
        port_no = int(port, 10)
    except ValueError as exc:
        raise bad from exc
    if not (port.isascii() and port.isdigit()) or not 0 < port_no <= U16:
        raise bad
    if isinstance(addr, ipaddress.IPv6Address):
        return f"[{addr}]:{port_no}"
    return f"{addr}:{port_no}"


def check_range(value: object, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise InvalidRequest(f"{what} must be an integer from 0 to {high}, got {value!r}")
    return value


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class PeerState:
    """One peer as reported by ``get``."""

    #: base64 public key.
    public_key: str
    #: None when the peer has no preshared key (all zeros on the socket).
    preshared_key: PresharedKey | None = None
    #: ``IP:port`` / ``[IPv6]:port``, None until known.
    endpoint: str | None = None
    #: Masked CIDRs in the order the implementation reported them.
    allowed_ips: tuple[str, ...] = ()
    #: Seconds; 0 = off.
    persistent_keepalive_interval: int = 0
    #: wireguard-go/kernel: Unix time of the last handshake; boringtun: elapsed
    #: time since it (docs/reference/wireguard.rst §5). 0/0 = never.
    last_handshake_time_sec: int = 0
    last_handshake_time_nsec: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    #: 1 from wireguard-go; None when not reported (boringtun).
    protocol_version: int | None = None


@dataclass(frozen=True)
class DeviceState:
    """A device as reported by ``get``."""

    #: None if no key is set, or the implementation hides it (boringtun).
    private_key: PrivateKey | None = None
    #: base64; derived from the private key, or boringtun's ``own_public_key``.
    public_key: str | None = None
    #: None when the device listens nowhere (e.g. after a failed port change).
    listen_port: int | None = None
    fwmark: int = 0
    peers: tuple[PeerState, ...] = ()

    def peer(self, public_key: str) -> PeerState | None:
        """The peer with this base64 public key, if present."""
        for p in self.peers:
            if p.public_key == public_key:
                return p
        return None

    def peers_by_key(self) -> dict[str, PeerState]:
        """Peers indexed by base64 public key."""
        return {p.public_key: p for p in self.peers}


# --------------------------------------------------------------------------- set


@dataclass(frozen=True)
class PeerOp:
    """One peer section of a ``set`` request. Values are validated on creation."""

    #: base64 public key.
    public_key: str
    #: Remove the peer; no other field may be set.
    remove: bool = False
    #: Only change an existing peer, never create it (not supported by boringtun).
    update_only: bool = False
    #: Set the preshared key; ``PresharedKey.none()`` removes it; None = leave.
    preshared_key: PresharedKey | None = None
    #: Numeric ``IP:port``; None = leave.
    endpoint: str | None = None
    #: Seconds (0 = off); None = leave.
    persistent_keepalive_interval: int | None = None
    #: Drop the peer's allowed IPs before adding ``allowed_ips``.
    replace_allowed_ips: bool = False
    #: Prefixes to add (masked on creation).
    allowed_ips: tuple[str, ...] = ()
    #: Must be 1 when given.
    protocol_version: int | None = None

    def __post_init__(self) -> None:
        validate_key(self.public_key, "peer public key")
        if self.remove and (
            self.update_only
            or self.preshared_key is not None
            or self.endpoint is not None
            or self.persistent_keepalive_interval is not None
            or self.replace_allowed_ips
            or self.allowed_ips
            or self.protocol_version is not None
        ):
            raise InvalidRequest("a peer removal cannot carry other settings; send them separately")
        if self.endpoint is not None:
            object.__setattr__(self, "endpoint", normalize_endpoint(self.endpoint))
        if self.persistent_keepalive_interval is not None:
            check_range(self.persistent_keepalive_interval, U16, "persistent keepalive")
        if isinstance(cast("object", self.allowed_ips), str):
            raise InvalidRequest("allowed_ips must be a sequence of CIDRs, not a str")
        object.__setattr__(
            self,
            "allowed_ips",
            tuple(normalize_allowed_ip(a) for a in self.allowed_ips),
        )
        if self.protocol_version is not None and self.protocol_version != 1:
            raise InvalidRequest(f"protocol_version must be 1, got {self.protocol_version!r}")


@dataclass(frozen=True)
class SetRequest:
    """A whole ``set`` transaction: device settings then peer operations."""

    #: New private key; ``PrivateKey(bytes(32))`` would be clamped, so removal
    #: of the key is ``clear_private_key=True`` instead.
    private_key: PrivateKey | None = None
    clear_private_key: bool = False
    #: 0 = random port.
    listen_port: int | None = None
    #: 0 = off.
    fwmark: int | None = None
    #: Remove every peer not named in ``peers`` (wireguard-go: before applying them).
    replace_peers: bool = False
    peers: tuple[PeerOp, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.private_key is not None and self.clear_private_key:
            raise InvalidRequest("set a private key or clear it, not both")
        if self.listen_port is not None:
            check_range(self.listen_port, U16, "listen port")
        if self.fwmark is not None:
            check_range(self.fwmark, U32, "fwmark")
        object.__setattr__(self, "peers", tuple(self.peers))
        seen: set[str] = set()
        for p in self.peers:
            if p.public_key in seen:
                raise InvalidRequest(f"peer {p.public_key} appears twice in one request; merge it")
            seen.add(p.public_key)

    def is_empty(self) -> bool:
        """True when sending it would change nothing."""
        return (
            self.private_key is None
            and not self.clear_private_key
            and self.listen_port is None
            and self.fwmark is None
            and not self.replace_peers
            and not self.peers
        )

    def describe(self) -> str:
        """Human summary for error messages (never includes keys)."""
        parts = []
        if self.private_key is not None or self.clear_private_key:
            parts.append("private key")
        if self.listen_port is not None:
            parts.append(f"listen port {self.listen_port}")
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark}")
        if self.replace_peers:
            parts.append("replace peers")
        if self.peers:
            removes = sum(1 for p in self.peers if p.remove)
            parts.append(f"{len(self.peers) - removes} peer update(s)")
            if removes:
                parts.append(f"{removes} peer removal(s)")
        return ", ".join(parts) or "nothing"


def encode_set(request: SetRequest) -> str:
    """Serialize ``request`` as one UAPI ``set`` transaction (with final blank line)."""
    lines = ["set=1"]
    if request.private_key is not None:
        lines.append(f"private_key={request.private_key.to_hex()}")
    elif request.clear_private_key:
        lines.append(f"private_key={bytes(32).hex()}")
    if request.listen_port is not None:
        lines.append(f"listen_port={request.listen_port}")
    if request.fwmark is not None:
        lines.append(f"fwmark={request.fwmark}")
    if request.replace_peers:
        lines.append("replace_peers=true")
    for p in request.peers:
        lines.append(f"public_key={b64_to_hex(p.public_key)}")
        if p.remove:
            lines.append("remove=true")
            continue
        # update_only must directly follow public_key: wireguard-go creates the
        # peer on the public_key line and drops it again on update_only.
        if p.update_only:
            lines.append("update_only=true")
        if p.protocol_version is not None:
            lines.append(f"protocol_version={p.protocol_version}")
        if p.preshared_key is not None:
            lines.append(f"preshared_key={p.preshared_key.to_hex()}")
        if p.endpoint is not None:
            lines.append(f"endpoint={p.endpoint}")
        if p.persistent_keepalive_interval is not None:
            lines.append(f"persistent_keepalive_interval={p.persistent_keepalive_interval}")
        # replace_allowed_ips applies to the allowed_ip lines that follow it.
        if p.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={a}" for a in p.allowed_ips)
    return "\n".join(lines) + "\n\n"


# --------------------------------------------------------------------------- get


_SECRET_RE: Final = re.compile(r"^(private_key|preshared_key)=.*$", re.MULTILINE)


def redact(text: str) -> str:
    """Return UAPI text with private and preshared keys replaced, for logs."""
    return _SECRET_RE.sub(r"\1=<redacted>", text)


def _int(value: str, key: str) -> int:
    try:
        n = int(value, 10)
    except ValueError as exc:
        raise UapiProtocolError(
            f"the UAPI answer has a non-numeric {key}={value!r}", op="get"
        ) from exc
    if n < 0:
        raise UapiProtocolError(f"the UAPI answer has a negative {key}", op="get")
    return n


def _hex_key(value: str, key: str) -> str:
    if len(value) == 64:
        # Fast path: binascii directly (the base64 module adds Python layers).
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) == 32:
            return binascii.b2a_base64(raw, newline=False).decode("ascii")
    try:
        return hex_to_b64(value, key)
    except InvalidRequest as exc:
        raise UapiProtocolError(f"the UAPI answer has a malformed {key}", op="get") from exc


def parse_get(pairs: Sequence[tuple[str, str]]) -> DeviceState:
    """Build a :class:`DeviceState` from the ``key=value`` pairs of a ``get`` answer.

    ``pairs`` excludes the final ``errno``. Unknown keys are ignored, as wg(8) does.
    """
    private: PrivateKey | None = None
    public: str | None = None
    listen_port: int | None = None
    fwmark = 0
    peers: list[PeerState] = []
    cur: dict[str, Any] | None = None
    allowed: list[str] = []

    def flush() -> None:
        if cur is not None:
            peers.append(PeerState(allowed_ips=tuple(allowed), **cur))

    for key, value in pairs:
        if key == "public_key":
            flush()
            cur = {"public_key": _hex_key(value, key)}
            allowed = []
            continue
        if cur is not None and key in _PEER_INT_KEYS:
            # The common case first: plain decimal digits. Anything else goes
            # through _int, which accepts or refuses it with its message.
            cur[key] = int(value) if value.isascii() and value.isdigit() else _int(value, key)
            continue
        if cur is None:
            if key == "private_key":
                try:
                    private = PrivateKey.from_hex(value)
                except InvalidRequest as exc:
                    raise UapiProtocolError(
                        "the UAPI answer has a malformed private_key", op="get"
                    ) from exc
                if private.is_zero():
                    private = None
            elif key == "own_public_key":  # boringtun
                public = _hex_key(value, key)
            elif key == "listen_port":
                listen_port = _int(value, key) or None
            elif key == "fwmark":
                fwmark = _int(value, key)
            else:
                log.debug("ignoring unknown UAPI device key %r", key)
            continue
        if key == "preshared_key":
            if value == _ZERO_KEY_HEX:
                cur[key] = None
                continue
            try:
                psk = PresharedKey.from_hex(value)
            except InvalidRequest as exc:
                raise UapiProtocolError(
                    "the UAPI answer has a malformed preshared_key", op="get"
                ) from exc
            cur[key] = None if psk.is_zero() else psk
        elif key == "endpoint":
            try:
                cur[key] = normalize_endpoint(value)
            except InvalidRequest as exc:
                raise UapiProtocolError(
                    f"the UAPI answer has a malformed endpoint {value!r}", op="get"
                ) from exc
        elif key == "allowed_ip":
            try:
                allowed.append(normalize_allowed_ip(value))
            except InvalidRequest as exc:
                raise UapiProtocolError(
                    f"the UAPI answer has a malformed allowed_ip {value!r}", op="get"
                ) from exc
        else:
            log.debug("ignoring unknown UAPI peer key %r", key)
    flush()
    if public is None and private is not None:
        public = private.public_key()
    return DeviceState(
        private_key=private,
        public_key=public,
        listen_port=listen_port,
        fwmark=fwmark,
        peers=tuple(peers),
    )


#: One peer section exactly as wireguard-go (and the fake server) print it.
#: ASCII digits only: ``\\d`` would also match other Unicode digits.
_PEER_RE: Final = re.compile(
    r"public_key=([0-9a-f]{64})\n"
    r"preshared_key=([0-9a-f]{64})\n"
    r"protocol_version=([0-9]+)\n"
    r"(?:endpoint=([^\n]+)\n)?"
    r"last_handshake_time_sec=([0-9]+)\n"
    r"last_handshake_time_nsec=([0-9]+)\n"
    r"tx_bytes=([0-9]+)\n"
    r"rx_bytes=([0-9]+)\n"
    r"persistent_keepalive_interval=([0-9]+)\n"
    r"((?:allowed_ip=[^\n]+\n)*)"
)
_GET_OK_TAIL: Final = "errno=0\n\n"
#: hex public key -> base64, for keys seen in ``get`` answers (bounded).
_HEX_KEYS: dict[str, str] = {}
_HEX_KEYS_MAX: Final = 1 << 17


@functools.lru_cache(maxsize=1 << 16)
def _allowed_block(block: str) -> tuple[str, ...]:
    """``allowed_ip=`` lines of one peer -> normalized prefixes (``InvalidRequest`` if bad)."""
    return tuple(normalize_allowed_ip(line[11:]) for line in block.split("\n") if line)


def _fast_hex_key(value: str) -> str:
    key = _HEX_KEYS.get(value)
    if key is None:
        key = binascii.b2a_base64(bytes.fromhex(value), newline=False).decode("ascii")
        if len(_HEX_KEYS) >= _HEX_KEYS_MAX:
            _HEX_KEYS.clear()
        _HEX_KEYS[value] = key
    return key


def fast_get(data: bytes) -> DeviceState | None:
    """:func:`parse_get` for the usual successful answer, or ``None`` for the slow path.

    A 10,000-peer ``get`` has about 100,000 lines; parsing them one by one costs
    most of ``peer_status``. Here each peer section in wireguard-go's layout is
    one regular-expression match. Anything else (another layout, unknown keys,
    malformed values, a non-zero errno) returns ``None`` so that
    :func:`parse_answer` and :func:`parse_get` decide, with their messages.
    The result is equal to what they return.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith(_GET_OK_TAIL):
        return None
    body_end = len(text) - len(_GET_OK_TAIL)
    if body_end and text[body_end - 1] != "\n":
        return None
    if text.startswith("public_key="):
        first = 0
    else:
        at = text.find("\npublic_key=")
        first = body_end if at < 0 else at + 1
    try:
        header = parse_get(parse_answer(text[:first].encode() + b"errno=0\n\n")[1])
        peers: list[PeerState] = []
        append = peers.append
        match = _PEER_RE.match
        zero = _ZERO_KEY_HEX
        pos = first
        while pos < body_end:
            m = match(text, pos)
            if m is None:
                return None
            pk, psk, proto, endpoint, hs, hsn, tx, rx, keepalive, allowed = m.groups()
            preshared: PresharedKey | None = None
            if psk != zero:
                preshared = PresharedKey.from_hex(psk)
                if preshared.is_zero():
                    preshared = None
            append(
                PeerState(
                    public_key=_fast_hex_key(pk),
                    preshared_key=preshared,
                    endpoint=None if endpoint is None else normalize_endpoint(endpoint),
                    allowed_ips=_allowed_block(allowed) if allowed else (),
                    persistent_keepalive_interval=int(keepalive),
                    last_handshake_time_sec=int(hs),
                    last_handshake_time_nsec=int(hsn),
                    rx_bytes=int(rx),
                    tx_bytes=int(tx),
                    protocol_version=int(proto),
                )
            )
            pos = m.end()
    except (InvalidRequest, UapiDeviceError, ValueError):
        return None  # the slow path reports it properly
    if pos != body_end:
        return None
    return DeviceState(
        private_key=header.private_key,
        public_key=header.public_key,
        listen_port=header.listen_port,
        fwmark=header.fwmark,
        peers=tuple(peers),
    )


def parse_answer(data: bytes) -> tuple[int, list[tuple[str, str]]]:
    """Split a raw answer into ``(errno, pairs)``; errno is returned as sent."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UapiProtocolError("the UAPI answer is not UTF-8 text") from exc
    pairs: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiProtocolError(f"the UAPI answer has a line without '=': {key!r}")
        pairs.append((key, value))
    if not pairs or pairs[-1][0] != "errno":
        raise UapiProtocolError("the UAPI answer does not end with errno=N")
    try:
        err = int(pairs[-1][1], 10)
    except ValueError as exc:
        raise UapiProtocolError("the UAPI answer has a non-numeric errno") from exc
    return err, pairs[:-1]
