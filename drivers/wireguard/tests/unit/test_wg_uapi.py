from __future__ import annotations

import errno
import socket
import time
from pathlib import Path

import pytest

from overlayd.errors import Conflict
from overlayd.errors import DeviceError
from overlayd.errors import InvalidRequest
from overlayd.errors import PeerError
from overlayd_wireguard.fakeuapi import FakeUapiServer
from overlayd_wireguard.keys import PresharedKey
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.keys import b64_to_hex
from overlayd_wireguard.keys import generate_keypair
from overlayd_wireguard.uapi import DeviceState
from overlayd_wireguard.uapi import PeerConfig
from overlayd_wireguard.uapi import PeerOp
from overlayd_wireguard.uapi import PeerState
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import UapiClient
from overlayd_wireguard.uapi import UapiDeviceError
from overlayd_wireguard.uapi import UapiPeerError
from overlayd_wireguard.uapi import UapiProtocolError
from overlayd_wireguard.uapi import UapiUnavailableError
from overlayd_wireguard.uapi import diff_peers
from overlayd_wireguard.uapi import encode_set
from overlayd_wireguard.uapi import normalize_allowed_ip
from overlayd_wireguard.uapi import normalize_endpoint
from overlayd_wireguard.uapi import parse_answer
from overlayd_wireguard.uapi import parse_get
from overlayd_wireguard.uapi import redact
from overlayd_wireguard.uapi import validate_ifname

from .conftest import assert_device
from .conftest import peer_with_every_field
from .conftest import pub

# ----------------------------------------------------------------- values


def test_normalize_allowed_ip_masks_host_bits() -> None:
    assert normalize_allowed_ip("10.98.0.5/24") == "10.98.0.0/24"
    assert normalize_allowed_ip("fd00::1/64") == "fd00::/64"
    for bad in ("10.0.0.1", "10.0.0.0/33", "a,b/1", "host/24"):
        with pytest.raises(InvalidRequest, match="CIDR"):
            normalize_allowed_ip(bad)


def test_normalize_endpoint_accepts_numeric_and_refuses_names() -> None:
    assert normalize_endpoint("10.99.0.2:51820") == "10.99.0.2:51820"
    assert normalize_endpoint("[fd00:0::1]:7") == "[fd00::1]:7"
    for bad in (
        "localhost:51820",
        "10.0.0.1",
        "10.0.0.1:0",
        "10.0.0.1:70000",
        "fd00::1:5",
        "[fd00::1]",
        "10.0.0.1:+5",
    ):
        with pytest.raises(InvalidRequest, match="resolve host names"):
            normalize_endpoint(bad)


def test_validate_ifname() -> None:
    assert validate_ifname("wg0") == "wg0"
    for bad in ("", "x" * 16, "a/b", "..", "a b"):
        with pytest.raises(InvalidRequest, match="interface name"):
            validate_ifname(bad)


# ----------------------------------------------------------------- encoding


def test_encode_set_orders_device_keys_before_peers() -> None:
    priv = PrivateKey.generate()
    psk = PresharedKey.generate()
    p1, p2 = pub(), pub()
    req = SetRequest(
        private_key=priv,
        listen_port=51820,
        fwmark=7,
        replace_peers=True,
        peers=(
            PeerOp(
                public_key=p1,
                update_only=True,
                protocol_version=1,
                preshared_key=psk,
                endpoint="10.99.0.2:51820",
                persistent_keepalive_interval=25,
                replace_allowed_ips=True,
                allowed_ips=("10.98.0.2/32", "10.97.0.9/24"),
            ),
            PeerOp(public_key=p2, remove=True),
        ),
    )
    assert encode_set(req) == (
        "set=1\n"
        f"private_key={priv.to_hex()}\n"
        "listen_port=51820\n"
        "fwmark=7\n"
        "replace_peers=true\n"
        f"public_key={b64_to_hex(p1)}\n"
        "update_only=true\n"
        "protocol_version=1\n"
        f"preshared_key={psk.to_hex()}\n"
        "endpoint=10.99.0.2:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.98.0.2/32\n"
        "allowed_ip=10.97.0.0/24\n"
        f"public_key={b64_to_hex(p2)}\n"
        "remove=true\n"
        "\n"
    )


def test_encode_clear_private_key_sends_zeros() -> None:
    assert encode_set(SetRequest(clear_private_key=True)) == (
        "set=1\nprivate_key=" + "0" * 64 + "\n\n"
    )


def test_invalid_ops_are_refused_before_sending() -> None:
    p = pub()
    with pytest.raises(InvalidRequest, match="removal cannot carry"):
        PeerOp(public_key=p, remove=True, allowed_ips=("10.0.0.0/8",))
    with pytest.raises(InvalidRequest, match="keepalive"):
        PeerOp(public_key=p, persistent_keepalive_interval=70000)
    with pytest.raises(InvalidRequest, match="protocol_version"):
        PeerOp(public_key=p, protocol_version=2)
    with pytest.raises(InvalidRequest, match="not a str"):
        PeerOp(public_key=p, allowed_ips="10.0.0.0/8")  # type: ignore[arg-type]  # on purpose
    with pytest.raises(InvalidRequest, match="public key"):
        PeerOp(public_key=b64_to_hex(p))
    with pytest.raises(InvalidRequest, match="listen port"):
        SetRequest(listen_port=65536)
    with pytest.raises(InvalidRequest, match="fwmark"):
        SetRequest(fwmark=-1)
    with pytest.raises(InvalidRequest, match="twice"):
        SetRequest(peers=(PeerOp(public_key=p), PeerOp(public_key=p)))
    with pytest.raises(InvalidRequest, match="not both"):
        SetRequest(private_key=PrivateKey.generate(), clear_private_key=True)


def test_redact_hides_private_and_preshared_keys() -> None:
    priv, psk = PrivateKey.generate(), PresharedKey.generate()
    text = encode_set(
        SetRequest(private_key=priv, peers=(PeerOp(public_key=pub(), preshared_key=psk),))
    )
    out = redact(text)
    assert priv.to_hex() not in out
    assert psk.to_hex() not in out
    assert "private_key=<redacted>" in out
    assert "preshared_key=<redacted>" in out


# ----------------------------------------------------------------- parsing


def test_parse_get_reads_every_wireguard_go_key() -> None:
    priv = PrivateKey.generate()
    psk = PresharedKey.generate()
    p1, p2 = pub(), pub()
    pairs = [
        ("private_key", priv.to_hex()),
        ("listen_port", "51820"),
        ("fwmark", "42"),
        ("public_key", b64_to_hex(p1)),
        ("preshared_key", psk.to_hex()),
        ("protocol_version", "1"),
        ("endpoint", "10.99.0.2:51820"),
        ("last_handshake_time_sec", "1795392827"),
        ("last_handshake_time_nsec", "998743464"),
        ("tx_bytes", "912"),
        ("rx_bytes", "820"),
        ("persistent_keepalive_interval", "5"),
        ("allowed_ip", "10.98.0.2/32"),
        ("allowed_ip", "fd00::/64"),
        ("public_key", b64_to_hex(p2)),
        ("preshared_key", "0" * 64),
        ("protocol_version", "1"),
        ("last_handshake_time_sec", "0"),
        ("last_handshake_time_nsec", "0"),
        ("tx_bytes", "0"),
        ("rx_bytes", "0"),
        ("persistent_keepalive_interval", "0"),
        ("some_future_key", "x"),
    ]
    state = parse_get(pairs)
    wireguard_go_peer = peer_with_every_field(
        p1,
        psk,
        ("10.98.0.2/32", "fd00::/64"),
        endpoint="10.99.0.2:51820",
        persistent_keepalive_interval=5,
        last_handshake_time_sec=1795392827,
        last_handshake_time_nsec=998743464,
        rx_bytes=820,
        tx_bytes=912,
    )
    assert_device(
        state,
        priv,
        fwmark=42,
        peers=(wireguard_go_peer, PeerState(public_key=p2, protocol_version=1)),
    )
    assert state.peer(p2) == state.peers[1]
    assert state.peer(pub()) is None
    assert set(state.peers_by_key()) == {p1, p2}


def test_parse_get_boringtun_own_public_key_and_no_listen_port() -> None:
    _, own = generate_keypair()
    state = parse_get([("own_public_key", b64_to_hex(own)), ("listen_port", "0")])
    assert state.private_key is None
    assert state.public_key == own
    assert state.listen_port is None


@pytest.mark.parametrize(
    "pairs",
    [
        [("listen_port", "x")],
        [("private_key", "zz")],
        [("public_key", "00")],
        [("public_key", "00" * 32), ("endpoint", "host:1")],
        [("public_key", "00" * 32), ("allowed_ip", "1.2.3.4")],
        [("public_key", "00" * 32), ("rx_bytes", "-1")],
    ],
)
def test_parse_get_rejects_malformed_values(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(UapiProtocolError, match="UAPI answer"):
        parse_get(pairs)


def test_parse_answer_requires_errno() -> None:
    assert parse_answer(b"a=1\nerrno=-22\n\n") == (-22, [("a", "1")])
    with pytest.raises(UapiProtocolError, match="errno"):
        parse_answer(b"a=1\n\n")
    with pytest.raises(UapiProtocolError, match="without '='"):
        parse_answer(b"junk\nerrno=0\n\n")


# ----------------------------------------------------------------- client vs fake


def test_get_empty_device(fake_server: FakeUapiServer, client: UapiClient) -> None:
    assert client.get("wgt0") == DeviceState()


def test_set_then_get_roundtrips_every_key(fake_server: FakeUapiServer, client: UapiClient) -> None:
    priv = PrivateKey(b"\xff" * 32)  # clamped locally, like wireguard-go
    psk = PresharedKey.generate()
    p1 = pub()
    client.set(
        "wgt0",
        SetRequest(
            private_key=priv,
            listen_port=51820,
            fwmark=9,
            peers=(
                PeerOp(
                    public_key=p1,
                    preshared_key=psk,
                    endpoint="[fd00::2]:51820",
                    persistent_keepalive_interval=25,
                    allowed_ips=("10.98.0.5/24", "10.97.0.1/32"),
                    protocol_version=1,
                ),
            ),
        ),
    )
    fake_server.set_peer_stats(p1, rx_bytes=10, tx_bytes=20, handshake=(100, 5))
    assert_device(
        client.get("wgt0"),
        priv,
        fwmark=9,
        peers=(peer_with_every_field(p1, psk, ("10.98.0.0/24", "10.97.0.1/32")),),
    )


def test_one_transaction_per_set(fake_server: FakeUapiServer, client: UapiClient) -> None:
    peers = tuple(PeerOp(public_key=pub(), allowed_ips=(f"10.1.{i}.0/24",)) for i in range(50))
    client.set("wgt0", SetRequest(listen_port=1000, peers=peers))
    sets = [r for r in fake_server.requests if r.startswith("set=1")]
    assert len(sets) == 1
    assert sets[0].count("public_key=") == 50
    assert len(client.get("wgt0").peers) == 50


def test_empty_set_sends_nothing(fake_server: FakeUapiServer, client: UapiClient) -> None:
    client.set("wgt0", SetRequest())
    assert fake_server.requests == []


def test_update_only_does_not_create(fake_server: FakeUapiServer, client: UapiClient) -> None:
    p = pub()
    client.set(
        "wgt0",
        SetRequest(
            peers=(PeerOp(public_key=p, update_only=True, persistent_keepalive_interval=5),)
        ),
    )
    assert client.get("wgt0").peers == ()
    client.set("wgt0", SetRequest(peers=(PeerOp(public_key=p),)))
    client.set(
        "wgt0",
        SetRequest(
            peers=(PeerOp(public_key=p, update_only=True, persistent_keepalive_interval=5),)
        ),
    )
    state = client.get("wgt0").peer(p)
    assert state is not None
    assert state.persistent_keepalive_interval == 5


def test_remove_replace_peers_and_replace_allowed_ips(
    fake_server: FakeUapiServer, client: UapiClient
) -> None:
    a, b, c = pub(), pub(), pub()
    client.set(
        "wgt0",
        SetRequest(
            peers=(
                PeerOp(public_key=a, allowed_ips=("10.0.1.0/24", "10.0.2.0/24")),
                PeerOp(public_key=b, allowed_ips=("10.0.3.0/24",)),
            )
        ),
    )
    client.set("wgt0", SetRequest(peers=(PeerOp(public_key=b, remove=True),)))
    assert [p.public_key for p in client.get("wgt0").peers] == [a]
    client.set(
        "wgt0",
        SetRequest(
            peers=(PeerOp(public_key=a, replace_allowed_ips=True, allowed_ips=("10.0.9.0/24",)),)
        ),
    )
    peer_a = client.get("wgt0").peer(a)
    assert peer_a is not None
    assert peer_a.allowed_ips == ("10.0.9.0/24",)
    client.set("wgt0", SetRequest(replace_peers=True, peers=(PeerOp(public_key=c),)))
    assert [p.public_key for p in client.get("wgt0").peers] == [c]


def test_allowed_ip_moves_between_peers(fake_server: FakeUapiServer, client: UapiClient) -> None:
    a, b = pub(), pub()
    client.set("wgt0", SetRequest(peers=(PeerOp(public_key=a, allowed_ips=("10.0.1.0/24",)),)))
    client.set("wgt0", SetRequest(peers=(PeerOp(public_key=b, allowed_ips=("10.0.1.7/24",)),)))
    state = client.get("wgt0")
    assert state.peer(a) == PeerState(public_key=a, protocol_version=1)
    peer_b = state.peer(b)
    assert peer_b is not None
    assert peer_b.allowed_ips == ("10.0.1.0/24",)


def test_clear_private_key_and_own_key_peer_ignored(
    fake_server: FakeUapiServer, client: UapiClient
) -> None:
    priv = PrivateKey.generate()
    client.set(
        "wgt0",
        SetRequest(private_key=priv, peers=(PeerOp(public_key=priv.public_key()),)),
    )
    state = client.get("wgt0")
    assert state.private_key == priv
    assert state.peers == ()
    client.set("wgt0", SetRequest(clear_private_key=True))
    assert client.get("wgt0").private_key is None


def test_listen_port_zero_picks_a_port(fake_server: FakeUapiServer, client: UapiClient) -> None:
    client.set("wgt0", SetRequest(listen_port=0))
    port = client.get("wgt0").listen_port
    assert port is not None
    assert 0 < port < 65536


def test_busy_port_is_device_error_and_device_listens_nowhere(
    sock_dir: Path, client: UapiClient
) -> None:
    with FakeUapiServer(sock_dir, "wgt1", busy_ports={4000}):
        client.set("wgt1", SetRequest(listen_port=3000))
        with pytest.raises(UapiDeviceError, match=r"EADDRINUSE.*4000 is already in use") as info:
            client.set("wgt1", SetRequest(listen_port=4000))
        assert info.value.errno == errno.EADDRINUSE
        assert info.value.op == "set"
        assert client.get("wgt1").listen_port is None


def test_peer_errno_is_peer_error_naming_errno_and_operation(
    fake_server: FakeUapiServer, client: UapiClient
) -> None:
    fake_server.fail_next_set(errno.EINVAL)
    with pytest.raises(UapiPeerError, match=r"1 peer update.*errno 22 \(EINVAL") as info:
        client.set("wgt0", SetRequest(peers=(PeerOp(public_key=pub()),)))
    assert isinstance(info.value, PeerError)
    assert info.value.errno == errno.EINVAL
    assert "read the device back" in str(info.value)


def test_device_errno_is_device_error(fake_server: FakeUapiServer, client: UapiClient) -> None:
    fake_server.fail_next_set(errno.EIO)
    with pytest.raises(UapiDeviceError, match=r"\(fwmark 3\) failed with errno 5 \(EIO") as info:
        client.set("wgt0", SetRequest(fwmark=3))
    assert isinstance(info.value, DeviceError)
    assert not isinstance(info.value, PeerError)


def test_positive_errno_from_boringtun_is_an_error(sock_dir: Path, client: UapiClient) -> None:
    with FakeUapiServer(sock_dir, "wgt2", errno_sign=1) as server:
        server.fail_next_set(errno.EPROTO)
        with pytest.raises(UapiDeviceError, match="errno 71"):
            client.set("wgt2", SetRequest(listen_port=1))


def _raw(sock_dir: Path, name: str, text: str) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(str(sock_dir / f"{name}.sock"))
    try:
        s.sendall(text.encode())
        buf = b""
        while not buf.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf.decode()
    finally:
        s.close()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("private_key=zz\n", -22),
        ("listen_port=abc\n", -22),
        ("foo=bar\n", -22),
        ("replace_peers=false\n", -22),
        ("no_equals_sign\n", -71),
        ("public_key=PUB\nendpoint=localhost:51820\n", -22),
        ("public_key=PUB\nallowed_ip=10.1.0.0/24,10.2.0.0/24\n", -22),
        ("public_key=PUB\nallowed_ip=-10.1.0.0/24\n", -22),
        ("public_key=PUB\nlisten_port=1\n", -22),
        ("public_key=PUB\nprotocol_version=2\n", -22),
        ("public_key=PUB\npersistent_keepalive_interval=65536\n", -22),
        ("public_key=PUB\nremove=yes\n", -22),
    ],
)
def test_fake_rejects_invalid_input_like_wireguard_go(
    fake_server: FakeUapiServer, sock_dir: Path, body: str, code: int
) -> None:
    body = body.replace("PUB", b64_to_hex(pub()))
    assert _raw(sock_dir, "wgt0", f"set=1\n{body}\n") == f"errno={code}\n\n"


def test_fake_rejects_base64_public_key(fake_server: FakeUapiServer, sock_dir: Path) -> None:
    assert _raw(sock_dir, "wgt0", f"set=1\npublic_key={pub()}\n\n") == "errno=-22\n\n"


def test_failed_set_is_partially_applied(
    fake_server: FakeUapiServer, sock_dir: Path, client: UapiClient
) -> None:
    p = pub()
    answer = _raw(
        sock_dir,
        "wgt0",
        f"set=1\npublic_key={b64_to_hex(p)}\nallowed_ip=10.5.0.0/16\nendpoint=bad\n\n",
    )
    assert answer == "errno=-22\n\n"
    peer = client.get("wgt0").peer(p)
    assert peer is not None
    assert peer.allowed_ips == ("10.5.0.0/16",)


def test_fake_serves_sequential_transactions_on_one_connection(
    fake_server: FakeUapiServer, sock_dir: Path
) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(str(sock_dir / "wgt0.sock"))
    try:
        s.sendall(b"set=1\nlisten_port=77\n\n")
        assert s.recv(100) == b"errno=0\n\n"
        s.sendall(b"get=1\n\n")
        buf = b""
        while not buf.endswith(b"errno=0\n\n"):
            buf += s.recv(100)
        assert buf == b"listen_port=77\nerrno=0\n\n"
    finally:
        s.close()


def test_get_with_trailing_garbage_is_einval(fake_server: FakeUapiServer, sock_dir: Path) -> None:
    assert _raw(sock_dir, "wgt0", "get=1\nx\n") == "errno=-22\n\n"


def test_unavailable_socket_is_clear_error(sock_dir: Path, client: UapiClient) -> None:
    with pytest.raises(UapiUnavailableError, match=r"wgt9 is not running.*wgt9\.sock"):
        client.get("wgt9")
    assert client.alive("wgt9") is False


def test_stale_socket_file_is_unavailable(sock_dir: Path, client: UapiClient) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_dir / "wgt8.sock"))
    s.close()  # file remains, nobody listens
    with pytest.raises(UapiUnavailableError):
        client.get("wgt8")


def test_hung_server_times_out(sock_dir: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_dir / "wgt7.sock"))
    s.listen(1)
    try:
        t0 = time.monotonic()
        with pytest.raises(UapiDeviceError, match="did not answer"):
            UapiClient(sock_dir, timeout=0.3).get("wgt7")
        assert time.monotonic() - t0 < 2
    finally:
        s.close()


def test_fake_refuses_second_server_on_live_socket(
    fake_server: FakeUapiServer, sock_dir: Path
) -> None:
    with pytest.raises(OSError, match="in use"):
        FakeUapiServer(sock_dir, "wgt0").start()


# ----------------------------------------------------------------- diff


def state_of(*peers: PeerState) -> tuple[PeerState, ...]:
    return peers


def test_diff_unchanged_peers_produce_nothing() -> None:
    a = pub()
    psk = PresharedKey.generate()
    current = [
        PeerState(
            public_key=a,
            endpoint="10.0.0.1:1",
            allowed_ips=("10.1.0.0/24",),
            persistent_keepalive_interval=25,
            preshared_key=psk,
            rx_bytes=5,
        )
    ]
    desired = [
        PeerConfig(
            public_key=a,
            endpoint="10.0.0.1:1",
            allowed_ips=("10.1.0.9/24",),
            persistent_keepalive_interval=25,
            preshared_key=psk,
        )
    ]
    assert diff_peers(desired, current) == ()
    # None = leave endpoint / keepalive as they are
    assert (
        diff_peers(
            [PeerConfig(public_key=a, allowed_ips=("10.1.0.0/24",), preshared_key=psk)],
            current,
        )
        == ()
    )


def test_diff_adds_removes_and_updates_in_order() -> None:
    a, b, c = sorted([pub(), pub(), pub()])
    current = [
        PeerState(public_key=a, endpoint="10.0.0.1:1", allowed_ips=("10.1.0.0/24",)),
        PeerState(public_key=b, allowed_ips=("10.2.0.0/24",)),
    ]
    desired = [
        PeerConfig(
            public_key=c,
            endpoint="10.0.0.3:3",
            allowed_ips=("10.3.0.0/24",),
            persistent_keepalive_interval=25,
        ),
        PeerConfig(
            public_key=a,
            endpoint="10.0.0.9:1",
            allowed_ips=("10.1.0.0/24",),
            persistent_keepalive_interval=10,
        ),
    ]
    assert diff_peers(desired, current) == (
        PeerOp(public_key=b, remove=True),
        PeerOp(
            public_key=a,
            update_only=True,
            endpoint="10.0.0.9:1",
            persistent_keepalive_interval=10,
        ),
        PeerOp(
            public_key=c,
            endpoint="10.0.0.3:3",
            persistent_keepalive_interval=25,
            allowed_ips=("10.3.0.0/24",),
        ),
    )


def test_diff_appends_added_allowed_ips_without_replace() -> None:
    a = pub()
    current = [PeerState(public_key=a, allowed_ips=("10.1.0.0/24",))]
    desired = [PeerConfig(public_key=a, allowed_ips=("10.1.0.0/24", "10.9.0.0/16"))]
    assert diff_peers(desired, current) == (
        PeerOp(public_key=a, update_only=True, allowed_ips=("10.9.0.0/16",)),
    )


def test_diff_replaces_allowed_ips_when_one_is_dropped() -> None:
    a = pub()
    current = [PeerState(public_key=a, allowed_ips=("10.1.0.0/24", "10.2.0.0/24"))]
    desired = [PeerConfig(public_key=a, allowed_ips=("10.2.0.0/24", "10.3.0.0/24"))]
    assert diff_peers(desired, current) == (
        PeerOp(
            public_key=a,
            update_only=True,
            replace_allowed_ips=True,
            allowed_ips=("10.2.0.0/24", "10.3.0.0/24"),
        ),
    )


def test_diff_preshared_key_set_and_cleared() -> None:
    a = pub()
    psk = PresharedKey.generate()
    (op,) = diff_peers([PeerConfig(public_key=a, preshared_key=psk)], [PeerState(public_key=a)])
    assert op.preshared_key == psk
    (op,) = diff_peers([PeerConfig(public_key=a)], [PeerState(public_key=a, preshared_key=psk)])
    assert op.preshared_key == PresharedKey.none()


def test_diff_without_update_only_for_boringtun() -> None:
    a = pub()
    (op,) = diff_peers(
        [PeerConfig(public_key=a, persistent_keepalive_interval=5)],
        [PeerState(public_key=a)],
        update_only=False,
    )
    assert op.update_only is False
    assert op.persistent_keepalive_interval == 5


def test_diff_rejects_duplicate_and_conflicting_desired_peers() -> None:
    a, b = pub(), pub()
    with pytest.raises(InvalidRequest, match="listed twice"):
        diff_peers([PeerConfig(public_key=a), PeerConfig(public_key=a)], [])
    with pytest.raises(Conflict, match=r"10\.1\.0\.0/24 is claimed"):
        diff_peers(
            [
                PeerConfig(public_key=a, allowed_ips=("10.1.0.0/24",)),
                PeerConfig(public_key=b, allowed_ips=("10.1.0.1/24",)),
            ],
            [],
        )


def test_diff_applied_to_fake_converges(fake_server: FakeUapiServer, client: UapiClient) -> None:
    a, b, c = pub(), pub(), pub()
    client.set(
        "wgt0",
        SetRequest(
            peers=(
                PeerConfig(
                    public_key=a,
                    allowed_ips=("10.1.0.0/24", "10.4.0.0/24"),
                    endpoint="10.0.0.1:1",
                ).create_op(),
                PeerConfig(public_key=b, allowed_ips=("10.2.0.0/24",)).create_op(),
            )
        ),
    )
    desired = [
        PeerConfig(
            public_key=a,
            allowed_ips=("10.1.0.0/24",),
            endpoint="10.0.0.2:1",
            persistent_keepalive_interval=25,
        ),
        PeerConfig(public_key=c, allowed_ips=("10.2.0.0/24", "10.4.0.0/24")),
    ]
    ops = diff_peers(desired, client.get("wgt0").peers)
    client.set("wgt0", SetRequest(peers=ops))
    after = client.get("wgt0")
    by_key = after.peers_by_key()
    assert set(by_key) == {a, c}
    assert by_key[a].allowed_ips == ("10.1.0.0/24",)
    assert by_key[a].endpoint == "10.0.0.2:1"
    assert by_key[a].persistent_keepalive_interval == 25
    assert set(by_key[c].allowed_ips) == {"10.2.0.0/24", "10.4.0.0/24"}
    # a second diff finds nothing left to do
    assert diff_peers(desired, after.peers) == ()
