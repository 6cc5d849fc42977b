"""Engine behaviour through the daemon's socket: records equal the device, races, events."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time

import pytest

from overlayd import hookimpl
from overlayd import protocol as p
from overlayd.client import AsyncClient
from overlayd.client import RemoteError
from overlayd.errors import DeviceError
from overlayd.model import DeviceKind
from overlayd.model import ReconcileRequest
from overlayd.testing.nodes import lone_node

from .conftest import InProcDaemon

A = "aDlk2hH3mTqJq8DVRk9f0lZ0n3Hk0Jm0bZ4rK1d3CUk="
B = "cHZ7Fq1vJdNq1PkE3XtKx8U1lWkqH4Qm2D6b1tWYn2w="


async def _global(client: AsyncClient) -> str:
    return await client.setup_global_overlay(**lone_node(instance_id="4242", slice_cidr=None))


def _allowed(status: p.StatusResponse) -> dict[str, set[str]]:
    return {
        peer.public_key: set(filter(None, peer.allowed_ips.split(","))) for peer in status.peers
    }


async def test_a_prefix_given_to_two_peers_is_recorded_on_the_last_only(
    inproc: InProcDaemon,
) -> None:
    await inproc.start()
    async with AsyncClient(str(inproc.socket), timeout=10) as client:
        device = await _global(client)
        await client.add_peer(A, "10.0.0.1:51820", "10.9.1.0/24,10.9.2.0/24", 25)
        await client.add_peer(B, "10.0.0.2:51820", "10.9.1.0/24", 25)
        assert _allowed(await client.status()) == {A: {"10.9.2.0/24"}, B: {"10.9.1.0/24"}}
        await client.remove_peer(B)
        assert _allowed(await client.status()) == {A: {"10.9.2.0/24"}}
    assert inproc.engine is not None and inproc.fake is not None
    recorded = {k: set(v.allowed_ips) for k, v in inproc.engine.peers[device].items()}
    held = {k: set(v.allowed_ips) for k, v in inproc.fake.host.peers[device].items()}
    assert recorded == held == {A: {ipaddress.ip_network("10.9.2.0/24")}}
    # A restart re-applies what is recorded: the device must not change.
    await inproc.restart()
    async with AsyncClient(str(inproc.socket), timeout=10) as client:
        assert _allowed(await client.status()) == {A: {"10.9.2.0/24"}}


class SlowPeriodicReconcile:
    """A plugin whose periodic reconcile passes take a second; shutdown is timed."""

    name = "slowreconcile"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended: float | None = None
        self.shutdown_at: float | None = None

    @hookimpl
    def overlayd_reconcile(self, request: ReconcileRequest) -> None:
        if not request.startup:
            self.started.set()
            time.sleep(1.0)
            self.ended = time.monotonic()

    @hookimpl
    def overlayd_shutdown(self) -> None:
        self.shutdown_at = time.monotonic()


async def test_daemon_stop_drains_the_periodic_reconcile(inproc: InProcDaemon) -> None:
    probe = SlowPeriodicReconcile()
    inproc.configure(engine={"reconcile_interval_secs": 0.05})
    await inproc.start(probe)
    assert await asyncio.to_thread(probe.started.wait, 10)
    await asyncio.sleep(0.2)
    await inproc.stop()  # what SIGTERM does: close the server, then stop the engine
    assert probe.ended is not None and probe.shutdown_at is not None
    assert probe.shutdown_at >= probe.ended


async def test_err_carries_the_rollback_failures(inproc: InProcDaemon) -> None:
    await inproc.start()
    assert inproc.fake is not None
    async with AsyncClient(str(inproc.socket), timeout=10) as client:
        await _global(client)
        inproc.fake.fail_when(
            "overlayd_device_create",
            lambda kw: kw["spec"].kind == DeviceKind.WIREGUARD,
            DeviceError("no more UDP ports (injected)"),
            once=True,
        )
        inproc.fake.fail_next("overlayd_device_delete", DeviceError("bridge busy (injected)"))
        with pytest.raises(RemoteError) as info:
            await client.setup_service_overlay("db", "dedicated")
        assert "no more UDP ports (injected)" in info.value.message
        assert "rolling back also failed" in info.value.message
        assert "delete bridge: bridge busy (injected)" in info.value.message
        # The daemon keeps serving.
        assert (await client.status()).service_count == 0
