"""The driver conformance kit: behaviour every overlayd driver must have.

Subclass the mixins for the areas your driver implements and override the
``driver`` fixture::

    from overlayd.testing.conformance import DeviceConformance, AttachConformance

    class TestMyDriver(DeviceConformance, AttachConformance):
        @pytest.fixture
        def driver(self):
            return MyDriver()

Fixtures a subclass **must** override:

* ``driver`` — a fresh driver instance (set up inside whatever sandbox it
  needs, e.g. a network namespace).

Fixtures a subclass **may** override:

* ``capabilities`` — default: what ``overlayd_describe()`` declares; tests of an
  undeclared capability are skipped, never failed;
* ``bridge_spec`` / ``wireguard_spec`` — the devices the kit creates;
* ``attach_handle`` — the workload handle used by attach tests (default: a
  ``netns`` handle for drivers declaring it, else the first declared kind);
* ``engine_config`` — the configuration handed to ``overlayd_configure``.

Every test creates what it needs and the ``hooks`` fixture removes what is
left, in reverse order, even when the test fails.
"""

from __future__ import annotations

from overlayd.model import DRIVER_API
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.plugins import Hooks
from overlayd.plugins import driver_name
from overlayd.plugins import make_plugin_manager
from overlayd.plugins import register_drivers
from overlayd.testing.conformance._base import STRANGER
from overlayd.testing.conformance._base import DriverConformance
from overlayd.testing.conformance._base import _beside_a_stranger
from overlayd.testing.conformance._devices import AttachConformance
from overlayd.testing.conformance._devices import DeviceConformance
from overlayd.testing.conformance._devices import LifecycleConformance
from overlayd.testing.conformance._devices import NatConformance
from overlayd.testing.conformance._devices import PeerConformance
from overlayd.testing.conformance._ipam import IpamConformance

__all__ = [
    "AttachConformance",
    "DeviceConformance",
    "DriverConformance",
    "IpamConformance",
    "LifecycleConformance",
    "NatConformance",
    "PeerConformance",
    "check_driver",
]


def check_driver(driver: object) -> list[str]:
    """Run the core invariants without pytest; return a list of problems (empty = pass).

    Usable from a REPL or a smoke script on a host without pytest.
    """
    problems: list[str] = []
    describe = getattr(driver, "overlayd_describe", None)
    if describe is None:
        return ["driver does not implement overlayd_describe"]
    info = describe()
    if info.api != DRIVER_API:
        problems.append(f"driver API {info.api} != {DRIVER_API}")
    if info.name != driver_name(driver):
        problems.append(f"describe() name {info.name!r} != registered name {driver_name(driver)!r}")
    pm = make_plugin_manager()
    try:
        register_drivers(pm, [driver])
    except Exception as exc:  # noqa: BLE001 - report, do not raise
        return [*problems, f"registration failed: {exc}"]
    hooks = Hooks(pm)
    foreign = Device(kind="bridge", name="zl-x-b", owner="base", driver=STRANGER)
    with _beside_a_stranger(hooks) as calls:
        hooks.device_delete(foreign)
    if any(plugin == driver_name(driver) for _, plugin in calls):
        problems.append("the facade asked the driver about another driver's device")
    if Capability.DEVICES in info.capabilities:
        for kind in info.device_kinds:
            try:
                hooks.device_list(kind)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"device_list({kind}) failed: {exc}")
    pm.unregister(driver)
    return problems
