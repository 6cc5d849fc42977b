"""The global overlay: the node's WireGuard device, its slice and the slice's masquerade.

``setup_global_overlay`` creates (or adopts) the device and the node pool;
``teardown_global_overlay`` removes the device but keeps the slice while
services or attachments use it (the overlay is then *retired*, and the next
set-up adopts it). The node identity calls (``set_local_node_id``,
``set_local_wg_pubkey``) live here too.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from typing import Any

from overlayd.errors import Conflict
from overlayd.errors import InvalidRequest
from overlayd.errors import OverlaydError
from overlayd.errors import TeardownError
from overlayd.ipam import usable_range
from overlayd.model import GlobalOverlay
from overlayd.model import IPNetwork
from overlayd.model import MasqueradeRule
from overlayd.model import PeerChange
from overlayd.model import PeerConfig
from overlayd.names import global_device_name
from overlayd.peers import change_from

from .base import GLOBAL_KEY
from .base import NODE_POOL
from .base import EngineBase
from .layout import choose_layout
from .layout import global_conflicts
from .work import Tx
from .work import Undo

__all__ = ["GlobalOverlayMixin"]

log = logging.getLogger(__name__)


class GlobalOverlayMixin(EngineBase):
    """Node identity and the global overlay."""

    async def set_local_node_id(self, node_id: int) -> None:
        self._require_started()
        if not 0 <= node_id < 2**64:
            raise InvalidRequest(f"node_id {node_id} is not an unsigned 64-bit integer")
        await self._run(self._commit_meta, "node_id", node_id)

    async def set_local_wg_pubkey(self, pubkey: str) -> None:
        self._require_started()
        try:
            PeerConfig(public_key=pubkey)
        except ValueError as exc:
            raise InvalidRequest(f"invalid public key: {exc}") from None
        await self._run(self._commit_meta, "local_wg_pubkey", pubkey)

    def _commit_meta(self, key: str, value: Any) -> None:
        # meta records are stored unwrapped: kind "meta", key -> value
        tx = Tx()
        tx.puts[("meta", key)] = value
        tx.after.append(lambda: setattr(self, key, value))
        self._commit(tx)

    # -- global overlay -----------------------------------------------------

    async def setup_global_overlay(
        self,
        *,
        deployment: str,
        instance_id: str,
        cluster_cidr: str | IPNetwork,
        slice_cidr: str | IPNetwork | None = None,
        wg_port: int,
        nat_enabled: bool = False,
    ) -> str:
        """Create (or adopt) the node's WireGuard device; returns its interface name.

        ZLayer's agent sends this at every start with its own pid as
        ``instance_id``. A request for the overlay already set up (or torn down
        while services and attachments still use its slice) adopts it whatever
        the ``instance_id``: the same device, key, slice, peers and attachments,
        answered as a first set-up would be. An absent ``slice_cidr`` keeps the
        recorded slice; ``nat_enabled`` is applied. A different deployment,
        cluster CIDR, given slice or port is refused (see :func:`global_conflicts`).
        """
        self._require_started()
        self._check_name("deployment", deployment)
        if instance_id:
            self._check_name("instance_id", instance_id)
        cluster = self._parse_net("cluster_cidr", cluster_cidr)
        given = self._parse_net("slice_cidr", slice_cidr) if slice_cidr else None
        slice_net = given or cluster
        if slice_net.version != cluster.version or not slice_net.subnet_of(cluster):  # type: ignore[arg-type]
            raise InvalidRequest(f"slice_cidr {slice_net} is not inside cluster_cidr {cluster}")
        if slice_net.max_prefixlen - slice_net.prefixlen < 4:
            raise InvalidRequest(
                f"slice_cidr {slice_net} is too small: it must hold the node, a node pool "
                "and service subnets (at least 16 addresses)"
            )
        if not 0 < wg_port < 65536 - 256:
            raise InvalidRequest(f"wg_port {wg_port} is not a usable UDP port")
        async with self._locks.hold(("global", True)):
            existing = self._addressing()
            if existing is not None:
                conflicts = global_conflicts(
                    existing, deployment=deployment, cluster=cluster, slice_net=given, port=wg_port
                )
                if conflicts and self.global_ is None and not self._slice_in_use():
                    # Torn down and nothing uses its slice any more: start afresh.
                    await self._run(self._forget_retired)
                    existing = None
                elif conflicts:
                    state = "is set up" if self.global_ is not None else "was set up"
                    raise Conflict(
                        f"the global overlay {state} differently: {'; '.join(conflicts)}. "
                        + (
                            "Tear it down before setting it up differently."
                            if self.global_ is not None
                            else "Services or attachments still use its slice; tear them "
                            "down first, or set it up as it was."
                        )
                    )
            if existing is not None and self.global_ is existing:
                if existing.instance_id != instance_id:
                    log.info(
                        "instance %s adopts the global overlay %s of instance %s",
                        instance_id or "''",
                        existing.device.name,
                        existing.instance_id or "''",
                    )
                if existing.nat_enabled != nat_enabled:
                    await self._run(self._set_global_nat, nat_enabled)
                return existing.device.name
            name = await self._run(
                self._setup_global,
                deployment,
                instance_id,
                cluster,
                slice_net,
                given is not None,
                wg_port,
                nat_enabled,
            )
            await self._start_nat()
            return name

    def _slice_in_use(self) -> bool:
        return bool(
            self.services
            or self.attachments
            or any(lease.pool == NODE_POOL for lease in self.manual_leases.values())
        )

    def _setup_global(
        self,
        deployment: str,
        instance_id: str,
        cluster: IPNetwork,
        slice_net: IPNetwork,
        slice_given: bool,
        wg_port: int,
        nat_enabled: bool,
    ) -> str:
        # A retired overlay (torn down, its slice still in use) comes back as it
        # was: same names, node address and layout; only the device is new.
        base = self._retired
        if base is not None:
            instance_id = base.instance_id
            node_ip = base.node_ip
            layout = base.layout
            slice_given = base.reported_slice is not None
        else:
            first, _ = usable_range(slice_net)
            node_ip = ipaddress.ip_address(int(slice_net.network_address) + first)
            layout = choose_layout(
                cluster, slice_net, self.config.ipam, self.config.engine.segment_kind
            )
        name = global_device_name(deployment, instance_id)
        address = ipaddress.ip_interface(f"{node_ip}/{cluster.prefixlen}")
        spec = self._wg_spec(name, "base", address, wg_port, GLOBAL_KEY, cluster)
        undo = Undo()
        try:
            device = self.hooks.device_create(spec)
            undo.push("delete global device", lambda: self.hooks.device_delete(device))
            g = GlobalOverlay(
                deployment=deployment,
                instance_id=instance_id,
                cluster_cidr=cluster,
                slice_cidr=slice_net,
                node_ip=node_ip,
                wg_port=wg_port,
                nat_enabled=nat_enabled,
                device=device,
                slice_given=slice_given,
                layout=layout,
            )
            if self._layout is None:
                self._init_layout(g)
                undo.push("forget the layout", lambda: setattr(self, "_layout", None))
            assert self._layout is not None
            pool = self._owned(self._layout.node_pool(node_ip))
            if base is None:
                self.hooks.ipam_pool_create(pool, [])
                undo.push("delete node pool", lambda: self.hooks.ipam_pool_delete(pool))
            tx = Tx()
            self._global_nat(tx, undo, g, nat_enabled)
            table = self._peer_table(name)
            changes = [change_from(p) for p in table.values()]
            # Guests on the global device lost their peer with the old device.
            for att in self.attachments.values():
                svc = self.services.get(att.service)
                on_global = svc is None or svc.dedicated is None
                if att.guest is not None and on_global and att.guest.public_key not in table:
                    guest = PeerChange(
                        public_key=att.guest.public_key,
                        allowed_ips=(ipaddress.ip_network(att.ip),),
                    )
                    changes.append(guest)
            if changes:
                merged = table.preview(changes)
                self.hooks.peer_apply(device, changes)
                self._record_peers(tx, table, merged)
            tx.put("global", "global", g)
            tx.delete("global", "retired")

            def apply() -> None:
                self.global_ = g
                self._retired = None

            tx.after.append(apply)
            self._commit(tx)
        except BaseException as exc:
            undo.rollback(exc)
            raise
        self._sync_dns_serve()
        log.info(
            "global overlay %s up: node %s, slice %s (%s layout)",
            name,
            node_ip,
            slice_net,
            layout,
        )
        return device.name

    def _global_nat(self, tx: Tx, undo: Undo, g: GlobalOverlay, enable: bool) -> None:
        """Masquerade the node slice (and subnets outside it) leaving the node, or stop."""
        subnets = [g.slice_cidr] + [
            s.subnet
            for s in self.services.values()
            if not s.subnet.subnet_of(g.slice_cidr)  # type: ignore[arg-type]
        ]
        for subnet in subnets:
            key = str(subnet)
            rule = self.masquerades.get(key) or MasqueradeRule(
                subnet=subnet, exempt=(g.cluster_cidr,)
            )
            if enable and key not in self.masquerades:
                if self.hooks.nat_masquerade(rule, True):
                    undo.push("remove masquerade", functools.partial(self._unmask, rule))
                    tx.put("masquerade", key, rule)
                    tx.after.append(functools.partial(self.masquerades.__setitem__, key, rule))
            elif not enable and key in self.masquerades:
                self.hooks.nat_masquerade(rule, False)
                undo.push(
                    "restore masquerade", functools.partial(self.hooks.nat_masquerade, rule, True)
                )
                tx.delete("masquerade", key)
                tx.after.append(functools.partial(self.masquerades.pop, key, None))

    def _set_global_nat(self, enable: bool) -> None:
        g = self._global()
        undo = Undo()
        try:
            tx = Tx()
            self._global_nat(tx, undo, g, enable)
            updated = g.model_copy(update={"nat_enabled": enable})
            tx.put("global", "global", updated)
            tx.after.append(lambda: setattr(self, "global_", updated))
            self._commit(tx)
        except BaseException as exc:
            undo.rollback(exc)
            raise

    async def teardown_global_overlay(self) -> None:
        """Remove the global WireGuard device and its peers; nothing else.

        ZLayer's agent sends this at every graceful shutdown: service segments,
        their devices and attachments stay (containers keep their network), and
        the next ``setup_global_overlay`` adopts the slice and re-creates the
        device with the same name and key. They go with their own teardown,
        detach or gc. Idempotent.
        """
        self._require_started()
        async with self._locks.hold(("global", True)):
            await self._stop_nat()
            if self.global_ is not None:
                await self._run(self._teardown_global)

    def _teardown_global(self) -> None:
        g = self._global()
        keep = self._slice_in_use()
        errors: list[BaseException] = []
        tx = Tx()
        try:
            self.hooks.device_delete(g.device)
        except OverlaydError as exc:
            raise TeardownError("teardown of the global device", [exc]) from exc
        for pub in list(self.peers.get(g.device.name, ())):
            tx.delete("peer", f"{g.device.name}|{pub}")
        tx.delete("global", "global")
        if keep:
            # Services and attachments keep using the slice (and its masquerade).
            tx.put("global", "retired", g)
        else:
            errors += self._release_slice(tx, g)

        def apply() -> None:
            self.global_ = None
            self.peers.pop(g.device.name, None)
            if keep:
                self._retired = g

        tx.after.append(apply)
        self._commit(tx)
        self._sync_dns_serve()
        log.info(
            "global overlay %s down%s",
            g.device.name,
            "; services and attachments keep its slice" if keep else "",
        )
        if errors:
            raise TeardownError("teardown of the global overlay", errors)

    def _release_slice(self, tx: Tx, g: GlobalOverlay) -> list[BaseException]:
        """Give up the slice: its masquerade, node pool and manual node leases."""
        errors: list[BaseException] = []
        for key, rule in list(self.masquerades.items()):
            if rule.subnet == g.slice_cidr:
                try:
                    self.hooks.nat_masquerade(rule, False)
                    tx.delete("masquerade", key)
                    tx.after.append(functools.partial(self.masquerades.pop, key, None))
                except OverlaydError as exc:
                    errors.append(exc)
        if self._layout is not None:
            self.hooks.ipam_pool_delete(self._node_pool())
        for lease in list(self.manual_leases.values()):
            if lease.pool == NODE_POOL:
                tx.delete("lease", f"{lease.pool}|{lease.ip}")
                tx.after.append(
                    functools.partial(self.manual_leases.pop, f"{lease.pool}|{lease.ip}", None)
                )
        tx.delete("global", "retired")

        def apply() -> None:
            self._retired = None
            self._layout = None
            self._ports = None

        tx.after.append(apply)
        return errors

    def _forget_retired(self) -> None:
        retired = self._retired
        assert retired is not None
        tx = Tx()
        errors = self._release_slice(tx, retired)
        self._commit(tx)
        if errors:
            raise TeardownError("releasing the slice of the torn-down overlay", errors)

    # -- service overlays ---------------------------------------------------
