"""WireGuard (X25519) key generation for device identities.

The engine owns identities (it persists them), so key generation lives in
core; drivers only use the keys they are given.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.hazmat.primitives.serialization import NoEncryption
from cryptography.hazmat.primitives.serialization import PrivateFormat
from cryptography.hazmat.primitives.serialization import PublicFormat

from overlayd.model import validate_wg_key

__all__ = ["generate_private_key", "public_key"]


def generate_private_key() -> str:
    """A new private key, standard base64 (44 characters)."""
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode("ascii")


def public_key(private_key: str) -> str:
    """The public key of ``private_key`` (both standard base64)."""
    validate_wg_key(private_key)
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")
