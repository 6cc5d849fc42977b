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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import TypeVar
from typing import cast

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
from overlayd.ipam import SubnetCarver
from overlayd.ipam import usable_range
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
from overlayd.plugins import DriverContext
from overlayd.plugins import Hooks
from overlayd.plugins import load_drivers
from overlayd.plugins import make_plugin_manager
from overlayd.plugins import register_drivers

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


class _Undo:
    """Inverses of completed steps; run in reverse when a later step fails."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, fn: Callable[[], object]) -> None:
        self._steps.append((what, fn))

    def run(self) -> list[BaseException]:
        errors: list[BaseException] = []
        for what, fn in reversed(self._steps):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - rollback must try every step
                log.error("rollback step %r failed: %s", what, exc)
                errors.append(exc)
        self._steps.clear()
        return errors


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
        self._executor: ThreadPoolExecutor | None = None
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
        #: Keys of attachments whose detach is recorded as under way (DETACH_INTENT).
        self.detaching: set[str] = set()
        self.manual_leases: dict[str, Lease] = {}
        self.peers: dict[str, dict[str, PeerConfig]] = {}
        self.dns: dict[tuple[str, str], DnsRecord] = {}
        self.masquerades: dict[str, MasqueradeRule] = {}
        self.port_mappings: dict[str, PortMapping] = {}
        self._carver: SubnetCarver | None = None
        self._ports: PortBand | None = None
        self._health: dict[tuple[str, str], bool] = {}
        self._tx_seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._endpoints: dict[tuple[str, str], str | None] = {}
        #: Peers of the global device as ``status`` last read them (see _status_peers).
        self._status_cache: _PeerStatusCache | None = None

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
        self._executor = ThreadPoolExecutor(
            max_workers=self.config.engine.workers, thread_name_prefix="overlayd-hook"
        )
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
        interval = self.config.engine.health_interval_secs
        if interval > 0:
            self._tasks.append(asyncio.create_task(self._periodic(interval, self.check_health)))
        interval = self.config.engine.reconcile_interval_secs
        if interval > 0:
            self._tasks.append(asyncio.create_task(self._periodic(interval, self.reconcile)))

    async def stop(self) -> None:
        """Stop periodic work and the drivers; the data plane stays up."""
        if not self._started:
            return
        self._started = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        try:
            await self._run(self.hooks.shutdown)
        except OverlaydError as exc:
            log.error("driver shutdown failed: %s", exc)
        if self._store is not None:
            self._store.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

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
        """Run blocking work (hooks) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args))

    def _require_started(self) -> None:
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

    def _commit_or_undo(self, tx: _Tx, undo: _Undo) -> None:
        try:
            self._commit(tx)
        except StateError:
            undo.run()
            raise

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
        self.services = {
            k: ServiceOverlay.model_validate(v) for k, v in data.get("service", {}).items()
        }
        records = data.get("attachment", {})
        self.attachments = dict(
            zip(records, _ATTACHMENTS_ADAPTER.validate_python(list(records.values())), strict=True)
        )
        self.detaching = set(data.get(DETACH_INTENT, {})) & self.attachments.keys()
        leases = leases_from_records(data.get("lease", {}).values())
        self.manual_leases = {
            f"{lease.pool}|{lease.ip}": lease for lease in leases if lease.owner == "manual"
        }
        self.peers = {}
        for key, value in data.get("peer", {}).items():
            device, _, _ = key.partition("|")
            peer = PeerConfig.model_validate(value)
            self.peers.setdefault(device, {})[peer.public_key] = peer
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
        if self.global_ is not None:
            self._init_carving(self.global_)
            self.hooks.ipam_pool_create(self._node_pool(), by_pool.get(NODE_POOL, []))
        for svc in self.services.values():
            assert self._carver is not None
            self._carver.mark_used(svc.subnet)
            if svc.dedicated is not None and svc.dedicated.listen_port and self._ports:
                self._ports.reserve(svc.dedicated.listen_port)
            pool = self._pool_for(svc)
            self.hooks.ipam_pool_create(pool, by_pool.get(pool.name, []))
        if self.dns:
            self.hooks.dns_records_changed(list(self.dns.values()), [])

    # -- addressing helpers -------------------------------------------------

    def _block_prefix(self, slice_cidr: IPNetwork) -> int:
        ipam = self.config.ipam
        want = ipam.service_prefix_v4 if slice_cidr.version == 4 else ipam.service_prefix_v6
        # The slice must hold the node pool block plus at least three service blocks.
        return max(want, slice_cidr.prefixlen + 2)

    def _init_carving(self, g: GlobalOverlay) -> None:
        prefix = self._block_prefix(g.slice_cidr)
        node_block = cast(IPNetwork, next(iter(g.slice_cidr.subnets(new_prefix=prefix))))
        self._carver = SubnetCarver(g.slice_cidr, prefix, exclude=[node_block])
        self._ports = PortBand(g.wg_port)

    def _node_pool(self) -> Pool:
        assert self.global_ is not None
        g = self.global_
        block = next(g.slice_cidr.subnets(new_prefix=self._block_prefix(g.slice_cidr)))
        return Pool(name=NODE_POOL, cidr=block, reserved=(g.node_ip,))

    def _pool_for(self, svc: ServiceOverlay) -> Pool:
        reserved: tuple[IPAddress, ...] = (svc.gateway,)
        if svc.overlay_ip is not None:
            reserved += (svc.overlay_ip,)
        return Pool(name=_service_pool(svc.service), cidr=svc.subnet, reserved=reserved)

    def _zone(self) -> str:
        zone = self.config.dns.zone
        if not zone:
            deployment = self.global_.deployment if self.global_ else "overlay"
            zone = f"{deployment}.local."
        return zone if zone.endswith(".") else zone + "."

    def _dns_addresses(self) -> list[str]:
        dns = self.config.dns
        out = list(dns.listen)
        if dns.listen_on_gateways:
            for svc in sorted(self.services.values(), key=lambda s: s.service):
                host = f"[{svc.gateway}]" if svc.gateway.version == 6 else str(svc.gateway)
                out.append(f"{host}:{dns.gateway_port}")
        return out

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
        """Create (or return) the node's WireGuard device; returns its interface name."""
        self._require_started()
        self._check_name("deployment", deployment)
        if instance_id:
            self._check_name("instance_id", instance_id)
        cluster = self._parse_net("cluster_cidr", cluster_cidr)
        slice_net = self._parse_net("slice_cidr", slice_cidr) if slice_cidr else cluster
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
            existing = self.global_
            if existing is not None:
                same = (
                    existing.cluster_cidr == cluster
                    and existing.slice_cidr == slice_net
                    and existing.deployment == deployment
                    and existing.instance_id == instance_id
                )
                if not same:
                    raise Conflict(
                        f"the global overlay is already set up (deployment {existing.deployment}, "
                        f"cluster {existing.cluster_cidr}, slice {existing.slice_cidr}); "
                        "tear it down before setting it up differently"
                    )
                return existing.device.name
            return await self._run(
                self._setup_global,
                deployment,
                instance_id,
                cluster,
                slice_net,
                wg_port,
                nat_enabled,
            )

    def _identity_key(self, name: str) -> str:
        key = self._secrets.get(name)
        if key is None:
            key = keys.generate_private_key()
            self._secrets.put(name, key)
        # SecretStore returns a redacting str subclass; hand drivers the plain value.
        reveal = getattr(key, "reveal", None)
        return str(reveal()) if callable(reveal) else str(key)

    def _setup_global(
        self,
        deployment: str,
        instance_id: str,
        cluster: IPNetwork,
        slice_net: IPNetwork,
        wg_port: int,
        nat_enabled: bool,
    ) -> str:
        first, _ = usable_range(slice_net)
        node_ip = ipaddress.ip_address(int(slice_net.network_address) + first)
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
            )
            previous = self.global_
            self.global_ = g  # needed by _node_pool; restored on failure
            try:
                pool = self._node_pool()
            finally:
                self.global_ = previous
            self.hooks.ipam_pool_create(pool, [])
            undo.push("delete node pool", lambda: self.hooks.ipam_pool_delete(pool))
            tx = _Tx()
            rule = MasqueradeRule(subnet=slice_net, exempt=(cluster,))
            if nat_enabled and self.hooks.nat_masquerade(rule, True):
                undo.push("remove masquerade", lambda: self.hooks.nat_masquerade(rule, False))
                tx.put("masquerade", str(slice_net), rule)
                tx.after.append(lambda: self.masquerades.__setitem__(str(slice_net), rule))
            recorded = self.peers.get(name, {})
            if recorded:
                self.hooks.peer_apply(device, [_change_from(p) for p in recorded.values()])
            tx.put("global", "global", g)

            def apply() -> None:
                self.global_ = g
                self._init_carving(g)

            tx.after.append(apply)
            self._commit(tx)
        except BaseException:
            undo.run()
            raise
        self._sync_dns_serve()
        log.info("global overlay %s up: node %s, slice %s", name, node_ip, slice_net)
        return device.name

    async def teardown_global_overlay(self) -> None:
        """Tear down every service overlay, attachment and the global device."""
        self._require_started()
        async with self._locks.hold(("global", True)):
            errors: list[BaseException] = []
            for service in sorted(self.services):
                try:
                    await self._run(self._teardown_service, service)
                except OverlaydError as exc:
                    errors.append(exc)
            for key in sorted(self.attachments):
                try:
                    await self._run(self._detach_locked, key)
                except OverlaydError as exc:
                    errors.append(exc)
            if self.global_ is not None:
                try:
                    await self._run(self._teardown_global)
                except OverlaydError as exc:
                    errors.append(exc)
            if errors:
                raise TeardownError("teardown of the global overlay", errors)

    def _teardown_global(self) -> None:
        g = self._global()
        errors: list[BaseException] = []
        tx = _Tx()
        for key, rule in list(self.masquerades.items()):
            if rule.subnet == g.slice_cidr:
                try:
                    self.hooks.nat_masquerade(rule, False)
                    tx.delete("masquerade", key)
                    tx.after.append(functools.partial(self.masquerades.pop, key, None))
                except OverlaydError as exc:
                    errors.append(exc)
        try:
            self.hooks.device_delete(g.device)
        except OverlaydError as exc:
            errors.append(exc)
            raise TeardownError("teardown of the global device", errors) from exc
        self.hooks.ipam_pool_delete(self._node_pool())
        for lease in list(self.manual_leases.values()):
            if lease.pool == NODE_POOL:
                tx.delete("lease", f"{lease.pool}|{lease.ip}")
                tx.after.append(
                    functools.partial(self.manual_leases.pop, f"{lease.pool}|{lease.ip}", None)
                )
        for pub in list(self.peers.get(g.device.name, {})):
            tx.delete("peer", f"{g.device.name}|{pub}")
        tx.delete("global", "global")

        def apply() -> None:
            self.global_ = None
            self.peers.pop(g.device.name, None)
            self._carver = None
            self._ports = None

        tx.after.append(apply)
        self._commit(tx)
        self._sync_dns_serve()
        if errors:
            raise TeardownError("teardown of the global overlay", errors)

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
        assert self._carver is not None
        assert self._ports is not None
        undo = _Undo()
        try:
            with self._mem:
                subnet = self._carver.allocate()
            undo.push(
                "release subnet",
                lambda: self._carver.release(subnet) if self._carver else None,
            )
            first, _ = usable_range(subnet)
            gateway = ipaddress.ip_address(int(subnet.network_address) + first)
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
            pool = self._pool_for(svc)
            self.hooks.ipam_pool_create(pool, [])
            undo.push("delete pool", lambda: self.hooks.ipam_pool_delete(pool))
            tx = _Tx()
            # No masquerade rule per service: every service subnet lies inside the
            # node slice, which setup_global_overlay masquerades as a whole.
            tx.put("service", service, svc)
            tx.after.append(lambda: self.services.__setitem__(service, svc))
            self._commit(tx)
        except BaseException:
            undo.run()
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

        def apply() -> None:
            self.services.pop(service, None)
            if self._carver is not None:
                self._carver.release(svc.subnet)
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
        if self.global_ is not None:
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
    ) -> Attachment:
        """Attach a workload to ``service``. Idempotent per handle."""
        self._require_started()
        if isinstance(handle, dict):
            try:
                handle = _HANDLE_ADAPTER.validate_python(handle)
            except ValueError as exc:
                raise InvalidRequest(f"invalid attach handle: {exc}") from None
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
            return await self._run(self._attach, handle, svc, join_global, dns_ip, dns_domain)

    def _attach(
        self,
        handle: AnyHandle,
        svc: ServiceOverlay,
        join_global: bool,
        dns_server: IPAddress | None,
        dns_domain: str | None,
    ) -> Attachment:
        g = self._global()
        key = handle_key(handle)
        owner = _owner(key)
        pool = self._pool_for(svc)
        undo = _Undo()
        try:
            if isinstance(handle, WindowsContainerHandle) and handle.ip is not None:
                if handle.ip not in svc.subnet:
                    raise InvalidRequest(
                        f"requested address {handle.ip} is outside service "
                        f"{svc.service}'s subnet {svc.subnet}"
                    )
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
            )
            att = self.hooks.attach(request)
            undo.push("detach", lambda: self.hooks.detach(att))
            att = att.model_copy(update={"created_unix_secs": int(time.time())})
            tx = _Tx()
            if att.guest is not None:
                device = svc.dedicated or g.device
                peer = PeerConfig(
                    public_key=att.guest.public_key,
                    allowed_ips=(ipaddress.ip_network(f"{lease.ip}/{lease.ip.max_prefixlen}"),),
                )
                self.hooks.peer_apply(device, [_change_from(peer)])
                undo.push(
                    "remove guest peer",
                    lambda: self.hooks.peer_apply(
                        device, [PeerChange(public_key=peer.public_key, remove=True)]
                    ),
                )
                tx.put("peer", f"{device.name}|{peer.public_key}", peer)
                tx.after.append(
                    lambda: self.peers.setdefault(device.name, {}).__setitem__(
                        peer.public_key, peer
                    )
                )
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
            self._commit(tx)
        except BaseException:
            undo.run()
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
        key = handle_key(handle)
        att = self.attachments.get(key)
        if att is None:
            return False
        async with self._locks.hold(
            ("global", False),
            (f"service:{att.service}", False),
            (f"handle:{key}", True),
        ):
            if key not in self.attachments:
                return False
            await self._run(self._detach_locked, key)
            return True

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
                pub = att.guest.public_key
                try:
                    self.hooks.peer_apply(device, [PeerChange(public_key=pub, remove=True)])
                except OverlaydError as exc:
                    errors.append(exc)
                tx.delete("peer", f"{device.name}|{pub}")
                tx.after.append(lambda: self.peers.get(device.name, {}).pop(pub, None))
        svc = self.services.get(att.service)
        releases: list[tuple[Pool, IPAddress]] = []
        if svc is not None:
            releases.append((self._pool_for(svc), att.ip))
        if att.global_ip is not None and self.global_ is not None:
            releases.append((self._node_pool(), att.global_ip))
        for pool, ip in releases:
            tx.delete("lease", f"{pool.name}|{ip}")
        tx.delete("attachment", key)
        tx.delete(DETACH_INTENT, key)
        tx.after.append(lambda: self.attachments.pop(key, None))
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
        current = dict(self.peers.get(device.name, {}))
        for change in changes:
            peer = current.get(change.public_key)
            if change.remove:
                current.pop(change.public_key, None)
                continue
            if peer is None:
                edits_only = change.endpoint is None and change.allowed_ips is None
                if edits_only and (change.add_allowed_ips or change.remove_allowed_ips):
                    raise NotFound(
                        f"peer {change.public_key} is not on device {device.name}; "
                        "add it with add_peer first"
                    )
                peer = PeerConfig(public_key=change.public_key)
            ips = list(change.allowed_ips if change.allowed_ips is not None else peer.allowed_ips)
            for net in change.add_allowed_ips:
                if net not in ips:
                    ips.append(net)
            ips = [n for n in ips if n not in change.remove_allowed_ips]
            current[change.public_key] = PeerConfig(
                public_key=change.public_key,
                endpoint=change.endpoint if change.endpoint is not None else peer.endpoint,
                allowed_ips=tuple(ips),
                persistent_keepalive_secs=(
                    change.persistent_keepalive_secs
                    if change.persistent_keepalive_secs is not None
                    else peer.persistent_keepalive_secs
                ),
            )
        self.hooks.peer_apply(device, changes)
        before = self.peers.get(device.name, {})
        tx = _Tx()
        for pub in before:
            if pub not in current:
                tx.delete("peer", f"{device.name}|{pub}")
        for pub, peer in current.items():
            if before.get(pub) != peer:
                tx.put("peer", f"{device.name}|{pub}", peer)
        tx.after.append(lambda: self.peers.__setitem__(device.name, current))
        try:
            self._commit(tx)
        except StateError:
            # Put the device back as it was recorded.
            self.hooks.peer_apply(device, _restore_changes(before, current))
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
        if public_key not in self.peers.get(device.name, {}):
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
        """The node's overlay status. Takes no lock: never waits behind an operation."""
        self._require_started()
        with self._mem:
            g = self.global_
            services = list(self.services.values())
            peer_counts = {name: len(p) for name, p in self.peers.items()}
        if g is None:
            return Status(service_count=len(services))
        peers = await self._status_peers(g.device)
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
            interface=g.device.name,
            node_ip=g.node_ip,
            public_key=g.device.public_key,
            overlay_cidr=g.cluster_cidr,
            slice_cidr=g.slice_cidr,
            peer_count=len(peers) if peers else peer_counts.get(g.device.name, 0),
            service_count=len(services),
            peers=tuple(peers),
            dedicated_services=dedicated,
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

    async def nat_tick(self) -> list[Event]:
        """Refresh NAT traversal: gather candidates, notice peers whose endpoint moved."""
        self._require_started()
        events: list[Event] = []
        g = self.global_
        if g is None:
            return events
        for device in self._wg_devices():
            if g.nat_enabled:
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
                        pool=_service_pool(att.service),
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
        self, live: Iterable[AnyHandle | dict[str, Any]], *, dry_run: bool = False
    ) -> GcReport:
        """Detach every attachment whose handle is not in ``live``.

        Race-safe without stopping the world: only attachments that existed when
        the call started are candidates, and each is re-checked under its
        handle lock, so an attach in flight is never collected.
        """
        self._require_started()
        live_keys = set()
        for h in live:
            handle = _HANDLE_ADAPTER.validate_python(h) if isinstance(h, dict) else h
            live_keys.add(handle_key(handle))
        started = int(time.time())
        candidates = [
            a
            for a in self.list_attachments()
            if a.key not in live_keys and a.created_unix_secs <= started
        ]
        released: list[AnyHandle] = []
        for att in candidates:
            if dry_run or await self.detach(att.handle):
                released.append(att.handle)
        kept = len(self.attachments) - (len(released) if dry_run else 0)
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
        peers = self.peers.get(device.name, {})
        present = {p.public_key for p in self.hooks.peer_status(device)}
        changes = [_change_from(p) for p in peers.values()]
        changes += [PeerChange(public_key=k, remove=True) for k in sorted(present - peers.keys())]
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
    base = handle.path.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9-]", "-", base.lower())[:32].strip("-") or "netns"


def _change_from(peer: PeerConfig) -> PeerChange:
    return PeerChange(
        public_key=peer.public_key,
        endpoint=peer.endpoint,
        persistent_keepalive_secs=peer.persistent_keepalive_secs,
        allowed_ips=peer.allowed_ips,
    )


def _restore_changes(
    before: dict[str, PeerConfig], after: dict[str, PeerConfig]
) -> list[PeerChange]:
    out = [PeerChange(public_key=k, remove=True) for k in after if k not in before]
    out += [_change_from(p) for k, p in before.items() if after.get(k) != p]
    return out


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
