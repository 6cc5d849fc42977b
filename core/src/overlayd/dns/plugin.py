"""The built-in DNS server as an engine plugin on the ``dns`` hooks.

The engine tells it which records exist (all of them at start with
``overlayd_dns_records_loaded``, then each change with
``overlayd_dns_records_changed``) and which zone and addresses to serve
(``overlayd_dns_serve``); a driver that wants to take over DNS implements the
same hooks and the daemon leaves this plugin out (``[dns] enabled = false``).
With a data directory, the record tables are kept there at a stop
(``overlayd_dns_records_stored``) and read back at the next start instead of
being built, when the stored records are unchanged (:mod:`overlayd.dns._snapshot`).

Hooks run in the engine's worker threads; the server lives on the engine's
event loop, so listener changes are handed over with ``call_threadsafe`` and
record updates (thread-safe, in memory) are applied directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overlayd.config import DnsSettings
from overlayd.dns import _snapshot
from overlayd.dns._config import DnsConfig
from overlayd.dns._server import DnsServer
from overlayd.errors import DnsError
from overlayd.hookspecs import hookimpl
from overlayd.model import DnsRecord
from overlayd.model import DnsRecordLike

__all__ = ["DnsPlugin"]

log = logging.getLogger(__name__)


class DnsPlugin:
    """Serves the overlay zone from the engine's records."""

    name = "dns"

    def __init__(self, settings: DnsSettings | None = None) -> None:
        self.settings = settings or DnsSettings()
        extra: dict[str, Any] = {}
        if self.settings.upstreams:
            extra["upstreams"] = list(self.settings.upstreams)
        self.server = DnsServer(
            DnsConfig(
                zone=self.settings.zone or "overlay.local.",
                ttl=self.settings.ttl,
                forward=self.settings.forward,
                listen=[],
                **extra,
            )
        )
        self._started = False
        #: Where the record tables are kept across a restart (:mod:`overlayd.dns._snapshot`).
        self._tables_file: Path | None = None

    @hookimpl
    def overlayd_startup(self, context: Any) -> None:
        loop = context.loop
        if loop is None:
            raise DnsError("the DNS plugin needs the engine's event loop", op="startup")
        self._loop = loop
        data_dir = context.data_dir
        self._tables_file = None if data_dir is None else Path(data_dir) / _snapshot.FILENAME
        self._call(self.server.start())
        self._started = True

    def _call(self, coro: Any) -> Any:
        import asyncio

        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=15)

    @hookimpl
    def overlayd_shutdown(self) -> None:
        if self._started:
            self._started = False
            self._call(self.server.stop())

    @hookimpl
    def overlayd_dns_records_changed(
        self, added: Sequence[DnsRecord], removed: Sequence[DnsRecord]
    ) -> None:
        self.server.update_records(
            [(rec.name, rec.ip) for rec in removed], [(rec.name, rec.ip) for rec in added]
        )

    @hookimpl
    def overlayd_dns_records_loaded(
        self, records: Sequence[DnsRecordLike], fingerprint: str | None
    ) -> None:
        path = self._tables_file
        if (
            fingerprint is not None
            and path is not None
            and self.server.reuse_tables(path, fingerprint)
        ):
            log.debug("DNS tables of %d records read back from %s", len(records), path)
            return
        # Added as changes are; on the empty table of a start the store builds
        # the whole zone in one pass, once per address (the engine shares one
        # object per address).
        self.server.update_records((), ((rec.name, rec.ip) for rec in records))

    @hookimpl
    def overlayd_dns_records_stored(self, fingerprint: str | None) -> None:
        path = self._tables_file
        if path is None:
            return
        if fingerprint is None:
            path.unlink(missing_ok=True)
        else:
            self.server.keep_tables(path, fingerprint)

    @hookimpl
    def overlayd_dns_serve(self, zone: str, addresses: Sequence[str]) -> None:
        if not self.settings.zone:
            self.server.set_zone(zone)
        if not self._started:
            return
        self._call(self.server.set_listeners(list(addresses)))
