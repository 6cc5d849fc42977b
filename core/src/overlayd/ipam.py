"""The built-in IP allocator (a plugin on the ``ipam`` hooks) and subnet/port carving.

Reuse policy (deliberate, see docs): a pool hands out never-used addresses
first, in ascending order; only when those run out does it reuse released
addresses, least recently released first. A released address therefore rests
as long as the pool allows before it comes back, which gives stale ARP
entries, DNS caches and conntrack flows for it the longest time to expire
(immediate reuse, as CNI host-local does after a restart, routes old flows to a
new container).

Costs: allocate and release are O(1) amortised (a forward cursor over the
never-used space plus a FIFO of released addresses with lazy deletion);
reserve is O(1). Loading a pool from N leases is O(N) plus one pass over the
used prefix of the pool to queue holes left by releases before the restart.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import TypeVar

from overlayd.errors import AllocationError
from overlayd.errors import InvalidRequest
from overlayd.errors import NotFound
from overlayd.errors import PoolExhausted
from overlayd.hookspecs import hookimpl
from overlayd.model import IPAddress
from overlayd.model import IPNetwork
from overlayd.model import Lease
from overlayd.model import Pool

_T = TypeVar("_T")

__all__ = [
    "BuiltinIpam",
    "PoolAllocator",
    "PortBand",
    "SubnetCarver",
    "usable_range",
]


def usable_range(net: IPNetwork) -> tuple[int, int]:
    """First and last assignable offsets of ``net`` (excludes network/broadcast)."""
    size = net.num_addresses
    if net.version == 4:
        if size <= 2:  # /31 and /32: RFC 3021 point-to-point, every address usable
            return 0, size - 1
        return 1, size - 2
    if size <= 2:
        return 0, size - 1
    # IPv6: offset 0 is the subnet-router anycast address; there is no broadcast.
    return 1, size - 1


class PoolAllocator:
    """Address allocation in one pool. Not thread-safe; :class:`BuiltinIpam` locks."""

    def __init__(self, pool: Pool, leases: Iterable[Lease] = ()) -> None:
        self.pool = pool
        self.net = pool.cidr
        self._base = int(self.net.network_address)
        self._first, self._last = usable_range(self.net)
        self._reserved: set[int] = set()
        for ip in pool.reserved:
            self._reserved.add(self._offset(ip, what="reserved address"))
        self.leases: dict[int, Lease] = {}
        self._released: deque[int] = deque()
        self._cursor = self._first
        top = self._first - 1
        for lease in leases:
            off = self._offset(lease.ip, what="recorded lease")
            self.leases[off] = lease
            top = max(top, off)
        if top >= self._first:
            # Holes below the highest lease were released before the restart.
            self._cursor = top + 1
            self._released.extend(
                o
                for o in range(self._first, top + 1)
                if o not in self.leases and o not in self._reserved
            )

    def _offset(self, ip: IPAddress, *, what: str = "address") -> int:
        if ip.version != self.net.version or ip not in self.net:
            raise AllocationError(f"{what} {ip} is outside pool {self.pool.name} ({self.net})")
        return int(ip) - self._base

    def _address(self, off: int) -> IPAddress:
        return ipaddress.ip_address(self._base + off)

    @property
    def capacity(self) -> int:
        return (
            self._last
            - self._first
            + 1
            - len([r for r in self._reserved if self._first <= r <= self._last])
        )

    def allocate(self, owner: str) -> Lease:
        while self._cursor <= self._last:
            off = self._cursor
            self._cursor += 1
            if off not in self.leases and off not in self._reserved:
                return self._take(off, owner)
        while self._released:
            off = self._released.popleft()
            if off not in self.leases and off not in self._reserved:
                return self._take(off, owner)
        raise PoolExhausted(
            f"pool {self.pool.name} ({self.net}) has no free address left "
            f"({len(self.leases)} leased)"
        )

    def _take(self, off: int, owner: str) -> Lease:
        lease = Lease(
            ip=self._address(off),
            pool=self.pool.name,
            owner=owner,
            created_unix_secs=int(time.time()),
        )
        self.leases[off] = lease
        return lease

    def reserve(self, ip: IPAddress, owner: str) -> Lease:
        off = self._offset(ip)
        if not self._first <= off <= self._last:
            raise AllocationError(
                f"{ip} is the network or broadcast address of {self.net} and cannot be leased"
            )
        if off in self._reserved:
            raise AllocationError(f"{ip} is reserved in pool {self.pool.name} (gateway or node)")
        held = self.leases.get(off)
        if held is not None:
            if held.owner == owner:
                return held
            raise AllocationError(f"{ip} is already leased in pool {self.pool.name}")
        return self._take(off, owner)

    def release(self, ip: IPAddress) -> bool:
        off = self._offset(ip)
        if self.leases.pop(off, None) is None:
            return False
        self._released.append(off)
        return True

    def owner_of(self, ip: IPAddress) -> str | None:
        lease = self.leases.get(self._offset(ip))
        return lease.owner if lease else None


class BuiltinIpam:
    """The default allocator for every pool, registered ``trylast`` by the engine."""

    name = "builtin_ipam"

    def __init__(self) -> None:
        self._pools: dict[str, PoolAllocator] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _get(self, pool: Pool) -> tuple[PoolAllocator, threading.Lock]:
        with self._guard:
            alloc = self._pools.get(pool.name)
            if alloc is None:
                raise NotFound(f"address pool {pool.name!r} does not exist")
            return alloc, self._locks[pool.name]

    def pool(self, name: str) -> PoolAllocator | None:
        return self._pools.get(name)

    @hookimpl(trylast=True)
    def overlayd_ipam_pool_create(self, pool: Pool, leases: Sequence[Lease]) -> bool | None:
        if pool.driver not in (None, self.name):
            return None
        with self._guard:
            existing = self._pools.get(pool.name)
            if existing is not None:
                if existing.net != pool.cidr:
                    raise InvalidRequest(
                        f"pool {pool.name} exists with {existing.net}, not {pool.cidr}"
                    )
                return True
            self._pools[pool.name] = PoolAllocator(pool, leases)
            self._locks[pool.name] = threading.Lock()
        return True

    @hookimpl(trylast=True)
    def overlayd_ipam_pool_delete(self, pool: Pool) -> bool | None:
        if pool.driver not in (None, self.name):
            return None
        with self._guard:
            self._locks.pop(pool.name, None)
            return self._pools.pop(pool.name, None) is not None

    def _locked(self, pool: Pool, use: Callable[[PoolAllocator], _T]) -> _T | None:
        """``use(allocator)`` under the pool's lock; ``None`` for another driver's pool."""
        if pool.driver not in (None, self.name):
            return None
        alloc, lock = self._get(pool)
        with lock:
            return use(alloc)

    @hookimpl(trylast=True)
    def overlayd_ipam_allocate(self, pool: Pool, owner: str) -> Lease | None:
        return self._locked(pool, lambda alloc: alloc.allocate(owner))

    @hookimpl(trylast=True)
    def overlayd_ipam_reserve(self, pool: Pool, ip: IPAddress, owner: str) -> Lease | None:
        return self._locked(pool, lambda alloc: alloc.reserve(ip, owner))

    @hookimpl(trylast=True)
    def overlayd_ipam_release(self, pool: Pool, ip: IPAddress) -> bool | None:
        return self._locked(pool, lambda alloc: alloc.release(ip))


class SubnetCarver:
    """Carves aligned blocks of one prefix length out of a parent network.

    Blocks overlapping ``exclude`` are never handed out. Lowest free block first
    (subnets are few; deterministic placement makes them predictable).
    """

    def __init__(self, parent: IPNetwork, prefix: int, exclude: Iterable[IPNetwork] = ()) -> None:
        if prefix < parent.prefixlen:
            raise InvalidRequest(
                f"cannot carve /{prefix} subnets from {parent}: the prefix is shorter"
            )
        self.parent = parent
        self.prefix = prefix
        self._exclude = list(exclude)
        self._used: set[IPNetwork] = set()
        self._count = 1 << (prefix - parent.prefixlen)
        self._step = 1 << (parent.max_prefixlen - prefix)

    def _block(self, index: int) -> IPNetwork:
        base = int(self.parent.network_address) + index * self._step
        return ipaddress.ip_network((base, self.prefix))

    def mark_used(self, net: IPNetwork) -> None:
        self._used.add(net)

    def release(self, net: IPNetwork) -> None:
        self._used.discard(net)

    def allocate(self) -> IPNetwork:
        for index in range(self._count):
            block = self._block(index)
            if block in self._used or any(block.overlaps(x) for x in self._exclude):
                continue
            self._used.add(block)
            return block
        raise PoolExhausted(
            f"no free /{self.prefix} subnet left in {self.parent} "
            f"({len(self._used)} in use); raise ipam.service_prefix_v{self.parent.version}"
        )


class PortBand:
    """Listen ports for dedicated devices: ``size`` ports above ``base``, lowest free first."""

    def __init__(self, base: int, size: int = 256, used: Iterable[int] = ()) -> None:
        self.base = base
        self.size = size
        self._used = set(used)

    def reserve(self, port: int) -> None:
        self._used.add(port)

    def release(self, port: int) -> None:
        self._used.discard(port)

    def allocate(self) -> int:
        for port in range(self.base + 1, min(self.base + self.size, 65535) + 1):
            if port not in self._used:
                self._used.add(port)
                return port
        raise PoolExhausted(
            f"no free dedicated listen port in {self.base + 1}-{self.base + self.size}"
        )
