"""The engine's races: cancelled requests, stop while work runs, detach's locks, rollback."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from overlayd import hookimpl
from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.engine import Engine
from overlayd.errors import DeviceError
from overlayd.model import Attachment
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import LinuxPidHandle
from overlayd.model import ReconcileRequest
from overlayd.state import MemoryStore
from overlayd.testing.nodes import lone_node
from overlayd_fake.driver import FakeDriver

H = LinuxPidHandle(pid=4242)


class Intervals:
    """Start/end times of blocking hook calls, by key (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, list[tuple[float, float]]] = {}
        self.started = threading.Event()

    def run(self, key: str, seconds: float) -> None:
        start = time.monotonic()
        self.started.set()
        time.sleep(seconds)
        with self._lock:
            self.calls.setdefault(key, []).append((start, time.monotonic()))

    def overlapping(self, key: str) -> bool:
        spans = sorted(self.calls.get(key, []))
        return any(b[0] < a[1] for a, b in itertools.pairwise(spans))


class SlowDns:
    """A DNS plugin whose record changes take a while (like a busy DNS server)."""

    name = "slowdns"

    def __init__(self) -> None:
        self.intervals = Intervals()

    @hookimpl
    def overlayd_dns_records_changed(self, added: Any, removed: Any) -> None:
        names = {r.name for r in [*added, *removed]}
        for name in names:
            self.intervals.run(name, 0.4)


class SlowReconcile:
    """Periodic (not startup) reconcile passes take ``seconds``; shutdown is timed."""

    name = "slowreconcile"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.intervals = Intervals()
        self.finished = threading.Event()
        self.shutdown_at: float | None = None

    @hookimpl
    def overlayd_reconcile(self, request: ReconcileRequest) -> None:
        if not request.startup:
            self.intervals.run("reconcile", self.seconds)
            self.finished.set()

    @hookimpl
    def overlayd_shutdown(self) -> None:
        self.shutdown_at = time.monotonic()


def _config(**engine: Any) -> EngineConfig:
    return EngineConfig(
        drivers=[],
        dns=DnsSettings(enabled=False),
        engine=EngineSettings(health_interval_secs=0, **engine),
    )


async def _global(engine: Engine) -> None:
    await engine.setup_global_overlay(**lone_node(slice_cidr=None))


async def test_a_cancelled_request_holds_its_lock_until_its_hook_returns() -> None:
    dns = SlowDns()
    async with Engine(_config(), drivers=[FakeDriver()], store=MemoryStore(), plugins=[dns]) as eng:
        first = asyncio.create_task(eng.register_dns("web", "10.200.0.5"))
        while not dns.intervals.started.is_set():
            await asyncio.sleep(0.01)
        first.cancel()
        second = asyncio.create_task(eng.register_dns("web", "10.200.0.6"))
        with pytest.raises(asyncio.CancelledError):
            await first
        # The cancelled call returned only once its hook had: the lock was held.
        assert len(dns.intervals.calls["web"]) == 1
        await second
        assert len(dns.intervals.calls["web"]) == 2
        assert not dns.intervals.overlapping("web"), dns.intervals.calls


async def _reconciling(probe: SlowReconcile, **settings: Any) -> Engine:
    """A started engine reconciling every 0.05 s, once ``probe``'s first reconcile began."""
    eng = Engine(
        _config(reconcile_interval_secs=0.05, **settings),
        drivers=[FakeDriver()],
        store=MemoryStore(),
        plugins=[probe],
    )
    await eng.start()
    while not probe.intervals.started.is_set():
        await asyncio.sleep(0.01)
    return eng


async def test_stop_drains_a_running_reconcile_before_shutting_drivers_down() -> None:
    probe = SlowReconcile(1.0)
    eng = await _reconciling(probe)
    await asyncio.sleep(0.2)
    await eng.stop()
    ((_, reconcile_end),) = probe.intervals.calls["reconcile"]
    assert probe.shutdown_at is not None and probe.shutdown_at >= reconcile_end


async def test_stop_is_bounded_and_names_what_it_cut_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = SlowReconcile(2.0)
    eng = await _reconciling(probe, stop_timeout_secs=0.3)
    began = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="overlayd.engine"):
        await eng.stop()
    assert time.monotonic() - began < 1.5
    assert "cut off" in caplog.text and "reconcile" in caplog.text
    # Let the cut-off worker end before the test does.
    assert await asyncio.to_thread(probe.finished.wait, 5)


async def test_rollback_failures_are_part_of_the_error() -> None:
    fake = FakeDriver()
    async with Engine(_config(), drivers=[fake], store=MemoryStore()) as eng:
        await _global(eng)
        fake.fail_when(
            "overlayd_device_create",
            lambda kw: kw["spec"].kind == DeviceKind.WIREGUARD,
            DeviceError("no more UDP ports (injected)"),
            once=True,
        )
        fake.fail_next("overlayd_device_delete", DeviceError("bridge is busy (injected)"))
        with pytest.raises(DeviceError) as info:
            await eng.setup_service_overlay("db", "dedicated")
    message = str(info.value)
    assert "no more UDP ports" in message
    assert "rolling back also failed" in message
    assert "delete bridge: bridge is busy" in message
    assert info.value.rollback_failures == ("delete bridge: bridge is busy (injected)",)


class GatedFake(FakeDriver):
    """A fake whose detach and bridge delete can be held at a gate, with detach timing."""

    def __init__(self) -> None:
        super().__init__()
        self.detach_gate = threading.Event()
        self.detach_gate.set()
        self.delete_gate = threading.Event()
        self.delete_gate.set()
        self.in_delete = threading.Event()
        self.detaching = threading.Event()
        self.slow_detach = 0.0
        self.intervals = Intervals()

    @hookimpl
    def overlayd_detach(self, attachment: Attachment) -> bool | None:
        self.detaching.set()
        assert self.detach_gate.wait(10)
        self.intervals.run(attachment.key, self.slow_detach)
        return super().overlayd_detach(attachment)

    @hookimpl
    def overlayd_device_delete(self, device: Device) -> bool | None:
        if device.kind == DeviceKind.BRIDGE:
            self.in_delete.set()
            assert self.delete_gate.wait(10)
        return super().overlayd_device_delete(device)


async def _until(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)
    event.clear()


@pytest.fixture
async def gated() -> AsyncIterator[tuple[Engine, GatedFake]]:
    fake = GatedFake()
    async with Engine(_config(), drivers=[fake], store=MemoryStore()) as eng:
        yield eng, fake


async def test_detach_holds_the_lock_of_the_service_the_handle_moved_to(
    gated: tuple[Engine, GatedFake],
) -> None:
    eng, fake = gated
    await _global(eng)
    await eng.setup_service_overlay("web", "shared")
    await eng.setup_service_overlay("db", "shared")
    await eng.attach(H, "web")
    # teardown(web) holds web's lock exclusively; it is detaching the handle.
    fake.detach_gate.clear()
    fake.delete_gate.clear()
    teardown_web = asyncio.create_task(eng.teardown_service_overlay("web"))
    await _until(fake.detaching)
    # A detach of the handle arrives: it sees the handle on web and waits for web.
    late_detach = asyncio.create_task(eng.detach(H))
    await asyncio.sleep(0.1)
    fake.detach_gate.set()
    await _until(fake.in_delete)
    # Still inside teardown(web): the handle is free and gets attached to db.
    moved = await eng.attach(H, "db")
    assert moved.service == "db"
    # web's lock goes; the late detach proceeds (slowly), and db is torn down meanwhile.
    fake.slow_detach = 0.5
    fake.delete_gate.set()
    await teardown_web
    await _until(fake.detaching)
    teardown_db = asyncio.create_task(eng.teardown_service_overlay("db"))
    await asyncio.gather(late_detach, teardown_db)
    assert not fake.intervals.overlapping("linux_pid:4242"), fake.intervals.calls
    assert len(fake.intervals.calls["linux_pid:4242"]) == 2
    assert eng.attachments == {} and eng.list_leases() == []
    assert ipaddress.ip_address(moved.ip) not in {lease.ip for lease in eng.list_leases()}
