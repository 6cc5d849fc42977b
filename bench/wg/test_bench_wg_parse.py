"""Smoke test of the fast paths behind the ``bench/wg`` status figure (run: pytest bench/wg).

``uapi.normalize_allowed_ip`` and ``uapi.normalize_endpoint`` take C shortcuts
(inet_pton/inet_ntop) for what wireguard-go reports; they must give exactly what
the :mod:`ipaddress` reference gives, and leave every odd input to it.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from overlayd.errors import InvalidRequest
from overlayd_wireguard import uapi


def _reference_prefix(text: str) -> str | None:
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        return None


def _ours_prefix(text: str) -> str | None:
    uapi.normalize_allowed_ip.cache_clear()
    try:
        return uapi.normalize_allowed_ip(text)
    except InvalidRequest:
        return None


ODD_PREFIXES = [
    "10.0.0.5/24",
    "10.0.0.0/32",
    "0.0.0.0/0",
    "255.255.255.255/32",
    "10.0.0.0/33",
    "10.0.0.0/024",
    "10.0.0.0/255.255.255.0",
    " 10.0.0.0/8 ",
    "010.0.0.0/8",
    "10.0.0/8",
    "1.2.3.4/ 8",
    "fd00::1/64",
    "FD00:0:0:0:0:0:0:1/128",
    "::/0",
    "::1/128",
    "::ffff:1.2.3.4/128",
    "::1.2.3.4/128",
    "1:0:0:1:0:0:0:1/128",
    "1:0:1:0:1:0:1:0/128",
    "fe80::1%eth0/64",
    "fd00::/129",
    "2001:db8::/0x20",
    "/24",
    "10.0.0.0/",
    "10.0.0.0/٣",
]


@pytest.mark.parametrize("text", ODD_PREFIXES)
def test_allowed_ip_matches_ipaddress_on_odd_input(text: str) -> None:
    assert _ours_prefix(text) == _reference_prefix(text)


def test_allowed_ip_matches_ipaddress_on_random_prefixes() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        if rng.random() < 0.5:
            addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
                rng.getrandbits(32)
            )
            length = rng.randint(0, 32)
        else:
            # Sparse hextets so that zero runs (and their compression) are common.
            words = [rng.choice([0, 0, 0, 1, 0xFFFF, rng.getrandbits(16)]) for _ in range(8)]
            addr = ipaddress.IPv6Address(int("".join(f"{w:04x}" for w in words), 16))
            length = rng.randint(0, 128)
        text = f"{addr}/{length}"
        assert _ours_prefix(text) == _reference_prefix(text), text


def _reference_endpoint(text: str) -> str | None:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            return None
    if not sep or not port.isdigit():
        return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not 0 < int(port) <= 0xFFFF:
        return None
    return f"[{addr}]:{int(port)}" if addr.version == 6 else f"{addr}:{int(port)}"


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.1:51820",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:051820",
        "010.0.0.1:51820",
        "[fd00::1]:51820",
        "[FD00:0::1]:1",
        "[::ffff:1.2.3.4]:1",
        "[fe80::1%eth0]:1",
        "fd00::1:51820",
        "host.example:51820",
        "10.0.0.1",
        "[fd00::1]",
    ],
)
def test_endpoint_matches_ipaddress(text: str) -> None:
    uapi.normalize_endpoint.cache_clear()
    try:
        ours: str | None = uapi.normalize_endpoint(text)
    except InvalidRequest:
        ours = None
    assert ours == _reference_endpoint(text)


def test_get_answer_parses_zero_psk_and_counters() -> None:
    key = "ab" * 32
    answer = (
        f"private_key={'11' * 32}\nlisten_port=51820\npublic_key={key}\n"
        f"preshared_key={'0' * 64}\nendpoint=10.1.2.3:51820\nallowed_ip=10.9.0.7/24\n"
        "rx_bytes=12\ntx_bytes=+34\nlast_handshake_time_sec=5\nerrno=0\n\n"
    ).encode()
    err, pairs = uapi.parse_answer(answer)
    state = uapi.parse_get(pairs)
    assert err == 0
    (peer,) = state.peers
    assert peer.preshared_key is None
    assert peer.allowed_ips == ("10.9.0.0/24",)
    assert (peer.rx_bytes, peer.tx_bytes, peer.last_handshake_time_sec) == (12, 34, 5)
    assert peer.endpoint == "10.1.2.3:51820"
    with pytest.raises(uapi.UapiProtocolError, match="negative rx_bytes"):
        uapi.parse_get([("public_key", key), ("rx_bytes", "-1")])
