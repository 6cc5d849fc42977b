"""What every part of the conformance kit shares: the keys, the cleanup tracker,
the stranger driver and :class:`DriverConformance`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from overlayd.config import EngineConfig
from overlayd.errors import OverlaydError
from overlayd.hookspecs import hookimpl
from overlayd.model import DRIVER_API
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import DriverInfo
from overlayd.plugins import DriverContext
from overlayd.plugins import Hooks
from overlayd.plugins import driver_name
from overlayd.plugins import make_plugin_manager
from overlayd.plugins import register_drivers

#: Keys used by the kit (valid X25519 points are not needed: drivers must not care).
PEER_KEYS = [
    "aDlk2hH3mTqJq8DVRk9f0lZ0n3Hk0Jm0bZ4rK1d3CUk=",
    "cHZ7Fq1vJdNq1PkE3XtKx8U1lWkqH4Qm2D6b1tWYn2w=",
    "eN8yQz5s0kP2ZcV4mW9bX1rT7uJ3hG6fD2aS8lK0pHE=",
]
DEVICE_KEY = "YOnqvqXWSCdqVaX4tsnUpZ2zxJ0I+dJcuZ7Lj1gRe3Y="


class _Tracker:
    """Remembers what a test created so the fixture can remove it."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self.devices: list[Device] = []
        self.attachments: list[Attachment] = []

    def device_create(self, spec: DeviceSpec) -> Device:
        """Create a device through the hooks; it is removed after the test."""
        device = self.hooks.device_create(spec)
        self.devices.append(device)
        return device

    def attach(self, request: AttachRequest) -> Attachment:
        """Attach through the hooks; the attachment is detached after the test."""
        attachment = self.hooks.attach(request)
        self.attachments.append(attachment)
        return attachment

    def cleanup(self) -> list[BaseException]:
        errors: list[BaseException] = []
        for att in reversed(self.attachments):
            try:
                self.hooks.detach(att)
            except Exception as exc:  # noqa: BLE001 - cleanup tries everything
                errors.append(exc)
        for dev in reversed(self.devices):
            try:
                self.hooks.device_delete(dev)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        return errors


#: The name of the other driver the kit registers beside the one under test.
STRANGER = "someone-else"


class _Stranger:
    """Another loaded driver that owns the kit's foreign objects."""

    name = STRANGER

    @hookimpl
    def overlayd_device_delete(self, device: Device) -> bool | None:
        return True

    @hookimpl
    def overlayd_peer_apply(self, device: Device, changes: Any) -> bool | None:
        return True

    @hookimpl
    def overlayd_peer_status(self, device: Device) -> list[Any] | None:
        return []

    @hookimpl
    def overlayd_detach(self, attachment: Attachment) -> bool | None:
        return True

    @hookimpl
    def overlayd_attachment_alive(self, attachment: Attachment) -> bool | None:
        return False


@contextlib.contextmanager
def _beside_a_stranger(hooks: Hooks) -> Iterator[list[tuple[str, str]]]:
    """Register :class:`_Stranger` and record every (hook, driver) pair the facade calls."""
    calls: list[tuple[str, str]] = []

    def before(name: str, impls: Any, kwargs: Any) -> None:
        calls.extend((name, impl.plugin_name) for impl in impls)

    def after(outcome: Any, name: str, impls: Any, kwargs: Any) -> None:
        pass

    stranger = _Stranger()
    hooks.pm.register(stranger, name=STRANGER)
    undo = hooks.pm.add_hookcall_monitoring(before, after)
    try:
        yield calls
    finally:
        undo()
        hooks.pm.unregister(stranger)


def _never_asked(calls: list[tuple[str, str]], driver: object) -> None:
    """The driver under test was not called about the stranger's objects."""
    name = driver_name(driver)
    asked = [hook for hook, plugin in calls if plugin == name]
    assert not asked, f"the facade asked {name} about another driver's object: {asked}"
    assert calls, "the facade called nobody: the stranger's hooks were not reached"


def _tolerates(call: Any, **kwargs: Any) -> None:
    """A direct call with another driver's object returns, or raises an OverlaydError."""
    with contextlib.suppress(OverlaydError):
        call(**kwargs)


class DriverConformance:
    """Core invariants: description, API version, ownership stamping."""

    @pytest.fixture
    def driver(self) -> object:
        raise NotImplementedError("override the `driver` fixture with a fresh driver instance")

    @pytest.fixture
    def engine_config(self) -> EngineConfig:
        return EngineConfig(drivers=[])

    @pytest.fixture
    def info(self, driver: object) -> DriverInfo:
        describe = getattr(driver, "overlayd_describe", None)
        assert describe is not None, "every driver must implement overlayd_describe"
        result = describe()
        assert isinstance(result, DriverInfo)
        return result

    @pytest.fixture
    def capabilities(self, info: DriverInfo) -> frozenset[Capability]:
        return info.capabilities

    @pytest.fixture
    def hooks(self, driver: object, engine_config: EngineConfig) -> Iterator[Hooks]:
        pm = make_plugin_manager(include_core_defaults=True)
        register_drivers(pm, [driver])
        hooks = Hooks(pm)
        hooks.configure(engine_config)
        events: list[Any] = []
        hooks.startup(DriverContext(data_dir=None, emit=events.append))
        yield hooks
        try:
            hooks.shutdown()
        finally:
            pm.unregister(driver)

    @pytest.fixture
    def created(self, hooks: Hooks) -> Iterator[_Tracker]:
        tracker = _Tracker(hooks)
        yield tracker
        errors = tracker.cleanup()
        assert not errors, f"cleanup failed: {errors}"

    def test_describe_declares_compatible_api(self, info: DriverInfo, driver: object) -> None:
        assert info.api == DRIVER_API
        assert info.name == driver_name(driver)

    def test_describe_is_stable(self, driver: object, info: DriverInfo) -> None:
        assert driver.overlayd_describe() == info  # type: ignore[attr-defined]

    def test_declared_kinds_are_known_strings(self, info: DriverInfo) -> None:
        for kind in info.attach_kinds:
            assert kind in {"linux_pid", "windows_container", "guest_managed", "netns"}
        for kind in info.device_kinds:
            assert isinstance(kind, str)
            assert kind


def _require(capabilities: frozenset[Capability], cap: Capability) -> None:
    if cap not in capabilities:
        pytest.skip(f"driver declares no {cap.value} capability")


def _create_wireguard(
    capabilities: frozenset[Capability],
    needed: Capability,
    info: DriverInfo,
    created: _Tracker,
    spec: DeviceSpec,
) -> Device:
    """Create the kit's WireGuard device (removed after the test), or skip."""
    _require(capabilities, needed)
    if DeviceKind.WIREGUARD not in info.device_kinds:
        pytest.skip("driver creates no WireGuard devices")
    return created.device_create(spec)
