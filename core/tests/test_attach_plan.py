"""Attach plans: the record is written while the driver attaches, and stays right.

``overlayd_attach_plan`` lets the engine write an attachment's record beside
the driver's host changes instead of after them. These tests hold what that
must not change: the record is the driver's answer, a failure leaves nothing,
and a crash between the write and the attach is repaired at the next start.
The engine's semantics on both orders are also held by ``test_engine.py``,
which runs every test without and with plans.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from overlayd import hookimpl
from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.engine import Engine
from overlayd.errors import AttachError
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.state import MemoryStore
from overlayd.testing.nodes import lone_node
from overlayd_fake.driver import FakeDriver

PID = {"platform": "linux_pid", "pid": 4242}
KEY = "linux_pid:4242"


def config() -> EngineConfig:
    return EngineConfig(
        drivers=[],
        dns=DnsSettings(enabled=False),
        engine=EngineSettings(health_interval_secs=0),
    )


class WatchedStore(MemoryStore):
    """Sets :attr:`recorded` once a commit has written an attachment's record."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded = threading.Event()

    def commit(self, puts: Any, deletes: Any = ()) -> None:
        super().commit(puts, deletes)
        if any(kind == "attachment" for kind, _ in puts):
            self.recorded.set()


async def started(store: MemoryStore, fake: FakeDriver) -> Engine:
    engine = Engine(config(), drivers=[fake], store=store)
    await engine.start()
    await engine.setup_global_overlay(**lone_node())
    await engine.setup_service_overlay("web", "shared")
    return engine


def records(store: MemoryStore, kind: str) -> dict[str, Any]:
    return dict(store.load().get(kind, {}))


async def test_the_record_is_written_while_the_driver_attaches() -> None:
    store = WatchedStore()
    fake = FakeDriver(plan_attach=True)
    # The attach waits for the record: it fails unless the write runs beside it.
    fake.fail_when(
        "overlayd_attach",
        lambda _: not store.recorded.wait(5),
        AttachError("the record was not written during the attach"),
    )
    engine = await started(store, fake)
    try:
        att = await engine.attach(PID, "web")
        assert att == Attachment.model_validate(records(store, "attachment")[KEY])
        assert engine.list_attachments() == [att]
    finally:
        await engine.stop()


async def test_without_a_plan_the_record_follows_the_attach() -> None:
    store = WatchedStore()
    fake = FakeDriver()
    seen: list[bool] = []
    fake.fail_when(
        "overlayd_attach",
        lambda _: seen.append(store.recorded.is_set()) or False,
        AttachError("unused"),
    )
    engine = await started(store, fake)
    try:
        await engine.attach(PID, "web")
        assert seen == [False]
        assert KEY in records(store, "attachment")
    finally:
        await engine.stop()


class Unfaithful(FakeDriver):
    """Plans one MAC and attaches with another, as a driver whose plan went stale."""

    @hookimpl
    def overlayd_attach_plan(self, request: AttachRequest) -> Attachment | None:
        planned = super().overlayd_attach_plan(request)
        return None if planned is None else planned.model_copy(update={"mac": "02:00:00:00:00:99"})


async def test_an_attach_other_than_planned_is_what_gets_recorded() -> None:
    store = MemoryStore()
    fake = Unfaithful(plan_attach=True)
    engine = await started(store, fake)
    try:
        att = await engine.attach(PID, "web")
        assert att.mac != "02:00:00:00:00:99"
        assert att.mac == fake.host.attachments[KEY].mac
        assert engine.list_attachments() == [att]
        assert records(store, "attachment")[KEY]["mac"] == att.mac
    finally:
        await engine.stop()


async def test_a_failed_planned_attach_leaves_no_record_and_no_lease() -> None:
    store = MemoryStore()
    fake = FakeDriver(plan_attach=True)
    engine = await started(store, fake)
    before = store.load()
    fake.fail_next("overlayd_attach", AttachError("veth create failed (injected)"))
    try:
        with pytest.raises(AttachError, match="injected"):
            await engine.attach(PID, "web")
        assert store.load() == before
        assert engine.list_attachments() == []
        assert engine.list_leases() == []
        assert (await engine.attach(PID, "web")).ip is not None
    finally:
        await engine.stop()


async def test_a_crash_between_the_write_and_the_attach_is_repaired_at_start() -> None:
    """The record is durable, the daemon dies before the driver plugs the workload
    in: the next start's reconcile hears from the driver that the workload has no
    interfaces, and releases what the record held (the fake reports it gone;
    linux_bridge recreates the veth of a live namespace, see its tests)."""
    store = WatchedStore()
    fake = FakeDriver(plan_attach=True)
    crashed = threading.Event()
    fake.fail_when(
        "overlayd_attach",
        lambda _: bool(store.recorded.wait(5) and crashed.wait(5)) and False,
        AttachError("unused"),
    )
    engine = await started(store, fake)
    task = None
    try:
        task = asyncio.create_task(engine.attach(PID, "web"))
        assert await asyncio.to_thread(store.recorded.wait, 5)
        # What the disk holds at the instant of the crash.
        survived = MemoryStore()
        survived.commit(
            {
                (kind, key): value
                for kind, recs in store.load().items()
                for key, value in recs.items()
            }
        )
    finally:
        crashed.set()
        if task is not None:
            await task
        await engine.stop()
    assert KEY in records(survived, "attachment")
    assert records(survived, "lease")

    restarted = await started(survived, FakeDriver(plan_attach=True))
    try:
        assert restarted.list_attachments() == []
        assert restarted.list_leases() == []
        assert KEY not in records(survived, "attachment")
        assert (await restarted.attach(PID, "web")).ip is not None
    finally:
        await restarted.stop()


def test_attach_request_is_built_at_import() -> None:
    """``AttachRequest`` refers to ``Attachment``, defined after it; left to its
    first use, building it cost a fresh daemon's first attach 3 ms."""
    assert AttachRequest.__pydantic_complete__
