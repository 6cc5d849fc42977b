"""Connectivity checks between two nodes' WireGuard ports (the ICE idea, RFC 8445 §7).

Each node sends STUN Binding requests from its WireGuard port to every
candidate of a peer, several times a second, and answers the peer's requests
from the same port. A request that gets an answer proves a two-way path
between the two WireGuard ports, and both sides' outgoing requests open
their NATs' mappings for the other (hole punching). WireGuard then confirms
the chosen path with a fresh handshake (:mod:`overlayd.nat.agent`).

Requests name the sender in ``USERNAME`` (its WireGuard public key) and
carry ``MESSAGE-INTEGRITY`` keyed with a secret only the two nodes can
compute: HKDF-SHA256 over the X25519 agreement of their WireGuard keys. A
third party can neither make a node believe in a path nor make it answer
for a peer. A success answer carries ``XOR-MAPPED-ADDRESS``: where the
request came from as the peer saw it (a peer-reflexive address).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Collection
from typing import Final

from aioice import stun
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["CheckKeys", "answer", "check_request", "verify_answer"]

_INFO: Final = b"overlayd nat connectivity check v1"
Address = tuple[str, int]


class CheckKeys:
    """This node's key pair and the per-peer integrity keys derived from it."""

    def __init__(self, private_key_b64: str, public_key_b64: str) -> None:
        self.public_key = public_key_b64
        self._private = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key_b64))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one object per node, keys are few
    def pair_key(self, peer_public_key: str) -> bytes:
        """The integrity key shared with ``peer_public_key`` (same on both sides)."""
        shared = self._private.exchange(
            X25519PublicKey.from_public_bytes(base64.b64decode(peer_public_key))
        )
        keys = sorted([self.public_key, peer_public_key])
        salt = ("|".join(keys)).encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(shared)


def check_request(keys: CheckKeys, peer_public_key: str) -> stun.Message:
    """A Binding request to ``peer_public_key``, signed with the pair key."""
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = keys.public_key
    msg.add_message_integrity(keys.pair_key(peer_public_key))  # adds FINGERPRINT too
    return msg


def answer(
    keys: CheckKeys, request: stun.Message, source: Address, known: Collection[str]
) -> tuple[str, stun.Message] | None:
    """The signed success answer to a peer's check, with the peer's key; None to ignore it.

    Requests from keys not in ``known`` or with a wrong integrity are ignored
    (no answer at all, so a scan learns nothing).
    """
    if request.message_method != stun.Method.BINDING:
        return None
    sender = request.attributes.get("USERNAME")
    if not isinstance(sender, str) or sender not in known:
        return None
    key = keys.pair_key(sender)
    if not request.check_message_integrity(key):
        return None
    reply = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    reply.attributes["XOR-MAPPED-ADDRESS"] = source
    reply.add_message_integrity(key)
    return sender, reply


def verify_answer(keys: CheckKeys, peer_public_key: str, reply: stun.Message) -> Address | None:
    """The peer-reflexive address in an authentic success answer, else None."""
    if reply.message_class != stun.Class.RESPONSE:
        return None
    if not reply.check_message_integrity(keys.pair_key(peer_public_key)):
        return None
    mapped = reply.attributes.get("XOR-MAPPED-ADDRESS")
    if not isinstance(mapped, tuple):
        return None
    return str(mapped[0]), int(mapped[1])
