"""The embedded DNS server: authoritative for the overlay zone, forwarder for the rest.

A standalone asyncio server with no dependency on the engine::

    server = DnsServer(DnsConfig(zone="prod.local.", listen=["127.0.0.1:5353"]))
    await server.start()
    server.set_records("web", ["10.200.0.5", "10.200.0.6"])  # from any thread
    await server.set_listeners(["127.0.0.1:5353", "10.200.0.1:53"])

See :class:`DnsConfig` for the settings and :class:`DnsServer` for the behaviour.
"""

from __future__ import annotations

from overlayd.dns._answer import DnsStats
from overlayd.dns._config import DnsConfig
from overlayd.dns._config import HostPort
from overlayd.dns._config import parse_hostport
from overlayd.dns._config import upstreams_from_resolv_conf
from overlayd.dns._server import DnsServer

__all__ = [
    "DnsConfig",
    "DnsServer",
    "DnsStats",
    "HostPort",
    "parse_hostport",
    "upstreams_from_resolv_conf",
]
