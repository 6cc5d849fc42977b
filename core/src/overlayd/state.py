"""The durable state store.

The engine keeps its working state in memory as typed models and commits once
per operation, after the host effects succeeded. This module is the durable
side of that: a generic record store, ``kind -> key -> JSON value``, whose
:meth:`Store.commit` applies a whole operation's changes in one transaction.

* :class:`SqliteStore` keeps the records in one SQLite database (WAL mode,
  ``synchronous=FULL``) under the data directory. A crash at any instant leaves
  either the whole commit or none of it.
* :class:`MemoryStore` has the same semantics without durability: for tests and
  for embedded engines that do not need to survive a restart.

Private keys are kept apart from the records, in :class:`overlayd.secrets.SecretStore`
(re-exported here, as are the file helpers of :mod:`overlayd.files`).

:func:`open_store` picks the store for a data directory (``None`` means memory).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import stat
import sys
import threading
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from typing import Final
from typing import Literal
from typing import Protocol
from typing import final
from typing import runtime_checkable

from overlayd.errors import StateError
from overlayd.files import O_CLOEXEC
from overlayd.files import ensure_private_dir
from overlayd.files import fsync_dir
from overlayd.files import private_umask
from overlayd.files import write_file_atomic
from overlayd.secrets import KEYS_DIRNAME
from overlayd.secrets import Secret
from overlayd.secrets import SecretStore
from overlayd.secrets import open_secrets

__all__ = [
    "DB_FILENAME",
    "KEYS_DIRNAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "MemoryStore",
    "Secret",
    "SecretStore",
    "SqliteStore",
    "Store",
    "ensure_private_dir",
    "open_secrets",
    "open_store",
    "write_file_atomic",
]

log = logging.getLogger(__name__)

#: File name of the state database inside the data directory.
DB_FILENAME: Final = "state.db"

_IS_WINDOWS: Final = sys.platform == "win32"


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class Store(Protocol):
    """A durable (or not) map of ``kind -> key -> JSON-compatible value``."""

    def load(self, *, values_only: Collection[str] = ()) -> dict[str, Any]:
        """All records: kind -> key -> JSON-compatible value (dict/list/str/int...).

        ``values_only``: kinds whose records come as a list of their values,
        without the keys (the engine reads its DNS records so: their 120,000
        keys, parsed for nothing, were ~5 % of a large node's start-up).
        """
        ...

    def commit(
        self,
        puts: Mapping[tuple[str, str], Any],
        deletes: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Apply every put and delete atomically in one transaction.

        Raises :class:`~overlayd.errors.StateError` on failure, in which case
        nothing of the commit is stored. Deleting an absent record is not an
        error. A ``(kind, key)`` that is both put and deleted is a caller bug
        (:class:`ValueError`).
        """
        ...

    def get(self, kind: str, key: str) -> Any | None:
        """The value of one record, or ``None`` when it does not exist."""
        ...

    def fingerprint(self, kind: str) -> str | None:
        """A digest of the values of ``kind``'s records as stored now; ``None`` when it has none.

        Equal fingerprints mean equal values in the same key order, whoever
        wrote them (the keys themselves are not part of it): a plugin may
        keep what it derived from the values under it and reuse that only
        while the store gives the same fingerprint (the DNS server's tables,
        :mod:`overlayd.dns._snapshot`).
        """
        ...

    def close(self) -> None:
        """Release the store; later calls raise :class:`StateError`."""
        ...


# --------------------------------------------------------------------------- helpers


def _digest(document: str) -> str:
    """The fingerprint (:meth:`Store.fingerprint`) of a kind's values joined as a JSON array."""
    return hashlib.blake2b(document.encode(), digest_size=16).hexdigest()


def _encode(kind: object, key: object, value: Any) -> str:
    """JSON text of a record value; :class:`StateError` if it has no JSON form."""
    if not isinstance(kind, str) or not kind:
        raise StateError(f"record kind must be a non-empty string, not {kind!r}.")
    if not isinstance(key, str):
        raise StateError(f"record key of kind {kind!r} must be a string, not {key!r}.")
    try:
        # NaN/Infinity are not JSON; refuse them rather than write what other
        # readers (ZLayer, jq) cannot parse.
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        # NOTE: the message names the type, never the value: values can hold keys.
        raise StateError(
            f"cannot store record {kind}/{key}: the value is not JSON-compatible "
            f"({type(exc).__name__}: {exc}); the engine must store plain "
            "dict/list/str/int/float/bool/None values."
        ) from exc


class _RecordStore(abc.ABC):
    """What both stores' :meth:`commit` does before its own ``_apply``: the contract's checks."""

    def commit(
        self,
        puts: Mapping[tuple[str, str], Any],
        deletes: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Apply puts and deletes atomically (see :meth:`Store.commit`)."""
        deletes = list(deletes)
        both = set(puts).intersection(deletes)
        if both:
            raise ValueError(f"records {sorted(both)!r} are both put and deleted in one commit")
        self._apply(puts, deletes)

    @abc.abstractmethod
    def _apply(self, puts: Mapping[tuple[str, str], Any], deletes: list[tuple[str, str]]) -> None:
        """Write the checked puts and deletes, all or nothing."""


# --------------------------------------------------------------------------- memory


@final
class MemoryStore(_RecordStore):
    """A :class:`Store` in memory, with the same semantics as :class:`SqliteStore`.

    Values are kept as JSON text, so what goes in must be JSON-compatible (as in
    SQLite), tuples come back as lists, and no caller can mutate stored state
    through a reference it passed in or got back.
    """

    def __init__(self) -> None:
        self._records: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("the in-memory state store is closed.")

    def load(self, *, values_only: Collection[str] = ()) -> dict[str, Any]:
        """All records, decoded into fresh objects (see :meth:`Store.load`)."""
        with self._lock:
            self._check_open()
            return {
                kind: [json.loads(text) for text in records.values()]
                if kind in values_only
                else {key: json.loads(text) for key, text in records.items()}
                for kind, records in self._records.items()
                if records
            }

    def _apply(self, puts: Mapping[tuple[str, str], Any], deletes: list[tuple[str, str]]) -> None:
        """Encode everything first, then change the dict."""
        # Encoding every value before touching the dict is what makes this atomic.
        encoded = [(kind, key, _encode(kind, key, v)) for (kind, key), v in puts.items()]
        with self._lock:
            self._check_open()
            for kind, key in deletes:
                records = self._records.get(kind)
                if records is not None:
                    records.pop(key, None)
                    if not records:
                        del self._records[kind]
            for kind, key, text in encoded:
                self._records.setdefault(kind, {})[key] = text

    def get(self, kind: str, key: str) -> Any | None:
        """The value of one record, or ``None``."""
        with self._lock:
            self._check_open()
            text = self._records.get(kind, {}).get(key)
        return None if text is None else json.loads(text)

    def fingerprint(self, kind: str) -> str | None:
        """See :meth:`Store.fingerprint`."""
        with self._lock:
            self._check_open()
            records = sorted(self._records.get(kind, {}).items())
        if not records:
            return None
        return _digest("[" + ",".join(text for _, text in records) + "]")

    def close(self) -> None:
        """Forget nothing, but refuse further use (as a closed database would)."""
        with self._lock:
            self._closed = True


# --------------------------------------------------------------------------- sqlite

Migration = Callable[[sqlite3.Connection], None]


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    """First layout: a meta table and a rowid records table."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, "
        "value TEXT NOT NULL, PRIMARY KEY (kind, key))"
    )


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Records become a WITHOUT ROWID table that only accepts valid JSON.

    WITHOUT ROWID clusters the rows on ``(kind, key)``: one b-tree instead of a
    table plus an index, so a put touches fewer pages and a full load reads the
    rows in key order. ``json_valid`` (SQLite >= 3.38 has JSON built in) stops a
    hand edit or a bug from storing text that :meth:`SqliteStore.load` cannot read.
    """
    conn.execute(
        "CREATE TABLE records_v2 (kind TEXT NOT NULL, key TEXT NOT NULL, "
        "value TEXT NOT NULL CHECK (json_valid(value)), "
        "PRIMARY KEY (kind, key)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO records_v2 (kind, key, value) SELECT kind, key, value FROM records")
    conn.execute("DROP TABLE records")
    conn.execute("ALTER TABLE records_v2 RENAME TO records")


#: ``MIGRATIONS[n]`` turns a version-``n`` database into version ``n + 1``; a new
#: database is version 0. Append steps, never edit a released one.
MIGRATIONS: Final[tuple[Migration, ...]] = (_migrate_0_to_1, _migrate_1_to_2)
#: The version this code writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)


#: A kind's values as one JSON array, in key order (the table is kept in
#: (kind, key) order): what a kind read as values is, and what its fingerprint digests.
_VALUES_ARRAY: Final = "'[' || group_concat(value, ',') || ']'"


# One JSON object per kind, assembled by SQLite: one json.loads of the whole
# document is faster than one call per record (figures in docs/design-notes.rst,
# "Measured choices in core"). Concatenating the stored text is sound because v2
# only admits valid JSON (CHECK json_valid) and (kind, key) is the primary key.
# The kinds in the JSON array parameter come as one array of their values.
_LOAD_BY_KIND: Final = (
    "SELECT kind, CASE WHEN kind IN (SELECT value FROM json_each(?)) "  # noqa: S608 (constants)
    f"THEN {_VALUES_ARRAY} "
    "ELSE '{' || group_concat(json_quote(key) || ':' || value, ',') || '}' END "
    "FROM records GROUP BY kind"
)


def _quick_check(conn: sqlite3.Connection) -> None:
    """Fail at open, with instructions, rather than mid-operation.

    Proportional to the database's size: 0.11-0.13 s for a large node's
    140,000 records (a 20 MB file) on the development VM.
    """
    row = conn.execute("PRAGMA quick_check").fetchone()
    if row is None or row[0] != "ok":
        raise sqlite3.DatabaseError(f"quick_check reported {row!r}")


#: The text ``_LOAD_BY_KIND`` gives a kind read as values, for that kind alone.
_FINGERPRINT: Final = f"SELECT {_VALUES_ARRAY} FROM records WHERE kind = ?"  # noqa: S608


def _corrupt_message(path: Path, exc: BaseException) -> str:
    return (
        f"The state database {path} cannot be read ({exc}); it is corrupt or not "
        "an overlayd database. Stop overlayd, move the file aside together with "
        f"its -wal and -shm files (for example `mv {path} {path}.corrupt; "
        f"mv {path}-wal {path}-wal.corrupt; mv {path}-shm {path}-shm.corrupt`), "
        "then start overlayd again: it starts from empty state and adopts what "
        "it finds on the host."
    )


@final
class SqliteStore(_RecordStore):
    """A :class:`Store` in one SQLite database file.

    Durability: WAL mode with ``synchronous=FULL``. In WAL mode ``NORMAL``
    survives a process crash but a power loss or kernel crash may roll back the
    last commits; the engine commits only after changing the host and then
    answers the client, so a lost commit would be a lease or a WireGuard
    identity the host and the orchestrator rely on but overlayd forgot. FULL
    makes every acknowledged commit durable for the price of one fsync of the
    WAL per commit (a few hundred microseconds; figures in
    ``docs/design-notes.rst``, "Measured choices in core"). Operations cost
    netlink round trips of the same order, and ``batch`` operations commit once.

    Threads: one connection guarded by a lock. SQLite admits one writer at a time
    anyway, the engine reads the database only once at start (it keeps state in
    memory), and one connection can be closed deterministically from any
    thread, which per-thread connections cannot.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL",
        check: bool = True,
    ) -> None:
        """Open (create, migrate) the database.

        ``check``: run SQLite's ``quick_check`` here (the default). With
        ``False`` the caller runs :meth:`check` itself, and must before it
        trusts what it read; a database that needs migrating is checked here
        all the same, before the migration writes to it.
        """
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"unsupported synchronous mode {synchronous!r}")
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._create_file()
        try:
            with private_umask():
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                    check_same_thread=False,  # guarded by self._lock
                    timeout=5.0,
                )
        except sqlite3.Error as exc:
            raise StateError(
                f"cannot open the state database {self.path}: {exc}; check that "
                "the data directory exists and overlayd may write to it."
            ) from exc
        try:
            with private_umask():
                self._configure(conn, synchronous)
                if check or self._read_version(conn) != SCHEMA_VERSION:
                    _quick_check(conn)
                self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateError(_corrupt_message(self.path, exc)) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        #: Rows read by :meth:`read_ahead` for the next :meth:`load`, with its ``values_only``.
        self._ahead: tuple[tuple[str, ...], list[Any]] | None = None
        #: Fingerprints made from what :meth:`read_ahead` read, until a commit.
        self._fingerprints: dict[str, str] = {}

    def _create_file(self) -> None:
        """Create the parent (0700) and the database file (0600) if missing."""
        if not self.path.parent.exists():
            ensure_private_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o600)
        except FileExistsError:
            self._check_mode()
            return
        except OSError as exc:
            raise StateError(
                f"cannot create the state database {self.path}: "
                f"{exc.strerror or exc}; check the data directory's permissions."
            ) from exc
        os.close(fd)
        # SQLite gives the -wal and -shm files the mode of the database file.
        fsync_dir(self.path.parent)

    def _check_mode(self) -> None:
        if _IS_WINDOWS:
            return
        try:
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                log.warning(
                    "State database %s had mode %o; setting it to 0600.",
                    self.path,
                    mode,
                )
                self.path.chmod(0o600)
        except OSError as exc:
            raise StateError(
                f"cannot read the state database {self.path}: "
                f"{exc.strerror or exc}; check its owner and permissions."
            ) from exc

    @staticmethod
    def _configure(conn: sqlite3.Connection, synchronous: str) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StateError(
                "the state database could not switch to WAL mode "
                f"(journal_mode is {mode!r}); is the data directory on a "
                "filesystem without shared-memory support (e.g. some network "
                "filesystems)? Use a local directory."
            )
        conn.execute(f"PRAGMA synchronous={synchronous}")
        # Deleted records are overwritten with zeros, not left in free pages:
        # a guest's private key lives in its attachment record until detach.
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        # A reader such as the sqlite3 CLI may hold the lock for a moment.
        conn.execute("PRAGMA busy_timeout=5000")

    def check(self) -> None:
        """SQLite's ``quick_check`` of the whole file, on a connection of its own.

        What the constructor runs unless given ``check=False``: the engine
        runs it on a worker of its own while it decodes what it read, SQLite
        working without the GIL on the other core (docs/design-notes.rst,
        "Footprint of a large node"), and fails the start if it fails.

        :raises StateError: the database is corrupt, with what to do about it.
        """
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as exc:
            raise StateError(_corrupt_message(self.path, exc)) from exc
        try:
            _quick_check(conn)
        except sqlite3.DatabaseError as exc:
            raise StateError(_corrupt_message(self.path, exc)) from exc
        finally:
            conn.close()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = self._read_version(conn)
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"The state database {self.path} has schema version {version}, "
                    f"newer than this overlayd understands ({SCHEMA_VERSION}); run "
                    "the newer overlayd, or move the database aside to start over."
                )
            for step in range(version, SCHEMA_VERSION):
                log.info(
                    "Migrating state database %s from schema %d to %d.",
                    self.path,
                    step,
                    step + 1,
                )
                MIGRATIONS[step](conn)
            if version != SCHEMA_VERSION:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _read_version(conn: sqlite3.Connection) -> int:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if has_meta is None:
            others = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type='table'"
            ).fetchone()
            if others is not None and others[0]:
                raise sqlite3.DatabaseError(
                    "the file is an SQLite database without overlayd's meta table"
                )
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise sqlite3.DatabaseError("the meta table has no schema_version")
        try:
            return int(row[0])
        except ValueError as exc:
            raise sqlite3.DatabaseError(f"the schema_version {row[0]!r} is not a number") from exc

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        with self._locked() as conn:
            return self._read_version(conn)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StateError(f"the state database {self.path} is closed.")
            yield self._conn

    def _read(self, conn: sqlite3.Connection, values_only: tuple[str, ...]) -> list[Any]:
        try:
            return conn.execute(_LOAD_BY_KIND, (json.dumps(list(values_only)),)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StateError(_corrupt_message(self.path, exc)) from exc

    def read_ahead(self, *, values_only: Collection[str] = ()) -> None:
        """Read every record now, for the next :meth:`load` with the same ``values_only``.

        SQLite assembles the documents without the GIL; the engine does it
        in the worker that opened the store, beside the drivers' own start,
        and decodes them later in :meth:`load` (docs/design-notes.rst,
        "Footprint of a large node"). Any commit in between drops them.
        """
        with self._locked() as conn:
            rows = self._read(conn, tuple(values_only))
            self._ahead = (tuple(values_only), rows)
            self._fingerprints = {kind: _digest(doc) for kind, doc in rows if kind in values_only}

    def load(self, *, values_only: Collection[str] = ()) -> dict[str, Any]:
        """All records, read in one snapshot (see :meth:`Store.load`)."""
        with self._locked() as conn:
            ahead, self._ahead = self._ahead, None
            if ahead is not None and ahead[0] == tuple(values_only):
                rows = ahead[1]
            else:
                rows = self._read(conn, tuple(values_only))
        out: dict[str, Any] = {}
        for kind, document in rows:
            try:
                out[kind] = json.loads(document)
            except json.JSONDecodeError as exc:
                raise StateError(_corrupt_message(self.path, exc)) from None
        return out

    def _apply(self, puts: Mapping[tuple[str, str], Any], deletes: list[tuple[str, str]]) -> None:
        """Apply puts and deletes in one transaction; all or nothing."""
        if not puts and not deletes:
            return
        # Values are encoded while the transaction is open (the generator below
        # feeds executemany), so a bad value half-way exercises the rollback
        # path, the same one a disk error takes.
        rows = ((kind, key, _encode(kind, key, v)) for (kind, key), v in puts.items())
        with self._locked() as conn:
            self._ahead = None  # read before this commit
            self._fingerprints = {}
            try:
                conn.execute("BEGIN IMMEDIATE")
                if deletes:
                    conn.executemany("DELETE FROM records WHERE kind = ? AND key = ?", deletes)
                conn.executemany(
                    "INSERT OR REPLACE INTO records (kind, key, value) VALUES (?, ?, ?)",
                    rows,
                )
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        # SQLite already rolled back (e.g. after SQLITE_FULL).
                        log.debug("ROLLBACK after a failed commit failed too")
                if isinstance(exc, sqlite3.Error):
                    raise StateError(
                        f"committing {len(puts)} put(s) and {len(deletes)} "
                        f"delete(s) to {self.path} failed ({exc}); nothing was "
                        "stored. Check free disk space and the file's permissions."
                    ) from exc
                raise

    def get(self, kind: str, key: str) -> Any | None:
        """The value of one record, or ``None``."""
        with self._locked() as conn:
            try:
                row = conn.execute(
                    "SELECT value FROM records WHERE kind = ? AND key = ?", (kind, key)
                ).fetchone()
            except sqlite3.DatabaseError as exc:
                raise StateError(_corrupt_message(self.path, exc)) from exc
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError as exc:
            raise StateError(_corrupt_message(self.path, exc)) from None

    def fingerprint(self, kind: str) -> str | None:
        """See :meth:`Store.fingerprint`; SQLite joins the values without the GIL.

        A kind :meth:`read_ahead` read as values has its fingerprint made
        from that read, until the next commit.
        """
        with self._locked() as conn:
            held = self._fingerprints.get(kind)
            if held is not None:
                return held
            try:
                row = conn.execute(_FINGERPRINT, (kind,)).fetchone()
            except sqlite3.DatabaseError as exc:
                raise StateError(_corrupt_message(self.path, exc)) from exc
        return None if row is None or row[0] is None else _digest(row[0])

    def scrub(self) -> None:
        """Leave no copy of deleted records in the write-ahead log.

        Deleted records are zeroed in their pages (``secure_delete``), but the
        WAL still holds the page images written before the delete. A
        ``TRUNCATE`` checkpoint copies the current pages into the database and
        empties the WAL file. Costs one checkpoint; called after a delete that
        removed a secret.

        :raises StateError: the checkpoint failed (e.g. the disk is full).
        """
        with self._locked() as conn:
            try:
                row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                raise StateError(f"checkpointing {self.path} failed ({exc})") from exc
        if row is not None and row[0]:
            raise StateError(f"checkpointing {self.path} was blocked by a reader; retry later")

    def close(self) -> None:
        """Checkpoint and close the database; idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------- factory


def open_store(data_dir: Path | None, *, check: bool = True) -> Store:
    """The store for ``data_dir``: SQLite in ``data_dir/state.db``, or memory.

    ``check``: as :class:`SqliteStore`'s (with ``False``, the caller runs its ``check``).
    """
    if data_dir is None:
        return MemoryStore()
    ensure_private_dir(Path(data_dir))
    return SqliteStore(Path(data_dir) / DB_FILENAME, check=check)
