"""Schema migrations of the SQLite state store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from overlayd.errors import StateError
from overlayd.state import MIGRATIONS
from overlayd.state import SCHEMA_VERSION
from overlayd.state import SqliteStore


def _make_v1(db: Path, rows: list[tuple[str, str, str]]) -> None:
    """A database as the version-1 code wrote it (rowid table, no JSON check)."""
    conn = sqlite3.connect(db)
    try:
        conn.executescript(
            """
            PRAGMA journal_mode=WAL;
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL,
                                  value TEXT NOT NULL, PRIMARY KEY (kind, key));
            INSERT INTO meta VALUES ('schema_version', '1');
            """
        )
        conn.executemany("INSERT INTO records VALUES (?, ?, ?)", rows)
        conn.commit()
    finally:
        conn.close()


def _version(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'")
        return int(row.fetchone()[0])
    finally:
        conn.close()


def test_schema_version_is_number_of_migrations() -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) == 2


def test_migrates_v1_database_to_v2_keeping_records(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    _make_v1(
        db,
        [
            ("lease", "10.0.0.2", '{"owner":"c1"}'),
            ("identity", "node", '"pub"'),
        ],
    )
    s = SqliteStore(db)
    try:
        assert s.schema_version == 2
        assert s.load() == {
            "lease": {"10.0.0.2": {"owner": "c1"}},
            "identity": {"node": "pub"},
        }
        s.commit({("lease", "10.0.0.3"): {"owner": "c2"}})
    finally:
        s.close()
    conn = sqlite3.connect(db)
    try:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='records'").fetchone()[0]
        assert "WITHOUT ROWID" in sql
        # v2 refuses text that is not JSON.
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO records VALUES ('k', 'x', 'not json')")
        assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 3
    finally:
        conn.close()


def test_failed_migration_rolls_back_to_v1(tmp_path: Path) -> None:
    """A v1 row that is not JSON fails the v2 step; the database stays v1, intact."""
    db = tmp_path / "state.db"
    _make_v1(db, [("k", "good", "1"), ("k", "bad", "{not json")])
    with pytest.raises(StateError, match=str(db)):
        SqliteStore(db)
    assert _version(db) == 1
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT kind, key, value FROM records ORDER BY key").fetchall()
        assert rows == [("k", "bad", "{not json"), ("k", "good", "1")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"meta", "records"}
    finally:
        conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="schema version 99, newer"):
        SqliteStore(db)
    assert _version(db) == 99


def test_new_database_runs_every_step(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    s = SqliteStore(db)
    s.close()
    assert _version(db) == SCHEMA_VERSION
