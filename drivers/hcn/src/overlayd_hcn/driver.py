"""The ``hcn`` driver: Windows HCN v2 networks, endpoints and namespaces.

Segments (``hcn-network`` devices) map onto HCN networks:

* **shared** services share the node's *base* network (ZLayer's
  ``zlayer-overlay``): Static IPAM over the node slice, default route via the
  slice's first address (the node address), ``Internal`` or ``Transparent`` on a
  chosen uplink adapter. It is found again by the GUID recorded in
  ``{data_dir}/agent_network.json`` (owner ``base``), then by name, else created.
  Deleting a shared segment only drops the service's use of it; the base network
  stays until :meth:`HcnDriver.purge` (uninstall), as in ZLayer, so containers
  of other services and a daemon restart never lose it.
* **dedicated** services get their own ``Internal`` network over the service
  subnet (marker owner ``service:<name>``), deleted with the segment.

Attach creates a ``Host`` namespace, an endpoint named ``overlayd-<container>``
(ZLayer's ``<owner>-<container>`` form) with the leased address, a default
route, DNS and the OutBoundNAT / SDNRoute / ACL policies, and adds the endpoint
to the namespace; anything half-made is deleted on failure. Detach deletes the
endpoint **and** the namespace (ZLayer leaks both). Reconcile adopts recorded
networks by GUID, reports attachments whose endpoint vanished, and sweeps
endpoints and namespaces that carry overlayd's name prefix (and, when HCN
reports one, the ``Owner`` tag) but are not recorded.

Which segments use which network is kept in ``{data_dir}/hcn-segments.json``
(in memory without a data directory).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from typing import Final
from typing import TypeVar
from uuid import UUID

from overlayd import DRIVER_API
from overlayd import hookimpl
from overlayd import marker as marker_file
from overlayd.driver_options import parse_driver_options
from overlayd.errors import DeviceError
from overlayd.errors import NotSupported
from overlayd.errors import StateError
from overlayd.files import ensure_private_dir
from overlayd.files import write_file_atomic
from overlayd.marker import OWNER_BASE
from overlayd.marker import ManagedNetwork
from overlayd.marker import MarkerKind
from overlayd.marker import NetworkMarker
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import DriverInfo
from overlayd.model import IPAddress
from overlayd.model import IPNetwork
from overlayd.model import ReconcileReport
from overlayd.model import ReconcileRequest
from overlayd.model import ReconcileTally
from overlayd_hcn import __version__
from overlayd_hcn import statefile
from overlayd_hcn.api import HcnApi
from overlayd_hcn.attach import ENDPOINT_PREFIX
from overlayd_hcn.attach import OWNER_TAG
from overlayd_hcn.attach import AttachHooks
from overlayd_hcn.attach import default_route
from overlayd_hcn.attach import endpoint_name
from overlayd_hcn.attach import is_ours
from overlayd_hcn.errors import HcnAlreadyExistsError
from overlayd_hcn.errors import HcnError
from overlayd_hcn.errors import HcnNotFoundError
from overlayd_hcn.errors import HcnSubnetConflictError
from overlayd_hcn.options import DEFAULT_NETWORK_NAME
from overlayd_hcn.options import HcnOptions
from overlayd_hcn.retry import in_use
from overlayd_hcn.retry import retry_hcn
from overlayd_hcn.schema import HostComputeNetwork
from overlayd_hcn.schema import HostComputeQuery
from overlayd_hcn.schema import Ipam
from overlayd_hcn.schema import NamespaceType
from overlayd_hcn.schema import NetAdapterNamePolicy
from overlayd_hcn.schema import NetAdapterNameSettings
from overlayd_hcn.schema import NetworkPolicy
from overlayd_hcn.schema import NetworkType
from overlayd_hcn.schema import Route
from overlayd_hcn.schema import Subnet

__all__ = [
    "DEFAULT_NETWORK_NAME",
    "ENDPOINT_PREFIX",
    "OWNER_TAG",
    "SEGMENTS_FILE",
    "HcnDriver",
    "endpoint_name",
]

log = logging.getLogger(__name__)

#: Which segments use which network, inside the data directory.
SEGMENTS_FILE: Final = "hcn-segments.json"

_ROLE_BASE: Final = "base"
_ROLE_DEDICATED: Final = "dedicated"

_T = TypeVar("_T")


def _first_address(net: IPNetwork) -> IPAddress:
    return net.network_address + 1


class HcnDriver(AttachHooks):
    """overlayd driver for Windows HCN (native) or its simulator.

    :param api: an :class:`~overlayd_hcn.api.HcnApi` to use instead of building
        one from ``[drivers.hcn] backend`` at startup (tests, embedders).
    :param sleep: how retries wait (tests pass a recorder).
    """

    name: Final = "hcn"

    def __init__(
        self,
        api: HcnApi | None = None,
        *,
        data_dir: Path | str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        retry_attempts: int = 6,
    ) -> None:
        self._api: HcnApi | None = api
        self._data_dir: Path | None = Path(data_dir) if data_dir is not None else None
        self._sleep = sleep
        self._retry_attempts = retry_attempts
        self._lock = threading.RLock()
        self.backend = "native"
        self.state_dir: Path | None = None
        self.network_type = NetworkType.INTERNAL.value
        self.uplink_adapter: str | None = None
        self.network_name = DEFAULT_NETWORK_NAME
        self.call_timeout: float = 60.0
        self._marker = NetworkMarker()
        #: segment (device) name -> the Device returned for it
        self._segments: dict[str, Device] = {}
        self._loaded = False

    # -- plumbing ------------------------------------------------------------------

    def hcn(self) -> HcnApi:
        """The HCN API in use; only available after startup (or when injected).

        A method, not a property: pluggy reads every attribute when registering.
        """
        if self._api is None:
            raise DeviceError(
                "the hcn driver is not started: overlayd_startup has not run yet",
                driver=self.name,
            )
        return self._api

    def _retry(
        self, op: Callable[[], _T], *, retry_if: Callable[[HcnError], bool], what: str
    ) -> _T:
        return retry_hcn(
            op,
            retry_if=retry_if,
            what=what,
            attempts=self._retry_attempts,
            deadline=30.0,
            sleep=self._sleep,
        )

    @contextlib.contextmanager
    def _device_errors(self, doing: str, op: str) -> Iterator[None]:
        """An HCN failure in the block as a ``DeviceError``: cannot <doing>: <the failure>."""
        try:
            yield
        except HcnError as exc:
            raise DeviceError(f"cannot {doing}: {exc}", op=op, driver=self.name) from exc

    def _marker_path(self) -> Path | None:
        return marker_file.marker_path(self._data_dir) if self._data_dir is not None else None

    def _segments_path(self) -> Path | None:
        return self._data_dir / SEGMENTS_FILE if self._data_dir is not None else None

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = self._marker_path()
        if path is not None:
            self._marker = marker_file.load(path)
        seg_path = self._segments_path()
        if seg_path is None or not seg_path.exists():
            return
        remedy = "and run reconcile to rebuild it from the recorded devices"
        with statefile.reading(seg_path, "the hcn segment file", remedy) as data:
            self._segments = {
                d.name: d for d in (Device.model_validate(item) for item in data["segments"])
            }

    def _save(self) -> None:
        path = self._marker_path()
        if path is not None:
            marker_file.save(path, self._marker)
        seg_path = self._segments_path()
        if seg_path is None:
            return
        payload = {
            "version": 1,
            "segments": [d.model_dump(mode="json") for d in self._segments.values()],
        }
        try:
            if not seg_path.parent.exists():
                ensure_private_dir(seg_path.parent)
            write_file_atomic(seg_path, json.dumps(payload, indent=2).encode())
        except OSError as exc:
            raise StateError(
                f"cannot write the hcn segment file {seg_path}: {exc.strerror or exc}; "
                "check free space and the data directory's permissions."
            ) from exc

    # -- lifecycle -----------------------------------------------------------------

    @hookimpl
    def overlayd_describe(self) -> DriverInfo:
        return DriverInfo(
            name=self.name,
            api=DRIVER_API,
            device_kinds=frozenset({DeviceKind.HCN_NETWORK}),
            attach_kinds=frozenset({"windows_container"}),
            capabilities=frozenset({Capability.DEVICES, Capability.ATTACH, Capability.RECONCILE}),
            version=__version__,
        )

    @hookimpl
    def overlayd_configure(self, config: Any) -> None:
        options = parse_driver_options(HcnOptions, self.name, config.driver_options(self.name))
        self.backend = options.backend
        self.network_type = options.network_type
        self.uplink_adapter = options.uplink_adapter
        self.network_name = options.network_name
        self.call_timeout = float(options.call_timeout)
        self.state_dir = Path(options.state_dir) if options.state_dir else None
        if self._data_dir is None and getattr(config, "data_dir", None) is not None:
            self._data_dir = Path(config.data_dir)

    @hookimpl
    def overlayd_startup(self, context: Any) -> None:
        if context.data_dir is not None:
            self._data_dir = Path(context.data_dir)
        if self._api is None:
            self._api = self._build_api()
        with self._lock:
            self._load()

    def _build_api(self) -> HcnApi:
        if self.backend == "simulator":
            from overlayd_hcn.simulator import SimulatedHcn

            state_dir = self.state_dir
            if state_dir is None and self._data_dir is not None:
                state_dir = self._data_dir / "hcn-sim"
            return SimulatedHcn(state_dir, call_timeout=self.call_timeout)
        if sys.platform == "win32":
            from overlayd_hcn.api import NativeHcn

            return NativeHcn(call_timeout=self.call_timeout)
        else:  # an explicit else keeps mypy's linux pass free of unreachable code
            raise NotSupported(
                f"the hcn driver's native backend needs Windows (this host is {sys.platform}); "
                'set [drivers.hcn] backend = "simulator" to run against the HCN simulator.'
            )

    @hookimpl
    def overlayd_shutdown(self) -> None:
        # HCN objects outlive the daemon by design; nothing to stop.
        return None

    # -- devices -------------------------------------------------------------------

    @hookimpl
    def overlayd_device_create(self, spec: DeviceSpec) -> Device | None:
        if spec.kind != DeviceKind.HCN_NETWORK:
            return None
        if spec.subnet is None:
            raise DeviceError(
                f"hcn-network {spec.name} needs a subnet (the service subnet)",
                op="device_create",
                driver=self.name,
            )
        mode = str(spec.options.get("mode", "shared"))
        if mode not in ("shared", "dedicated"):
            raise DeviceError(
                f"hcn-network {spec.name}: unknown mode {mode!r} (shared or dedicated)",
                op="device_create",
                driver=self.name,
            )
        what = f"create or adopt the HCN network for {spec.owner} ({spec.name})"
        with self._lock:
            with self._device_errors(what, "device_create"):
                if mode == "dedicated":
                    network, owner = self._ensure_dedicated(spec)
                    role = _ROLE_DEDICATED
                else:
                    network, owner = self._ensure_base(spec)
                    role = _ROLE_BASE
            entry = self._marker.get(owner)
            assert entry is not None
            device = spec.as_device(
                self.name,
                id=str(network),
                options={
                    **dict(spec.options),
                    "network_role": role,
                    "network_name": entry.name,
                    "network_subnet": entry.subnet,
                    "network_gateway": str(self._gateway_of(entry, spec)),
                },
            )
            self._segments[spec.name] = device
            self._save()
        return device

    def _gateway_of(self, entry: ManagedNetwork, spec: DeviceSpec | Device) -> IPAddress:
        subnet = ipaddress.ip_network(entry.subnet)
        if entry.owner == OWNER_BASE:
            node_ip = spec.options.get("node_ip")
            if node_ip:
                addr = ipaddress.ip_address(str(node_ip))
                if addr in subnet:
                    return addr
            return _first_address(subnet)
        if spec.addresses:
            return spec.addresses[0].ip
        return _first_address(subnet)

    def _slice_of(self, spec: DeviceSpec) -> IPNetwork:
        raw = spec.options.get("slice_cidr")
        if raw:
            return ipaddress.ip_network(str(raw))
        assert spec.subnet is not None
        return spec.subnet

    def _ensure_base(self, spec: DeviceSpec) -> tuple[UUID, str]:
        slice_net = self._slice_of(spec)
        assert spec.subnet is not None
        if spec.subnet.version != slice_net.version or not spec.subnet.subnet_of(slice_net):  # type: ignore[arg-type]
            raise DeviceError(
                f"service subnet {spec.subnet} is not inside the node slice {slice_net}",
                op="device_create",
                driver=self.name,
            )
        kind: MarkerKind = (
            "hcn-transparent"
            if self.network_type == NetworkType.TRANSPARENT.value
            else "hcn-internal"
        )
        gateway = self._gateway_of(
            ManagedNetwork(owner=OWNER_BASE, kind=kind, name="", id="", subnet=str(slice_net)),
            spec,
        )
        network = self._ensure_network(
            owner=OWNER_BASE,
            kind=kind,
            name=self.network_name,
            subnet=slice_net,
            gateway=gateway,
            network_type=self.network_type,
            uplink=self.uplink_adapter,
        )
        return network, OWNER_BASE

    def _ensure_dedicated(self, spec: DeviceSpec) -> tuple[UUID, str]:
        assert spec.subnet is not None
        owner = spec.owner
        service = owner.removeprefix("service:")
        gateway = spec.addresses[0].ip if spec.addresses else _first_address(spec.subnet)
        try:
            network = self._ensure_network(
                owner=owner,
                kind="hcn-internal",
                name=f"{self.network_name}-{service}",
                subnet=spec.subnet,
                gateway=gateway,
                network_type=NetworkType.INTERNAL.value,
                uplink=None,
            )
        except HcnSubnetConflictError as exc:
            raise DeviceError(
                f"HCN refused the dedicated network of {owner} over {spec.subnet}: {exc} "
                "The subnet overlaps another HCN network, most likely the node's base "
                f"network {self.network_name!r} over the whole slice; run dedicated and "
                "shared services on different nodes, or purge the base network first.",
                op="device_create",
                driver=self.name,
            ) from exc
        return network, owner

    def _ensure_network(
        self,
        *,
        owner: str,
        kind: MarkerKind,
        name: str,
        subnet: IPNetwork,
        gateway: IPAddress,
        network_type: str,
        uplink: str | None,
    ) -> UUID:
        """Reuse by the marker's GUID, then by name, else create; record in the marker."""
        api = self.hcn()
        entry = self._marker.get(owner)
        if entry is not None:
            try:
                doc = api.open_network(UUID(entry.id))
            except HcnNotFoundError:
                log.info("HCN network %s (%s) recorded for %s is gone", entry.name, entry.id, owner)
            except ValueError:
                log.warning("marker entry of %s has an invalid GUID %r", owner, entry.id)
            else:
                self._check_subnet(doc, subnet, owner)
                assert doc.id is not None
                return doc.id
        found = api.enumerate_networks(HostComputeQuery.filtered(name=name))
        for candidate in found:
            try:
                doc = api.open_network(candidate)
            except HcnNotFoundError:
                continue
            if doc.name != name:
                continue
            self._check_subnet(doc, subnet, owner)
            assert doc.id is not None
            self._record(owner, kind, name, doc.id, subnet)
            return doc.id
        document = self.network_document(
            name=name, subnet=subnet, gateway=gateway, network_type=network_type, uplink=uplink
        )
        try:
            created = api.create_network(document)
        except HcnAlreadyExistsError:
            # Someone created it between our lookup and our create: adopt it.
            ids = api.enumerate_networks(HostComputeQuery.filtered(name=name))
            if not ids:
                raise
            created = api.open_network(ids[0])
        assert created.id is not None
        self._record(owner, kind, name, created.id, subnet)
        log.info("HCN network %s created: %s over %s", name, created.id, subnet)
        return created.id

    def _record(self, owner: str, kind: MarkerKind, name: str, id: UUID, subnet: IPNetwork) -> None:
        # Keep a dedicated service's WireGuard identity (wg_* fields, written by
        # ZLayer's daemon) in the same entry, as ZLayer stores both together.
        previous = self._marker.get(owner)
        keep = (
            {
                k: getattr(previous, k)
                for k in ("wg_port", "wg_private_key", "wg_public_key", "interface")
                if getattr(previous, k) is not None
            }
            if previous is not None
            else {}
        )
        self._marker.upsert(
            ManagedNetwork(
                owner=owner, kind=kind, name=name, id=str(id), subnet=str(subnet), **keep
            )
        )
        self._save()

    def _check_subnet(self, doc: HostComputeNetwork, subnet: IPNetwork, owner: str) -> None:
        prefixes = doc.subnet_prefixes()
        if prefixes and str(subnet) not in prefixes:
            raise DeviceError(
                f"the HCN network {doc.name or doc.id} of {owner} has subnet(s) "
                f"{', '.join(prefixes)}, not {subnet}; the node slice changed since it was "
                "created. Detach its containers and purge the hcn driver's networks "
                "(HcnDriver.purge) before setting the overlay up with a new slice.",
                op="device_create",
                driver=self.name,
            )

    @staticmethod
    def network_document(
        *,
        name: str,
        subnet: IPNetwork,
        gateway: IPAddress,
        network_type: str,
        uplink: str | None,
    ) -> HostComputeNetwork:
        """The HostComputeNetwork overlayd creates (ZLayer's node network shape)."""
        policies: list[NetworkPolicy] | None = None
        if network_type == NetworkType.TRANSPARENT.value and uplink:
            policies = [
                NetAdapterNamePolicy(settings=NetAdapterNameSettings(network_adapter_name=uplink))
            ]
        return HostComputeNetwork(
            name=name,
            type=network_type,
            policies=policies,
            ipams=[
                Ipam(
                    type="Static",
                    subnets=[
                        Subnet(
                            ip_address_prefix=str(subnet),
                            routes=[
                                Route(
                                    next_hop=str(gateway),
                                    destination_prefix=default_route(subnet),
                                )
                            ],
                        )
                    ],
                )
            ],
            flags=0,
        )

    @hookimpl
    def overlayd_device_delete(self, device: Device) -> bool | None:
        if device.kind != DeviceKind.HCN_NETWORK:
            return False
        with self._lock:
            segment = self._segments.pop(device.name, None)
            role = (segment or device).options.get("network_role")
            existed = segment is not None
            if role == _ROLE_DEDICATED or device.options.get("mode") == "dedicated":
                existed = self._delete_owned_network(device.owner, device.id) or existed
            # Shared: the base network stays for the other services and is
            # deleted only by purge() (uninstall).
            self._save()
        return existed

    def _delete_owned_network(self, owner: str, fallback_id: str | None) -> bool:
        entry = self._marker.get(owner)
        raw = entry.id if entry is not None else fallback_id
        existed = False
        if raw:
            existed = self._delete_network(UUID(raw))
        self._marker.remove(owner)
        self._save()
        return existed

    def _delete_network(self, network: UUID) -> bool:
        """Delete our endpoints (and namespaces) on ``network``, then the network."""
        api = self.hcn()
        with self._device_errors(f"delete HCN network {network}", "device_delete"):
            try:
                for endpoint in api.enumerate_endpoints(HostComputeQuery.filtered(network=network)):
                    self._delete_endpoint_and_namespace(endpoint, None)
                self._retry(
                    lambda: api.delete_network(network),
                    retry_if=in_use,
                    what=f"deleting HCN network {network}",
                )
            except HcnNotFoundError:
                return False
        return True

    @hookimpl
    def overlayd_device_list(self, kind: str) -> list[Device]:
        if kind != DeviceKind.HCN_NETWORK:
            return []
        with self._device_errors("list HCN networks", "device_list"):
            existing = set(self.hcn().enumerate_networks())
        with self._lock:
            return [d for d in self._segments.values() if d.id and UUID(d.id) in existing]

    # -- reconcile -----------------------------------------------------------------

    @hookimpl
    def overlayd_reconcile(self, request: ReconcileRequest) -> ReconcileReport | None:
        found = ReconcileTally()
        api = self.hcn()
        recorded = {d.name: d for d in request.devices if d.driver == self.name}
        with self._lock:
            # Segments we know but the engine no longer records: drop them.
            for name in [n for n in self._segments if n not in recorded]:
                seg = self._segments[name]
                try:
                    self.overlayd_device_delete(device=seg)
                    found.removed.append(name)
                except DeviceError as exc:
                    found.errors.append(f"{name}: {exc}")
            # Recorded segments: adopt by GUID, recreate what vanished.
            for name, device in recorded.items():
                try:
                    exists = False
                    if device.id:
                        try:
                            api.open_network(UUID(device.id))
                            exists = True
                        except HcnNotFoundError:
                            exists = False
                    known = self._segments.get(name)
                    if exists and known is not None and known.id == device.id:
                        found.adopted.append(name)
                        continue
                    self.overlayd_device_create(spec=_spec_from(device))
                    (found.adopted if exists else found.recreated).append(name)
                except (HcnError, DeviceError, ValueError) as exc:
                    found.errors.append(f"{name}: {exc}")
        # Attachments: alive or gone.
        endpoints: set[UUID] = set()
        namespaces: set[UUID] = set()
        for att in request.attachments:
            try:
                if att.endpoint_id:
                    endpoints.add(UUID(att.endpoint_id))
                if att.namespace_guid:
                    namespaces.add(UUID(att.namespace_guid))
            except ValueError:
                found.errors.append(f"{att.key}: invalid HCN GUID in the recorded attachment")
                continue
            if self.overlayd_attachment_alive(attachment=att):
                found.adopted.append(att.key)
            else:
                found.gone.append(att.key)
        # Crash-recovery sweep: our endpoints and namespaces nobody recorded.
        try:
            found.removed.extend(self._sweep(endpoints, namespaces, found.errors))
        except HcnError as exc:
            found.errors.append(f"sweep: {exc}")
        return found.report(self.name)

    def _sweep(self, endpoints: set[UUID], namespaces: set[UUID], errors: list[str]) -> list[str]:
        api = self.hcn()
        removed: list[str] = []
        with self._lock:
            networks = {UUID(n.id) for n in self._marker.networks if n.kind.startswith("hcn-")}
            networks |= {UUID(d.id) for d in self._segments.values() if d.id}
        for network in sorted(networks, key=str):
            try:
                found = api.enumerate_endpoints(HostComputeQuery.filtered(network=network))
            except HcnNotFoundError:
                continue
            for endpoint in found:
                if endpoint in endpoints:
                    continue
                try:
                    doc = api.open_endpoint(endpoint)
                except HcnNotFoundError:
                    continue
                if not is_ours(doc.name, doc.owner):
                    continue
                if doc.host_compute_namespace in namespaces:
                    continue
                try:
                    self._delete_endpoint_and_namespace(endpoint, doc.host_compute_namespace)
                    removed.append(f"endpoint:{str(endpoint).lower()}")
                except HcnError as exc:
                    errors.append(f"endpoint {endpoint}: {exc}")
        for namespace in api.enumerate_namespaces():
            if namespace in namespaces:
                continue
            try:
                ns = api.open_namespace(namespace)
            except HcnNotFoundError:
                continue
            if ns.type != NamespaceType.HOST or not is_ours(ns.name, ns.owner):
                continue
            if ns.endpoint_ids():
                continue
            try:
                api.delete_namespace(namespace)
                removed.append(f"namespace:{str(namespace).lower()}")
            except HcnNotFoundError:
                continue
            except HcnError as exc:
                errors.append(f"namespace {namespace}: {exc}")
        return removed

    # -- uninstall -----------------------------------------------------------------

    def purge(self) -> list[str]:
        """Uninstall: delete every network recorded in the marker, then clear it.

        Our endpoints and namespaces on those networks go first. Returns the
        names of the networks that existed and were deleted. Raises
        :class:`~overlayd.errors.DeviceError` if a network exists and cannot
        be deleted (the marker keeps that entry so a retry can finish).
        """
        deleted: list[str] = []
        with self._lock:
            self._load()
            for entry in list(self._marker.networks):
                if not entry.kind.startswith("hcn-"):
                    continue
                try:
                    network = UUID(entry.id)
                except ValueError:
                    self._marker.remove(entry.owner)
                    continue
                if self._delete_network(network):
                    deleted.append(entry.name)
                self._marker.remove(entry.owner)
                self._segments = {k: d for k, d in self._segments.items() if d.id != str(network)}
                self._save()
            self._segments.clear()
            self._save()
        return deleted


def _spec_from(device: Device) -> DeviceSpec:
    options: Mapping[str, Any] = {
        k: v
        for k, v in device.options.items()
        if k not in ("network_role", "network_name", "network_subnet", "network_gateway")
    }
    return device.as_spec(options=options)
