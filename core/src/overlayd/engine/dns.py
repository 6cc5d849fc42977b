"""DNS: the overlay zone, where the DNS server listens, and the records the engine keeps.

The engine records names and hands every change to the DNS hooks (the
built-in server is :mod:`overlayd.dns`); attach and detach add and remove
their workloads' names themselves (:mod:`overlayd.engine.attach`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from overlayd.checks import check_dns_name_fits
from overlayd.errors import InvalidRequest
from overlayd.errors import OverlaydError
from overlayd.errors import StateError
from overlayd.errors import quote
from overlayd.model import DnsRecord
from overlayd.model import IPAddress

from .base import EngineBase
from .dnsview import DnsEntry
from .dnsview import records
from .validation import DNS_NAME_RE
from .work import Tx

__all__ = ["DnsMixin"]

log = logging.getLogger(__name__)


class DnsMixin(EngineBase):
    """The overlay zone and its records."""

    def _zone(self) -> str:
        zone = self.config.dns.zone
        if not zone:
            g = self._addressing()
            deployment = g.deployment if g else "overlay"
            zone = f"{deployment}.local."
        return zone if zone.endswith(".") else zone + "."

    def _dns_addresses(self) -> list[str]:
        dns = self.config.dns
        out = list(dns.listen)
        if dns.listen_on_gateways:
            for svc in sorted(self.services.values(), key=lambda s: s.service):
                host = f"[{svc.gateway}]" if svc.gateway.version == 6 else str(svc.gateway)
                address = f"{host}:{dns.gateway_port}"
                if address not in out:  # services on the base network share a gateway
                    out.append(address)
        return out

    def resolver(self, service: str) -> tuple[list[IPAddress], str]:
        """The nameservers and search domain for a workload on ``service``.

        The nameserver is the service gateway when overlayd's DNS server
        listens there on port 53 (none otherwise); the domain is the overlay
        zone without its final dot. Raises :class:`NotFound` for an unknown service.
        """
        svc = self._service(service)
        dns = self.config.dns
        serving = dns.enabled and dns.listen_on_gateways and dns.gateway_port == 53
        return ([svc.gateway] if serving else []), self._zone().rstrip(".")

    def _sync_dns_serve(self) -> None:
        try:
            self.hooks.dns_serve(self._zone(), self._dns_addresses())
        except OverlaydError as exc:
            log.warning("DNS server could not update its listeners: %s", exc)

    # -- validation ---------------------------------------------------------
    # -- records ---------------------------------------------------------------

    def _dns_name(self, name: object) -> str:
        """A record name relative to the overlay zone (absolute names must be inside it)."""
        if not isinstance(name, str) or not DNS_NAME_RE.match(name):
            raise InvalidRequest(f"invalid DNS name {quote(name)}")
        if not name.endswith("."):
            check_dns_name_fits(name, self._zone())
            return name
        zone = self._zone().lower()
        lower = name.lower()
        if lower.endswith("." + zone):
            return name[: -len(zone) - 1]
        raise InvalidRequest(
            f"DNS name {quote(name)} is outside the overlay zone {zone}; "
            "give it relative to the zone (without a trailing dot)"
        )

    async def register_dns(self, name: object, ip: str | IPAddress) -> None:
        """Add ``ip`` to ``name`` in the overlay zone (several addresses per name rotate)."""
        self._require_started()
        clean = self._dns_name(name)
        entry = self._dns_entry(clean, self._parse_ip("ip", ip))
        async with self._locks.hold((f"dns:{clean.lower()}", True)):
            if self._dns_key(entry) in self.dns:
                return
            await self._run(self._dns_change, [entry], [])

    async def unregister_dns(self, name: object) -> None:
        """Remove every address registered for ``name`` with ``register_dns``."""
        self._require_started()
        lname = self._dns_name(name).lower()
        async with self._locks.hold((f"dns:{lname}", True)):
            # Attaches and detaches change self.dns from worker threads (under
            # _mem): read a consistent view. The index names the candidates;
            # the records say which are still manual.
            with self._mem:
                found = (self.dns.get((lname, text)) for text in self._dns_manual.get(lname))
                removed = [r for r in found if r is not None and r.source == "manual"]
            if removed:
                await self._run(self._dns_change, [], removed)

    async def serve_remote_dns(
        self, added: Sequence[DnsRecord], removed: Sequence[DnsRecord]
    ) -> None:
        """Serve (or stop serving) records that live elsewhere, e.g. on other cluster nodes.

        The records go to the DNS hooks only: they are not stored, not listed
        among this node's names and not handed back to ``register_dns``'s
        callers; the caller (cluster mode) owns them and re-sends them after a
        restart. Give them a ``source`` other than ``manual``/``handle:...``.
        """
        self._require_started()
        if added or removed:
            await self._run(
                functools.partial(self.hooks.dns_records_changed, stored=False),
                list(added),
                list(removed),
            )

    def _dns_change(self, added: list[DnsEntry], removed: list[DnsEntry]) -> None:
        self.hooks.dns_records_changed(records(added), records(removed))
        tx = Tx()
        for rec in removed:
            key = self._dns_key(rec)
            tx.delete("dns", f"{key[0]}|{key[1]}")
            tx.after.append(functools.partial(self._dns_pop, key))
        for rec in added:
            key = self._dns_key(rec)
            tx.put("dns", f"{key[0]}|{key[1]}", rec.doc())
            tx.after.append(functools.partial(self._dns_put, key, rec))
        try:
            self._commit(tx)
        except StateError:
            self.hooks.dns_records_changed(records(removed), records(added))
            raise

    # -- NAT port mappings (extension) --------------------------------------
