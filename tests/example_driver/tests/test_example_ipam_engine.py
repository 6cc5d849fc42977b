"""An IPAM driver outside core owning the node's pools, driven through the engine.

With ``[ipam] driver = "example_ipam"`` every pool the engine builds is stamped
with that driver, which then answers every IPAM call for it: its
highest-first policy shows in the addresses attach and ``allocate_ip`` hand
out, the built-in allocator holds none of the pools, and the leases come back
to the driver after a restart.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from overlayd_example.ipam import ExampleIpam

from overlayd import hookimpl
from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.config import IpamSettings
from overlayd.engine import Engine
from overlayd.errors import ConfigError
from overlayd.errors import Conflict
from overlayd.errors import DriverError
from overlayd.model import IPNetwork
from overlayd.model import SubnetRequest
from overlayd.testing.nodes import lone_engine
from overlayd.testing.nodes import lone_node
from overlayd_fake.driver import FakeDriver

PID = {"platform": "linux_pid", "pid": 4242}
ip = ipaddress.ip_address


def _config(data_dir: Path | None, driver: str | None = "example_ipam") -> EngineConfig:
    return EngineConfig(
        drivers=[],
        data_dir=data_dir,
        dns=DnsSettings(enabled=False),
        engine=EngineSettings(health_interval_secs=0),
        ipam=IpamSettings(driver=driver),
    )


async def _set_up(engine: Engine) -> None:
    await engine.setup_global_overlay(**lone_node())
    await engine.setup_service_overlay("web", "shared")


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[Engine, ExampleIpam]]:
    ipam = ExampleIpam()
    async with lone_engine(_config(tmp_path / "data"), [FakeDriver(), ipam], "web") as eng:
        yield eng, ipam


async def test_the_ipam_driver_answers_for_every_pool(
    engine: tuple[Engine, ExampleIpam],
) -> None:
    eng, ipam = engine
    svc = eng.services["web"]
    # Carved by the driver from the top of the slice (the built-in: 10.200.4.0/22).
    assert svc.subnet == ipaddress.ip_network("10.200.15.0/24")
    assert ipam.subnets == {svc.subnet}
    att = await eng.attach(PID, "web", join_global=True)
    # Highest free first: the built-in allocator would have answered the lowest.
    assert att.ip == ip("10.200.15.254")
    assert att.global_ip == ip("10.200.3.254")
    assert set(ipam.pools) == {"node", "service:web"}
    assert ip("10.200.15.254") in ipam.pools["service:web"].leases
    builtin = eng.pm.get_plugin("builtin_ipam")
    assert builtin.pool("node") is None and builtin.pool("service:web") is None

    manual = await eng.allocate_ip("web")
    assert manual == ip("10.200.15.253")
    # The attachment's address is the attachment's, whoever allocates the pool.
    with pytest.raises(Conflict, match="belongs to the attachment"):
        await eng.release_ip(att.ip)
    await eng.release_ip(manual)
    assert manual not in ipam.pools["service:web"].leases

    assert await eng.detach(PID)
    assert ipam.pools["service:web"].leases == {}
    assert ipam.pools["node"].leases == {}


async def test_leases_come_back_to_the_driver_after_a_restart(tmp_path: Path) -> None:
    host = FakeDriver()  # the host outlives the daemon
    first = ExampleIpam()
    async with Engine(_config(tmp_path), drivers=[host, first]) as eng:
        await _set_up(eng)
        att = await eng.attach(PID, "web")
        kept = await eng.allocate_ip("web")
    second = ExampleIpam()
    async with Engine(_config(tmp_path), drivers=[host, second]) as eng:
        held = second.pools["service:web"].leases
        assert set(held) == {att.ip, kept}
        assert held[att.ip].owner == f"handle:{att.key}"
        assert await eng.allocate_ip("web") == ip("10.200.15.252")
        # The driver learnt the subnet in use from the service's pool at start.
        assert second.subnets == {ipaddress.ip_network("10.200.15.0/24")}
        await eng.teardown_service_overlay("web")
        assert "service:web" not in second.pools
        assert second.subnets == set()


class OverlappingIpam(ExampleIpam):
    """Answers the node pool's block: a subnet the node already uses."""

    @hookimpl
    def overlayd_ipam_subnet_allocate(self, request: SubnetRequest) -> IPNetwork | None:
        return request.taken[0]


async def test_a_subnet_the_node_uses_is_refused_and_nothing_changes() -> None:
    ipam = OverlappingIpam()
    async with Engine(_config(None), drivers=[FakeDriver(), ipam]) as eng:
        with pytest.raises(DriverError, match=r"overlaps 10\.200\.0\.0/22"):
            await _set_up(eng)
        assert eng.services == {}
        assert set(ipam.pools) == {"node"}


@pytest.mark.parametrize(
    ("name", "message"),
    [("nope", "is not a loaded driver"), ("fake", "does not declare the ipam capability")],
)
def test_an_ipam_driver_that_cannot_own_pools_is_refused(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Engine(_config(None, driver=name), drivers=[FakeDriver(), ExampleIpam()])
