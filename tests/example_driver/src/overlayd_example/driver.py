"""A minimal overlayd driver: named segments and netns attachments, kept in memory.

It shows everything a driver needs: a class registered under the
``overlayd.drivers`` entry point, ``overlayd_describe`` with the driver API
version, dispatch by kind (return ``None`` for what is not yours), ownership
stamped on every result, and idempotent create/delete.
"""

from __future__ import annotations

from overlayd import DRIVER_API
from overlayd import hookimpl
from overlayd.errors import AttachError
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.model import DeviceSpec
from overlayd.model import DriverInfo
from overlayd.model import NetnsHandle
from overlayd.model import ReconcileReport
from overlayd.model import ReconcileRequest


class ExampleDriver:
    """Bridges and netns attachments recorded in dictionaries."""

    name = "example"

    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.attached: dict[str, Attachment] = {}

    @hookimpl
    def overlayd_describe(self) -> DriverInfo:
        return DriverInfo(
            name=self.name,
            api=DRIVER_API,
            device_kinds=frozenset({"bridge"}),
            attach_kinds=frozenset({"netns"}),
            capabilities=frozenset({Capability.DEVICES, Capability.ATTACH, Capability.RECONCILE}),
        )

    @hookimpl
    def overlayd_device_create(self, spec: DeviceSpec) -> Device | None:
        if spec.kind != "bridge":
            return None  # not ours: let another driver answer
        device = spec.as_device(self.name)
        self.devices[spec.name] = device  # creating it again adopts it
        return device

    @hookimpl
    def overlayd_device_delete(self, device: Device) -> bool | None:
        return self.devices.pop(device.name, None) is not None

    @hookimpl
    def overlayd_device_list(self, kind: str) -> list[Device]:
        return [d for d in self.devices.values() if d.kind == kind]

    @hookimpl
    def overlayd_attach(self, request: AttachRequest) -> Attachment | None:
        if not isinstance(request.handle, NetnsHandle):
            return None
        if request.segment.name not in self.devices:
            raise AttachError(f"segment {request.segment.name} does not exist")
        attachment = Attachment(
            handle=request.handle,
            service=request.service,
            driver=self.name,
            ip=request.address.ip,
            interfaces=(f"ex{abs(hash(request.handle.path)) % 10**8}",),
        )
        self.attached[attachment.key] = attachment
        return attachment

    @hookimpl
    def overlayd_detach(self, attachment: Attachment) -> bool | None:
        return self.attached.pop(attachment.key, None) is not None

    @hookimpl
    def overlayd_reconcile(self, request: ReconcileRequest) -> ReconcileReport:
        recorded = {d.name for d in request.devices if d.driver == self.name}
        removed = [name for name in self.devices if name not in recorded]
        for name in removed:
            del self.devices[name]
        return ReconcileReport(
            driver=self.name,
            adopted=tuple(n for n in recorded if n in self.devices),
            removed=tuple(removed),
        )
