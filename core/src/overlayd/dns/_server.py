"""The asyncio DNS server: listeners, query handling, forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final
from typing import TypeVar
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from overlayd.dns import _wire
from overlayd.dns._config import DnsConfig
from overlayd.dns._config import HostPort
from overlayd.dns._config import normalize_zone
from overlayd.dns._config import parse_hostport
from overlayd.dns._records import Address
from overlayd.dns._records import AddressLike
from overlayd.dns._records import RecordStore
from overlayd.dns._records import name_wire
from overlayd.errors import DnsError
from overlayd.errors import InvalidRequest
from overlayd.stats import Histogram
from overlayd.stats import LabelledCounter

__all__ = ["DnsServer", "DnsStats"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Queries longer than this are answered FORMERR unparsed (a real query is < 300 bytes).
MAX_QUERY: Final = 4096
#: Forwarded queries one TCP connection may have in flight before we stop reading.
TCP_PIPELINE: Final = 16
_NS_KEY: Final = b"\x02ns"
_LEN: Final = struct.Struct("!H")

_RCODE_NOERROR: Final = 0
_RCODE_FORMERR: Final = 1
_RCODE_SERVFAIL: Final = 2
_RCODE_NXDOMAIN: Final = 3
_RCODE_NOTIMP: Final = 4
_RCODE_REFUSED: Final = 5


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


@dataclass(frozen=True)
class _Forward:
    """A query to relay upstream; the reply is sent by a task."""

    query: bytes
    #: Lower-case question section (name, type, class) in wire form.
    question: bytes
    #: The same with the client's spelling, for replies we make ourselves.
    question_orig: bytes
    #: Largest reply the client accepts (UDP), 65535 on TCP.
    limit: int


@dataclass
class _Listener:
    spec: HostPort
    bound: HostPort
    udp: asyncio.DatagramTransport
    udp_proto: _UdpProtocol
    tcp: asyncio.Server
    conns: set[asyncio.StreamWriter] = field(default_factory=set)
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)


class _UpstreamFailed(Exception):
    """An upstream gave no usable answer (internal to the forwarder)."""


class DnsServer:
    """Authoritative server for one zone plus a forwarder for everything else.

    Records may be changed from any thread at any time (``set_records`` and
    friends): that only swaps dictionary entries, it never touches a socket.
    Listeners are opened and closed on the event loop that ran :meth:`start`;
    :meth:`set_listeners` only opens and closes the difference. From another
    thread use :meth:`call_threadsafe`.
    """

    def __init__(self, config: DnsConfig | None = None) -> None:
        self.config = config or DnsConfig()
        self.stats = DnsStats()
        self._store = RecordStore(self.config.zone, self.config.ttl)
        self._listeners: dict[HostPort, _Listener] = {}
        self._wanted = [parse_hostport(a) for a in self.config.listen]
        self._upstreams = [parse_hostport(a) for a in self.config.upstreams]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwarding = 0
        self._tcp_count = 0
        self._listen_lock: asyncio.Lock | None = None
        self._live: list[HostPort] = []
        self._ra = False
        self._update_upstreams()

    # -- properties ----------------------------------------------------------------

    @property
    def zone(self) -> str:
        """The zone, absolute and lower case (``prod.local.``)."""
        return self._store.zone.name.to_text()

    @property
    def listeners(self) -> dict[str, HostPort]:
        """Open listeners: requested address text → bound address (real port)."""
        return {str(k): v.bound for k, v in self._listeners.items()}

    @property
    def forwarding(self) -> bool:
        """True when names outside the zone are forwarded (enabled, with upstreams)."""
        return self._ra

    def _update_upstreams(self) -> None:
        # Never forward to one of our own sockets: that would loop.
        ours = {(b.host, b.port) for b in (x.bound for x in self._listeners.values())}
        self._live = [u for u in self._upstreams if (u.host, u.port) not in ours]
        self._ra = self.config.forward and bool(self._live)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the configured listeners; on a failure close all and raise DnsError."""
        if self._loop is not None:
            raise InvalidRequest("The DNS server is already started.")
        self._loop = asyncio.get_running_loop()
        self._listen_lock = asyncio.Lock()
        try:
            for spec in self._wanted:
                await self.add_listener(str(spec))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every listener and connection and cancel forwarded queries."""
        for spec in list(self._listeners):
            await self._close(spec)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None
        self._listen_lock = None

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- listeners -----------------------------------------------------------------

    async def add_listener(self, addr: str) -> HostPort:
        """Listen on ``addr`` (UDP and TCP); return the bound address. Idempotent."""
        spec = parse_hostport(addr)
        lock = self._require_started()
        async with lock:
            if spec not in self._wanted:
                self._wanted.append(spec)
            existing = self._listeners.get(spec)
            if existing is not None:
                return existing.bound
            listener = await self._open(spec)
            self._listeners[spec] = listener
            self._update_upstreams()
            logger.info("DNS server listening on %s (UDP+TCP)", listener.bound)
            return listener.bound

    async def remove_listener(self, addr: str) -> None:
        """Stop listening on ``addr`` and close its TCP connections (no-op)."""
        spec = parse_hostport(addr)
        lock = self._require_started()
        async with lock:
            if spec in self._wanted:
                self._wanted.remove(spec)
            await self._close(spec)

    async def set_listeners(self, addrs: Iterable[str]) -> None:
        """Listen on exactly ``addrs``: open the new ones, close the removed ones.

        Unchanged listeners are not touched. When some addresses cannot be
        bound the others are still opened, then :class:`DnsError` lists the
        failures.
        """
        wanted = list(dict.fromkeys(parse_hostport(a) for a in addrs))
        lock = self._require_started()
        failures: list[str] = []
        async with lock:
            self._wanted = wanted
            for spec in [s for s in self._listeners if s not in wanted]:
                await self._close(spec)
            for spec in wanted:
                if spec in self._listeners:
                    continue
                try:
                    self._listeners[spec] = await self._open(spec)
                except DnsError as exc:
                    failures.append(str(exc))
                else:
                    self._update_upstreams()
                    logger.info("DNS server listening on %s (UDP+TCP)", spec)
        if failures:
            raise DnsError(" ".join(failures), op="dns_serve")

    def _require_started(self) -> asyncio.Lock:
        if self._listen_lock is None:
            raise InvalidRequest("The DNS server is not started; call start() first.")
        return self._listen_lock

    async def _open(self, spec: HostPort) -> _Listener:
        loop = asyncio.get_running_loop()
        usock, tsock = self._bind_pair(spec)
        try:
            bound = HostPort(spec.host, usock.getsockname()[1], spec.version)
            local = None if spec.host in ("0.0.0.0", "::") else spec.host
            udp, udp_proto = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self, local), sock=usock
            )
        except BaseException:
            usock.close()
            tsock.close()
            raise
        conns: set[asyncio.StreamWriter] = set()

        handlers: set[asyncio.Task[Any]] = set()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                handlers.add(task)
            try:
                await self._tcp_client(reader, writer, conns, local)
            finally:
                if task is not None:
                    handlers.discard(task)

        try:
            tcp = await asyncio.start_server(on_client, sock=tsock, backlog=128)
        except BaseException:
            udp.close()
            tsock.close()
            raise
        return _Listener(spec, bound, udp, udp_proto, tcp, conns, handlers)

    @staticmethod
    def _bind_pair(spec: HostPort) -> tuple[socket.socket, socket.socket]:
        """Bind a UDP and a TCP socket on the same port (ephemeral for port 0)."""
        family = socket.AF_INET6 if spec.version == 6 else socket.AF_INET
        attempts = 20 if spec.port == 0 else 1
        last: OSError | None = None
        for _ in range(attempts):
            usock = _bind(family, socket.SOCK_DGRAM, spec.host, spec.port)
            port = usock.getsockname()[1]
            try:
                tsock = _bind(family, socket.SOCK_STREAM, spec.host, port)
            except DnsError as exc:
                usock.close()
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                    last = cause
                    continue
                raise
            return usock, tsock
        raise DnsError(
            f"Cannot find a port free for both UDP and TCP on {spec.host}: {last}.",
            op="dns_serve",
        )

    async def _close(self, spec: HostPort) -> None:
        listener = self._listeners.pop(spec, None)
        if listener is None:
            return
        self._update_upstreams()
        listener.udp.close()
        listener.tcp.close()
        # The socket is closed a loop iteration later; wait so the port is free.
        await asyncio.wait([listener.udp_proto.closed], timeout=2.0)
        for writer in list(listener.conns):
            writer.transport.abort()
        if listener.handlers:
            # Let the connection handlers see the abort and finish on their own.
            await asyncio.wait(listener.handlers, timeout=2.0)
        await listener.tcp.wait_closed()
        logger.info("DNS server stopped listening on %s", listener.bound)

    # -- records (any thread) ------------------------------------------------------

    def set_records(self, name: str, ips: Iterable[AddressLike]) -> None:
        """Make ``ips`` the complete address list of ``name``; empty removes it."""
        self._store.set_records(name, ips)

    def add_record(self, name: str, ip: AddressLike) -> None:
        """Add ``ip`` to ``name``; a no-op when present."""
        self._store.add_record(name, ip)

    def remove_record(self, name: str, ip: AddressLike | None = None) -> None:
        """Remove ``ip`` from ``name``, or the whole name when ``ip`` is None."""
        self._store.remove_record(name, ip)

    def update_records(
        self,
        removed: Iterable[tuple[str, AddressLike]],
        added: Iterable[tuple[str, AddressLike]],
    ) -> None:
        """Remove, then add, many ``(name, address)`` pairs (each name rebuilt once)."""
        self._store.update(removed, added)

    def replace_all(self, mapping: Mapping[str, Iterable[AddressLike]]) -> None:
        """Replace every record at once with ``mapping`` (name → addresses)."""
        self._store.replace_all(mapping)

    def get_records(self, name: str) -> list[Address]:
        """Addresses of ``name`` (relative or absolute); empty when unknown."""
        return self._store.get(name)

    def records(self) -> dict[str, list[Address]]:
        """Every record: absolute name → addresses."""
        return self._store.snapshot()

    def set_zone(self, zone: str) -> None:
        """Serve the same records under ``zone`` (records are kept relative)."""
        self._store.set_zone(normalize_zone(zone))

    def call_threadsafe(self, coro: Coroutine[Any, Any, _T], timeout: float | None = 10.0) -> _T:
        """Run ``coro`` (e.g. ``set_listeners(...)``) on the server's loop; wait."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise InvalidRequest("The DNS server is not started; call start() first.")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise InvalidRequest(
                "call_threadsafe() was called on the server's own event loop; "
                "await the coroutine instead."
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    # -- query handling ------------------------------------------------------------

    def _handle(
        self, data: bytes, local: str | None = None, tcp: bool = False
    ) -> bytes | _Forward | None:
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
            return self._error(data, _RCODE_FORMERR)
        if flags & _wire.OPCODE_MASK:
            return self._error(data, _RCODE_NOTIMP)
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
        if rcode == _RCODE_FORMERR:
            st.formerr += 1
        elif rcode == _RCODE_NOTIMP:
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
            if q.qtype == 1:
                rrs = entry.a_rr
                if len(rrs) > 1:
                    i = entry.turn_a % len(rrs)
                    entry.turn_a = i + 1
                    rrs = rrs[i:] + rrs[:i]
            else:
                rrs = entry.aaaa_rr
                if len(rrs) > 1:
                    i = entry.turn_aaaa % len(rrs)
                    entry.turn_aaaa = i + 1
                    rrs = rrs[i:] + rrs[:i]
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
            rcode = _RCODE_NOERROR
            if entry is None and key and key not in t.ents:
                rcode = _RCODE_NXDOMAIN
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

    def _slow(self, data: bytes, local: str | None, tcp: bool) -> bytes | _Forward | None:
        st = self.stats
        try:
            msg = dns.message.from_wire(data)
        except dns.message.ShortHeader:
            st.dropped += 1
            return None
        except Exception as exc:  # noqa: BLE001 - hostile input may raise anything in the parser; answer FORMERR, never crash
            logger.debug("FORMERR for a query dnspython cannot parse: %r", exc)
            return self._error(data, _RCODE_FORMERR)
        if len(msg.question) != 1:
            return self._error(data, _RCODE_FORMERR)
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
        return _Forward(
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
            if entry is not None and len(a) > 1 and not want_any:
                i = entry.turn_a % len(a)
                entry.turn_a = i + 1
                a = a[i:] + a[:i]
            self._add_addresses(resp, qname, dns.rdatatype.A, a, ttl)
        if qtype == dns.rdatatype.AAAA or want_any:
            if entry is not None and len(aaaa) > 1 and not want_any:
                i = entry.turn_aaaa % len(aaaa)
                entry.turn_aaaa = i + 1
                aaaa = aaaa[i:] + aaaa[:i]
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

    # -- forwarding ----------------------------------------------------------------

    def _spawn_forward(self, job: _Forward, send: Callable[[bytes], None]) -> None:
        task = asyncio.get_running_loop().create_task(self._forward_and_send(job, send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_and_send(self, job: _Forward, send: Callable[[bytes], None]) -> None:
        started = time.perf_counter()
        reply = await self._forward(job)
        self.stats.forward_seconds.observe(time.perf_counter() - started)
        self.stats.by_query.inc(_wire.qtype_name(job.query), _wire.rcode_name(reply))
        try:
            send(reply)
        except (OSError, RuntimeError) as exc:
            self.stats.dropped += 1
            logger.debug("could not send a forwarded answer: %s", exc)

    async def _forward(self, job: _Forward) -> bytes:
        """Relay ``job`` to the upstreams in order; SERVFAIL when none answers."""
        self._forwarding += 1
        try:
            reply = await self._ask_upstreams(job)
        finally:
            self._forwarding -= 1
        st = self.stats
        st.answered += 1
        if reply is None:
            st.servfail += 1
            qid, flags = struct.unpack_from("!HH", job.query, 0)
            return (
                _wire.header(
                    qid,
                    _wire.QR | (flags & (_wire.RD | _wire.CD)) | _wire.RA | _RCODE_SERVFAIL,
                    0,
                    0,
                    0,
                )
                + job.question_orig
            )
        # Our ID back, and RA: we offer recursion even if the upstream did not.
        reply = job.query[:2] + bytes((reply[2], reply[3] | 0x80)) + reply[4:]
        rcode = reply[3] & 0xF
        if rcode == _RCODE_NXDOMAIN:
            st.nxdomain += 1
        if len(reply) > job.limit:
            st.truncated += 1
            return _wire.truncated(reply, 12 + len(job.question))
        return reply

    async def _ask_upstreams(self, job: _Forward) -> bytes | None:
        timeout = self.config.upstream_timeout
        for up in list(self._live):
            qid = secrets.randbits(16)
            query = struct.pack("!H", qid) + job.query[2:]
            try:
                async with asyncio.timeout(timeout):
                    reply = await _udp_exchange(up, query, qid, job.question)
                    if reply[2] & 0x02:  # TC: ask again over TCP
                        reply = await _tcp_exchange(up, query, qid, job.question)
            except (TimeoutError, OSError, _UpstreamFailed) as exc:
                logger.debug("upstream %s failed: %r", up, exc)
                continue
            if reply[3] & 0xF in (_RCODE_SERVFAIL, _RCODE_REFUSED):
                logger.debug("upstream %s answered rcode %d", up, reply[3] & 0xF)
                continue
            return reply
        return None

    # -- TCP -----------------------------------------------------------------------

    async def _tcp_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conns: set[asyncio.StreamWriter],
        local: str | None,
    ) -> None:
        if self._tcp_count >= self.config.max_tcp_connections:
            self.stats.dropped += 1
            writer.transport.abort()
            return
        self._tcp_count += 1
        conns.add(writer)
        pending: set[asyncio.Task[None]] = set()
        idle = self.config.tcp_idle_timeout
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        (length,) = _LEN.unpack(await reader.readexactly(2))
                        data = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                if not data:
                    break
                result = self._guarded(data, local, True)
                if isinstance(result, bytes):
                    writer.write(_LEN.pack(len(result)) + result)
                    try:
                        await writer.drain()
                    except ConnectionError:
                        break
                elif result is not None:

                    def send(reply: bytes) -> None:
                        if writer.is_closing():
                            raise RuntimeError("the client closed the TCP connection")
                        writer.write(_LEN.pack(len(reply)) + reply)

                    task = asyncio.get_running_loop().create_task(
                        self._forward_and_send(result, send)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    if len(pending) >= TCP_PIPELINE:
                        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                # The client may half-close after its last query: finish the answers.
                await asyncio.wait(pending)
        finally:
            self._tcp_count -= 1
            conns.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _guarded(self, data: bytes, local: str | None, tcp: bool) -> bytes | _Forward | None:
        try:
            result = self._handle(data, local, tcp)
        except Exception:  # boundary: one bad packet must not stop the listener
            logger.exception("DNS query handling failed; the query is dropped")
            self.stats.dropped += 1
            result = None
        if not isinstance(result, _Forward):  # a forwarded query counts when answered
            outcome = "dropped" if result is None else _wire.rcode_name(result)
            self.stats.by_query.inc(_wire.qtype_name(data), outcome)
        return result


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, local: str | None) -> None:
        self._server = server
        self._local = local
        self._transport: asyncio.DatagramTransport | None = None
        #: Set once the socket is really closed (the port can be bound again).
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio gives datagram protocols a datagram transport (typeshed says Base).
        self._transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        result = self._server._guarded(data, self._local, False)
        if result is None:
            return
        transport = self._transport
        if transport is None:
            return
        if isinstance(result, bytes):
            transport.sendto(result, addr)
            return

        def send(reply: bytes) -> None:
            if transport.is_closing():
                raise RuntimeError("the listener was closed")
            transport.sendto(reply, addr)

        self._server._spawn_forward(result, send)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from replies to clients that went away; nothing to do.
        logger.debug("DNS UDP listener error: %s", exc)


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)


def _ip(text: str) -> Address:
    return ipaddress.ip_address(text.split("%", 1)[0])


def _bind(family: int, kind: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        # getaddrinfo resolves an IPv6 scope (fe80::1%br0) to the sockaddr bind() needs.
        info = socket.getaddrinfo(host, port, family, kind, 0, socket.AI_NUMERICHOST)
        sock.bind(info[0][4])
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        raise DnsError(
            f"Cannot listen for DNS on {host} port {port}/{proto}: "
            f"{exc.strerror or exc}; "
            "check that the address is configured on this host and the port is free.",
            op="dns_serve",
        ) from exc
    return sock


# -- upstream exchanges ------------------------------------------------------------


def _check_reply(reply: bytes, qid: int, question: bytes) -> bool:
    """True when ``reply`` answers our query: same ID, QR set, same question."""
    if len(reply) < 12 or _LEN.unpack_from(reply, 0)[0] != qid or not reply[2] & 0x80:
        return False
    if _LEN.unpack_from(reply, 4)[0] == 0:
        # FORMERR/NOTIMP-style answers may carry no question; take them as failures.
        raise _UpstreamFailed(f"upstream answered rcode {reply[3] & 0xF} without a question")
    return reply[12 : 12 + len(question)].lower() == question


class _UpstreamUdp(asyncio.DatagramProtocol):
    def __init__(self, qid: int, question: bytes, done: asyncio.Future[bytes]) -> None:
        self._qid = qid
        self._question = question
        self._done = done

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._done.done():
            return
        try:
            if _check_reply(data, self._qid, self._question):
                self._done.set_result(data)
        except _UpstreamFailed as exc:
            self._done.set_exception(exc)

    def error_received(self, exc: Exception) -> None:
        if not self._done.done():
            self._done.set_exception(exc)  # e.g. ICMP port unreachable: next upstream now

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(exc or ConnectionError("upstream socket closed"))


async def _udp_exchange(up: HostPort, query: bytes, qid: int, question: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    family = socket.AF_INET6 if up.version == 6 else socket.AF_INET
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UpstreamUdp(qid, question, done),
        remote_addr=(up.host, up.port),
        family=family,
    )
    try:
        transport.sendto(query)
        return await done
    finally:
        transport.close()


async def _tcp_exchange(up: HostPort, query: bytes, qid: int, question: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(up.host, up.port)
    try:
        writer.write(_LEN.pack(len(query)) + query)
        await writer.drain()
        while True:
            (length,) = _LEN.unpack(await reader.readexactly(2))
            reply = await reader.readexactly(length)
            if _check_reply(reply, qid, question):
                return reply
    except asyncio.IncompleteReadError as exc:
        raise _UpstreamFailed("upstream closed the TCP connection early") from exc
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
