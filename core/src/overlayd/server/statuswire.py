"""The ``status`` answer, rebuilt only where a peer changed.

The engine's peers are re-read at most once a second while ``status`` is
polled, and every read is a new list, so the answer is rebuilt after each
read: on a node of 10,000 peers its wire models and their encoding took
about 0.1 s of the event loop, once a second, while every other request
waited. Between two reads most peers report the same values (a peer's
counters move only with its traffic, its handshake every two minutes), so
:class:`StatusWire` keeps, per peer, its wire model and its encoded JSON with
the values they were made from, and makes new ones only for the peers whose
values changed.

When most peers are new (the first answer, or a read where nearly every
counter moved) the answer is left to the server's usual encoding, one call
for the whole answer, which is cheaper than encoding each peer on its own;
a peer's JSON is then made the first time it is reused. Otherwise the
answer's bytes are the peers' JSON joined into the rest of the answer,
encoded as :func:`overlayd.protocol.encode_response` encodes it: byte for
byte the same (the tests compare both on random statuses), so the golden
frames still hold. Figures: ``docs/design-notes.rst``, "The IPC fast path".
"""

# ruff: noqa: E402  (the server's own imports follow the POSIX assert)

from __future__ import annotations

import json
import sys
from json.encoder import encode_basestring
from typing import Any
from typing import Final

from overlayd import protocol as p
from overlayd.engine.results import Status
from overlayd.model import PeerStatus

# POSIX only, as the rest of the server (mypy --platform win32 skips the rest).
assert sys.platform != "win32", "overlayd serve is not supported on Windows yet"

from overlayd.server.convert import dedicated_status
from overlayd.server.convert import nat_status

__all__ = ["StatusWire"]

#: Stands for the peers while the rest of the answer is encoded (a NUL cannot
#: appear in any other value of a ``status`` answer, and JSON escapes it).
_PLACEHOLDER: Final = "\x00peers\x00"
_PLACEHOLDER_JSON: Final = json.dumps(_PLACEHOLDER).encode()
_FIELDS: Final = tuple(p.StatusResponse.model_fields)
#: How ``json.dumps(..., ensure_ascii=False)`` writes a string (C when available).
_string: Final = encode_basestring


class _Peer:
    """One peer's wire model and JSON, with the engine's values they were made from."""

    __slots__ = ("allowed_ips", "endpoint", "handshake", "json", "model", "rx", "tx")

    def __init__(self, peer: PeerStatus) -> None:
        self.endpoint: str | None = peer.endpoint
        self.allowed_ips: tuple[Any, ...] = peer.allowed_ips
        self.handshake: int = peer.last_handshake_unix_secs
        self.rx: int = peer.rx_bytes
        self.tx: int = peer.tx_bytes
        # model_construct: built from the engine's own typed models (a valid
        # CIDR list by construction); validating 10,000 of them again made
        # ~10 % of a large node's start-up.
        self.model = p.PeerStatus.model_construct(
            public_key=peer.public_key,
            endpoint=peer.endpoint or "",
            allowed_ips=",".join(str(n) for n in peer.allowed_ips),
            last_handshake_unix_secs=peer.last_handshake_unix_secs,
            rx_bytes=peer.rx_bytes,  # extension: traffic, for overlayctl topology
            tx_bytes=peer.tx_bytes,
        )
        #: Made when first needed (:meth:`encoded`); ``b""``: not encodable.
        self.json: bytes | None = None

    def same(self, peer: PeerStatus) -> bool:
        """Whether ``peer`` (a new read) has the values this was made from."""
        return (
            self.endpoint == peer.endpoint
            and self.handshake == peer.last_handshake_unix_secs
            and self.rx == peer.rx_bytes
            and self.tx == peer.tx_bytes
            # Networks parsed from the same text are shared objects, so this
            # compares identities, in C, before it would compare any value.
            and self.allowed_ips == peer.allowed_ips
        )

    def encoded(self) -> bytes:
        """What ``encode_json(self.model.to_wire())`` gives, without dumping the model.

        The wire fields in their order (none is ``None`` here), each string
        escaped by the function ``json.dumps`` itself uses; the tests hold it
        to :func:`~overlayd.protocol.encode_response`'s bytes. ``b""`` when
        a string is not valid Unicode.
        """
        if self.json is None:
            m = self.model
            text = _PEER % (
                _string(m.public_key),
                _string(m.endpoint),
                _string(m.allowed_ips),
                m.last_handshake_unix_secs,
                m.rx_bytes,
                m.tx_bytes,
            )
            try:
                self.json = text.encode()
            except UnicodeEncodeError:
                self.json = b""
        return self.json


_PEER: Final = (
    '{"public_key":%s,"endpoint":%s,"allowed_ips":%s,'
    '"last_handshake_unix_secs":%d,"rx_bytes":%d,"tx_bytes":%d}'
)


class StatusWire:
    """Builds ``status`` answers from the engine's :class:`~overlayd.model.Status`."""

    def __init__(self) -> None:
        #: The peers of the last answer, by public key.
        self._peers: dict[str, _Peer] = {}

    def build(self, st: Status) -> tuple[p.StatusResponse, bytes | None]:
        """The answer for ``st`` and its encoding (``None``: encode it the usual way)."""
        cached = self._peers
        fresh: dict[str, _Peer] = {}
        made_all: list[_Peer] = []
        kept = 0
        for peer in st.peers:
            made = cached.get(peer.public_key)
            if made is None or not made.same(peer):
                made = _Peer(peer)
            else:
                kept += 1
            fresh[peer.public_key] = made
            made_all.append(made)
        self._peers = fresh
        rest = dict(
            interface=st.interface,
            node_ip=str(st.node_ip) if st.node_ip else None,
            public_key=st.public_key,
            overlay_cidr=str(st.overlay_cidr) if st.overlay_cidr else None,
            slice_cidr=str(st.slice_cidr) if st.slice_cidr else None,
            peer_count=st.peer_count,
            service_count=st.service_count,
            dedicated_services=[dedicated_status(d) for d in st.dedicated_services],
            nat=nat_status(st.nat),
        )
        without_peers = p.StatusResponse(**rest)
        response = without_peers.model_copy(update={"peers": [m.model for m in made_all]})
        if kept * 2 < len(made_all):
            # Mostly new peers: one encoding of the whole answer is cheaper.
            return response, None
        parts = [m.encoded() for m in made_all]
        if b"" in parts:
            return response, None  # the server's encoding reports the bad text
        return response, _joined(without_peers, parts)


def _joined(without_peers: p.StatusResponse, parts: list[bytes]) -> bytes | None:
    """``encode_response`` of the answer whose peers encode to ``parts``."""
    data = without_peers.to_wire()
    if parts:
        data["peers"] = _PLACEHOLDER
        data = {name: data[name] for name in _FIELDS if name in data}
    try:
        encoded = p.encode_json(data, "response")
    except p.ProtocolError:
        return None
    if not parts:
        return encoded
    before, found, after = encoded.partition(_PLACEHOLDER_JSON)
    if not found or _PLACEHOLDER_JSON in after:
        return None
    return b"".join((before, b"[", b",".join(parts), b"]", after))
