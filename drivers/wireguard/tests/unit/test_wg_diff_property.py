"""Property: applying diff_peers(desired, current) to a wireguard-go-like device
yields exactly the desired peers, touches no unchanged peer, and a second diff
is empty."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from overlayd_wireguard.fakeuapi import FakeUapiServer
from overlayd_wireguard.keys import PresharedKey
from overlayd_wireguard.keys import generate_keypair
from overlayd_wireguard.uapi import PeerConfig
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import UapiClient
from overlayd_wireguard.uapi import diff_peers

KEYS = [generate_keypair()[1] for _ in range(6)]
PSKS = [PresharedKey.generate() for _ in range(2)]
PREFIXES = [f"10.{i}.0.0/16" for i in range(8)]
ENDPOINTS = ["192.0.2.1:51820", "192.0.2.2:51820", "[fd00::1]:7"]


@st.composite
def peer_sets(draw: st.DrawFn) -> list[PeerConfig]:
    keys = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=5))
    prefixes = draw(st.permutations(PREFIXES))
    out = []
    for i, key in enumerate(keys):
        n = draw(st.integers(0, 2))
        out.append(
            PeerConfig(
                public_key=key,
                # disjoint slices: a prefix belongs to one peer at most
                allowed_ips=tuple(prefixes[i * 2 : i * 2 + n]) if i < 4 else (),
                endpoint=draw(st.none() | st.sampled_from(ENDPOINTS)),
                persistent_keepalive_interval=draw(st.sampled_from([None, 0, 25])),
                preshared_key=draw(st.none() | st.sampled_from(PSKS)),
            )
        )
    return out


@settings(max_examples=60, deadline=None)
@given(initial=peer_sets(), desired=peer_sets())
def test_diff_converges_and_is_minimal(
    initial: list[PeerConfig], desired: list[PeerConfig]
) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="owgh", dir="/tmp"))
    try:
        with FakeUapiServer(sock_dir, "wgp0") as server:
            client = UapiClient(sock_dir, timeout=2)
            client.set("wgp0", SetRequest(peers=tuple(p.create_op() for p in initial)))
            before = client.get("wgp0")
            ops = diff_peers(desired, before.peers)
            server.requests.clear()
            client.set("wgp0", SetRequest(peers=ops))
            after = client.get("wgp0")
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)

    by_key = after.peers_by_key()
    assert set(by_key) == {p.public_key for p in desired}
    old = before.peers_by_key()
    for want in desired:
        got = by_key[want.public_key]
        assert set(got.allowed_ips) == set(want.allowed_ips)
        assert got.preshared_key == want.preshared_key
        prev = old.get(want.public_key)
        expected_endpoint = want.endpoint or (prev.endpoint if prev else None)
        assert got.endpoint == expected_endpoint
        if want.persistent_keepalive_interval is not None:
            assert got.persistent_keepalive_interval == want.persistent_keepalive_interval
    # unchanged peers are never re-sent
    touched = {op.public_key for op in ops}
    for want in desired:
        prev = old.get(want.public_key)
        if prev is not None and not diff_peers([want], [prev]):
            assert want.public_key not in touched
    sets = [r for r in server.requests if r.startswith("set=1")]
    assert len(sets) == (1 if ops else 0)
    assert diff_peers(desired, after.peers) == ()
