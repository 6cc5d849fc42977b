"""The one peer merge (overlayd.peers): its rules, and that the engine records by it."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest

from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.engine import Engine
from overlayd.errors import NotFound
from overlayd.model import PeerChange
from overlayd.model import PeerConfig
from overlayd.peers import Peer
from overlayd.peers import PeerTable
from overlayd.peers import merge
from overlayd.state import MemoryStore
from overlayd.testing.nodes import lone_node
from overlayd_fake.driver import FakeDriver

A = "aDlk2hH3mTqJq8DVRk9f0lZ0n3Hk0Jm0bZ4rK1d3CUk="
B = "cHZ7Fq1vJdNq1PkE3XtKx8U1lWkqH4Qm2D6b1tWYn2w="
C = "eN8yQz5s0kP2ZcV4mW9bX1rT7uJ3hG6fD2aS8lK0pHE="
N1, N2, N3 = (ipaddress.ip_network(f"10.9.{i}.0/24") for i in (1, 2, 3))


def table(*peers: PeerConfig) -> PeerTable:
    return PeerTable("wg0", peers)


def apply(t: PeerTable, *changes: PeerChange) -> None:
    t.commit(t.preview(list(changes)))


def test_second_peer_takes_the_prefix_and_the_first_loses_it() -> None:
    t = table(PeerConfig(public_key=A, allowed_ips=(N1, N2)))
    merged = t.preview([PeerChange(public_key=B, allowed_ips=(N1,))])
    assert merged.peers[A] == Peer(public_key=A, allowed_ips=(N2,))
    assert merged.peers[B] == Peer(public_key=B, allowed_ips=(N1,))
    assert merged.owners == {N1: B}
    assert merged.gained == set() and merged.lost == set()
    t.commit(merged)
    assert t[A].allowed_ips == (N2,)
    assert t[B].allowed_ips == (N1,)
    assert t.owner_of(N1) == B


def test_within_one_batch_the_last_change_wins() -> None:
    t = table()
    apply(
        t,
        PeerChange(public_key=A, allowed_ips=(N1,)),
        PeerChange(public_key=B, allowed_ips=(N1, N2)),
        PeerChange(public_key=A, add_allowed_ips=(N2,)),
    )
    assert t[A].allowed_ips == (N2,)
    assert t[B].allowed_ips == (N1,)


def test_gained_and_lost_prefixes() -> None:
    t = table(PeerConfig(public_key=A, allowed_ips=(N1,)))
    merged = t.preview(
        [
            PeerChange(public_key=A, remove=True),
            PeerChange(public_key=B, allowed_ips=(N2,)),
        ]
    )
    assert merged.lost == {N1}
    assert merged.gained == {N2}
    assert merged.peers == {A: None, B: Peer(public_key=B, allowed_ips=(N2,))}


def test_fields_replace_add_remove_and_dedupe() -> None:
    t = table(PeerConfig(public_key=A, endpoint="h:1", allowed_ips=(N1,)))
    apply(
        t,
        PeerChange(
            public_key=A,
            add_allowed_ips=(N2, N2, N1),
            remove_allowed_ips=(N1,),
            persistent_keepalive_secs=25,
        ),
    )
    assert t[A] == PeerConfig(
        public_key=A, endpoint="h:1", allowed_ips=(N2,), persistent_keepalive_secs=25
    )
    apply(t, PeerChange(public_key=A, endpoint="h:2", allowed_ips=(N3, N3)))
    assert t[A] == PeerConfig(
        public_key=A, endpoint="h:2", allowed_ips=(N3,), persistent_keepalive_secs=25
    )


def test_edit_of_an_absent_peer_is_refused_and_changes_nothing() -> None:
    t = table(PeerConfig(public_key=A, allowed_ips=(N1,)))
    with pytest.raises(NotFound, match="add it with add_peer first"):
        t.preview([PeerChange(public_key=B, add_allowed_ips=(N1,))])
    assert t.owner_of(N1) == A and list(t) == [A]


def test_removing_an_absent_peer_or_one_added_and_removed_is_no_change() -> None:
    t = table()
    merged = t.preview(
        [
            PeerChange(public_key=C, remove=True),
            PeerChange(public_key=A, allowed_ips=(N1,)),
            PeerChange(public_key=A, remove=True),
        ]
    )
    assert merged.peers == {} and merged.owners == {}


def test_undo_changes_restore_the_recorded_state() -> None:
    t = table(PeerConfig(public_key=A, allowed_ips=(N1, N2)))
    merged = t.preview([PeerChange(public_key=B, allowed_ips=(N1,))])
    undo = t.undo_changes(merged)
    after = PeerTable("wg0", [PeerConfig(public_key=A, allowed_ips=(N2,))])
    after.commit(after.preview([PeerChange(public_key=B, allowed_ips=(N1,))]))
    apply(after, *undo)
    assert dict(after) == dict(t)


def test_generic_spelling_of_prefixes() -> None:
    peers = {A: Peer(public_key=A, allowed_ips=("10.9.1.0/24",))}
    merged = merge(
        [PeerChange(public_key=B, allowed_ips=(N1,))],
        peers.get,
        {"10.9.1.0/24": A}.get,
        str,
    )
    assert merged.peers[A] == Peer(public_key=A, allowed_ips=())
    assert merged.owners == {"10.9.1.0/24": B}


@pytest.fixture
async def engine() -> AsyncIterator[tuple[Engine, FakeDriver]]:
    fake = FakeDriver()
    config = EngineConfig(
        drivers=[], dns=DnsSettings(enabled=False), engine=EngineSettings(health_interval_secs=0)
    )
    eng = Engine(config, drivers=[fake], store=MemoryStore())
    await eng.start()
    try:
        yield eng, fake
    finally:
        await eng.stop()


async def test_engine_records_what_the_device_holds(engine: tuple[Engine, FakeDriver]) -> None:
    eng, fake = engine
    device = await eng.setup_global_overlay(**lone_node(slice_cidr=None))
    await eng.add_peer(A, "10.0.0.1:51820", "10.9.1.0/24,10.9.2.0/24")
    await eng.add_peer(B, "10.0.0.2:51820", "10.9.1.0/24")
    recorded = {k: set(p.allowed_ips) for k, p in eng.peers[device].items()}
    held = {k: set(p.allowed_ips) for k, p in fake.host.peers[device].items()}
    assert recorded == held == {A: {N2}, B: {N1}}
    await eng.remove_peer(B)
    assert {k: set(p.allowed_ips) for k, p in eng.peers[device].items()} == {A: {N2}}
    assert {k: set(p.allowed_ips) for k, p in fake.host.peers[device].items()} == {A: {N2}}


def test_every_change_bumps_the_version_and_a_preview_does_not() -> None:
    t = table()
    start = t.version
    t.put(PeerConfig(public_key=A, allowed_ips=(N1,)))
    assert t.version == start + 1
    merged = t.preview([PeerChange(public_key=B, allowed_ips=(N2,))])
    assert t.version == start + 1  # a preview changes nothing
    t.commit(merged)
    assert t.version == start + 2


async def test_status_reads_the_device_again_after_any_peer_change(
    engine: tuple[Engine, FakeDriver],
) -> None:
    eng, fake = engine
    await eng.setup_global_overlay(**lone_node(slice_cidr=None))
    await eng.add_peer(A, "10.0.0.1:51820", "10.9.1.0/24")
    first = await eng.status()
    assert eng.status_unchanged() is first  # within a second, nothing changed
    reads = len(fake.calls_to("overlayd_peer_status"))
    await eng.add_peer(A, "10.0.0.1:51820", "10.9.2.0/24")  # same peer, new prefix
    assert eng.status_unchanged() is None
    second = await eng.status()
    assert len(fake.calls_to("overlayd_peer_status")) == reads + 1
    assert [p.allowed_ips for p in second.peers] != [p.allowed_ips for p in first.peers]
