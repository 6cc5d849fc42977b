"""A minimal third-party driver, type-checked against overlayd's public API (not run).

If this stops type-checking, a change in overlayd broke what driver authors rely on.
"""

from __future__ import annotations

from overlayd import DRIVER_API
from overlayd import hookimpl
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.model import DeviceSpec
from overlayd.model import DriverInfo
from overlayd.testing.conformance import check_driver


class TypedDriver:
    name = "typed"

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}

    @hookimpl
    def overlayd_describe(self) -> DriverInfo:
        return DriverInfo(
            name=self.name,
            api=DRIVER_API,
            device_kinds=frozenset({"bridge"}),
            capabilities=frozenset({Capability.DEVICES}),
        )

    @hookimpl
    def overlayd_device_create(self, spec: DeviceSpec) -> Device | None:
        if spec.kind != "bridge":
            return None
        device = Device(kind=spec.kind, name=spec.name, owner=spec.owner, driver=self.name)
        self.devices[device.name] = device
        return device

    @hookimpl
    def overlayd_device_delete(self, device: Device) -> bool | None:
        return self.devices.pop(device.name, None) is not None

    @hookimpl
    def overlayd_device_list(self, kind: str) -> list[Device]:
        return [d for d in self.devices.values() if d.kind == kind]


problems: list[str] = check_driver(TypedDriver())
