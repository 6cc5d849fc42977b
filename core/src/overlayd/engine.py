"""The engine: request semantics over the hooks, state, locks and rollback.

Every operation follows the same shape:

1. validate the input (nothing is touched if it is bad);
2. take the locks of the resources it touches, in a fixed order
   (global → service → device → handle → dns name), shared where it only
   needs the resource to stay put, exclusive where it changes it; there is no
   global lock, and ``status`` takes none;
3. run the steps in a worker thread, recording the inverse of each completed
   host effect; when a step fails the inverses run in reverse order;
4. commit the durable records once, in one store transaction; only then the
   in-memory view changes and the answer goes out.

The in-memory view is guarded by a plain ``threading.Lock`` held only for
dictionary updates and snapshots, never across a hook call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import ipaddress
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import TypeVar

import pluggy
from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import TypeAdapter

from overlayd import keys
from overlayd.checks import check_dns_name_fits
from overlayd.checks import check_peer_changes
from overlayd.checks import check_port_target
from overlayd.config import EngineConfig
from overlayd.errors import AllocationError
from overlayd.errors import Conflict
from overlayd.errors import InvalidRequest
from overlayd.errors import NotFound
from overlayd.errors import NotSupported
from overlayd.errors import OverlaydError
from overlayd.errors import StateError
from overlayd.errors import TeardownError
from overlayd.errors import clip
from overlayd.errors import quote
from overlayd.ipam import PortBand
from overlayd.ipam import usable_range
from overlayd.layout import SliceLayout
from overlayd.layout import choose_layout
from overlayd.layout import global_conflicts
from overlayd.locks import LockTable
from overlayd.model import AnyHandle
from overlayd.model import Attachment
from overlayd.model import AttachRequest
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import DnsRecord
from overlayd.model import DriverInfo
from overlayd.model import Event
from overlayd.model import GlobalOverlay
from overlayd.model import GuestManagedHandle
from overlayd.model import Handle
from overlayd.model import IPAddress
from overlayd.model import IPNetwork
from overlayd.model import Lease
from overlayd.model import LinuxPidHandle
from overlayd.model import MasqueradeRule
from overlayd.model import NetnsHandle
from overlayd.model import NodeInfo
from overlayd.model import OverlayMode
from overlayd.model import PeerChange
from overlayd.model import PeerConfig
from overlayd.model import PeerScope
from overlayd.model import PeerStatus
from overlayd.model import Pool
from overlayd.model import PortMapping
from overlayd.model import ReconcileReport
from overlayd.model import ReconcileRequest
from overlayd.model import ServiceOverlay
from overlayd.model import WindowsContainerHandle
from overlayd.model import handle_key
from overlayd.names import dedicated_device_name
from overlayd.names import global_device_name
from overlayd.names import service_bridge_name
from overlayd.nat import host as nat_host
from overlayd.nat.agent import NatAgent
from overlayd.nat.candidates import CandidateExchange
from overlayd.nat.candidates import IpcExchange
from overlayd.peers import Merge
from overlayd.peers import PeerTable
from overlayd.peers import change_from
from overlayd.plugins import DriverContext
from overlayd.plugins import Hooks
from overlayd.plugins import load_drivers
from overlayd.plugins import make_plugin_manager
from overlayd.plugins import register_drivers
from overlayd.work import Undo
from overlayd.work import WorkerPool

__all__ = ["DedicatedStatus", "Engine", "GcReport", "ReconcileSummary", "Status"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_DNS_NAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
_HANDLE_ADAPTER: TypeAdapter[AnyHandle] = TypeAdapter(Handle)
# Whole lists of stored records are validated in one pydantic-core call each.
_LEASES_ADAPTER: TypeAdapter[list[Lease]] = TypeAdapter(list[Lease])
_ATTACHMENTS_ADAPTER: TypeAdapter[list[Attachment]] = TypeAdapter(list[Attachment])
_DNS_ADAPTER: TypeAdapter[list[DnsRecord]] = TypeAdapter(list[DnsRecord])


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a bulk of long-lived objects is built."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def leases_from_records(values: Iterable[Any]) -> list[Lease]:
    """Validate stored lease records (the ``lease`` kind of :meth:`Store.load`) in one batch."""
    return _LEASES_ADAPTER.validate_python(list(values))


GLOBAL_KEY = "wg-global"
NODE_POOL = "node"
#: Store kind of a detach under way (keyed by handle key), written before the host changes.
DETACH_INTENT = "detaching"


def _service_pool(service: str) -> str:
    return f"service:{service}"


def _owner(handle_or_key: str) -> str:
    return f"handle:{handle_or_key}"


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True)


class DedicatedStatus(_Result):
    service: str
    interface: str
    public_key: str
    listen_port: int
    overlay_ip: IPAddress
    subnet: IPNetwork
    peer_count: int


class Status(_Result):
    """What ``status`` answers (ZLayer's StatusSnapshot)."""

    interface: str | None = None
    node_ip: IPAddress | None = None
    public_key: str | None = None
    overlay_cidr: IPNetwork | None = None
    slice_cidr: IPNetwork | None = None
    peer_count: int = 0
    service_count: int = 0
    peers: tuple[PeerStatus, ...] = ()
    dedicated_services: tuple[DedicatedStatus, ...] = ()
    #: NAT traversal (:class:`overlayd.nat.host.NatStatus`) when it runs.
    nat: Any = None


class GcReport(_Result):
    released: tuple[AnyHandle, ...] = ()
    kept: int = 0


class ReconcileSummary(_Result):
    adopted: int = 0
    recreated: int = 0
    removed: int = 0
    released: int = 0
    errors: tuple[str, ...] = ()
    reports: tuple[ReconcileReport, ...] = ()


# ---------------------------------------------------------------------------
# rollback and commit helpers
# ---------------------------------------------------------------------------


_Undo = Undo


@dataclass
class _Tx:
    """Records to write in one store transaction, and the in-memory changes to apply after."""

    puts: dict[tuple[str, str], Any] = field(default_factory=dict)
    deletes: set[tuple[str, str]] = field(default_factory=set)
    after: list[Callable[[], object]] = field(default_factory=list)

    def put(self, kind: str, key: str, value: BaseModel | dict[str, Any]) -> None:
        data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        self.deletes.discard((kind, key))
        self.puts[(kind, key)] = data

    def delete(self, kind: str, key: str) -> None:
        self.puts.pop((kind, key), None)
        self.deletes.add((kind, key))


class _MemorySecrets:
    def __init__(self) -> None:
        self._data: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self._data.get(name)

    def put(self, name: str, value: str) -> None:
        self._data[name] = value

    def delete(self, name: str) -> None:
        self._data.pop(name, None)


# ---------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _PeerStatusCache:
    """One read of a device's peers, and what it was read under."""

    #: ``time.monotonic()`` before the read started.
    read_at: float
    device: Device
    #: The recorded peer configurations of the device when the read started.
    configs: tuple[PeerConfig, ...]
    peers: list[PeerStatus]


class Engine:
    """The overlay engine. Use as ``async with Engine(config) as engine: ...``.

    :param config: Engine configuration; ``config.drivers`` names the drivers
        to load through entry points unless ``drivers`` is given.
    :param drivers: Driver instances to register instead of loading by name
        (tests and embedders), first called first.
    :param store: A state store; default: SQLite under ``config.data_dir``, or
        in memory when that is ``None``.
    :param plugins: Extra plugins to register (e.g. the built-in DNS server).
    """

    #: How old (seconds) the peers ``status`` reports may be: traffic counters
    #: and handshake times lag by at most this much; peer changes never do.
    STATUS_PEERS_MAX_AGE: float = 1.0

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        drivers: Sequence[object] | None = None,
        store: Any = None,
        plugins: Sequence[object] = (),
    ) -> None:
        self.config = config or EngineConfig()
        self.pm: pluggy.PluginManager = make_plugin_manager()
        for plugin in plugins:
            self.pm.register(plugin)
        if drivers is None:
            self.drivers = load_drivers(self.pm, self.config.drivers)
        else:
            self.drivers = list(drivers)
            register_drivers(self.pm, self.drivers)
        self.hooks = Hooks(self.pm)
        self._store = store
        self._secrets: Any = None
        self._locks = LockTable()
        self._mem = threading.Lock()
        self._work = WorkerPool(self.config.engine.workers)
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        # in-memory view (rebuilt from the store at start)
        self.node_id: int | None = None
        self.local_wg_pubkey: str | None = None
        self.global_: GlobalOverlay | None = None
        self.services: dict[str, ServiceOverlay] = {}
        self.attachments: dict[str, Attachment] = {}
        #: Windows: namespace GUID -> attachment key (detach by namespace GUID).
        self._by_namespace: dict[str, str] = {}
        #: Keys of attachments whose detach is recorded as under way (DETACH_INTENT).
        self.detaching: set[str] = set()
        self.manual_leases: dict[str, Lease] = {}
        #: device name -> its peers as recorded (see overlayd.peers for the merge rules).
        self.peers: dict[str, PeerTable] = {}
        self.dns: dict[tuple[str, str], DnsRecord] = {}
        self.masquerades: dict[str, MasqueradeRule] = {}
        self.port_mappings: dict[str, PortMapping] = {}
        #: The global overlay after ``teardown_global_overlay`` while services or
        #: attachments still use its slice: a later set-up adopts it.
        self._retired: GlobalOverlay | None = None
        self._layout: SliceLayout | None = None
        self._ports: PortBand | None = None
        self._health: dict[tuple[str, str], bool] = {}
        self._tx_seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._endpoints: dict[tuple[str, str], str | None] = {}
        #: Peers of the global device as ``status`` last read them (see _status_peers).
        self._status_cache: _PeerStatusCache | None = None
        #: NAT traversal of the global device (overlayd.nat), when it runs.
        self.nat: NatAgent | None = None
        #: How NAT candidates travel between nodes (IPC unless a cluster store plugs in).
        self.nat_exchange: CandidateExchange = IpcExchange()

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load state, start the drivers, re-ensure recorded devices and reconcile."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._work.start()
        if self._store is None:
            from overlayd.state import open_store

            self._store = open_store(self.config.data_dir)
        if self.config.data_dir is not None:
            from overlayd.state import open_secrets

            self._secrets = open_secrets(self.config.data_dir)
        else:
            self._secrets = _MemorySecrets()
        context = DriverContext(
            data_dir=self.config.data_dir, emit=self.emit, secrets=self._secrets, loop=self._loop
        )
        await self._run(self.hooks.configure, self.config)
        await self._run(self.hooks.startup, context)
        await self._run(self._load)
        self._started = True
        await self.reconcile(startup=True)
        await nat_host.start_nat(self)
        interval = self.config.engine.health_interval_secs
        if interval > 0:
            self._tasks.append(asyncio.create_task(self._periodic(interval, self.check_health)))
        interval = self.config.engine.reconcile_interval_secs
        if interval > 0:
            self._tasks.append(asyncio.create_task(self._periodic(interval, self.reconcile)))

    async def stop(self) -> None:
        """Stop periodic work and the drivers; the data plane stays up.

        New operations are refused from here on. Work in flight (a periodic
        reconcile, a request of an embedder) is drained first, for at most
        ``engine.stop_timeout_secs``; what still runs then is logged by name
        before the drivers shut down and the store closes under it.
        """
        if not self._started or self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.engine.stop_timeout_secs
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # A cancelled periodic pass still waits for its worker (WorkerPool.run).
            await asyncio.wait(self._tasks, timeout=max(0.0, deadline - loop.time()))
        left = await self._work.drain(max(0.0, deadline - loop.time()))
        if left:
            log.error(
                "stopping with %d operation(s) still running after %.0fs, cut off: %s",
                len(left),
                self.config.engine.stop_timeout_secs,
                "; ".join(left),
            )
        for task in self._tasks:
            if task.done() and not task.cancelled():
                with contextlib.suppress(Exception):
                    task.result()
        self._tasks.clear()
        await nat_host.stop_nat(self)
        self._started = False
        try:
            await self._run(self.hooks.shutdown)
        except OverlaydError as exc:
            log.error("driver shutdown failed: %s", exc)
        if self._store is not None:
            self._store.close()
        self._work.shutdown(wait=not left)
        self._stopping = False

    async def _periodic(self, interval: float, fn: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except OverlaydError as exc:
                log.warning("periodic %s failed: %s", getattr(fn, "__name__", fn), exc)
            except Exception:  # a bug must not end the loop for good
                log.exception("periodic %s crashed; it will run again", getattr(fn, "__name__", fn))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (hooks) off the event loop.

        Cancelling the caller does not release its locks before the worker has
        finished (see :class:`overlayd.work.WorkerPool`).
        """
        return await self._work.run(fn, *args)

    #: Run blocking work (hooks) on the engine's workers (for overlayd.nat).
    run_blocking = _run

    def _require_started(self) -> None:
        if self._stopping:
            raise InvalidRequest("overlayd is stopping; retry once it is back")
        if not self._started:
            raise InvalidRequest("the engine is not started; use `async with Engine(...)`")

    # -- events -------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Push ``event`` to every subscriber. Thread-safe."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._fanout(event)
        else:
            loop.call_soon_threadsafe(self._fanout, event)

    def _fanout(self, event: Event) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                # A slow consumer loses its oldest event rather than stalling the engine.
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    async def events(self, maxsize: int = 1024) -> AsyncIterator[Event]:
        """Iterate over engine events until cancelled."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    def subscribe(self, maxsize: int = 1024) -> asyncio.Queue[Event]:
        """A queue receiving every event; call :meth:`unsubscribe` when done."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self._subscribers.discard(queue)

    # -- store --------------------------------------------------------------

    def _commit(self, tx: _Tx) -> None:
        """Write ``tx`` in one transaction, then apply its in-memory changes."""
        if tx.puts or tx.deletes:
            try:
                self._store.commit(tx.puts, tx.deletes)
            except OverlaydError:
                raise
            except Exception as exc:
                raise StateError(f"could not write the state store: {exc}") from exc
        with self._mem:
            for fn in tx.after:
                fn()

    def _scrub_store(self) -> None:
        """Ask the store to drop copies of deleted records (a secret was deleted)."""
        scrub = getattr(self._store, "scrub", None)
        if callable(scrub):
            try:
                scrub()
            except OverlaydError as exc:
                log.warning("deleted records may linger in the state store: %s", exc)

    def _load(self) -> None:
        """Rebuild the in-memory view and IPAM pools from the store."""
        # Tens of thousands of long-lived records are built here; left on, the
        # cyclic GC rescans them again and again while they are created (about
        # a third of the time of a 65,536-lease load).
        with gc_paused():
            self._load_records()

    def _load_records(self) -> None:
        data = self._store.load()
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
        for key, value in data.get("peer", {}).items():
            device, _, _ = key.partition("|")
            self._peer_table(device).put(PeerConfig.model_validate(value))
        self.dns = {
            (rec.name.lower(), str(rec.ip)): rec
            for rec in _DNS_ADAPTER.validate_python(list(data.get("dns", {}).values()))
        }
        self.masquerades = {
            k: MasqueradeRule.model_validate(v) for k, v in data.get("masquerade", {}).items()
        }
        self.port_mappings = {
            k: PortMapping.model_validate(v) for k, v in data.get("portmap", {}).items()
        }
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
        if self.dns:
            self.hooks.dns_records_changed(list(self.dns.values()), [])

    # -- addressing helpers -------------------------------------------------

    def _addressing(self) -> GlobalOverlay | None:
        """The global overlay whose slice the node's addresses come from (up or retired)."""
        return self.global_ or self._retired

    def _init_layout(self, g: GlobalOverlay) -> None:
        self._layout = SliceLayout(
            g.layout or "carved",
            g.cluster_cidr,
            g.slice_cidr,
            self.config.ipam,
            node_key=str(g.slice_cidr),
        )
        self._ports = PortBand(g.wg_port)

    def _node_pool(self) -> Pool:
        g = self._addressing()
        assert g is not None and self._layout is not None
        return self._layout.node_pool(g.node_ip)

    def _flat(self, svc: ServiceOverlay) -> bool:
        """A service without a pool of its own: it uses the node pool (Windows, shared)."""
        return self._layout is not None and self._layout.flat(svc.mode)

    def _pool_for(self, svc: ServiceOverlay) -> Pool:
        if self._flat(svc):
            return self._node_pool()
        reserved: tuple[IPAddress, ...] = (svc.gateway,)
        if svc.overlay_ip is not None:
            reserved += (svc.overlay_ip,)
        return Pool(name=_service_pool(svc.service), cidr=svc.subnet, reserved=reserved)

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

    @staticmethod
    def _check_name(what: str, value: object) -> str:
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise InvalidRequest(
                f"invalid {what} {quote(value)}: use 1-63 letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit"
            )
        return value

    @staticmethod
    def _parse_net(what: str, value: str | IPNetwork) -> IPNetwork:
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return value
        try:
            return ipaddress.ip_network(str(value).strip(), strict=True)
        except ValueError as exc:
            raise InvalidRequest(f"invalid {what} {quote(value)}: {clip(str(exc), 200)}") from None

    @staticmethod
    def _parse_ip(what: str, value: str | IPAddress) -> IPAddress:
        if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return value
        try:
            return ipaddress.ip_address(str(value).strip())
        except ValueError:
            raise InvalidRequest(
                f"invalid {what} {quote(value)}: not an IPv4 or IPv6 address"
            ) from None

    def _service(self, service: str) -> ServiceOverlay:
        svc = self.services.get(service)
        if svc is None:
            raise NotFound(
                f"service {quote(service)} has no overlay on this node; "
                "call setup_service_overlay first"
            )
        return svc

    def _global(self) -> GlobalOverlay:
        if self.global_ is None:
            raise InvalidRequest(
                "the global overlay is not set up; call setup_global_overlay first"
            )
        return self.global_

    # -- node identity ------------------------------------------------------

    async def set_local_node_id(self, node_id: int) -> None:
        self._require_started()
        if not 0 <= node_id < 2**64:
            raise InvalidRequest(f"node_id {node_id} is not an unsigned 64-bit integer")
        await self._run(self._commit_meta, "node_id", node_id)

    async def set_local_wg_pubkey(self, pubkey: str) -> None:
        self._require_started()
        try:
            PeerConfig(public_key=pubkey)
        except ValueError as exc:
            raise InvalidRequest(f"invalid public key: {exc}") from None
        await self._run(self._commit_meta, "local_wg_pubkey", pubkey)

    def _commit_meta(self, key: str, value: Any) -> None:
        # meta records are stored unwrapped: kind "meta", key -> value
        tx = _Tx()
        tx.puts[("meta", key)] = value
        tx.after.append(lambda: setattr(self, key, value))
        self._commit(tx)

    # -- global overlay -----------------------------------------------------

    async def setup_global_overlay(
        self,
        *,
        deployment: str,
        instance_id: str,
        cluster_cidr: str | IPNetwork,
        slice_cidr: str | IPNetwork | None = None,
        wg_port: int,
        nat_enabled: bool = False,
    ) -> str:
        """Create (or adopt) the node's WireGuard device; returns its interface name.

        ZLayer's agent sends this at every start with its own pid as
        ``instance_id``. A request for the overlay already set up (or torn down
        while services and attachments still use its slice) adopts it whatever
        the ``instance_id``: the same device, key, slice, peers and attachments,
        answered as a first set-up would be. An absent ``slice_cidr`` keeps the
        recorded slice; ``nat_enabled`` is applied. A different deployment,
        cluster CIDR, given slice or port is refused (see :func:`global_conflicts`).
        """
        self._require_started()
        self._check_name("deployment", deployment)
        if instance_id:
            self._check_name("instance_id", instance_id)
        cluster = self._parse_net("cluster_cidr", cluster_cidr)
        given = self._parse_net("slice_cidr", slice_cidr) if slice_cidr else None
        slice_net = given or cluster
        if slice_net.version != cluster.version or not slice_net.subnet_of(cluster):  # type: ignore[arg-type]
            raise InvalidRequest(f"slice_cidr {slice_net} is not inside cluster_cidr {cluster}")
        if slice_net.max_prefixlen - slice_net.prefixlen < 4:
            raise InvalidRequest(
                f"slice_cidr {slice_net} is too small: it must hold the node, a node pool "
                "and service subnets (at least 16 addresses)"
            )
        if not 0 < wg_port < 65536 - 256:
            raise InvalidRequest(f"wg_port {wg_port} is not a usable UDP port")
        async with self._locks.hold(("global", True)):
            existing = self._addressing()
            if existing is not None:
                conflicts = global_conflicts(
                    existing, deployment=deployment, cluster=cluster, slice_net=given, port=wg_port
                )
                if conflicts and self.global_ is None and not self._slice_in_use():
                    # Torn down and nothing uses its slice any more: start afresh.
                    await self._run(self._forget_retired)
                    existing = None
                elif conflicts:
                    state = "is set up" if self.global_ is not None else "was set up"
                    raise Conflict(
                        f"the global overlay {state} differently: {'; '.join(conflicts)}. "
                        + (
                            "Tear it down before setting it up differently."
                            if self.global_ is not None
                            else "Services or attachments still use its slice; tear them "
                            "down first, or set it up as it was."
                        )
                    )
            if existing is not None and self.global_ is existing:
                if existing.instance_id != instance_id:
                    log.info(
                        "instance %s adopts the global overlay %s of instance %s",
                        instance_id or "''",
                        existing.device.name,
                        existing.instance_id or "''",
                    )
                if existing.nat_enabled != nat_enabled:
                    await self._run(self._set_global_nat, nat_enabled)
                return existing.device.name
            name = await self._run(
                self._setup_global,
                deployment,
                instance_id,
                cluster,
                slice_net,
                given is not None,
                wg_port,
                nat_enabled,
            )
            await nat_host.start_nat(self)
            return name

    def _slice_in_use(self) -> bool:
        return bool(
            self.services
            or self.attachments
            or any(lease.pool == NODE_POOL for lease in self.manual_leases.values())
        )

    def _identity_key(self, name: str) -> str:
        key = self._secrets.get(name)
        if key is None:
            key = keys.generate_private_key()
            self._secrets.put(name, key)
        # SecretStore returns a redacting str subclass; hand drivers the plain value.
        reveal = getattr(key, "reveal", None)
        return str(reveal()) if callable(reveal) else str(key)

    def identity_private_key(self) -> str:
        """The global device's private key (base64), for NAT connectivity checks."""
        return self._identity_key(GLOBAL_KEY)

    def _setup_global(
        self,
        deployment: str,
        instance_id: str,
        cluster: IPNetwork,
        slice_net: IPNetwork,
        slice_given: bool,
        wg_port: int,
        nat_enabled: bool,
    ) -> str:
        # A retired overlay (torn down, its slice still in use) comes back as it
        # was: same names, node address and layout; only the device is new.
        base = self._retired
        if base is not None:
            instance_id = base.instance_id
            node_ip = base.node_ip
            layout = base.layout
            slice_given = base.reported_slice is not None
        else:
            first, _ = usable_range(slice_net)
            node_ip = ipaddress.ip_address(int(slice_net.network_address) + first)
            layout = choose_layout(
                cluster, slice_net, self.config.ipam, self.config.engine.segment_kind
            )
        name = global_device_name(deployment, instance_id)
        spec = DeviceSpec(
            kind=DeviceKind.WIREGUARD,
            name=name,
            owner="base",
            addresses=(ipaddress.ip_interface(f"{node_ip}/{cluster.prefixlen}"),),
            mtu=self.config.engine.mtu,
            listen_port=wg_port,
            private_key=self._identity_key(GLOBAL_KEY),
            subnet=cluster,
        )
        undo = _Undo()
        try:
            device = self.hooks.device_create(spec)
            undo.push("delete global device", lambda: self.hooks.device_delete(device))
            g = GlobalOverlay(
                deployment=deployment,
                instance_id=instance_id,
                cluster_cidr=cluster,
                slice_cidr=slice_net,
                node_ip=node_ip,
                wg_port=wg_port,
                nat_enabled=nat_enabled,
                device=device,
                slice_given=slice_given,
                layout=layout,
            )
            if self._layout is None:
                self._init_layout(g)
                undo.push("forget the layout", lambda: setattr(self, "_layout", None))
            assert self._layout is not None
            pool = self._layout.node_pool(node_ip)
            if base is None:
                self.hooks.ipam_pool_create(pool, [])
                undo.push("delete node pool", lambda: self.hooks.ipam_pool_delete(pool))
            tx = _Tx()
            self._global_nat(tx, undo, g, nat_enabled)
            table = self._peer_table(name)
            changes = [change_from(p) for p in table.values()]
            # Guests on the global device lost their peer with the old device.
            for att in self.attachments.values():
                svc = self.services.get(att.service)
                on_global = svc is None or svc.dedicated is None
                if att.guest is not None and on_global and att.guest.public_key not in table:
                    guest = PeerChange(
                        public_key=att.guest.public_key,
                        allowed_ips=(ipaddress.ip_network(att.ip),),
                    )
                    changes.append(guest)
            if changes:
                merged = table.preview(changes)
                self.hooks.peer_apply(device, changes)
                self._record_peers(tx, table, merged)
            tx.put("global", "global", g)
            tx.delete("global", "retired")

            def apply() -> None:
                self.global_ = g
                self._retired = None

            tx.after.append(apply)
            self._commit(tx)
        except BaseException as exc:
            undo.rollback(exc)
            raise
        self._sync_dns_serve()
        log.info(
            "global overlay %s up: node %s, slice %s (%s layout)",
            name,
            node_ip,
            slice_net,
            layout,
        )
        return device.name

    def _global_nat(self, tx: _Tx, undo: _Undo, g: GlobalOverlay, enable: bool) -> None:
        """Masquerade the node slice (and subnets outside it) leaving the node, or stop."""
        subnets = [g.slice_cidr] + [
            s.subnet
            for s in self.services.values()
            if not s.subnet.subnet_of(g.slice_cidr)  # type: ignore[arg-type]
        ]
        for subnet in subnets:
            key = str(subnet)
            rule = self.masquerades.get(key) or MasqueradeRule(
                subnet=subnet, exempt=(g.cluster_cidr,)
            )
            if enable and key not in self.masquerades:
                if self.hooks.nat_masquerade(rule, True):
                    undo.push("remove masquerade", functools.partial(self._unmask, rule))
                    tx.put("masquerade", key, rule)
                    tx.after.append(functools.partial(self.masquerades.__setitem__, key, rule))
            elif not enable and key in self.masquerades:
                self.hooks.nat_masquerade(rule, False)
                undo.push(
                    "restore masquerade", functools.partial(self.hooks.nat_masquerade, rule, True)
                )
                tx.delete("masquerade", key)
                tx.after.append(functools.partial(self.masquerades.pop, key, None))

    def _unmask(self, rule: MasqueradeRule) -> None:
        self.hooks.nat_masquerade(rule, False)

    def _set_global_nat(self, enable: bool) -> None:
        g = self._global()
        undo = _Undo()
        try:
            tx = _Tx()
            self._global_nat(tx, undo, g, enable)
            updated = g.model_copy(update={"nat_enabled": enable})
            tx.put("global", "global", updated)
            tx.after.append(lambda: setattr(self, "global_", updated))
            self._commit(tx)
        except BaseException as exc:
            undo.rollback(exc)
            raise

    async def teardown_global_overlay(self) -> None:
        """Remove the global WireGuard device and its peers; nothing else.

        ZLayer's agent sends this at every graceful shutdown: service segments,
        their devices and attachments stay (containers keep their network), and
        the next ``setup_global_overlay`` adopts the slice and re-creates the
        device with the same name and key. They go with their own teardown,
        detach or gc. Idempotent.
        """
        self._require_started()
        async with self._locks.hold(("global", True)):
            await nat_host.stop_nat(self)
            if self.global_ is not None:
                await self._run(self._teardown_global)

    def _teardown_global(self) -> None:
        g = self._global()
        keep = self._slice_in_use()
        errors: list[BaseException] = []
        tx = _Tx()
        try:
            self.hooks.device_delete(g.device)
        except OverlaydError as exc:
            raise TeardownError("teardown of the global device", [exc]) from exc
        for pub in list(self.peers.get(g.device.name, ())):
            tx.delete("peer", f"{g.device.name}|{pub}")
        tx.delete("global", "global")
        if keep:
            # Services and attachments keep using the slice (and its masquerade).
            tx.put("global", "retired", g)
        else:
            errors += self._release_slice(tx, g)

        def apply() -> None:
            self.global_ = None
            self.peers.pop(g.device.name, None)
            if keep:
                self._retired = g

        tx.after.append(apply)
        self._commit(tx)
        self._sync_dns_serve()
        log.info(
            "global overlay %s down%s",
            g.device.name,
            "; services and attachments keep its slice" if keep else "",
        )
        if errors:
            raise TeardownError("teardown of the global overlay", errors)

    def _release_slice(self, tx: _Tx, g: GlobalOverlay) -> list[BaseException]:
        """Give up the slice: its masquerade, node pool and manual node leases."""
        errors: list[BaseException] = []
        for key, rule in list(self.masquerades.items()):
            if rule.subnet == g.slice_cidr:
                try:
                    self.hooks.nat_masquerade(rule, False)
                    tx.delete("masquerade", key)
                    tx.after.append(functools.partial(self.masquerades.pop, key, None))
                except OverlaydError as exc:
                    errors.append(exc)
        if self._layout is not None:
            self.hooks.ipam_pool_delete(self._node_pool())
        for lease in list(self.manual_leases.values()):
            if lease.pool == NODE_POOL:
                tx.delete("lease", f"{lease.pool}|{lease.ip}")
                tx.after.append(
                    functools.partial(self.manual_leases.pop, f"{lease.pool}|{lease.ip}", None)
                )
        tx.delete("global", "retired")

        def apply() -> None:
            self._retired = None
            self._layout = None
            self._ports = None

        tx.after.append(apply)
        return errors

    def _forget_retired(self) -> None:
        retired = self._retired
        assert retired is not None
        tx = _Tx()
        errors = self._release_slice(tx, retired)
        self._commit(tx)
        if errors:
            raise TeardownError("releasing the slice of the torn-down overlay", errors)

    # -- service overlays ---------------------------------------------------

    async def setup_service_overlay(self, service: str, mode: OverlayMode | str) -> ServiceOverlay:
        """Create (or return) a service's bridge, subnet and, in dedicated mode, its device."""
        self._require_started()
        self._check_name("service name", service)
        try:
            resolved = OverlayMode(mode).resolve()
        except ValueError:
            raise InvalidRequest(
                f"invalid overlay mode {quote(mode)}: use auto, shared or dedicated"
            ) from None
        async with self._locks.hold(("global", False), (f"service:{service}", True)):
            self._global()
            existing = self.services.get(service)
            if existing is not None:
                if existing.mode != resolved:
                    raise Conflict(
                        f"service {quote(service)} is already set up in {existing.mode} mode; "
                        "tear it down before changing the mode"
                    )
                return existing
            return await self._run(self._setup_service, service, resolved)

    def _setup_service(self, service: str, mode: OverlayMode) -> ServiceOverlay:
        g = self._global()
        layout = self._layout
        assert layout is not None
        assert self._ports is not None
        flat = layout.flat(mode)
        undo = _Undo()
        try:
            with self._mem:
                in_use = [s.subnet for s in self.services.values()]
                subnet = layout.allocate(service, mode, in_use)
            if not flat:
                undo.push("release subnet", functools.partial(layout.release, subnet))
            first, _ = usable_range(subnet)
            # On the base network the node address is every container's gateway.
            gateway = (
                g.node_ip if flat else ipaddress.ip_address(int(subnet.network_address) + first)
            )
            overlay_ip = (
                ipaddress.ip_address(int(subnet.network_address) + first + 1)
                if mode is OverlayMode.DEDICATED
                else None
            )
            bridge = self.hooks.device_create(
                DeviceSpec(
                    kind=self.config.engine.segment_kind,
                    name=service_bridge_name(g.deployment, g.instance_id, service),
                    owner=f"service:{service}",
                    addresses=(ipaddress.ip_interface(f"{gateway}/{subnet.prefixlen}"),),
                    mtu=self.config.engine.mtu,
                    subnet=subnet,
                    options={
                        "mode": mode.value,
                        "deployment": g.deployment,
                        "instance_id": g.instance_id,
                        "cluster_cidr": str(g.cluster_cidr),
                        "slice_cidr": str(g.slice_cidr),
                        "node_ip": str(g.node_ip),
                    },
                )
            )
            undo.push("delete bridge", lambda: self.hooks.device_delete(bridge))
            dedicated: Device | None = None
            if mode is OverlayMode.DEDICATED:
                assert overlay_ip is not None
                imported = self._import_zlayer_identity(service)
                with self._mem:
                    if imported is not None:
                        port = imported
                        self._ports.reserve(port)
                    else:
                        port = self._ports.allocate()
                undo.push(
                    "release port",
                    lambda: self._ports.release(port) if self._ports else None,
                )
                host_bits = 32 if overlay_ip.version == 4 else 128
                dedicated = self.hooks.device_create(
                    DeviceSpec(
                        kind=DeviceKind.WIREGUARD,
                        name=dedicated_device_name(g.deployment, g.instance_id, service),
                        owner=f"service:{service}",
                        addresses=(ipaddress.ip_interface(f"{overlay_ip}/{host_bits}"),),
                        mtu=self.config.engine.mtu,
                        listen_port=port,
                        private_key=self._identity_key(f"wg-service-{service}"),
                        subnet=subnet,
                    )
                )
                ded = dedicated
                undo.push("delete dedicated device", lambda: self.hooks.device_delete(ded))
            svc = ServiceOverlay(
                service=service,
                mode=mode,
                subnet=subnet,
                gateway=gateway,
                bridge=bridge,
                dedicated=dedicated,
                overlay_ip=overlay_ip,
            )
            tx = _Tx()
            if not flat:
                pool = self._pool_for(svc)
                self.hooks.ipam_pool_create(pool, [])
                undo.push("delete pool", lambda: self.hooks.ipam_pool_delete(pool))
            if g.nat_enabled and not subnet.subnet_of(g.slice_cidr):  # type: ignore[arg-type]
                # The slice is masqueraded as a whole; a subnet outside it needs its own rule.
                rule = MasqueradeRule(subnet=subnet, exempt=(g.cluster_cidr,))
                if self.hooks.nat_masquerade(rule, True):
                    undo.push("remove masquerade", functools.partial(self._unmask, rule))
                    tx.put("masquerade", str(subnet), rule)
                    tx.after.append(
                        functools.partial(self.masquerades.__setitem__, str(subnet), rule)
                    )
            tx.put("service", service, svc)
            tx.after.append(lambda: self.services.__setitem__(service, svc))
            self._commit(tx)
        except BaseException as exc:
            undo.rollback(exc)
            raise
        self._sync_dns_serve()
        return svc

    def _import_zlayer_identity(self, service: str) -> int | None:
        """Adopt a dedicated identity ZLayer's daemon left in ``agent_network.json``.

        Returns the recorded listen port when the marker holds a complete
        identity (key and port) and overlayd has no key of its own for the
        service yet; the key is moved into the secret store. overlayd itself
        keeps identities in its state store and secret files, and only the hcn
        driver writes the marker (its networks, keeping these fields).
        """
        if self.config.data_dir is None:
            return None
        from overlayd import marker

        entry = marker.load(marker.marker_path(self.config.data_dir)).get(
            marker.owner_for_service(service)
        )
        if entry is None or not entry.wg_private_key or not entry.wg_port:
            return None
        name = f"wg-service-{service}"
        if self._secrets.get(name) is None:
            self._secrets.put(name, entry.wg_private_key)
            log.info("adopted ZLayer's dedicated identity of %s (port %d)", service, entry.wg_port)
        return int(entry.wg_port)

    async def teardown_service_overlay(self, service: str) -> None:
        """Detach the service's workloads and remove its devices and subnet. Idempotent."""
        self._require_started()
        self._check_name("service name", service)
        async with self._locks.hold(("global", False), (f"service:{service}", True)):
            if service in self.services:
                await self._run(self._teardown_service, service)

    def _teardown_service(self, service: str) -> None:
        svc = self.services[service]
        errors: list[BaseException] = []
        for key in [k for k, a in self.attachments.items() if a.service == service]:
            try:
                self._detach_locked(key)
            except OverlaydError as exc:
                errors.append(exc)
        if errors:
            raise TeardownError(f"teardown of service {service}", errors)
        tx = _Tx()
        rule = self.masquerades.get(str(svc.subnet))
        if rule is not None:
            try:
                self.hooks.nat_masquerade(rule, False)
                tx.delete("masquerade", str(svc.subnet))
                tx.after.append(lambda: self.masquerades.pop(str(svc.subnet), None))
            except OverlaydError as exc:
                errors.append(exc)
        for device in (svc.dedicated, svc.bridge):
            if device is None:
                continue
            try:
                self.hooks.device_delete(device)
            except OverlaydError as exc:
                errors.append(exc)
        if errors:
            # Keep the record: a retry of the teardown can finish the job.
            raise TeardownError(f"teardown of service {service}", errors)
        if not self._flat(svc):  # a service on the base network shares the node pool
            pool = self._pool_for(svc)
            self.hooks.ipam_pool_delete(pool)
            for key, lease in list(self.manual_leases.items()):
                if lease.pool == pool.name:
                    tx.delete("lease", key)
                    tx.after.append(functools.partial(self.manual_leases.pop, key, None))
        if svc.dedicated is not None:
            for pub in list(self.peers.get(svc.dedicated.name, {})):
                tx.delete("peer", f"{svc.dedicated.name}|{pub}")
        tx.delete("service", service)

        flat = self._flat(svc)

        def apply() -> None:
            self.services.pop(service, None)
            if self._layout is not None and not flat:
                self._layout.release(svc.subnet)
            if svc.dedicated is not None:
                self.peers.pop(svc.dedicated.name, None)
                if self._ports is not None and svc.dedicated.listen_port:
                    self._ports.release(svc.dedicated.listen_port)

        tx.after.append(apply)
        self._commit(tx)
        if svc.dedicated is not None:
            self._secrets.delete(f"wg-service-{service}")
        self._sync_dns_serve()

    # -- manual addresses ---------------------------------------------------

    async def allocate_ip(self, service: str, join_global: bool = False) -> IPAddress:
        """Lease an address for the orchestrator's own use (owner ``manual``)."""
        self._require_started()
        self._check_name("service name", service)
        async with self._locks.hold(("global", False), (f"service:{service}", False)):
            svc = self._service(service)
            pool = self._node_pool() if join_global else self._pool_for(svc)
            return await self._run(self._allocate_manual, pool)

    def _allocate_manual(self, pool: Pool) -> IPAddress:
        lease = self.hooks.ipam_allocate(pool, "manual")
        key = f"{lease.pool}|{lease.ip}"
        tx = _Tx()
        tx.put("lease", key, lease)
        tx.after.append(lambda: self.manual_leases.__setitem__(key, lease))
        try:
            self._commit(tx)
        except StateError:
            self.hooks.ipam_release(pool, lease.ip)
            raise
        return lease.ip

    def _pool_containing(self, ip: IPAddress) -> Pool | None:
        if self._layout is not None:
            node = self._node_pool()
            if ip in node.cidr:
                return node
        with self._mem:
            services = list(self.services.values())
        for svc in services:
            if ip in svc.subnet:
                return self._pool_for(svc)
        return None

    async def release_ip(self, ip: str | IPAddress) -> None:
        """Release a manual lease. Outside every pool is an error; a free address is fine."""
        self._require_started()
        addr = self._parse_ip("ip", ip)
        pool = self._pool_containing(addr)
        if pool is None:
            raise AllocationError(f"{addr} is not in any address pool of this node")
        service = pool.name.partition(":")[2]
        locks: list[tuple[str, bool]] = [("global", False)]
        if service:
            locks.append((f"service:{service}", False))
        async with self._locks.hold(*locks):
            key = f"{pool.name}|{addr}"
            if key not in self.manual_leases:
                holder = self._lease_owner(pool, addr)
                if holder and holder.startswith("handle:"):
                    raise Conflict(
                        f"{addr} belongs to the attachment of {holder[7:]}; detach it instead"
                    )
                return
            await self._run(self._release_manual, pool, addr, key)

    def _lease_owner(self, pool: Pool, addr: IPAddress) -> str | None:
        """Who holds ``addr`` according to the built-in allocator (None if free or unknown)."""
        builtin = self.pm.get_plugin("builtin_ipam")
        alloc = builtin.pool(pool.name) if builtin is not None else None
        if alloc is None:
            return None
        owner: str | None = alloc.owner_of(addr)
        return owner

    def _release_manual(self, pool: Pool, addr: IPAddress, key: str) -> None:
        tx = _Tx()
        tx.delete("lease", key)
        tx.after.append(lambda: self.manual_leases.pop(key, None))
        self._commit(tx)
        self.hooks.ipam_release(pool, addr)

    # -- attach / detach ----------------------------------------------------

    async def attach(
        self,
        handle: AnyHandle | dict[str, Any],
        service: str,
        *,
        join_global: bool = False,
        dns_server: str | IPAddress | None = None,
        dns_domain: str | None = None,
        default_route: bool = True,
    ) -> Attachment:
        """Attach a workload to ``service``. Idempotent per handle.

        ``default_route=False`` routes only the cluster CIDR via the service
        gateway (for a workload whose default route comes from another network).
        """
        self._require_started()
        if isinstance(handle, dict):
            try:
                handle = _HANDLE_ADAPTER.validate_python(handle)
            except ValueError as exc:
                raise InvalidRequest(f"invalid attach handle: {exc}") from None
        if isinstance(handle, NetnsHandle) and handle.path is None:
            raise InvalidRequest(
                "attaching a netns handle needs its path (the namespace to attach)"
            )
        self._check_name("service name", service)
        dns_ip = self._parse_ip("dns_server", dns_server) if dns_server else None
        if dns_domain is not None and not _DNS_NAME_RE.match(dns_domain):
            raise InvalidRequest(f"invalid dns_domain {quote(dns_domain)}")
        key = handle_key(handle)
        if key in self.detaching:
            # Its detach is recorded as under way: finish it, then attach anew.
            await self.detach(handle)
        async with self._locks.hold(
            ("global", False), (f"service:{service}", False), (f"handle:{key}", True)
        ):
            existing = self.attachments.get(key)
            if existing is not None:
                if existing.service != service:
                    raise Conflict(
                        f"{key} is already attached to service {quote(existing.service)}; "
                        "detach it first"
                    )
                return existing
            self._global()
            svc = self._service(service)
            return await self._run(
                self._attach, handle, svc, join_global, dns_ip, dns_domain, default_route
            )

    def _attach(
        self,
        handle: AnyHandle,
        svc: ServiceOverlay,
        join_global: bool,
        dns_server: IPAddress | None,
        dns_domain: str | None,
        default_route: bool = True,
    ) -> Attachment:
        g = self._global()
        key = handle_key(handle)
        owner = _owner(key)
        pool = self._pool_for(svc)
        undo = _Undo()
        try:
            if isinstance(handle, WindowsContainerHandle) and handle.ip is not None:
                # On the base network (Windows, shared) the pool is the whole node
                # slice, where ZLayer's HCS runtime picks its addresses; the
                # reservation makes sure no one else is ever given the address.
                if handle.ip not in pool.cidr:
                    where = (
                        f"the node slice {pool.cidr}"
                        if self._flat(svc)
                        else f"service {svc.service}'s subnet {svc.subnet}"
                    )
                    raise InvalidRequest(f"requested address {handle.ip} is outside {where}")
                lease = self.hooks.ipam_reserve(pool, handle.ip, owner)
            else:
                lease = self.hooks.ipam_allocate(pool, owner)
            undo.push("release address", lambda: self.hooks.ipam_release(pool, lease.ip))
            global_lease: Lease | None = None
            if join_global:
                node_pool = self._node_pool()
                gl = self.hooks.ipam_allocate(node_pool, owner)
                global_lease = gl
                undo.push(
                    "release global address",
                    lambda: self.hooks.ipam_release(node_pool, gl.ip),
                )
            request = AttachRequest(
                handle=handle,
                service=svc.service,
                segment=svc.bridge,
                address=ipaddress.ip_interface(f"{lease.ip}/{svc.subnet.prefixlen}"),
                gateway=svc.gateway,
                global_address=(
                    ipaddress.ip_interface(f"{global_lease.ip}/{g.cluster_cidr.prefixlen}")
                    if global_lease
                    else None
                ),
                node=self._node_info(svc),
                dns_server=dns_server,
                dns_domain=dns_domain,
                mtu=self.config.engine.mtu,
                default_route=default_route,
            )
            att = self.hooks.attach(request)
            undo.push("detach", lambda: self.hooks.detach(att))
            att = att.model_copy(update={"created_unix_secs": int(time.time())})
            tx = _Tx()
            if att.guest is not None:
                device = svc.dedicated or g.device
                guest = PeerChange(
                    public_key=att.guest.public_key,
                    allowed_ips=(ipaddress.ip_network(f"{lease.ip}/{lease.ip.max_prefixlen}"),),
                )
                table = self._peer_table(device.name)
                merged = table.preview([guest])
                restore = table.undo_changes(merged)
                self.hooks.peer_apply(device, [guest])
                undo.push("remove guest peer", lambda: self.hooks.peer_apply(device, restore))
                self._record_peers(tx, table, merged)
            records = [
                DnsRecord(name=svc.service, ip=lease.ip, source=owner),
                DnsRecord(
                    name=f"{_short_name(handle)}.{svc.service}",
                    ip=lease.ip,
                    source=owner,
                ),
            ]
            self.hooks.dns_records_changed(records, [])
            undo.push(
                "remove DNS records",
                lambda: self.hooks.dns_records_changed([], records),
            )
            if dns_server is not None:
                self.hooks.dns_endpoint_configure(att, [dns_server], dns_domain)
            for rec in records:
                tx.put("dns", f"{rec.name.lower()}|{rec.ip}", rec)
                tx.after.append(
                    functools.partial(self.dns.__setitem__, (rec.name.lower(), str(rec.ip)), rec)
                )
            tx.put("lease", f"{lease.pool}|{lease.ip}", lease)
            if global_lease is not None:
                tx.put("lease", f"{global_lease.pool}|{global_lease.ip}", global_lease)
            tx.put("attachment", key, att)
            tx.after.append(lambda: self.attachments.__setitem__(key, att))
            if att.namespace_guid:
                guid = att.namespace_guid.lower()
                tx.after.append(lambda: self._by_namespace.__setitem__(guid, key))
            self._commit(tx)
        except BaseException as exc:
            undo.rollback(exc)
            raise
        return att

    def _node_info(self, svc: ServiceOverlay | None = None) -> NodeInfo:
        g = self._global()
        device = svc.dedicated if svc is not None and svc.dedicated is not None else g.device
        return NodeInfo(
            interface=device.name,
            public_key=device.public_key,
            node_ip=(svc.overlay_ip if svc is not None and svc.dedicated else None) or g.node_ip,
            cluster_cidr=g.cluster_cidr,
            slice_cidr=g.slice_cidr,
            listen_port=device.listen_port or g.wg_port,
            mtu=self.config.engine.mtu,
        )

    async def detach(self, handle: AnyHandle | dict[str, Any]) -> bool:
        """Remove everything the attach of ``handle`` created. Unknown handles succeed.

        Returns ``True`` when an attachment was removed.
        """
        self._require_started()
        if isinstance(handle, dict):
            try:
                handle = _HANDLE_ADAPTER.validate_python(handle)
            except ValueError as exc:
                raise InvalidRequest(f"invalid detach handle: {exc}") from None
        key = self._attachment_key(handle)
        while True:
            att = self.attachments.get(key)
            if att is None:
                return False
            async with self._locks.hold(
                ("global", False),
                (f"service:{att.service}", False),
                (f"handle:{key}", True),
            ):
                # Read the attachment again under its locks: while this call
                # waited, the handle may have been detached and attached to
                # another service, whose lock is the one to hold.
                held = self.attachments.get(key)
                if held is None:
                    return False
                if held.service != att.service:
                    continue
                await self._run(self._detach_locked, key)
                return True

    def _attachment_key(self, handle: AnyHandle) -> str:
        """The key of the attachment ``handle`` names.

        ZLayer's HCS runtime detaches a Windows container by the namespace GUID
        the attach answered, passed as ``container_id``; such a handle finds the
        attachment whose namespace it is.
        """
        key = handle_key(handle)
        if key in self.attachments or not isinstance(handle, WindowsContainerHandle):
            return key
        guid = handle.container_id.strip().strip("{}").lower()
        with self._mem:
            return self._by_namespace.get(guid, key)

    def _detach_locked(self, key: str) -> None:
        att = self.attachments[key]
        if key not in self.detaching:
            # The intent is durable before the host changes: whatever happens
            # next (a crash, a driver error, a store that stops accepting
            # writes), the record says the detach is under way, and the next
            # detach, reconcile or start finishes it. If even this write fails,
            # nothing was touched.
            intent = _Tx()
            intent.put(DETACH_INTENT, key, {"since_unix_secs": int(time.time())})
            intent.after.append(functools.partial(self.detaching.add, key))
            try:
                self._commit(intent)
            except StateError as exc:
                raise StateError(f"detach of {key} changed nothing: {exc}") from exc
        self.hooks.detach(att)
        errors: list[BaseException] = []
        tx = _Tx()
        owner = _owner(key)
        # The records an attach creates are known: no scan of the whole zone.
        names = (att.service, f"{_short_name(att.handle)}.{att.service}")
        records = [
            rec
            for rec in (self.dns.get((n.lower(), str(att.ip))) for n in names)
            if rec is not None and rec.source == owner
        ]
        try:
            self.hooks.dns_records_changed([], records)
        except OverlaydError as exc:
            errors.append(exc)
        for rec in records:
            tx.delete("dns", f"{rec.name.lower()}|{rec.ip}")
            tx.after.append(functools.partial(self.dns.pop, (rec.name.lower(), str(rec.ip)), None))
        if att.guest is not None:
            svc = self.services.get(att.service)
            g = self.global_
            device = svc.dedicated if svc and svc.dedicated else (g.device if g else None)
            if device is not None:
                removal = [PeerChange(public_key=att.guest.public_key, remove=True)]
                table = self._peer_table(device.name)
                try:
                    self.hooks.peer_apply(device, removal)
                except OverlaydError as exc:
                    errors.append(exc)
                self._record_peers(tx, table, table.preview(removal))
        svc = self.services.get(att.service)
        releases: list[tuple[Pool, IPAddress]] = []
        if svc is not None:
            releases.append((self._pool_for(svc), att.ip))
        if att.global_ip is not None and self._layout is not None:
            releases.append((self._node_pool(), att.global_ip))
        for pool, ip in releases:
            tx.delete("lease", f"{pool.name}|{ip}")
        tx.delete("attachment", key)
        tx.delete(DETACH_INTENT, key)
        tx.after.append(lambda: self.attachments.pop(key, None))
        if att.namespace_guid:
            tx.after.append(
                functools.partial(self._by_namespace.pop, att.namespace_guid.lower(), None)
            )
        tx.after.append(functools.partial(self.detaching.discard, key))
        try:
            self._commit(tx)
        except StateError as exc:
            raise StateError(
                f"detach of {key}: the host side is removed, but the store could not "
                f"record it ({exc}); the attachment stays recorded as detaching and its "
                "addresses stay reserved until the next detach, reconcile or start finishes it"
            ) from exc
        if att.guest is not None:
            # The guest's private key was in the attachment record: do not leave
            # it in the database's free pages or its write-ahead log.
            self._scrub_store()
        for pool, ip in releases:
            try:
                self.hooks.ipam_release(pool, ip)
            except OverlaydError as exc:
                errors.append(exc)
        if errors:
            raise TeardownError(f"detach of {key}", errors)

    # -- peers --------------------------------------------------------------

    def _device_for(self, scope: PeerScope) -> Device:
        if scope.is_global:
            return self._global().device
        assert scope.service is not None
        svc = self._service(scope.service)
        if svc.dedicated is None:
            raise InvalidRequest(
                f"service {quote(scope.service)} runs in shared mode and has no dedicated "
                "device; address its peers with the global scope"
            )
        return svc.dedicated

    async def apply_peers(
        self, changes: Sequence[PeerChange], scope: PeerScope | None = None
    ) -> None:
        """Apply a batch of peer changes to one device in one transaction."""
        self._require_started()
        scope = scope or PeerScope()
        locks: list[tuple[str, bool]] = [("global", False)]
        if scope.service:
            locks.append((f"service:{scope.service}", False))
        async with self._locks.hold(*locks):
            device = self._device_for(scope)
            check_peer_changes(changes, own_keys=self._own_keys(), own_nets=self._own_nets())
            async with self._locks.hold((f"device:{device.name}", True)):
                await self._run(self._apply_peers, device, list(changes))

    def _peer_table(self, device: str) -> PeerTable:
        table = self.peers.get(device)
        if table is None:
            table = self.peers[device] = PeerTable(device)
        return table

    def _record_peers(self, tx: _Tx, table: PeerTable, merged: Merge[IPNetwork]) -> None:
        """Add the records a merge changes to ``tx``, and the table update after it."""
        for pub, cfg in table.configs(merged).items():
            if cfg is None:
                tx.delete("peer", f"{table.name}|{pub}")
            else:
                tx.put("peer", f"{table.name}|{pub}", cfg)
        tx.after.append(functools.partial(table.commit, merged))

    def _own_nets(self) -> list[IPNetwork]:
        """The addresses only this node serves: its slice, or, when the slice is
        the whole cluster (no ``slice_cidr`` given), its address, node pool and
        service subnets."""
        with self._mem:
            g = self.global_
            if g is None:
                return []
            if g.slice_cidr != g.cluster_cidr:
                return [g.slice_cidr]
            nets = [self._node_pool().cidr, ipaddress.ip_network(g.node_ip)]
            return nets + [svc.subnet for svc in self.services.values()]

    def _own_keys(self) -> dict[str, str]:
        """Public keys of this node's own WireGuard devices (and the one ZLayer set)."""
        out = {d.public_key: d.name for d in self._wg_devices() if d.public_key}
        if self.local_wg_pubkey:
            out.setdefault(self.local_wg_pubkey, "set with set_local_wg_pubkey")
        return out

    def _apply_peers(self, device: Device, changes: list[PeerChange]) -> None:
        # The same merge the drivers apply (overlayd.peers): what is recorded is
        # what the device holds, including prefixes that moved between peers.
        table = self._peer_table(device.name)
        merged = table.preview(changes)
        restore = table.undo_changes(merged)
        self.hooks.peer_apply(device, changes)
        tx = _Tx()
        self._record_peers(tx, table, merged)
        try:
            self._commit(tx)
        except StateError:
            # Put the device back as it was recorded.
            self.hooks.peer_apply(device, restore)
            raise

    async def add_peer(
        self,
        public_key: str,
        endpoint: str | None,
        allowed_ips: str | Sequence[str | IPNetwork],
        persistent_keepalive_secs: int = 0,
        scope: PeerScope | None = None,
    ) -> None:
        """Add a peer (or replace its settings), ZLayer's ``add_peer``."""
        change = _build_change(
            public_key=public_key,
            endpoint=endpoint,
            allowed_ips=allowed_ips,
            keepalive=persistent_keepalive_secs,
        )
        await self.apply_peers([change], scope)

    async def remove_peer(self, public_key: str, scope: PeerScope | None = None) -> None:
        await self.apply_peers([_build_change(public_key=public_key, remove=True)], scope)

    async def add_allowed_ip(
        self, public_key: str, cidr: str | IPNetwork, scope: PeerScope | None = None
    ) -> None:
        net = self._parse_net("cidr", cidr)
        self._require_peer(public_key, scope)
        await self.apply_peers(
            [_build_change(public_key=public_key, add_allowed_ips=(net,))], scope
        )

    async def remove_allowed_ip(
        self, public_key: str, cidr: str | IPNetwork, scope: PeerScope | None = None
    ) -> None:
        net = self._parse_net("cidr", cidr)
        self._require_peer(public_key, scope)
        await self.apply_peers(
            [_build_change(public_key=public_key, remove_allowed_ips=(net,))], scope
        )

    def _require_peer(self, public_key: str, scope: PeerScope | None) -> None:
        device = self._device_for(scope or PeerScope())
        if public_key not in self.peers.get(device.name, ()):
            raise NotFound(
                f"peer {public_key} is not on device {device.name}; add it with add_peer first"
            )

    # -- DNS ----------------------------------------------------------------

    def _dns_name(self, name: object) -> str:
        """A record name relative to the overlay zone (absolute names must be inside it)."""
        if not isinstance(name, str) or not _DNS_NAME_RE.match(name):
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
        addr = self._parse_ip("ip", ip)
        rec = DnsRecord(name=clean, ip=addr)
        async with self._locks.hold((f"dns:{clean.lower()}", True)):
            if (clean.lower(), str(addr)) in self.dns:
                return
            await self._run(self._dns_change, [rec], [])

    async def unregister_dns(self, name: object) -> None:
        """Remove every address registered for ``name`` with ``register_dns``."""
        self._require_started()
        lname = self._dns_name(name).lower()
        async with self._locks.hold((f"dns:{lname}", True)):
            # Attaches and detaches change self.dns from worker threads (under
            # _mem): iterate a consistent view, not a dictionary that may change.
            with self._mem:
                removed = [
                    r for (n, _), r in self.dns.items() if n == lname and r.source == "manual"
                ]
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
            await self._run(self.hooks.dns_records_changed, list(added), list(removed))

    def _dns_change(self, added: list[DnsRecord], removed: list[DnsRecord]) -> None:
        self.hooks.dns_records_changed(added, removed)
        tx = _Tx()
        for rec in removed:
            tx.delete("dns", f"{rec.name.lower()}|{rec.ip}")
            tx.after.append(functools.partial(self.dns.pop, (rec.name.lower(), str(rec.ip)), None))
        for rec in added:
            tx.put("dns", f"{rec.name.lower()}|{rec.ip}", rec)
            tx.after.append(
                functools.partial(self.dns.__setitem__, (rec.name.lower(), str(rec.ip)), rec)
            )
        try:
            self._commit(tx)
        except StateError:
            self.hooks.dns_records_changed(removed, added)
            raise

    # -- NAT port mappings (extension) --------------------------------------

    async def add_port_mapping(self, mapping: PortMapping) -> None:
        self._require_started()
        check_port_target(mapping.container_ip, self.global_.cluster_cidr if self.global_ else None)
        key = f"{mapping.protocol}/{mapping.host_ip or '*'}/{mapping.host_port}"
        async with self._locks.hold((f"portmap:{key}", True)):
            existing = self.port_mappings.get(key)
            if existing == mapping:
                return
            if existing is not None:
                raise Conflict(
                    f"host port {mapping.protocol}/{mapping.host_port} is already mapped to "
                    f"{existing.container_ip}:{existing.container_port}"
                )
            await self._run(self._port_mapping, key, mapping, True)

    async def remove_port_mapping(self, mapping: PortMapping) -> None:
        self._require_started()
        key = f"{mapping.protocol}/{mapping.host_ip or '*'}/{mapping.host_port}"
        async with self._locks.hold((f"portmap:{key}", True)):
            if key in self.port_mappings:
                await self._run(self._port_mapping, key, self.port_mappings[key], False)

    def _port_mapping(self, key: str, mapping: PortMapping, enable: bool) -> None:
        self.hooks.nat_port_mapping(mapping, enable)
        tx = _Tx()
        if enable:
            tx.put("portmap", key, mapping)
            tx.after.append(lambda: self.port_mappings.__setitem__(key, mapping))
        else:
            tx.delete("portmap", key)
            tx.after.append(lambda: self.port_mappings.pop(key, None))
        try:
            self._commit(tx)
        except StateError:
            self.hooks.nat_port_mapping(mapping, not enable)
            raise

    # -- status, health, NAT tick -------------------------------------------

    def _wg_devices(self) -> list[Device]:
        with self._mem:
            out = [self.global_.device] if self.global_ else []
            out += [s.dedicated for s in self.services.values() if s.dedicated is not None]
        return out

    async def status(self) -> Status:
        """The node's overlay status. Takes no lock: never waits behind an operation.

        ``slice_cidr`` is reported only when ``setup_global_overlay`` gave one
        (ZLayer's agent caches what it reads here, and its leader registers it
        as the node's slice). After ``teardown_global_overlay`` the addressing
        (node address, cluster and slice) is still reported, without a device.
        """
        self._require_started()
        with self._mem:
            up = self.global_
            g = up or self._retired
            services = list(self.services.values())
            peer_counts = {name: len(p) for name, p in self.peers.items()}
        if g is None:
            return Status(service_count=len(services))
        peers = await self._status_peers(up.device) if up is not None else []
        dedicated = tuple(
            DedicatedStatus(
                service=s.service,
                interface=s.dedicated.name,
                public_key=s.dedicated.public_key or "",
                listen_port=s.dedicated.listen_port or 0,
                overlay_ip=s.overlay_ip or s.gateway,
                subnet=s.subnet,
                peer_count=peer_counts.get(s.dedicated.name, 0),
            )
            for s in services
            if s.dedicated is not None
        )
        return Status(
            interface=up.device.name if up is not None else None,
            node_ip=g.node_ip,
            public_key=up.device.public_key if up is not None else None,
            overlay_cidr=g.cluster_cidr,
            slice_cidr=g.reported_slice,
            peer_count=len(peers) if peers else peer_counts.get(up.device.name, 0) if up else 0,
            service_count=len(services),
            peers=tuple(peers),
            dedicated_services=dedicated,
            nat=nat_host.nat_status(self),
        )

    async def _status_peers(self, device: Device) -> list[PeerStatus]:
        """The device's peers for ``status``, read at most every ``STATUS_PEERS_MAX_AGE`` s.

        Reading them costs a hop to a worker thread and a device query, which
        was most of a ``status`` round trip. The cached answer is used only
        while it is younger than the bound and the recorded peer set of the
        device is the one it was read under (compared by value), so ``status``
        right after any peer change reads the device again.
        """
        with self._mem:
            configs = tuple(self.peers.get(device.name, {}).values())
        cached = self._status_cache
        now = time.monotonic()
        if (
            cached is not None
            and now - cached.read_at < self.STATUS_PEERS_MAX_AGE
            and cached.device == device
            and cached.configs == configs
        ):
            return cached.peers
        try:
            peers = await self._run(self.hooks.peer_status, device)
        except OverlaydError as exc:
            log.warning("could not read peers of %s: %s", device.name, exc)
            return []
        self._status_cache = _PeerStatusCache(now, device, configs, peers)
        return peers

    async def check_health(self) -> list[Event]:
        """Read every WireGuard device's peers and emit health transitions.

        A peer is unhealthy when its last handshake is older than
        ``engine.peer_stale_secs`` while traffic is expected (it has a persistent
        keepalive, or it sent bytes since the last check, or it had a handshake
        before). Peers start out presumed healthy, so the first event for a peer
        is its first failure.
        """
        self._require_started()
        stale = self.config.engine.peer_stale_secs
        events: list[Event] = []
        now = time.time()
        for device in self._wg_devices():
            try:
                peers = await self._run(self.hooks.peer_status, device)
            except OverlaydError as exc:
                log.warning("health check could not read %s: %s", device.name, exc)
                continue
            for peer in peers:
                key = (device.name, peer.public_key)
                prev_tx, prev_rx = self._tx_seen.get(key, (0, 0))
                sent = peer.tx_bytes > prev_tx
                received = peer.rx_bytes > prev_rx
                self._tx_seen[key] = (peer.tx_bytes, peer.rx_bytes)
                expected = (
                    peer.persistent_keepalive_secs > 0 or sent or peer.last_handshake_unix_secs > 0
                )
                age = now - peer.last_handshake_unix_secs
                # WireGuard re-handshakes only every ~2 minutes; bytes received
                # since the last check prove the peer alive in between.
                healthy = received or not (expected and age > stale)
                if self._health.get(key, True) != healthy:
                    events.append(
                        Event(
                            event="peer_health_changed",
                            pubkey=peer.public_key,
                            healthy=healthy,
                        )
                    )
                self._health[key] = healthy
        for event in events:
            self.emit(event)
        return events

    async def nat_peer_candidates(self, public_key: str, candidates: Sequence[Any]) -> None:
        """Pass a peer's NAT candidates (from its ``status``) to this node."""
        self._require_started()
        await nat_host.set_peer_candidates(self, public_key, candidates)

    async def nat_tick(self) -> list[Event]:
        """Refresh NAT traversal: gather candidates, notice peers whose endpoint moved.

        With the NAT agent running (:mod:`overlayd.nat`) this is a full refresh:
        candidates gathered and published, every managed peer's path
        re-checked (the agent emits their events); other peers are watched
        for endpoint changes as before.
        """
        self._require_started()
        events: list[Event] = []
        g = self.global_
        if g is None:
            return events
        managed: set[tuple[str, str]] = set()
        if self.nat is not None:
            await self.nat.tick()
            managed = {(self.nat.device.name, key) for key in self.nat.peers}
        for device in self._wg_devices():
            if g.nat_enabled and self.nat is None:
                try:
                    await self._run(self.hooks.nat_candidates, device)
                except OverlaydError as exc:
                    log.warning("NAT candidates for %s failed: %s", device.name, exc)
            try:
                peers = await self._run(self.hooks.peer_status, device)
            except OverlaydError as exc:
                log.warning("NAT tick could not read %s: %s", device.name, exc)
                continue
            for peer in peers:
                key = (device.name, peer.public_key)
                if key in managed:
                    continue  # the NAT agent reports its peers' paths itself
                before = self._endpoints.get(key)
                if key in self._endpoints and peer.endpoint and before != peer.endpoint:
                    events.append(
                        Event(
                            event="nat_endpoint_changed",
                            pubkey=peer.public_key,
                            endpoint=peer.endpoint,
                        )
                    )
                self._endpoints[key] = peer.endpoint
        for event in events:
            self.emit(event)
        return events

    # -- listings, GC, reconcile --------------------------------------------

    def list_attachments(self, service: str | None = None) -> list[Attachment]:
        with self._mem:
            return [a for a in self.attachments.values() if service is None or a.service == service]

    def list_leases(self, pool: str | None = None) -> list[Lease]:
        """Every lease (manual and attachment) recorded, optionally of one pool."""
        with self._mem:
            leases = list(self.manual_leases.values())
            atts = list(self.attachments.values())
            services = dict(self.services)
        for att in atts:
            svc = services.get(att.service)
            if svc is not None:
                leases.append(
                    Lease(
                        ip=att.ip,
                        pool=self._pool_for(svc).name,
                        owner=_owner(att.key),
                        created_unix_secs=att.created_unix_secs,
                    )
                )
            if att.global_ip is not None:
                leases.append(
                    Lease(
                        ip=att.global_ip,
                        pool=NODE_POOL,
                        owner=_owner(att.key),
                        created_unix_secs=att.created_unix_secs,
                    )
                )
        return [lease for lease in leases if pool is None or lease.pool == pool]

    def describe_drivers(self) -> list[DriverInfo]:
        return self.hooks.describe()

    async def gc(
        self,
        live: Iterable[AnyHandle | dict[str, Any]],
        *,
        dry_run: bool = False,
        network: str | None = None,
    ) -> GcReport:
        """Detach every attachment whose handle is not in ``live``.

        Race-safe without stopping the world: only attachments that existed when
        the call started are candidates, and each is re-checked under its
        handle lock, so an attach in flight is never collected. With
        ``network``, only the ``netns`` attachments of that CNI network are
        candidates, and ``kept`` counts that network's attachments.
        """
        self._require_started()
        live_keys = set()
        for h in live:
            handle = _HANDLE_ADAPTER.validate_python(h) if isinstance(h, dict) else h
            live_keys.add(handle_key(handle))
        started = int(time.time())
        scope = [a for a in self.list_attachments() if _in_network(a, network)]
        candidates = [a for a in scope if a.key not in live_keys and a.created_unix_secs <= started]
        released: list[AnyHandle] = []
        for att in candidates:
            if dry_run or await self.detach(att.handle):
                released.append(att.handle)
        total = (
            len(self.attachments)
            if network is None
            else sum(1 for a in self.list_attachments() if _in_network(a, network))
        )
        kept = total - (len(released) if dry_run else 0)
        return GcReport(released=tuple(released), kept=kept)

    async def reconcile(self, startup: bool = False) -> ReconcileSummary:
        """Finish recorded detaches, re-ensure recorded devices and peers, then let
        drivers compare with the host. At start, a summary is logged."""
        self._require_started()
        # Detaches recorded as under way (a crash or a failed write cut them
        # short) are finished first, so that no driver repairs them.
        with self._mem:
            pending = sorted(self.detaching)
        finished, errors = await self._detach_keys(pending, "finishing the detach of")
        async with self._locks.hold(("global", True)):
            recreated, ensure_errors = await self._run(self._ensure_recorded)
            errors.extend(ensure_errors)
            with self._mem:
                # A detach under way is finished, not repaired: its interfaces
                # are left for the drivers to sweep as unrecorded.
                request = ReconcileRequest(
                    devices=tuple(self._recorded_devices()),
                    attachments=tuple(
                        a for k, a in self.attachments.items() if k not in self.detaching
                    ),
                    masquerades=tuple(self.masquerades.values()),
                    port_mappings=tuple(self.port_mappings.values()),
                    startup=startup,
                )
            reports = await self._run(self.hooks.reconcile, request)
        released = finished
        for report in reports:
            errors.extend(report.errors)
            count, failed = await self._detach_keys(report.gone, "releasing")
            released += count
            errors.extend(failed)
        summary = ReconcileSummary(
            adopted=sum(len(r.adopted) for r in reports),
            recreated=recreated + sum(len(r.recreated) for r in reports),
            removed=sum(len(r.removed) for r in reports),
            released=released,
            errors=tuple(errors),
            reports=tuple(reports),
        )
        if startup or summary.errors or summary.recreated or summary.removed or released:
            _log_reconcile(summary, "startup" if startup else "reconcile")
        return summary

    async def _detach_keys(self, keys: Iterable[str], what: str) -> tuple[int, list[str]]:
        """Detach the attachments of ``keys``; how many went, and what failed."""
        done = 0
        errors: list[str] = []
        for key in keys:
            att = self.attachments.get(key)
            if att is None:
                continue
            try:
                if await self.detach(att.handle):
                    done += 1
            except OverlaydError as exc:
                errors.append(f"{what} {key}: {exc}")
        return done, errors

    def _recorded_devices(self) -> list[Device]:
        out = [self.global_.device] if self.global_ else []
        for svc in self.services.values():
            out.append(svc.bridge)
            if svc.dedicated is not None:
                out.append(svc.dedicated)
        return out

    def _ensure_recorded(self) -> tuple[int, list[str]]:
        """Create-or-adopt every recorded device (idempotent) and re-apply its peers."""
        errors: list[str] = []
        recreated = 0
        specs: list[tuple[Device, DeviceSpec]] = []
        g = self.global_
        if g is not None:
            specs.append((g.device, self._spec_of(g.device, GLOBAL_KEY)))
        for svc in self.services.values():
            specs.append((svc.bridge, self._spec_of(svc.bridge, None)))
            if svc.dedicated is not None:
                specs.append(
                    (
                        svc.dedicated,
                        self._spec_of(svc.dedicated, f"wg-service-{svc.service}"),
                    )
                )
        present = {
            (d.kind, d.name)
            for kind in {s.kind for _, s in specs}
            for d in self.hooks.device_list(kind)
        }
        for recorded, spec in specs:
            try:
                # Always create-or-adopt: drivers learn the recorded key and port
                # this way even when the device survived the restart.
                if (spec.kind, spec.name) not in present:
                    recreated += 1
                self.hooks.device_create(spec)
                if recorded.kind == DeviceKind.WIREGUARD:
                    self._reconcile_peers(recorded)
            except OverlaydError as exc:
                log.warning("could not re-ensure recorded device %s: %s", spec.name, exc)
                errors.append(f"{spec.name}: {exc}")
        for rule in self.masquerades.values():
            try:
                self.hooks.nat_masquerade(rule, True)
            except OverlaydError as exc:
                errors.append(f"masquerade {rule.subnet}: {exc}")
        for mapping in self.port_mappings.values():
            try:
                self.hooks.nat_port_mapping(mapping, True)
            except OverlaydError as exc:
                errors.append(f"port mapping {mapping.host_port}: {exc}")
        self._sync_dns_serve()
        return recreated, errors

    def _reconcile_peers(self, device: Device) -> None:
        """Make the device's peers exactly the recorded ones (diffed by the driver)."""
        peers = self._peer_table(device.name)
        present = {p.public_key for p in self.hooks.peer_status(device)}
        changes = [PeerChange(public_key=k, remove=True) for k in sorted(present - peers.keys())]
        changes += [change_from(p) for p in peers.values()]
        if changes:
            self.hooks.peer_apply(device, changes)

    def _spec_of(self, device: Device, key_name: str | None) -> DeviceSpec:
        return DeviceSpec(
            kind=device.kind,
            name=device.name,
            owner=device.owner,
            addresses=device.addresses,
            mtu=device.mtu,
            listen_port=device.listen_port,
            private_key=self._identity_key(key_name) if key_name else None,
            subnet=device.subnet,
            options=device.options,
        )

    # -- convenience for embedders ------------------------------------------

    def node_public_key(self) -> str | None:
        return self.global_.device.public_key if self.global_ else None

    def handle_of(self, value: dict[str, Any]) -> AnyHandle:
        try:
            return _HANDLE_ADAPTER.validate_python(value)
        except ValueError as exc:
            raise InvalidRequest(f"invalid handle: {exc}") from None

    def supports(self, capability: str) -> bool:
        return any(capability in info.capabilities for info in self.describe_drivers())

    def require(self, capability: str) -> None:
        if not self.supports(capability):
            raise NotSupported(f"no loaded driver provides {capability}")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _log_reconcile(summary: ReconcileSummary, what: str) -> None:
    """One line saying what a reconcile pass did; a warning when something failed."""
    level = logging.WARNING if summary.errors else logging.INFO
    log.log(
        level,
        "%s reconcile: %d adopted, %d recreated, %d removed, %d released, %d error(s)%s",
        what,
        summary.adopted,
        summary.recreated,
        summary.removed,
        summary.released,
        len(summary.errors),
        "".join(f"\n  {e}" for e in summary.errors[:20]),
    )


def _short_name(handle: AnyHandle) -> str:
    """The per-container DNS label of a handle."""
    if isinstance(handle, LinuxPidHandle):
        return f"pid-{handle.pid}"
    if isinstance(handle, WindowsContainerHandle):
        return re.sub(r"[^a-z0-9-]", "-", handle.container_id.lower())[:12].strip("-") or "c"
    if isinstance(handle, GuestManagedHandle):
        return re.sub(r"[^a-z0-9-]", "-", handle.id.lower())[:32].strip("-") or "guest"
    assert isinstance(handle, NetnsHandle)
    if handle.container_id is not None:
        base = handle.container_id[:12]
        if handle.container_ifname != "eth0":
            base += f"-{handle.container_ifname}"
    else:
        base = (handle.path or "").rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9-]", "-", base.lower())[:32].strip("-") or "netns"


def _in_network(att: Attachment, network: str | None) -> bool:
    """Whether ``att`` is a candidate of a GC limited to CNI network ``network``."""
    if network is None:
        return True
    handle = att.handle
    return (
        isinstance(handle, NetnsHandle)
        and handle.container_id is not None
        and (handle.network or "") == network
    )


def _build_change(**kwargs: Any) -> PeerChange:
    """A PeerChange from loosely typed input, turning validation errors into InvalidRequest."""
    from overlayd.model import parse_cidr_list

    try:
        if "allowed_ips" in kwargs:
            kwargs["allowed_ips"] = tuple(parse_cidr_list(_as_cidr_strings(kwargs["allowed_ips"])))
        if "keepalive" in kwargs:
            keepalive = kwargs.pop("keepalive")
            if not 0 <= int(keepalive) <= 65535:
                raise ValueError("persistent_keepalive_secs must be 0-65535")
            kwargs["persistent_keepalive_secs"] = int(keepalive)
        endpoint = kwargs.get("endpoint")
        if endpoint:
            _check_endpoint(endpoint)
        return PeerChange(**kwargs)
    except ValueError as exc:
        raise InvalidRequest(f"invalid peer: {_first_error(exc)}") from None


def _as_cidr_strings(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    return [str(v) for v in value]


def _check_endpoint(endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {quote(endpoint)} must be host:port (port 1-65535)")
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        items = errors()
        if items:
            loc = ".".join(str(p) for p in items[0].get("loc", ()))
            msg = str(items[0].get("msg", exc))
            return f"{loc}: {msg}" if loc else msg
    return str(exc)
