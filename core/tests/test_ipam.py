"""IPAM: the built-in allocator, subnet carving and the port band, incl. stateful properties."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule

from overlayd.errors import AllocationError
from overlayd.errors import InvalidRequest
from overlayd.errors import PoolExhausted
from overlayd.ipam import PoolAllocator
from overlayd.ipam import PortBand
from overlayd.ipam import SubnetCarver
from overlayd.ipam import usable_range
from overlayd.model import Lease
from overlayd.model import Pool
from overlayd.state import MemoryStore


def pool(cidr: str, *reserved: str) -> Pool:
    return Pool(
        name="p",
        cidr=ipaddress.ip_network(cidr),
        reserved=tuple(ipaddress.ip_address(r) for r in reserved),
    )


def test_usable_range_excludes_network_and_broadcast() -> None:
    assert usable_range(ipaddress.ip_network("10.0.0.0/30")) == (1, 2)
    assert usable_range(ipaddress.ip_network("10.0.0.0/31")) == (0, 1)
    assert usable_range(ipaddress.ip_network("fd00::/126")) == (1, 3)


def test_fresh_addresses_first_then_least_recently_released() -> None:
    alloc = PoolAllocator(pool("10.0.0.0/29", "10.0.0.1"))
    got = [alloc.allocate("o").ip for _ in range(5)]
    assert [str(i) for i in got] == [f"10.0.0.{n}" for n in range(2, 7)]
    alloc.release(got[3])
    alloc.release(got[0])
    assert alloc.allocate("o").ip == got[3]
    assert alloc.allocate("o").ip == got[0]
    with pytest.raises(PoolExhausted):
        alloc.allocate("o")


def test_reload_keeps_leases_and_queues_holes() -> None:
    alloc = PoolAllocator(pool("10.0.0.0/24", "10.0.0.1"))
    leases = [alloc.allocate(f"o{i}") for i in range(10)]
    alloc.release(leases[2].ip)
    kept = list(alloc.leases.values())
    again = PoolAllocator(pool("10.0.0.0/24", "10.0.0.1"), kept)
    assert again.allocate("x").ip == ipaddress.ip_address("10.0.0.12")  # fresh first
    assert leases[2].ip not in {lease.ip for lease in again.leases.values()}


def test_reserve_rules() -> None:
    alloc = PoolAllocator(pool("10.0.0.0/29", "10.0.0.1"))
    with pytest.raises(AllocationError, match="network or broadcast"):
        alloc.reserve(ipaddress.ip_address("10.0.0.7"), "o")
    with pytest.raises(AllocationError, match="reserved"):
        alloc.reserve(ipaddress.ip_address("10.0.0.1"), "o")
    with pytest.raises(AllocationError, match=r"outside pool"):
        alloc.reserve(ipaddress.ip_address("10.0.1.1"), "o")
    with pytest.raises(AllocationError, match=r"outside pool"):
        alloc.reserve(ipaddress.ip_address("fd00::1"), "o")


def test_ipv6_pool() -> None:
    alloc = PoolAllocator(pool("fd00:200::/120", "fd00:200::1"))
    first = alloc.allocate("a").ip
    assert first == ipaddress.ip_address("fd00:200::2")
    assert alloc.capacity == 254


def test_subnet_carver_skips_excluded_and_reuses_released() -> None:
    parent = ipaddress.ip_network("10.200.0.0/20")
    carver = SubnetCarver(parent, 22, exclude=[ipaddress.ip_network("10.200.0.0/22")])
    a = carver.allocate()
    b = carver.allocate()
    assert (str(a), str(b)) == ("10.200.4.0/22", "10.200.8.0/22")
    carver.release(a)
    assert carver.allocate() == a
    carver.allocate()
    with pytest.raises(PoolExhausted, match=r"raise ipam\.service_prefix_v4"):
        carver.allocate()
    with pytest.raises(InvalidRequest):
        SubnetCarver(parent, 16)


def test_port_band_lowest_free_first_and_rehydrated() -> None:
    band = PortBand(51820, size=3, used=[51822])
    assert band.allocate() == 51821
    assert band.allocate() == 51823
    with pytest.raises(PoolExhausted):
        band.allocate()
    band.release(51821)
    assert band.allocate() == 51821


class IpamMachine(RuleBasedStateMachine):
    """Random allocate/release/reserve/reload sequences against a model.

    Invariants: never a duplicate, reserved, network/broadcast or out-of-pool
    address; reloading from the recorded leases (through a store) gives the
    same state at any point.
    """

    CIDR = ipaddress.ip_network("10.9.0.0/27")
    RESERVED = (ipaddress.ip_address("10.9.0.1"),)

    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool(name="p", cidr=self.CIDR, reserved=self.RESERVED)
        self.alloc = PoolAllocator(self.pool)
        self.store = MemoryStore()
        self.model: dict[str, str] = {}  # ip -> owner
        self.counter = 0

    def _persist(self, lease: Lease | None, removed: str | None = None) -> None:
        puts = {("lease", str(lease.ip)): lease.model_dump(mode="json")} if lease else {}
        deletes = [("lease", removed)] if removed else []
        self.store.commit(puts, deletes)

    @rule()
    def allocate(self) -> None:
        self.counter += 1
        owner = f"o{self.counter}"
        try:
            lease = self.alloc.allocate(owner)
        except PoolExhausted:
            assert len(self.model) == 30 - len(self.RESERVED)
            return
        ip = str(lease.ip)
        assert ip not in self.model, "duplicate address handed out"
        self.model[ip] = owner
        self._persist(lease)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def release(self, data: Any) -> None:
        ip = data.draw(st.sampled_from(sorted(self.model)))
        assert self.alloc.release(ipaddress.ip_address(ip)) is True
        assert self.alloc.release(ipaddress.ip_address(ip)) is False
        del self.model[ip]
        self._persist(None, ip)

    @rule(offset=st.integers(min_value=0, max_value=40))
    def reserve(self, offset: int) -> None:
        ip = ipaddress.ip_address(int(self.CIDR.network_address) + offset)
        self.counter += 1
        owner = f"r{self.counter}"
        try:
            lease = self.alloc.reserve(ip, owner)
        except AllocationError:
            bad = (
                ip not in self.CIDR
                or ip in self.RESERVED
                or ip in (self.CIDR.network_address, self.CIDR.broadcast_address)
                or str(ip) in self.model
            )
            assert bad, f"reserve of {ip} refused without reason"
            return
        assert str(ip) not in self.model
        self.model[str(ip)] = owner
        self._persist(lease)

    @rule()
    def reload(self) -> None:
        leases = [Lease.model_validate(v) for v in self.store.load().get("lease", {}).values()]
        self.alloc = PoolAllocator(self.pool, leases)

    @invariant()
    def matches_model(self) -> None:
        held = {str(lease.ip): lease.owner for lease in self.alloc.leases.values()}
        assert held == self.model
        for ip in held:
            addr = ipaddress.ip_address(ip)
            assert addr in self.CIDR
            assert addr not in self.RESERVED
            assert addr not in (self.CIDR.network_address, self.CIDR.broadcast_address)


TestIpamMachine = IpamMachine.TestCase
TestIpamMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
