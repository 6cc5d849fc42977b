"""Byte-level pieces of the DNS wire format (RFC 1035 §4, RFC 6891 for OPT).

dnspython's parsing, building and rendering of a plain A query is most of the
per-query cost of the server (``bench/dns/micro.py``; figures in
``docs/design-notes.rst``, "Measured choices in core"). The fast path here
parses only the shape nearly every stub sends (one question, no compression,
optionally one OPT record) and renders the answer from bytes prepared at
record-update time. Anything else returns ``None`` and goes to the
dnspython path, which gives the same answers (checked by a differential test).
"""

from __future__ import annotations

import struct
from typing import Final
from typing import NamedTuple

__all__ = [
    "AA",
    "CD",
    "QR",
    "RA",
    "RD",
    "TC",
    "FastQuery",
    "header_only",
    "opt_rr",
    "parse_fast",
    "qtype_name",
    "rcode_name",
    "soa_rdata",
    "truncated",
]

QR: Final = 0x8000
AA: Final = 0x0400
TC: Final = 0x0200
RD: Final = 0x0100
RA: Final = 0x0080
CD: Final = 0x0010
OPCODE_MASK: Final = 0x7800
DO: Final = 0x8000  # in the OPT TTL's low 16 bits

TYPE_OPT: Final = 41

RCODE_NOERROR: Final = 0
RCODE_FORMERR: Final = 1
RCODE_SERVFAIL: Final = 2
RCODE_NXDOMAIN: Final = 3
RCODE_NOTIMP: Final = 4
RCODE_REFUSED: Final = 5

#: SOA timers (refresh, retry, expire); the minimum is the configured TTL.
SOA_TIMERS: Final = (3600, 600, 86400)

_HEADER: Final = struct.Struct("!HHHHHH")
_COUNTS: Final = struct.Struct("!HHHH")
_TYPECLASS: Final = struct.Struct("!HH")
_OPT: Final = struct.Struct("!HHBBHH")  # type, payload, ext-rcode, version, flags, rdlen


class FastQuery(NamedTuple):
    """A query in the shape the fast path handles."""

    qid: int
    flags: int
    #: Lower-case question name in wire form, ending in the zero byte.
    qname: bytes
    #: Offsets of each label inside ``qname``.
    labels: list[int]
    qtype: int
    qclass: int
    #: Offset just after the question section.
    qend: int
    #: Requestor's UDP payload size, or 0 when the query has no OPT record.
    payload: int
    #: The DO bit from the OPT record (0 or ``DO``).
    do: int


def parse_fast(data: bytes) -> FastQuery | None:
    """Parse ``data`` if it is a simple query, else return None (use dnspython)."""
    n = len(data)
    if n < 17:
        return None
    qid, flags = _TYPECLASS.unpack_from(data, 0)
    qd, an, ns, ar = _COUNTS.unpack_from(data, 4)
    if qd != 1 or an or ns or ar > 1:
        return None
    pos = 12
    labels = []
    while True:
        length = data[pos]
        if length == 0:
            break
        if length > 63:  # compression pointer or extended label type
            return None
        labels.append(pos - 12)
        pos += length + 1
        if pos >= n:
            return None
    qname_end = pos + 1
    if qname_end - 12 > 255 or qname_end + 4 > n:
        return None
    qtype, qclass = _TYPECLASS.unpack_from(data, qname_end)
    qend = qname_end + 4
    payload = 0
    do = 0
    if ar:
        # One OPT pseudo-RR: root owner, then type, payload, ext-rcode, version,
        # flags, rdlength. Options (cookies, ECS) are ignored, as RFC 7873 §5.1
        # allows a server that does not implement them.
        if qend + 11 > n or data[qend] != 0:
            return None
        otype, payload, ext, version, oflags, rdlen = _OPT.unpack_from(data, qend + 1)
        if otype != TYPE_OPT or ext or version or qend + 11 + rdlen != n:
            return None
        payload = max(payload, 512)
        do = oflags & DO
    elif qend != n:
        return None
    return FastQuery(
        qid, flags, data[12:qname_end].lower(), labels, qtype, qclass, qend, payload, do
    )


def opt_rr(payload: int, do: int) -> bytes:
    """An OPT pseudo-RR advertising ``payload`` with the DO bit ``do``."""
    return b"\x00" + _OPT.pack(TYPE_OPT, payload, 0, 0, do, 0)


def soa_rdata(zone_ref: bytes, serial: int, minimum: int) -> bytes:
    """SOA rdata ``ns.<zone> hostmaster.<zone> serial timers minimum``.

    ``zone_ref`` is the zone name in wire form or a compression pointer to it.
    """
    return (
        b"\x02ns"
        + zone_ref
        + b"\x0ahostmaster"
        + zone_ref
        + struct.pack("!IIIII", serial & 0xFFFFFFFF, *SOA_TIMERS, minimum)
    )


def header(qid: int, flags: int, an: int, ns: int, ar: int) -> bytes:
    """A header with one question."""
    return _HEADER.pack(qid, flags, 1, an, ns, ar)


def header_only(data: bytes, rcode: int) -> bytes:
    """A bare reply (no sections) to the query whose header starts ``data``.

    Keeps ID, opcode and RD; used for FORMERR and NOTIMP, when the question
    cannot be trusted.
    """
    qid, flags = _TYPECLASS.unpack_from(data, 0)
    return _HEADER.pack(qid, QR | (flags & (OPCODE_MASK | RD)) | rcode, 0, 0, 0, 0)


def truncated(response: bytes, question_end: int, opt: bytes = b"") -> bytes:
    """``response`` cut to header + question (+ ``opt``), with TC set.

    RFC 2181 §9: when an RRset does not fit, set TC and let the client retry
    over TCP rather than send a partial RRset.
    """
    qid, flags = _TYPECLASS.unpack_from(response, 0)
    ar = 1 if opt else 0
    return _HEADER.pack(qid, flags | TC, 1, 0, 0, ar) + response[12:question_end] + opt


#: Query types named in metrics; any other counts as ``other`` (a bounded label).
_QTYPE_NAMES: Final = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
}
_RCODE_NAMES: Final = ("noerror", "formerr", "servfail", "nxdomain", "notimp", "refused")


def qtype_name(data: bytes) -> str:
    """The type of the first question of ``data`` for metrics (``invalid`` when unreadable)."""
    pos = 12
    if len(data) <= pos:
        return "invalid"
    for _ in range(128):
        if pos >= len(data):
            return "invalid"
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:
            pos += 2
            break
        pos += 1 + length
    else:
        return "invalid"
    if pos + 2 > len(data):
        return "invalid"
    return _QTYPE_NAMES.get(struct.unpack_from("!H", data, pos)[0], "other")


def rcode_name(reply: bytes) -> str:
    """The response code of ``reply`` in lower case, for metrics."""
    if len(reply) < 4:
        return "invalid"
    code = reply[3] & 0xF
    return _RCODE_NAMES[code] if code < len(_RCODE_NAMES) else "other"
