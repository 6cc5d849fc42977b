"""``status`` rebuilt per changed peer (overlayd.server.statuswire): the same bytes, less work."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from overlayd import protocol as p
from overlayd.client import AsyncClient
from overlayd.engine.results import DedicatedStatus
from overlayd.engine.results import Status
from overlayd.model import NatCandidate
from overlayd.model import PeerStatus
from overlayd.nat.host import NatPeerStatus
from overlayd.nat.host import NatStatus
from overlayd.server.convert import dedicated_status
from overlayd.server.convert import nat_status
from overlayd.server.statuswire import StatusWire
from overlayd.testing.inproc import serving
from overlayd.testing.inproc import setup_overlay
from overlayd.transport import framed
from overlayd.transport import read_frame
from overlayd_fake.driver import FakeDriver


def _key(i: int) -> str:
    return base64.b64encode(i.to_bytes(32, "big")).decode()


def _expected(status: Status) -> p.StatusResponse:
    """The answer as the handler built it before: every peer's wire model made anew
    (with ``model_construct``, as the handler did: the driver's text is passed on)."""
    return p.StatusResponse(
        interface=status.interface,
        node_ip=str(status.node_ip) if status.node_ip else None,
        public_key=status.public_key,
        overlay_cidr=str(status.overlay_cidr) if status.overlay_cidr else None,
        slice_cidr=str(status.slice_cidr) if status.slice_cidr else None,
        peer_count=status.peer_count,
        service_count=status.service_count,
        peers=[
            p.PeerStatus.model_construct(
                public_key=peer.public_key,
                endpoint=peer.endpoint or "",
                allowed_ips=",".join(str(n) for n in peer.allowed_ips),
                last_handshake_unix_secs=peer.last_handshake_unix_secs,
                rx_bytes=peer.rx_bytes,
                tx_bytes=peer.tx_bytes,
            )
            for peer in status.peers
        ],
        dedicated_services=[dedicated_status(d) for d in status.dedicated_services],
        nat=nat_status(status.nat),
    )


_peers = st.builds(
    PeerStatus,
    public_key=st.integers(0, 2**256 - 1).map(_key),
    endpoint=st.one_of(
        st.none(),
        st.just(""),
        st.integers(1, 65535).map(lambda port: f"10.1.2.3:{port}"),
        st.text(max_size=12),  # what a driver reports is passed on as it is
    ),
    allowed_ips=st.lists(
        st.integers(0, 2**24 - 1).map(
            lambda n: ipaddress.ip_network(f"10.{n >> 16}.{n >> 8 & 255}.{n & 255}/32")
        ),
        max_size=3,
    ).map(tuple),
    last_handshake_unix_secs=st.integers(0, 2**40),
    rx_bytes=st.integers(0, 2**63 - 1),
    tx_bytes=st.integers(0, 2**63 - 1),
)

_nat = st.one_of(
    st.none(),
    st.builds(
        NatStatus,
        candidates=st.just((NatCandidate(kind="host", endpoint="192.168.1.7:51820", priority=7),)),
        peers=st.lists(
            st.builds(
                NatPeerStatus,
                public_key=st.integers(0, 99).map(_key),
                path=st.sampled_from(["direct", "relayed", "pending"]),
                endpoint=st.one_of(st.none(), st.just("192.0.2.3:49170")),
                candidates=st.just(()),
            ),
            max_size=2,
        ).map(tuple),
        warnings=st.lists(st.text(max_size=20), max_size=2).map(tuple),
    ),
)


def _status(peers: list[PeerStatus], nat: Any = None, dedicated: bool = False) -> Status:
    return Status(
        interface="zl-prod-g",
        node_ip=ipaddress.ip_address("10.200.0.1"),
        public_key=_key(1),
        overlay_cidr=ipaddress.ip_network("10.200.0.0/16"),
        slice_cidr=ipaddress.ip_network("10.200.0.0/20"),
        peer_count=len(peers),
        service_count=2,
        peers=tuple(peers),
        dedicated_services=(
            DedicatedStatus(
                service="db",
                interface="zl-db-d",
                public_key=_key(2),
                listen_port=51900,
                overlay_ip=ipaddress.ip_address("10.200.0.33"),
                subnet=ipaddress.ip_network("10.200.0.32/28"),
                peer_count=0,
            ),
        )
        if dedicated
        else (),
        nat=nat,
    )


@settings(max_examples=150, deadline=None)
@given(
    first=st.lists(_peers, max_size=8),
    second=st.lists(_peers, max_size=8),
    nat=_nat,
    dedicated=st.booleans(),
)
def test_the_answer_and_its_bytes_are_those_of_the_plain_encoding(
    first: list[PeerStatus], second: list[PeerStatus], nat: Any, dedicated: bool
) -> None:
    wire = StatusWire()
    # Later builds reuse what they can of the earlier ones: all must come out
    # right, and a build that keeps every peer joins the peers' own JSON.
    for peers in (first, first, first + second[:3], second, second):
        status = _status(peers, nat, dedicated)
        kept_all = all(
            peer.public_key in wire._peers and wire._peers[peer.public_key].same(peer)
            for peer in peers
        )
        response, encoded = wire.build(status)
        expected = _expected(status)
        assert response == expected
        try:
            plain = p.encode_response(expected)
        except p.ProtocolError:
            assert encoded is None  # left to the server's encoding, which reports it
            continue
        if kept_all:
            assert encoded is not None
        assert encoded is None or encoded == plain


def test_unchanged_peers_keep_their_wire_models_and_changed_ones_get_new() -> None:
    peers = [PeerStatus(public_key=_key(i), endpoint=f"10.0.0.{i}:51820") for i in range(1, 6)]
    wire = StatusWire()
    before, _ = wire.build(_status(peers))
    # A new read: equal values in new objects, one peer's counters moved, one gone.
    again = [peer.model_copy() for peer in peers[:4]]
    again[2] = again[2].model_copy(update={"rx_bytes": 99})
    after, encoded = wire.build(_status(again))
    assert [a is b for a, b in zip(after.peers, before.peers, strict=False)] == [
        True,
        True,
        False,
        True,
    ]
    assert after.peers[2].rx_bytes == 99
    assert encoded == p.encode_response(after)
    assert len(wire._peers) == 4  # the gone peer is forgotten


def test_text_that_is_not_unicode_is_left_to_the_servers_encoding() -> None:
    peers = [PeerStatus(public_key=_key(1), endpoint="\ud800:1")]
    wire = StatusWire()
    wire.build(_status(peers))
    response, encoded = wire.build(_status(peers))  # kept: its JSON is made now
    assert encoded is None
    assert response.peers[0].endpoint == "\ud800:1"
    with pytest.raises(p.ProtocolError):
        p.encode_response(response)


@pytest.fixture
def root(short_tmp_path: Path) -> Path:
    return short_tmp_path


async def test_the_daemon_sends_the_built_bytes_and_the_same_after_a_change(root: Path) -> None:
    async with serving(root, make_drivers=lambda: [FakeDriver()], in_memory=True) as daemon:
        client: AsyncClient = await daemon.client()
        await setup_overlay(client)
        keys = [_key(i) for i in range(10, 14)]
        for i, key in enumerate(keys):
            await client.add_peer(key, f"10.9.0.{i}:51820", f"10.241.{i}.0/24", 25)
        server = daemon.server
        assert server is not None
        reader, writer = await _connect(daemon.socket)
        try:
            for frame_id in (1, 2):
                writer.write(
                    framed(p.encode_body(p.RequestFrame(id=frame_id, request=p.StatusRequest())))
                )
                body = await read_frame(reader)
                memo = server.status_memo
                assert memo is not None
                assert body == p.response_body(frame_id, p.encode_response(memo[1]))
                # The first answer is encoded whole; the next one, which keeps
                # every peer but the one removed, is joined from the peers' JSON.
                assert (memo[2] is None) == (frame_id == 1)
                assert memo[2] in (None, p.encode_response(memo[1]))
                assert [x.public_key for x in memo[1].peers] == keys
                await client.remove_peer(keys[0])  # the next answer differs
                keys = keys[1:]
        finally:
            writer.close()


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path))
