"""The relay's data plane (``TurnRelay``'s forwarding thread), native and Python.

On loopback in the test process: a UDP socket stands in for the TURN server,
another for WireGuard's port; aioice's TURN client is replaced by a recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aioice import stun

from overlayd.nat import native
from overlayd.nat import turn
from overlayd.nat.config import TurnServer
from overlayd.nat.forwarding import KEEPALIVE_MESSAGE
from overlayd.nat.forwarding import _tune
from overlayd.nat.turn import RelayedPeer
from overlayd.nat.turn import TurnRelay
from overlayd.nat.turn import _Shim

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sockets")

SERVER = TurnServer(url="turn:127.0.0.1:3478", username="u", credential="p")
CHANNEL = 0x4000
#: Where the relayed peer's packets come from, as the TURN server reports it.
REMOTE = ("127.0.0.9", 40000)


class FakeControl:
    """Records what aioice's TURN client would have been given."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.transport = _Shim()
        self.refresh_task = None
        self.control: list[bytes] = []
        self.bound: list[tuple[int, tuple[str, int]]] = []

    async def request_with_retry(self, request: stun.Message) -> Any:
        return None

    async def channel_bind(self, channel: int, address: tuple[str, int]) -> None:
        self.bound.append((channel, address))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.control.append(data)

    async def delete(self) -> None:
        return None


class Bench:
    """The relay under test, its fake TURN server and fake WireGuard port."""

    def __init__(self, relay: TurnRelay, server: socket.socket, wg: socket.socket) -> None:
        self.relay, self.server, self.wg = relay, server, wg
        self.client: tuple[str, int] = ("", 0)

    @property
    def control(self) -> FakeControl:
        control = self.relay._control
        assert isinstance(control, FakeControl)
        return control

    async def peer(self, *, channel: int | None = CHANNEL, key: str = "k1") -> RelayedPeer:
        peer = await self.relay.add_peer(key, [REMOTE[0]], 1.0)
        peer.remote = REMOTE
        peer.channel = channel
        self.relay._index()
        return peer

    def from_turn(self, data: bytes) -> None:
        self.server.sendto(data, self.client)


def _udp(bind: tuple[str, int] = ("127.0.0.1", 0)) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _tune(sock, socket.AF_INET)  # a burst must fit, as on the relay's own sockets
    sock.bind(bind)
    sock.settimeout(5.0)
    return sock


@pytest.fixture(params=["native", "python"])
async def bench(request: pytest.FixtureRequest) -> AsyncIterator[Bench]:
    server, wg = _udp(), _udp()
    relay = TurnRelay(SERVER, socket.socket, wg.getsockname()[1], forwarder=request.param)
    await relay._load_forwarder()
    assert (relay._lib is not None) == (request.param == "native")
    relay._loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    _tune(sock, socket.AF_INET)
    sock.bind(("127.0.0.1", 0))  # not connected, as TurnRelay.start leaves it
    relay._sock = sock
    relay._server = server.getsockname()
    relay._control = FakeControl(server.getsockname())  # type: ignore[assignment]
    relay._start_thread()
    b = Bench(relay, server, wg)
    b.client = sock.getsockname()
    try:
        yield b
    finally:
        await relay.close(delete=False)
        server.close()
        wg.close()


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _recv(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    data, addr = sock.recvfrom(70000)
    return data, (str(addr[0]), int(addr[1]))


def _local(peer: RelayedPeer) -> tuple[str, int]:
    host, port = peer.sock.getsockname()[:2]
    return str(host), int(port)


async def test_wireguard_to_turn_is_channel_data_in_batches(bench: Bench) -> None:
    peer = await bench.peer()
    # Bursts of 100 (more than a batch, less than an untuned socket buffer holds).
    for burst in range(3):
        sent = [b"%05d" % i + b"w" * (i * 7 % 300) for i in range(burst * 100, burst * 100 + 100)]
        for payload in sent:
            bench.wg.sendto(payload, _local(peer))
        for payload in sent:
            data, _ = await asyncio.to_thread(_recv, bench.server)
            assert data == struct.pack("!HH", CHANNEL, len(payload)) + payload
    await _until(lambda: bench.relay.sent == 300)


async def test_turn_to_wireguard_strips_the_header(bench: Bench) -> None:
    peer = await bench.peer()
    for burst in range(3):
        sent = [b"%05d" % i + b"t" * (i * 7 % 300) for i in range(burst * 100, burst * 100 + 100)]
        for payload in sent:
            bench.from_turn(struct.pack("!HH", CHANNEL, len(payload)) + payload)
        for payload in sent:
            assert await asyncio.to_thread(_recv, bench.wg) == (payload, _local(peer))
    await _until(lambda: bench.relay.received == 300)


@pytest.mark.parametrize("size", [1200, 60])
async def test_equal_sized_bursts_both_ways(bench: Bench, size: int) -> None:
    """Runs of one size (the native forwarder sends them as one GSO message), a shorter last."""
    peer = await bench.peer()
    sent = [b"%05d" % i + b"e" * (size - 5) for i in range(80)] + [b"short"]
    for payload in sent:
        bench.wg.sendto(payload, _local(peer))
    for payload in sent:
        data, _ = await asyncio.to_thread(_recv, bench.server)
        assert data == struct.pack("!HH", CHANNEL, len(payload)) + payload
    for payload in sent:
        bench.from_turn(struct.pack("!HH", CHANNEL, len(payload)) + payload)
    for payload in sent:
        assert await asyncio.to_thread(_recv, bench.wg) == (payload, _local(peer))
    await _until(lambda: (bench.relay.sent, bench.relay.received) == (81, 81))


async def test_unknown_channel_and_short_frames_are_not_delivered(bench: Bench) -> None:
    await bench.peer()
    bench.from_turn(struct.pack("!HH", CHANNEL + 1, 3) + b"abc")  # no such channel
    bench.from_turn(struct.pack("!HH", CHANNEL, 10) + b"abc")  # length beyond the datagram
    bench.from_turn(struct.pack("!HH", CHANNEL, 2) + b"ok")
    data, _ = await asyncio.to_thread(_recv, bench.wg)
    assert data == b"ok"


async def test_stun_reaches_the_control_plane_and_the_batch_goes_on(bench: Bench) -> None:
    await bench.peer()
    answer = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.RESPONSE)
    # ChannelData on both sides of the STUN answer, in one burst (one batch).
    bench.from_turn(struct.pack("!HH", CHANNEL, 1) + b"1")
    bench.from_turn(bytes(answer))
    bench.from_turn(struct.pack("!HH", CHANNEL, 1) + b"2")
    got = [(await asyncio.to_thread(_recv, bench.wg))[0] for _ in range(2)]
    assert got == [b"1", b"2"]
    await _until(lambda: len(bench.control.control) == 1)
    assert stun.parse_message(bench.control.control[0]).transaction_id == answer.transaction_id


async def test_unbound_peer_sends_send_indications(bench: Bench) -> None:
    peer = await bench.peer(channel=None)
    bench.wg.sendto(b"handshake", _local(peer))
    data, _ = await asyncio.to_thread(_recv, bench.server)
    message = stun.parse_message(data)
    assert message.message_method == stun.Method.SEND
    assert message.attributes["DATA"] == b"handshake"
    assert message.attributes["XOR-PEER-ADDRESS"] == REMOTE


async def test_data_indication_delivers_then_a_bound_channel_takes_over(bench: Bench) -> None:
    """The Python path learns the peer's address and binds; the table change reaches the loop."""
    peer = await bench.relay.add_peer("k1", [REMOTE[0]], 1.0)
    indication = stun.Message(message_method=stun.Method.DATA, message_class=stun.Class.INDICATION)
    indication.attributes["XOR-PEER-ADDRESS"] = REMOTE
    indication.attributes["DATA"] = b"first"
    bench.from_turn(bytes(indication))
    data, _ = await asyncio.to_thread(_recv, bench.wg)
    assert data == b"first"
    await _until(lambda: peer.channel is not None)
    assert bench.control.bound == [(CHANNEL, REMOTE)]
    bench.from_turn(struct.pack("!HH", CHANNEL, 6) + b"second")
    data, _ = await asyncio.to_thread(_recv, bench.wg)
    assert data == b"second"
    bench.wg.sendto(b"answer", _local(peer))
    data, _ = await asyncio.to_thread(_recv, bench.server)
    assert data == struct.pack("!HH", CHANNEL, 6) + b"answer"


async def test_table_changes_reach_the_loop(bench: Bench) -> None:
    peer = await bench.peer()
    bench.relay.set_inbound("k1", False)
    await asyncio.sleep(0.05)
    bench.from_turn(struct.pack("!HH", CHANNEL, 4) + b"drop")
    await asyncio.sleep(0.05)  # handled before the next change
    bench.relay.set_inbound("k1", True)
    await asyncio.sleep(0.05)
    bench.from_turn(struct.pack("!HH", CHANNEL, 4) + b"keep")
    data, _ = await asyncio.to_thread(_recv, bench.wg)
    assert data == b"keep"
    # Removed, then a second peer on another channel: only it is served.
    bench.relay.remove_peer("k1")
    other = await bench.peer(channel=CHANNEL + 1, key="k2")
    await _until(lambda: peer.sock.fileno() == -1)  # closed once the loop let it go
    bench.from_turn(struct.pack("!HH", CHANNEL, 3) + b"old")
    bench.from_turn(struct.pack("!HH", CHANNEL + 1, 3) + b"new")
    data, addr = await asyncio.to_thread(_recv, bench.wg)
    assert (data, addr) == (b"new", _local(other))


async def test_close_stops_the_thread_and_closes_the_sockets(bench: Bench) -> None:
    peer = await bench.peer()
    thread = bench.relay._thread
    assert thread is not None and thread.is_alive()
    await bench.relay.close(delete=False)
    assert not thread.is_alive()
    assert peer.sock.fileno() == -1
    assert bench.relay._sock is None


# -- both relay: the peer sends through its own allocation -------------------------


def _data_indication(remote: tuple[str, int], data: bytes) -> bytes:
    message = stun.Message(message_method=stun.Method.DATA, message_class=stun.Class.INDICATION)
    message.attributes["XOR-PEER-ADDRESS"] = remote
    message.attributes["DATA"] = data
    return bytes(message)


async def _both(
    bench: Bench, peer_relay: socket.socket, key: str = "k1", channel: int = CHANNEL
) -> RelayedPeer:
    """A bound peer in both relay mode whose relayed address is ``peer_relay``'s."""
    peer = await bench.peer(key=key, channel=channel)
    bench.relay.set_peer_relay(key, peer_relay.getsockname())
    data, _ = await asyncio.to_thread(_recv, peer_relay)
    assert data == KEEPALIVE_MESSAGE  # one at once
    return peer


async def test_datagrams_from_the_peers_relayed_address_reach_wireguard(bench: Bench) -> None:
    """Not TURN-framed, from the peer's relayed address: handed to WireGuard as they are."""
    with _udp() as relayed:
        peer = await _both(bench, relayed)
        for burst in range(3):
            sent = [
                b"%05d" % i + b"r" * (i * 7 % 300) for i in range(burst * 100, burst * 100 + 100)
            ]
            for payload in sent:
                relayed.sendto(payload, bench.client)
            for payload in sent:
                assert await asyncio.to_thread(_recv, bench.wg) == (payload, _local(peer))
        # The first went through Python, which marked the address seen.
        assert peer.relay_seen
        await _until(lambda: bench.relay.received == 300)
        # Equal sizes (one GSO send to WireGuard in the native forwarder).
        sent = [b"%05d" % i + b"g" * 1195 for i in range(80)]
        for payload in sent:
            relayed.sendto(payload, bench.client)
        for payload in sent:
            assert await asyncio.to_thread(_recv, bench.wg) == (payload, _local(peer))


async def test_many_relayed_peers_each_get_their_own_datagrams(bench: Bench) -> None:
    """Datagrams from twelve peers' relayed addresses, interleaved: each reaches WireGuard
    from its own peer's local endpoint (the native table finds a source by binary search)."""
    with contextlib.ExitStack() as stack:
        relays = [stack.enter_context(_udp()) for _ in range(12)]
        peers = [
            await _both(bench, r, key=f"k{i}", channel=CHANNEL + i) for i, r in enumerate(relays)
        ]
        owner = {_local(p): i for i, p in enumerate(peers)}
        for rounds in range(2):  # the first round also marks each address seen
            for n in range(5):
                for i in reversed(range(len(relays))):  # never the last one matched
                    relays[i].sendto(b"%02d %d %d" % (i, rounds, n), bench.client)
            for _ in range(5 * len(relays)):
                data, source = await asyncio.to_thread(_recv, bench.wg)
                assert int(data[:2]) == owner[source], (data, source)
        assert all(p.relay_seen for p in peers)


async def test_both_directions_of_both_relay_and_the_server_in_one_batch(bench: Bench) -> None:
    """ChannelData out to the server; raw in from the relay, server answers in the same burst."""
    with _udp() as relayed:
        peer = await _both(bench, relayed)
        bench.wg.sendto(b"to the peer", _local(peer))
        data, source = await asyncio.to_thread(_recv, bench.server)
        assert data == struct.pack("!HH", CHANNEL, 11) + b"to the peer"
        assert source == bench.client  # from the TURN socket, to the server
        answer = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.RESPONSE)
        relayed.sendto(b"raw 1", bench.client)
        bench.from_turn(bytes(answer))
        relayed.sendto(b"raw 2", bench.client)
        bench.from_turn(struct.pack("!HH", CHANNEL, 3) + b"cd3")
        got = [(await asyncio.to_thread(_recv, bench.wg))[0] for _ in range(3)]
        assert sorted(got) == [b"cd3", b"raw 1", b"raw 2"]
        await _until(lambda: len(bench.control.control) == 1)


async def test_other_sources_and_leaving_the_relay_are_not_delivered(bench: Bench) -> None:
    with _udp() as relayed, _udp() as stranger:
        peer = await _both(bench, relayed)
        relayed.sendto(b"seen", bench.client)
        assert (await asyncio.to_thread(_recv, bench.wg))[0] == b"seen"
        # Not the server, not a peer's relayed address: dropped, whatever it looks like.
        stranger.sendto(b"spoof", bench.client)
        stranger.sendto(struct.pack("!HH", CHANNEL, 5) + b"spoof", bench.client)
        stranger.sendto(bytes(stun.Message(stun.Method.REFRESH, stun.Class.RESPONSE)), bench.client)
        # A direct path works: what still comes through the relay is not WireGuard's.
        relayed.sendto(b"before", bench.client)
        assert (await asyncio.to_thread(_recv, bench.wg))[0] == b"before"
        bench.relay.set_inbound("k1", False)
        await asyncio.sleep(0.05)
        relayed.sendto(b"late", bench.client)
        await asyncio.sleep(0.05)
        bench.relay.set_inbound("k1", True)
        await asyncio.sleep(0.05)
        relayed.sendto(b"again", bench.client)
        data, addr = await asyncio.to_thread(_recv, bench.wg)
        assert (data, addr) == (b"again", _local(peer))
        assert bench.control.control == []
        # No longer in both relay mode: its relayed address is a stranger too.
        bench.relay.set_peer_relay("k1", None)
        await asyncio.sleep(0.05)
        relayed.sendto(b"gone", bench.client)
        bench.from_turn(struct.pack("!HH", CHANNEL, 4) + b"next")
        assert (await asyncio.to_thread(_recv, bench.wg))[0] == b"next"


async def test_keepalives_are_not_delivered(bench: Bench) -> None:
    """A peer's keepalive arrives through our allocation: it only tells where the peer is."""
    with _udp() as relayed:
        peer = await bench.relay.add_peer("k1", [REMOTE[0]], 1.0)
        bench.relay.set_peer_relay("k1", relayed.getsockname())
        assert (await asyncio.to_thread(_recv, relayed))[0] == KEEPALIVE_MESSAGE
        bench.from_turn(_data_indication(REMOTE, KEEPALIVE_MESSAGE))
        # Learnt: a channel is bound, and our keepalive goes at once (the peer is ready).
        await _until(lambda: peer.channel is not None)
        assert peer.remote == REMOTE and bench.control.bound == [(CHANNEL, REMOTE)]
        assert (await asyncio.to_thread(_recv, relayed))[0] == KEEPALIVE_MESSAGE
        bench.from_turn(struct.pack("!HH", CHANNEL, 20) + KEEPALIVE_MESSAGE)
        bench.from_turn(struct.pack("!HH", CHANNEL, 4) + b"data")
        data, _ = await asyncio.to_thread(_recv, bench.wg)
        assert data == b"data"  # the keepalive before it was dropped


async def test_wireguards_first_datagram_waits_for_the_peers_address(bench: Bench) -> None:
    """Sent as soon as the peer's mapping is learnt, not after WireGuard's 5 s retry."""
    peer = await bench.relay.add_peer("k1", [REMOTE[0]], 1.0)
    bench.wg.sendto(b"initiation", _local(peer))
    await _until(lambda: peer.held == b"initiation")
    bench.from_turn(_data_indication(REMOTE, KEEPALIVE_MESSAGE))
    data, _ = await asyncio.to_thread(_recv, bench.server)
    message = stun.parse_message(data)
    assert message.message_method == stun.Method.SEND
    assert (message.attributes["XOR-PEER-ADDRESS"], message.attributes["DATA"]) == (
        REMOTE,
        b"initiation",
    )
    assert peer.held is None


async def test_keepalives_slow_down_once_the_peer_answers(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turn, "KEEPALIVE_EARLY", 0.05)
    monkeypatch.setattr(turn, "KEEPALIVE", 0.5)
    with _udp() as relayed:
        relayed.settimeout(0.3)
        peer = await _both(bench, relayed)
        # Every KEEPALIVE_EARLY while nothing came from the peer's relayed address.
        for _ in range(3):
            assert (await asyncio.to_thread(_recv, relayed))[0] == KEEPALIVE_MESSAGE
        relayed.sendto(b"hello", bench.client)
        assert (await asyncio.to_thread(_recv, bench.wg))[0] == b"hello"
        assert peer.relay_seen
        await asyncio.sleep(0.1)  # one early keepalive may be in flight
        with contextlib.suppress(TimeoutError):
            while True:
                await asyncio.to_thread(_recv, relayed)
        relayed.settimeout(1.0)
        # Then every KEEPALIVE.
        assert (await asyncio.to_thread(_recv, relayed))[0] == KEEPALIVE_MESSAGE
        # Leaving both relay mode ends them.
        bench.relay.set_peer_relay("k1", None)
        await asyncio.sleep(0.01)
        task = bench.relay._keepalive_task
        assert task is not None
        await _until(task.done)


# -- building ---------------------------------------------------------------------


@pytest.fixture
def fresh_native(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("OVERLAYD_NATIVE_CACHE", str(cache))
    native.forget()
    yield cache
    native.forget()


def test_build_is_cached_by_source_hash(fresh_native: Path) -> None:
    first = native.build()
    assert first.parent == fresh_native and first.suffix == ".so"
    mtime = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in fresh_native.iterdir()] == [first.name]  # no leftovers
    assert (fresh_native.stat().st_mode & 0o777) == 0o700


def test_shared_cache_directory_is_refused(fresh_native: Path) -> None:
    fresh_native.mkdir(mode=0o777)
    os.chmod(fresh_native, 0o777)
    with pytest.raises(native.NativeUnavailable, match="not private"):
        native.build()


async def test_no_compiler_falls_back_to_python(
    fresh_native: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    caplog.set_level(logging.WARNING, logger="overlayd.nat.native")
    relay = TurnRelay(SERVER, socket.socket, 51820)
    await relay._load_forwarder()
    assert relay._lib is None
    await TurnRelay(SERVER, socket.socket, 51820)._load_forwarder()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "/nonexistent/cc" in warnings[0]  # said once, with why
    with pytest.raises(native.NativeUnavailable, match="relay_forwarder = 'native'"):
        await TurnRelay(SERVER, socket.socket, 51820, forwarder="native")._load_forwarder()


async def test_failed_compile_falls_back(
    fresh_native: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with pytest.raises(native.NativeUnavailable, match="internal error"):
        native.build()
    assert not any(fresh_native.iterdir())  # nothing half-written left behind
    relay = TurnRelay(SERVER, socket.socket, 51820, forwarder="auto")
    await relay._load_forwarder()
    assert relay._lib is None


def test_the_cache_follows_systemds_cache_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVERLAYD_NATIVE_CACHE", raising=False)
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/overlayd")
    assert native.cache_dir() == Path("/var/cache/overlayd")
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert native.cache_dir() == Path("/x/overlayd")
