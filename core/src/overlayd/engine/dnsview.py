"""The engine's view of its DNS records: light entries, shared addresses, a name index.

``Engine.dns`` holds one record per (name, address) of the zone: 120,000 on a
large node. A frozen pydantic :class:`~overlayd.model.DnsRecord` per record
(its ``__dict__``, fields-set and own address) was most of the daemon's
resident size (docs/design-notes.rst, "Footprint of a large node"), so the
engine keeps a slotted :class:`DnsEntry` instead and turns it into a
``DnsRecord`` only where one leaves the engine (the DNS hooks).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from overlayd.model import DnsRecord
from overlayd.model import IPAddress
from overlayd.model import shared_address

__all__ = ["AddressPool", "DnsEntry", "ManualNames", "entries_from_store", "records"]


@dataclass(frozen=True, slots=True)
class DnsEntry:
    """One name → address record as the engine keeps it (the fields of ``DnsRecord``)."""

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


def entries_from_store(
    values: Iterable[Any], pool: AddressPool | None = None
) -> dict[tuple[str, str], DnsEntry]:
    """Stored DNS records (the ``dns`` kind), keyed like ``Engine.dns``.

    The documents come from our own store in the form ``DnsRecord`` dumps, so
    each is checked by hand (the same constraints as the model) rather than
    validated into a model: each distinct address is parsed (and shared
    through ``pool``) once and its object and text are shared by all its
    records, and the sources are interned. A document of any other shape
    is validated with ``DnsRecord``, which reports it (``ValidationError``)
    or accepts it.
    """
    addresses: dict[str, tuple[IPAddress, str]] = {}
    out: dict[tuple[str, str], DnsEntry] = {}
    intern = sys.intern
    name: str
    source: str
    for doc in values:
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
