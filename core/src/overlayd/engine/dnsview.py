"""The engine's view of its DNS records: light entries, shared addresses, a name index.

``Engine.dns`` holds one record per (name, address) of the zone: 120,000 on a
large node. A frozen pydantic :class:`~overlayd.model.DnsRecord` per record
(its ``__dict__``, fields-set and own address) was most of the daemon's
resident size (docs/design-notes.rst, "Footprint of a large node"), so the
engine keeps a slotted :class:`DnsEntry` instead and turns it into a
``DnsRecord`` only where one leaves the engine (the DNS hooks).
"""

from __future__ import annotations

import operator
import sys
import weakref
from collections.abc import Iterable
from collections.abc import Iterator
from itertools import repeat
from typing import Any
from typing import NamedTuple

from overlayd.model import DnsRecord
from overlayd.model import IPAddress
from overlayd.model import shared_address

__all__ = ["AddressPool", "DnsEntry", "ManualNames", "entries_from_store", "records"]


class DnsEntry(NamedTuple):
    """One name → address record as the engine keeps it (the fields of ``DnsRecord``).

    A named tuple rather than a slotted class: a load of 120,000 makes them
    all in C (:func:`entries_from_store`), and a tuple of three is only a
    word larger.
    """

    name: str
    ip: IPAddress
    source: str = "manual"

    @classmethod
    def of(cls, rec: DnsRecord) -> DnsEntry:
        return cls(rec.name, rec.ip, rec.source)

    def record(self) -> DnsRecord:
        """The public model of this entry (what the DNS hooks receive)."""
        return DnsRecord(name=self.name, ip=self.ip, source=self.source)

    def doc(self) -> dict[str, Any]:
        """The stored form: what ``DnsRecord.model_dump(mode="json")`` gives."""
        return {"name": self.name, "ip": str(self.ip), "source": self.source}


def records(entries: Iterable[DnsEntry]) -> list[DnsRecord]:
    return [e.record() for e in entries]


class AddressPool:
    """One address object (and one text) per distinct address held anywhere in the view.

    Weakly held: an address no record uses any more is dropped with its last record.
    The texts are interned strings, which CPython also frees with their last reference.
    """

    def __init__(self) -> None:
        self._objs: weakref.WeakValueDictionary[IPAddress, IPAddress] = (
            weakref.WeakValueDictionary()
        )

    def share(self, ip: IPAddress) -> IPAddress:
        shared = self._objs.get(ip)
        if shared is None:
            self._objs[ip] = shared = ip
        return shared

    @staticmethod
    def text(ip: IPAddress) -> str:
        return sys.intern(str(ip))


class ManualNames:
    """Lower-case name → the address texts registered with ``register_dns`` for it.

    ``unregister_dns`` looks its name up here instead of scanning every record.
    A name of one address (nearly all of them) holds the text itself, not a tuple.
    It may name records since replaced by another source: readers check the record.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, str | tuple[str, ...]] = {}

    @classmethod
    def of(cls, keys: list[tuple[str, str]]) -> ManualNames:
        """The index of ``(lower-case name, address text)`` keys (a load's, in order)."""
        index = cls()
        by_name: dict[str, str | tuple[str, ...]] = dict(keys)
        if len(by_name) == len(keys):
            index._by_name = by_name  # one address per name: made in one call
        else:
            for lname, text in keys:
                index.add(lname, text)
        return index

    def add(self, lname: str, text: str) -> None:
        held = self._by_name.get(lname)
        if held is None:
            self._by_name[lname] = text
        elif isinstance(held, str):
            if held != text:
                self._by_name[lname] = (held, text)
        elif text not in held:
            self._by_name[lname] = (*held, text)

    def discard(self, lname: str, text: str) -> None:
        held = self._by_name.get(lname)
        if held is None:
            return
        if isinstance(held, str):
            if held == text:
                del self._by_name[lname]
            return
        left = tuple(t for t in held if t != text)
        if not left:
            del self._by_name[lname]
        else:
            self._by_name[lname] = left[0] if len(left) == 1 else left

    def get(self, lname: str) -> tuple[str, ...]:
        held = self._by_name.get(lname)
        if held is None:
            return ()
        return (held,) if isinstance(held, str) else held

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)


def _address(
    text: str, addresses: dict[str, tuple[IPAddress, str]], pool: AddressPool | None
) -> tuple[IPAddress, str] | None:
    """The shared address and canonical text of ``text``; ``None`` when it is not one."""
    try:
        ip = shared_address(text)  # parsed already for an attachment or a lease, usually
    except ValueError:
        return None
    shared = addresses[text] = (ip if pool is None else pool.share(ip), sys.intern(str(ip)))
    return shared


#: The fields of a stored record, each read in C for a whole load.
_NAME, _IP, _SOURCE = map(operator.itemgetter, ("name", "ip", "source"))


def _in_bulk(docs: list[Any], pool: AddressPool | None) -> dict[tuple[str, str], DnsEntry] | None:
    """:func:`entries_from_store` of documents all of the stored shape, built in C.

    Each check and each column is one pass of a builtin over the whole load
    (``map``, ``zip``, ``set``), and the entries and the dict are made by
    ``map``/``dict`` too: 0.20 s instead of 0.27 s for a large node's
    120,000 records (docs/design-notes.rst, "Footprint of a
    large node"). ``None`` when any document is not of that shape (or an
    address does not parse): the caller then goes record by record and
    reports the bad one.
    """
    if set(map(type, docs)) != {dict} or set(map(len, docs)) != {3}:
        return None
    try:
        names, texts, sources = (list(map(get, docs)) for get in (_NAME, _IP, _SOURCE))
    except KeyError:
        return None
    if not set(map(type, names)) == set(map(type, texts)) == set(map(type, sources)) == {str}:
        return None
    lengths = set(map(len, names))
    if min(lengths) < 1 or max(lengths) > 253:
        return None
    addresses: dict[str, tuple[IPAddress, str]] = {}
    for text in set(texts):  # one per distinct address: a tenth of the records or less
        if _address(text, addresses, pool) is None:
            return None
    shared = list(map(addresses.__getitem__, texts))
    ips = map(operator.itemgetter(0), shared)
    keys = zip(
        # The name itself when it is already lower case: no second string for it.
        [name if (lower := name.lower()) == name else lower for name in names],
        map(operator.itemgetter(1), shared),
        strict=True,
    )
    entries = map(
        tuple.__new__, repeat(DnsEntry), zip(names, ips, map(sys.intern, sources), strict=True)
    )
    return dict(zip(keys, entries, strict=True))


def entries_from_store(
    values: Iterable[Any], pool: AddressPool | None = None
) -> dict[tuple[str, str], DnsEntry]:
    """Stored DNS records (the ``dns`` kind), keyed like ``Engine.dns``.

    The documents come from our own store in the form ``DnsRecord`` dumps, so
    each is checked by hand (the same constraints as the model) rather than
    validated into a model: each distinct address is parsed (and shared
    through ``pool``) once and its object and text are shared by all its
    records, and the sources are interned. A load of that shape throughout
    is built in C (:func:`_in_bulk`); otherwise record by record, and a
    document of any other shape is validated with ``DnsRecord``, which
    reports it (``ValidationError``) or accepts it.
    """
    docs = values if type(values) is list else list(values)
    if not docs:
        return {}
    built = _in_bulk(docs, pool)
    if built is not None:
        return built
    addresses: dict[str, tuple[IPAddress, str]] = {}
    out: dict[tuple[str, str], DnsEntry] = {}
    intern = sys.intern
    name: str
    source: str
    for doc in docs:
        shared = None
        # The stored shape: exactly name, ip and source, all text (3 keys, all present).
        if type(doc) is dict and len(doc) == 3:
            fields: Any = doc  # checked field by field below
            name, text, source = fields.get("name"), fields.get("ip"), fields.get("source")
            if (
                type(name) is str
                and type(text) is str
                and type(source) is str
                and 0 < len(name) <= 253
            ):
                shared = addresses.get(text)
                if shared is None:
                    shared = _address(text, addresses, pool)
        if shared is None:
            rec = DnsRecord.model_validate(doc)
            name, source = rec.name, rec.source
            ip = rec.ip if pool is None else pool.share(rec.ip)
            shared = (ip, sys.intern(str(ip)))
        lower = name.lower()
        out[(name if lower == name else lower, shared[1])] = DnsEntry(
            name, shared[0], intern(source)
        )
    return out
