"""The record tables kept across a restart: written at a stop, read instead of a rebuild.

Building the tables of a large zone (120,000 records) is a fifth of a large
node's start-up (docs/design-notes.rst, "Footprint of a large node"). When
the engine stops, the DNS plugin writes the tables to ``dns-tables.bin`` in
the data directory, under the *fingerprint* the state store gives the DNS
records as they are stored then (:meth:`overlayd.state.Store.fingerprint`).
The next start reads the file instead of building the tables only when the
store gives the records the same fingerprint and the TTL is the same; in
every other case (records changed since, by this daemon or anything else,
a crash before the file was written, another TTL, another format, a file
that does not read back) the tables are built from the records as before.

The file is :mod:`marshal` data of builtin types only (bytes, ints, tuples,
lists, dicts), checked as it is read: no code is run from it. Names of one
address share their entry, and keys shared between the tables are written
once, so the tables read back take the memory the built ones do.
"""

from __future__ import annotations

import array
import ipaddress
import marshal
import sys
from pathlib import Path
from typing import Any
from typing import Final

from overlayd.dns._records import Address
from overlayd.dns._records import _Entry
from overlayd.dns._records import _rr
from overlayd.dns._records import _Tables
from overlayd.files import write_file_atomic

__all__ = ["FILENAME", "dump", "read", "write"]

#: The file in the data directory.
FILENAME: Final = "dns-tables.bin"
_MAGIC: Final = "overlayd-dns-tables"
#: Bumped whenever the tables or this file change shape.
_FORMAT: Final = 1
#: The array type of the names' entry positions (unsigned, 32 bits here).
_POSITION: Final = "I"
_POSITION_SIZE: Final = array.array(_POSITION).itemsize


def _header(fingerprint: str, ttl: int) -> tuple[Any, ...]:
    return (_MAGIC, _FORMAT, sys.version_info[:2], sys.byteorder, fingerprint, ttl)


def dump(tables: _Tables, fingerprint: str, ttl: int) -> bytes:
    """The file's bytes: ``tables`` (made with ``ttl``) of the records stored as ``fingerprint``."""
    # An entry's position, by its one address (names of one address share
    # their entry when read back, as a bulk build makes them, even where the
    # tables were made name by name, e.g. by 100,000 register_dns) or, for
    # a name of several addresses (its own round-robin turns), by identity.
    index: dict[object, int] = {}
    entries: list[tuple[bytes, ...]] = []
    keys = list(tables.names)
    # One array, not 110,000 int objects to make and free at a read.
    positions = array.array(_POSITION)
    for entry in tables.names.values():
        packed = (*(x.packed for x in entry.a), *(x.packed for x in entry.aaaa))
        alike: object = packed if len(packed) == 1 else id(entry)
        at = index.get(alike)
        if at is None:
            at = index[alike] = len(entries)
            entries.append(packed)
        positions.append(at)
    return marshal.dumps(
        (_header(fingerprint, ttl), keys, positions.tobytes(), entries, tables.ents, tables.ptr)
    )


def write(path: Path, tables: _Tables, fingerprint: str, ttl: int) -> None:
    """Write the file atomically and durably (mode 0600), replacing any earlier one."""
    write_file_atomic(path, dump(tables, fingerprint, ttl))


def read(path: Path, fingerprint: str, ttl: int) -> _Tables | None:
    """The tables in the file when it was written for ``fingerprint`` and ``ttl``; else ``None``.

    ``None`` also when the file is missing or does not read back as tables.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    try:
        loaded = marshal.loads(data)  # noqa: S302 (checked by _tables)
        del data  # a large block: gone before the tables are made
        return _tables(loaded, fingerprint, ttl)
    except (EOFError, ValueError, TypeError, IndexError, KeyError):
        return None


def _tables(loaded: Any, fingerprint: str, ttl: int) -> _Tables | None:
    header, keys, packed_positions, entries, ents, ptr = loaded
    if header != _header(fingerprint, ttl):
        return None
    if not (
        type(keys) is list
        and type(packed_positions) is bytes
        and type(entries) is list
        and type(ents) is dict
        and type(ptr) is dict
        and len(packed_positions) == len(keys) * _POSITION_SIZE
        and set(map(type, keys)) <= {bytes}
        and set(map(type, ents)) <= {bytes}
        and set(map(type, ents.values())) <= {int}
        and set(map(type, ptr)) <= {bytes}
        and set(map(type, ptr.values())) <= {dict}
    ):
        return None
    addresses: dict[bytes, tuple[Address, bytes]] = {}
    made: list[_Entry] = []
    for packed in entries:
        a: list[ipaddress.IPv4Address] = []
        a_rr: list[bytes] = []
        aaaa: list[ipaddress.IPv6Address] = []
        aaaa_rr: list[bytes] = []
        for raw in packed:
            held = addresses.get(raw)
            if held is None:
                if type(raw) is not bytes or len(raw) not in (4, 16):
                    return None
                addr: Address = (
                    ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
                )
                held = addresses[raw] = (addr, _rr(addr, ttl))
            found = held[0]
            if isinstance(found, ipaddress.IPv4Address):
                a.append(found)
                a_rr.append(held[1])
            else:
                aaaa.append(found)
                aaaa_rr.append(held[1])
        if not a and not aaaa:
            return None
        made.append(_Entry.prepared(tuple(a), tuple(a_rr), tuple(aaaa), tuple(aaaa_rr), (0, 0)))
    positions = memoryview(packed_positions).cast(_POSITION)
    if positions and max(positions) >= len(made):
        return None
    tables = _Tables()
    tables.names = dict(zip(keys, map(made.__getitem__, positions), strict=True))
    tables.ents = ents
    tables.ptr = ptr
    return tables
