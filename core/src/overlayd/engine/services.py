"""Service overlays: a service's segment (bridge or HCN network), its subnet and,
in dedicated mode, its own WireGuard device and listen port.

Where the subnet comes from is the node's address layout
(:mod:`overlayd.engine.layout`); the service's address pool is created
through the IPAM hooks (:mod:`overlayd.engine.addresses`).
"""

from __future__ import annotations

import functools
import ipaddress
import logging

from overlayd.errors import Conflict
from overlayd.errors import DriverError
from overlayd.errors import InvalidRequest
from overlayd.errors import OverlaydError
from overlayd.errors import TeardownError
from overlayd.errors import quote
from overlayd.ipam import usable_range
from overlayd.model import Device
from overlayd.model import DeviceSpec
from overlayd.model import GlobalOverlay
from overlayd.model import IPNetwork
from overlayd.model import MasqueradeRule
from overlayd.model import OverlayMode
from overlayd.model import Pool
from overlayd.model import ServiceOverlay
from overlayd.model import SubnetRequest
from overlayd.names import dedicated_device_name
from overlayd.names import service_bridge_name

from .base import EngineBase
from .base import service_pool
from .work import Tx
from .work import Undo

__all__ = ["ServicesMixin"]

log = logging.getLogger(__name__)


class ServicesMixin(EngineBase):
    """Set up and tear down service overlays."""

    async def setup_service_overlay(self, service: str, mode: OverlayMode | str) -> ServiceOverlay:
        """Create (or return) a service's bridge, subnet and, in dedicated mode, its device."""
        self._require_started()
        self._check_name("service name", service)
        try:
            resolved = OverlayMode(mode).resolve()
        except ValueError:
            raise InvalidRequest(
                f"invalid overlay mode {quote(mode)}: use auto, shared or dedicated"
            ) from None
        async with self._locks.hold(("global", False), (f"service:{service}", True)):
            self._global()
            existing = self.services.get(service)
            if existing is not None:
                if existing.mode != resolved:
                    raise Conflict(
                        f"service {quote(service)} is already set up in {existing.mode} mode; "
                        "tear it down before changing the mode"
                    )
                return existing
            return await self._run(self._setup_service, service, resolved)

    def _setup_service(self, service: str, mode: OverlayMode) -> ServiceOverlay:
        g = self._global()
        layout = self._layout
        assert layout is not None
        assert self._ports is not None
        flat = layout.flat(mode)
        undo = Undo()
        subnet = layout.slice
        try:
            if not flat:
                subnet = self._carve(service, mode, g)
                own = self._owned(Pool(name=service_pool(service), cidr=subnet))
                undo.push("release subnet", functools.partial(self._give_back, own))
            first, _ = usable_range(subnet)
            # On the base network the node address is every container's gateway.
            gateway = (
                g.node_ip if flat else ipaddress.ip_address(int(subnet.network_address) + first)
            )
            overlay_ip = (
                ipaddress.ip_address(int(subnet.network_address) + first + 1)
                if mode is OverlayMode.DEDICATED
                else None
            )
            bridge = self.hooks.device_create(
                DeviceSpec(
                    kind=self.config.engine.segment_kind,
                    name=service_bridge_name(g.deployment, g.instance_id, service),
                    owner=f"service:{service}",
                    addresses=(ipaddress.ip_interface(f"{gateway}/{subnet.prefixlen}"),),
                    mtu=self.config.engine.mtu,
                    subnet=subnet,
                    options={
                        "mode": mode.value,
                        "deployment": g.deployment,
                        "instance_id": g.instance_id,
                        "cluster_cidr": str(g.cluster_cidr),
                        "slice_cidr": str(g.slice_cidr),
                        "node_ip": str(g.node_ip),
                    },
                )
            )
            undo.push("delete bridge", lambda: self.hooks.device_delete(bridge))
            dedicated: Device | None = None
            if mode is OverlayMode.DEDICATED:
                assert overlay_ip is not None
                imported = self._import_zlayer_identity(service)
                with self._mem:
                    if imported is not None:
                        port = imported
                        self._ports.reserve(port)
                    else:
                        port = self._ports.allocate()
                undo.push(
                    "release port",
                    lambda: self._ports.release(port) if self._ports else None,
                )
                host_bits = 32 if overlay_ip.version == 4 else 128
                name = dedicated_device_name(g.deployment, g.instance_id, service)
                address = ipaddress.ip_interface(f"{overlay_ip}/{host_bits}")
                key = f"wg-service-{service}"
                dedicated = self.hooks.device_create(
                    self._wg_spec(name, f"service:{service}", address, port, key, subnet)
                )
                ded = dedicated
                undo.push("delete dedicated device", lambda: self.hooks.device_delete(ded))
            svc = ServiceOverlay(
                service=service,
                mode=mode,
                subnet=subnet,
                gateway=gateway,
                bridge=bridge,
                dedicated=dedicated,
                overlay_ip=overlay_ip,
            )
            tx = Tx()
            if not flat:
                pool = self._pool_for(svc)
                self.hooks.ipam_pool_create(pool, [])
                undo.push("delete pool", lambda: self.hooks.ipam_pool_delete(pool))
            if g.nat_enabled and not subnet.subnet_of(g.slice_cidr):  # type: ignore[arg-type]
                # The slice is masqueraded as a whole; a subnet outside it needs its own rule.
                rule = MasqueradeRule(subnet=subnet, exempt=(g.cluster_cidr,))
                if self.hooks.nat_masquerade(rule, True):
                    undo.push("remove masquerade", functools.partial(self._unmask, rule))
                    tx.put("masquerade", str(subnet), rule)
                    tx.after.append(
                        functools.partial(self.masquerades.__setitem__, str(subnet), rule)
                    )
            tx.put("service", service, svc)
            tx.after.append(lambda: self.services.__setitem__(service, svc))
            self._commit(tx)
        except BaseException as exc:
            undo.rollback(exc)
            raise
        finally:
            with self._mem:
                self._carving.discard(subnet)
        self._sync_dns_serve()
        return svc

    def _carve(self, service: str, mode: OverlayMode, g: GlobalOverlay) -> IPNetwork:
        """A new subnet for ``service`` from the subnet hooks, checked (see the hookspec)."""
        layout = self._layout
        assert layout is not None
        with self._mem:
            busy = [s.subnet for s in self.services.values()] + list(self._carving)
        request = SubnetRequest(
            service=service,
            mode=mode,
            cluster_cidr=g.cluster_cidr,
            slice_cidr=g.slice_cidr,
            layout=layout.kind,
            taken=(layout.node_block, *busy),
            driver=self.config.ipam.driver,
        )
        subnet = self.hooks.ipam_subnet_allocate(request)
        problem = _subnet_problem(subnet, g.cluster_cidr)
        with self._mem:
            taken = [layout.node_block, *(s.subnet for s in self.services.values())]
            clash = next((t for t in [*taken, *self._carving] if t.overlaps(subnet)), None)
            if problem is None and clash is not None:
                problem = f"it overlaps {clash}, which this node uses"
            if problem is None:
                self._carving.add(subnet)
        if problem is not None:
            self._give_back(self._owned(Pool(name=service_pool(service), cidr=subnet)))
            raise DriverError(
                f"the IPAM driver answered subnet {subnet} for service {quote(service)}: {problem}",
                op="ipam_subnet_allocate",
                driver=self.config.ipam.driver or "",
            )
        return subnet

    def _give_back(self, pool: Pool) -> None:
        """Release a service subnet through the subnet hooks; a failure is only logged."""
        try:
            self.hooks.ipam_subnet_release(pool)
        except OverlaydError as exc:
            log.warning("could not release subnet %s of %s: %s", pool.cidr, pool.name, exc)

    def _import_zlayer_identity(self, service: str) -> int | None:
        """Adopt a dedicated identity ZLayer's daemon left in ``agent_network.json``.

        Returns the recorded listen port when the marker holds a complete
        identity (key and port) and overlayd has no key of its own for the
        service yet; the key is moved into the secret store. overlayd itself
        keeps identities in its state store and secret files, and only the hcn
        driver writes the marker (its networks, keeping these fields).
        """
        if self.config.data_dir is None:
            return None
        from overlayd import marker

        entry = marker.load(marker.marker_path(self.config.data_dir)).get(
            marker.owner_for_service(service)
        )
        if entry is None or not entry.wg_private_key or not entry.wg_port:
            return None
        name = f"wg-service-{service}"
        if self._secrets.get(name) is None:
            self._secrets.put(name, entry.wg_private_key)
            log.info("adopted ZLayer's dedicated identity of %s (port %d)", service, entry.wg_port)
        return int(entry.wg_port)

    async def teardown_service_overlay(self, service: str) -> None:
        """Detach the service's workloads and remove its devices and subnet. Idempotent."""
        self._require_started()
        self._check_name("service name", service)
        async with self._locks.hold(("global", False), (f"service:{service}", True)):
            if service in self.services:
                await self._run(self._teardown_service, service)

    def _teardown_service(self, service: str) -> None:
        svc = self.services[service]
        errors: list[BaseException] = []
        for key in [k for k, a in self.attachments.items() if a.service == service]:
            try:
                self._detach_locked(key)
            except OverlaydError as exc:
                errors.append(exc)
        if errors:
            raise TeardownError(f"teardown of service {service}", errors)
        tx = Tx()
        rule = self.masquerades.get(str(svc.subnet))
        if rule is not None:
            try:
                self.hooks.nat_masquerade(rule, False)
                tx.delete("masquerade", str(svc.subnet))
                tx.after.append(lambda: self.masquerades.pop(str(svc.subnet), None))
            except OverlaydError as exc:
                errors.append(exc)
        for device in (svc.dedicated, svc.bridge):
            if device is None:
                continue
            try:
                self.hooks.device_delete(device)
            except OverlaydError as exc:
                errors.append(exc)
        if errors:
            # Keep the record: a retry of the teardown can finish the job.
            raise TeardownError(f"teardown of service {service}", errors)
        if not self._flat(svc):  # a service on the base network shares the node pool
            pool = self._pool_for(svc)
            self.hooks.ipam_pool_delete(pool)
            for key, lease in list(self.manual_leases.items()):
                if lease.pool == pool.name:
                    tx.delete("lease", key)
                    tx.after.append(functools.partial(self.manual_leases.pop, key, None))
        if svc.dedicated is not None:
            for pub in list(self.peers.get(svc.dedicated.name, {})):
                tx.delete("peer", f"{svc.dedicated.name}|{pub}")
        tx.delete("service", service)

        flat = self._flat(svc)

        def apply() -> None:
            self.services.pop(service, None)
            if svc.dedicated is not None:
                self.peers.pop(svc.dedicated.name, None)
                if self._ports is not None and svc.dedicated.listen_port:
                    self._ports.release(svc.dedicated.listen_port)

        tx.after.append(apply)
        self._commit(tx)
        if not flat:
            self._give_back(self._pool_for(svc))
        if svc.dedicated is not None:
            self._secrets.delete(f"wg-service-{service}")
        self._sync_dns_serve()


def _subnet_problem(subnet: object, cluster: IPNetwork) -> str | None:
    """Why an answered subnet cannot be a service subnet of ``cluster`` (``None``: it can)."""
    if not isinstance(subnet, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return f"{type(subnet).__name__} is not an IP network"
    if subnet.version != cluster.version or not subnet.subnet_of(cluster):  # type: ignore[arg-type]
        return f"it is not inside the cluster CIDR {cluster}"
    if subnet.num_addresses < 4:
        return "it holds fewer than four addresses"
    return None
