"""The record stores: semantics (memory and SQLite), durability, atomicity, modes."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayd.errors import StateError
from overlayd.state import DB_FILENAME
from overlayd.state import SCHEMA_VERSION
from overlayd.state import MemoryStore
from overlayd.state import SqliteStore
from overlayd.state import Store
from overlayd.state import open_store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else open_store(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_commit_then_load_and_get(store: Store) -> None:
    store.commit(
        {
            ("lease", "10.0.0.2"): {"owner": "c1", "pool": "base"},
            ("lease", "10.0.0.3"): {"owner": "c2", "pool": "base"},
            ("identity", "node"): "pubkey",
        }
    )
    assert store.load() == {
        "lease": {
            "10.0.0.2": {"owner": "c1", "pool": "base"},
            "10.0.0.3": {"owner": "c2", "pool": "base"},
        },
        "identity": {"node": "pubkey"},
    }
    assert store.get("lease", "10.0.0.3") == {"owner": "c2", "pool": "base"}
    assert store.get("lease", "10.0.0.9") is None
    assert store.get("nokind", "x") is None
    # the kinds asked for as values come as a list of them, in key order
    assert store.load(values_only=("lease", "absent")) == {
        "lease": [{"owner": "c1", "pool": "base"}, {"owner": "c2", "pool": "base"}],
        "identity": {"node": "pubkey"},
    }


def test_commit_replaces_and_deletes(store: Store) -> None:
    store.commit({("k", "a"): 1, ("k", "b"): 2})
    store.commit({("k", "a"): [1, 2]}, deletes=[("k", "b"), ("k", "absent")])
    assert store.load() == {"k": {"a": [1, 2]}}


def test_deleting_last_record_of_kind_drops_kind(store: Store) -> None:
    store.commit({("k", "a"): 1})
    store.commit({}, deletes=[("k", "a")])
    assert store.load() == {}


def test_values_are_copies_not_references(store: Store) -> None:
    value: dict[str, Any] = {"ips": ["10.0.0.2"]}
    store.commit({("att", "h1"): value})
    value["ips"].append("10.0.0.3")
    loaded = store.load()
    loaded["att"]["h1"]["ips"].append("mutated")
    got = store.get("att", "h1")
    assert got == {"ips": ["10.0.0.2"]}
    got["ips"].clear()
    assert store.get("att", "h1") == {"ips": ["10.0.0.2"]}


def test_unusual_keys_and_values_round_trip(store: Store) -> None:
    puts: dict[tuple[str, str], Any] = {
        ("k", ""): None,
        ("k", 'quote"back\\slash'): "x",
        ("k", "new\nline\ttab"): {"nested": {"deep": [1.5, -2, True, None]}},
        ("k", "unicode-ü-日本"): "ü-日本-\u0000",
        ("odd kind/with:chars", "a"): 2**62,
    }
    store.commit(puts)
    expected: dict[str, dict[str, Any]] = {}
    for (kind, key), value in puts.items():
        expected.setdefault(kind, {})[key] = value
    assert store.load() == expected
    assert store.get("k", "") is None  # a stored null reads like an absent record
    assert store.get("k", "unicode-ü-日本") == "ü-日本-\u0000"


def test_tuples_come_back_as_lists(store: Store) -> None:
    store.commit({("k", "t"): (1, "a")})
    assert store.get("k", "t") == [1, "a"]


def test_failed_commit_leaves_nothing(store: Store) -> None:
    """A value that cannot be encoded after some puts and a delete: no change."""
    store.commit({("k", "keep"): "old", ("k", "gone"): "still here"})
    before = store.load()
    puts: dict[tuple[str, str], Any] = {("k", f"new{i}"): i for i in range(10)}
    puts[("k", "keep")] = "new"
    puts[("k", "bad")] = object()  # fails JSON encoding, after the others
    with pytest.raises(StateError, match=r"k/bad.*not JSON-compatible"):
        store.commit(puts, deletes=[("k", "gone")])
    assert store.load() == before
    # The store stays usable after the failure.
    store.commit({("k", "after"): True})
    assert store.get("k", "after") is True


def test_nan_is_rejected(store: Store) -> None:
    with pytest.raises(StateError, match="not JSON-compatible"):
        store.commit({("k", "nan"): float("nan")})
    assert store.load() == {}


def test_put_and_delete_same_record_is_rejected(store: Store) -> None:
    with pytest.raises(ValueError, match="both put and deleted"):
        store.commit({("k", "a"): 1}, deletes=[("k", "a")])
    assert store.load() == {}


def test_invalid_kind_is_rejected(store: Store) -> None:
    with pytest.raises(StateError, match="kind must be a non-empty string"):
        store.commit({("", "a"): 1})


def test_closed_store_refuses_use(store: Store) -> None:
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.load()
    with pytest.raises(StateError, match="closed"):
        store.commit({("k", "a"): 1})


def test_concurrent_commits_from_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(50):
                store.commit({("t", f"{t}-{i}"): i, ("last", str(t)): i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    data = store.load()
    assert len(data["t"]) == 200
    assert data["last"] == {str(t): 49 for t in range(4)}


def test_open_store_none_is_memory() -> None:
    s = open_store(None)
    assert isinstance(s, MemoryStore)
    assert isinstance(s, Store)


def test_sqlite_data_survives_close_and_reopen(tmp_path: Path) -> None:
    s = open_store(tmp_path / "data")
    assert isinstance(s, SqliteStore)
    s.commit({("lease", "a"): {"ip": "10.1.0.2"}, ("peer", "p"): ["x", 1]})
    s.commit({}, deletes=[("peer", "p")])
    s.close()
    s.close()  # idempotent
    again = open_store(tmp_path / "data")
    try:
        assert again.load() == {"lease": {"a": {"ip": "10.1.0.2"}}}
    finally:
        again.close()


def test_sqlite_uses_wal_full_and_without_rowid(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / DB_FILENAME)
    s.commit({("k", "a"): 1})
    s.close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='records'").fetchone()[0]
        assert "WITHOUT ROWID" in sql
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        assert int(version) == SCHEMA_VERSION
    finally:
        conn.close()


def test_sqlite_synchronous_is_full_by_default(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / DB_FILENAME)
    try:
        with s._locked() as conn:  # private access: the pragma is per connection
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        s.close()


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_sqlite_files_are_private(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        data = tmp_path / "data"
        s = open_store(data)
        s.commit({("k", "a"): 1})
        try:
            assert _mode(data) == 0o700
            for name in (DB_FILENAME, f"{DB_FILENAME}-wal", f"{DB_FILENAME}-shm"):
                assert (data / name).exists(), name
                assert _mode(data / name) == 0o600, name
        finally:
            s.close()
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_open_store_tightens_existing_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    open_store(data).close()
    assert _mode(data) == 0o700


def test_load_many_records(tmp_path: Path) -> None:
    """65,536 records in one commit come back exactly (timing is in bench/)."""
    s = SqliteStore(tmp_path / DB_FILENAME)
    try:
        puts = {
            ("lease", f"10.{i >> 8}.{i & 255}.1"): {"owner": f"c{i}", "n": i} for i in range(65536)
        }
        s.commit(puts)
        s.close()
        s = SqliteStore(tmp_path / DB_FILENAME)
        data = s.load()
        assert len(data["lease"]) == 65536
        assert data["lease"]["10.255.255.1"] == {"owner": "c65535", "n": 65535}
    finally:
        s.close()


def test_read_ahead_serves_one_load_and_a_commit_drops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``read_ahead`` read is the next matching ``load``'s, once; a commit discards it."""
    s = SqliteStore(tmp_path / DB_FILENAME)
    try:
        s.commit({("dns", "a"): {"name": "a"}, ("lease", "x"): {"owner": "c"}})
        reads: list[tuple[str, ...]] = []
        real_read = s._read

        def counted(conn: sqlite3.Connection, values_only: tuple[str, ...]) -> list[Any]:
            reads.append(values_only)
            return real_read(conn, values_only)

        monkeypatch.setattr(s, "_read", counted)
        expected = {"dns": [{"name": "a"}], "lease": {"x": {"owner": "c"}}}
        s.read_ahead(values_only=("dns",))
        assert s.load(values_only=("dns",)) == expected
        assert s.load(values_only=("dns",)) == expected  # read again: used once
        assert reads == [("dns",), ("dns",)]
        s.read_ahead(values_only=("dns",))
        assert s.load() == {"dns": {"a": {"name": "a"}}, "lease": {"x": {"owner": "c"}}}
        assert reads[-1] == ()  # other values_only: not the rows read ahead
        s.read_ahead(values_only=("dns",))
        s.commit({("dns", "b"): {"name": "b"}})
        assert s.load(values_only=("dns",))["dns"] == [{"name": "a"}, {"name": "b"}]
    finally:
        s.close()


def test_fingerprints_follow_the_values_and_agree_between_the_stores(tmp_path: Path) -> None:
    """Equal values in key order, equal fingerprints, in either store; any change, another."""
    memory, sqlite = MemoryStore(), SqliteStore(tmp_path / DB_FILENAME)
    try:
        seen: set[str] = set()
        steps: list[tuple[dict[tuple[str, str], Any], list[tuple[str, str]]]] = [
            ({("dns", "b"): {"name": "b", "ip": "10.0.0.2"}, ("lease", "x"): 1}, []),
            ({("dns", "a"): {"name": "a", "ip": "10.0.0.1"}}, []),
            ({("dns", "a"): {"name": "a", "ip": "10.0.0.9"}}, []),  # a value changed
            ({("lease", "y"): 2}, []),  # another kind changed: the same fingerprint
            ({}, [("dns", "b")]),
        ]
        for puts, deletes in steps:
            before = sqlite.fingerprint("dns")
            for s in (memory, sqlite):
                s.commit(puts, deletes)
            fp = sqlite.fingerprint("dns")
            assert fp is not None and memory.fingerprint("dns") == fp
            if any(kind == "dns" for kind, _ in [*puts, *deletes]):
                assert fp not in seen
            else:
                assert fp == before
            seen.add(fp)
        for s in (memory, sqlite):
            s.commit({}, [("dns", "a")])
            assert s.fingerprint("dns") is None and s.fingerprint("absent") is None
    finally:
        memory.close()
        sqlite.close()


def test_the_read_ahead_fingerprint_is_the_stored_one_until_a_commit(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / DB_FILENAME)
    try:
        s.commit({("dns", f"n{i}"): {"name": f"n{i}", "ip": "10.0.0.1"} for i in range(50)})
        fresh = s.fingerprint("dns")
        s.read_ahead(values_only=("dns",))
        assert s._fingerprints == {"dns": fresh}  # made from the read, the same text
        s.commit({("dns", "n0"): {"name": "n0", "ip": "10.0.0.2"}})
        assert not s._fingerprints
        assert s.fingerprint("dns") != fresh
    finally:
        s.close()


# ------------------------------------------------------------------ corruption


def test_garbage_file_raises_state_error_with_instructions(tmp_path: Path) -> None:
    db = tmp_path / DB_FILENAME
    db.write_bytes(b"this is not an sqlite database" * 100)
    db.chmod(0o600)
    with pytest.raises(StateError) as info:
        SqliteStore(db)
    msg = str(info.value)
    assert str(db) in msg
    assert f"mv {db} {db}.corrupt" in msg
    assert "-wal" in msg


def test_corrupted_pages_raise_state_error(tmp_path: Path) -> None:
    db = tmp_path / DB_FILENAME
    s = SqliteStore(db)
    s.commit({("k", str(i)): "x" * 200 for i in range(2000)})
    s.close()
    raw = bytearray(db.read_bytes())
    assert len(raw) > 8 * 4096
    # Keep the 100-byte header, trash the rest of page 1 and a run of pages.
    raw[100 : 6 * 4096] = b"\xa5" * (6 * 4096 - 100)
    db.write_bytes(bytes(raw))
    with pytest.raises(StateError, match="move the file aside"):
        SqliteStore(db)


def test_a_check_left_to_the_caller_reports_corruption(tmp_path: Path) -> None:
    """``check=False`` opens a database whose records are corrupt; ``check()`` refuses it."""
    db = tmp_path / DB_FILENAME
    s = SqliteStore(db)
    s.commit({("k", f"{i:05}"): "x" * 200 for i in range(4000)})
    s.check()  # a sound database
    s.close()
    raw = bytearray(db.read_bytes())
    pages = len(raw) // 4096
    # Trash pages of the records, far from the schema and the meta table.
    raw[(pages - 6) * 4096 : (pages - 2) * 4096] = b"\xa5" * (4 * 4096)
    db.write_bytes(bytes(raw))
    opened = SqliteStore(db, check=False)
    try:
        with pytest.raises(StateError, match="move the file aside"):
            opened.check()
    finally:
        opened.close()
    with pytest.raises(StateError, match="move the file aside"):
        SqliteStore(db)  # the default checks at open


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / DB_FILENAME
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="without overlayd's meta table"):
        SqliteStore(db)


def test_unwritable_location_raises_state_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a dir")
    with pytest.raises(StateError, match="private directory"):
        open_store(target / "data")


def test_sqlite_error_during_commit_is_state_error_and_rolls_back(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock: the commit fails cleanly."""
    db = tmp_path / DB_FILENAME
    s = SqliteStore(db)
    other = sqlite3.connect(db, isolation_level=None)
    try:
        s.commit({("k", "a"): 1})
        with s._locked() as conn:  # private access: no 5 s wait in a unit test
            conn.execute("PRAGMA busy_timeout=0")
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateError, match=r"1 put\(s\) and 1 delete\(s\).*failed"):
            s.commit({("k", "b"): 2}, deletes=[("k", "a")])
        other.execute("ROLLBACK")
        assert s.load() == {"k": {"a": 1}}
        s.commit({("k", "b"): 2})
        assert s.load() == {"k": {"a": 1, "b": 2}}
    finally:
        other.close()
        s.close()
