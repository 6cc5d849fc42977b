"""The embedded DNS server over loopback sockets, queried with dnspython."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from pydantic import ValidationError

from overlayd.dns import DnsConfig
from overlayd.dns import DnsServer
from overlayd.dns import parse_hostport
from overlayd.dns import upstreams_from_resolv_conf
from overlayd.errors import DnsError
from overlayd.errors import InvalidRequest

LO = "127.0.0.1"
ZONE = "overlay.local."


def _config(**kw: object) -> DnsConfig:
    base: dict[str, object] = {"listen": [f"{LO}:0"], "upstreams": [], "ttl": 7}
    base.update(kw)
    return DnsConfig.model_validate(base)


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    srv = DnsServer(_config())
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def port_of(srv: DnsServer, addr: str = f"{LO}:0") -> int:
    return srv.listeners[addr].port


async def ask(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    timeout: float = 2.0,
    host: str = LO,
    **kw: object,
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    if tcp:
        return await dns.asyncquery.tcp(q, host, port=port, timeout=timeout)
    return await dns.asyncquery.udp(q, host, port=port, timeout=timeout)


def addresses(msg: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in msg.answer for rd in rrset]


# -- authoritative answers ---------------------------------------------------------


async def test_a_query_returns_every_address_authoritatively_with_ttl(
    server: DnsServer,
) -> None:
    server.set_records("web", ["10.1.0.1", "10.1.0.2"])
    r = await ask(port_of(server), "web.overlay.local.")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert sorted(addresses(r)) == ["10.1.0.1", "10.1.0.2"]
    assert r.answer[0].ttl == 7


async def test_aaaa_query_returns_only_ipv6(server: DnsServer) -> None:
    server.set_records("web", ["10.1.0.1", "fd00::5"])
    r = await ask(port_of(server), "web.overlay.local.", "AAAA")
    assert addresses(r) == ["fd00::5"]
    assert r.answer[0].rdtype == dns.rdatatype.AAAA


async def test_addresses_rotate_round_robin_per_query(server: DnsServer) -> None:
    server.set_records("web", ["10.1.0.1", "10.1.0.2", "10.1.0.3"])
    firsts = []
    for _ in range(6):
        r = await ask(port_of(server), "web.overlay.local.")
        assert sorted(addresses(r)) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
        firsts.append(addresses(r)[0])
    assert firsts[:3] == firsts[3:]
    assert sorted(firsts[:3]) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]


async def test_a_and_aaaa_rotate_independently(server: DnsServer) -> None:
    server.set_records("web", ["10.1.0.1", "10.1.0.2", "fd00::1", "fd00::2"])
    firsts = []
    for _ in range(4):  # getaddrinfo alternates A and AAAA
        firsts.append(addresses(await ask(port_of(server), "web.overlay.local."))[0])
        await ask(port_of(server), "web.overlay.local.", "AAAA")
    assert firsts == ["10.1.0.1", "10.1.0.2", "10.1.0.1", "10.1.0.2"]


async def test_names_are_case_insensitive_and_may_be_absolute(
    server: DnsServer,
) -> None:
    server.set_records("Api.Overlay.Local.", ["10.1.0.9"])
    r = await ask(port_of(server), "aPI.OVERLAY.local.")
    assert addresses(r) == ["10.1.0.9"]
    assert r.question[0].name.to_text() == "aPI.OVERLAY.local."  # case preserved
    assert server.get_records("api") == [ipaddress.ip_address("10.1.0.9")]


async def test_ptr_answers_for_held_ipv4_and_ipv6(server: DnsServer) -> None:
    server.set_records("c-1.web", ["10.1.0.4", "fd00::4"])
    for ip in ("10.1.0.4", "fd00::4"):
        rev = dns.reversename.from_address(ip).to_text()
        r = await ask(port_of(server), rev, "PTR")
        assert r.rcode() == dns.rcode.NOERROR
        assert r.flags & dns.flags.AA
        assert addresses(r) == ["c-1.web.overlay.local."]


async def test_ptr_for_unknown_address_is_refused_without_forwarding(
    server: DnsServer,
) -> None:
    r = await ask(port_of(server), "9.9.1.10.in-addr.arpa.", "PTR")
    assert r.rcode() == dns.rcode.REFUSED


async def test_soa_and_ns_at_apex_with_glue(server: DnsServer) -> None:
    r = await ask(port_of(server), ZONE, "SOA")
    (soa,) = r.answer[0]
    assert soa.mname.to_text() == "ns.overlay.local."
    assert soa.minimum == 7
    r = await ask(port_of(server), ZONE, "NS")
    assert addresses(r) == ["ns.overlay.local."]
    assert [rd.to_text() for rr in r.additional for rd in rr] == [LO]
    r = await ask(port_of(server), "ns.overlay.local.", "A")
    assert addresses(r) == [LO]


async def test_unknown_name_is_nxdomain_with_soa_in_authority(
    server: DnsServer,
) -> None:
    server.set_records("web", ["10.1.0.1"])
    r = await ask(port_of(server), "nope.overlay.local.")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.flags & dns.flags.AA
    assert not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA
    assert r.authority[0].name == dns.name.from_text(ZONE)
    assert r.authority[0].ttl == 7
    assert server.stats.nxdomain == 1


async def test_existing_name_without_the_type_is_nodata(server: DnsServer) -> None:
    server.set_records("v4only", ["10.1.0.1"])
    server.set_records("c-1.svc", ["10.1.0.2"])
    for name, rdtype in (
        ("v4only.overlay.local.", "AAAA"),
        ("v4only.overlay.local.", "MX"),
        ("svc.overlay.local.", "A"),  # empty non-terminal
        (ZONE, "A"),
    ):
        r = await ask(port_of(server), name, rdtype)
        assert r.rcode() == dns.rcode.NOERROR, name
        assert not r.answer
        assert r.authority[0].rdtype == dns.rdatatype.SOA


async def test_removed_records_turn_into_nxdomain(server: DnsServer) -> None:
    server.set_records("c-1.svc", ["10.1.0.2"])
    server.add_record("c-1.svc", "10.1.0.3")
    server.remove_record("c-1.svc", "10.1.0.2")
    assert addresses(await ask(port_of(server), "c-1.svc.overlay.local.")) == ["10.1.0.3"]
    server.remove_record("c-1.svc")
    for name in ("c-1.svc.overlay.local.", "svc.overlay.local."):
        r = await ask(port_of(server), name)
        assert r.rcode() == dns.rcode.NXDOMAIN
    rev = dns.reversename.from_address("10.1.0.3").to_text()
    assert (await ask(port_of(server), rev, "PTR")).rcode() == dns.rcode.REFUSED


async def test_update_records_is_removes_then_adds_one_by_one(server: DnsServer) -> None:
    server.set_records("web", ["10.1.0.2", "10.1.0.3"])
    server.update_records(
        [("web", "10.1.0.2"), ("gone", "10.1.0.9"), ("c-1.svc", "10.1.0.7")],
        [
            *(("web", f"10.1.1.{i}") for i in range(1, 200)),
            ("c-1.svc", "10.1.0.7"),
            ("web", "10.1.0.3"),
        ],
    )
    port = port_of(server)
    # (200 addresses do not fit a UDP answer: read the store)
    web = [str(ip) for ip in server.get_records("web")]
    assert sorted(web, key=ipaddress.ip_address) == [
        "10.1.0.3",
        *(f"10.1.1.{i}" for i in range(1, 200)),
    ]
    assert server.get_records("web")[0] == ipaddress.ip_address("10.1.0.3")  # kept its place
    assert addresses(await ask(port, "c-1.svc.overlay.local.")) == ["10.1.0.7"]
    rev = dns.reversename.from_address("10.1.1.5").to_text()
    assert (await ask(port, rev, "PTR")).answer
    server.update_records(
        [("web", "10.1.0.3"), *(("web", f"10.1.1.{i}") for i in range(1, 200))], []
    )
    assert (await ask(port, "web.overlay.local.")).rcode() == dns.rcode.NXDOMAIN


async def test_replace_all_swaps_every_record(server: DnsServer) -> None:
    server.set_records("old", ["10.1.0.1"])
    server.replace_all({"a": ["10.1.0.2"], "b.overlay.local.": ["10.1.0.3"]})
    assert (await ask(port_of(server), "old.overlay.local.")).rcode() == 3
    assert addresses(await ask(port_of(server), "b.overlay.local.")) == ["10.1.0.3"]
    assert set(server.records()) == {"a.overlay.local.", "b.overlay.local."}


async def test_set_zone_serves_the_same_records_under_the_new_zone(
    server: DnsServer,
) -> None:
    server.set_records("web", ["10.1.0.1"])
    server.set_zone("Prod.Local")
    assert server.zone == "prod.local."
    assert addresses(await ask(port_of(server), "web.prod.local.")) == ["10.1.0.1"]
    r = await ask(port_of(server), "web.overlay.local.")
    assert r.rcode() == dns.rcode.REFUSED  # outside the zone now, no forwarding


def test_record_names_outside_the_zone_are_rejected() -> None:
    srv = DnsServer(_config())
    with pytest.raises(InvalidRequest, match="outside the zone"):
        srv.set_records("web.example.", ["10.1.0.1"])
    with pytest.raises(InvalidRequest, match="not an IP address"):
        srv.set_records("web", ["not-an-ip"])


# -- sizes and transports ----------------------------------------------------------


async def test_large_udp_answer_sets_tc_and_tcp_returns_everything(
    server: DnsServer,
) -> None:
    ips = [f"10.1.1.{i}" for i in range(1, 41)]  # 40 * 16 bytes > 512
    server.set_records("big", ips)
    r = await ask(port_of(server), "big.overlay.local.")
    assert r.flags & dns.flags.TC
    assert not r.answer
    r = await ask(port_of(server), "big.overlay.local.", tcp=True)
    assert not r.flags & dns.flags.TC
    assert sorted(addresses(r)) == sorted(ips)
    r = await ask(port_of(server), "big.overlay.local.", use_edns=0, payload=1232)
    assert not r.flags & dns.flags.TC
    assert len(addresses(r)) == 40
    assert r.edns == 0
    assert server.stats.truncated == 1


async def _tcp_exchange(
    port: int, queries: list[bytes]
) -> tuple[list[dns.message.Message], asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(LO, port)
    writer.write(b"".join(struct.pack("!H", len(q)) + q for q in queries))
    await writer.drain()
    out = []
    for _ in queries:
        (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))
        out.append(dns.message.from_wire(await reader.readexactly(n)))
    return out, reader, writer


async def test_tcp_answers_several_pipelined_queries_on_one_connection(
    server: DnsServer,
) -> None:
    server.set_records("web", ["10.1.0.1"])
    server.set_records("db", ["10.1.0.2"])
    queries = [
        dns.message.make_query(n, "A")
        for n in ("web.overlay.local.", "db.overlay.local.", "x.overlay.local.")
    ]
    answers, _, writer = await _tcp_exchange(port_of(server), [q.to_wire() for q in queries])
    writer.close()
    await writer.wait_closed()
    assert [a.id for a in answers] == [q.id for q in queries]
    assert addresses(answers[0]) == ["10.1.0.1"]
    assert addresses(answers[1]) == ["10.1.0.2"]
    assert answers[2].rcode() == dns.rcode.NXDOMAIN


async def test_idle_tcp_connection_is_closed() -> None:
    srv = DnsServer(_config(tcp_idle_timeout=0.3))
    async with srv:
        reader, writer = await asyncio.open_connection(LO, port_of(srv))
        start = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""  # EOF from the server
        assert time.monotonic() - start < 2.5
        writer.close()


async def test_tcp_connections_beyond_the_limit_are_closed() -> None:
    srv = DnsServer(_config(max_tcp_connections=1))
    async with srv:
        srv.set_records("web", ["10.1.0.1"])
        q = dns.message.make_query("web.overlay.local.", "A").to_wire()
        answers, _, first = await _tcp_exchange(port_of(srv), [q])
        assert addresses(answers[0]) == ["10.1.0.1"]
        reader2, writer2 = await asyncio.open_connection(LO, port_of(srv))
        assert await asyncio.wait_for(reader2.read(), 2) == b""
        assert srv.stats.dropped == 1
        writer2.close()
        first.close()


# -- listeners ---------------------------------------------------------------------


async def _hammer(
    port: int, stop: asyncio.Event, expect: Callable[[dns.message.Message], bool]
) -> tuple[int, list[str]]:
    count = 0
    failures: list[str] = []
    while not stop.is_set():
        try:
            r = await ask(port, "web.overlay.local.", timeout=2)
        except dns.exception.Timeout:
            failures.append("timeout")
            continue
        if not expect(r):
            failures.append(r.to_text())
        count += 1
    return count, failures


async def test_adding_and_removing_a_listener_leaves_the_other_untouched(
    server: DnsServer,
) -> None:
    server.set_records("web", ["10.1.0.1"])
    first = port_of(server)
    transport_before = server._listeners[parse_hostport(f"{LO}:0")].udp
    stop = asyncio.Event()
    load = asyncio.create_task(_hammer(first, stop, lambda r: addresses(r) == ["10.1.0.1"]))
    for _ in range(5):
        bound = await server.add_listener("127.0.0.2:0")
        assert bound.port != first
        r = await ask(bound.port, "web.overlay.local.", host="127.0.0.2")
        assert addresses(r) == ["10.1.0.1"]
        await server.remove_listener("127.0.0.2:0")
        with pytest.raises(dns.exception.Timeout):
            await ask(bound.port, "web.overlay.local.", timeout=0.2, host="127.0.0.2")
    stop.set()
    count, failures = await load
    assert failures == []
    assert count > 10
    assert server._listeners[parse_hostport(f"{LO}:0")].udp is transport_before


async def test_set_listeners_opens_and_closes_only_the_difference(
    server: DnsServer,
) -> None:
    kept = server._listeners[parse_hostport(f"{LO}:0")]
    await server.set_listeners([f"{LO}:0", "127.0.0.3:0"])
    assert set(server.listeners) == {f"{LO}:0", "127.0.0.3:0"}
    assert server._listeners[parse_hostport(f"{LO}:0")] is kept
    added = server._listeners[parse_hostport("127.0.0.3:0")]
    await server.set_listeners(["127.0.0.3:0", f"{LO}:0"])  # same set: no change
    assert server._listeners[parse_hostport("127.0.0.3:0")] is added
    await server.set_listeners(["127.0.0.3:0"])
    assert set(server.listeners) == {"127.0.0.3:0"}
    assert kept.udp.is_closing()
    assert not added.udp.is_closing()


async def test_set_listeners_reports_an_unbindable_address_and_keeps_the_rest(
    server: DnsServer,
) -> None:
    busy = port_of(server)
    with pytest.raises(DnsError, match=f"{busy}"):
        await server.set_listeners([f"{LO}:0", "127.0.0.4:0", f"{LO}:{busy}"])
    assert set(server.listeners) == {f"{LO}:0", "127.0.0.4:0"}


async def test_call_threadsafe_runs_listener_changes_from_a_worker_thread(
    server: DnsServer,
) -> None:
    def worker() -> None:
        server.set_records("web", ["10.1.0.8"])
        server.call_threadsafe(server.add_listener("127.0.0.5:0"))

    await asyncio.to_thread(worker)
    port = server.listeners["127.0.0.5:0"].port
    r = await ask(port, "web.overlay.local.", host="127.0.0.5")
    assert addresses(r) == ["10.1.0.8"]


async def test_record_updates_under_query_load_lose_no_query(
    server: DnsServer,
) -> None:
    sets = (["10.1.0.1", "10.1.0.2"], ["10.1.0.3"])
    allowed = {"10.1.0.1", "10.1.0.2", "10.1.0.3"}
    server.set_records("web", sets[0])
    stop_updates = threading.Event()
    updates = 0

    def updater() -> None:
        nonlocal updates
        i = 0
        while not stop_updates.is_set():
            server.set_records("web", sets[i % 2])
            server.add_record(f"c-{i % 50}.other", f"10.2.0.{i % 200 + 1}")
            server.remove_record(f"c-{(i + 25) % 50}.other")
            if i % 100 == 0:
                server.replace_all({"web": sets[(i + 1) % 2], "x": ["10.3.0.1"]})
            i += 1
            updates += 1

    thread = threading.Thread(target=updater)
    thread.start()
    stop = asyncio.Event()
    try:
        loads = [
            asyncio.create_task(
                _hammer(
                    port_of(server),
                    stop,
                    lambda r: bool(addresses(r)) and set(addresses(r)) <= allowed,
                )
            )
            for _ in range(8)
        ]
        await asyncio.sleep(2.0)
        stop.set()
        results = await asyncio.gather(*loads)
    finally:
        stop_updates.set()
        thread.join()
    total = sum(c for c, _ in results)
    failures = [f for _, fs in results for f in fs]
    assert failures == []
    assert total > 40  # queries kept flowing (count depends on machine load)
    assert updates > 100
    assert server.stats.dropped == 0


# -- forwarding --------------------------------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[DnsServer]:
    srv = DnsServer(_config(zone="upstream.test.", forward=False))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


class _BlackHole(asyncio.DatagramProtocol):
    """An upstream that receives and never answers."""

    def __init__(self) -> None:
        self.received = 0

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.received += 1


@pytest.fixture
async def black_hole() -> AsyncIterator[tuple[int, _BlackHole]]:
    loop = asyncio.get_running_loop()
    proto = _BlackHole()
    transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=(LO, 0))
    try:
        yield transport.get_extra_info("sockname")[1], proto
    finally:
        transport.close()


async def _forwarder(*upstreams: str, **kw: object) -> DnsServer:
    srv = DnsServer(_config(upstreams=list(upstreams), **kw))
    await srv.start()
    return srv


async def test_names_outside_the_zone_are_forwarded_upstream(
    upstream: DnsServer,
) -> None:
    upstream.set_records("www", ["10.9.0.1"])
    srv = await _forwarder(f"{LO}:{port_of(upstream)}")
    try:
        for tcp in (False, True):
            r = await ask(port_of(srv), "www.upstream.test.", tcp=tcp)
            assert addresses(r) == ["10.9.0.1"]
            assert r.flags & dns.flags.RA
        r = await ask(port_of(srv), "nope.upstream.test.")
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert srv.stats.forwarded == 3
        assert upstream.stats.queries == 3
    finally:
        await srv.stop()


async def test_truncated_upstream_answer_is_retried_over_tcp(
    upstream: DnsServer,
) -> None:
    ips = [f"10.9.1.{i}" for i in range(1, 41)]
    upstream.set_records("big", ips)
    srv = await _forwarder(f"{LO}:{port_of(upstream)}")
    try:
        r = await ask(port_of(srv), "big.upstream.test.", tcp=True)
        assert sorted(addresses(r)) == sorted(ips)
        r = await ask(port_of(srv), "big.upstream.test.")  # UDP client, 512 bytes
        assert r.flags & dns.flags.TC
        r = await ask(port_of(srv), "big.upstream.test.", use_edns=0, payload=4096)
        assert len(addresses(r)) == 40
    finally:
        await srv.stop()


async def test_upstream_timeout_gives_servfail(
    black_hole: tuple[int, _BlackHole],
) -> None:
    port, proto = black_hole
    srv = await _forwarder(f"{LO}:{port}", upstream_timeout=0.3)
    try:
        start = time.monotonic()
        r = await ask(port_of(srv), "www.example.test.", timeout=3)
        assert r.rcode() == dns.rcode.SERVFAIL
        assert 0.25 < time.monotonic() - start < 2.0
        assert proto.received == 1
        assert srv.stats.servfail == 1
    finally:
        await srv.stop()


async def test_upstreams_are_tried_in_order(
    black_hole: tuple[int, _BlackHole], upstream: DnsServer
) -> None:
    upstream.set_records("www", ["10.9.0.1"])
    srv = await _forwarder(
        f"{LO}:{black_hole[0]}", f"{LO}:{port_of(upstream)}", upstream_timeout=0.3
    )
    try:
        r = await ask(port_of(srv), "www.upstream.test.", timeout=3)
        assert addresses(r) == ["10.9.0.1"]
        assert black_hole[1].received == 1
    finally:
        await srv.stop()


async def test_upstream_refusal_moves_on_then_servfails(upstream: DnsServer) -> None:
    # `upstream` refuses names outside its zone (forward=False).
    srv = await _forwarder(f"{LO}:{port_of(upstream)}")
    try:
        r = await ask(port_of(srv), "www.example.test.")
        assert r.rcode() == dns.rcode.SERVFAIL
    finally:
        await srv.stop()


async def test_forwarding_off_refuses_names_outside_the_zone(
    upstream: DnsServer,
) -> None:
    srv = await _forwarder(f"{LO}:{port_of(upstream)}", forward=False)
    try:
        r = await ask(port_of(srv), "www.upstream.test.")
        assert r.rcode() == dns.rcode.REFUSED
        assert not r.flags & dns.flags.RA
        assert upstream.stats.queries == 0
    finally:
        await srv.stop()


async def test_no_upstreams_means_refused(server: DnsServer) -> None:
    assert not server.forwarding
    r = await ask(port_of(server), "www.example.test.")
    assert r.rcode() == dns.rcode.REFUSED


async def test_server_never_forwards_to_its_own_listener() -> None:
    srv = DnsServer(_config())
    async with srv:
        own = port_of(srv)
    srv = DnsServer(_config(listen=[f"{LO}:{own}"], upstreams=[f"{LO}:{own}"]))
    async with srv:
        assert not srv.forwarding
        r = await ask(own, "www.example.test.")
        assert r.rcode() == dns.rcode.REFUSED


# -- hostile input -----------------------------------------------------------------


async def _send_raw(port: int, packet: bytes, timeout: float = 0.3) -> bytes | None:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=(LO, port))
    try:
        transport.sendto(packet)
        return await asyncio.wait_for(got, timeout)
    except TimeoutError:
        return None
    finally:
        transport.close()


async def test_hostile_packets_get_formerr_notimp_or_are_dropped(
    server: DnsServer,
) -> None:
    port = port_of(server)
    server.set_records("web", ["10.1.0.1"])
    query = dns.message.make_query("web.overlay.local.", "A")
    wire = query.to_wire()
    assert await _send_raw(port, wire[:7]) is None  # shorter than a header
    response = bytearray(wire)
    response[2] |= 0x80
    assert await _send_raw(port, bytes(response)) is None  # QR=1
    # A question name that points at itself: a compression loop.
    loop_packet = wire[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    garbage = wire[:12] + b"\xff" * 40
    two_questions = wire[:4] + b"\x00\x02" + wire[6:] + wire[12:]
    oversized = wire + b"\x00" * 5000
    for packet in (loop_packet, garbage, two_questions, oversized):
        reply = await _send_raw(port, packet)
        assert reply is not None
        msg = dns.message.from_wire(reply)
        assert msg.rcode() == dns.rcode.FORMERR
        assert msg.id == query.id
    notify = bytearray(wire)
    notify[2] = (notify[2] & 0x87) | (dns.opcode.NOTIFY << 3)
    msg = dns.message.from_wire(await _send_raw(port, bytes(notify)) or b"")
    assert msg.rcode() == dns.rcode.NOTIMP
    assert msg.opcode() == dns.opcode.NOTIFY
    st = server.stats
    assert (st.dropped, st.formerr, st.notimp) == (2, 4, 1)
    assert addresses(await ask(port, "web.overlay.local.")) == ["10.1.0.1"]


async def test_unsupported_edns_version_gets_badvers(server: DnsServer) -> None:
    r = await ask(port_of(server), "web.overlay.local.", use_edns=1)
    assert r.rcode() == dns.rcode.BADVERS


async def test_zone_transfer_is_refused(server: DnsServer) -> None:
    r = await ask(port_of(server), ZONE, "AXFR", tcp=True)
    assert r.rcode() == dns.rcode.REFUSED


# -- configuration -----------------------------------------------------------------


def test_parse_hostport_accepts_the_documented_forms() -> None:
    assert parse_hostport("10.0.0.1") == ("10.0.0.1", 53, 4)
    assert parse_hostport("10.0.0.1:5353") == ("10.0.0.1", 5353, 4)
    assert parse_hostport("[::1]:5353") == ("::1", 5353, 6)
    assert parse_hostport("fd00::1") == ("fd00::1", 53, 6)
    assert str(parse_hostport("[fd00::1]")) == "[fd00::1]:53"
    for bad in ("web:53", "10.0.0.1:99999", "[::1", "[::1]x"):
        with pytest.raises(InvalidRequest):
            parse_hostport(bad)


def test_resolv_conf_upstreams_skip_loopback_stubs(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n"
        "options edns0\nnameserver ::1\nnameserver fd00::53\nnameserver 10.0.0.2\n"
    )
    assert upstreams_from_resolv_conf(conf) == ["10.0.0.2:53", "[fd00::53]:53"]
    assert upstreams_from_resolv_conf(tmp_path / "missing") == []
    conf.write_text("nameserver 127.0.0.53\n")
    cfg = DnsConfig(upstreams=upstreams_from_resolv_conf(conf))
    assert not DnsServer(cfg).forwarding


def test_config_normalises_zone_and_rejects_bad_values() -> None:
    cfg = DnsConfig(zone="Prod.Local", upstreams=["10.0.0.2"], listen=["[::1]:5353"])
    assert cfg.zone == "prod.local."
    assert cfg.upstreams == ["10.0.0.2:53"]
    assert cfg.listen == ["[::1]:5353"]
    with pytest.raises(ValidationError):
        DnsConfig(zone=".")
    with pytest.raises(ValidationError):
        DnsConfig(upstreams=["dns.example"])


async def test_start_fails_cleanly_when_a_listen_address_is_busy(
    server: DnsServer,
) -> None:
    busy = port_of(server)
    srv = DnsServer(_config(listen=["127.0.0.6:0", f"{LO}:{busy}"]))
    with pytest.raises(DnsError, match="Cannot listen"):
        await srv.start()
    assert srv.listeners == {}


async def test_listener_calls_before_start_are_rejected() -> None:
    srv = DnsServer(_config())
    with pytest.raises(InvalidRequest, match="not started"):
        await srv.add_listener(f"{LO}:0")


def test_ipv6_loopback_listener_answers() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")

    async def run() -> list[str]:
        srv = DnsServer(_config(listen=["[::1]:0"]))
        try:
            await srv.start()
        except DnsError:
            pytest.skip("cannot bind ::1 on this host")
        try:
            srv.set_records("web", ["fd00::7"])
            q = dns.message.make_query("web.overlay.local.", "AAAA")
            r = await dns.asyncquery.udp(q, "::1", port=srv.listeners["[::1]:0"].port, timeout=2)
            return addresses(r)
        finally:
            await srv.stop()

    assert asyncio.run(run()) == ["fd00::7"]
