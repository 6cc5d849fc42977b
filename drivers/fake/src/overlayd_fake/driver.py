"""The fake driver: every hook, in memory, behaving like the real thing.

It models the kernel's rules rather than only the happy path: interface names
are at most 15 bytes, creating a device whose name is taken by another kind
fails like ``EEXIST``, peers are per device, a handle holds at most one set of
interfaces, and a workload can die (``kill``) so reconcile and GC have
something to find. The latest hook calls are recorded in ``calls`` (a ring of
``call_log_size`` entries, so a long-running daemon on the fake driver does
not grow), and faults can be injected (``fail_next``, ``fail_when``,
``latency``) to test the engine's rollback and concurrency without privileges.

With ``[drivers.fake] state_file = "..."`` the fake host survives a daemon
restart, as real host objects do (:mod:`overlayd_fake.host`: a journal of
changes beside the state file).
``underlay_address`` is the fake host's underlay address (default
``192.0.2.1``, a documentation address): guests are told to reach the node at
``<underlay_address>:<listen port>``, as the wireguard driver tells them.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Final

from overlayd import DRIVER_API
from overlayd import hookimpl
from overlayd.driver_options import parse_driver_options
from overlayd.errors import AttachError
from overlayd.errors import DeviceError
from overlayd.errors import NatError
from overlayd.errors import PeerError
from overlayd.keys import generate_private_key
from overlayd.keys import public_key
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import DriverInfo
from overlayd.model import GuestManagedHandle
from overlayd.model import IPNetwork
from overlayd.model import MasqueradeRule
from overlayd.model import NatCandidate
from overlayd.model import NetnsHandle
from overlayd.model import PeerChange
from overlayd.model import PeerStatus
from overlayd.model import PortMapping
from overlayd.model import ReconcileReport
from overlayd.model import ReconcileRequest
from overlayd.model import ReconcileTally
from overlayd.model import WindowsContainerHandle
from overlayd.model import handle_key
from overlayd.peers import Peer
from overlayd.peers import merge
from overlayd_fake.host import FakeHost
from overlayd_fake.host import HostJournal
from overlayd_fake.options import UNDERLAY_ADDRESS
from overlayd_fake.options import FakeOptions

__all__ = ["Call", "FakeDriver", "FakeHost"]

IFNAMSIZ: Final = 15


@dataclass(frozen=True)
class Call:
    """One recorded hook call."""

    name: str
    kwargs: dict[str, Any]


@dataclass
class _Fault:
    hook: str
    exc: BaseException
    predicate: Callable[[dict[str, Any]], bool] | None = None
    once: bool = True


def _ifname_ok(name: str) -> None:
    if not name or len(name.encode()) > IFNAMSIZ or "/" in name or name.strip() != name:
        raise DeviceError(
            f"invalid interface name {name!r}: at most {IFNAMSIZ} bytes, no '/' or spaces "
            "(the kernel answers EINVAL)",
            op="device_create",
            driver="fake",
        )


def _veth_name(key: str, index: int) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return f"fv{digest}{index}"


class FakeDriver:
    """In-memory implementation of every overlayd hook."""

    name: Final = "fake"

    #: How many hook calls :attr:`calls` keeps (the oldest are dropped).
    CALL_LOG_SIZE: Final = 4096

    def __init__(
        self,
        state_file: Path | str | None = None,
        *,
        call_log_size: int = CALL_LOG_SIZE,
        plan_attach: bool = False,
    ) -> None:
        #: Answer ``overlayd_attach_plan`` (as linux_bridge does), so that the
        #: engine writes an attachment's record while the attach runs.
        self.plan_attach = plan_attach
        self.host = FakeHost()
        #: The latest hook calls, oldest first (at most ``call_log_size``).
        self.calls: collections.deque[Call] = collections.deque(maxlen=call_log_size)
        self.latency: dict[str, float] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        #: Per device: its peer table and which peer holds each prefix in it.
        self._owners: dict[str, tuple[dict[str, PeerStatus], dict[IPNetwork, str]]] = {}
        self._journal = HostJournal(Path(state_file)) if state_file else None
        self.started = False
        self.emit: Callable[[Any], None] | None = None
        self.underlay_address = UNDERLAY_ADDRESS
        if self._journal is not None:
            self.host = self._journal.load()

    # -- test controls ------------------------------------------------------

    def fail_next(self, hook: str, exc: BaseException) -> None:
        """Make the next call to ``hook`` raise ``exc``."""
        self._faults.append(_Fault(hook, exc))

    def fail_when(
        self,
        hook: str,
        predicate: Callable[[dict[str, Any]], bool],
        exc: BaseException,
        *,
        once: bool = False,
    ) -> None:
        """Make calls to ``hook`` whose kwargs match ``predicate`` raise ``exc``."""
        self._faults.append(_Fault(hook, exc, predicate, once))

    def clear_faults(self) -> None:
        self._faults.clear()

    def set_latency(self, hook: str, seconds: float) -> None:
        """Make every call to ``hook`` block for ``seconds`` (like a slow netlink call)."""
        self.latency[hook] = seconds

    def kill(self, handle_or_key: Any) -> None:
        """Simulate the death of an attached workload (its process or VM is gone)."""
        key = handle_or_key if isinstance(handle_or_key, str) else handle_key(handle_or_key)
        with self._lock:
            self.host.dead.add(key)
            self._save([("dead", key)])

    def set_handshake(
        self,
        device: str,
        public_key: str,
        when: int,
        *,
        tx_bytes: int | None = None,
        endpoint: str | None = None,
    ) -> None:
        """Set a peer's last handshake (and counters/endpoint) as the device would report."""
        with self._lock:
            peer = self.host.peers[device][public_key]
            update: dict[str, Any] = {"last_handshake_unix_secs": when}
            if tx_bytes is not None:
                update["tx_bytes"] = tx_bytes
            if endpoint is not None:
                update["endpoint"] = endpoint
            self.host.peers[device][public_key] = peer.model_copy(update=update)

    def calls_to(self, hook: str) -> list[Call]:
        return [c for c in self.calls if c.name == hook]

    def _enter(self, hook: str, **kwargs: Any) -> None:
        self.calls.append(Call(hook, kwargs))
        delay = self.latency.get(hook)
        if delay:
            time.sleep(delay)
        for fault in list(self._faults):
            if fault.hook != hook:
                continue
            if fault.predicate is not None and not fault.predicate(kwargs):
                continue
            if fault.once:
                self._faults.remove(fault)
            raise fault.exc

    # -- persistence --------------------------------------------------------

    def _save(self, touched: Sequence[tuple[str, Any]] | None = None) -> None:
        """Journal the change (``touched``: the ``(table, key)`` pairs it made, or all)."""
        if self._journal is not None:
            self._journal.save(self.host, touched)

    # -- lifecycle ----------------------------------------------------------

    @hookimpl
    def overlayd_describe(self) -> DriverInfo:
        return DriverInfo(
            name=self.name,
            api=DRIVER_API,
            device_kinds=frozenset(
                {DeviceKind.BRIDGE, DeviceKind.WIREGUARD, DeviceKind.HCN_NETWORK}
            ),
            attach_kinds=frozenset({"linux_pid", "windows_container", "guest_managed", "netns"}),
            capabilities=frozenset(
                {
                    Capability.DEVICES,
                    Capability.PEERS,
                    Capability.NAT,
                    Capability.ATTACH,
                    Capability.RECONCILE,
                }
            ),
            version="0.1.0",
        )

    @hookimpl
    def overlayd_configure(self, config: Any) -> None:
        options = parse_driver_options(FakeOptions, self.name, config.driver_options(self.name))
        self.underlay_address = options.underlay_address
        state_file = options.state_file
        if state_file and self._journal is None:
            self._journal = HostJournal(Path(state_file))
            self.host = self._journal.load()

    @hookimpl
    def overlayd_startup(self, context: Any) -> None:
        self.started = True
        self.emit = context.emit
        self._enter("overlayd_startup")

    @hookimpl
    def overlayd_shutdown(self) -> None:
        self._enter("overlayd_shutdown")
        self.started = False
        if self._journal is not None:
            with self._lock:
                self._journal.fold(self.host)

    @hookimpl
    def overlayd_reconcile(self, request: ReconcileRequest) -> ReconcileReport | None:
        self._enter("overlayd_reconcile", request=request)
        with self._lock:
            found = ReconcileTally()
            recorded = {d.name for d in request.devices if d.driver == self.name}
            for name in recorded:
                if name in self.host.devices:
                    found.adopted.append(name)
            touched: list[tuple[str, Any]] = []
            for name in list(self.host.devices):
                if name not in recorded and name.startswith("zl-"):
                    del self.host.devices[name]
                    dropped = self.host.peers.pop(name, None) or {}
                    found.removed.append(name)
                    touched += [("devices", name), ("peer_devices", name)]
                    touched += [("peers", (name, pk)) for pk in dropped]
            recorded_atts = {a.key for a in request.attachments if a.driver == self.name}
            for att in request.attachments:
                if att.key in self.host.dead or att.key not in self.host.attachments:
                    found.gone.append(att.key)
                else:
                    found.adopted.append(att.key)
            for key in list(self.host.attachments):
                if key not in recorded_atts:
                    del self.host.attachments[key]
                    found.removed.append(key)
                    touched.append(("attachments", key))
            self._save(touched)
        return found.report(self.name)

    # -- devices ------------------------------------------------------------

    @hookimpl
    def overlayd_device_create(self, spec: DeviceSpec) -> Device | None:
        if spec.kind not in (
            DeviceKind.BRIDGE,
            DeviceKind.WIREGUARD,
            DeviceKind.HCN_NETWORK,
        ):
            return None
        self._enter("overlayd_device_create", spec=spec)
        if spec.kind != DeviceKind.HCN_NETWORK:
            _ifname_ok(spec.name)
        with self._lock:
            existing = self.host.devices.get(spec.name)
            if existing is not None and existing.kind != spec.kind:
                raise DeviceError(
                    f"cannot create {spec.kind} {spec.name}: a {existing.kind} device "
                    "with that name exists (EEXIST)",
                    op="device_create",
                    driver=self.name,
                )
            pub = None
            if spec.kind == DeviceKind.WIREGUARD:
                if spec.listen_port is None:
                    raise DeviceError(
                        f"WireGuard device {spec.name} needs a listen port",
                        op="device_create",
                        driver=self.name,
                    )
                for other in self.host.devices.values():
                    if (
                        other.name != spec.name
                        and other.kind == DeviceKind.WIREGUARD
                        and other.listen_port == spec.listen_port
                    ):
                        raise DeviceError(
                            f"UDP port {spec.listen_port} is already used by {other.name} "
                            "(EADDRINUSE)",
                            op="device_create",
                            driver=self.name,
                        )
                pub = public_key(spec.private_key or generate_private_key())
            device = spec.as_device(
                self.name,
                listen_port=spec.listen_port,
                public_key=pub,
                id=spec.name if spec.kind != DeviceKind.HCN_NETWORK else _guid(spec.name),
                options=dict(spec.options),
            )
            self.host.devices[spec.name] = device
            if spec.kind == DeviceKind.WIREGUARD:
                self.host.peers.setdefault(spec.name, {})
            self._save([("devices", spec.name), ("peer_devices", spec.name)])
        return device

    @hookimpl
    def overlayd_device_delete(self, device: Device) -> bool | None:
        self._enter("overlayd_device_delete", device=device)
        with self._lock:
            existed = self.host.devices.pop(device.name, None) is not None
            self.host.peers.pop(device.name, None)
            self._save()
        return existed

    @hookimpl
    def overlayd_device_list(self, kind: str) -> list[Device]:
        with self._lock:
            return [d for d in self.host.devices.values() if d.kind == kind]

    # -- peers --------------------------------------------------------------

    def _device_peers(self, device: Device, op: str) -> dict[str, PeerStatus]:
        peers = self.host.peers.get(device.name)
        if peers is None or device.name not in self.host.devices:
            raise PeerError(
                f"WireGuard device {device.name} does not exist (ENODEV)",
                op=op,
                driver=self.name,
            )
        return peers

    @hookimpl
    def overlayd_peer_apply(self, device: Device, changes: Sequence[PeerChange]) -> bool | None:
        self._enter("overlayd_peer_apply", device=device, changes=list(changes))
        with self._lock:
            current = self._device_peers(device, "peer_apply")
            owner = self._owner_index(device.name, current)

            def peer_of(public_key: str) -> Peer[IPNetwork] | None:
                status = current.get(public_key)
                if status is None:
                    return None
                return Peer(
                    public_key=public_key,
                    endpoint=status.endpoint,
                    allowed_ips=status.allowed_ips,
                    persistent_keepalive_secs=status.persistent_keepalive_secs,
                )

            # The merge every overlayd component uses (overlayd.peers): a prefix
            # given to a second peer moves to it, as in the kernel.
            merged = merge(changes, peer_of, owner.get, _same, device=f"device {device.name}")
            for peer in merged.peers.values():
                if peer is not None and peer.endpoint is not None and ":" not in peer.endpoint:
                    raise PeerError(
                        f"endpoint {peer.endpoint!r} is not host:port",
                        op="peer_apply",
                        driver=self.name,
                    )
            # Only the touched peers change, in place, with the owner index: the
            # cost of a change does not grow with the device's peers (the kernel
            # and wireguard-go also apply only what a request names).
            for pk in merged.peers:
                gone = current.get(pk)
                for net in gone.allowed_ips if gone is not None else ():
                    if owner.get(net) == pk:
                        del owner[net]
            for pk, peer in merged.peers.items():
                if peer is None:
                    current.pop(pk, None)
                    continue
                old = current.get(pk) or PeerStatus(public_key=pk)
                owner.update(dict.fromkeys(peer.allowed_ips, pk))
                if (
                    pk in current
                    and old.endpoint == peer.endpoint
                    and old.allowed_ips == peer.allowed_ips
                    and old.persistent_keepalive_secs == peer.persistent_keepalive_secs
                ):
                    continue  # unchanged (reconcile re-applies every peer): not journaled again
                current[pk] = old.model_copy(
                    update={
                        "endpoint": peer.endpoint,
                        "allowed_ips": peer.allowed_ips,
                        "persistent_keepalive_secs": peer.persistent_keepalive_secs,
                    }
                )
            self._save(
                [("peer_devices", device.name)]
                + [("peers", (device.name, pk)) for pk in merged.peers]
            )
        return True

    def _owner_index(self, device: str, peers: dict[str, PeerStatus]) -> dict[IPNetwork, str]:
        """Which peer holds each prefix on ``device``, kept across calls.

        Built again whenever the device's peer table is another object than
        the one it was built for (a load, a device created again).
        """
        entry = self._owners.get(device)
        if entry is None or entry[0] is not peers:
            index = {net: pk for pk, peer in peers.items() for net in peer.allowed_ips}
            entry = (peers, index)
            self._owners[device] = entry
        return entry[1]

    @hookimpl
    def overlayd_peer_status(self, device: Device) -> list[PeerStatus] | None:
        self._enter("overlayd_peer_status", device=device)
        with self._lock:
            return list(self._device_peers(device, "peer_status").values())

    # -- NAT ----------------------------------------------------------------

    @hookimpl
    def overlayd_nat_masquerade(self, rule: MasqueradeRule, enable: bool) -> bool | None:
        self._enter("overlayd_nat_masquerade", rule=rule, enable=enable)
        with self._lock:
            if enable:
                self.host.masquerades[str(rule.subnet)] = rule
            else:
                self.host.masquerades.pop(str(rule.subnet), None)
            self._save()
        return True

    @hookimpl
    def overlayd_nat_port_mapping(self, mapping: PortMapping, enable: bool) -> bool | None:
        self._enter("overlayd_nat_port_mapping", mapping=mapping, enable=enable)
        key = f"{mapping.protocol}/{mapping.host_ip or '*'}/{mapping.host_port}"
        with self._lock:
            existing = self.host.port_mappings.get(key)
            if enable:
                if existing is not None and existing != mapping:
                    raise NatError(
                        f"host port {key} is already mapped",
                        op="nat_port_mapping",
                        driver=self.name,
                    )
                self.host.port_mappings[key] = mapping
            else:
                self.host.port_mappings.pop(key, None)
            self._save()
        return True

    @hookimpl
    def overlayd_nat_candidates(self, device: Device) -> list[NatCandidate] | None:
        self._enter("overlayd_nat_candidates", device=device)
        port = device.listen_port or 51820
        return [NatCandidate(kind="host", endpoint=f"127.0.0.1:{port}")]

    @hookimpl
    def overlayd_nat_socket(
        self, device: Device, family: int, type: int, proto: int
    ) -> socket.socket | None:
        self._enter("overlayd_nat_socket", device=device)
        raise NatError(
            f"the fake driver's device {device.name} has no real UDP port; STUN and "
            "connectivity checks need a real WireGuard driver",
            op="nat_socket",
            driver=self.name,
        )

    @hookimpl
    def overlayd_nat_set_endpoint(
        self, device: Device, public_key: str, endpoint: str, keepalive: int
    ) -> bool | None:
        self._enter(
            "overlayd_nat_set_endpoint",
            device=device,
            public_key=public_key,
            endpoint=endpoint,
            keepalive=keepalive,
        )
        with self._lock:
            peers = self._device_peers(device, "nat_set_endpoint")
            old = peers.get(public_key)
            if old is None:
                raise PeerError(
                    f"peer {public_key} is not on {device.name}",
                    op="nat_set_endpoint",
                    driver=self.name,
                )
            peers[public_key] = old.model_copy(
                update={
                    "endpoint": endpoint,
                    "persistent_keepalive_secs": max(1, keepalive),
                    "last_handshake_unix_secs": 0,
                }
            )
            self._save()
        return True

    # -- attach -------------------------------------------------------------

    @hookimpl
    def overlayd_attach(self, request: AttachRequest) -> Attachment | None:
        is_guest = isinstance(request.handle, GuestManagedHandle)
        self._enter("overlayd_attach", request=request)
        key = handle_key(request.handle)
        with self._lock:
            if not is_guest and request.segment.name not in self.host.devices:
                raise AttachError(
                    f"segment {request.segment.name} does not exist (ENODEV)",
                    op="attach",
                    driver=self.name,
                )
            if key in self.host.attachments and key not in self.host.dead:
                # One address per handle: a second attach of a live handle would
                # collide on interface names, as it does in the kernel.
                raise AttachError(
                    f"{key} already has interfaces on this host (EEXIST)",
                    op="attach",
                    driver=self.name,
                )
            self.host.dead.discard(key)
            if isinstance(request.handle, GuestManagedHandle):
                node = request.node
                if node is None or node.public_key is None:
                    raise AttachError(
                        "a guest needs the node's WireGuard device",
                        op="attach",
                        driver=self.name,
                    )
                priv = generate_private_key()
                guest = request.guest_config(
                    priv,
                    public_key(priv),
                    endpoint=self._guest_endpoint(node.listen_port),
                    keepalive_secs=25,
                )
                att = request.as_attachment(self.name, guest=guest)
            else:
                att = _plugged(self.name, request)
            self.host.attachments[key] = att
            self._save([("attachments", key), ("dead", key)])
        return att

    @hookimpl
    def overlayd_attach_plan(self, request: AttachRequest) -> Attachment | None:
        if not self.plan_attach or isinstance(request.handle, GuestManagedHandle):
            return None
        self._enter("overlayd_attach_plan", request=request)
        return _plugged(self.name, request)

    def _guest_endpoint(self, port: int) -> str:
        host = self.underlay_address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @hookimpl
    def overlayd_detach(self, attachment: Attachment) -> bool | None:
        self._enter("overlayd_detach", attachment=attachment)
        with self._lock:
            # By key: a stored attachment is not validated to be removed (host.Recorded).
            existed = attachment.key in self.host.attachments
            if existed:
                del self.host.attachments[attachment.key]
            self.host.dead.discard(attachment.key)
            self._save([("attachments", attachment.key), ("dead", attachment.key)])
        return existed

    @hookimpl
    def overlayd_attachment_alive(self, attachment: Attachment) -> bool | None:
        with self._lock:
            return attachment.key in self.host.attachments and attachment.key not in self.host.dead


def _same(net: IPNetwork) -> IPNetwork:
    return net


def _mac(key: str) -> str:
    """A stable, locally administered unicast MAC for the workload end of ``key``."""
    raw = bytearray(hashlib.sha256(f"mac:{key}".encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def _plugged(driver: str, request: AttachRequest) -> Attachment:
    """The attachment of a workload plugged into its segment (not a guest)."""
    key = handle_key(request.handle)
    if isinstance(request.handle, WindowsContainerHandle):
        endpoint_id = _guid(f"ep:{key}")
        return request.as_attachment(
            driver,
            interfaces=(endpoint_id,),
            namespace_guid=_guid(f"ns:{key}"),
            endpoint_id=endpoint_id,
        )
    interfaces: tuple[str, ...] = (_veth_name(key, 0),)
    if request.global_address is not None:
        interfaces += (_veth_name(key, 1),)
    handle = request.handle
    return request.as_attachment(
        driver,
        interfaces=interfaces,
        ifname=handle.container_ifname if isinstance(handle, NetnsHandle) else "eth0",
        mac=_mac(key),
        mtu=request.mtu,
        routes=_routes(request),
    )


def _routes(request: AttachRequest) -> tuple[IPNetwork, ...]:
    """What a real driver routes via the gateway: default, or the cluster CIDR."""
    if request.default_route:
        return (ipaddress.ip_network("0.0.0.0/0" if request.gateway.version == 4 else "::/0"),)
    if request.node is None:
        raise AttachError("an attach without a default route needs request.node", op="attach")
    return (request.node.cluster_cidr,)


def _guid(seed: str) -> str:
    raw = hashlib.sha256(seed.encode()).digest()[:16]
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
