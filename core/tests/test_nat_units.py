"""NAT traversal pieces that need no namespace: config, priorities, exchange, checks, BPF."""

from __future__ import annotations

import base64
import socket
import struct
from pathlib import Path

import pytest
from aioice import stun

from overlayd.config import load_config
from overlayd.errors import ConfigError
from overlayd.keys import generate_private_key
from overlayd.keys import public_key
from overlayd.model import NatCandidate
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
from overlayd.nat.rawport import bpf_program
from overlayd.nat.rawport import udp_checksum
from overlayd.nat.report import render_nat
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
