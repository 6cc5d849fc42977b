"""A minimal IPAM driver: it takes over the address pools it is given.

Name it in ``[ipam] driver = "example_ipam"`` (with ``example_ipam`` among the
loaded drivers) and the engine stamps every pool with it: this driver then
answers every IPAM hook for them and the built-in allocator none. Its policy is
visibly not the built-in one: the highest free address first, and service
subnets (blocks of a sixteenth of the node slice) from the top of the slice
down. Pools and requests stamped for another driver are not its business
(``None``).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from collections.abc import Sequence

from overlayd import DRIVER_API
from overlayd import hookimpl
from overlayd.errors import AllocationError
from overlayd.errors import InvalidRequest
from overlayd.errors import NotFound
from overlayd.errors import PoolExhausted
from overlayd.model import Capability
from overlayd.model import DriverInfo
from overlayd.model import IPAddress
from overlayd.model import IPNetwork
from overlayd.model import Lease
from overlayd.model import Pool
from overlayd.model import SubnetRequest


class _Pool:
    def __init__(self, pool: Pool, leases: Sequence[Lease]) -> None:
        self.pool = pool
        self.leases: dict[IPAddress, Lease] = {}
        for lease in leases:
            self.check(lease.ip)
            self.leases[lease.ip] = lease

    def check(self, ip: IPAddress) -> None:
        if ip.version != self.pool.cidr.version or ip not in self.pool.cidr:
            raise AllocationError(f"{ip} is outside pool {self.pool.name} ({self.pool.cidr})")

    def usable(self) -> Iterator[IPAddress]:
        """Assignable addresses, highest first (no network, broadcast or reserved one)."""
        net = self.pool.cidr
        base, size = int(net.network_address), net.num_addresses
        low, high = (0, size - 1) if size <= 2 else (1, size - (2 if net.version == 4 else 1))
        for offset in range(high, low - 1, -1):
            ip = ipaddress.ip_address(base + offset)
            if ip not in self.pool.reserved:
                yield ip

    def take(self, ip: IPAddress, owner: str) -> Lease:
        lease = Lease(ip=ip, pool=self.pool.name, owner=owner, created_unix_secs=int(time.time()))
        self.leases[ip] = lease
        return lease


class ExampleIpam:
    """Address pools kept in dictionaries, handed out from the top."""

    name = "example_ipam"

    def __init__(self) -> None:
        self.pools: dict[str, _Pool] = {}
        self.subnets: set[IPNetwork] = set()
        self._lock = threading.Lock()

    def _mine(self, pool: Pool) -> bool:
        return pool.driver == self.name

    def _get(self, pool: Pool) -> _Pool:
        """The pool's state; NotFound when it was never created (or was deleted)."""
        held = self.pools.get(pool.name)
        if held is None:
            raise NotFound(f"address pool {pool.name!r} does not exist")
        return held

    @hookimpl
    def overlayd_describe(self) -> DriverInfo:
        return DriverInfo(name=self.name, api=DRIVER_API, capabilities=frozenset({Capability.IPAM}))

    @hookimpl
    def overlayd_ipam_pool_create(self, pool: Pool, leases: Sequence[Lease]) -> bool | None:
        if not self._mine(pool):
            return None
        with self._lock:
            held = self.pools.get(pool.name)
            if held is not None and held.pool.cidr != pool.cidr:
                raise InvalidRequest(f"pool {pool.name} exists with {held.pool.cidr}")
            if held is None:
                self.pools[pool.name] = _Pool(pool, leases)
            if pool.name.startswith("service:"):
                self.subnets.add(pool.cidr)  # a service subnet in use (also after a restart)
        return True

    @hookimpl
    def overlayd_ipam_pool_delete(self, pool: Pool) -> bool | None:
        if not self._mine(pool):
            return None
        with self._lock:
            return self.pools.pop(pool.name, None) is not None

    @hookimpl
    def overlayd_ipam_allocate(self, pool: Pool, owner: str) -> Lease | None:
        if not self._mine(pool):
            return None
        with self._lock:
            held = self._get(pool)
            for ip in held.usable():
                if ip not in held.leases:
                    return held.take(ip, owner)
        raise PoolExhausted(f"pool {pool.name} ({pool.cidr}) has no free address left")

    @hookimpl
    def overlayd_ipam_reserve(self, pool: Pool, ip: IPAddress, owner: str) -> Lease | None:
        if not self._mine(pool):
            return None
        with self._lock:
            held = self._get(pool)
            held.check(ip)
            if ip not in set(held.usable()):
                raise AllocationError(f"{ip} cannot be leased in pool {pool.name}")
            lease = held.leases.get(ip)
            if lease is not None and lease.owner != owner:
                raise AllocationError(f"{ip} is already leased in pool {pool.name}")
            return lease or held.take(ip, owner)

    @hookimpl
    def overlayd_ipam_release(self, pool: Pool, ip: IPAddress) -> bool | None:
        if not self._mine(pool):
            return None
        with self._lock:
            held = self._get(pool)
            held.check(ip)
            return held.leases.pop(ip, None) is not None

    @hookimpl
    def overlayd_ipam_subnet_allocate(self, request: SubnetRequest) -> IPNetwork | None:
        if request.driver != self.name:
            return None
        blocks = list(request.slice_cidr.subnets(prefixlen_diff=4))
        with self._lock:
            for block in reversed(blocks):
                busy = [*request.taken, *self.subnets]
                if not any(block.overlaps(other) for other in busy):
                    self.subnets.add(block)
                    return block
        raise PoolExhausted(f"no free block of {request.slice_cidr} for {request.service}")

    @hookimpl
    def overlayd_ipam_subnet_release(self, pool: Pool) -> bool | None:
        if not self._mine(pool):
            return None
        with self._lock:
            if pool.cidr not in self.subnets:
                return False
            self.subnets.discard(pool.cidr)
            return True
