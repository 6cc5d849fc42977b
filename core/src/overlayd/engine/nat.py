"""NAT: port mappings (an extension op) and the NAT traversal tick.

Masquerading of the node slice belongs to the global overlay
(:mod:`overlayd.engine.global_overlay`); NAT traversal itself (candidates,
connectivity checks, relays) is :mod:`overlayd.nat`, which the engine drives
through :mod:`overlayd.nat.host`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from overlayd.checks import check_port_target
from overlayd.errors import Conflict
from overlayd.errors import OverlaydError
from overlayd.errors import StateError
from overlayd.model import Event
from overlayd.model import PortMapping

from .base import EngineBase
from .work import Tx

__all__ = ["NatMixin"]

log = logging.getLogger(__name__)


class NatMixin(EngineBase):
    """Port mappings and NAT traversal."""

    async def add_port_mapping(self, mapping: PortMapping) -> None:
        self._require_started()
        check_port_target(mapping.container_ip, self.global_.cluster_cidr if self.global_ else None)
        key = f"{mapping.protocol}/{mapping.host_ip or '*'}/{mapping.host_port}"
        async with self._locks.hold((f"portmap:{key}", True)):
            existing = self.port_mappings.get(key)
            if existing == mapping:
                return
            if existing is not None:
                raise Conflict(
                    f"host port {mapping.protocol}/{mapping.host_port} is already mapped to "
                    f"{existing.container_ip}:{existing.container_port}"
                )
            await self._run(self._port_mapping, key, mapping, True)

    async def remove_port_mapping(self, mapping: PortMapping) -> None:
        self._require_started()
        key = f"{mapping.protocol}/{mapping.host_ip or '*'}/{mapping.host_port}"
        async with self._locks.hold((f"portmap:{key}", True)):
            if key in self.port_mappings:
                await self._run(self._port_mapping, key, self.port_mappings[key], False)

    def _port_mapping(self, key: str, mapping: PortMapping, enable: bool) -> None:
        self.hooks.nat_port_mapping(mapping, enable)
        tx = Tx()
        if enable:
            tx.put("portmap", key, mapping)
            tx.after.append(lambda: self.port_mappings.__setitem__(key, mapping))
        else:
            tx.delete("portmap", key)
            tx.after.append(lambda: self.port_mappings.pop(key, None))
        try:
            self._commit(tx)
        except StateError:
            self.hooks.nat_port_mapping(mapping, not enable)
            raise

    # -- status, health, NAT tick -------------------------------------------

    async def nat_peer_candidates(self, public_key: str, candidates: Sequence[Any]) -> None:
        """Pass a peer's NAT candidates (from its ``status``) to this node."""
        self._require_started()
        from overlayd.nat import host  # only where NAT is used (EngineBase._start_nat)

        await host.set_peer_candidates(self, public_key, candidates)

    async def nat_tick(self) -> list[Event]:
        """Refresh NAT traversal: gather candidates, notice peers whose endpoint moved.

        With the NAT agent running (:mod:`overlayd.nat`) this is a full refresh:
        candidates gathered and published, every managed peer's path
        re-checked (the agent emits their events); other peers are watched
        for endpoint changes as before.
        """
        self._require_started()
        events: list[Event] = []
        g = self.global_
        if g is None:
            return events
        managed: set[tuple[str, str]] = set()
        if self.nat is not None:
            await self.nat.tick()
            managed = {(self.nat.device.name, key) for key in self.nat.peers}
        for device in self._wg_devices():
            if g.nat_enabled and self.nat is None:
                try:
                    await self._run(self.hooks.nat_candidates, device)
                except OverlaydError as exc:
                    log.warning("NAT candidates for %s failed: %s", device.name, exc)
            peers = await self._read_peers(device, "the NAT tick")
            if peers is None:
                continue
            for peer in peers:
                key = (device.name, peer.public_key)
                if key in managed:
                    continue  # the NAT agent reports its peers' paths itself
                before = self._endpoints.get(key)
                if key in self._endpoints and peer.endpoint and before != peer.endpoint:
                    events.append(
                        Event(
                            event="nat_endpoint_changed",
                            pubkey=peer.public_key,
                            endpoint=peer.endpoint,
                        )
                    )
                self._endpoints[key] = peer.endpoint
        for event in events:
            self.emit(event)
        return events

    # -- listings, GC, reconcile --------------------------------------------
