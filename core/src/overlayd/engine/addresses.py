"""Addresses the orchestrator leases for itself (``allocate_ip`` / ``release_ip``).

Every address the engine hands out comes from the IPAM hooks
(:func:`overlayd.hookspecs.overlayd_ipam_allocate` and friends), called
through the hook facade with the pool the engine built for it.
"""

from __future__ import annotations

from overlayd.errors import AllocationError
from overlayd.errors import Conflict
from overlayd.errors import StateError
from overlayd.model import IPAddress
from overlayd.model import Pool

from .base import NODE_POOL
from .base import EngineBase
from .base import owner_of
from .work import Tx

__all__ = ["AddressesMixin"]


class AddressesMixin(EngineBase):
    """Manual leases."""

    async def allocate_ip(self, service: str, join_global: bool = False) -> IPAddress:
        """Lease an address for the orchestrator's own use (owner ``manual``)."""
        self._require_started()
        self._check_name("service name", service)
        async with self._locks.hold(("global", False), (f"service:{service}", False)):
            svc = self._service(service)
            pool = self._node_pool() if join_global else self._pool_for(svc)
            return await self._run(self._allocate_manual, pool)

    def _allocate_manual(self, pool: Pool) -> IPAddress:
        lease = self.hooks.ipam_allocate(pool, "manual")
        key = f"{lease.pool}|{lease.ip}"
        tx = Tx()
        tx.put("lease", key, lease)
        tx.after.append(lambda: self.manual_leases.__setitem__(key, lease))
        try:
            self._commit(tx)
        except StateError:
            self.hooks.ipam_release(pool, lease.ip)
            raise
        return lease.ip

    def _pool_containing(self, ip: IPAddress) -> Pool | None:
        if self._layout is not None:
            node = self._node_pool()
            if ip in node.cidr:
                return node
        with self._mem:
            services = list(self.services.values())
        for svc in services:
            if ip in svc.subnet:
                return self._pool_for(svc)
        return None

    async def release_ip(self, ip: str | IPAddress) -> None:
        """Release a manual lease. Outside every pool is an error; a free address is fine."""
        self._require_started()
        addr = self._parse_ip("ip", ip)
        pool = self._pool_containing(addr)
        if pool is None:
            raise AllocationError(f"{addr} is not in any address pool of this node")
        service = pool.name.partition(":")[2]
        locks: list[tuple[str, bool]] = [("global", False)]
        if service:
            locks.append((f"service:{service}", False))
        async with self._locks.hold(*locks):
            key = f"{pool.name}|{addr}"
            if key not in self.manual_leases:
                holder = self._lease_owner(pool, addr)
                if holder and holder.startswith("handle:"):
                    raise Conflict(
                        f"{addr} belongs to the attachment of {holder[7:]}; detach it instead"
                    )
                return
            await self._run(self._release_manual, pool, addr, key)

    def _lease_owner(self, pool: Pool, addr: IPAddress) -> str | None:
        """The attachment holding ``addr`` in ``pool`` by the engine's records, if any.

        The records, not the allocator, are asked: whichever plugin answers
        IPAM for the pool, an attachment's address is the attachment's.
        """
        with self._mem:
            for key, att in self.attachments.items():
                if att.global_ip == addr and pool.name == NODE_POOL:
                    return owner_of(key)
                svc = self.services.get(att.service)
                if att.ip == addr and svc is not None and self._pool_for(svc).name == pool.name:
                    return owner_of(key)
        return None

    def _release_manual(self, pool: Pool, addr: IPAddress, key: str) -> None:
        tx = Tx()
        tx.delete("lease", key)
        tx.after.append(lambda: self.manual_leases.pop(key, None))
        self._commit(tx)
        self.hooks.ipam_release(pool, addr)

    # -- attach / detach ----------------------------------------------------
