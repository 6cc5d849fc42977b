"""Cluster DNS: local names go to etcd, other nodes' names come back to the DNS server.

* :class:`LocalNames` is an engine plugin on ``overlayd_dns_records_changed``:
  it sees every record the node serves (``register_dns`` and attached
  containers) and tells the agent, which writes them under
  ``<prefix>/dns/<node>/...`` with the node's lease, so a dead node's names
  expire with it.
* :class:`RemoteNames` follows the other nodes' DNS keys and hands the
  differences to :meth:`ClusterEngine.serve_remote_dns`: the DNS server answers
  them, the engine neither stores nor re-publishes them (their ``source`` is
  ``cluster:<node>``, which :class:`LocalNames` skips).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence

from overlayd.cluster.records import BadRecord
from overlayd.cluster.records import DnsEntry
from overlayd.cluster.records import Keys
from overlayd.cluster.records import parse_dns
from overlayd.cluster.records import parse_dns_key
from overlayd.hookspecs import hookimpl
from overlayd.model import DnsRecord

__all__ = ["REMOTE_SOURCE", "LocalNames", "RemoteNames"]

log = logging.getLogger("overlayd.cluster")

#: ``DnsRecord.source`` of names that other nodes registered.
REMOTE_SOURCE = "cluster:"


class LocalNames:
    """Engine plugin: the DNS names this node serves, as a set the agent publishes."""

    name = "cluster-dns"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[tuple[str, str], DnsRecord] = {}
        self._count: dict[tuple[str, str], int] = {}
        #: Called (from a hook thread) after every change.
        self.on_change: Callable[[], None] = lambda: None

    @hookimpl
    def overlayd_dns_records_changed(
        self, added: Sequence[DnsRecord], removed: Sequence[DnsRecord]
    ) -> None:
        changed = False
        with self._lock:
            for rec in removed:
                if rec.source.startswith(REMOTE_SOURCE) or rec.name.endswith("."):
                    continue
                key = (rec.name.lower(), str(rec.ip))
                count = self._count.get(key, 0) - 1
                if count <= 0:
                    self._count.pop(key, None)
                    changed |= self._names.pop(key, None) is not None
                else:
                    self._count[key] = count
            for rec in added:
                if rec.source.startswith(REMOTE_SOURCE) or rec.name.endswith("."):
                    continue
                key = (rec.name.lower(), str(rec.ip))
                self._count[key] = self._count.get(key, 0) + 1
                if key not in self._names:
                    self._names[key] = rec
                    changed = True
        if changed:
            self.on_change()

    def snapshot(self) -> dict[tuple[str, str], DnsRecord]:
        with self._lock:
            return dict(self._names)


class RemoteNames:
    """Other nodes' names, counted, so a name two nodes serve stays until both stop."""

    def __init__(self, keys: Keys, self_name: str, warn: Callable[[str, bytes, str], None]) -> None:
        self.keys = keys
        self.self_name = self_name
        self._warn = warn
        #: key → entry of every valid remote DNS key.
        self.entries: dict[str, DnsEntry] = {}
        self._served: dict[tuple[str, str], int] = {}

    def _record(self, entry: DnsEntry) -> DnsRecord:
        return DnsRecord(name=entry.name, ip=entry.ip, source=REMOTE_SOURCE + entry.node)

    def _add(self, key: str, entry: DnsEntry, added: list[DnsRecord]) -> None:
        self.entries[key] = entry
        k = (entry.name, str(entry.ip))
        self._served[k] = self._served.get(k, 0) + 1
        if self._served[k] == 1:
            added.append(self._record(entry))

    def _remove(self, key: str, removed: list[DnsRecord]) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        k = (entry.name, str(entry.ip))
        count = self._served.get(k, 0) - 1
        if count <= 0:
            self._served.pop(k, None)
            removed.append(self._record(entry))
        else:
            self._served[k] = count

    def put(self, key: str, value: bytes) -> tuple[list[DnsRecord], list[DnsRecord]]:
        added: list[DnsRecord] = []
        removed: list[DnsRecord] = []
        try:
            entry = parse_dns(self.keys, key, value)
        except BadRecord as exc:
            self._warn(key, value, str(exc))
            return added, removed
        if entry.node == self.self_name or self.entries.get(key) == entry:
            return added, removed
        self._remove(key, removed)
        self._add(key, entry, added)
        return added, removed

    def delete(self, key: str) -> tuple[list[DnsRecord], list[DnsRecord]]:
        removed: list[DnsRecord] = []
        self._remove(key, removed)
        return [], removed

    def load(self, kvs: Iterable[tuple[str, bytes]]) -> tuple[list[DnsRecord], list[DnsRecord]]:
        """Replace the view with a full read; returns only the differences."""
        wanted: dict[str, DnsEntry] = {}
        for key, value in kvs:
            try:
                entry = parse_dns(self.keys, key, value)
            except BadRecord as exc:
                self._warn(key, value, str(exc))
                continue
            if entry.node != self.self_name:
                wanted[key] = entry
        added: list[DnsRecord] = []
        removed: list[DnsRecord] = []
        for key in [k for k, e in self.entries.items() if wanted.get(k) != e]:
            self._remove(key, removed)
        for key, entry in wanted.items():
            if key not in self.entries:
                self._add(key, entry, added)
        # A name removed and added back in one pass is no change at all.
        both = {(r.name, str(r.ip)) for r in added} & {(r.name, str(r.ip)) for r in removed}
        if both:
            added = [r for r in added if (r.name, str(r.ip)) not in both]
            removed = [r for r in removed if (r.name, str(r.ip)) not in both]
        return added, removed

    def served(self, names: set[tuple[str, str]]) -> list[DnsRecord]:
        """The remote records among ``names`` (``(name, ip)`` pairs) still served."""
        return [
            DnsRecord(name=name, ip=ip, source=REMOTE_SOURCE + "*")
            for name, ip in sorted(names)
            if (name, ip) in self._served
        ]

    def own_keys(self, local: Iterable[DnsRecord]) -> dict[str, bytes]:
        """The keys and values this node should have under ``<prefix>/dns/<self>/``."""
        from overlayd.cluster.records import dns_value

        out: dict[str, bytes] = {}
        for rec in local:
            entry = DnsEntry(node=self.self_name, name=rec.name.lower(), ip=rec.ip)
            try:
                parse_dns_key(self.keys, self.keys.dns_entry(entry.node, entry.name, entry.ip))
            except BadRecord as exc:
                log.warning("cluster: not publishing DNS name %s: %s", rec.name, exc)
                continue
            out[self.keys.dns_entry(entry.node, entry.name, entry.ip)] = dns_value(entry)
        return out
