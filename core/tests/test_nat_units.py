"""NAT traversal pieces that need no namespace: config, priorities, exchange, checks, BPF."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aioice import stun

from overlayd.config import load_config
from overlayd.errors import ConfigError
from overlayd.keys import generate_private_key
from overlayd.keys import public_key
from overlayd.model import Device
from overlayd.model import NatCandidate
from overlayd.model import PeerStatus
from overlayd.nat.agent import NatAgent
from overlayd.nat.candidates import IpcExchange
from overlayd.nat.candidates import priority
from overlayd.nat.candidates import rank
from overlayd.nat.checks import CheckKeys
from overlayd.nat.checks import answer
from overlayd.nat.checks import check_request
from overlayd.nat.checks import verify_answer
from overlayd.nat.config import NatSettings
from overlayd.nat.config import TurnServer
from overlayd.nat.config import split_host_port
from overlayd.nat.pacing import DIRECT_HEAD_START
from overlayd.nat.pacing import MAX_HEAD_START
from overlayd.nat.pacing import MIN_HEAD_START
from overlayd.nat.pacing import RESEND
from overlayd.nat.pacing import head_start
from overlayd.nat.pacing import resend_interval
from overlayd.nat.peerpath import PeerPath
from overlayd.nat.rawport import bpf_program
from overlayd.nat.rawport import udp_checksum
from overlayd.nat.report import render_nat
from overlayd.nat.turn import relay_mode
from overlayd.protocol import NatCandidateInfo
from overlayd.protocol import NatPeerPathInfo
from overlayd.protocol import NatStatusInfo


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "overlayd.toml"
    # Drivers are named so the table under test loads wherever the real
    # platform drivers are not installed (the tox `core` env has none).
    path.write_text('drivers = ["fake"]\n' + text)
    return path


def test_nat_table_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "[nat]\n"))
    assert cfg.nat == NatSettings()
    assert cfg.nat.enabled is True
    assert cfg.nat.stun_servers == [] and cfg.nat.turn_servers == []
    assert (cfg.nat.refresh, cfg.nat.punch_timeout) == (25.0, 5.0)


def test_nat_table_full(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            '[nat]\nstun_servers = ["stun.example.net", "[2001:db8::1]:3479"]\n'
            "refresh = 10\npunch_timeout = 2\n"
            '[[nat.turn_servers]]\nurl = "turn:turn.example.net:3478?transport=udp"\n'
            'username = "u"\ncredential = "s3cret-xyz"\n',
        )
    )
    assert cfg.nat.turn_servers[0].address() == ("turn.example.net", 3478)
    assert "s3cret-xyz" not in repr(cfg.nat.turn_servers[0])
    assert split_host_port(cfg.nat.stun_servers[0], 3478) == ("stun.example.net", 3478)
    assert split_host_port(cfg.nat.stun_servers[1], 3478) == ("2001:db8::1", 3479)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[nat]\nrefresh = 0\n", "nat.refresh"),
        ("[nat]\npunch_timeout = -1\n", "nat.punch_timeout"),
        ('[nat]\nstun_servers = ["a:b:c"]\n', "IPv6"),
        ('[nat]\nstun_servers = ["host:99999"]\n', "1..65535"),
        ('[nat]\nturn_servers = [{url = "turns:x", username = "u", credential = "p"}]\n', "TLS"),
        (
            '[nat]\nturn_servers = [{url = "turn:x?transport=tcp", username = "u", '
            'credential = "p"}]\n',
            "only UDP",
        ),
        ('[nat]\nturn_servers = [{url = "turn:x", username = "u"}]\n', "credential"),
        ("[nat]\nstun = 1\n", "unknown key `nat.stun`"),
    ],
)
def test_nat_table_rejects(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert needle in str(info.value)


def test_priority_orders_kinds_and_families() -> None:
    host4 = priority("host", "10.0.0.1:51820")
    host6 = priority("host", "[fd00::1]:51820")
    refl = priority("reflexive", "198.51.100.1:51820")
    guessed = priority("reflexive", "198.51.100.1:40000", guessed=True)
    relay = priority("relay", "192.0.2.1:49160")
    assert host4 > host6 > refl > guessed > relay > 0
    assert host4 < 2**32
    assert priority("host", "10.0.0.1:1", index=0) > priority("host", "10.0.0.2:1", index=1)


def test_rank_fills_priorities_sorts_and_drops_duplicates() -> None:
    ranked = rank(
        [
            NatCandidate(kind="relay", endpoint="192.0.2.1:49160"),
            NatCandidate(kind="host", endpoint="10.0.0.1:51820"),
            NatCandidate(kind="host", endpoint="10.0.0.1:51820"),
            NatCandidate(kind="reflexive", endpoint="198.51.100.1:1", priority=7),
        ]
    )
    assert [c.kind for c in ranked] == ["host", "relay", "reflexive"]
    assert ranked[0].priority == priority("host", "10.0.0.1:51820", index=1)


def test_ipc_exchange_notifies_on_change_only() -> None:
    ex = IpcExchange()
    seen: list[str] = []
    ex.on_change(seen.append)
    key = base64.b64encode(bytes(32)).decode()
    cands = [NatCandidate(kind="host", endpoint="10.0.0.1:51820")]
    assert ex.set_peer_candidates(key, cands) is True
    assert ex.set_peer_candidates(key, cands) is False
    assert seen == [key]
    assert ex.peer_candidates(key) == tuple(rank(cands))
    assert ex.set_peer_candidates(key, []) is True
    assert ex.peer_candidates(key) is None
    ex.publish(key, cands)
    assert ex.local() == tuple(cands)


def _pair() -> tuple[CheckKeys, CheckKeys]:
    a, b = generate_private_key(), generate_private_key()
    return CheckKeys(a, public_key(a)), CheckKeys(b, public_key(b))


def test_checks_are_answered_only_for_known_authentic_peers() -> None:
    ka, kb = _pair()
    request = stun.parse_message(bytes(check_request(ka, kb.public_key)))
    assert ka.pair_key(kb.public_key) == kb.pair_key(ka.public_key)
    source = ("198.51.100.7", 40312)
    assert answer(kb, request, source, set()) is None  # unknown sender
    result = answer(kb, request, source, {ka.public_key})
    assert result is not None
    sender, reply = result
    assert sender == ka.public_key
    parsed = stun.parse_message(bytes(reply))
    assert parsed.transaction_id == request.transaction_id
    assert verify_answer(ka, kb.public_key, parsed) == source
    # someone else's key cannot forge an answer
    _, kc = _pair()
    assert verify_answer(kc, kb.public_key, parsed) is None
    # a tampered request fails its integrity
    forged = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        transaction_id=request.transaction_id,
    )
    forged.attributes["USERNAME"] = ka.public_key
    forged.add_message_integrity(b"x" * 32)
    assert answer(kb, stun.parse_message(bytes(forged)), source, {ka.public_key}) is None


def test_udp_checksum_matches_a_known_datagram() -> None:
    src, dst = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    segment = struct.pack("!HHHH", 51820, 3478, 12, 0) + b"ping"
    value = udp_checksum(src, dst, segment)
    # the checksum of the whole thing with the value filled in sums to 0xffff
    filled = struct.pack("!HHHH", 51820, 3478, 12, value) + b"ping"
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(filled))
    words = struct.unpack(f"!{(len(pseudo) + len(filled)) // 2}H", pseudo + filled)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF


def _run_bpf(program: list[tuple[int, int, int, int]], packet: bytes) -> int:
    """A tiny interpreter of the opcodes the filter uses."""
    a = x = 0
    pc = 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0xB1:
            x = 4 * (packet[k] & 0x0F)
        elif code == 0x48:
            a = struct.unpack_from("!H", packet, x + k)[0]
        elif code == 0x40:
            a = struct.unpack_from("!I", packet, x + k)[0]
        elif code == 0x28:
            a = struct.unpack_from("!H", packet, k)[0]
        elif code == 0x20:
            a = struct.unpack_from("!I", packet, k)[0]
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")
        pc += 1


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_bpf_passes_stun_to_the_port_only(family: int) -> None:
    program = bpf_program(51820, family)
    ip_header = bytes([0x45]) + bytes(19) if family == socket.AF_INET else b""
    stun_payload = bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE))

    def packet(dport: int, payload: bytes) -> bytes:
        return ip_header + struct.pack("!HHHH", 3478, dport, 8 + len(payload), 0) + payload

    assert _run_bpf(program, packet(51820, stun_payload)) > 0
    assert _run_bpf(program, packet(51821, stun_payload)) == 0
    wireguard = struct.pack("<I", 4) + bytes(28)  # a transport data message
    assert _run_bpf(program, packet(51820, wireguard)) == 0


def test_render_nat_shows_paths_and_candidates() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    lines = render_nat(
        NatStatusInfo(
            candidates=[NatCandidateInfo(kind="host", endpoint="10.0.0.1:51820")],
            peers=[
                NatPeerPathInfo(
                    public_key=key,
                    path="relayed",
                    endpoint="192.0.2.3:49170",
                    candidates=[
                        NatCandidateInfo(
                            kind="reflexive", endpoint="198.51.100.9:61002", guessed=True
                        )
                    ],
                )
            ],
            warnings=["STUN server x did not answer"],
        )
    )
    text = "\n".join(lines)
    assert "10.0.0.1:51820 (host)" in text
    assert "relayed" in text and "192.0.2.3:49170" in text
    assert "198.51.100.9:61002 (reflexive, guessed)" in text
    assert "warning: STUN server x did not answer" in text


def test_turn_server_address_default_port() -> None:
    assert TurnServer(url="turn:10.0.0.1", username="u", credential="p").address() == (
        "10.0.0.1",
        3478,
    )


# -- relay modes -------------------------------------------------------------------


@pytest.mark.parametrize("ours", [True, False])
@pytest.mark.parametrize("theirs", [True, False])
@pytest.mark.parametrize("single", [True, False])
def test_both_nodes_derive_the_same_relay_mode(ours: bool, theirs: bool, single: bool) -> None:
    """Each node, from its own side, names the same allocation(s) for the pair."""
    ka, kb = sorted(["A" * 43 + "=", "B" * 43 + "="])
    seen_by_a = relay_mode(ours, theirs, ka, kb, single=single)
    seen_by_b = relay_mode(theirs, ours, kb, ka, single=single)
    mirror = {"both": "both", "own": "theirs", "theirs": "own", None: None}
    assert seen_by_b == mirror[seen_by_a]
    if ours and theirs:
        # Both have an allocation: each sends through its own unless that failed;
        # then the smaller key's allocation relays, as when only one has one.
        assert seen_by_a == ("own" if single else "both")
    elif ours or theirs:
        assert seen_by_a == ("own" if ours else "theirs")
    else:
        assert seen_by_a is None


PEER_RELAYED = "198.51.100.1:50002"


class _FakeRelay:
    """A TurnRelay stand-in: records what the agent asks of the allocation."""

    def __init__(self) -> None:
        self.relayed = ("198.51.100.1", 50001)
        self.alive = True
        self.server = SimpleNamespace(url="turn:198.51.100.1:3478")
        #: How long the server takes to answer a probe (seconds).
        self.round_trip = 0.03
        self.bound: dict[str, SimpleNamespace] = {}

    def peer(self, key: str) -> SimpleNamespace | None:
        return self.bound.get(key)

    async def add_peer(self, key: str, permit: list[str], within: float) -> SimpleNamespace:
        return self.bound.setdefault(
            key,
            SimpleNamespace(local_endpoint="127.0.0.1:40001", inbound=True, peer_relay=None),
        )

    def set_inbound(self, key: str, inbound: bool) -> None:
        if key in self.bound:
            self.bound[key].inbound = inbound

    def set_peer_relay(self, key: str, relayed: tuple[str, int] | None) -> None:
        if key in self.bound:
            self.bound[key].peer_relay = relayed

    def remove_peer(self, key: str) -> None:
        self.bound.pop(key, None)

    async def probe(self, within: float) -> bool:
        await asyncio.sleep(self.round_trip)
        return self.alive

    async def close(self, delete: bool = True) -> None:
        self.alive = False


class _FakeHooks:
    """WireGuard that handshakes only where ``works`` says the pair can."""

    def __init__(self, peer_key: str, works: Callable[[str], bool]) -> None:
        self.peer_key, self.works = peer_key, works
        self.pointed: list[str] = []

    def nat_set_endpoint(self, device: Device, key: str, endpoint: str, keepalive: int) -> None:
        self.pointed.append(endpoint)

    def nat_candidates(self, device: Device) -> list[NatCandidate]:
        return [NatCandidate(kind="host", endpoint="192.0.2.7:51820")]

    def peer_status(self, device: Device) -> list[PeerStatus]:
        endpoint = self.pointed[-1] if self.pointed else None
        shook = endpoint is not None and self.works(endpoint)
        return [
            PeerStatus(
                public_key=self.peer_key, endpoint=endpoint, last_handshake_unix_secs=int(shook)
            )
        ]


def _agent(works: Callable[[_FakeRelay, str], bool], *, smaller: bool) -> tuple[Any, ...]:
    """A NAT agent with a fake allocation, and a peer that offers a relayed candidate."""
    ka, kb = _pair()
    if (ka.public_key < kb.public_key) != smaller:
        ka, kb = kb, ka
    relay = _FakeRelay()
    hooks = _FakeHooks(kb.public_key, lambda endpoint: works(relay, endpoint))

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    device = Device(kind="wireguard", name="zl-test", owner="base", driver="fake")
    agent = NatAgent(
        NatSettings(punch_timeout=0.5), device, hooks, run, lambda e: None, IpcExchange(), ka,
        lambda key: 25,
    )  # fmt: skip
    agent.relay = relay  # type: ignore[assignment]
    candidates = (
        NatCandidate(kind="reflexive", endpoint="203.0.113.9:51820", guessed=True),
        NatCandidate(kind="relay", endpoint=PEER_RELAYED),
    )
    return agent, PeerPath(kb.public_key, candidates=candidates), relay, hooks


async def test_both_relay_when_both_have_an_allocation() -> None:
    agent, peer, relay, hooks = _agent(lambda relay, endpoint: True, smaller=False)
    assert await agent._prepare_relay(peer)
    # The keepalives towards the peer's relayed address start beside the checks.
    assert relay.bound[peer.public_key].peer_relay == ("198.51.100.1", 50002)
    assert await agent._go_relayed(peer)
    assert (peer.path, peer.relay_mode) == ("relayed", "both")
    # WireGuard sends to this node's local endpoint; the peer is reached at its relayed address.
    assert hooks.pointed[-1] == "127.0.0.1:40001" == peer.wg_endpoint
    assert peer.endpoint == PEER_RELAYED
    assert not agent._relay_stale(peer)
    # A direct path is confirmed: nothing from the relay reaches WireGuard, keepalives stop.
    agent._leave_relay(peer)
    assert relay.bound[peer.public_key].inbound is False
    assert relay.bound[peer.public_key].peer_relay is None


@pytest.mark.parametrize("smaller", [True, False], ids=["owner", "not-owner"])
async def test_both_relay_falls_back_to_one_allocation(smaller: bool) -> None:
    """The peer relays through one allocation only (an older node, say): so does this one."""

    def works(relay: _FakeRelay, endpoint: str) -> bool:
        bound = next(iter(relay.bound.values()), None)
        return bound is None or bound.peer_relay is None  # anything but both relay

    agent, peer, relay, hooks = _agent(works, smaller=smaller)
    assert await agent._prepare_relay(peer)
    assert await agent._go_relayed(peer)
    assert peer.single_relay and peer.path == "relayed"
    if smaller:  # this node's allocation relays the pair
        assert peer.relay_mode == "own"
        assert hooks.pointed[-1] == "127.0.0.1:40001"
        assert peer.endpoint == "198.51.100.1:50001"
        assert relay.bound[peer.public_key].peer_relay is None  # no keepalives
    else:  # the peer's does: WireGuard goes straight to it
        assert peer.relay_mode == "theirs"
        assert hooks.pointed[-1] == PEER_RELAYED == peer.endpoint
        assert peer.public_key not in relay.bound
    assert not agent._relay_stale(peer)
    # New candidates: both relay is tried again.
    agent.exchange.set_peer_candidates(peer.public_key, list(peer.candidates))
    agent.peers[peer.public_key] = peer
    agent._loop = asyncio.get_running_loop()
    agent._on_candidates(peer.public_key)
    assert not peer.single_relay
    assert peer.task is not None
    peer.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await peer.task


async def test_a_relayed_path_follows_the_allocations() -> None:
    """This node's allocation is lost: the pair relays through the peer's (re-pointed)."""
    agent, peer, relay, hooks = _agent(lambda relay, endpoint: True, smaller=True)
    assert await agent._prepare_relay(peer) and await agent._go_relayed(peer)
    assert peer.relay_mode == "both"
    relay.alive = False
    assert agent._relay_stale(peer)
    assert await agent._go_relayed(peer)
    assert (peer.relay_mode, hooks.pointed[-1]) == ("theirs", PEER_RELAYED)


def test_head_start_follows_the_round_trip_to_the_servers() -> None:
    assert head_start(None) == DIRECT_HEAD_START  # nothing measured: as before
    assert head_start(0.0) == MIN_HEAD_START  # two check intervals at the least
    assert head_start(0.0005) == pytest.approx(0.102)  # a LAN
    assert head_start(0.05) == pytest.approx(0.3)  # two intervals and four round trips
    assert head_start(0.4) == MAX_HEAD_START
    rtts = [0.0, 0.001, 0.01, 0.03, 0.1, 0.2, 0.5]
    starts = [head_start(r) for r in rtts]
    assert starts == sorted(starts)


def test_resend_outlasts_a_handshake() -> None:
    assert resend_interval(None) == RESEND
    assert resend_interval(0.001) == 0.2  # a LAN: bounded below
    assert resend_interval(0.1) == pytest.approx(0.4)  # four server round trips
    assert resend_interval(5.0) == 2.0
    rtts = [0.0, 0.01, 0.06, 0.1, 0.3, 1.0]
    assert [resend_interval(r) for r in rtts] == sorted(resend_interval(r) for r in rtts)


async def test_a_refresh_measures_the_round_trip_to_its_relay() -> None:
    """The allocation's probe is timed at every refresh: the head start follows it."""
    agent, _, relay, _ = _agent(lambda relay, endpoint: True, smaller=True)
    assert agent.server_rtt is None
    await agent._gather()
    assert agent.server_rtt is not None and 0.03 <= agent.server_rtt < 0.3
    assert [c.kind for c in agent.local] == ["host", "relay"]
    # The server answers more slowly: the next refresh measures it, and the
    # direct checks get a longer head start.
    before = head_start(agent.server_rtt)
    relay.round_trip = 0.3
    await agent._gather()
    assert agent.server_rtt >= 0.3
    assert head_start(agent.server_rtt) > before
    # A refresh that measures nothing (the allocation lost, no new one) keeps the last figure.
    measured = agent.server_rtt
    relay.alive = False
    await agent._gather()
    assert agent.server_rtt == measured
    assert [c.kind for c in agent.local] == ["host"]


async def test_paths_confirmed_at_once_share_their_reads_of_the_device() -> None:
    """Forty peers wait on a handshake together: each read of the device serves all of them."""
    keys = [_pair()[1].public_key for _ in range(40)]
    loop = asyncio.get_running_loop()
    shake_at = loop.time() + 0.15

    class Hooks:
        reads = 0

        def nat_set_endpoint(self, device: Device, key: str, endpoint: str, keepalive: int) -> None:
            pass

        def peer_status(self, device: Device) -> list[PeerStatus]:
            Hooks.reads += 1
            shook = int(loop.time() >= shake_at)
            return [PeerStatus(public_key=k, last_handshake_unix_secs=shook) for k in keys]

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        await asyncio.sleep(0.002)  # a dump takes a moment
        return fn(*args)

    device = Device(kind="wireguard", name="zl-test", owner="base", driver="fake")
    agent = NatAgent(
        NatSettings(punch_timeout=2.0), device, Hooks(), run, lambda e: None, IpcExchange(),
        _pair()[0], lambda key: 25,
    )  # fmt: skip
    confirmed = await asyncio.gather(
        *(agent._confirm(PeerPath(k), "192.0.2.9:51820") for k in keys)
    )
    assert all(confirmed)
    # At most one read begins every 5 ms, however many wait: about 0.2 s of them
    # (the jitter, then 0.15 s), where each of the forty polled for itself before.
    assert Hooks.reads == agent.peer_poll.reads
    assert Hooks.reads <= 0.2 / 0.005 + 2, Hooks.reads
