"""A node leaves and comes back; etcd goes away and comes back: no churn (fake driver)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .conftest import mesh
from .conftest import wait_for

TTL = 3


async def test_dead_node_is_dropped_and_returns_with_same_slice_and_key(
    etcd_server: Any, make_node: Any
) -> None:
    a, b, c = await mesh(make_node, etcd_server.url, "a", "b", "c", ttl=TTL)
    key, slices, data_dir = c.agent.record.public_key, c.agent.record.slices, c.data_dir
    calls_a = a.peer_calls
    started = time.monotonic()
    await c.stop()  # the daemon dies: its lease is not revoked
    await wait_for(lambda: key not in a.peers() and key not in b.peers(), TTL + 5, "c dropped")
    assert time.monotonic() - started <= TTL + 5
    # exactly one peer change on a: the removal of c
    assert a.peer_calls == calls_a + 1
    assert set(a.peers()) == {b.agent.record.public_key}

    c2 = await make_node(etcd_server.url, "c", data_dir=data_dir, ttl=TTL)
    await wait_for(c2.agent.joined.is_set, 10, "c to join again")
    assert c2.agent.record.public_key == key
    assert c2.agent.record.slices == slices
    await wait_for(lambda: key in a.peers() and key in b.peers(), 10, "c back on a and b")
    assert a.peers()[key].allowed_ips == slices
    await wait_for(lambda: len(c2.peers()) == 2, 10, "c to see a and b")


async def test_etcd_outage_keeps_peers_and_resync_changes_nothing(
    etcd_server: Any, make_node: Any
) -> None:
    nodes = await mesh(make_node, etcd_server.url, "n0", "n1", "n2", ttl=TTL)
    before = {n.name: (n.peers(), n.peer_calls, n.agent.stats.sessions) for n in nodes}
    etcd_server.stop()
    # Longer than the lease TTL: nothing may expire on our side meanwhile.
    await wait_for(lambda: not any(n.agent.connected for n in nodes), 10, "agents to notice")
    await asyncio.sleep(3 * TTL)
    for node in nodes:
        assert node.peers() == before[node.name][0]
        assert node.peer_calls == before[node.name][1]
    etcd_server.start()  # same data directory: the leases and records are still there
    for node in nodes:
        await wait_for(lambda n=node: n.agent.connected, 15, f"{node.name} to reconnect")
    await asyncio.sleep(2 * TTL)  # past the TTL again: no lease may have expired
    for node in nodes:
        peers, calls, sessions = before[node.name]
        assert node.agent.stats.sessions > sessions
        assert node.peers() == peers
        # not one peer hook call: no peer was removed and re-added
        assert node.peer_calls == calls, node.name
        assert node.agent.stats.peers_removed == 0


async def test_etcd_killed_and_restarted_causes_no_churn(etcd_server: Any, make_node: Any) -> None:
    nodes = await mesh(make_node, etcd_server.url, "k0", "k1", ttl=TTL)
    calls = [n.peer_calls for n in nodes]
    etcd_server.kill()
    etcd_server.start()
    for node in nodes:
        await wait_for(
            lambda n=node: n.agent.connected and n.agent.stats.sessions >= 2, 15, "reconnect"
        )
    await asyncio.sleep(2 * TTL)
    assert [n.peer_calls for n in nodes] == calls


async def test_etcd_that_lost_its_data_is_filled_again(etcd_server: Any, make_node: Any) -> None:
    import shutil

    nodes = await mesh(make_node, etcd_server.url, "w0", "w1", ttl=TTL)
    calls = [n.peer_calls for n in nodes]
    etcd_server.kill()
    shutil.rmtree(etcd_server.data_dir)  # a new, empty etcd at the same address
    etcd_server.start()
    for node in nodes:
        await wait_for(lambda n=node: n.agent.connected, 15, f"{node.name} to reconnect")
    await asyncio.sleep(2 * TTL)
    # claims and records were written again, and nobody lost a peer
    for node in nodes:
        assert len(node.peers()) == 1
        assert node.agent.membership.claims.get(node.agent.record.slices[0]) == node.name
    assert [n.peer_calls for n in nodes] == calls


async def test_a_failed_peer_change_is_retried(etcd_server: Any, make_node: Any) -> None:
    from overlayd.errors import PeerError
    from overlayd.hookspecs import hookimpl
    from overlayd_fake.driver import FakeDriver

    class Flaky(FakeDriver):  # type: ignore[misc]
        failures = 0

        @hookimpl
        def overlayd_peer_apply(self, device: Any, changes: Any) -> Any:
            if self.failures > 0 and device.driver == self.name:
                self.failures -= 1
                raise PeerError("injected failure", op="peer_apply", driver=self.name)
            return super().overlayd_peer_apply(device=device, changes=changes)

    flaky = Flaky()
    a = await make_node(etcd_server.url, "fa", ttl=TTL, driver=flaky)
    await wait_for(a.agent.joined.is_set, 10, "a to join")
    flaky.failures = 1
    b = await make_node(etcd_server.url, "fb", ttl=TTL)
    await wait_for(b.agent.joined.is_set, 10, "b to join")
    # the first attempt fails; the agent retries within ttl/3 and succeeds
    await wait_for(lambda: len(a.peers()) == 1, TTL + 5, "a to program b after a failure")
    assert flaky.failures == 0
