"""Owner dispatch in the hook facade: a driver is only asked about its own objects."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from overlayd.errors import NoDriverError
from overlayd.hookspecs import hookimpl
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Device
from overlayd.model import GuestManagedHandle
from overlayd.model import Lease
from overlayd.model import LinuxPidHandle
from overlayd.model import Pool
from overlayd.model import ReconcileReport
from overlayd.model import ReconcileRequest
from overlayd.plugins import Hooks
from overlayd.plugins import make_plugin_manager
from overlayd.plugins import register_drivers
from overlayd.testing.nodes import node_info


class Owner:
    """A driver that answers every owner-dispatched hook and records what it was asked."""

    def __init__(self, name: str, guests: bool = False) -> None:
        self.name = name
        self.guests = guests
        self.asked: list[tuple[str, str]] = []

    def _ask(self, hook: str, obj: Any) -> None:
        self.asked.append((hook, str(getattr(obj, "driver", None))))

    @hookimpl
    def overlayd_device_delete(self, device: Device) -> bool | None:
        self._ask("device_delete", device)
        return True

    @hookimpl
    def overlayd_peer_status(self, device: Device) -> list[Any] | None:
        self._ask("peer_status", device)
        return []

    @hookimpl
    def overlayd_detach(self, attachment: Attachment) -> bool | None:
        self._ask("detach", attachment)
        return True

    @hookimpl
    def overlayd_attachment_alive(self, attachment: Attachment) -> bool | None:
        self._ask("attachment_alive", attachment)
        return False

    @hookimpl
    def overlayd_ipam_allocate(self, pool: Pool, owner: str) -> Lease | None:
        self._ask("ipam_allocate", pool)
        return Lease(ip=ipaddress.ip_address("10.9.0.2"), pool=pool.name, owner=self.name)

    @hookimpl
    def overlayd_attach(self, request: AttachRequest) -> Attachment | None:
        if isinstance(request.handle, GuestManagedHandle) and not self.guests:
            return None
        self._ask("attach", request.segment)
        return Attachment(
            handle=request.handle, service="s", driver=self.name, ip=request.address.ip
        )

    @hookimpl
    def overlayd_reconcile(self, request: ReconcileRequest) -> ReconcileReport | None:
        return ReconcileReport(
            driver=self.name,
            adopted=tuple(d.name for d in request.devices)
            + tuple(a.key for a in request.attachments),
        )


@pytest.fixture
def drivers() -> tuple[Owner, Owner]:
    return Owner("first"), Owner("second", guests=True)


@pytest.fixture
def hooks(drivers: tuple[Owner, Owner]) -> Hooks:
    pm = make_plugin_manager(include_core_defaults=False)
    register_drivers(pm, list(drivers))
    return Hooks(pm)


def _device(driver: str) -> Device:
    return Device(kind="bridge", name="zl-x", owner="base", driver=driver)


def _attachment(driver: str, pid: int = 1) -> Attachment:
    return Attachment(
        handle=LinuxPidHandle(pid=pid),
        service="s",
        driver=driver,
        ip=ipaddress.ip_address("10.9.0.2"),
    )


def _request(segment_driver: str, handle: Any) -> AttachRequest:
    return AttachRequest(
        handle=handle,
        service="s",
        segment=_device(segment_driver),
        address=ipaddress.ip_interface("10.9.0.2/24"),
        gateway=ipaddress.ip_address("10.9.0.1"),
        node=node_info(
            "10.9.0.0/16",
            "10.9.0.0/20",
            public_key="YOnqvqXWSCdqVaX4tsnUpZ2zxJ0I+dJcuZ7Lj1gRe3Y=",
            interface="zl-g",
        ),
    )


def test_only_the_owner_is_asked(hooks: Hooks, drivers: tuple[Owner, Owner]) -> None:
    first, second = drivers
    # Without owner dispatch "first" (called first) would answer every one of these.
    assert hooks.device_delete(_device("second")) is True
    assert hooks.peer_status(_device("second")) == []
    assert hooks.detach(_attachment("second")) is True
    assert hooks.attachment_alive(_attachment("second")) is False
    hooks.attach(_request("second", LinuxPidHandle(pid=1)))
    assert first.asked == []
    assert [hook for hook, owner in second.asked if owner == "second"] == [
        "device_delete",
        "peer_status",
        "detach",
        "attachment_alive",
        "attach",
    ]


def test_pool_with_a_driver_goes_to_it_and_without_one_to_the_first(
    hooks: Hooks, drivers: tuple[Owner, Owner]
) -> None:
    first, second = drivers
    cidr = ipaddress.ip_network("10.9.0.0/24")
    assert hooks.ipam_allocate(Pool(name="p", cidr=cidr, driver="second"), "o").owner == "second"
    assert hooks.ipam_allocate(Pool(name="p", cidr=cidr), "o").owner == "first"
    assert [h for h, _ in first.asked] == ["ipam_allocate"]
    assert [h for h, _ in second.asked] == ["ipam_allocate"]


def test_guest_attach_goes_to_whoever_handles_guests(
    hooks: Hooks, drivers: tuple[Owner, Owner]
) -> None:
    att = hooks.attach(_request("first", GuestManagedHandle(id="vm1")))
    assert att.driver == "second"


def test_owner_not_loaded_is_named(hooks: Hooks, drivers: tuple[Owner, Owner]) -> None:
    with pytest.raises(NoDriverError) as info:
        hooks.device_delete(_device("wireguard"))
    message = str(info.value)
    assert "'wireguard', which is not loaded (loaded: first, second)" in message
    assert info.value.code == "no_driver"
    with pytest.raises(NoDriverError, match="'gone', which is not loaded"):
        hooks.detach(_attachment("gone"))
    with pytest.raises(NoDriverError, match="'gone', which is not loaded"):
        hooks.attach(_request("gone", LinuxPidHandle(pid=1)))
    assert all(not d.asked for d in drivers)


def test_owner_not_loaded_keeps_the_documented_fallbacks(hooks: Hooks) -> None:
    assert hooks.attachment_alive(_attachment("gone")) is True
    assert hooks.nat_candidates(_device("gone")) == []
    assert hooks.dns_endpoint_configure(_attachment("gone"), [], None) is False
    sock = hooks.nat_socket(_device("gone"), socket.AF_INET, socket.SOCK_DGRAM, 0)
    sock.close()


def test_blocked_owner_counts_as_not_loaded(
    monkeypatch: pytest.MonkeyPatch, drivers: tuple[Owner, Owner]
) -> None:
    monkeypatch.setenv("OVERLAYD_DISABLE_DRIVERS", "second")
    pm = make_plugin_manager(include_core_defaults=False)
    register_drivers(pm, list(drivers))
    with pytest.raises(NoDriverError, match="'second', which is not loaded"):
        Hooks(pm).device_delete(_device("second"))
    assert all(not d.asked for d in drivers)


def test_a_driver_registered_later_is_found(hooks: Hooks) -> None:
    with pytest.raises(NoDriverError):
        hooks.device_delete(_device("third"))
    third = Owner("third")
    hooks.pm.register(third, name="third")
    assert hooks.device_delete(_device("third")) is True
    assert third.asked == [("device_delete", "third")]
    hooks.pm.unregister(third)
    with pytest.raises(NoDriverError):
        hooks.device_delete(_device("third"))


def test_reconcile_hands_each_driver_its_own_objects(hooks: Hooks) -> None:
    request = ReconcileRequest(
        devices=(_device("first"), _device("second").model_copy(update={"name": "zl-y"})),
        attachments=(_attachment("second", pid=7),),
    )
    reports = {r.driver: r.adopted for r in hooks.reconcile(request)}
    assert reports == {"first": ("zl-x",), "second": ("zl-y", "linux_pid:7")}
    assert [r.driver for r in hooks.reconcile(request)] == ["first", "second"]


class Watcher:
    """A plugin that wraps every detach without answering it."""

    name = "watcher"

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl(wrapper=True)
    def overlayd_detach(self, attachment: Attachment) -> Iterator[Any]:
        self.seen.append(attachment.driver)
        return (yield)


def test_wrappers_still_wrap_owner_dispatched_calls(
    hooks: Hooks, drivers: tuple[Owner, Owner]
) -> None:
    watcher = Watcher()
    hooks.pm.register(watcher, name="watcher")
    assert hooks.detach(_attachment("second")) is True
    assert watcher.seen == ["second"]
    assert drivers[0].asked == []


class WarmUp:
    """A driver with a warm-up that records itself, and may fail."""

    def __init__(self, name: str, calls: list[str], fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    @hookimpl
    def overlayd_warm_up(self) -> None:
        self.calls.append(self.name)
        if self.fail:
            raise RuntimeError("no socket")


class WarmUpWatcher:
    """Wraps every warm-up without being one."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl(wrapper=True)
    def overlayd_warm_up(self) -> Iterator[Any]:
        self.calls.append("wrapped")
        return (yield)


def test_warm_up_reaches_each_driver_once_through_the_wrappers(hooks: Hooks) -> None:
    calls: list[str] = []
    hooks.pm.register(WarmUp("a", calls, fail=True), name="a")
    hooks.pm.register(WarmUp("b", calls), name="b")
    hooks.pm.register(WarmUpWatcher(calls), name="watcher")
    assert hooks.warm_up() == ["a: RuntimeError: no socket"]
    # The wrapper wraps each driver's call and is not called as a driver itself.
    assert sorted(calls) == ["a", "b", "wrapped", "wrapped"]


def test_warm_up_builds_each_owners_callers_before_the_first_call(
    hooks: Hooks, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks.warm_up()
    built: list[str] = []
    original = hooks.pm.subset_hook_caller

    def counting(name: str, remove_plugins: Any) -> Any:
        built.append(name)
        return original(name, remove_plugins)

    monkeypatch.setattr(hooks.pm, "subset_hook_caller", counting)
    assert hooks.detach(_attachment("second")) is True
    assert hooks.device_delete(_device("first")) is True
    assert built == []  # both callers were built by the warm-up
