"""The engine against bad input and failing stores: a clear error, and old state or new."""

from __future__ import annotations

import base64
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.config import EngineConfig
from overlayd.engine import Engine
from overlayd.errors import InvalidRequest
from overlayd.errors import StateError
from overlayd.keys import generate_private_key
from overlayd.keys import public_key
from overlayd.model import DnsRecord
from overlayd.model import PeerScope
from overlayd.model import PortMapping
from overlayd.state import MemoryStore
from overlayd.testing.nodes import lone_node
from overlayd_fake.driver import FakeDriver

#: Store kind of a detach under way (``overlayd.engine.DETACH_INTENT``).
DETACH_INTENT = "detaching"
PID = {"platform": "linux_pid", "pid": 4242}
KEY = "linux_pid:4242"
PEER = public_key(generate_private_key())


class FailingStore(MemoryStore):
    """A MemoryStore whose commits fail on demand: the n-th from now, or all of them."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0
        self.fail_at: set[int] = set()
        self.full = False

    def fail_commit(self, *nth: int) -> None:
        """Fail the ``nth`` next commits (1 = the next one)."""
        self.fail_at = {self.commits + n for n in nth}

    def reopen(self) -> FailingStore:
        """The same records in a new store, as a restarted daemon reopens its file."""
        again = FailingStore()
        again._records = {kind: dict(records) for kind, records in self._records.items()}
        return again

    def commit(self, puts: Any, deletes: Any = ()) -> None:
        self.commits += 1
        if self.full or self.commits in self.fail_at:
            raise StateError("committing to the store failed (disk full, injected)")
        super().commit(puts, deletes)


@pytest.fixture
def store() -> FailingStore:
    return FailingStore()


@pytest.fixture
async def engine(
    engine_config: EngineConfig, fake_driver: FakeDriver, store: FailingStore
) -> AsyncIterator[Engine]:
    eng = Engine(engine_config, drivers=[fake_driver], store=store)
    await eng.start()
    await eng.setup_global_overlay(**lone_node())
    await eng.setup_service_overlay("web", "shared")
    try:
        yield eng
    finally:
        await eng.stop()


def _held(engine: Engine, ip: Any) -> str | None:
    """Who holds ``ip`` in the built-in allocator of service web."""
    alloc = engine.pm.get_plugin("builtin_ipam").pool("service:web")
    owner: str | None = alloc.owner_of(ip)
    return owner


# -- detach: old state or new, never half ------------------------------------------


async def _interrupted_detach(engine: Engine, store: FailingStore) -> Any:
    """Attach PID, then detach it with the intent stored and the final commit failing."""
    att = await engine.attach(PID, "web")
    store.fail_commit(2)
    with pytest.raises(StateError):
        await engine.detach(PID)
    return att


async def test_a_detach_whose_intent_cannot_be_stored_changes_nothing(
    engine: Engine, fake_driver: FakeDriver, store: FailingStore
) -> None:
    att = await engine.attach(PID, "web")
    store.fail_commit(1)
    with pytest.raises(StateError, match=f"detach of {KEY} changed nothing"):
        await engine.detach(PID)
    assert KEY in fake_driver.host.attachments  # the container keeps its interface
    assert engine.list_attachments() == [att]
    assert engine.detaching == set()
    assert store.load().get(DETACH_INTENT) is None
    assert _held(engine, att.ip) == f"handle:{KEY}"
    assert await engine.detach(PID) is True
    assert KEY not in fake_driver.host.attachments
    assert engine.list_attachments() == []


async def test_a_detach_whose_last_write_fails_stays_recorded_as_detaching(
    engine: Engine, fake_driver: FakeDriver, store: FailingStore
) -> None:
    att = await engine.attach(PID, "web")
    store.fail_commit(2)  # the intent is stored, the final commit is not
    with pytest.raises(StateError, match="stays recorded as detaching"):
        await engine.detach(PID)
    assert KEY not in fake_driver.host.attachments
    assert engine.detaching == {KEY}
    assert KEY in store.load()[DETACH_INTENT]
    assert KEY in store.load()["attachment"]
    # The address is not handed out again while the record holds it.
    assert _held(engine, att.ip) == f"handle:{KEY}"
    other = await engine.attach({"platform": "linux_pid", "pid": 7}, "web")
    assert other.ip != att.ip
    # The next detach finishes it.
    assert await engine.detach(PID) is True
    assert engine.detaching == set()
    assert KEY not in store.load().get("attachment", {})
    assert DETACH_INTENT not in store.load()
    assert _held(engine, att.ip) is None


async def test_a_recorded_detach_is_finished_when_the_engine_starts(
    engine: Engine, engine_config: EngineConfig, fake_driver: FakeDriver, store: FailingStore
) -> None:
    att = await _interrupted_detach(engine, store)
    await engine.stop()
    reopened = store.reopen()
    assert KEY in reopened.load()[DETACH_INTENT]
    again = Engine(engine_config, drivers=[fake_driver], store=reopened)
    await again.start()  # the startup reconcile finishes the detach
    try:
        assert again.list_attachments() == []
        assert again.detaching == set()
        assert DETACH_INTENT not in reopened.load()
        assert str(att.ip) not in {str(lease.ip) for lease in again.list_leases()}
    finally:
        await again.stop()


async def test_attaching_a_handle_whose_detach_is_recorded_finishes_it_first(
    engine: Engine, fake_driver: FakeDriver, store: FailingStore
) -> None:
    await _interrupted_detach(engine, store)
    fresh = await engine.attach(PID, "web")
    assert KEY in fake_driver.host.attachments  # attached anew, not the stale record returned
    assert engine.detaching == set()
    assert engine.list_attachments() == [fresh]


async def test_reconcile_finishes_recorded_detaches_instead_of_repairing_them(
    engine: Engine, fake_driver: FakeDriver, store: FailingStore
) -> None:
    await _interrupted_detach(engine, store)
    summary = await engine.reconcile()
    assert summary.released == 1
    assert KEY not in fake_driver.host.attachments
    assert engine.list_attachments() == []


async def test_guest_private_key_leaves_the_database_and_its_wal_on_detach(
    tmp_path: Path, engine_config: EngineConfig
) -> None:
    cfg = engine_config.model_copy(update={"data_dir": tmp_path})
    engine = Engine(cfg, drivers=[FakeDriver()])
    await engine.start()
    try:
        await engine.setup_global_overlay(**lone_node())
        await engine.setup_service_overlay("web", "shared")
        guest = {"platform": "guest_managed", "id": "vm-1"}
        att = await engine.attach(guest, "web")
        assert att.guest is not None
        secret = att.guest.private_key.encode()
        raw = base64.b64decode(att.guest.private_key)

        def stored() -> bytes:
            return b"".join(
                p.read_bytes() for p in tmp_path.glob("state.db*") if p.name != "state.db-shm"
            )

        assert secret in stored()  # the record holds it while attached
        await engine.detach(guest)
        assert secret not in stored()
        assert raw not in stored()
    finally:
        await engine.stop()


# -- peers that point the node at itself ---------------------------------------------


async def test_a_peer_with_the_nodes_own_key_is_refused(
    engine: Engine, fake_driver: FakeDriver
) -> None:
    own = engine.node_public_key()
    assert own is not None
    with pytest.raises(InvalidRequest, match="this node's own key"):
        await engine.add_peer(own, None, "10.201.0.0/24")
    assert own not in fake_driver.host.peers[engine.global_.device.name]  # type: ignore[union-attr]


async def test_the_key_of_a_dedicated_device_and_the_announced_key_are_refused(
    engine: Engine,
) -> None:
    svc = await engine.setup_service_overlay("db", "dedicated")
    assert svc.dedicated is not None and svc.dedicated.public_key is not None
    with pytest.raises(InvalidRequest, match="own key"):
        await engine.add_peer(svc.dedicated.public_key, None, "10.201.0.0/24")
    with pytest.raises(InvalidRequest, match="own key"):
        await engine.add_peer(
            svc.dedicated.public_key,
            None,
            "10.201.0.0/24",
            scope=PeerScope(scope="service", service="db"),
        )
    await engine.set_local_wg_pubkey(PEER)
    with pytest.raises(InvalidRequest, match="set_local_wg_pubkey"):
        await engine.add_peer(PEER, None, "10.201.0.0/24")


@pytest.mark.parametrize(
    ("allowed", "message"),
    [
        ("0.0.0.0/0", "all traffic of this host"),
        ("::/0", "all traffic of this host"),
        ("10.200.0.0/20", "inside 10.200.0.0/20, which this node serves"),
        ("10.200.4.0/22", "inside 10.200.0.0/20, which this node serves"),
        ("10.201.0.0/24,10.200.0.1/32", "inside 10.200.0.0/20, which this node serves"),
    ],
)
async def test_allowed_ips_that_take_the_nodes_traffic_are_refused(
    engine: Engine, fake_driver: FakeDriver, allowed: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        await engine.add_peer(PEER, None, allowed)
    assert PEER not in fake_driver.host.peers[engine.global_.device.name]  # type: ignore[union-attr]


async def test_add_allowed_ip_into_the_slice_is_refused_and_other_peers_work(
    engine: Engine,
) -> None:
    await engine.add_peer(PEER, "192.0.2.7:51820", "10.201.0.0/24")
    await engine.add_peer(public_key(generate_private_key()), None, "10.0.0.0/8")
    with pytest.raises(InvalidRequest, match="which this node serves"):
        await engine.add_allowed_ip(PEER, "10.200.8.0/24")
    with pytest.raises(InvalidRequest, match="all traffic"):
        await engine.add_allowed_ip(PEER, "0.0.0.0/0")
    await engine.add_allowed_ip(PEER, "10.202.0.0/24")
    await engine.remove_peer(PEER)


async def test_without_a_slice_only_the_nodes_own_subnets_are_refused(
    engine_config: EngineConfig, fake_driver: FakeDriver
) -> None:
    """ZLayer may set up the overlay without slice_cidr (the slice is then the whole
    cluster): peers inside the cluster are normal, the node's own subnets are not."""
    engine = Engine(engine_config, drivers=[fake_driver])
    await engine.start()
    try:
        await engine.setup_global_overlay(**lone_node(slice_cidr=None))
        web = await engine.setup_service_overlay("web", "shared")
        await engine.add_peer(PEER, "192.0.2.7:51820", "10.200.77.0/24,10.200.200.9/32")
        await engine.add_peer(public_key(generate_private_key()), None, "10.200.0.0/16")
        for own in (str(web.subnet), "10.200.0.1/32", "10.200.0.0/22"):
            with pytest.raises(InvalidRequest, match="which this node serves"):
                await engine.add_allowed_ip(PEER, own)
    finally:
        await engine.stop()


# -- port mappings and DNS names -------------------------------------------------------


@pytest.mark.parametrize("ip", ["8.8.8.8", "192.168.1.10", "fd00::5"])
async def test_map_port_outside_the_overlay_is_refused(engine: Engine, ip: str) -> None:
    with pytest.raises(InvalidRequest, match=r"outside the overlay 10\.200\.0\.0/16"):
        await engine.add_port_mapping(
            PortMapping(protocol="tcp", host_port=8080, container_ip=ip, container_port=80)  # type: ignore[arg-type]
        )
    assert engine.port_mappings == {}


async def test_map_port_needs_the_overlay(
    engine_config: EngineConfig, fake_driver: FakeDriver
) -> None:
    engine = Engine(engine_config, drivers=[fake_driver])
    await engine.start()
    try:
        with pytest.raises(InvalidRequest, match="call setup_global_overlay first"):
            await engine.add_port_mapping(
                PortMapping(
                    protocol="tcp",
                    host_port=8080,
                    container_ip="10.200.4.2",
                    container_port=80,  # type: ignore[arg-type]
                )
            )
    finally:
        await engine.stop()


async def test_register_dns_of_a_name_that_does_not_fit_the_zone_is_refused(
    engine: Engine,
) -> None:
    name = ".".join(["a" * 60] * 4)  # 243 characters: valid alone, too long in prod.local.
    with pytest.raises(InvalidRequest, match=r"too long for the zone prod\.local\."):
        await engine.register_dns(name, "10.200.4.9")
    with pytest.raises(InvalidRequest, match="outside the overlay zone"):
        await engine.register_dns("example.com.", "10.200.4.9")
    assert engine.dns == {}
    await engine.register_dns("api", "10.200.4.9")
    await engine.register_dns("api.prod.local.", "10.200.4.10")
    assert len(engine.dns) == 2


async def test_unregister_dns_removes_the_manual_records_of_its_name_only(
    engine: Engine,
) -> None:
    att = await engine.attach(PID, "web")
    await engine.register_dns("web", "10.200.4.20")  # beside the attachment's record
    await engine.register_dns("API", "10.200.4.9")
    await engine.register_dns("api.prod.local.", "10.200.4.10")
    await engine.register_dns("api2", "10.200.4.9")
    await engine.register_dns("n1", str(att.ip))
    # One address object per address, whichever path recorded it.
    assert engine.dns[("n1", str(att.ip))].ip is engine.dns[("web", str(att.ip))].ip
    assert engine.dns[("api", "10.200.4.9")].ip is engine.dns[("api2", "10.200.4.9")].ip
    await engine.unregister_dns("Api")
    assert not [k for k in engine.dns if k[0] == "api"]
    await engine.unregister_dns("web")
    assert {k for k in engine.dns if k[0] == "web"} == {("web", str(att.ip))}
    assert engine.dns[("web", str(att.ip))].source.startswith("handle:")
    await engine.unregister_dns("nothing")
    left = {k[0] for k in engine.dns} - {"web", "api2", "n1"}
    assert len(left) == 1 and left.pop().endswith(".web")  # the workload's own name
    assert engine._dns_manual.get("api") == () and engine._dns_manual.get("web") == ()
    await engine.detach(PID)
    assert {k[0] for k in engine.dns} == {"api2", "n1"}


# -- the in-memory view, read while worker threads change it ---------------------------


class _RacingDict(dict[Any, Any]):
    """A dictionary whose iteration lets another thread change it half-way, the way an
    attach or detach committing on a worker thread changes the engine's view."""

    def __init__(self, data: dict[Any, Any], change: Any) -> None:
        super().__init__(data)
        self.change = change
        self.workers: list[threading.Thread] = []

    def items(self) -> Any:  # type: ignore[override]
        return self._racing(dict.items(self))

    def values(self) -> Any:  # type: ignore[override]
        return self._racing(dict.values(self))

    def get(self, key: Any, default: Any = None) -> Any:
        # A lookup (unregister_dns finds its records through an index) races too.
        value = dict.get(self, key, default)
        self._change_meanwhile()
        return value

    def _change_meanwhile(self) -> None:
        worker = threading.Thread(target=self.change)
        self.workers.append(worker)
        worker.start()
        worker.join(0.5)  # a worker may run now, unless the reader holds the view's lock

    def _racing(self, view: Any) -> Any:
        it = iter(view)
        for item in it:
            yield item
            self._change_meanwhile()
            yield from it
            return


async def test_unregister_dns_reads_a_consistent_view_of_the_records(engine: Engine) -> None:
    """The soak found ``dictionary changed size during iteration`` in unregister_dns."""
    await engine.register_dns("api", "10.200.4.9")
    await engine.register_dns("db", "10.200.4.10")
    late = DnsRecord(name="late", ip="10.200.4.11")  # type: ignore[arg-type]

    def commit_elsewhere() -> None:
        with engine._mem:  # what a commit's in-memory changes hold
            engine.dns[("late", "10.200.4.11")] = late

    racing = _RacingDict(engine.dns, commit_elsewhere)
    engine.dns = racing
    await engine.unregister_dns("api")
    for worker in racing.workers:
        worker.join(5)
    assert {name for name, _ in engine.dns} == {"db", "late"}


async def test_release_ip_reads_a_consistent_view_of_the_services(engine: Engine) -> None:
    db = await engine.setup_service_overlay("db", "shared")
    other = engine.services["web"].model_copy(update={"service": "other"})

    def commit_elsewhere() -> None:
        with engine._mem:
            engine.services["other"] = other

    racing = _RacingDict(engine.services, commit_elsewhere)
    engine.services = racing
    await engine.release_ip(db.subnet.network_address + 77)  # db's, not leased: fine
    for worker in racing.workers:
        worker.join(5)
    assert set(engine.services) == {"web", "db", "other"}


async def test_a_store_whose_check_fails_fails_the_start_and_is_closed(
    engine_config: EngineConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's check runs beside the load; its failure still fails the start."""
    from overlayd.state import SqliteStore

    checked: list[SqliteStore] = []

    def failing(self: SqliteStore) -> None:
        checked.append(self)
        raise StateError(f"The state database {self.path} cannot be read; move the file aside")

    monkeypatch.setattr(SqliteStore, "check", failing)
    cfg = engine_config.model_copy(update={"data_dir": tmp_path})
    eng = Engine(cfg, drivers=[FakeDriver()])
    with pytest.raises(StateError, match="move the file aside"):
        await eng.start()
    assert len(checked) == 1
    assert eng._store is None
    with pytest.raises(StateError, match="closed"):
        checked[0].load()
