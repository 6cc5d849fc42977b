"""Conformance of devices, peers, attach, NAT and reconcile."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from overlayd.errors import NoDriverError
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
from overlayd.model import PeerChange
from overlayd.model import PortMapping
from overlayd.model import ReconcileRequest
from overlayd.model import WindowsContainerHandle
from overlayd.peers import PeerTable
from overlayd.plugins import Hooks
from overlayd.testing.conformance._base import DEVICE_KEY
from overlayd.testing.conformance._base import PEER_KEYS
from overlayd.testing.conformance._base import STRANGER
from overlayd.testing.conformance._base import DriverConformance
from overlayd.testing.conformance._base import _beside_a_stranger
from overlayd.testing.conformance._base import _create_wireguard
from overlayd.testing.conformance._base import _never_asked
from overlayd.testing.conformance._base import _require
from overlayd.testing.conformance._base import _tolerates
from overlayd.testing.conformance._base import _Tracker
from overlayd.testing.nodes import node_info


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
        created: _Tracker,
        device_spec: DeviceSpec,
        info: DriverInfo,
    ) -> None:
        _require(capabilities, Capability.DEVICES)
        device = created.device_create(device_spec)
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
        first = created.device_create(device_spec)
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
        created: _Tracker,
        wireguard_spec: DeviceSpec,
    ) -> None:
        device = _create_wireguard(capabilities, Capability.DEVICES, info, created, wireguard_spec)
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
        created: _Tracker,
        wireguard_spec: DeviceSpec,
    ) -> Device:
        return _create_wireguard(capabilities, Capability.PEERS, info, created, wireguard_spec)

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
        self, capabilities: frozenset[Capability], created: _Tracker, device_spec: DeviceSpec
    ) -> Device:
        _require(capabilities, Capability.ATTACH)
        return created.device_create(device_spec)

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
            node=node_info(
                "10.252.0.0/16",
                "10.252.0.0/20",
                public_key=PEER_KEYS[2],
                listen_port=51999,
                interface="zl-conf-g",
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
        att = created.attach(attach_request)
        assert att.driver == info.name
        assert att.ip == attach_request.address.ip
        assert att.service == attach_request.service
        assert att.interfaces or att.guest is not None or att.namespace_guid

    def test_attach_keeps_its_plan(
        self, hooks: Hooks, created: _Tracker, attach_request: AttachRequest
    ) -> None:
        """A driver answering ``overlayd_attach_plan`` attaches exactly as it planned."""
        plan = hooks.attach_plan(attach_request)
        if plan is None:
            pytest.skip("the driver makes no attach plans (overlayd_attach_plan)")
        att = created.attach(attach_request.model_copy(update={"planned": plan}))
        assert att == plan

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
        second = created.attach(attach_request)
        assert second.ip == first.ip

    def test_never_asked_about_foreign_attachment(
        self, hooks: Hooks, driver: object, created: _Tracker, attach_request: AttachRequest
    ) -> None:
        att = created.attach(attach_request)
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
        device = created.device_create(device_spec)
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
