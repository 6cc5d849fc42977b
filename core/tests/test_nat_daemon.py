"""NAT traversal through the daemon (IPC) on the fake driver: status.nat and nat_peer_candidates.

The fake driver has no real UDP port, so the agent runs without STUN and
checks; what is checked here is the IPC contract, the exchange and the
errors. Real traversal is ``tests/e2e/test_nat_traversal.py``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overlayd import protocol as p
from overlayd.client import AsyncClient
from overlayd.client import RemoteError
from overlayd.config import NatSettings
from overlayd.engine import Engine
from overlayd.testing.inproc import serving
from overlayd.testing.nodes import lone_node
from overlayd_fake.driver import FakeDriver

PEER = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


@pytest.fixture
def root(short_tmp_path: Path) -> Path:
    return short_tmp_path


async def _raw(path: Path, body: bytes) -> p.Frame:
    """Send one frame body as is and read the answer."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(struct.pack("<I", len(body)) + body)
        await writer.drain()
        (length,) = struct.unpack("<I", await reader.readexactly(4))
        return p.decode_frame(await reader.readexactly(length))
    finally:
        writer.close()


@pytest.fixture
async def daemon(root: Path) -> AsyncIterator[tuple[Engine, AsyncClient]]:
    nat = NatSettings(refresh=3600)
    fake = lambda: [FakeDriver()]  # noqa: E731 - a fresh driver per start
    async with serving(root, make_drivers=fake, in_memory=True, nat=nat) as served:
        assert served.engine is not None
        yield served.engine, await served.client()


async def _setup(client: AsyncClient, nat_enabled: bool = True) -> None:
    await client.setup_global_overlay(**lone_node(nat_enabled=nat_enabled))


async def test_status_has_no_nat_without_nat_enabled(
    daemon: tuple[Engine, AsyncClient],
) -> None:
    _, client = daemon
    await _setup(client, nat_enabled=False)
    st = await client.status()
    assert st.nat is None
    assert "nat" not in st.to_wire()


async def test_status_carries_candidates_and_warnings(
    daemon: tuple[Engine, AsyncClient],
) -> None:
    _, client = daemon
    await _setup(client)
    await client.nat_tick()  # a real refresh: gathers now
    st = await client.status()
    assert st.nat is not None
    assert [(c.kind, c.endpoint) for c in st.nat.candidates] == [("host", "127.0.0.1:51820")]
    assert st.nat.candidates[0].priority
    assert any("no real UDP port" in w for w in st.nat.warnings), st.nat.warnings
    assert st.nat.peers == []


async def test_nat_peer_candidates_reach_the_agent(daemon: tuple[Engine, AsyncClient]) -> None:
    engine, client = daemon
    await _setup(client)
    cands = [
        p.NatCandidateInfo(kind="host", endpoint="10.9.0.2:51820"),
        p.NatCandidateInfo(kind="reflexive", endpoint="10.8.0.2:40000", guessed=True),
    ]
    with pytest.raises(RemoteError, match="add_peer it first"):
        await client.nat_peer_candidates(PEER, cands)
    await client.add_peer(PEER, "", "10.200.16.0/20", 25)
    await client.nat_peer_candidates(PEER, cands)
    st = await client.status()
    assert st.nat is not None
    (peer,) = st.nat.peers
    assert peer.public_key == PEER
    assert peer.path == "pending"
    assert [(c.kind, c.endpoint, c.guessed) for c in peer.candidates] == [
        ("host", "10.9.0.2:51820", None),
        ("reflexive", "10.8.0.2:40000", True),
    ]
    # With no checks possible the peer is left on its best candidate, with a keepalive.
    assert engine.nat is not None
    task = engine.nat.peers[PEER].task
    assert task is not None
    await task
    fake = engine.drivers[0]
    assert isinstance(fake, FakeDriver)
    status = {s.public_key: s for s in fake.overlayd_peer_status(engine.global_.device) or []}  # type: ignore[union-attr]
    assert status[PEER].endpoint == "10.9.0.2:51820"
    assert status[PEER].persistent_keepalive_secs == 25
    # An empty list forgets them.
    await client.nat_peer_candidates(PEER, [])
    st = await client.status()
    assert st.nat is not None and st.nat.peers == []


async def test_bad_candidates_are_refused_and_change_nothing(
    daemon: tuple[Engine, AsyncClient], root: Path
) -> None:
    _, client = daemon
    await _setup(client)
    await client.add_peer(PEER, "", "10.200.16.0/20", 25)
    frame = (
        '{"frame":"request","id":9,"request":{"op":"nat_peer_candidates",'
        f'"public_key":"{PEER}","candidates":[{{"kind":"host","endpoint":"name.example:1"}}]}}}}'
    )
    answer = await _raw(root / "overlayd.sock", frame.encode())
    assert isinstance(answer, p.ResponseFrame)
    assert isinstance(answer.response, p.ErrResponse)
    assert "numeric IP:port" in answer.response.message
    bad_kind = frame.replace('"kind":"host"', '"kind":"teleport"')
    answer = await _raw(root / "overlayd.sock", bad_kind.encode())
    assert isinstance(answer, p.ResponseFrame)
    assert isinstance(answer.response, p.ErrResponse)
    st = await client.status()
    assert st.nat is not None and st.nat.peers == []


async def test_nat_disabled_in_config_runs_no_agent(root: Path) -> None:
    off = NatSettings(enabled=False)
    async with serving(root, make_drivers=lambda: [FakeDriver()], in_memory=True, nat=off) as d:
        client = await d.client()
        await _setup(client)
        assert d.engine is not None and d.engine.nat is None
        assert (await client.status()).nat is None
        with pytest.raises(RemoteError, match="NAT traversal is off"):
            await client.nat_peer_candidates(PEER, [])
