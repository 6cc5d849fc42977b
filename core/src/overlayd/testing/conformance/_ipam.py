"""Conformance of a driver that holds its own address pools."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from overlayd.model import Capability
from overlayd.plugins import Hooks
from overlayd.plugins import driver_name
from overlayd.testing.conformance._base import DriverConformance
from overlayd.testing.conformance._base import _require


class IpamConformance(DriverConformance):
    """Address pools the driver owns (``Pool.driver`` is its name, as the engine
    stamps it under ``[ipam] driver``): never a duplicate, reserved, network or
    broadcast address; recorded leases survive a restart; the built-in
    allocator holds none of them; pools of other drivers are left alone."""

    @pytest.fixture(autouse=True)
    def _ipam_declared(
        self, request: pytest.FixtureRequest, capabilities: frozenset[Capability]
    ) -> None:
        # Only this class's own tests need the capability: a driver class that
        # mixes this kit with others (the fake driver takes every mixin) must
        # still run the others when it declares no IPAM.
        if request.function.__qualname__.startswith(f"{IpamConformance.__name__}."):
            _require(capabilities, Capability.IPAM)

    @pytest.fixture
    def pool(self, driver: object) -> Any:
        from overlayd.model import Pool

        return Pool(
            name="service:conf",
            cidr=ipaddress.ip_network("10.253.0.0/29"),
            reserved=(ipaddress.ip_address("10.253.0.1"),),
            driver=driver_name(driver),
        )

    def test_the_driver_holds_its_pools_not_the_builtin(self, hooks: Hooks, pool: Any) -> None:
        hooks.ipam_pool_create(pool, [])
        lease = hooks.ipam_allocate(pool, "o")
        assert lease.pool == pool.name and lease.ip in pool.cidr
        builtin = hooks.pm.get_plugin("builtin_ipam")
        assert builtin is None or builtin.pool(pool.name) is None
        assert hooks.ipam_pool_delete(pool) is True
        assert hooks.ipam_pool_delete(pool) is False

    def test_ignores_foreign_pool(self, hooks: Hooks, driver: object, pool: Any) -> None:
        foreign = pool.model_copy(update={"driver": "someone-else"})
        ip = ipaddress.ip_address("10.253.0.2")
        assert driver.overlayd_ipam_pool_create(pool=foreign, leases=[]) is None  # type: ignore[attr-defined]
        assert driver.overlayd_ipam_allocate(pool=foreign, owner="o") is None  # type: ignore[attr-defined]
        assert driver.overlayd_ipam_reserve(pool=foreign, ip=ip, owner="o") is None  # type: ignore[attr-defined]
        assert driver.overlayd_ipam_release(pool=foreign, ip=ip) is None  # type: ignore[attr-defined]
        assert driver.overlayd_ipam_pool_delete(pool=foreign) is None  # type: ignore[attr-defined]

    def test_recorded_leases_are_kept(self, hooks: Hooks, pool: Any) -> None:
        from overlayd.model import Lease

        held = [
            Lease(ip=ipaddress.ip_address(f"10.253.0.{n}"), pool=pool.name, owner=f"r{n}")
            for n in (2, 6)
        ]
        hooks.ipam_pool_create(pool, held)
        got = {hooks.ipam_allocate(pool, f"o{i}").ip for i in range(3)}
        assert got == {ipaddress.ip_address(f"10.253.0.{n}") for n in (3, 4, 5)}
        assert hooks.ipam_reserve(pool, held[0].ip, "r2").ip == held[0].ip
        assert hooks.ipam_release(pool, held[1].ip) is True
        assert hooks.ipam_allocate(pool, "late").ip == held[1].ip
        hooks.ipam_pool_delete(pool)

    def test_unknown_pool_is_not_found(self, hooks: Hooks, pool: Any) -> None:
        from overlayd.errors import NotFound

        with pytest.raises(NotFound):
            hooks.ipam_allocate(pool, "o")

    @pytest.fixture
    def subnet_request(self, driver: object) -> Any:
        from overlayd.model import OverlayMode
        from overlayd.model import SubnetRequest

        return SubnetRequest(
            service="conf",
            mode=OverlayMode.SHARED,
            cluster_cidr=ipaddress.ip_network("10.240.0.0/16"),
            slice_cidr=ipaddress.ip_network("10.240.16.0/20"),
            layout="carved",
            taken=(ipaddress.ip_network("10.240.16.0/22"),),
            driver=driver_name(driver),
        )

    def test_subnets_avoid_what_the_node_uses_until_released(
        self, hooks: Hooks, pool: Any, subnet_request: Any
    ) -> None:
        first = hooks.ipam_subnet_allocate(subnet_request)
        assert first.subnet_of(subnet_request.cluster_cidr)
        assert first.num_addresses >= 4
        assert not first.overlaps(subnet_request.taken[0])
        second = hooks.ipam_subnet_allocate(subnet_request)
        assert not second.overlaps(first)
        for subnet in (first, second):
            owned = pool.model_copy(update={"cidr": subnet})
            assert hooks.ipam_subnet_release(owned) is True
            assert hooks.ipam_subnet_release(owned) is False

    def test_ignores_foreign_subnet_request(
        self, driver: object, pool: Any, subnet_request: Any
    ) -> None:
        foreign = subnet_request.model_copy(update={"driver": "someone-else"})
        assert driver.overlayd_ipam_subnet_allocate(request=foreign) is None  # type: ignore[attr-defined]
        foreign_pool = pool.model_copy(update={"driver": "someone-else"})
        assert driver.overlayd_ipam_subnet_release(pool=foreign_pool) is None  # type: ignore[attr-defined]

    def test_allocates_every_usable_address_once_then_exhausts(
        self, hooks: Hooks, pool: Any
    ) -> None:
        from overlayd.errors import PoolExhausted

        hooks.ipam_pool_create(pool, [])
        got = [hooks.ipam_allocate(pool, f"o{i}").ip for i in range(5)]
        assert len(set(got)) == 5
        assert ipaddress.ip_address("10.253.0.0") not in got
        assert ipaddress.ip_address("10.253.0.7") not in got
        assert ipaddress.ip_address("10.253.0.1") not in got
        with pytest.raises(PoolExhausted):
            hooks.ipam_allocate(pool, "late")
        hooks.ipam_pool_delete(pool)

    def test_release_is_idempotent_and_outside_is_an_error(self, hooks: Hooks, pool: Any) -> None:
        from overlayd.errors import AllocationError

        hooks.ipam_pool_create(pool, [])
        lease = hooks.ipam_allocate(pool, "o")
        assert hooks.ipam_release(pool, lease.ip) is True
        assert hooks.ipam_release(pool, lease.ip) is False
        with pytest.raises(AllocationError):
            hooks.ipam_release(pool, ipaddress.ip_address("10.99.0.1"))
        hooks.ipam_pool_delete(pool)

    def test_reserve_specific_address(self, hooks: Hooks, pool: Any) -> None:
        from overlayd.errors import AllocationError

        hooks.ipam_pool_create(pool, [])
        ip = ipaddress.ip_address("10.253.0.5")
        assert hooks.ipam_reserve(pool, ip, "a").ip == ip
        assert hooks.ipam_reserve(pool, ip, "a").ip == ip
        with pytest.raises(AllocationError):
            hooks.ipam_reserve(pool, ip, "b")
        with pytest.raises(AllocationError):
            hooks.ipam_reserve(pool, ipaddress.ip_address("10.253.0.1"), "a")
        assert all(hooks.ipam_allocate(pool, "x").ip != ip for _ in range(4))
        hooks.ipam_pool_delete(pool)
