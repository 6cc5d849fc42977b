"""Prometheus metrics: a collector over the engine's state and an HTTP listener.

Served when ``[metrics] listen`` is set (``overlayd serve --metrics ADDR``);
off by default. The names, labels and the bound on per-peer series are listed
in ``docs/observability.rst``.

A scrape reads only what the engine already holds: the counters of
:class:`overlayd.stats.EngineStats` and of the DNS server, the recorded
attachments, leases and peers (snapshots taken under the engine's short
in-memory lock, never a resource lock, so a scrape never waits for an attach
nor holds one up), and each WireGuard device's peer dump for the handshake
ages and traffic. That dump is the one ``status`` reads: when ``status`` read
it less than ``PEER_DUMP_TTL`` seconds ago its answer is reused, and a
scrape's own read is reused for as long by the next scrape.

``prometheus_client`` is an optional dependency (the ``metrics`` extra of
``overlayd``); :func:`start_metrics` raises :class:`~overlayd.errors.ConfigError`
naming it when ``[metrics]`` is configured and the library is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING
from typing import Any
from typing import Final

from overlayd import __version__
from overlayd.config import split_listen
from overlayd.engine.layout import NODE_POOL
from overlayd.errors import ConfigError
from overlayd.ipam import usable_range
from overlayd.model import Device
from overlayd.model import Pool
from overlayd.stats import HistogramSnapshot

if TYPE_CHECKING:
    from overlayd.config import MetricsSettings
    from overlayd.engine import Engine

__all__ = ["PEER_DUMP_TTL", "MetricsServer", "OverlaydCollector", "parse_listen", "start_metrics"]

log = logging.getLogger(__name__)

#: How long (seconds) a device's peer dump is reused by scrapes.
PEER_DUMP_TTL: Final = 1.0


def _require_client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigError(
            f"[metrics] is configured but prometheus_client is not installed ({exc}); "
            "install it with `pip install 'overlayd[metrics]'`, or remove [metrics] "
            "listen / --metrics"
        ) from None
    return prometheus_client


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); :class:`ConfigError` otherwise."""
    try:
        return split_listen(value)
    except ValueError as exc:
        raise ConfigError(f"[metrics] listen: {exc}") from None


def pool_size(pool: Pool) -> int:
    """Addresses of ``pool`` that can be handed out (no network, broadcast, reserved)."""
    first, last = usable_range(pool.cidr)
    base = int(pool.cidr.network_address)
    reserved = {int(ip) - base for ip in pool.reserved if ip in pool.cidr}
    return last - first + 1 - sum(1 for off in reserved if first <= off <= last)


class OverlaydCollector:
    """A ``prometheus_client`` collector reading an engine (see the module docstring)."""

    def __init__(self, engine: Engine, *, max_peer_series: int = 1024) -> None:
        self.engine = engine
        self.max_peer_series = max_peer_series
        self._dumps: dict[str, tuple[float, Device, list[Any]]] = {}
        self._lock = threading.Lock()
        self._mf = _require_client().metrics_core

    def describe(self) -> list[Any]:
        return []  # no collect at registration: the families are made per scrape

    def collect(self) -> Iterator[Any]:
        mf = self._mf
        yield from self._build_info(mf)
        yield from self._operations(mf)
        yield from self._ipc(mf)
        yield from self._reconcile(mf)
        yield from self._ipam(mf)
        yield from self._peers(mf)
        yield from self._dns(mf)

    # -- families -------------------------------------------------------------

    def _build_info(self, mf: Any) -> Iterator[Any]:
        from overlayd.protocol import PROTOCOL_VERSION

        info = mf.InfoMetricFamily("overlayd_build", "overlayd's version, drivers and protocol")
        drivers = ",".join(d.name for d in self.engine.describe_drivers())
        info.add_metric(
            [],
            {"version": __version__, "drivers": drivers, "protocol": str(PROTOCOL_VERSION)},
        )
        yield info

    def _operations(self, mf: Any) -> Iterator[Any]:
        stats = self.engine.stats
        for kind in ("attach", "detach"):
            yield _histogram(
                mf,
                f"overlayd_{kind}_duration_seconds",
                f"Seconds a successful {kind} took",
                [],
                {(): getattr(stats, f"{kind}_seconds").snapshot()},
            )
            yield _counter(
                mf,
                f"overlayd_{kind}_failures",
                f"{kind.capitalize()}es that failed, by error class",
                ["reason"],
                getattr(stats, f"{kind}_failures").snapshot(),
            )
        with self.engine._mem:
            attachments = len(self.engine.attachments)
        gauge = mf.GaugeMetricFamily("overlayd_attachments", "Workloads attached now")
        gauge.add_metric([], attachments)
        yield gauge

    def _ipc(self, mf: Any) -> Iterator[Any]:
        stats = self.engine.stats
        yield _counter(
            mf,
            "overlayd_ipc_requests",
            "IPC requests answered, by op and result",
            ["op", "result"],
            stats.requests.snapshot(),
        )
        yield _histogram(
            mf,
            "overlayd_ipc_request_duration_seconds",
            "Seconds from reading an IPC request to its answer, by op",
            ["op"],
            stats.request_seconds.snapshot(),
        )

    def _reconcile(self, mf: Any) -> Iterator[Any]:
        stats = self.engine.stats
        yield _counter(
            mf,
            "overlayd_reconcile_runs",
            "Reconcile passes, by outcome (error: the pass reported errors)",
            ["outcome"],
            stats.reconcile_runs.snapshot(),
        )
        yield _histogram(
            mf,
            "overlayd_reconcile_duration_seconds",
            "Seconds a reconcile pass took",
            [],
            {(): stats.reconcile_seconds.snapshot()},
        )
        yield _counter(
            mf,
            "overlayd_reconcile_repairs",
            "Objects reconcile repaired, by kind (recreated, removed, released)",
            ["kind"],
            stats.reconcile_repairs.snapshot(),
        )

    def _ipam(self, mf: Any) -> Iterator[Any]:
        engine = self.engine
        pools: dict[str, Pool] = {}
        # What engine.list_leases() reports, counted without building a Lease
        # per attachment (a scrape stays cheap with thousands of them).
        with engine._mem:
            services = list(engine.services.values())
            has_node_pool = engine._addressing() is not None and engine._layout is not None
            per_service = Counter(a.service for a in engine.attachments.values())
            global_ips = sum(1 for a in engine.attachments.values() if a.global_ip is not None)
            manual = Counter(lease.pool for lease in engine.manual_leases.values())
        counts: Counter[str] = Counter(manual)
        if has_node_pool:
            node = engine._node_pool()
            pools[node.name] = node
        counts[NODE_POOL] += global_ips
        for svc in services:
            pool = engine._pool_for(svc)
            pools.setdefault(pool.name, pool)
            counts[pool.name] += per_service.get(svc.service, 0)
        for name in pools:
            counts.setdefault(name, 0)
        if not counts[NODE_POOL] and NODE_POOL not in pools:
            del counts[NODE_POOL]
        leases = mf.GaugeMetricFamily(
            "overlayd_ipam_leases", "Addresses leased, per pool", labels=["pool"]
        )
        for name, count in sorted(counts.items()):
            leases.add_metric([name], count)
        yield leases
        size = mf.GaugeMetricFamily(
            "overlayd_ipam_pool_addresses",
            "Addresses a pool can hand out (without network, broadcast and reserved)",
            labels=["pool"],
        )
        for name, pool in sorted(pools.items()):
            size.add_metric([name], pool_size(pool))
        yield size

    def _peers(self, mf: Any) -> Iterator[Any]:
        engine = self.engine
        with engine._mem:
            recorded = {name: len(table) for name, table in engine.peers.items()}
        count = mf.GaugeMetricFamily(
            "overlayd_peers", "Peers recorded per WireGuard device", labels=["device"]
        )
        for name, n in sorted(recorded.items()):
            count.add_metric([name], n)
        yield count
        labels = ["device", "public_key"]
        age = mf.GaugeMetricFamily(
            "overlayd_peer_last_handshake_age_seconds",
            "Seconds since the peer's last handshake (absent: never)",
            labels=labels,
        )
        rx = mf.CounterMetricFamily(
            "overlayd_peer_receive_bytes", "Bytes received from the peer", labels=labels
        )
        tx = mf.CounterMetricFamily(
            "overlayd_peer_transmit_bytes", "Bytes sent to the peer", labels=labels
        )
        budget = self.max_peer_series
        dropped = 0
        now = time.time()
        for device in engine._wg_devices():
            for peer in self._dump(device):
                if budget <= 0:
                    dropped += 1
                    continue
                budget -= 1
                values = [device.name, peer.public_key]
                if peer.last_handshake_unix_secs > 0:
                    age.add_metric(values, max(0.0, now - peer.last_handshake_unix_secs))
                rx.add_metric(values, peer.rx_bytes)
                tx.add_metric(values, peer.tx_bytes)
        yield age
        yield rx
        yield tx
        left = mf.GaugeMetricFamily(
            "overlayd_peer_series_dropped",
            "Peers left out of the per-peer series by [metrics] max_peer_series",
        )
        left.add_metric([], dropped)
        yield left

    def _dump(self, device: Device) -> list[Any]:
        """The device's peers, read at most every :data:`PEER_DUMP_TTL` seconds."""
        now = time.monotonic()
        status = self.engine._status_cache
        if status is not None and status.device == device and now - status.read_at < PEER_DUMP_TTL:
            return list(status.peers)
        with self._lock:
            cached = self._dumps.get(device.name)
            if cached is not None and cached[1] == device and now - cached[0] < PEER_DUMP_TTL:
                return cached[2]
            peers = self.engine._read_peers_blocking(device, "a metrics scrape") or []
            self._dumps[device.name] = (now, device, peers)
            return peers

    def _dns(self, mf: Any) -> Iterator[Any]:
        stats = _dns_stats(self.engine)
        if stats is None:
            return
        yield _counter(
            mf,
            "overlayd_dns_queries",
            "DNS queries, by query type and result (rcode, or dropped)",
            ["type", "result"],
            stats.by_query.snapshot(),
        )
        yield _histogram(
            mf,
            "overlayd_dns_forward_duration_seconds",
            "Seconds until the upstreams answered a forwarded query (or gave up)",
            [],
            {(): stats.forward_seconds.snapshot()},
        )


def _dns_stats(engine: Engine) -> Any:
    """The built-in DNS server's counters, when it runs in this engine."""
    for plugin in engine.pm.get_plugins():
        server = getattr(plugin, "server", None)
        stats = getattr(server, "stats", None)
        if stats is not None and hasattr(stats, "by_query"):
            return stats
    return None


def _counter(
    mf: Any, name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], int]
) -> Any:
    family = mf.CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _histogram(
    mf: Any,
    name: str,
    doc: str,
    labels: list[str],
    values: dict[tuple[str, ...], HistogramSnapshot],
) -> Any:
    family = mf.HistogramMetricFamily(name, doc, labels=labels)
    for key, snap in sorted(values.items()):
        buckets = [(_le(bound), count) for bound, count in snap.buckets]
        family.add_metric(list(key), buckets, snap.sum)
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class MetricsServer:
    """The HTTP listener serving ``/metrics`` from its own registry, in a thread."""

    def __init__(self, engine: Engine, listen: str, *, max_peer_series: int = 1024) -> None:
        client = _require_client()
        self.host, port = parse_listen(listen)
        self.registry = client.CollectorRegistry(auto_describe=False)
        self.collector = OverlaydCollector(engine, max_peer_series=max_peer_series)
        self.registry.register(self.collector)
        try:
            self._httpd, self._thread = client.start_http_server(
                port, addr=self.host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {listen}: {exc}") from None
        self.port: int = self._httpd.server_address[1]
        log.info("serving metrics on http://%s:%d/metrics", self.host, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def scrape(self) -> bytes:
        """The exposition text, as a scrape would get it (tests, benchmarks)."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics(settings: MetricsSettings, engine: Engine) -> MetricsServer | None:
    """Serve metrics when ``settings.listen`` is set; ``None`` when off."""
    listen = settings.listen
    if listen is None:
        return None
    return MetricsServer(engine, listen, max_peer_series=settings.max_peer_series)
