"""Answering a DNS query: the prepared fast path, dnspython for the rest.

:class:`QueryAnswers` is the half of :class:`~overlayd.dns.DnsServer` that
turns a query's bytes into an answer's bytes, or into a
:class:`~overlayd.dns._upstream.ForwardJob` for a name outside the zone. It
touches no socket: the listeners in ``_server.py`` call :meth:`_guarded`
and send what it returns.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import struct
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Final
from typing import TypeVar

import dns.exception
import dns.name

from overlayd.dns import _wire
from overlayd.dns._config import DnsConfig
from overlayd.dns._records import Address
from overlayd.dns._records import RecordStore
from overlayd.dns._records import _Entry
from overlayd.dns._records import name_wire
from overlayd.dns._upstream import ForwardJob
from overlayd.stats import Histogram
from overlayd.stats import LabelledCounter

if TYPE_CHECKING:  # imported at run time by _import_slow_path
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype
    import dns.rrset

__all__ = ["DnsStats", "QueryAnswers"]

logger = logging.getLogger(__name__)

#: Queries longer than this are answered FORMERR unparsed (a real query is < 300 bytes).
MAX_QUERY: Final = 4096
_NS_KEY: Final = b"\x02ns"
#: dnspython's modules that only the slow path uses (:func:`_import_slow_path`).
_SLOW_PATH_MODULES: Final = (
    "dns.flags",
    "dns.message",
    "dns.rcode",
    "dns.rdata",
    "dns.rdataclass",
    "dns.rdatatype",
    "dns.rrset",
)


@dataclass
class DnsStats:
    """Counters since start; read them from any thread.

    ``queries`` counts every packet or TCP message received. Each ends as one
    of: a response sent (``answered``; ``nxdomain``, ``refused``, ``servfail``,
    ``formerr``, ``notimp`` and ``truncated`` count subsets of it) or
    ``dropped`` (too short to answer, a response packet, a server error, a
    client gone). ``forwarded`` counts queries sent to upstreams.
    """

    queries: int = 0
    answered: int = 0
    nxdomain: int = 0
    forwarded: int = 0
    formerr: int = 0
    dropped: int = 0
    refused: int = 0
    servfail: int = 0
    notimp: int = 0
    truncated: int = 0
    #: ``(type, result)`` -> queries; result is the answer's rcode or ``dropped``.
    by_query: LabelledCounter = field(default_factory=LabelledCounter, repr=False)
    #: Seconds to an upstream's answer (or to giving up), per forwarded query.
    forward_seconds: Histogram = field(default_factory=Histogram, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


class QueryAnswers:
    """Query handling of the DNS server (a mixin: the server holds the state)."""

    config: DnsConfig
    stats: DnsStats
    _store: RecordStore
    _ra: bool
    _forwarding: int

    @property
    def forwarding(self) -> bool:
        """True when names outside the zone are forwarded (enabled, with upstreams)."""
        return self._ra

    def _handle(
        self, data: bytes, local: str | None = None, tcp: bool = False
    ) -> bytes | ForwardJob | None:
        """Answer one query: the reply bytes, a forwarding job, or None to drop it."""
        st = self.stats
        st.queries += 1
        if len(data) < 12:
            st.dropped += 1
            return None
        flags = (data[2] << 8) | data[3]
        if flags & _wire.QR:
            st.dropped += 1  # a response: never answer, that is how loops start
            return None
        if len(data) > MAX_QUERY:
            return self._error(data, _wire.RCODE_FORMERR)
        if flags & _wire.OPCODE_MASK:
            return self._error(data, _wire.RCODE_NOTIMP)
        if self.config.fast_path:
            q = _wire.parse_fast(data)
            if q is not None:
                reply = self._fast(q, data, tcp)
                if reply is not None:
                    return reply
        return self._slow(data, local, tcp)

    def _error(self, data: bytes, rcode: int) -> bytes:
        st = self.stats
        st.answered += 1
        if rcode == _wire.RCODE_FORMERR:
            st.formerr += 1
        elif rcode == _wire.RCODE_NOTIMP:
            st.notimp += 1
        return _wire.header_only(data, rcode)

    def _flags(self, qflags: int, rcode: int) -> int:
        flags = _wire.QR | _wire.AA | (qflags & (_wire.RD | _wire.CD)) | rcode
        if self._ra:
            flags |= _wire.RA
        return flags

    def _fast(self, q: _wire.FastQuery, data: bytes, tcp: bool) -> bytes | None:
        """Plain A/AAAA in the zone, from prepared bytes; None means use dnspython."""
        if q.qclass != 1 or (q.qtype != 1 and q.qtype != 28):
            return None
        store = self._store
        zone = store.zone.wire
        cut = len(q.qname) - len(zone)
        if cut < 0 or q.qname[cut:] != zone or (cut and cut not in q.labels):
            return None
        key = q.qname[:cut]
        t = store.tables
        entry = t.names.get(key)
        if entry is None and key == _NS_KEY:
            return None  # the implicit name server name: answered by _slow
        st = self.stats
        rrs: tuple[bytes, ...] = ()
        if entry is not None:
            rrs = _rotated(entry, entry.aaaa_rr if q.qtype == 28 else entry.a_rr, q.qtype == 28)
        opt = _wire.opt_rr(self.config.edns_payload, q.do) if q.payload else b""
        question = data[12 : q.qend]
        if rrs:
            reply = (
                _wire.header(q.qid, self._flags(q.flags, 0), len(rrs), 0, 1 if opt else 0)
                + question
                + b"".join(rrs)
                + opt
            )
        else:
            rcode = _wire.RCODE_NOERROR
            if entry is None and key and key not in t.ents:
                rcode = _wire.RCODE_NXDOMAIN
                st.nxdomain += 1
            zptr = struct.pack("!H", 0xC00C + cut)
            rdata = _wire.soa_rdata(zptr, store.serial, store.ttl)
            soa = zptr + struct.pack("!HHIH", 6, 1, store.ttl, len(rdata)) + rdata
            reply = (
                _wire.header(q.qid, self._flags(q.flags, rcode), 0, 1, 1 if opt else 0)
                + question
                + soa
                + opt
            )
        st.answered += 1
        if not tcp:
            limit = q.payload or 512
            if len(reply) > limit:
                st.truncated += 1
                return _wire.truncated(reply, q.qend, opt)
        return reply

    def _slow(self, data: bytes, local: str | None, tcp: bool) -> bytes | ForwardJob | None:
        _import_slow_path()
        st = self.stats
        try:
            msg = dns.message.from_wire(data)
        except dns.message.ShortHeader:
            st.dropped += 1
            return None
        except Exception as exc:  # noqa: BLE001 - hostile input may raise anything in the parser; answer FORMERR, never crash
            logger.debug("FORMERR for a query dnspython cannot parse: %r", exc)
            return self._error(data, _wire.RCODE_FORMERR)
        if len(msg.question) != 1:
            return self._error(data, _wire.RCODE_FORMERR)
        limit = 65535 if tcp else (max(512, msg.payload) if msg.edns >= 0 else 512)
        resp = dns.message.make_response(
            msg,
            recursion_available=self.forwarding,
            our_payload=self.config.edns_payload,
            pad=0,
        )
        if msg.edns >= 0:
            resp.use_edns(0, msg.ednsflags & dns.flags.DO, self.config.edns_payload, pad=0)
        resp.flags |= msg.flags & dns.flags.CD
        if msg.edns > 0:
            resp.set_rcode(dns.rcode.BADVERS)
            return self._render(resp, limit)
        question = msg.question[0]
        qname = question.name
        qtype = question.rdtype
        zone = self._store.zone.name
        if question.rdclass != dns.rdataclass.IN:
            resp.set_rcode(dns.rcode.REFUSED)
            return self._render(resp, limit)
        if qname.is_subdomain(zone):
            resp.flags |= dns.flags.AA
            self._authoritative(resp, qname, qtype, local)
            return self._render(resp, limit)
        if qtype == dns.rdatatype.PTR:
            owners = self._store.tables.ptr.get(name_wire(qname.canonicalize()))
            if owners:
                resp.flags |= dns.flags.AA
                rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.PTR)
                for key in list(owners):
                    target = self._store.absolute(key)
                    rrset.add(
                        _rdata(dns.rdatatype.PTR, target.to_text()),
                        self._store.ttl,
                    )
                resp.answer.append(rrset)
                return self._render(resp, limit)
        if not self.forwarding:
            resp.set_rcode(dns.rcode.REFUSED)
            return self._render(resp, limit)
        if self._forwarding >= self.config.max_forwarded_inflight:
            logger.warning("DNS forwarding overloaded; answering SERVFAIL")
            resp.set_rcode(dns.rcode.SERVFAIL)
            return self._render(resp, limit)
        st.forwarded += 1
        tail = struct.pack("!HH", qtype, question.rdclass)
        return ForwardJob(
            data,
            name_wire(qname.canonicalize()) + tail,
            name_wire(qname) + tail,
            limit,
        )

    def _authoritative(
        self,
        resp: dns.message.Message,
        qname: dns.name.Name,
        qtype: int,
        local: str | None,
    ) -> None:
        store = self._store
        zone = store.zone.name
        ttl = store.ttl
        rel = qname.relativize(zone)
        key = b"".join(bytes((len(lb),)) + lb.lower() for lb in rel.labels)
        t = store.tables
        entry = t.names.get(key)
        a: list[Address] = []
        aaaa: list[Address] = []
        if entry is not None:
            a = list(entry.a)
            aaaa = list(entry.aaaa)
        elif key == _NS_KEY and local is not None:
            # Our own name server name: the address this query arrived on.
            (a if ":" not in local else aaaa).append(_ip(local))
        if qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            resp.set_rcode(dns.rcode.REFUSED)
            return
        want_any = qtype == dns.rdatatype.ANY
        if qtype == dns.rdatatype.A or want_any:
            if entry is not None and not want_any:
                a = _rotated(entry, a, False)
            self._add_addresses(resp, qname, dns.rdatatype.A, a, ttl)
        if qtype == dns.rdatatype.AAAA or want_any:
            if entry is not None and not want_any:
                aaaa = _rotated(entry, aaaa, True)
            self._add_addresses(resp, qname, dns.rdatatype.AAAA, aaaa, ttl)
        if key == b"" and qtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            resp.answer.append(self._soa_rrset(qname))
        if key == b"" and qtype in (dns.rdatatype.NS, dns.rdatatype.ANY):
            ns_name = dns.name.Name((b"ns", *zone.labels))
            rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.NS)
            rrset.add(_rdata(dns.rdatatype.NS, ns_name.to_text()), ttl)
            resp.answer.append(rrset)
            if qtype == dns.rdatatype.NS:
                glue = t.names.get(_NS_KEY)
                addrs = glue.addresses() if glue else ([_ip(local)] if local else [])
                for addr in addrs:
                    rtype = dns.rdatatype.A if addr.version == 4 else dns.rdatatype.AAAA
                    self._add_addresses(resp, ns_name, rtype, [addr], ttl, resp.additional)
        if resp.answer:
            return
        if not (entry is not None or key == _NS_KEY or store.exists(t, key)):
            resp.set_rcode(dns.rcode.NXDOMAIN)
            self.stats.nxdomain += 1
        resp.authority.append(self._soa_rrset(zone))

    @staticmethod
    def _add_addresses(
        resp: dns.message.Message,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        addrs: list[Address],
        ttl: int,
        section: list[dns.rrset.RRset] | None = None,
    ) -> None:
        if not addrs:
            return
        rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
        for addr in addrs:
            rrset.add(_rdata(rdtype, str(addr)), ttl)
        (resp.answer if section is None else section).append(rrset)

    def _soa_rrset(self, owner: dns.name.Name) -> dns.rrset.RRset:
        store = self._store
        zone = store.zone.name
        refresh, retry, expire = _wire.SOA_TIMERS
        soa = _rdata(
            dns.rdatatype.SOA,
            f"ns.{zone} hostmaster.{zone} {store.serial & 0xFFFFFFFF} "
            f"{refresh} {retry} {expire} {store.ttl}",
        )
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, dns.rdatatype.SOA)
        rrset.add(soa, store.ttl)
        return rrset

    def _render(self, resp: dns.message.Message, limit: int) -> bytes:
        st = self.stats
        st.answered += 1
        rcode = resp.rcode()
        if rcode == dns.rcode.REFUSED:
            st.refused += 1
        elif rcode == dns.rcode.SERVFAIL:
            st.servfail += 1
        try:
            return resp.to_wire(max_size=limit, want_shuffle=False)
        except dns.exception.TooBig:
            st.truncated += 1
            resp.answer.clear()
            resp.authority.clear()
            resp.additional.clear()
            resp.flags |= dns.flags.TC
            return resp.to_wire(max_size=limit)

    def _guarded(self, data: bytes, local: str | None, tcp: bool) -> bytes | ForwardJob | None:
        try:
            result = self._handle(data, local, tcp)
        except Exception:  # boundary: one bad packet must not stop the listener
            logger.exception("DNS query handling failed; the query is dropped")
            self.stats.dropped += 1
            result = None
        if not isinstance(result, ForwardJob):  # a forwarded query counts when answered
            outcome = "dropped" if result is None else _wire.rcode_name(result)
            self.stats.by_query.inc(_wire.qtype_name(data), outcome)
        return result


def _import_slow_path() -> None:
    """Import dnspython's message machinery, which only the slow path uses.

    About 15-20 ms of the daemon's start-up (docs/design-notes.rst, "Footprint
    of a large node"); the first query the fast path declines pays it once.
    The submodules become attributes of the ``dns`` package, which is how the
    methods above reach them.
    """
    for module in _SLOW_PATH_MODULES:
        importlib.import_module(module)


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)


def _ip(text: str) -> Address:
    return ipaddress.ip_address(text.split("%", 1)[0])


_Seq = TypeVar("_Seq", tuple[bytes, ...], list[Address])


def _rotated(entry: _Entry, items: _Seq, aaaa: bool) -> _Seq:
    """``items`` turned one further for this name and type (round-robin answers)."""
    if len(items) <= 1:
        return items
    if aaaa:
        i = entry.turn_aaaa % len(items)
        entry.turn_aaaa = i + 1
    else:
        i = entry.turn_a % len(items)
        entry.turn_a = i + 1
    return items[i:] + items[:i]
