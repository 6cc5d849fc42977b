"""The wireguard driver's fast paths give exactly what the slow paths give."""

from __future__ import annotations

import ipaddress
import os

import pytest

from overlayd.model import Device
from overlayd.model import PeerStatus
from overlayd_wireguard.devstate import DevState
from overlayd_wireguard.devstate import build_status
from overlayd_wireguard.uapi import parse_answer
from overlayd_wireguard.uapi import parse_get
from overlayd_wireguard.uapi.client import answer_complete
from overlayd_wireguard.uapi.protocol import fast_get


def _answer(peers: int) -> bytes:
    lines = [f"private_key={os.urandom(32).hex()}", "listen_port=51820"]
    for i in range(peers):
        lines += [
            f"public_key={os.urandom(32).hex()}",
            "preshared_key=" + ("0" * 64 if i % 3 else os.urandom(32).hex()),
            "protocol_version=1",
            *([f"endpoint=10.241.{i // 250}.{i % 250 + 1}:51820"] if i % 5 else []),
            f"last_handshake_time_sec={i * 7}",
            "last_handshake_time_nsec=5",
            f"tx_bytes={i}",
            f"rx_bytes={3 * i}",
            "persistent_keepalive_interval=25",
            *[f"allowed_ip=10.{i % 200}.{j}.0/24" for j in range(i % 3)],
            *(["allowed_ip=fd00::1/64"] if i % 7 == 0 else []),
        ]
    return ("\n".join(lines) + "\nerrno=0\n\n").encode()


def _slow(data: bytes) -> object:
    err, pairs = parse_answer(data)
    assert err == 0
    return parse_get(pairs)


def test_fast_get_equals_slow_parser() -> None:
    data = _answer(300)
    fast = fast_get(data)
    assert fast is not None
    assert fast == _slow(data)
    assert len(fast.peers) == 300


@pytest.mark.parametrize(
    "data",
    [
        b"errno=-22\n\n",
        b"public_key=zz\nerrno=0\n\n",
        _answer(3).replace(b"protocol_version=1", b"protocol_version=x", 1),
        _answer(3).replace(b"\nerrno", b"\nunknown_key=1\nerrno"),
        _answer(3).replace(b"endpoint=10.241.0.2:51820", b"endpoint=10.241.0.999:51820"),
    ],
)
def test_fast_get_leaves_unusual_answers_to_the_slow_parser(data: bytes) -> None:
    assert fast_get(data) is None


def test_fast_get_of_device_without_peers() -> None:
    data = b"listen_port=51820\nerrno=0\n\n"
    assert fast_get(data) == _slow(data)


def test_complete_looks_at_the_last_line_only() -> None:
    assert answer_complete(bytearray(b"a=1\nerrno=0\n\n"))
    assert answer_complete(bytearray(b"errno=-2\n\n"))
    assert not answer_complete(bytearray(b"a=1\n\n"))
    assert not answer_complete(bytearray(b"errno=0\na=1\n\n"))


def test_status_builder_matches_model_construct() -> None:
    values = (
        "A" * 43 + "=",
        "10.0.0.1:51820",
        (ipaddress.ip_network("10.0.0.0/24"),),
        25,
        1_700_000_000,
        10,
        20,
    )
    built = build_status(values)
    ref = PeerStatus.model_construct(
        public_key=values[0],
        endpoint=values[1],
        allowed_ips=values[2],
        persistent_keepalive_secs=values[3],
        last_handshake_unix_secs=values[4],
        rx_bytes=values[5],
        tx_bytes=values[6],
    )
    assert built == ref
    assert built.model_fields_set == ref.model_fields_set
    assert built.model_dump() == ref.model_dump()


def test_needs_route_matches_ipaddress() -> None:
    connected = (ipaddress.ip_network("10.242.0.0/16"), ipaddress.ip_network("fd00::/64"))
    dev = DevState(
        device=Device(kind="wireguard", name="wgx", owner="base", driver="wireguard"),
        connected=connected,
    )
    prefixes = [
        "10.242.1.0/24", "10.242.0.0/16", "10.242.0.0/15", "0.0.0.0/0", "10.243.0.1/32",
        "fd00::1/128", "fd00::/63", "::/0", "192.168.0.0/24", "10.242.255.255/32",
    ]  # fmt: skip
    for p in prefixes:
        net = ipaddress.ip_network(p)
        want = not any(net.version == c.version and net.subnet_of(c) for c in connected)  # type: ignore[arg-type]
        assert dev.needs_route(p) == want, p
        assert dev.needs_route(p) == want, p  # cached answer
    dev.connected = (ipaddress.ip_network("192.168.0.0/16"),)
    assert not dev.needs_route("192.168.0.0/24")  # cache follows the connected prefixes
    assert dev.needs_route("10.242.1.0/24")
