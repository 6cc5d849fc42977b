"""The ``wireguard`` driver: WireGuard devices, peers and guest attach for overlayd.

Policy lives here; mechanism in the backends (:mod:`~overlayd_wireguard.kernel`
over netlink, :mod:`~overlayd_wireguard.userspace` running wireguard-go over
UAPI) and :mod:`~overlayd_wireguard.hostnet` (routes, link listing).

Peer changes are applied as differences. The driver keeps, per device, the
*desired* peer configuration it last programmed (seeded from one ``get`` when
it first sees the device). A batch of :class:`~overlayd.model.PeerChange` only
touches the peers it names: their new configuration is computed from that
cache, diffed against it, and sent as one UAPI ``set`` transaction with
``update_only``/``replace_allowed_ips`` only where needed. Nothing proportional
to the device's peer count runs on that path, so changing one peer of a
10,000-peer device costs the same as on an empty one. After any failed ``set``
(UAPI applies lines as it reads them) the cache is re-read from the device.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import Final

from overlayd import DRIVER_API
from overlayd import hookimpl
from overlayd.driver_options import parse_driver_options
from overlayd.errors import AttachError
from overlayd.errors import ConfigError
from overlayd.errors import DeviceError
from overlayd.errors import InvalidRequest
from overlayd.errors import NotSupported
from overlayd.errors import OverlaydError
from overlayd.errors import PeerError
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import DriverInfo
from overlayd.model import GuestManagedHandle
from overlayd.model import HandleKind
from overlayd.model import PeerChange
from overlayd.model import PeerStatus
from overlayd.model import ReconcileReport
from overlayd.model import ReconcileRequest
from overlayd.model import ReconcileTally
from overlayd.peers import Peer
from overlayd.peers import merge
from overlayd_wireguard import __version__
from overlayd_wireguard import kernel
from overlayd_wireguard.backend import WgBackend
from overlayd_wireguard.backend import select_backend
from overlayd_wireguard.devstate import DevState
from overlayd_wireguard.devstate import allowed_ip
from overlayd_wireguard.devstate import build_status
from overlayd_wireguard.devstate import handshake_unix
from overlayd_wireguard.devstate import networks
from overlayd_wireguard.devstate import numeric_endpoint
from overlayd_wireguard.devstate import resolve_endpoint
from overlayd_wireguard.devstate import state_of
from overlayd_wireguard.hostnet import HostNet
from overlayd_wireguard.hostnet import PyRoute2HostNet
from overlayd_wireguard.keys import PrivateKey
from overlayd_wireguard.keys import generate_keypair
from overlayd_wireguard.keys import validate_key
from overlayd_wireguard.nat import NatHooks
from overlayd_wireguard.options import WireGuardOptions
from overlayd_wireguard.uapi import DEFAULT_SOCKET_DIR
from overlayd_wireguard.uapi import DeviceState
from overlayd_wireguard.uapi import PeerConfig
from overlayd_wireguard.uapi import SetRequest
from overlayd_wireguard.uapi import UapiClient
from overlayd_wireguard.uapi import diff_peers
from overlayd_wireguard.userspace import UserspaceBackend

__all__ = ["GUEST_KEEPALIVE_SECS", "WireGuardDriver"]

log = logging.getLogger(__name__)

#: Keepalive the guest is told to use towards the node (ZLayer's default).
GUEST_KEEPALIVE_SECS: Final = 25
DEFAULT_MTU: Final = 1420
#: Prefix of every link overlayd (and ZLayer) creates; reconcile touches nothing else.
OWN_PREFIX: Final = "zl-"
#: A peer configured by host name is re-resolved when its handshake is older than
#: this (wireguard-tools' reresolve-dns.sh uses 135 s = REKEY_AFTER_TIME + 15).
RERESOLVE_AFTER_SECS: Final = 135
RERESOLVE_EVERY_SECS: Final = 30


class WireGuardDriver(NatHooks):
    """WireGuard devices (kernel or wireguard-go), peers and guest-managed attach.

    :param backend: inject a backend (tests); default: chosen at startup from
        ``[drivers.wireguard] backend``.
    :param hostnet: inject the routes/link-listing adapter (tests).
    """

    name: Final = "wireguard"

    def __init__(self, backend: WgBackend | None = None, hostnet: HostNet | None = None) -> None:
        self._injected = backend
        self.backend: WgBackend | None = backend
        self.hostnet: HostNet = hostnet if hostnet is not None else PyRoute2HostNet()
        self.options = WireGuardOptions()
        self._devices: dict[str, DevState] = {}
        self._guests: set[str] = set()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ lifecycle

    @hookimpl
    def overlayd_describe(self) -> DriverInfo:
        return DriverInfo(
            name=self.name,
            api=DRIVER_API,
            platforms=frozenset({"linux"}),
            device_kinds=frozenset({DeviceKind.WIREGUARD.value}),
            attach_kinds=frozenset({HandleKind.GUEST_MANAGED.value}),
            capabilities=frozenset(
                {Capability.DEVICES, Capability.PEERS, Capability.ATTACH, Capability.RECONCILE}
            ),
            version=__version__,
        )

    @hookimpl
    def overlayd_configure(self, config: Any) -> None:
        options = parse_driver_options(
            WireGuardOptions, self.name, config.driver_options(self.name)
        )
        if (
            self._injected is None
            and Path(options.socket_dir).resolve() != Path(DEFAULT_SOCKET_DIR).resolve()
            and any(Path(arg).name.startswith("wireguard-go") for arg in options.command)
        ):
            # wireguard-go (0.0.2022x) creates its UAPI socket in a compiled-in
            # directory and checks that path even when handed a socket (WG_UAPI_FD),
            # so there is no way to move it; waiting for it elsewhere only times out.
            raise ConfigError(
                f"[drivers.wireguard] socket_dir = {options.socket_dir!r} cannot be used: "
                f"wireguard-go always creates its UAPI sockets in {DEFAULT_SOCKET_DIR} and "
                "has no option to move them. Remove socket_dir (or set userspace_command "
                "to a program that creates its sockets there)."
            )
        self.options = options

    @hookimpl
    def overlayd_startup(self, context: Any) -> None:
        if self.backend is None:
            self.backend = self._select_backend()
        if isinstance(self.backend, UserspaceBackend):
            self.backend.on_restart = self._on_restart
        log.info("wireguard driver using the %s backend", self.backend.kind)

    def _select_backend(self) -> WgBackend:
        choice = self.options.backend
        if choice == "auto":
            choice = "kernel" if kernel.probe() else "userspace"
        if choice == "kernel":
            return select_backend("kernel")
        if shutil.which(self.options.command[0]) is None:
            raise NotSupported(
                f"userspace WireGuard needs {self.options.command[0]!r}, which is not on "
                "PATH (and the kernel has no wireguard module): install wireguard-go or "
                "set [drivers.wireguard] userspace_command"
            )
        return select_backend(
            "userspace",
            command=self.options.command,
            socket_dir=self.options.socket_dir,
            tuning=self.options.tuning,
        )

    @hookimpl
    def overlayd_shutdown(self) -> None:
        if self.backend is not None:
            self.backend.close()
        with self._lock:
            self._devices.clear()

    def _backend(self) -> WgBackend:
        if self.backend is None:
            raise NotSupported(
                "the wireguard driver is not started (overlayd_startup was not called)"
            )
        return self.backend

    # ------------------------------------------------------------------ devices

    @hookimpl
    def overlayd_device_create(self, spec: DeviceSpec) -> Device | None:
        if spec.kind != DeviceKind.WIREGUARD:
            return None
        backend = self._backend()
        if spec.private_key is not None:
            private = PrivateKey.from_base64(spec.private_key)
        else:
            private, _ = generate_keypair()
            log.warning(
                "device %s was created without a private key; a random one was "
                "generated and will not survive a restart",
                spec.name,
            )
        mtu = spec.mtu or DEFAULT_MTU
        addresses = tuple(str(a) for a in spec.addresses)
        with self._lock:
            known = self._devices.get(spec.name)
        if known is not None and self._same(known.device, spec, private):
            return known.device  # adopted and unchanged: touch nothing
        state = backend.ensure_device(
            spec.name,
            private_key=private,
            listen_port=spec.listen_port,
            mtu=mtu,
            addresses=addresses,
            netns=self.options.netns,
        )
        device = spec.as_device(
            self.name,
            mtu=mtu,
            listen_port=state.listen_port or spec.listen_port,
            public_key=state.public_key or private.public_key(),
            options=dict(spec.options),
        )
        dev = self._track(device, state)
        try:
            self._sync_routes(dev, set(dev.routes) | self._routed(dev, dev.owner))
        except DeviceError:
            if known is None:
                self._forget(spec.name)
                backend.delete_device(spec.name)
            raise
        return device

    @staticmethod
    def _same(device: Device, spec: DeviceSpec, private: PrivateKey) -> bool:
        return (
            device.public_key == private.public_key()
            and device.listen_port == spec.listen_port
            and device.mtu == (spec.mtu or DEFAULT_MTU)
            and set(device.addresses) == set(spec.addresses)
            and device.owner == spec.owner
        )

    def _track(self, device: Device, state: DeviceState) -> DevState:
        with self._lock:
            dev = self._devices.get(device.name)
            if dev is None:
                dev = DevState(
                    device=device,
                    connected=tuple(a.network for a in device.addresses),
                )
                dev.set_peers(PeerConfig.from_state(p) for p in state.peers)
                self._devices[device.name] = dev
            else:
                dev.device = device
                dev.connected = tuple(a.network for a in device.addresses)
        return dev

    def _forget(self, name: str) -> None:
        with self._lock:
            self._devices.pop(name, None)

    @hookimpl
    def overlayd_device_delete(self, device: Device) -> bool | None:
        backend = self._backend()
        existed = backend.delete_device(device.name)
        self._forget(device.name)
        return existed

    @hookimpl
    def overlayd_device_list(self, kind: str) -> list[Device]:
        if kind != DeviceKind.WIREGUARD or self.backend is None:
            return []
        out: list[Device] = []
        with self._lock:
            known = {n: d.device for n, d in self._devices.items()}
        for name in self._host_devices():
            device = known.get(name)
            if device is None:
                device = self._describe_unknown(name)
            if device is not None:
                out.append(device)
        return out

    def _host_devices(self) -> list[str]:
        """Our (``zl-``) WireGuard devices that really run in our namespace."""
        backend = self._backend()
        links = self.hostnet.wireguard_links(netns=self.options.netns)
        names = []
        for name, kind in sorted(links.items()):
            if not name.startswith(OWN_PREFIX):
                continue
            if backend.kind == "userspace":
                if kind != "tun" or not UapiClient(self.options.socket_dir).alive(name, 1.0):
                    continue
            elif kind != "wireguard":
                continue
            names.append(name)
        return names

    def _describe_unknown(self, name: str) -> Device | None:
        try:
            state = self._backend().get(name)
        except (DeviceError, PeerError) as exc:
            log.warning("cannot read WireGuard device %s: %s", name, exc)
            return None
        return Device(
            kind=DeviceKind.WIREGUARD,
            name=name,
            owner="unknown",
            driver=self.name,
            listen_port=state.listen_port,
            public_key=state.public_key,
        )

    def _adopt(self, device: Device) -> DevState:
        """The state of ``device``, adopting a running device recorded by the engine."""
        with self._lock:
            dev = self._devices.get(device.name)
        if dev is not None:
            return dev
        backend = self._backend()
        state = backend.get(device.name)
        if state.private_key is None:
            raise DeviceError(
                f"WireGuard device {device.name} is running but does not reveal its "
                "private key, so it cannot be adopted; recreate it with device_create",
                op="adopt",
                driver=self.name,
            )
        state = backend.ensure_device(
            device.name,
            private_key=state.private_key,
            listen_port=device.listen_port or state.listen_port,
            mtu=device.mtu or DEFAULT_MTU,
            addresses=tuple(str(a) for a in device.addresses),
            netns=self.options.netns,
        )
        dev = self._track(device, state)
        self._sync_routes(dev, self._routed(dev, dev.owner))
        log.info("adopted running WireGuard device %s", device.name)
        return dev

    # ------------------------------------------------------------------ routes

    def _routed(self, dev: DevState, prefixes: Iterable[str]) -> set[str]:
        return {p for p in prefixes if dev.needs_route(p)}

    def _sync_routes(self, dev: DevState, want: set[str]) -> None:
        netns = self.options.netns
        add = want - dev.routes
        drop = dev.routes - want
        if drop:
            self.hostnet.delete_routes(dev.device.name, sorted(drop), netns=netns)
            dev.routes -= drop
        if add:
            self.hostnet.add_routes(dev.device.name, sorted(add), netns=netns)
            dev.routes |= add

    def _on_restart(self, name: str) -> None:
        """The supervisor restarted ``name`` with a new TUN: its routes are gone."""
        with self._lock:
            dev = self._devices.get(name)
        if dev is None:
            return
        with dev.lock:
            want = self._routed(dev, dev.owner)
            dev.routes = set()
            self._sync_routes(dev, want)

    # ------------------------------------------------------------------ peers

    @hookimpl
    def overlayd_peer_apply(self, device: Device, changes: Sequence[PeerChange]) -> bool | None:
        if not changes:
            return True
        try:
            dev = self._adopt(device)
        except DeviceError as exc:
            raise PeerError(str(exc), op="peer_apply", driver=self.name) from exc
        with dev.lock:
            self._apply(dev, changes)
        return True

    def _apply(self, dev: DevState, changes: Sequence[PeerChange]) -> None:
        for ch in changes:
            if not ch.remove and ch.public_key not in dev.peers:
                validate_key(ch.public_key, "peer public key")

        def current(pk: str) -> Peer[str] | None:
            cfg = dev.peers.get(pk)
            if cfg is None:
                return None
            return Peer(
                public_key=pk,
                endpoint=dev.hostnames.get(pk) or cfg.endpoint,
                allowed_ips=cfg.allowed_ips,
                persistent_keepalive_secs=cfg.persistent_keepalive_interval or 0,
            )

        # The merge every overlayd component uses (overlayd.peers), so the
        # engine's records and this cache agree with the device on every prefix.
        merged = merge(
            changes, current, dev.owner.get, allowed_ip, device=f"device {dev.device.name}"
        )
        given: dict[str, str] = {}
        for ch in changes:
            if ch.remove:
                given.pop(ch.public_key, None)
            elif ch.endpoint is not None:
                given[ch.public_key] = ch.endpoint
        touched: dict[str, PeerConfig | None] = {}
        hostnames: dict[str, str | None] = {}
        for pk, peer in merged.peers.items():
            if peer is None:
                touched[pk] = None
                hostnames[pk] = None
                continue
            old = dev.peers.get(pk)
            endpoint = old.endpoint if old is not None and peer.endpoint is not None else None
            if pk in given:
                numeric = numeric_endpoint(given[pk])
                if numeric is not None:
                    endpoint = numeric
                    hostnames[pk] = None
                else:
                    endpoint = resolve_endpoint(given[pk])
                    hostnames[pk] = given[pk]
            with self._peer_errors(f"invalid peer {pk} for {dev.device.name}"):
                touched[pk] = PeerConfig(
                    public_key=pk,
                    allowed_ips=peer.allowed_ips,
                    endpoint=endpoint,
                    persistent_keepalive_interval=peer.persistent_keepalive_secs,
                    # PeerChange has no preshared key: carry the device's.
                    preshared_key=old.preshared_key if old is not None else None,
                )
        desired = [p for p in touched.values() if p is not None]
        current_states = [state_of(dev.peers[k]) for k in touched if k in dev.peers]
        with self._peer_errors(f"peer batch for {dev.device.name} is inconsistent"):
            ops = diff_peers(desired, current_states)
        # The device state after the batch, computed on the touched keys only.
        after = dict(dev.peers)
        for pk, cfg in touched.items():
            if cfg is None:
                after.pop(pk, None)
            else:
                after[pk] = cfg
        owner = dev.owner
        if merged.owners:
            owner = dict(dev.owner)
            for prefix, holder in merged.owners.items():
                if holder is None:
                    owner.pop(prefix, None)
                else:
                    owner[prefix] = holder
        if ops:
            try:
                self._backend().apply(
                    dev.device.name, SetRequest(peers=ops), peers=tuple(after.values())
                )
            except OverlaydError:
                self._reload(dev)
                raise
        dev.peers = after
        dev.owner = owner
        for pk, hn in hostnames.items():
            if hn is None:
                dev.hostnames.pop(pk, None)
            else:
                dev.hostnames[pk] = hn
                dev.resolved_at[pk] = time.monotonic()
        if merged.gained or merged.lost:
            want = (dev.routes - merged.lost) | self._routed(dev, merged.gained)
            self._sync_routes(dev, want)

    @contextlib.contextmanager
    def _peer_errors(self, what: str) -> Iterator[None]:
        """Raise an ``InvalidRequest`` of the block as ``PeerError`` "``what``: reason"."""
        try:
            yield
        except InvalidRequest as exc:
            raise PeerError(f"{what}: {exc}", op="peer_apply", driver=self.name) from exc

    def _reload(self, dev: DevState) -> None:
        """Re-read the device after a failed set (it may be partially applied)."""
        try:
            state = self._backend().get(dev.device.name)
        except OverlaydError as exc:
            log.warning("could not re-read %s after a failed set: %s", dev.device.name, exc)
            return
        dev.set_peers(PeerConfig.from_state(p) for p in state.peers)

    @hookimpl
    def overlayd_peer_status(self, device: Device) -> list[PeerStatus] | None:
        try:
            state = self._backend().get(device.name)
        except DeviceError as exc:
            raise PeerError(str(exc), op="peer_status", driver=self.name) from exc
        now = time.time()
        # Every value was validated by the UAPI parser: construct without
        # re-validating (10,000 peers are read on every health check).
        build = build_status
        out = [
            build(
                (
                    p.public_key,
                    p.endpoint,
                    networks(p.allowed_ips),
                    p.persistent_keepalive_interval,
                    handshake_unix(p, now),
                    p.rx_bytes,
                    p.tx_bytes,
                )
            )
            for p in state.peers
        ]
        self._reresolve(device.name, out, now)
        return out

    def _reresolve(self, name: str, peers: Sequence[PeerStatus], now: float) -> None:
        """Re-resolve host-name endpoints of peers whose handshake went stale."""
        with self._lock:
            dev = self._devices.get(name)
        if dev is None or not dev.hostnames:
            return
        mono = time.monotonic()
        changes: list[PeerChange] = []
        for p in peers:
            hostname = dev.hostnames.get(p.public_key)
            if hostname is None:
                continue
            if (
                p.last_handshake_unix_secs
                and now - p.last_handshake_unix_secs < RERESOLVE_AFTER_SECS
            ):
                continue
            if mono - dev.resolved_at.get(p.public_key, 0.0) < RERESOLVE_EVERY_SECS:
                continue
            dev.resolved_at[p.public_key] = mono
            try:
                fresh = resolve_endpoint(hostname, attempts=1)
            except PeerError as exc:
                log.warning("re-resolving %s failed: %s", hostname, exc)
                continue
            cur = dev.peers.get(p.public_key)
            if cur is not None and cur.endpoint != fresh:
                log.info("endpoint %s of peer %s now resolves to %s", hostname, p.public_key, fresh)
                changes.append(PeerChange(public_key=p.public_key, endpoint=hostname))
        if changes:
            with dev.lock, contextlib.suppress(PeerError):
                self._apply(dev, changes)

    # ------------------------------------------------------------------ attach

    @hookimpl
    def overlayd_attach(self, request: AttachRequest) -> Attachment | None:
        # The segment of a guest is the service's bridge (another driver's):
        # a guest talks WireGuard to the node's device, which is this driver's.
        if not isinstance(request.handle, GuestManagedHandle):
            return None
        node = request.node
        if node is None or node.public_key is None:
            raise AttachError(
                "a guest-managed workload needs the node's WireGuard device: set up the "
                "global overlay first",
                op="attach",
                driver=self.name,
            )
        private, public = generate_keypair()
        guest = request.guest_config(
            private.to_base64(),
            public,
            endpoint=self._guest_endpoint(node.listen_port),
            keepalive_secs=GUEST_KEEPALIVE_SECS,
        )
        att = request.as_attachment(self.name, guest=guest)
        with self._lock:
            self._guests.add(att.key)
        return att

    def _guest_endpoint(self, port: int) -> str | None:
        """Where a guest reaches the node: the ``endpoint`` option, else the underlay.

        Without the option it is ``<underlay address>:<listen port>``, the
        address found by :meth:`HostNet.underlay_address` in the driver's
        namespace; ``None`` (and a warning) when the node has no such address.
        """
        if self.options.endpoint:
            return self.options.endpoint
        address = self.hostnet.underlay_address(netns=self.options.netns)
        if address is None:
            log.warning(
                "no underlay address found for guests (no default route, no global "
                "address); set [drivers.wireguard] endpoint"
            )
            return None
        host = f"[{address}]" if ":" in address else address
        return f"{host}:{port}"

    @hookimpl
    def overlayd_detach(self, attachment: Attachment) -> bool | None:
        # Nothing on the host: the engine removes the guest's peer.
        with self._lock:
            if attachment.key in self._guests:
                self._guests.discard(attachment.key)
                return True
        return False

    @hookimpl
    def overlayd_attachment_alive(self, attachment: Attachment) -> bool | None:
        return True  # a guest runs its own WireGuard: unknowable here, so presumed alive

    # ------------------------------------------------------------------ reconcile

    @hookimpl
    def overlayd_reconcile(self, request: ReconcileRequest) -> ReconcileReport | None:
        if self.backend is None:
            return None
        found = ReconcileTally()
        try:
            present = set(self._host_devices())
        except DeviceError as exc:
            return ReconcileReport(driver=self.name, errors=(str(exc),))
        recorded = {
            d.name: d
            for d in request.devices
            if d.driver == self.name and d.kind == DeviceKind.WIREGUARD
        }
        for name, device in recorded.items():
            if name not in present:
                found.errors.append(
                    f"WireGuard device {name} is recorded but not running; the engine "
                    "re-creates recorded devices with their keys"
                )
                continue
            try:
                self._adopt(device)
                found.adopted.append(name)
            except OverlaydError as exc:
                found.errors.append(f"adopting {name}: {exc}")
        for name in sorted(present - set(recorded)):
            try:
                self._backend().delete_device(name)
                self._forget(name)
                found.removed.append(name)
            except OverlaydError as exc:
                found.errors.append(f"removing unrecorded device {name}: {exc}")
        with self._lock:
            for att in request.attachments:
                if att.driver == self.name:
                    self._guests.add(att.key)
                    found.adopted.append(att.key)
        return found.report(self.name)
