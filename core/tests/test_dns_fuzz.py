"""Hostile input for the DNS server, and the fast path checked against dnspython's."""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from overlayd.dns import DnsConfig
from overlayd.dns import DnsServer

LO = "127.0.0.1"
RECORDS = {
    "web": ["10.1.0.1", "10.1.0.2", "fd00::1"],
    "c-1.svc": ["10.1.0.3"],
    "v6only": ["fd00::2"],
    "ns": ["10.1.0.53"],
}
NAMES = [
    "web",
    "WEB",
    "c-1.svc",
    "svc",
    "v6only",
    "nope",
    "deep.nope",
    "ns",
    "",
    "x" * 63,
]


def _valid_queries() -> list[bytes]:
    out = []
    for name in ("web", "c-1.svc", "nope", "svc", "out.example.test"):
        fq = name + (".overlay.local." if "example" not in name else ".")
        for rdtype in ("A", "AAAA", "PTR", "SOA"):
            for edns in (-1, 0):
                q = dns.message.make_query(fq, rdtype, use_edns=edns)
                out.append(q.to_wire())
    return out


VALID = _valid_queries()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid query with some bytes changed, cut, or extended."""
    packet = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(packet) - 1))
        packet[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(packet)))
    tail = draw(st.binary(max_size=40))
    return bytes(packet[: max(cut, 12)]) + tail if draw(st.booleans()) else bytes(packet)


@st.composite
def pointer_loops(draw: st.DrawFn) -> bytes:
    """Questions whose names are compression pointers to themselves or each other."""
    qid = draw(st.integers(0, 0xFFFF))
    header = struct.pack("!HHHHHH", qid, 0x0100, draw(st.integers(1, 3)), 0, 0, 0)
    style = draw(st.sampled_from(["self", "pair", "forward", "label-then-self"]))
    if style == "self":
        body = b"\xc0\x0c"
    elif style == "pair":
        body = b"\xc0\x0e\xc0\x0c"
    elif style == "forward":
        body = b"\xc0\x20" + b"\x00" * 30
    else:
        body = b"\x03abc\xc0\x0c"
    return header + body + b"\x00\x01\x00\x01"


PACKETS = st.one_of(
    st.binary(max_size=600),
    mutated(),
    pointer_loops(),
    st.sampled_from(VALID).map(lambda p: p[:2] + bytes((p[2] | 0x80,)) + p[3:]),
)


@dataclass
class Running:
    server: DnsServer
    upstream: DnsServer
    port: int
    loop: asyncio.AbstractEventLoop
    stop: threading.Event = field(default_factory=threading.Event)
    probes: int = 0
    failures: list[str] = field(default_factory=list)


def _check_probe(r: dns.message.Message) -> str | None:
    got = sorted(rd.to_text() for rrset in r.answer for rd in rrset)
    if r.rcode() != dns.rcode.NOERROR or got != ["10.1.0.1", "10.1.0.2"]:
        return r.to_text()
    return None


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    """A server (forwarding to a second one) on a loop in a thread, plus a prober."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, DnsServer] = {}

    async def boot() -> None:
        upstream = DnsServer(
            DnsConfig(listen=[f"{LO}:0"], upstreams=[], forward=False, zone="test.")
        )
        await upstream.start()
        up_port = upstream.listeners[f"{LO}:0"].port
        server = DnsServer(
            DnsConfig(
                listen=[f"{LO}:0"],
                upstreams=[f"{LO}:{up_port}"],
                upstream_timeout=0.5,
                tcp_idle_timeout=1.0,
            )
        )
        server.replace_all(RECORDS)
        await server.start()
        holder["server"], holder["upstream"] = server, upstream

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(boot())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run_loop, daemon=True)
    thread.start()
    assert ready.wait(10)
    server = holder["server"]
    state = Running(server, holder["upstream"], server.listeners[f"{LO}:0"].port, loop)

    def prober() -> None:
        q = dns.message.make_query("web.overlay.local.", "A")
        while not state.stop.is_set():
            q.id = secrets.randbits(16)  # not `random`: hypothesis watches it
            try:
                r = dns.query.udp(q, LO, port=state.port, timeout=2)
            except dns.exception.Timeout:
                state.failures.append("timeout")
                continue
            problem = _check_probe(r)
            if problem:
                state.failures.append(problem)
            state.probes += 1

    probe_thread = threading.Thread(target=prober, daemon=True)
    probe_thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        probe_thread.join(5)

        async def shutdown() -> None:
            await server.stop()
            await state.upstream.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _probe_id(packet: bytes) -> int:
    qid = struct.unpack("!H", packet[:2])[0] if len(packet) >= 2 else 0
    return (qid + 1) & 0xFFFF


def _assert_reply_sane(reply: bytes, packet: bytes) -> None:
    msg = dns.message.from_wire(reply)  # every reply we send must parse
    assert msg.flags & 0x8000
    assert reply[:2] == packet[:2]


@given(packet=PACKETS)
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_fuzzed_udp_packets_never_disturb_valid_queries(running: Running, packet: bytes) -> None:
    probe = dns.message.make_query("web.overlay.local.", "A")
    probe.id = _probe_id(packet)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.connect((LO, running.port))
        sock.send(packet)
        sock.send(probe.to_wire())
        while True:  # replies to the fuzz packet (if any) come before the probe's
            reply = sock.recv(65535)
            if reply[:2] == probe.to_wire()[:2] and reply[12:].lower().startswith(
                probe.to_wire()[12:30].lower()
            ):
                assert _check_probe(dns.message.from_wire(reply)) is None
                break
            _assert_reply_sane(reply, packet)


@given(packet=PACKETS, framed=st.booleans())
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_fuzzed_tcp_messages_never_disturb_valid_queries(
    running: Running, packet: bytes, framed: bool
) -> None:
    probe = dns.message.make_query("web.overlay.local.", "A")
    probe.id = _probe_id(packet)
    with socket.create_connection((LO, running.port), timeout=3) as sock:
        if not framed:
            # Unframed bytes desynchronise the stream: the server may wait for
            # the rest of a bogus length, then time the connection out.
            sock.sendall(packet)
            return
        wire = probe.to_wire()
        if not packet:
            # A zero-length message carries no ID to answer: the server hangs up.
            sock.sendall(b"\x00\x00" + struct.pack("!H", len(wire)) + wire)
            assert sock.recv(65535) == b""
            return
        sock.sendall(struct.pack("!H", len(packet)) + packet + struct.pack("!H", len(wire)) + wire)
        buf = b""
        while True:
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                chunk = sock.recv(65535)
                assert chunk, "server closed the connection before answering the probe"
                buf += chunk
            n = struct.unpack("!H", buf[:2])[0]
            reply, buf = buf[2 : 2 + n], buf[2 + n :]
            if reply[:2] == wire[:2] and reply[12:].lower().startswith(wire[12:30].lower()):
                assert _check_probe(dns.message.from_wire(reply)) is None
                break
            _assert_reply_sane(reply, packet)


def test_prober_saw_no_failure_during_fuzzing(running: Running) -> None:
    """Runs after the fuzz tests in this module (same fixture instance)."""
    assert running.failures == []
    assert running.probes > 0
    st_ = running.server.stats
    if st_.queries > 2 * running.probes:  # the fuzz tests above ran
        assert st_.formerr > 0
        assert st_.dropped > 0


# -- the fast path agrees with the dnspython path ----------------------------------


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(NAMES))
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    fq = f"{name}.overlay.local." if name else "overlay.local."
    rdtype = draw(st.sampled_from(["A", "AAAA"]))
    edns = draw(st.sampled_from([-1, 0]))
    payload = draw(st.sampled_from([512, 1232, 4096]))
    want_dnssec = draw(st.booleans()) and edns == 0
    q = dns.message.make_query(fq, rdtype, use_edns=edns, payload=payload, want_dnssec=want_dnssec)
    if draw(st.booleans()):
        q.flags &= ~dns.flags.RD
    return q.to_wire()


def _pair(forwarding: bool) -> tuple[DnsServer, DnsServer]:
    ups = [f"{LO}:9"] if forwarding else []
    fast = DnsServer(DnsConfig(upstreams=ups, fast_path=True, ttl=9))
    slow = DnsServer(DnsConfig(upstreams=ups, fast_path=False, ttl=9))
    for srv in (fast, slow):
        srv.replace_all(RECORDS)
        srv.set_records("big", [f"10.5.0.{i}" for i in range(1, 60)])
    return fast, slow


FAST, SLOW = _pair(forwarding=False)
FAST_RA, SLOW_RA = _pair(forwarding=True)


@given(wire=queries(), tcp=st.booleans(), ra=st.booleans())
@settings(max_examples=400, deadline=None)
def test_fast_path_answers_exactly_like_dnspython_path(wire: bytes, tcp: bool, ra: bool) -> None:
    fast, slow = (FAST_RA, SLOW_RA) if ra else (FAST, SLOW)
    a = fast._handle(wire, None, tcp)
    b = slow._handle(wire, None, tcp)
    assert isinstance(a, bytes)
    assert isinstance(b, bytes)
    ma, mb = dns.message.from_wire(a), dns.message.from_wire(b)
    assert ma.flags == mb.flags
    assert ma.rcode() == mb.rcode()
    assert ma.question == mb.question
    assert ma.answer == mb.answer
    assert ma.authority == mb.authority
    assert [r.ttl for r in ma.answer + ma.authority] == [r.ttl for r in mb.answer + mb.authority]
    assert (ma.edns, ma.payload, ma.ednsflags) == (mb.edns, mb.payload, mb.ednsflags)


def test_fast_path_and_dnspython_path_agree_on_truncation() -> None:
    wire = dns.message.make_query("big.overlay.local.", "A").to_wire()
    ra, rb = FAST._handle(wire, None, False), SLOW._handle(wire, None, False)
    assert isinstance(ra, bytes)
    assert isinstance(rb, bytes)
    a, b = dns.message.from_wire(ra), dns.message.from_wire(rb)
    assert a.flags & dns.flags.TC
    assert a.flags == b.flags
    assert a.answer == b.answer == []
