"""The record table: name → addresses, updated from any thread, read lock-free.

Keys are *relative* names in lower-case wire form (length-prefixed labels, no
final zero byte; the apex is ``b""``). A query parsed from the wire can then be
looked up by slicing its lower-cased question name, without building a
:class:`dns.name.Name`. Because keys are relative, changing the zone keeps every
record.

Concurrency: writers take ``_lock``; the event loop reads without a lock. Each
name maps to an immutable :class:`_Entry` that a writer replaces whole, and a
bulk ``replace_all`` swaps one :class:`_Tables` reference, so a reader always
sees either the old or the new state of a name, never half of it. Single dict
operations are atomic in CPython.
"""

from __future__ import annotations

import ipaddress
import re
import struct
import threading
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Final
from typing import TypeAlias
from typing import cast

import dns.exception
import dns.name

from overlayd.errors import InvalidRequest

__all__ = ["Address", "RecordStore", "ZoneInfo", "name_wire", "reverse_wire"]

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressLike: TypeAlias = str | Address

_TYPE_A: Final = 1
_TYPE_AAAA: Final = 28
_CLASS_IN: Final = 1
_V4_ARPA: Final = b"\x07in-addr\x04arpa\x00"
_V6_ARPA: Final = b"\x03ip6\x04arpa\x00"
_HEX: Final = b"0123456789abcdef"
#: The reverse-name label of each byte value (``\x0210`` for 10).
_V4_LABELS: Final = tuple(bytes((len(str(b)),)) + str(b).encode() for b in range(256))
#: The length byte of a label of each length.
_LENGTH: Final = tuple(bytes((n,)) for n in range(64))
#: A relative name of plain labels (no escapes, no trailing dot): its key needs no parser.
_PLAIN_RELATIVE: Final = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")
#: One plain label.
_PLAIN_LABEL: Final = re.compile(r"[A-Za-z0-9_-]{1,63}")


@dataclass(frozen=True, slots=True)
class ZoneInfo:
    """The zone in the forms the server needs."""

    name: dns.name.Name
    #: Lower-case absolute wire form, ending in the root's zero byte.
    wire: bytes

    @classmethod
    def from_text(cls, zone: str) -> ZoneInfo:
        name = dns.name.from_text(zone)
        return cls(name=name, wire=name_wire(name.canonicalize()))


class _Entry:
    """The addresses of one name; replaced whole, never mutated (except turns)."""

    __slots__ = ("a", "a_rr", "aaaa", "aaaa_rr", "turn_a", "turn_aaaa")

    def __init__(
        self,
        a: tuple[ipaddress.IPv4Address, ...],
        aaaa: tuple[ipaddress.IPv6Address, ...],
        ttl: int,
        turns: tuple[int, int] = (0, 0),
    ) -> None:
        self.a = a
        self.aaaa = aaaa
        # Answer RRs ready for the fast path: owner is a pointer to the question
        # name at offset 12 (0xC00C), then type, class, TTL, rdlength, rdata.
        self.a_rr = tuple(
            b"\xc0\x0c" + struct.pack("!HHIH", _TYPE_A, _CLASS_IN, ttl, 4) + x.packed for x in a
        )
        self.aaaa_rr = tuple(
            b"\xc0\x0c" + struct.pack("!HHIH", _TYPE_AAAA, _CLASS_IN, ttl, 16) + x.packed
            for x in aaaa
        )
        # Round-robin positions, one per type so that alternating A and AAAA
        # queries (getaddrinfo) still rotate both; a race only skips a turn.
        self.turn_a, self.turn_aaaa = turns

    @classmethod
    def prepared(
        cls,
        a: tuple[ipaddress.IPv4Address, ...],
        a_rr: tuple[bytes, ...],
        aaaa: tuple[ipaddress.IPv6Address, ...],
        aaaa_rr: tuple[bytes, ...],
        turns: tuple[int, int],
    ) -> _Entry:
        """An entry from answer RRs already built (by :func:`_rr`), e.g. kept from the old one."""
        entry = cls.__new__(cls)
        entry.a, entry.a_rr, entry.aaaa, entry.aaaa_rr = a, a_rr, aaaa, aaaa_rr
        entry.turn_a, entry.turn_aaaa = turns
        return entry

    def addresses(self) -> list[Address]:
        return [*self.a, *self.aaaa]


def _rr(addr: Address, ttl: int) -> bytes:
    """The answer RR of ``addr`` as :class:`_Entry` prepares it."""
    if addr.version == 4:
        return b"\xc0\x0c" + struct.pack("!HHIH", _TYPE_A, _CLASS_IN, ttl, 4) + addr.packed
    return b"\xc0\x0c" + struct.pack("!HHIH", _TYPE_AAAA, _CLASS_IN, ttl, 16) + addr.packed


class _Prepared:
    """One address as :meth:`RecordStore._build` stages it: reverse name, answer RR."""

    __slots__ = ("addr", "alone", "rev", "rr")

    def __init__(self, rev: bytes, addr: Address, rr: bytes) -> None:
        self.rev = rev
        self.addr = addr
        self.rr = rr
        self.alone: _Entry | None = None

    def entry(self) -> _Entry:
        """The entry of a name whose only address this is, one for all such names.

        Shared safely: an entry is replaced whole, never changed, except the
        round-robin turns of a name of several addresses.
        """
        entry = self.alone
        if entry is None:
            addr = self.addr
            if isinstance(addr, ipaddress.IPv4Address):
                entry = _Entry.prepared((addr,), (self.rr,), (), (), (0, 0))
            else:
                entry = _Entry.prepared((), (), (addr,), (self.rr,), (0, 0))
            self.alone = entry
        return entry


class _Tables:
    __slots__ = ("ents", "names", "ptr")

    def __init__(self) -> None:
        #: relative key → entry
        self.names: dict[bytes, _Entry] = {}
        #: relative key of an empty non-terminal → number of names below it
        self.ents: dict[bytes, int] = {}
        #: lower-case absolute reverse name (wire) → relative keys, insertion-ordered
        self.ptr: dict[bytes, dict[bytes, None]] = {}


def name_wire(name: dns.name.Name) -> bytes:
    """Uncompressed wire form of an absolute ``name``."""
    wire = name.to_wire()
    if wire is None:  # only when writing to a file, which we never do
        raise TypeError("dnspython returned no wire form")
    return wire


def reverse_wire(addr: Address) -> bytes:
    """Wire form of ``addr``'s ``in-addr.arpa`` / ``ip6.arpa`` name (lower case)."""
    if addr.version == 4:
        return b"".join([_V4_LABELS[b] for b in addr.packed[::-1]]) + _V4_ARPA
    nibbles = bytearray()
    for byte in addr.packed[::-1]:
        nibbles += bytes((1, _HEX[byte & 0xF], 1, _HEX[byte >> 4]))
    return bytes(nibbles) + _V6_ARPA


def _ancestors(key: bytes) -> list[bytes]:
    """Proper ancestors of a relative key, apex excluded (``a.b`` → ``[b]``)."""
    out = []
    pos = key[0] + 1 if key else 0
    while pos < len(key):
        out.append(key[pos:])
        pos += key[pos] + 1
    return out


class RecordStore:
    """Thread-safe A/AAAA records of one zone, with reverse (PTR) and ENT indexes."""

    def __init__(self, zone: str, ttl: int) -> None:
        self._lock = threading.Lock()
        self._ttl = ttl
        self.zone = ZoneInfo.from_text(zone)
        self.tables = _Tables()
        #: SOA serial; bumped on every change.
        self.serial = 1

    @property
    def ttl(self) -> int:
        return self._ttl

    # -- name handling -------------------------------------------------------------

    def key(self, name: str) -> bytes:
        """Relative lower-case wire key of ``name`` (relative, or absolute in zone)."""
        if _PLAIN_RELATIVE.fullmatch(name):
            # What dns.name.from_text gives for such a name, ~20x faster (a
            # restart hands every stored name over at once).
            key = b"".join([_LENGTH[len(lb)] + lb for lb in name.lower().encode().split(b".")])
            if len(key) + len(self.zone.wire) > 255:
                raise InvalidRequest(
                    f"DNS name {name!r} is too long in zone {self.zone.name} (255 bytes at most)."
                )
            return key
        text = name.strip()
        if text in ("", "@"):
            return b""
        try:
            parsed = dns.name.from_text(text, origin=None)
        except dns.exception.DNSException as exc:
            raise InvalidRequest(f"DNS name {name!r} is not valid: {exc}") from None
        zone = self.zone.name
        if parsed.is_absolute():
            if not parsed.is_subdomain(zone):
                raise InvalidRequest(
                    f"DNS name {name!r} is outside the zone {zone}; "
                    "give a name relative to the zone or ending in it."
                )
            parsed = parsed.relativize(zone)
        key = b"".join(bytes((len(lb),)) + lb.lower() for lb in parsed.labels)
        if len(key) + len(self.zone.wire) > 255:
            raise InvalidRequest(
                f"DNS name {name!r} is too long in zone {zone} (255 bytes at most)."
            )
        return key

    def _bulk_key(self, name: str, parents: dict[str, bytes]) -> bytes:
        """:meth:`key` of ``name``, the key of its parent made once per parent in ``parents``.

        A load's 110,000 names have a handful of parents (``n1.svc``,
        ``pid-7.web``): the parent's labels are checked and packed once, the
        first label per name. Anything but a plain first label under a plain
        parent goes through :meth:`key`, which also reports a name too long.
        """
        first, dot, rest = name.partition(".")
        if dot and _PLAIN_LABEL.fullmatch(first):
            parent = parents.get(rest)
            if parent is None:
                parent = parents[rest] = (
                    b"".join([_LENGTH[len(lb)] + lb for lb in rest.lower().encode().split(b".")])
                    if _PLAIN_RELATIVE.fullmatch(rest)
                    else b""
                )
            if parent:
                label = first.lower().encode()
                key = _LENGTH[len(label)] + label + parent
                if len(key) + len(self.zone.wire) <= 255:
                    return key
        return self.key(name)

    def absolute(self, key: bytes) -> dns.name.Name:
        """The absolute name of a relative ``key`` in the current zone."""
        name, _ = dns.name.from_wire(key + self.zone.wire, 0)
        return name

    @staticmethod
    def _addresses(ips: Iterable[AddressLike]) -> list[Address]:
        out: list[Address] = []
        for ip in ips:
            try:
                addr = ip if not isinstance(ip, str) else ipaddress.ip_address(ip)
            except ValueError:
                raise InvalidRequest(f"DNS record address {ip!r} is not an IP address.") from None
            if addr not in out:
                out.append(addr)
        return out

    # -- updates (any thread) ------------------------------------------------------

    def set_zone(self, zone: str) -> None:
        """Serve the same (relative) records under ``zone``."""
        info = ZoneInfo.from_text(zone)
        with self._lock:
            self.zone = info
            self.serial += 1

    def set_records(self, name: str, ips: Iterable[AddressLike]) -> None:
        """Make ``ips`` the complete address list of ``name`` (empty removes it)."""
        key = self.key(name)
        addrs = self._addresses(ips)
        with self._lock:
            self._apply(self.tables, key, addrs)
            self.serial += 1

    def add_record(self, name: str, ip: AddressLike) -> None:
        """Add one address to ``name``; a no-op when present."""
        key = self.key(name)
        (addr,) = self._addresses([ip])
        with self._lock:
            entry = self.tables.names.get(key)
            current = entry.addresses() if entry else []
            if addr in current:
                return
            self._apply(self.tables, key, [*current, addr])
            self.serial += 1

    def remove_record(self, name: str, ip: AddressLike | None = None) -> None:
        """Remove one address of ``name``, or the whole name when ``ip`` is None."""
        key = self.key(name)
        addr = None if ip is None else self._addresses([ip])[0]
        with self._lock:
            entry = self.tables.names.get(key)
            if entry is None:
                return
            current = entry.addresses()
            if addr is None:
                remaining: list[Address] = []
            elif addr in current:
                remaining = [x for x in current if x != addr]
            else:
                return
            self._apply(self.tables, key, remaining)
            self.serial += 1

    def update(
        self,
        removed: Iterable[tuple[str, AddressLike]],
        added: Iterable[tuple[str, AddressLike]],
    ) -> None:
        """Remove, then add, many ``(name, address)`` pairs; each name is rebuilt once.

        The same as :meth:`remove_record` for each removed pair then
        :meth:`add_record` for each added one, but a name holding thousands
        of addresses (a service's name, one address per workload) is not
        rebuilt once per address: loading 10,000 of them at start was
        quadratic (``docs/design-notes.rst``, "Footprint of a large node").
        Adding to an empty table (the load) builds it in one pass (:meth:`_build`).
        """
        removed = list(removed)
        if not removed and not self.tables.names:
            # A load (the engine's records at start): built in one pass.
            with self._lock:
                if not self.tables.names:
                    self.tables = self._build(added)
                    self.serial += 1
                    return
        keys: dict[str, bytes] = {}  # a service's name comes once per workload

        def key_of(name: str) -> bytes:
            key = keys.get(name)
            if key is None:
                key = keys[name] = self.key(name)
            return key

        #: id of a given address -> (its address, reverse name, itself: kept
        #: alive so that its id is not reused by another during this call)
        revs: dict[int, tuple[Address, bytes, AddressLike]] = {}

        def rev_of(ip: AddressLike) -> tuple[Address, bytes]:
            # Staged by reverse name (bytes hash in C), not by address
            # (ipaddress hashes in Python); the engine shares one object per
            # address, so most lookups are by identity.
            held = revs.get(id(ip))
            if held is None:
                addr = ip if not isinstance(ip, str) else self._addresses([ip])[0]
                held = revs[id(ip)] = (addr, reverse_wire(addr), ip)
            return held[0], held[1]

        staged: dict[bytes, tuple[dict[bytes, Address], dict[bytes, Address]]] = {}
        for n, ip in removed:
            addr, rev = rev_of(ip)
            staged.setdefault(key_of(n), ({}, {}))[0][rev] = addr
        for n, ip in added:
            addr, rev = rev_of(ip)
            staged.setdefault(key_of(n), ({}, {}))[1][rev] = addr
        with self._lock:
            changed = False
            for key, (drop, add) in staged.items():
                changed = self._change(self.tables, key, drop, add) or changed
            if changed:
                self.serial += 1

    def _change(
        self, t: _Tables, key: bytes, drop: dict[bytes, Address], add: dict[bytes, Address]
    ) -> bool:
        """Remove ``drop`` then append ``add`` to ``key``'s addresses; True if it changed.

        ``drop`` and ``add`` map reverse names to addresses. The entry is
        rebuilt from the old one's tuples and prepared answers, and membership
        is read from the reverse index: a name of 10,000 addresses (a
        service's) costs a tuple copy per change, not 10,000 hashes of
        ``ipaddress`` objects and 10,000 packed answers.
        """
        old = t.names.get(key)

        def present(rev: bytes) -> bool:
            if old is None:
                return False
            owners = t.ptr.get(rev)
            return owners is not None and key in owners

        dropped = [(rev, x) for rev, x in drop.items() if present(rev)]
        appended = [(rev, x) for rev, x in add.items() if rev in drop or not present(rev)]
        if not dropped and not appended:
            return False
        a, a_rr = (old.a, old.a_rr) if old else ((), ())
        aaaa, aaaa_rr = (old.aaaa, old.aaaa_rr) if old else ((), ())
        if dropped:
            cut = {_rr(x, self._ttl) for _, x in dropped}
            if any(x.version == 4 for _, x in dropped):
                kept = [(x, r) for x, r in zip(a, a_rr, strict=True) if r not in cut]
                a, a_rr = tuple(x for x, _ in kept), tuple(r for _, r in kept)
            if any(x.version == 6 for _, x in dropped):
                kept6 = [(x, r) for x, r in zip(aaaa, aaaa_rr, strict=True) if r not in cut]
                aaaa, aaaa_rr = tuple(x for x, _ in kept6), tuple(r for _, r in kept6)
        v4 = [x for _, x in appended if isinstance(x, ipaddress.IPv4Address)]
        v6 = [x for _, x in appended if isinstance(x, ipaddress.IPv6Address)]
        if v4:
            a, a_rr = a + tuple(v4), a_rr + tuple(_rr(x, self._ttl) for x in v4)
        if v6:
            aaaa, aaaa_rr = aaaa + tuple(v6), aaaa_rr + tuple(_rr(x, self._ttl) for x in v6)
        if a or aaaa:
            turns = (old.turn_a, old.turn_aaaa) if old else (0, 0)
            t.names[key] = _Entry.prepared(a, a_rr, aaaa, aaaa_rr, turns)
            if old is None:
                _count_ancestors(t, key, +1)
        elif old is not None:
            del t.names[key]
            _count_ancestors(t, key, -1)
        for rev, _ in dropped:
            if rev in add:
                continue  # moved to the end: still owned
            owners = t.ptr.get(rev)
            if owners is not None:
                owners.pop(key, None)
                if not owners:
                    del t.ptr[rev]
        for rev, _ in appended:
            t.ptr.setdefault(rev, {})[key] = None
        return True

    def replace_all(self, mapping: Mapping[str, Iterable[AddressLike]]) -> None:
        """Replace every record with ``mapping`` (name → addresses) at once."""
        fresh = self._build((name, ip) for name, ips in mapping.items() for ip in ips)
        with self._lock:
            self.tables = fresh
            self.serial += 1

    def _build(self, pairs: Iterable[tuple[str, AddressLike]]) -> _Tables:
        """Tables holding ``pairs`` (name, address), built in one pass.

        For a whole zone (the engine hands over its 120,000 records at start,
        ``docs/design-notes.rst``, "Footprint of a large node"): each distinct
        address is parsed, reversed and packed once, by identity of the object
        given (the engine shares one per address); the answers of a name of
        one address (nearly all) share that address's tuples; and no table as
        large as the zone is built besides the result (the peak of a load is
        what stays resident).
        """
        ttl = self._ttl
        by_id: dict[int, _Prepared] = {}
        by_rev: dict[bytes, _Prepared] = {}
        alive: list[AddressLike] = []  # the ids in by_id stay theirs during this call
        fresh = _Tables()
        # key -> its first address until the entries are made below
        firsts = cast(dict[bytes, Any], fresh.names)
        more: dict[bytes, dict[bytes, _Prepared]] = {}  # names of two addresses or more
        last_name, last_key = None, b""  # a service's records come in a row
        parents: dict[str, bytes] = {}
        for name, ip in pairs:
            if name != last_name:
                last_name, last_key = name, self._bulk_key(name, parents)
            key = last_key
            prep = by_id.get(id(ip))
            if prep is None:
                (addr,) = self._addresses([ip])
                rev = reverse_wire(addr)
                prep = by_rev.get(rev)
                if prep is None:
                    prep = by_rev[rev] = _Prepared(rev, addr, _rr(addr, ttl))
                by_id[id(ip)] = prep
                alive.append(ip)
            first = firsts.get(key)
            if first is None:
                firsts[key] = prep
            elif first is not prep:
                held = more.get(key)
                if held is None:
                    more[key] = {first.rev: first, prep.rev: prep}
                else:
                    held.setdefault(prep.rev, prep)
        ptr = fresh.ptr
        #: parent key -> (a name's key below it, how many names are below it)
        below: dict[bytes, list[Any]] = {}
        for key, first in firsts.items():  # values replaced in place: no resize
            firsts[key] = first.alone or first.entry()
            owners = ptr.get(first.rev)
            if owners is None:
                ptr[first.rev] = {key: None}
            else:
                owners[key] = None
            parent = key[key[0] + 1 :]
            if parent:
                count = below.get(parent)
                if count is None:
                    below[parent] = [key, 1]
                else:
                    count[1] += 1
        for key, held in more.items():  # the few names of several addresses
            preps = held.values()
            firsts[key] = _Entry.prepared(
                tuple(a for x in preps if isinstance(a := x.addr, ipaddress.IPv4Address)),
                tuple(x.rr for x in preps if isinstance(x.addr, ipaddress.IPv4Address)),
                tuple(a for x in preps if isinstance(a := x.addr, ipaddress.IPv6Address)),
                tuple(x.rr for x in preps if isinstance(x.addr, ipaddress.IPv6Address)),
                (0, 0),
            )
            for rev in held:
                ptr.setdefault(rev, {})[key] = None
        # Names with the same parent have the same ancestors: counted once per parent.
        for key, count in below.values():
            _count_ancestors(fresh, key, count)
        return fresh

    def take_tables(self, tables: _Tables) -> bool:
        """Serve ``tables`` (read back by :mod:`overlayd.dns._snapshot`) if none is held yet.

        True when taken; False when names are held already (the tables are
        for a start, instead of its load).
        """
        with self._lock:
            if self.tables.names:
                return False
            self.tables = tables
            self.serial += 1
            return True

    def _apply(self, t: _Tables, key: bytes, addrs: list[Address]) -> None:
        old = t.names.get(key)
        old_addrs = set(old.addresses()) if old else set()
        new_addrs = set(addrs)
        if addrs:
            a = tuple(x for x in addrs if isinstance(x, ipaddress.IPv4Address))
            aaaa = tuple(x for x in addrs if isinstance(x, ipaddress.IPv6Address))
            t.names[key] = _Entry(
                a, aaaa, self._ttl, (old.turn_a, old.turn_aaaa) if old else (0, 0)
            )
            if old is None:
                _count_ancestors(t, key, +1)
        elif old is not None:
            del t.names[key]
            _count_ancestors(t, key, -1)
        for addr in old_addrs - new_addrs:
            rev = reverse_wire(addr)
            owners = t.ptr.get(rev)
            if owners is not None:
                owners.pop(key, None)
                if not owners:
                    del t.ptr[rev]
        for addr in new_addrs - old_addrs:
            t.ptr.setdefault(reverse_wire(addr), {})[key] = None

    # -- reads ---------------------------------------------------------------------

    def get(self, name: str) -> list[Address]:
        """Addresses of ``name`` (A first, then AAAA); empty when unknown."""
        entry = self.tables.names.get(self.key(name))
        return entry.addresses() if entry else []

    def snapshot(self) -> dict[str, list[Address]]:
        """Every record as absolute name text → addresses."""
        names = dict(self.tables.names)
        return {self.absolute(k).to_text(): e.addresses() for k, e in names.items()}

    def __len__(self) -> int:
        return len(self.tables.names)

    def exists(self, t: _Tables, key: bytes) -> bool:
        """True when ``key`` is the apex, holds records or is an empty non-terminal."""
        return key == b"" or key in t.names or key in t.ents


def _count_ancestors(t: _Tables, key: bytes, delta: int) -> None:
    """A name came (+1) or went (-1): count it in each ancestor's empty-non-terminal tally."""
    for anc in _ancestors(key):
        left = t.ents.get(anc, 0) + delta
        if left > 0:
            t.ents[anc] = left
        else:
            t.ents.pop(anc, None)
