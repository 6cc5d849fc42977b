"""Peers: batches of peer changes applied to one WireGuard device in one transaction.

The merge rules (what a change does to the recorded peers, including prefixes
that move between peers) are :mod:`overlayd.peers`, the same merge the
drivers apply, so what is recorded is what the device holds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from overlayd.checks import check_peer_changes
from overlayd.errors import InvalidRequest
from overlayd.errors import NotFound
from overlayd.errors import StateError
from overlayd.errors import quote
from overlayd.model import Device
from overlayd.model import IPNetwork
from overlayd.model import PeerChange
from overlayd.model import PeerScope

from .base import EngineBase
from .validation import build_change
from .work import Tx

__all__ = ["PeersMixin"]


class PeersMixin(EngineBase):
    """Peer changes of the global and dedicated devices."""

    def _device_for(self, scope: PeerScope) -> Device:
        if scope.is_global:
            return self._global().device
        assert scope.service is not None
        svc = self._service(scope.service)
        if svc.dedicated is None:
            raise InvalidRequest(
                f"service {quote(scope.service)} runs in shared mode and has no dedicated "
                "device; address its peers with the global scope"
            )
        return svc.dedicated

    async def apply_peers(
        self, changes: Sequence[PeerChange], scope: PeerScope | None = None
    ) -> None:
        """Apply a batch of peer changes to one device in one transaction."""
        self._require_started()
        scope = scope or PeerScope()
        locks: list[tuple[str, bool]] = [("global", False)]
        if scope.service:
            locks.append((f"service:{scope.service}", False))
        async with self._locks.hold(*locks):
            device = self._device_for(scope)
            check_peer_changes(changes, own_keys=self._own_keys(), own_nets=self._own_nets())
            async with self._locks.hold((f"device:{device.name}", True)):
                await self._run(self._apply_peers, device, list(changes))

    def _own_nets(self) -> list[IPNetwork]:
        """The addresses only this node serves: its slice, or, when the slice is
        the whole cluster (no ``slice_cidr`` given), its address, node pool and
        service subnets."""
        with self._mem:
            g = self.global_
            if g is None:
                return []
            if g.slice_cidr != g.cluster_cidr:
                return [g.slice_cidr]
            nets = [self._node_pool().cidr, ipaddress.ip_network(g.node_ip)]
            return nets + [svc.subnet for svc in self.services.values()]

    def _own_keys(self) -> dict[str, str]:
        """Public keys of this node's own WireGuard devices (and the one ZLayer set)."""
        out = {d.public_key: d.name for d in self._wg_devices() if d.public_key}
        if self.local_wg_pubkey:
            out.setdefault(self.local_wg_pubkey, "set with set_local_wg_pubkey")
        return out

    def _apply_peers(self, device: Device, changes: list[PeerChange]) -> None:
        # The same merge the drivers apply (overlayd.peers): what is recorded is
        # what the device holds, including prefixes that moved between peers.
        table = self._peer_table(device.name)
        merged = table.preview(changes)
        restore = table.undo_changes(merged)
        self.hooks.peer_apply(device, changes)
        tx = Tx()
        self._record_peers(tx, table, merged)
        try:
            self._commit(tx)
        except StateError:
            # Put the device back as it was recorded.
            self.hooks.peer_apply(device, restore)
            raise

    async def add_peer(
        self,
        public_key: str,
        endpoint: str | None,
        allowed_ips: str | Sequence[str | IPNetwork],
        persistent_keepalive_secs: int = 0,
        scope: PeerScope | None = None,
    ) -> None:
        """Add a peer (or replace its settings), ZLayer's ``add_peer``."""
        change = build_change(
            public_key=public_key,
            endpoint=endpoint,
            allowed_ips=allowed_ips,
            keepalive=persistent_keepalive_secs,
        )
        await self.apply_peers([change], scope)

    async def remove_peer(self, public_key: str, scope: PeerScope | None = None) -> None:
        await self.apply_peers([build_change(public_key=public_key, remove=True)], scope)

    async def add_allowed_ip(
        self, public_key: str, cidr: str | IPNetwork, scope: PeerScope | None = None
    ) -> None:
        net = self._parse_net("cidr", cidr)
        self._require_peer(public_key, scope)
        await self.apply_peers([build_change(public_key=public_key, add_allowed_ips=(net,))], scope)

    async def remove_allowed_ip(
        self, public_key: str, cidr: str | IPNetwork, scope: PeerScope | None = None
    ) -> None:
        net = self._parse_net("cidr", cidr)
        self._require_peer(public_key, scope)
        await self.apply_peers(
            [build_change(public_key=public_key, remove_allowed_ips=(net,))], scope
        )

    def _require_peer(self, public_key: str, scope: PeerScope | None) -> None:
        device = self._device_for(scope or PeerScope())
        if public_key not in self.peers.get(device.name, ()):
            raise NotFound(
                f"peer {public_key} is not on device {device.name}; add it with add_peer first"
            )

    # -- DNS ----------------------------------------------------------------
