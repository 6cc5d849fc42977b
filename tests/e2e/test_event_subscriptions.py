"""Events through the daemon: only subscribers get them; slow ones lose events, not sockets.

Peer-health events come from the engine's real health checker, every second,
over the fake driver's peers: a thousand peers with a keepalive and no
handshake turn unhealthy at one check; the test then gives them a handshake
and they turn healthy at the next, and so on, a thousand events per check.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time

import pytest

from overlayd import protocol as p
from overlayd.client import AsyncClient
from overlayd.model import Event

from .conftest import AgentConnection
from .conftest import InProcDaemon

PEERS = 1000
ROUNDS = 5
GLOBAL = {
    "op": "setup_global_overlay",
    "deployment": "prod",
    "instance_id": "4242",
    "cluster_cidr": "10.200.0.0/16",
    "wg_port": 51820,
    "nat_enabled": False,
}


def _key(i: int) -> str:
    return base64.b64encode(i.to_bytes(32, "big")).decode()


async def _start(inproc: InProcDaemon) -> tuple[AgentConnection, str, asyncio.Queue[Event]]:
    """The daemon, the agent's connection, the device, and the engine's events from
    before the first of them (subscribed in-process, before the peers exist)."""
    inproc.configure(engine={"health_interval_secs": 1, "peer_stale_secs": 60})
    await inproc.start()
    assert inproc.engine is not None
    queue = inproc.engine.subscribe(maxsize=0)
    agent = await AgentConnection.connect(inproc.socket)
    device = (await agent.ok(GLOBAL))["name"]
    return agent, device, queue


async def _add_peers(agent: AgentConnection) -> None:
    """A thousand peers with a keepalive and no handshake: the next check finds them stale."""
    changes = [
        {
            "public_key": _key(i),
            "endpoint": f"10.9.{i // 250}.{i % 250 + 1}:51820",
            "persistent_keepalive_secs": 25,
            "allowed_ips": f"10.201.{i // 250}.{i % 250 + 1}/32",
        }
        for i in range(PEERS)
    ]
    await agent.ok({"op": "apply_peers", "changes": changes})


async def _health_rounds(
    inproc: InProcDaemon, device: str, queue: asyncio.Queue[Event]
) -> list[Event]:
    """Let the checker flip every peer ``ROUNDS`` times; the events, as the engine emitted them."""
    assert inproc.engine is not None and inproc.fake is not None
    seen: list[Event] = []
    try:
        for round_ in range(ROUNDS):
            while len(seen) < (round_ + 1) * PEERS:
                seen.append(await asyncio.wait_for(queue.get(), 30))
            if round_ == ROUNDS - 1:
                break  # no more transitions: the events stop here
            # Flip: unhealthy peers get a fresh handshake, healthy ones lose it.
            # Under the fake's lock, so a check running in a worker sees all or none.
            when = int(time.time()) if round_ % 2 == 0 else 0
            with inproc.fake._lock:
                for i in range(PEERS):
                    inproc.fake.set_handshake(device, _key(i), when)
    finally:
        inproc.engine.unsubscribe(queue)
    return seen


def _frame(event: Event) -> dict[str, object]:
    return {
        "frame": "event",
        "event": "peer_health_changed",
        "pubkey": event.pubkey,
        "healthy": event.healthy,
    }


async def test_an_idle_connection_that_never_subscribed_gets_no_event_and_stays_usable(
    inproc: InProcDaemon,
) -> None:
    agent, device, queue = await _start(inproc)
    await _add_peers(agent)
    emitted = await _health_rounds(inproc, device, queue)
    assert len(emitted) == PEERS * ROUNDS
    # The agent reads only inside requests: its next answer is the answer.
    status = await agent.ok({"op": "status"})
    assert status["result"] == "status" and status["peer_count"] == PEERS
    assert agent.events == []
    await agent.close()


async def test_subscribers_get_events_in_order_and_a_slow_one_loses_events_not_its_socket(
    inproc: InProcDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    agent, device, queue = await _start(inproc)
    # A subscriber that reads: every event, in order.
    client = AsyncClient(str(inproc.socket), timeout=10)
    stream = await client.subscribe(["peer_health_changed"])
    received: list[p.AnyEvent] = []

    async def read() -> None:
        async for event in stream:
            received.append(event)

    reader = asyncio.create_task(read())
    # A subscriber that never reads until the end.
    slow = await AgentConnection.connect(inproc.socket)
    answer = await slow.ok({"op": "hello", "events": ["peer_health_changed"]})
    assert answer["events"] == ["peer_health_changed"] and answer["events_dropped"] == 0
    await _add_peers(agent)  # both subscribed before the first event can exist
    with caplog.at_level(logging.INFO, logger="overlayd.subscriptions"):
        emitted = await _health_rounds(inproc, device, queue)
        while len(received) < len(emitted):
            await asyncio.sleep(0.05)
        assert [e.model_dump() for e in received] == [
            p.PeerHealthChangedEvent(pubkey=e.pubkey, healthy=bool(e.healthy)).model_dump()
            for e in emitted
        ]
        # The slow subscriber still has its connection, and learns what it lost.
        again = await slow.ok({"op": "hello"})
        dropped = again["events_dropped"]
        assert dropped > 0
        with contextlib.suppress(TimeoutError):
            while True:
                await asyncio.wait_for(slow.call({"op": "status"}), 2)
                if len(slow.events) + dropped >= len(emitted):
                    break
        # What it got is what was emitted, in order, but for one run of dropped
        # events: those that waited in its queue while it did not read (the ones
        # before the run were already in its socket).
        assert len(slow.events) + dropped == len(emitted)
        frames = [_frame(e) for e in emitted]
        gap = next(i for i, (a, b) in enumerate(zip(slow.events, frames, strict=False)) if a != b)
        assert slow.events == frames[:gap] + frames[gap + dropped :]
    warnings = [r for r in caplog.records if "does not read its events" in r.getMessage()]
    assert len(warnings) == 1
    caught_up = [r for r in caplog.records if "caught up" in r.getMessage()]
    assert len(caught_up) == 1 and f"{dropped} were dropped" in caught_up[0].getMessage()
    # The agent's connection, never subscribed, saw nothing.
    await agent.ok({"op": "status"})
    assert agent.events == []
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await client.close()
    await slow.close()
    await agent.close()
