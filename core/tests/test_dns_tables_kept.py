"""The DNS tables kept across a restart (``overlayd.dns._snapshot``): reused only when valid.

Unit tests of the file (read back equal to what was written, refused for
other records, another TTL or a bad file), then the engine with the DNS
plugin and real DNS queries: a restart reuses the tables; records changed
while the daemon was down, or by a run that never stopped cleanly, or a new
TTL are served as stored, never from a stale file.
"""

from __future__ import annotations

import array
import ipaddress
import marshal
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.rdatatype
import dns.reversename
import pytest

from overlayd.config import DnsSettings
from overlayd.config import EngineConfig
from overlayd.config import EngineSettings
from overlayd.dns import _snapshot
from overlayd.dns._records import RecordStore
from overlayd.dns.plugin import DnsPlugin
from overlayd.engine import Engine
from overlayd.errors import DnsError
from overlayd.hookspecs import hookimpl
from overlayd.model import DnsRecord
from overlayd.state import DB_FILENAME
from overlayd.state import SqliteStore
from overlayd.testing.dnsquery import free_port
from overlayd.testing.dnsquery import query
from overlayd.testing.nodes import lone_engine
from overlayd_fake.driver import FakeDriver

ZONE = "prod.local."


def _exact(store_or_tables: Any) -> tuple[object, ...]:
    """Everything the tables hold, orders included (names, owners of each reverse name)."""
    t = getattr(store_or_tables, "tables", store_or_tables)
    names = [(k, e.a, e.a_rr, e.aaaa, e.aaaa_rr) for k, e in t.names.items()]
    return names, list(t.ents.items()), [(k, list(v)) for k, v in t.ptr.items()]


def _zone(seed: int) -> RecordStore:
    """A zone with names of one and several addresses, both families, deep names, changes."""
    rng = random.Random(seed)
    store = RecordStore(ZONE, 30)
    ips = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(600)] + [
        f"fd00::{i:x}" for i in range(1, 40)
    ]
    store.update(
        [],
        [(f"n{i}.svc", rng.choice(ips)) for i in range(2000)]
        + [(f"p{i}.deep.er.web", rng.choice(ips)) for i in range(50)]
        + [("web", ip) for ip in ips[:300]]
        + [("Mixed", "10.9.0.1"), ("mixed", "fd00::ff")],
    )
    for _ in range(200):
        name = rng.choice(["web", "n3.svc", "x.y", "p1.deep.er.web", "new"])
        store.update([(name, rng.choice(ips))], [(name, rng.choice(ips))])
    return store


@pytest.mark.parametrize("seed", [1, 2])
def test_the_tables_read_back_are_the_tables_written(tmp_path: Path, seed: int) -> None:
    store = _zone(seed)
    path = tmp_path / _snapshot.FILENAME
    _snapshot.write(path, store.tables, "fp-1", 30)
    assert path.stat().st_mode & 0o777 == 0o600
    tables = _snapshot.read(path, "fp-1", 30)
    assert tables is not None
    assert _exact(tables) == _exact(store)
    # Names of the same single address share one entry, as the built tables do.
    by_address: dict[object, set[int]] = {}
    for entry in tables.names.values():
        if len(entry.a) + len(entry.aaaa) == 1:
            by_address.setdefault((*entry.a, *entry.aaaa)[0], set()).add(id(entry))
    assert by_address and all(len(ids) == 1 for ids in by_address.values())


def test_names_of_one_address_share_their_entry_when_read_back(tmp_path: Path) -> None:
    """Tables made name by name (each name its own entry) read back with shared entries."""
    store = RecordStore(ZONE, 30)
    for i in range(300):  # as register_dns makes them: one change per name
        store.update([], [(f"n{i}", f"10.1.0.{i % 7 + 1}")])
    store.update([], [("multi", "10.1.0.1"), ("multi", "10.1.0.2")])
    assert len({id(e) for e in store.tables.names.values()}) == 301
    path = tmp_path / _snapshot.FILENAME
    _snapshot.write(path, store.tables, "fp", 30)
    tables = _snapshot.read(path, "fp", 30)
    assert tables is not None and _exact(tables) == _exact(store)
    assert len({id(e) for e in tables.names.values()}) == 7 + 1
    # Taken only by an empty store, and then the same answers come from it.
    fresh = RecordStore(ZONE, 30)
    assert fresh.take_tables(tables) and _exact(fresh) == _exact(store)
    assert not fresh.take_tables(_snapshot.read(path, "fp-1", 30))  # type: ignore[arg-type]
    assert fresh.get("web") == store.get("web")
    fresh.update([], [("later", "10.77.0.1")])  # changes apply to tables read back
    assert fresh.get("later") == [ipaddress.ip_address("10.77.0.1")]


def _bad_files() -> Iterator[tuple[str, bytes | None]]:
    store = _zone(3)
    good = _snapshot.dump(store.tables, "fp-1", 30)
    header, keys, positions, entries, ents, ptr = marshal.loads(good)  # noqa: S302
    yield "missing", None
    yield "garbage", b"not a marshal file at all"
    yield "truncated", good[: len(good) // 2]
    yield "not a tuple", marshal.dumps([1, 2, 3])
    yield "short tuple", marshal.dumps((header, keys))
    yield (
        "other format",
        marshal.dumps(((header[0], 999, *header[2:]), keys, positions, entries, ents, ptr)),
    )
    yield "keys not bytes", marshal.dumps((header, ["x", *keys[1:]], positions, entries, ents, ptr))
    yield (
        "position out of range",
        marshal.dumps((header, keys, _at(len(entries)) + positions[4:], entries, ents, ptr)),
    )
    yield (
        "positions not an array",
        marshal.dumps((header, keys, list(positions), entries, ents, ptr)),
    )
    yield (
        "address of 5 bytes",
        marshal.dumps((header, keys, positions, [(b"12345",), *entries[1:]], ents, ptr)),
    )
    yield (
        "entry of no address",
        marshal.dumps((header, keys, positions, [(), *entries[1:]], ents, ptr)),
    )
    yield (
        "counts not ints",
        marshal.dumps((header, keys, positions, entries, {b"\x03svc": "1"}, ptr)),
    )
    yield "lengths differ", marshal.dumps((header, keys, positions[:-4], entries, ents, ptr))
    yield "torn array", marshal.dumps((header, keys, positions[:-1], entries, ents, ptr))


def _at(position: int) -> bytes:
    """One entry position as the file packs them."""
    return array.array("I", [position]).tobytes()


@pytest.mark.parametrize(
    ("fingerprint", "ttl"), [("fp-2", 30), ("fp-1", 31)], ids=["other records", "other TTL"]
)
def test_a_file_of_other_records_or_another_ttl_is_not_used(
    tmp_path: Path, fingerprint: str, ttl: int
) -> None:
    path = tmp_path / _snapshot.FILENAME
    _snapshot.write(path, _zone(4).tables, "fp-1", 30)
    assert _snapshot.read(path, fingerprint, ttl) is None
    assert _snapshot.read(path, "fp-1", 30) is not None


def test_a_bad_file_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / _snapshot.FILENAME
    for what, data in _bad_files():
        path.unlink(missing_ok=True)
        if data is not None:
            path.write_bytes(data)
        assert _snapshot.read(path, "fp-1", 30) is None, what


# ---------------------------------------------------------------- through the engine


def _config(data_dir: Path | None, port: int, ttl: int = 30) -> EngineConfig:
    settings = DnsSettings(
        listen=[f"127.0.0.1:{port}"], listen_on_gateways=False, forward=False, ttl=ttl
    )
    return EngineConfig(
        data_dir=data_dir, drivers=[], dns=settings, engine=EngineSettings(health_interval_secs=0)
    )


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many records each table build of the DNS server was given."""
    counted: list[int] = []
    build = RecordStore._build

    def counting(self: RecordStore, pairs: Any) -> Any:
        pairs = list(pairs)
        counted.append(len(pairs))
        return build(self, pairs)

    monkeypatch.setattr(RecordStore, "_build", counting)
    return counted


def _engine(cfg: EngineConfig, *plugins: object, store: Any = None) -> Engine:
    """An engine on the fake driver with the built-in DNS plugin (and ``plugins``)."""
    return Engine(cfg, drivers=[FakeDriver()], store=store, plugins=[DnsPlugin(cfg.dns), *plugins])


async def _answers(port: int, name: str, rdtype: str = "A") -> set[str]:
    answer = await query(f"{name}.{ZONE}", port, rdtype)
    return {r.to_text() for rrset in answer.answer for r in rrset}


async def _fill(cfg: EngineConfig) -> None:
    fake = FakeDriver()
    async with lone_engine(cfg, [fake], plugins=[DnsPlugin(cfg.dns)], slice_cidr=None) as eng:
        await eng.register_dns("db", "10.200.9.9")
        await eng.register_dns("db", "fd00::9")
        await eng.register_dns("web", "10.200.9.10")
        await eng.register_dns("api.web", "10.200.9.10")


async def test_a_restart_reuses_the_tables_kept_at_stop(tmp_path: Path, builds: list[int]) -> None:
    port = free_port()
    cfg = _config(tmp_path, port)
    await _fill(cfg)
    assert (tmp_path / _snapshot.FILENAME).is_file()
    builds.clear()
    async with _engine(cfg) as eng:
        assert builds == []  # read back, not built
        assert await _answers(port, "db") == {"10.200.9.9"}
        assert await _answers(port, "db", "AAAA") == {"fd00::9"}
        ptr = await query(dns.reversename.from_address("10.200.9.10").to_text(), port, "PTR")
        assert {r.to_text() for r in ptr.answer[0]} == {f"web.{ZONE}", f"api.web.{ZONE}"}
        await eng.register_dns("later", "10.200.9.11")  # the read-back tables take changes
        assert await _answers(port, "later") == {"10.200.9.11"}
        await eng.unregister_dns("web")
        assert await _answers(port, "web") == set()
    builds.clear()
    async with _engine(cfg):
        assert builds == []  # the changes were kept at the stop
        assert await _answers(port, "later") == {"10.200.9.11"}
        assert await _answers(port, "web") == set()
        assert await _answers(port, "api.web") == {"10.200.9.10"}


async def test_records_changed_while_stopped_are_served_not_the_kept_tables(
    tmp_path: Path, builds: list[int]
) -> None:
    port = free_port()
    cfg = _config(tmp_path, port)
    await _fill(cfg)
    store = SqliteStore(tmp_path / DB_FILENAME)  # another writer: a tool, an older overlayd
    try:
        store.commit(
            {("dns", "new|10.200.9.12"): {"name": "new", "ip": "10.200.9.12", "source": "manual"}},
            [("dns", "web|10.200.9.10")],
        )
    finally:
        store.close()
    builds.clear()
    async with _engine(cfg):
        assert builds == [4]
        assert await _answers(port, "new") == {"10.200.9.12"}
        assert await _answers(port, "web") == set()
        assert await _answers(port, "db") == {"10.200.9.9"}


async def test_a_run_that_never_stopped_leaves_a_file_that_is_not_used(
    tmp_path: Path, builds: list[int]
) -> None:
    """A crash: records changed after the file was written, and no stop wrote it again."""
    port = free_port()
    first, crashed = tmp_path / "first", tmp_path / "crashed"
    cfg = _config(first, port)
    await _fill(cfg)
    async with _engine(cfg) as eng:
        await eng.register_dns("late", "10.200.9.13")
        # What a crash leaves: the store as committed, the file of the last stop.
        shutil.copytree(first, crashed)
    builds.clear()
    async with _engine(_config(crashed, port)):
        assert builds == [5]
        assert await _answers(port, "late") == {"10.200.9.13"}


async def test_another_ttl_rebuilds_and_no_records_leave_no_file(
    tmp_path: Path, builds: list[int]
) -> None:
    port = free_port()
    await _fill(_config(tmp_path, port))
    builds.clear()
    cfg = _config(tmp_path, port, ttl=77)
    async with _engine(cfg) as eng:
        assert builds == [4]
        answer = await query(f"web.{ZONE}", port)
        assert answer.answer[0].ttl == 77 and answer.answer[0].rdtype == dns.rdatatype.A
        for name in ("db", "web", "api.web"):
            await eng.unregister_dns(name)
    assert not (tmp_path / _snapshot.FILENAME).exists()


async def test_a_store_without_fingerprints_builds_every_time(
    tmp_path: Path, builds: list[int]
) -> None:
    """An embedder's store from before ``Store.fingerprint``: no fingerprint, a build each start."""

    class OldStore:
        def __init__(self, path: Path) -> None:
            self._s = SqliteStore(path)

        def load(self, *, values_only: Any = ()) -> dict[str, Any]:
            return self._s.load(values_only=values_only)

        def commit(self, puts: Any, deletes: Any = ()) -> None:
            self._s.commit(puts, deletes)

        def get(self, kind: str, key: str) -> Any:
            return self._s.get(kind, key)

        def close(self) -> None:
            self._s.close()

    port = free_port()
    cfg = _config(tmp_path, port)
    await _fill(cfg)
    for _ in range(2):
        builds.clear()
        store: Any = OldStore(tmp_path / DB_FILENAME)
        async with _engine(cfg, store=store):
            assert builds == [4]
            assert await _answers(port, "web") == {"10.200.9.10"}
        assert not (tmp_path / _snapshot.FILENAME).exists()


async def test_records_of_other_nodes_are_never_kept(tmp_path: Path, builds: list[int]) -> None:
    """Cluster mode serves records it does not store, and sends them again after a start."""
    port = free_port()
    cfg = _config(tmp_path, port)
    await _fill(cfg)
    remote = DnsRecord(name="far", ip="10.200.99.1", source="cluster:n2")
    async with _engine(cfg) as eng:
        await eng.serve_remote_dns([remote], [])
        assert await _answers(port, "far") == {"10.200.99.1"}
    assert not (tmp_path / _snapshot.FILENAME).exists()  # it held a record not stored
    builds.clear()
    async with _engine(cfg):
        assert builds == [4]
        assert await _answers(port, "far") == set()  # gone with the run that served it


class _Failing:
    """A DNS plugin whose change hook fails for ``new`` (the built-in one applied it first)."""

    name = "failing"

    @hookimpl(trylast=True)
    def overlayd_dns_records_changed(self, added: list[Any], removed: list[Any]) -> None:
        if any(r.name == "new" for r in added):
            raise DnsError("this plugin could not apply the change", op="dns_records_changed")


async def test_tables_are_not_kept_after_a_change_failed(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, port)
    await _fill(cfg)
    async with _engine(cfg, _Failing()) as eng:
        with pytest.raises(DnsError):
            await eng.register_dns("new", "10.200.9.20")
    assert not (tmp_path / _snapshot.FILENAME).exists()
