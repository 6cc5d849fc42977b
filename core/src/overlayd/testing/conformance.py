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

import contextlib
import ipaddress
import random
from collections.abc import Iterator
from typing import Any

import pytest

from overlayd.config import EngineConfig
from overlayd.errors import NoDriverError
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
from overlayd.model import GuestManagedHandle
from overlayd.model import LinuxPidHandle
from overlayd.model import MasqueradeRule
from overlayd.model import NetnsHandle
from overlayd.model import NodeInfo
from overlayd.model import PeerChange
from overlayd.model import PortMapping
from overlayd.model import ReconcileRequest
from overlayd.model import WindowsContainerHandle
from overlayd.peers import PeerTable
from overlayd.plugins import DriverContext
from overlayd.plugins import Hooks
from overlayd.plugins import driver_name
from overlayd.plugins import make_plugin_manager
from overlayd.plugins import register_drivers

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
    hooks: Hooks,
    created: _Tracker,
    spec: DeviceSpec,
) -> Device:
    """Create the kit's WireGuard device (removed after the test), or skip."""
    _require(capabilities, needed)
    if DeviceKind.WIREGUARD not in info.device_kinds:
        pytest.skip("driver creates no WireGuard devices")
    device = hooks.device_create(spec)
    created.devices.append(device)
    return device


class DeviceConformance(DriverConformance):
    """create / delete / list devices of the kinds the driver declares."""

    @pytest.fixture
    def bridge_spec(self) -> DeviceSpec:
        return DeviceSpec(
            kind=DeviceKind.BRIDGE,
            name="zl-conf-b",
            owner="service:conf",
            addresses=(ipaddress.ip_interface("10.251.0.1/24"),),
            mtu=1420,
            subnet=ipaddress.ip_network("10.251.0.0/24"),
        )

    @pytest.fixture
    def wireguard_spec(self) -> DeviceSpec:
        return DeviceSpec(
            kind=DeviceKind.WIREGUARD,
            name="zl-conf-g",
            owner="base",
            addresses=(ipaddress.ip_interface("10.252.0.1/16"),),
            mtu=1420,
            listen_port=51999,
            private_key=DEVICE_KEY,
            subnet=ipaddress.ip_network("10.252.0.0/16"),
        )

    @pytest.fixture
    def device_spec(
        self, info: DriverInfo, bridge_spec: DeviceSpec, wireguard_spec: DeviceSpec
    ) -> DeviceSpec:
        if DeviceKind.BRIDGE in info.device_kinds:
            return bridge_spec
        if DeviceKind.WIREGUARD in info.device_kinds:
            return wireguard_spec
        pytest.skip("driver declares no bridge or wireguard device kind")

    def test_create_returns_stamped_device(
        self,
        capabilities: frozenset[Capability],
        hooks: Hooks,
        created: _Tracker,
        device_spec: DeviceSpec,
        info: DriverInfo,
    ) -> None:
        _require(capabilities, Capability.DEVICES)
        device = hooks.device_create(device_spec)
        created.devices.append(device)
        assert device.driver == info.name
        assert device.name == device_spec.name
        assert device.kind == device_spec.kind
        assert set(device.addresses) == set(device_spec.addresses)

    def test_create_is_idempotent(
        self,
        capabilities: frozenset[Capability],
        hooks: Hooks,
        created: _Tracker,
        device_spec: DeviceSpec,
    ) -> None:
        _require(capabilities, Capability.DEVICES)
        first = hooks.device_create(device_spec)
        created.devices.append(first)
        second = hooks.device_create(device_spec)
        assert second.name == first.name
        assert second.public_key == first.public_key
        listed = [d.name for d in hooks.device_list(device_spec.kind)]
        assert listed.count(device_spec.name) == 1

    def test_created_device_is_listed_and_delete_is_idempotent(
        self,
        capabilities: frozenset[Capability],
        hooks: Hooks,
        device_spec: DeviceSpec,
    ) -> None:
        _require(capabilities, Capability.DEVICES)
        device = hooks.device_create(device_spec)
        assert device_spec.name in [d.name for d in hooks.device_list(device_spec.kind)]
        assert hooks.device_delete(device) is True
        assert device_spec.name not in [d.name for d in hooks.device_list(device_spec.kind)]
        assert hooks.device_delete(device) is False

    def test_wireguard_device_reports_public_key_of_given_private_key(
        self,
        capabilities: frozenset[Capability],
        info: DriverInfo,
        hooks: Hooks,
        created: _Tracker,
        wireguard_spec: DeviceSpec,
    ) -> None:
        device = _create_wireguard(
            capabilities, Capability.DEVICES, info, hooks, created, wireguard_spec
        )
        from overlayd.keys import public_key

        assert device.public_key == public_key(DEVICE_KEY)
        assert device.listen_port == wireguard_spec.listen_port

    def test_never_asked_about_devices_of_another_driver(
        self,
        capabilities: frozenset[Capability],
        hooks: Hooks,
        driver: object,
        device_spec: DeviceSpec,
    ) -> None:
        _require(capabilities, Capability.DEVICES)
        foreign = Device(
            kind=device_spec.kind, name=device_spec.name, owner="base", driver=STRANGER
        )
        with _beside_a_stranger(hooks) as calls:
            assert hooks.device_delete(foreign) is True
        _never_asked(calls, driver)
        # Called directly (not through the facade) the driver must still cope.
        _tolerates(driver.overlayd_device_delete, device=foreign)  # type: ignore[attr-defined]

    def test_owner_not_loaded_is_a_clear_error(
        self,
        capabilities: frozenset[Capability],
        hooks: Hooks,
        device_spec: DeviceSpec,
    ) -> None:
        _require(capabilities, Capability.DEVICES)
        orphan = Device(kind=device_spec.kind, name=device_spec.name, owner="base", driver="gone")
        with pytest.raises(NoDriverError, match="'gone', which is not loaded"):
            hooks.device_delete(orphan)


class PeerConformance(DeviceConformance):
    """Batched peer changes and peer status on a WireGuard device."""

    @pytest.fixture
    def wg_device(
        self,
        capabilities: frozenset[Capability],
        info: DriverInfo,
        hooks: Hooks,
        created: _Tracker,
        wireguard_spec: DeviceSpec,
    ) -> Device:
        return _create_wireguard(
            capabilities, Capability.PEERS, info, hooks, created, wireguard_spec
        )

    @staticmethod
    def _peers(hooks: Hooks, device: Device) -> dict[str, Any]:
        return {p.public_key: p for p in hooks.peer_status(device)}

    def test_batch_add_then_status(self, hooks: Hooks, wg_device: Device) -> None:
        nets = [ipaddress.ip_network(f"10.252.{i + 1}.0/24") for i in range(2)]
        hooks.peer_apply(
            wg_device,
            [
                PeerChange(
                    public_key=PEER_KEYS[0],
                    endpoint="127.0.0.1:51001",
                    allowed_ips=(nets[0],),
                    persistent_keepalive_secs=25,
                ),
                PeerChange(
                    public_key=PEER_KEYS[1],
                    endpoint="127.0.0.1:51002",
                    allowed_ips=(nets[1],),
                ),
            ],
        )
        peers = self._peers(hooks, wg_device)
        assert set(peers) == {PEER_KEYS[0], PEER_KEYS[1]}
        assert peers[PEER_KEYS[0]].allowed_ips == (nets[0],)
        assert peers[PEER_KEYS[0]].persistent_keepalive_secs == 25
        assert peers[PEER_KEYS[0]].endpoint == "127.0.0.1:51001"
        assert peers[PEER_KEYS[1]].last_handshake_unix_secs == 0

    def test_multi_cidr_allowed_ips_and_edits(self, hooks: Hooks, wg_device: Device) -> None:
        a, b, c = (ipaddress.ip_network(f"10.252.{i}.0/24") for i in (10, 11, 12))
        hooks.peer_apply(wg_device, [PeerChange(public_key=PEER_KEYS[0], allowed_ips=(a, b))])
        hooks.peer_apply(wg_device, [PeerChange(public_key=PEER_KEYS[0], add_allowed_ips=(c,))])
        assert set(self._peers(hooks, wg_device)[PEER_KEYS[0]].allowed_ips) == {a, b, c}
        hooks.peer_apply(wg_device, [PeerChange(public_key=PEER_KEYS[0], remove_allowed_ips=(a,))])
        assert set(self._peers(hooks, wg_device)[PEER_KEYS[0]].allowed_ips) == {b, c}

    def test_apply_is_idempotent(self, hooks: Hooks, wg_device: Device) -> None:
        change = PeerChange(
            public_key=PEER_KEYS[2],
            endpoint="127.0.0.1:51003",
            allowed_ips=(ipaddress.ip_network("10.252.20.0/24"),),
        )
        hooks.peer_apply(wg_device, [change])
        first = self._peers(hooks, wg_device)
        hooks.peer_apply(wg_device, [change])
        assert self._peers(hooks, wg_device) == first

    def test_remove_and_remove_absent(self, hooks: Hooks, wg_device: Device) -> None:
        hooks.peer_apply(wg_device, [PeerChange(public_key=PEER_KEYS[0])])
        hooks.peer_apply(wg_device, [PeerChange(public_key=PEER_KEYS[0], remove=True)])
        assert PEER_KEYS[0] not in self._peers(hooks, wg_device)
        hooks.peer_apply(wg_device, [PeerChange(public_key=PEER_KEYS[0], remove=True)])
        assert PEER_KEYS[0] not in self._peers(hooks, wg_device)

    def test_prefix_moves_to_the_peer_named_last(self, hooks: Hooks, wg_device: Device) -> None:
        shared, own = (ipaddress.ip_network(f"10.252.{i}.0/24") for i in (30, 31))
        a, b = PEER_KEYS[0], PEER_KEYS[1]
        hooks.peer_apply(wg_device, [PeerChange(public_key=a, allowed_ips=(shared, own))])
        hooks.peer_apply(wg_device, [PeerChange(public_key=b, allowed_ips=(shared,))])
        peers = self._peers(hooks, wg_device)
        assert peers[a].allowed_ips == (own,)
        assert peers[b].allowed_ips == (shared,)
        # In one batch: the later change wins too.
        hooks.peer_apply(
            wg_device,
            [
                PeerChange(public_key=b, add_allowed_ips=(own,)),
                PeerChange(public_key=a, add_allowed_ips=(shared,)),
            ],
        )
        peers = self._peers(hooks, wg_device)
        assert peers[a].allowed_ips == (shared,)
        assert peers[b].allowed_ips == (own,)

    def test_device_holds_what_the_core_merge_records(
        self, hooks: Hooks, wg_device: Device
    ) -> None:
        """After every batch the device equals :class:`overlayd.peers.PeerTable`."""
        table = PeerTable(wg_device.name)
        nets = [ipaddress.ip_network(f"10.252.{40 + i}.0/24") for i in range(5)]
        rng = random.Random(1515)  # noqa: S311 - a reproducible test sequence
        for round_ in range(25):
            batch: list[PeerChange] = []
            alive = set(table)
            for _ in range(rng.randint(1, 4)):
                key = rng.choice(PEER_KEYS)
                roll = rng.random()
                if roll < 0.15:
                    batch.append(PeerChange(public_key=key, remove=True))
                    alive.discard(key)
                elif roll < 0.55 or key not in alive:
                    alive.add(key)
                    batch.append(
                        PeerChange(
                            public_key=key,
                            endpoint=f"127.0.0.1:{51100 + round_}",
                            allowed_ips=tuple(rng.sample(nets, rng.randint(0, 3))),
                            persistent_keepalive_secs=rng.choice((0, 25)),
                        )
                    )
                else:
                    batch.append(
                        PeerChange(
                            public_key=key,
                            add_allowed_ips=tuple(rng.sample(nets, rng.randint(0, 2))),
                            remove_allowed_ips=tuple(rng.sample(nets, rng.randint(0, 1))),
                        )
                    )
            merged = table.preview(batch)
            hooks.peer_apply(wg_device, batch)
            table.commit(merged)
            device = {
                k: (set(p.allowed_ips), p.endpoint, p.persistent_keepalive_secs)
                for k, p in self._peers(hooks, wg_device).items()
            }
            recorded = {
                k: (set(p.allowed_ips), p.endpoint, p.persistent_keepalive_secs)
                for k, p in table.items()
            }
            assert device == recorded, f"after batch {round_}: {batch}"

    def test_never_asked_about_foreign_device(
        self, hooks: Hooks, driver: object, wg_device: Device
    ) -> None:
        foreign = wg_device.model_copy(update={"driver": STRANGER})
        change = PeerChange(public_key=PEER_KEYS[0], allowed_ips=())
        with _beside_a_stranger(hooks) as calls:
            hooks.peer_apply(foreign, [change])
            assert hooks.peer_status(foreign) == []
        _never_asked(calls, driver)
        _tolerates(driver.overlayd_peer_status, device=foreign)  # type: ignore[attr-defined]
        assert self._peers(hooks, wg_device) == {}


class IpamConformance(DriverConformance):
    """Address pools the driver owns (``Pool.driver`` is its name, as the engine
    stamps it under ``[ipam] driver``): never a duplicate, reserved, network or
    broadcast address; recorded leases survive a restart; the built-in
    allocator holds none of them; pools of other drivers are left alone."""

    @pytest.fixture(autouse=True)
    def _ipam_declared(self, capabilities: frozenset[Capability]) -> None:
        _require(capabilities, Capability.IPAM)

    @pytest.fixture
    def pool(self, driver: object) -> Any:
        from overlayd.model import Pool

        return Pool(
            name="service:conf",
            cidr=ipaddress.ip_network("10.253.0.0/29"),
            reserved=(ipaddress.ip_address("10.253.0.1"),),
            driver=driver_name(driver),
        )

    def test_the_driver_holds_its_pools_not_the_builtin(self, hooks: Hooks, pool: Any) -> None:
        hooks.ipam_pool_create(pool, [])
        lease = hooks.ipam_allocate(pool, "o")
        assert lease.pool == pool.name and lease.ip in pool.cidr
        builtin = hooks.pm.get_plugin("builtin_ipam")
        assert builtin is None or builtin.pool(pool.name) is None
        assert hooks.ipam_pool_delete(pool) is True
        assert hooks.ipam_pool_delete(pool) is False

    def test_ignores_foreign_pool(self, hooks: Hooks, driver: object, pool: Any) -> None:
        foreign = pool.model_copy(update={"driver": "someone-else"})
        ip = ipaddress.ip_address("10.253.0.2")
        assert driver.overlayd_ipam_pool_create(pool=foreign, leases=[]) is None  # type: ignore[attr-defined]
        assert driver.overlayd_ipam_allocate(pool=foreign, owner="o") is None  # type: ignore[attr-defined]
        assert driver.overlayd_ipam_reserve(pool=foreign, ip=ip, owner="o") is None  # type: ignore[attr-defined]
        assert driver.overlayd_ipam_release(pool=foreign, ip=ip) is None  # type: ignore[attr-defined]
        assert driver.overlayd_ipam_pool_delete(pool=foreign) is None  # type: ignore[attr-defined]

    def test_recorded_leases_are_kept(self, hooks: Hooks, pool: Any) -> None:
        from overlayd.model import Lease

        held = [
            Lease(ip=ipaddress.ip_address(f"10.253.0.{n}"), pool=pool.name, owner=f"r{n}")
            for n in (2, 6)
        ]
        hooks.ipam_pool_create(pool, held)
        got = {hooks.ipam_allocate(pool, f"o{i}").ip for i in range(3)}
        assert got == {ipaddress.ip_address(f"10.253.0.{n}") for n in (3, 4, 5)}
        assert hooks.ipam_reserve(pool, held[0].ip, "r2").ip == held[0].ip
        assert hooks.ipam_release(pool, held[1].ip) is True
        assert hooks.ipam_allocate(pool, "late").ip == held[1].ip
        hooks.ipam_pool_delete(pool)

    def test_unknown_pool_is_not_found(self, hooks: Hooks, pool: Any) -> None:
        from overlayd.errors import NotFound

        with pytest.raises(NotFound):
            hooks.ipam_allocate(pool, "o")

    @pytest.fixture
    def subnet_request(self, driver: object) -> Any:
        from overlayd.model import OverlayMode
        from overlayd.model import SubnetRequest

        return SubnetRequest(
            service="conf",
            mode=OverlayMode.SHARED,
            cluster_cidr=ipaddress.ip_network("10.240.0.0/16"),
            slice_cidr=ipaddress.ip_network("10.240.16.0/20"),
            layout="carved",
            taken=(ipaddress.ip_network("10.240.16.0/22"),),
            driver=driver_name(driver),
        )

    def test_subnets_avoid_what_the_node_uses_until_released(
        self, hooks: Hooks, pool: Any, subnet_request: Any
    ) -> None:
        first = hooks.ipam_subnet_allocate(subnet_request)
        assert first.subnet_of(subnet_request.cluster_cidr)
        assert first.num_addresses >= 4
        assert not first.overlaps(subnet_request.taken[0])
        second = hooks.ipam_subnet_allocate(subnet_request)
        assert not second.overlaps(first)
        for subnet in (first, second):
            owned = pool.model_copy(update={"cidr": subnet})
            assert hooks.ipam_subnet_release(owned) is True
            assert hooks.ipam_subnet_release(owned) is False

    def test_ignores_foreign_subnet_request(
        self, driver: object, pool: Any, subnet_request: Any
    ) -> None:
        foreign = subnet_request.model_copy(update={"driver": "someone-else"})
        assert driver.overlayd_ipam_subnet_allocate(request=foreign) is None  # type: ignore[attr-defined]
        foreign_pool = pool.model_copy(update={"driver": "someone-else"})
        assert driver.overlayd_ipam_subnet_release(pool=foreign_pool) is None  # type: ignore[attr-defined]

    def test_allocates_every_usable_address_once_then_exhausts(
        self, hooks: Hooks, pool: Any
    ) -> None:
        from overlayd.errors import PoolExhausted

        hooks.ipam_pool_create(pool, [])
        got = [hooks.ipam_allocate(pool, f"o{i}").ip for i in range(5)]
        assert len(set(got)) == 5
        assert ipaddress.ip_address("10.253.0.0") not in got
        assert ipaddress.ip_address("10.253.0.7") not in got
        assert ipaddress.ip_address("10.253.0.1") not in got
        with pytest.raises(PoolExhausted):
            hooks.ipam_allocate(pool, "late")
        hooks.ipam_pool_delete(pool)

    def test_release_is_idempotent_and_outside_is_an_error(self, hooks: Hooks, pool: Any) -> None:
        from overlayd.errors import AllocationError

        hooks.ipam_pool_create(pool, [])
        lease = hooks.ipam_allocate(pool, "o")
        assert hooks.ipam_release(pool, lease.ip) is True
        assert hooks.ipam_release(pool, lease.ip) is False
        with pytest.raises(AllocationError):
            hooks.ipam_release(pool, ipaddress.ip_address("10.99.0.1"))
        hooks.ipam_pool_delete(pool)

    def test_reserve_specific_address(self, hooks: Hooks, pool: Any) -> None:
        from overlayd.errors import AllocationError

        hooks.ipam_pool_create(pool, [])
        ip = ipaddress.ip_address("10.253.0.5")
        assert hooks.ipam_reserve(pool, ip, "a").ip == ip
        assert hooks.ipam_reserve(pool, ip, "a").ip == ip
        with pytest.raises(AllocationError):
            hooks.ipam_reserve(pool, ip, "b")
        with pytest.raises(AllocationError):
            hooks.ipam_reserve(pool, ipaddress.ip_address("10.253.0.1"), "a")
        assert all(hooks.ipam_allocate(pool, "x").ip != ip for _ in range(4))
        hooks.ipam_pool_delete(pool)


class AttachConformance(DeviceConformance):
    """attach / detach of the handle kinds the driver declares."""

    @pytest.fixture
    def attach_handle(self, info: DriverInfo) -> Any:
        kinds = info.attach_kinds
        if "netns" in kinds:
            return NetnsHandle(path="/run/netns/overlayd-conformance")
        if "linux_pid" in kinds:
            return LinuxPidHandle(pid=1)
        if "windows_container" in kinds:
            return WindowsContainerHandle(container_id="conformance-1")
        if "guest_managed" in kinds:
            return GuestManagedHandle(id="conformance-guest")
        pytest.skip("driver declares no attach kind")

    @pytest.fixture
    def segment(
        self,
        capabilities: frozenset[Capability],
        hooks: Hooks,
        created: _Tracker,
        device_spec: DeviceSpec,
    ) -> Device:
        _require(capabilities, Capability.ATTACH)
        device = hooks.device_create(device_spec)
        created.devices.append(device)
        return device

    @pytest.fixture
    def attach_request(self, attach_handle: Any, segment: Device) -> AttachRequest:
        assert segment.subnet is not None
        net = segment.subnet
        return AttachRequest(
            handle=attach_handle,
            service="conf",
            segment=segment,
            address=ipaddress.ip_interface(f"{net.network_address + 2}/{net.prefixlen}"),
            gateway=net.network_address + 1,
            node=NodeInfo(
                interface="zl-conf-g",
                public_key=PEER_KEYS[2],
                node_ip=ipaddress.ip_address("10.252.0.1"),
                cluster_cidr=ipaddress.ip_network("10.252.0.0/16"),
                slice_cidr=ipaddress.ip_network("10.252.0.0/20"),
                listen_port=51999,
            ),
            mtu=1420,
        )

    def test_attach_returns_stamped_attachment(
        self,
        hooks: Hooks,
        created: _Tracker,
        attach_request: AttachRequest,
        info: DriverInfo,
    ) -> None:
        att = hooks.attach(attach_request)
        created.attachments.append(att)
        assert att.driver == info.name
        assert att.ip == attach_request.address.ip
        assert att.service == attach_request.service
        assert att.interfaces or att.guest is not None or att.namespace_guid

    def test_detach_is_idempotent(self, hooks: Hooks, attach_request: AttachRequest) -> None:
        att = hooks.attach(attach_request)
        assert hooks.attachment_alive(att) is True
        assert hooks.detach(att) is True
        assert hooks.detach(att) is False

    def test_reattach_after_detach_works(
        self, hooks: Hooks, created: _Tracker, attach_request: AttachRequest
    ) -> None:
        first = hooks.attach(attach_request)
        hooks.detach(first)
        second = hooks.attach(attach_request)
        created.attachments.append(second)
        assert second.ip == first.ip

    def test_never_asked_about_foreign_attachment(
        self, hooks: Hooks, driver: object, created: _Tracker, attach_request: AttachRequest
    ) -> None:
        att = hooks.attach(attach_request)
        created.attachments.append(att)
        foreign = att.model_copy(update={"driver": STRANGER})
        with _beside_a_stranger(hooks) as calls:
            assert hooks.detach(foreign) is True
            assert hooks.attachment_alive(foreign) is False
        _never_asked(calls, driver)
        assert hooks.attachment_alive(att) is True


class NatConformance(DriverConformance):
    """Masquerade and port mappings, idempotent both ways."""

    def test_masquerade_enable_disable_idempotent(
        self, capabilities: frozenset[Capability], hooks: Hooks
    ) -> None:
        _require(capabilities, Capability.NAT)
        rule = MasqueradeRule(
            subnet=ipaddress.ip_network("10.254.0.0/24"),
            exempt=(ipaddress.ip_network("10.254.0.0/16"),),
        )
        assert hooks.nat_masquerade(rule, True) is True
        assert hooks.nat_masquerade(rule, True) is True
        assert hooks.nat_masquerade(rule, False) is True
        assert hooks.nat_masquerade(rule, False) is True

    def test_port_mapping_enable_disable_idempotent(
        self, capabilities: frozenset[Capability], hooks: Hooks
    ) -> None:
        _require(capabilities, Capability.NAT)
        mapping = PortMapping(
            protocol="tcp",
            host_port=18080,
            container_ip=ipaddress.ip_address("10.254.0.2"),
            container_port=80,
        )
        hooks.nat_port_mapping(mapping, True)
        hooks.nat_port_mapping(mapping, True)
        hooks.nat_port_mapping(mapping, False)
        hooks.nat_port_mapping(mapping, False)


class LifecycleConformance(DeviceConformance):
    """Reconcile adopts what is recorded and removes only its own unrecorded objects."""

    def test_reconcile_adopts_recorded_device(
        self,
        capabilities: frozenset[Capability],
        hooks: Hooks,
        created: _Tracker,
        device_spec: DeviceSpec,
    ) -> None:
        _require(capabilities, Capability.RECONCILE)
        device = hooks.device_create(device_spec)
        created.devices.append(device)
        reports = hooks.reconcile(ReconcileRequest(devices=(device,)))
        mine = [r for r in reports if r.driver == device.driver]
        assert mine
        assert device.name in mine[0].adopted
        assert device.name in [d.name for d in hooks.device_list(device.kind)]

    def test_reconcile_removes_own_unrecorded_device(
        self,
        capabilities: frozenset[Capability],
        hooks: Hooks,
        device_spec: DeviceSpec,
    ) -> None:
        _require(capabilities, Capability.RECONCILE)
        device = hooks.device_create(device_spec)
        reports = hooks.reconcile(ReconcileRequest())
        mine = [r for r in reports if r.driver == device.driver]
        assert mine
        assert device.name in mine[0].removed
        assert device.name not in [d.name for d in hooks.device_list(device.kind)]

    def test_reconcile_twice_finds_nothing_new(
        self, capabilities: frozenset[Capability], hooks: Hooks
    ) -> None:
        _require(capabilities, Capability.RECONCILE)
        hooks.reconcile(ReconcileRequest())
        second = hooks.reconcile(ReconcileRequest())
        assert all(not r.removed and not r.recreated for r in second)


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
