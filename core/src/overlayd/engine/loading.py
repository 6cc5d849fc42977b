"""Loading state: the in-memory view and the IPAM pools rebuilt from the store at start."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter

from overlayd.errors import StateError
from overlayd.model import Attachment
from overlayd.model import GlobalOverlay
from overlayd.model import Lease
from overlayd.model import MasqueradeRule
from overlayd.model import PeerConfig
from overlayd.model import PortMapping
from overlayd.model import ServiceOverlay

from .base import DETACH_INTENT
from .base import DNS_KIND
from .base import LOAD_VALUES_ONLY
from .base import NODE_POOL
from .base import EngineBase
from .base import gc_paused
from .dnsview import DnsEntry
from .dnsview import ManualNames
from .dnsview import entries_from_store

__all__ = ["LoadingMixin", "dns_records_from_store", "gc_paused", "leases_from_records"]

# Whole lists of stored records are validated in one pydantic-core call each.
_LEASES_ADAPTER: TypeAdapter[list[Lease]] = TypeAdapter(list[Lease])
_ATTACHMENTS_ADAPTER: TypeAdapter[list[Attachment]] = TypeAdapter(list[Attachment])
_PEERS_ADAPTER: TypeAdapter[list[PeerConfig]] = TypeAdapter(list[PeerConfig])


def leases_from_records(values: Iterable[Any]) -> list[Lease]:
    """Validate stored lease records (the ``lease`` kind of :meth:`Store.load`) in one batch."""
    return _LEASES_ADAPTER.validate_python(list(values))


def dns_records_from_store(values: Iterable[Any]) -> dict[tuple[str, str], DnsEntry]:
    """Stored DNS records (the ``dns`` kind), keyed like ``Engine.dns``.

    See :func:`overlayd.engine.dnsview.entries_from_store`: each distinct
    address is parsed once and shared, sources are interned, and no pydantic
    model is built for a well-formed document.
    """
    return entries_from_store(values)


class LoadingMixin(EngineBase):
    """Rebuilds the in-memory view from the store."""

    def _load(self) -> None:
        """Rebuild the in-memory view and IPAM pools from the store.

        Run with the cyclic GC paused (:meth:`EngineBase.start`): tens of
        thousands of long-lived records are built here; left on, the GC
        rescans them again and again while they are created
        (docs/design-notes.rst, "The engine package").
        """
        self._load_records()

    def _load_records(self) -> None:
        if self._store is None:
            raise StateError("the state store is not open; start the engine first")
        # Taken from the same read as the records (read ahead at the open).
        dns_fingerprint = self._dns_fingerprint()
        data = self._store.load(values_only=LOAD_VALUES_ONLY)
        meta = data.get("meta", {})
        self.node_id = meta.get("node_id")
        self.local_wg_pubkey = meta.get("local_wg_pubkey")
        g = data.get("global", {}).get("global")
        self.global_ = GlobalOverlay.model_validate(g) if g else None
        retired = data.get("global", {}).get("retired")
        self._retired = GlobalOverlay.model_validate(retired) if retired else None
        self.services = {
            k: ServiceOverlay.model_validate(v) for k, v in data.get("service", {}).items()
        }
        records = data.get("attachment", {})
        self.attachments = dict(
            zip(records, _ATTACHMENTS_ADAPTER.validate_python(list(records.values())), strict=True)
        )
        self._by_namespace = {
            a.namespace_guid.lower(): k for k, a in self.attachments.items() if a.namespace_guid
        }
        self.detaching = set(data.get(DETACH_INTENT, {})) & self.attachments.keys()
        leases = leases_from_records(data.get("lease", {}).values())
        self.manual_leases = {
            f"{lease.pool}|{lease.ip}": lease for lease in leases if lease.owner == "manual"
        }
        self.peers = {}
        stored = data.get("peer", {})
        peers = _PEERS_ADAPTER.validate_python(list(stored.values()))
        for key, peer in zip(stored, peers, strict=True):
            device, _, _ = key.partition("|")
            self._peer_table(device).put(peer)
        # The stored documents of the largest kind go as soon as they are read,
        # before the DNS hooks build their tables below: a lower peak, which the
        # allocator would keep as resident (docs/design-notes.rst, "Footprint").
        self.dns = entries_from_store(data.pop(DNS_KIND, ()), self._dns_ips)
        self._dns_manual = ManualNames.of(
            [key for key, entry in self.dns.items() if entry.source == "manual"]
        )
        self.masquerades = {
            k: MasqueradeRule.model_validate(v) for k, v in data.get("masquerade", {}).items()
        }
        self.port_mappings = {
            k: PortMapping.model_validate(v) for k, v in data.get("portmap", {}).items()
        }
        del records
        data.clear()  # every kind is built: the documents go before the hooks below
        by_pool: dict[str, list[Lease]] = {}
        for lease in leases:
            by_pool.setdefault(lease.pool, []).append(lease)
        addressing = self._addressing()
        if addressing is not None:
            self._init_layout(addressing)
            self.hooks.ipam_pool_create(self._node_pool(), by_pool.get(NODE_POOL, []))
        for svc in self.services.values():
            assert self._layout is not None
            if not self._layout.flat(svc.mode):
                self._layout.mark_used(svc.subnet)
            if svc.dedicated is not None and svc.dedicated.listen_port and self._ports:
                self._ports.reserve(svc.dedicated.listen_port)
            pool = self._pool_for(svc)
            self.hooks.ipam_pool_create(pool, by_pool.get(pool.name, []))
        # The engine's light entries as they are: the built-in DNS server takes
        # them in bulk; only a plugin without the bulk hook is given models.
        self.hooks.dns_records_loaded(list(self.dns.values()), dns_fingerprint)

    # -- addressing helpers -------------------------------------------------
