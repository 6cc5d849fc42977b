"""Engine semantics on the fake driver: idempotency, rollback, locking, bad input."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import AsyncIterator
from collections.abc import Iterator
from typing import Any

import pytest

from overlayd import hookimpl
from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.engine import Engine
from overlayd.engine.dnsview import DnsEntry
from overlayd.errors import AllocationError
from overlayd.errors import AttachError
from overlayd.errors import ConfigError
from overlayd.errors import Conflict
from overlayd.errors import DeviceError
from overlayd.errors import DnsError
from overlayd.errors import InvalidRequest
from overlayd.errors import NatError
from overlayd.errors import NotFound
from overlayd.errors import PeerError
from overlayd.errors import PoolExhausted
from overlayd.errors import StateError
from overlayd.model import DnsRecord
from overlayd.model import LinuxPidHandle
from overlayd.model import PeerScope
from overlayd.model import ServiceOverlay
from overlayd.state import MemoryStore
from overlayd.testing.nodes import lone_engine
from overlayd.testing.nodes import lone_node
from overlayd_fake.driver import FakeDriver

KEY1 = "aDlk2hH3mTqJq8DVRk9f0lZ0n3Hk0Jm0bZ4rK1d3CUk="
KEY2 = "cHZ7Fq1vJdNq1PkE3XtKx8U1lWkqH4Qm2D6b1tWYn2w="
PID = {"platform": "linux_pid", "pid": 4242}
GUEST = {"platform": "guest_managed", "id": "vm"}


class FlakyStore(MemoryStore):
    """A MemoryStore whose next commit can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    def commit(self, puts: Any, deletes: Any = ()) -> None:
        if self.fail:
            self.fail = False
            raise StateError("disk full (injected)")
        super().commit(puts, deletes)


class DnsProbe:
    """A plugin observing DNS hooks; can be armed to fail."""

    name = "dnsprobe"

    def __init__(self) -> None:
        self.records: set[tuple[str, str]] = set()
        self.fail = False
        self.serving: tuple[str, list[str]] | None = None

    @hookimpl
    def overlayd_dns_records_changed(self, added: Any, removed: Any) -> None:
        if self.fail:
            self.fail = False
            raise DnsError("dns server refused (injected)")
        for rec in removed:
            self.records.discard((rec.name, str(rec.ip)))
        for rec in added:
            self.records.add((rec.name, str(rec.ip)))

    @hookimpl
    def overlayd_dns_serve(self, zone: str, addresses: Any) -> None:
        self.serving = (zone, list(addresses))


@pytest.fixture
def config() -> EngineConfig:
    return EngineConfig(
        drivers=[],
        dns=DnsSettings(enabled=False),
        engine=EngineSettings(health_interval_secs=0),
    )


@pytest.fixture(params=[False, True], ids=["attach-then-write", "planned"])
def fake(request: pytest.FixtureRequest) -> FakeDriver:
    """The fake driver, without and with attach plans: every test here holds
    for both orders of an attach (the record after the host changes, or
    written while they are made)."""
    return FakeDriver(plan_attach=request.param)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def dns() -> DnsProbe:
    return DnsProbe()


@pytest.fixture
async def web(engine: Engine) -> ServiceOverlay:
    """The shared service ``web`` on the engine's global overlay (set up first)."""
    await setup_global(engine)
    return await engine.setup_service_overlay("web", "shared")


@pytest.fixture
async def engine(
    config: EngineConfig, fake: FakeDriver, store: FlakyStore, dns: DnsProbe
) -> AsyncIterator[Engine]:
    eng = Engine(config, drivers=[fake], store=store, plugins=[dns])
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()


async def setup_global(engine: Engine, nat: bool = False) -> str:
    return await engine.setup_global_overlay(**lone_node(nat_enabled=nat))


def snapshot(engine: Engine, fake: FakeDriver, store: FlakyStore, dns: DnsProbe) -> Any:
    """Everything observable: engine view, store, fake host, DNS, IPAM."""
    ipam = engine.pm.get_plugin("builtin_ipam")
    pools = {
        name: sorted(str(lease.ip) for lease in alloc.leases.values())
        for name, alloc in ipam._pools.items()
    }
    return (
        store.load(),
        sorted(fake.host.devices),
        {d: sorted(p) for d, p in fake.host.peers.items()},
        sorted(fake.host.attachments),
        sorted(fake.host.masquerades),
        sorted(dns.records),
        pools,
    )


def fail_once(
    step: str, exc: Exception, fake: FakeDriver, store: FlakyStore, dns: DnsProbe
) -> None:
    """Make the next ``step`` fail: ``commit`` (the store), ``dns`` (the DNS
    plugin, with its own error) or a hook of the fake driver, which raises ``exc``."""
    if step == "commit":
        store.fail = True
    elif step == "dns":
        dns.fail = True
    else:
        fake.fail_next(step, exc)


# ---------------------------------------------------------------------------
# happy paths and idempotency
# ---------------------------------------------------------------------------


async def test_global_setup_is_idempotent_and_names_like_zlayer(engine: Engine) -> None:
    assert await setup_global(engine) == "zl-prod-n1-g"
    assert await setup_global(engine) == "zl-prod-n1-g"
    status = await engine.status()
    assert status.node_ip == ipaddress.ip_address("10.200.0.1")
    assert status.overlay_cidr == ipaddress.ip_network("10.200.0.0/16")
    assert status.public_key is not None
    assert len(status.public_key) == 44


async def test_global_setup_with_different_cidr_conflicts(engine: Engine) -> None:
    await setup_global(engine)
    with pytest.raises(Conflict, match=r"set up differently: cluster_cidr 10\.200\.0\.0/16"):
        await engine.setup_global_overlay(
            deployment="prod",
            instance_id="n1",
            cluster_cidr="10.201.0.0/16",
            wg_port=51820,
        )


async def test_second_attach_of_a_handle_returns_same_result_and_allocates_nothing(
    engine: Engine, fake: FakeDriver, web: ServiceOverlay
) -> None:
    first = await engine.attach(PID, "web", join_global=True)
    leases = engine.list_leases()
    calls = len(fake.calls_to("overlayd_attach"))
    second = await engine.attach(PID, "web", join_global=True)
    assert second == first
    assert engine.list_leases() == leases
    assert len(fake.calls_to("overlayd_attach")) == calls


async def test_attach_same_handle_to_other_service_conflicts(
    engine: Engine, web: ServiceOverlay
) -> None:
    await engine.setup_service_overlay("api", "shared")
    await engine.attach(PID, "web")
    with pytest.raises(Conflict, match="already attached to service 'web'"):
        await engine.attach(PID, "api")


async def test_detach_unknown_handle_succeeds_and_changes_nothing(
    engine: Engine, fake: FakeDriver, store: FlakyStore, dns: DnsProbe
) -> None:
    await setup_global(engine)
    before = snapshot(engine, fake, store, dns)
    assert await engine.detach({"platform": "linux_pid", "pid": 999}) is False
    assert snapshot(engine, fake, store, dns) == before


async def test_detach_removes_everything_attach_created(
    engine: Engine, fake: FakeDriver, store: FlakyStore, dns: DnsProbe, web: ServiceOverlay
) -> None:
    before = snapshot(engine, fake, store, dns)
    att = await engine.attach(PID, "web", join_global=True)
    assert ("web", str(att.ip)) in dns.records
    assert await engine.detach(PID) is True
    assert await engine.detach(PID) is False
    assert snapshot(engine, fake, store, dns) == before


async def test_guest_attach_registers_peer_and_detach_removes_it(
    engine: Engine, fake: FakeDriver
) -> None:
    name = await setup_global(engine)
    await engine.setup_service_overlay("web", "shared")
    att = await engine.attach({"platform": "guest_managed", "id": "vm-1"}, "web")
    assert att.guest is not None
    assert att.guest.peers[0].public_key == engine.node_public_key()
    assert att.guest.public_key in fake.host.peers[name]
    await engine.detach({"platform": "guest_managed", "id": "vm-1"})
    assert att.guest.public_key not in fake.host.peers[name]


async def test_released_addresses_are_reused_last(engine: Engine, web: ServiceOverlay) -> None:
    a = await engine.attach({"platform": "linux_pid", "pid": 1}, "web")
    await engine.detach({"platform": "linux_pid", "pid": 1})
    b = await engine.attach({"platform": "linux_pid", "pid": 2}, "web")
    assert b.ip != a.ip


async def test_windows_requested_ip_is_validated_and_used(
    engine: Engine, web: ServiceOverlay
) -> None:
    want = web.subnet.network_address + 10
    att = await engine.attach(
        {"platform": "windows_container", "container_id": "c1", "ip": str(want)}, "web"
    )
    assert att.ip == want
    assert att.namespace_guid
    with pytest.raises(InvalidRequest, match="outside service"):
        await engine.attach(
            {"platform": "windows_container", "container_id": "c2", "ip": "10.99.0.1"},
            "web",
        )
    with pytest.raises(AllocationError, match="already leased"):
        await engine.attach(
            {"platform": "windows_container", "container_id": "c3", "ip": str(want)},
            "web",
        )


async def test_dedicated_service_has_own_device_key_and_port(
    engine: Engine, fake: FakeDriver
) -> None:
    await setup_global(engine)
    svc = await engine.setup_service_overlay("db", "dedicated")
    assert svc.dedicated is not None
    assert svc.dedicated.listen_port == 51821
    assert svc.dedicated.public_key != engine.node_public_key()
    other = await engine.setup_service_overlay("cache", "dedicated")
    assert other.dedicated is not None
    assert other.dedicated.listen_port == 51822
    await engine.add_peer(
        KEY1,
        "127.0.0.1:1",
        "10.200.64.0/22",
        0,
        PeerScope(scope="service", service="db"),
    )
    assert KEY1 in fake.host.peers[svc.dedicated.name]
    assert KEY1 not in fake.host.peers["zl-prod-n1-g"]
    with pytest.raises(Conflict, match="dedicated mode"):
        await engine.setup_service_overlay("db", "shared")
    status = await engine.status()
    assert [d.service for d in status.dedicated_services] == ["cache", "db"] or [
        d.service for d in status.dedicated_services
    ] == ["db", "cache"]


async def test_peers_multi_cidr_and_allowed_ip_edits(engine: Engine, fake: FakeDriver) -> None:
    name = await setup_global(engine)
    await engine.add_peer(KEY1, "node2.example.test:51820", "10.200.16.0/20,10.200.32.0/20", 25)
    peer = fake.host.peers[name][KEY1]
    assert {str(n) for n in peer.allowed_ips} == {"10.200.16.0/20", "10.200.32.0/20"}
    await engine.add_allowed_ip(KEY1, "10.200.48.0/24")
    await engine.remove_allowed_ip(KEY1, "10.200.16.0/20")
    peer = fake.host.peers[name][KEY1]
    assert {str(n) for n in peer.allowed_ips} == {"10.200.32.0/20", "10.200.48.0/24"}
    await engine.remove_peer(KEY1)
    await engine.remove_peer(KEY1)
    assert KEY1 not in fake.host.peers[name]


async def test_teardown_service_detaches_and_frees_subnet(
    engine: Engine, fake: FakeDriver, web: ServiceOverlay
) -> None:
    await engine.attach(PID, "web")
    await engine.teardown_service_overlay("web")
    await engine.teardown_service_overlay("web")
    assert engine.list_attachments() == []
    assert fake.host.attachments == {}
    again = await engine.setup_service_overlay("api", "shared")
    assert again.subnet == web.subnet


async def test_events_reach_subscribers_on_health_transitions(
    engine: Engine, fake: FakeDriver
) -> None:
    name = await setup_global(engine)
    await engine.add_peer(KEY1, "127.0.0.1:2", "10.200.16.0/20", 25)
    queue = engine.subscribe()
    fake.set_handshake(name, KEY1, 1)  # long ago, keepalive set: traffic expected
    events = await engine.check_health()
    assert [(e.event, e.pubkey, e.healthy) for e in events] == [
        ("peer_health_changed", KEY1, False)
    ]
    got = await asyncio.wait_for(queue.get(), 1)
    assert got.healthy is False
    import time

    fake.set_handshake(name, KEY1, int(time.time()))
    events = await engine.check_health()
    assert [e.healthy for e in events] == [True]
    assert await engine.check_health() == []
    engine.unsubscribe(queue)


async def test_nat_tick_reports_endpoint_changes(engine: Engine, fake: FakeDriver) -> None:
    name = await setup_global(engine, nat=True)
    await engine.add_peer(KEY1, "127.0.0.1:3", "10.200.16.0/20", 0)
    assert await engine.nat_tick() == []
    fake.set_handshake(name, KEY1, 5, endpoint="127.0.0.9:4000")
    events = await engine.nat_tick()
    assert [(e.event, e.endpoint) for e in events] == [("nat_endpoint_changed", "127.0.0.9:4000")]


async def test_gc_releases_only_dead_handles(engine: Engine, web: ServiceOverlay) -> None:
    for pid in (1, 2, 3):
        await engine.attach({"platform": "linux_pid", "pid": pid}, "web")
    report = await engine.gc([{"platform": "linux_pid", "pid": 2}], dry_run=True)
    assert {h.pid for h in report.released} == {1, 3}  # type: ignore[union-attr]
    assert len(engine.list_attachments()) == 3
    report = await engine.gc([LinuxPidHandle(pid=2)])
    assert {a.key for a in engine.list_attachments()} == {"linux_pid:2"}


async def test_reconcile_releases_dead_workloads_and_removes_orphans(
    engine: Engine, fake: FakeDriver, web: ServiceOverlay
) -> None:
    await engine.attach(PID, "web")
    fake.kill(LinuxPidHandle(pid=4242))
    from overlayd.model import Device

    fake.host.devices["zl-stray-b"] = Device(
        kind="bridge", name="zl-stray-b", owner="x", driver="fake"
    )
    summary = await engine.reconcile()
    assert summary.released == 1
    assert engine.list_attachments() == []
    assert "zl-stray-b" not in fake.host.devices


async def test_reconcile_recreates_missing_recorded_device_with_same_key(
    engine: Engine, fake: FakeDriver
) -> None:
    name = await setup_global(engine)
    await engine.add_peer(KEY1, "127.0.0.1:5", "10.200.16.0/20", 0)
    pub = fake.host.devices[name].public_key
    del fake.host.devices[name]
    del fake.host.peers[name]
    summary = await engine.reconcile()
    assert summary.recreated >= 1
    assert fake.host.devices[name].public_key == pub
    assert KEY1 in fake.host.peers[name]


async def test_dns_register_unregister(engine: Engine, dns: DnsProbe) -> None:
    await engine.register_dns("db", "10.200.4.9")
    await engine.register_dns("db", "10.200.4.10")
    await engine.register_dns("db", "10.200.4.10")
    assert {ip for n, ip in dns.records if n == "db"} == {"10.200.4.9", "10.200.4.10"}
    await engine.unregister_dns("db")
    assert not [r for r in dns.records if r[0] == "db"]


# ---------------------------------------------------------------------------
# rollback at every step (fault injection)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "handle", "join_global", "exc"),
    [
        ("overlayd_attach", PID, True, AttachError("veth create failed (injected)")),
        ("dns", PID, True, DnsError("dns server refused (injected)")),
        ("overlayd_peer_apply", GUEST, False, PeerError("uapi errno=22 (injected)")),
        ("commit", PID, True, StateError("disk full (injected)")),
    ],
    ids=["driver", "dns", "guest-peer", "commit"],
)
async def test_attach_rollback_at_every_step(
    engine: Engine,
    fake: FakeDriver,
    store: FlakyStore,
    dns: DnsProbe,
    web: ServiceOverlay,
    step: str,
    handle: dict[str, Any],
    join_global: bool,
    exc: Exception,
) -> None:
    before = snapshot(engine, fake, store, dns)
    fail_once(step, exc, fake, store, dns)
    with pytest.raises(type(exc), match="injected"):
        await engine.attach(handle, "web", join_global=join_global)
    assert snapshot(engine, fake, store, dns) == before
    assert engine.list_attachments() == []
    # and the handle can be attached afterwards
    await engine.attach(handle, "web", join_global=join_global)


async def test_attach_rollback_when_pool_exhausted_midway(
    config: EngineConfig, fake: FakeDriver, store: FlakyStore, dns: DnsProbe
) -> None:
    """The service address is leased, then the node pool is exhausted: nothing is left."""
    eng = Engine(config.model_copy(update={}), drivers=[fake], store=store, plugins=[dns])
    await eng.start()
    try:
        await eng.setup_global_overlay(
            **lone_node(
                "p", instance_id="n", cluster_cidr="10.210.0.0/16", slice_cidr="10.210.0.0/28"
            )
        )
        # A /28 slice is the node pool as a whole (the "local" layout): 13
        # addresses besides the node's own. Take all but one.
        await eng.setup_service_overlay("web", "shared")
        for _ in range(12):
            await eng.allocate_ip("web", join_global=True)
        await eng.attach({"platform": "linux_pid", "pid": 1}, "web", join_global=True)
        with pytest.raises(PoolExhausted):
            await eng.allocate_ip("web", join_global=True)
        await eng.detach({"platform": "linux_pid", "pid": 1})
        await eng.attach({"platform": "linux_pid", "pid": 1}, "web", join_global=True)
        before = snapshot(eng, fake, store, dns)
        with pytest.raises(PoolExhausted):
            await eng.attach({"platform": "linux_pid", "pid": 2}, "web", join_global=True)
        after = snapshot(eng, fake, store, dns)
        assert after[3] == before[3]  # fake host attachments
        assert after[6] == before[6]  # IPAM pools
    finally:
        await eng.stop()


@pytest.mark.parametrize(
    ("hook", "exc"),
    [
        ("overlayd_device_create", DeviceError("create failed (injected)")),
        ("overlayd_nat_masquerade", NatError("nft failed (injected)")),
        ("commit", StateError("disk full (injected)")),
    ],
    ids=["device", "nat", "commit"],
)
async def test_global_setup_rollback_at_every_step(
    engine: Engine,
    fake: FakeDriver,
    store: FlakyStore,
    dns: DnsProbe,
    hook: str,
    exc: Exception,
) -> None:
    before = snapshot(engine, fake, store, dns)
    fail_once(hook, exc, fake, store, dns)
    with pytest.raises(type(exc)):
        await setup_global(engine, nat=True)
    assert snapshot(engine, fake, store, dns) == before
    assert engine.global_ is None
    assert await setup_global(engine, nat=True) == "zl-prod-n1-g"


@pytest.mark.parametrize(
    ("step", "mode"),
    [
        ("bridge", "shared"),
        ("dedicated", "dedicated"),
        ("commit", "dedicated"),
    ],
)
async def test_service_setup_rollback_at_every_step(
    engine: Engine,
    fake: FakeDriver,
    store: FlakyStore,
    dns: DnsProbe,
    step: str,
    mode: str,
) -> None:
    await setup_global(engine, nat=True)
    before = snapshot(engine, fake, store, dns)
    if step in ("bridge", "dedicated"):
        kind = "bridge" if step == "bridge" else "wireguard"
        fake.fail_when(
            "overlayd_device_create",
            lambda kw: kw["spec"].kind == kind,
            DeviceError(f"{kind} failed (injected)"),
            once=True,
        )
    elif step == "nat":
        fake.fail_next("overlayd_nat_masquerade", NatError("nft failed (injected)"))
    else:
        store.fail = True
    with pytest.raises((DeviceError, NatError, StateError)):
        await engine.setup_service_overlay("svc", mode)
    assert snapshot(engine, fake, store, dns) == before
    assert "svc" not in engine.services
    svc = await engine.setup_service_overlay("svc", mode)
    # the subnet and port were returned: the retry gets the first ones again
    assert str(svc.subnet) == "10.200.4.0/22"
    if svc.dedicated is not None:
        assert svc.dedicated.listen_port == 51821


async def test_peer_rollback_on_driver_and_commit_failure(
    engine: Engine, fake: FakeDriver, store: FlakyStore, dns: DnsProbe
) -> None:
    await setup_global(engine)
    await engine.add_peer(KEY1, "127.0.0.1:1", "10.200.16.0/20", 0)
    before = snapshot(engine, fake, store, dns)
    fake.fail_next("overlayd_peer_apply", PeerError("injected"))
    with pytest.raises(PeerError):
        await engine.add_peer(KEY2, "127.0.0.1:2", "10.200.32.0/20", 0)
    assert snapshot(engine, fake, store, dns) == before
    store.fail = True
    with pytest.raises(StateError):
        await engine.add_peer(KEY2, "127.0.0.1:2", "10.200.32.0/20", 0)
    assert snapshot(engine, fake, store, dns) == before


async def test_detach_keeps_record_when_driver_cannot_remove(
    engine: Engine, fake: FakeDriver, web: ServiceOverlay
) -> None:
    att = await engine.attach(PID, "web")
    fake.fail_next("overlayd_detach", AttachError("device busy (injected)"))
    with pytest.raises(AttachError):
        await engine.detach(PID)
    assert engine.list_attachments() == [att]
    assert await engine.detach(PID) is True
    assert engine.list_attachments() == []


# ---------------------------------------------------------------------------
# bad input: clear error, no change
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cluster_cidr": "10.200.0.0/33"}, "invalid cluster_cidr"),
        ({"cluster_cidr": "not-a-cidr"}, "invalid cluster_cidr"),
        ({"cluster_cidr": "10.200.0.1/16"}, "has host bits set"),
        ({"slice_cidr": "10.9.0.0/24"}, "is not inside cluster_cidr"),
        ({"slice_cidr": "10.200.0.0/30"}, "too small"),
        ({"wg_port": 0}, "not a usable UDP port"),
        ({"deployment": "bad name!"}, "invalid deployment"),
    ],
)
async def test_bad_global_input_is_rejected_without_change(
    engine: Engine,
    fake: FakeDriver,
    store: FlakyStore,
    dns: DnsProbe,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    args: dict[str, Any] = {
        "deployment": "prod",
        "instance_id": "n1",
        "cluster_cidr": "10.200.0.0/16",
        "slice_cidr": None,
        "wg_port": 51820,
    }
    args.update(kwargs)
    before = snapshot(engine, fake, store, dns)
    with pytest.raises(InvalidRequest, match=message):
        await engine.setup_global_overlay(**args)
    assert snapshot(engine, fake, store, dns) == before


async def test_unknown_service_and_missing_global_are_clear_errors(
    engine: Engine,
) -> None:
    with pytest.raises(InvalidRequest, match="call setup_global_overlay first"):
        await engine.setup_service_overlay("web", "shared")
    await setup_global(engine)
    with pytest.raises(NotFound, match="call setup_service_overlay first"):
        await engine.attach(PID, "nope")
    with pytest.raises(NotFound, match="setup_service_overlay"):
        await engine.allocate_ip("nope")
    with pytest.raises(InvalidRequest, match="invalid overlay mode"):
        await engine.setup_service_overlay("web", "turbo")


async def test_bad_peer_input_is_rejected(engine: Engine, fake: FakeDriver) -> None:
    name = await setup_global(engine)
    with pytest.raises(InvalidRequest, match="WireGuard key"):
        await engine.add_peer("short", "127.0.0.1:1", "10.0.0.0/24", 0)
    with pytest.raises(InvalidRequest, match="invalid CIDR"):
        await engine.add_peer(KEY1, "127.0.0.1:1", "10.0.0.0/24,banana", 0)
    with pytest.raises(InvalidRequest, match="host:port"):
        await engine.add_peer(KEY1, "127.0.0.1", "10.0.0.0/24", 0)
    with pytest.raises(NotFound, match="add it with add_peer first"):
        await engine.add_allowed_ip(KEY1, "10.0.0.0/24")
    with pytest.raises(NotFound, match="has no overlay"):
        await engine.add_peer(KEY1, None, "10.0.0.0/24", 0, PeerScope(scope="service", service="x"))
    assert fake.host.peers[name] == {}


async def test_release_ip_rules(engine: Engine, web: ServiceOverlay) -> None:
    ip = await engine.allocate_ip("web")
    with pytest.raises(AllocationError, match="not in any address pool"):
        await engine.release_ip("192.0.2.1")
    with pytest.raises(InvalidRequest, match="not an IPv4 or IPv6"):
        await engine.release_ip("nonsense")
    att = await engine.attach(PID, "web")
    with pytest.raises(Conflict, match="detach it instead"):
        await engine.release_ip(att.ip)
    await engine.release_ip(ip)
    await engine.release_ip(ip)
    assert all(lease.owner != "manual" for lease in engine.list_leases())


async def test_exhausted_service_pool_is_a_clear_error(
    config: EngineConfig, fake: FakeDriver
) -> None:
    small = config.model_copy(
        update={"ipam": config.ipam.model_copy(update={"service_prefix_v4": 29})}
    )
    async with lone_engine(small, [fake], "web") as eng:
        for pid in range(1, 6):  # /29: 6 usable, minus the gateway
            await eng.attach({"platform": "linux_pid", "pid": pid}, "web")
        with pytest.raises(PoolExhausted, match="no free address"):
            await eng.attach({"platform": "linux_pid", "pid": 99}, "web")
        assert len(eng.list_attachments()) == 5


def test_unknown_driver_lists_installed_ones(config: EngineConfig) -> None:
    with pytest.raises(ConfigError, match=r"unknown driver\(s\) nosuch; installed drivers: .*fake"):
        Engine(config.model_copy(update={"drivers": ["nosuch"]}))


async def test_operations_before_start_are_refused(config: EngineConfig, fake: FakeDriver) -> None:
    eng = Engine(config, drivers=[fake])
    with pytest.raises(InvalidRequest, match="not started"):
        await eng.status()


# ---------------------------------------------------------------------------
# concurrency: per-resource locks, never one global lock
# ---------------------------------------------------------------------------


class Rendezvous:
    """Makes N attach calls meet inside the driver: proves they run in parallel."""

    name = "rendezvous"

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.release = threading.Event()
        self.entered = threading.Event()
        self.mode = "barrier"

    @hookimpl(wrapper=True)
    def overlayd_attach(self, request: Any) -> Iterator[Any]:
        if self.mode == "barrier":
            self.barrier.wait()
        else:
            self.entered.set()
            self.release.wait(10)
        return (yield)


async def test_attaches_on_two_services_run_in_parallel(
    config: EngineConfig, fake: FakeDriver
) -> None:
    async with lone_engine(config, [fake], "a", "b", plugins=[Rendezvous(2)]) as eng:
        # If the engine serialised these, the barrier would time out and raise.
        await asyncio.gather(
            eng.attach({"platform": "linux_pid", "pid": 1}, "a"),
            eng.attach({"platform": "linux_pid", "pid": 2}, "b"),
        )
        assert len(eng.list_attachments()) == 2


async def test_attaches_on_one_service_run_in_parallel(
    config: EngineConfig, fake: FakeDriver
) -> None:
    async with lone_engine(config, [fake], "a", plugins=[Rendezvous(3)]) as eng:
        results = await asyncio.gather(
            *(eng.attach({"platform": "linux_pid", "pid": p}, "a") for p in (1, 2, 3))
        )
        assert len({r.ip for r in results}) == 3


async def test_status_never_waits_behind_a_slow_attach(
    config: EngineConfig, fake: FakeDriver
) -> None:
    hold = Rendezvous(1)
    hold.mode = "hold"
    async with lone_engine(config, [fake], "a", plugins=[hold]) as eng:
        slow = asyncio.create_task(eng.attach({"platform": "linux_pid", "pid": 1}, "a"))
        await asyncio.get_running_loop().run_in_executor(None, hold.entered.wait, 5)
        status = await asyncio.wait_for(eng.status(), 2)
        other = await asyncio.wait_for(eng.register_dns("x", "10.200.4.99"), 2)
        assert status.service_count == 1
        assert other is None
        assert not slow.done()
        hold.release.set()
        await slow


async def test_status_is_the_same_object_until_something_changes(engine: Engine) -> None:
    await setup_global(engine)
    first = await engine.status()
    assert await engine.status() is first  # a poller's answer is built once
    await engine.setup_service_overlay("a", "shared")
    second = await engine.status()
    assert second is not first and second.service_count == first.service_count + 1
    assert await engine.status() is second
    await engine.add_peer(KEY1, "10.99.0.2:51820", "10.200.16.0/20", 25)
    third = await engine.status()
    assert third is not second and third.peer_count == second.peer_count + 1
    await engine.teardown_service_overlay("a")
    assert (await engine.status()).service_count == first.service_count


async def test_same_handle_concurrent_attach_allocates_once(
    engine: Engine, fake: FakeDriver
) -> None:
    await setup_global(engine)
    await engine.setup_service_overlay("a", "shared")
    fake.set_latency("overlayd_attach", 0.05)
    results = await asyncio.gather(*(engine.attach(PID, "a") for _ in range(5)))
    assert len({r.ip for r in results}) == 1
    assert len(fake.calls_to("overlayd_attach")) == 1
    assert len(engine.list_leases()) == 1


async def test_records_roundtrip_through_durable_store(
    tmp_path: Any, fake: FakeDriver, config: EngineConfig
) -> None:
    """A restart on the same data_dir keeps key, addresses, peers and records."""
    cfg = config.model_copy(update={"data_dir": tmp_path})
    async with Engine(cfg, drivers=[fake]) as eng:
        await setup_global(eng)
        await eng.setup_service_overlay("db", "dedicated")
        att = await eng.attach(PID, "db", join_global=True)
        await eng.add_peer(KEY1, "127.0.0.1:9", "10.200.16.0/20", 0)
        await eng.register_dns("x", "10.200.4.77")
        key = eng.node_public_key()
        ded_key = eng.services["db"].dedicated.public_key  # type: ignore[union-attr]
    async with Engine(cfg, drivers=[fake]) as eng2:
        assert eng2.node_public_key() == key
        assert eng2.services["db"].dedicated.public_key == ded_key  # type: ignore[union-attr]
        assert eng2.list_attachments() == [att]
        assert KEY1 in eng2.peers["zl-prod-n1-g"]
        assert DnsEntry("x", ipaddress.ip_address("10.200.4.77")) in eng2.dns.values()
        assert DnsRecord(name="x", ip=ipaddress.ip_address("10.200.4.77")) in [
            e.record() for e in eng2.dns.values()
        ]
        await eng2.unregister_dns("x")  # the manual-name index is rebuilt at load
        assert not [k for k in eng2.dns if k[0] == "x"]
        nxt = await eng2.attach({"platform": "linux_pid", "pid": 7}, "db")
        assert nxt.ip != att.ip
        assert (await eng2.setup_service_overlay("db", "dedicated")).dedicated.listen_port == 51821  # type: ignore[union-attr]


async def test_restart_recreates_devices_with_persisted_keys(
    tmp_path: Any, config: EngineConfig
) -> None:
    """The host lost the devices (reboot): they come back with the same keys."""
    cfg = config.model_copy(update={"data_dir": tmp_path})
    first = FakeDriver()
    async with Engine(cfg, drivers=[first]) as eng:
        await setup_global(eng)
        svc = await eng.setup_service_overlay("db", "dedicated")
        keys_before = {
            n: d.public_key for n, d in first.host.devices.items() if d.kind == "wireguard"
        }
    rebooted = FakeDriver()  # an empty host
    async with Engine(cfg, drivers=[rebooted]) as eng2:
        summary = await eng2.reconcile()
        assert not summary.errors
        keys_after = {
            n: d.public_key for n, d in rebooted.host.devices.items() if d.kind == "wireguard"
        }
        assert keys_after == keys_before
        assert svc.bridge.name in rebooted.host.devices


async def test_corrupt_state_fails_the_start_before_the_drivers_start(
    tmp_path: Any, config: EngineConfig
) -> None:
    """The store opens beside the drivers' configure; a corrupt one still stops the start."""
    db = tmp_path / "state.db"
    db.write_bytes(b"this is not an sqlite database" * 100)
    db.chmod(0o600)
    cfg = config.model_copy(update={"data_dir": tmp_path})
    fake = FakeDriver()
    with pytest.raises(StateError, match="move the file aside") as info:
        async with Engine(cfg, drivers=[fake]):
            pass
    assert f"mv {db} {db}.corrupt" in str(info.value)
    assert not fake.started
    assert not fake.calls_to("overlayd_startup")


async def test_reconcile_removes_unrecorded_peers(engine: Engine, fake: FakeDriver) -> None:
    """A peer on the device that the store does not know (crash after apply) is removed."""
    name = await setup_global(engine)
    await engine.add_peer(KEY1, "127.0.0.1:1", "10.200.16.0/20", 0)
    from overlayd.model import PeerStatus

    fake.host.peers[name][KEY2] = PeerStatus(public_key=KEY2)
    await engine.reconcile()
    assert set(fake.host.peers[name]) == {KEY1}


async def test_reconcile_re_sends_only_the_peers_not_in_place(
    engine: Engine, fake: FakeDriver
) -> None:
    """Peers the device reports as recorded are not sent again; the others are repaired."""
    name = await setup_global(engine)
    await engine.add_peer(KEY1, "127.0.0.1:1", "10.200.16.0/20", 0)
    await engine.add_peer(KEY2, "127.0.0.1:2", "10.200.32.0/20", 25)
    fake.calls.clear()
    await engine.reconcile()
    assert not fake.calls_to("overlayd_peer_apply")
    drifted = fake.host.peers[name][KEY2].model_copy(update={"endpoint": "127.0.0.1:9"})
    fake.host.peers[name][KEY2] = drifted
    await engine.reconcile()
    (call,) = fake.calls_to("overlayd_peer_apply")
    assert [c.public_key for c in call.kwargs["changes"]] == [KEY2]
    assert fake.host.peers[name][KEY2].endpoint == "127.0.0.1:2"
    assert fake.host.peers[name][KEY1].endpoint == "127.0.0.1:1"


async def test_dedicated_identity_is_adopted_from_zlayer_marker(
    tmp_path: Any, config: EngineConfig
) -> None:
    """A node moving from ZLayer's daemon keeps its dedicated key and port."""
    from overlayd import keys
    from overlayd import marker

    priv = keys.generate_private_key()
    doc = marker.NetworkMarker(
        networks=[
            marker.ManagedNetwork(
                owner="service:db",
                kind="wg-dedicated",
                name="zl-prod-n1-db-d",
                id="zl-prod-n1-db-d",
                subnet="10.200.8.0/22",
                wg_port=51830,
                wg_private_key=priv,
                wg_public_key=keys.public_key(priv),
                interface="zl-prod-n1-db-d",
            )
        ]
    )
    tmp_path.mkdir(exist_ok=True)
    marker.save(marker.marker_path(tmp_path), doc)
    cfg = config.model_copy(update={"data_dir": tmp_path})
    async with Engine(cfg, drivers=[FakeDriver()]) as eng:
        await setup_global(eng)
        svc = await eng.setup_service_overlay("db", "dedicated")
        assert svc.dedicated is not None
        assert svc.dedicated.listen_port == 51830
        assert svc.dedicated.public_key == keys.public_key(priv)
        other = await eng.setup_service_overlay("cache", "dedicated")
        assert other.dedicated is not None and other.dedicated.listen_port == 51821


async def test_peer_receiving_bytes_stays_healthy_between_handshakes(
    engine: Engine, fake: FakeDriver
) -> None:
    """WireGuard re-handshakes every ~2 min; received bytes prove the peer alive."""
    name = await setup_global(engine)
    await engine.add_peer(KEY1, "127.0.0.1:2", "10.200.16.0/20", 25)
    fake.set_handshake(name, KEY1, 1)
    peer = fake.host.peers[name][KEY1]
    fake.host.peers[name][KEY1] = peer.model_copy(update={"rx_bytes": 100})
    assert await engine.check_health() == []
    events = await engine.check_health()  # no new bytes and a stale handshake
    assert [e.healthy for e in events] == [False]


async def test_dns_absolute_names_in_zone_equal_relative_ones(
    engine: Engine, dns: DnsProbe
) -> None:
    await setup_global(engine)
    await engine.register_dns("api.prod.local.", "10.200.4.9")
    await engine.register_dns("api", "10.200.4.9")
    assert [r for r in dns.records if r[0].startswith("api")] == [("api", "10.200.4.9")]
    with pytest.raises(InvalidRequest, match="outside the overlay zone"):
        await engine.register_dns("api.", "10.200.4.9")
    await engine.unregister_dns("api.prod.local.")
    assert not [r for r in dns.records if r[0].startswith("api")]
