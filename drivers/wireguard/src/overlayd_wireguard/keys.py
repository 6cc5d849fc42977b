"""WireGuard keys: X25519 keypairs, validation and base64/hex conversion.

The text form used everywhere in overlayd (config, IPC wire, pyroute2) is standard
base64 with padding (44 characters). The UAPI socket speaks lowercase hex (64
characters); convert at that boundary only (``b64_to_hex`` / ``hex_to_b64``).

Secret keys (private and preshared) are wrapped in :class:`SecretKey` so that a
stray ``repr``, f-string or log call never prints them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from typing import Final
from typing import Self

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.hazmat.primitives.serialization import NoEncryption
from cryptography.hazmat.primitives.serialization import PrivateFormat
from cryptography.hazmat.primitives.serialization import PublicFormat

from overlayd.errors import InvalidRequest

__all__ = [
    "KEY_LEN",
    "PresharedKey",
    "PrivateKey",
    "SecretKey",
    "b64_to_hex",
    "generate_keypair",
    "hex_to_b64",
    "public_from_private",
    "validate_hex_key",
    "validate_key",
]

#: Length of every WireGuard key (Curve25519 scalars/points, preshared keys).
KEY_LEN: Final = 32
_ZERO: Final = bytes(KEY_LEN)


def _decode_b64(text: object, what: str) -> bytes:
    # `object`: callers pass untrusted input despite the annotations.
    if not isinstance(text, str) or len(text) != 44 or not text.endswith("="):
        raise InvalidRequest(
            f"the {what} must be 44 characters of standard base64 "
            f"(as printed by `wg genkey`/`wg pubkey`); got {_describe(text)}"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"the {what} is not valid base64; got {_describe(text)}") from exc
    if len(raw) != KEY_LEN:
        raise InvalidRequest(f"the {what} must decode to {KEY_LEN} bytes, got {len(raw)} bytes")
    return raw


def _decode_hex(text: object, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * KEY_LEN:
        raise InvalidRequest(
            f"the {what} must be {2 * KEY_LEN} hex characters; got {_describe(text)}"
        )
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise InvalidRequest(f"the {what} is not valid hex") from exc


def _describe(value: object) -> str:
    # Never echo the value itself: it may be a secret key typed in the wrong field.
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a value of type {type(value).__name__}"


#: Public keys already found valid (and their hex form): a 1,000-peer batch
#: validates each key several times on its way to the UAPI socket.
_VALID_KEYS: dict[str, str] = {}
_VALID_KEYS_MAX: Final = 1 << 17


def _remember(text: str, raw: bytes) -> str:
    hexed = raw.hex()
    if len(_VALID_KEYS) >= _VALID_KEYS_MAX:
        _VALID_KEYS.clear()
    _VALID_KEYS[text] = hexed
    return hexed


def validate_key(text: str, what: str = "public key") -> str:
    """Return ``text`` if it is base64 of 32 bytes, else raise ``InvalidRequest``."""
    value: object = text  # callers pass untrusted input despite the annotation
    if isinstance(value, str) and value in _VALID_KEYS:
        return text
    raw = _decode_b64(text, what)
    # Canonical form: re-encode so that non-canonical padding bits are rejected.
    canonical = base64.b64encode(raw).decode("ascii")
    if canonical != text:
        raise InvalidRequest(f"the {what} is not canonical base64")
    _remember(text, raw)
    return text


def validate_hex_key(text: str, what: str = "public key") -> str:
    """Return ``text`` lowercased if it is 64 hex characters, else raise."""
    _decode_hex(text, what)
    return text.lower()


def b64_to_hex(text: str, what: str = "key") -> str:
    """Convert a base64 key (overlayd form) to lowercase hex (UAPI form)."""
    value: object = text
    if isinstance(value, str):
        hexed = _VALID_KEYS.get(value)
        if hexed is not None:
            return hexed
    return _decode_b64(text, what).hex()


def hex_to_b64(text: str, what: str = "key") -> str:
    """Convert a hex key (UAPI form) to base64 (overlayd form)."""
    return base64.b64encode(_decode_hex(text, what)).decode("ascii")


def _clamp(raw: bytes) -> bytes:
    # Curve25519 clamping; wireguard-go clamps on set and `get` returns the
    # clamped key, so store clamped keys to compare equal (docs/reference/wireguard.rst §4).
    b = bytearray(raw)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


class SecretKey:
    """A 32-byte secret whose ``repr``/``str`` never reveal it."""

    __slots__ = ("_raw",)
    _what = "secret key"

    def __init__(self, raw: bytes) -> None:
        value: object = raw
        if not isinstance(value, bytes | bytearray) or len(value) != KEY_LEN:
            raise InvalidRequest(f"a {self._what} must be exactly {KEY_LEN} bytes")
        self._raw = bytes(raw)

    @classmethod
    def from_base64(cls, text: str) -> Self:
        """Parse the base64 text form (44 characters)."""
        return cls(_decode_b64(text, cls._what))

    @classmethod
    def from_hex(cls, text: str) -> Self:
        """Parse the UAPI hex form (64 characters)."""
        return cls(_decode_hex(text, cls._what))

    @property
    def raw(self) -> bytes:
        """The 32 raw bytes."""
        return self._raw

    def to_base64(self) -> str:
        """The base64 text form; handle with care, it is the secret."""
        return base64.b64encode(self._raw).decode("ascii")

    def to_hex(self) -> str:
        """The UAPI hex form; handle with care, it is the secret."""
        return self._raw.hex()

    def is_zero(self) -> bool:
        """All-zero keys mean "no key" on the UAPI and in the kernel."""
        return self._raw == _ZERO

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey) or type(other) is not type(self):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))

    def __reduce__(self) -> tuple[type[Self], tuple[bytes]]:
        return (type(self), (self._raw,))


class PrivateKey(SecretKey):
    """A clamped X25519 private key."""

    __slots__ = ()
    _what = "private key"

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self._raw = _clamp(self._raw)

    @classmethod
    def generate(cls) -> Self:
        """A fresh random key (what ``wg genkey`` does)."""
        key = X25519PrivateKey.generate()
        return cls(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    def public_key(self) -> str:
        """The matching public key, base64."""
        pub = X25519PrivateKey.from_private_bytes(self._raw).public_key()
        raw = pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode("ascii")


class PresharedKey(SecretKey):
    """A symmetric preshared key; all zeros means "none"."""

    __slots__ = ()
    _what = "preshared key"

    @classmethod
    def generate(cls) -> Self:
        """A fresh random key (what ``wg genpsk`` does)."""
        return cls(os.urandom(KEY_LEN))

    @classmethod
    def none(cls) -> Self:
        """The all-zero key, which removes a peer's preshared key when set."""
        return cls(_ZERO)


def generate_keypair() -> tuple[PrivateKey, str]:
    """A new private key and its base64 public key."""
    private = PrivateKey.generate()
    return private, private.public_key()


def public_from_private(private: PrivateKey | str) -> str:
    """The base64 public key for a private key (object or base64 text)."""
    if isinstance(private, str):
        private = PrivateKey.from_base64(private)
    return private.public_key()
