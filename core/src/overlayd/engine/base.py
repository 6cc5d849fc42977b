"""The engine's shared state and plumbing, which every concern module builds on.

:class:`EngineBase` holds what all the concerns share: the configuration, the
hook facade, the state store and secret store, the lock table, the worker
pool, the in-memory view (global overlay, services, attachments, peers, DNS
records, NAT rules) and the few helpers every concern calls (run blocking
work, commit a :class:`~overlayd.engine.work.Tx`, find a service, a pool or a
peer table). The concern modules (:mod:`overlayd.engine.global_overlay`,
:mod:`~overlayd.engine.services`, :mod:`~overlayd.engine.attach`, ...) are
mixins over this class; :class:`overlayd.engine.Engine` composes them.
``docs/design-notes.rst`` ("The engine package") says why mixins over one
typed base rather than collaborator objects.

The in-memory view is guarded by a plain ``threading.Lock`` (``_mem``) held
only for dictionary updates and snapshots, never across a hook call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import Final
from typing import Self
from typing import TypeVar
from typing import cast

import pluggy

from overlayd import keys
from overlayd.config import EngineConfig
from overlayd.errors import ConfigError
from overlayd.errors import InvalidRequest
from overlayd.errors import NotFound
from overlayd.errors import OverlaydError
from overlayd.errors import StateError
from overlayd.errors import quote
from overlayd.ipam import PortBand
from overlayd.locks import LockTable
from overlayd.model import Attachment
from overlayd.model import Capability
from overlayd.model import Device
from overlayd.model import DeviceKind
from overlayd.model import DeviceSpec
from overlayd.model import Event
from overlayd.model import GlobalOverlay
from overlayd.model import IPAddress
from overlayd.model import IPInterface
from overlayd.model import IPNetwork
from overlayd.model import Lease
from overlayd.model import MasqueradeRule
from overlayd.model import PeerStatus
from overlayd.model import Pool
from overlayd.model import PortMapping
from overlayd.model import ServiceOverlay
from overlayd.nat.candidates import CandidateExchange
from overlayd.nat.candidates import IpcExchange
from overlayd.peers import Merge
from overlayd.peers import PeerTable
from overlayd.plugins import DriverContext
from overlayd.plugins import Hooks
from overlayd.plugins import load_drivers
from overlayd.plugins import make_plugin_manager
from overlayd.plugins import register_drivers
from overlayd.secrets import MemorySecrets
from overlayd.secrets import Secrets
from overlayd.state import Store
from overlayd.stats import EngineStats

from .dnsview import AddressPool
from .dnsview import DnsEntry
from .dnsview import ManualNames
from .layout import NODE_POOL
from .layout import BuiltinSubnets
from .layout import SliceLayout
from .results import ReconcileSummary
from .validation import check_name
from .validation import parse_ip
from .validation import parse_net
from .work import Tx
from .work import WorkerPool

if TYPE_CHECKING:
    from overlayd.nat.agent import NatAgent
    from overlayd.nat.host import NatStatus

__all__ = [
    "DETACH_INTENT",
    "DNS_KIND",
    "GLOBAL_KEY",
    "LOAD_VALUES_ONLY",
    "NODE_POOL",
    "EngineBase",
    "gc_paused",
    "owner_of",
    "service_pool",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Secret name of the global device's private key.
GLOBAL_KEY: Final = "wg-global"
#: Store kind of a detach under way (keyed by handle key), written before the host changes.
DETACH_INTENT: Final = "detaching"
#: The kinds :meth:`EngineBase._load` reads as lists of values (their keys are not needed).
#: The store's kind of the DNS records.
DNS_KIND: Final = "dns"
LOAD_VALUES_ONLY: Final = (DNS_KIND,)


def service_pool(service: str) -> str:
    """The name of a service's own address pool."""
    return f"service:{service}"


def owner_of(handle_or_key: str) -> str:
    """The lease and DNS record owner of an attachment."""
    return f"handle:{handle_or_key}"


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``).

    Loading a large node's state allocates far more than it keeps (parsed
    JSON, pydantic-core's parse of the fake driver's state file, SQLite's
    result), much of it in the worker threads' own malloc arenas, which glibc
    does not shrink by itself: without this the daemon stays 15-30 MB larger
    than what it holds. Nothing where libc has no ``malloc_trim`` (musl,
    macOS, Windows).
    """
    if sys.platform == "linux":
        try:
            trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            return
        trim(0)


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


@dataclass(frozen=True)
class PeerStatusCache:
    """One read of a device's peers, and what it was read under."""

    #: ``time.monotonic()`` before the read started.
    read_at: float
    device: Device
    #: The device's recorded peer table and its version when the read started
    #: (``None``, 0: none recorded).
    recorded: tuple[PeerTable | None, int]
    peers: list[PeerStatus]


class EngineBase:
    """Shared state and plumbing of the engine (see the module docstring).

    :param config: Engine configuration; ``config.drivers`` names the drivers
        to load through entry points unless ``drivers`` is given.
    :param drivers: Driver instances to register instead of loading by name
        (tests and embedders), first called first.
    :param store: A state store; default: SQLite under ``config.data_dir``, or
        in memory when that is ``None``.
    :param plugins: Extra plugins to register (e.g. the built-in DNS server).
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        drivers: Sequence[object] | None = None,
        store: Store | None = None,
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
        self.pm.register(BuiltinSubnets(lambda: self._layout), name=BuiltinSubnets.name)
        self.hooks = Hooks(self.pm)
        self._check_ipam_driver()
        self._store: Store | None = store
        self._secrets: Secrets = MemorySecrets()
        self._locks = LockTable()
        self._mem = threading.Lock()
        self._work = WorkerPool(self.config.engine.workers)
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        #: Counters and latencies for metrics (overlayd.metrics reads them).
        self.stats = EngineStats()
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
        #: (lower-case name, address text) -> record (overlayd.engine.dnsview).
        self.dns: dict[tuple[str, str], DnsEntry] = {}
        #: One address object per distinct address of the records in ``dns``.
        self._dns_ips = AddressPool()
        #: lower-case name -> address texts of its ``manual`` records (unregister_dns).
        self._dns_manual = ManualNames()
        self.masquerades: dict[str, MasqueradeRule] = {}
        self.port_mappings: dict[str, PortMapping] = {}
        #: The global overlay after ``teardown_global_overlay`` while services or
        #: attachments still use its slice: a later set-up adopts it.
        self._retired: GlobalOverlay | None = None
        self._layout: SliceLayout | None = None
        self._ports: PortBand | None = None
        #: Service subnets handed out by the subnet hooks and not yet recorded.
        self._carving: set[IPNetwork] = set()
        # health and NAT tick: what the last pass saw of each (device, peer)
        self._health: dict[tuple[str, str], bool] = {}
        self._tx_seen: dict[tuple[str, str], tuple[int, int]] = {}
        self._endpoints: dict[tuple[str, str], str | None] = {}
        #: Peers of the global device as ``status`` last read them (see health.py).
        self._status_cache: PeerStatusCache | None = None
        #: NAT traversal of the global device (overlayd.nat), when it runs.
        self.nat: NatAgent | None = None
        #: How NAT candidates travel between nodes (IPC unless a cluster store plugs in).
        self.nat_exchange: CandidateExchange = IpcExchange()

    def _check_ipam_driver(self) -> None:
        """Refuse an ``ipam.driver`` that is not loaded or does no IPAM."""
        name = self.config.ipam.driver
        if name is None:
            return
        infos = {info.name: info for info in self.hooks.describe()}
        info = infos.get(name)
        if info is None or self.pm.get_plugin(name) is None:
            loaded = ", ".join(sorted(infos)) or "none"
            raise ConfigError(f"ipam.driver {name!r} is not a loaded driver (loaded: {loaded})")
        if Capability.IPAM not in info.capabilities:
            raise ConfigError(
                f"ipam.driver {name!r} does not declare the ipam capability; "
                "it cannot own the node's address pools"
            )

    # -- what the concerns provide each other (implemented by the mixins) ---

    def _load(self) -> None:
        """Rebuild the in-memory view from the store (:mod:`overlayd.engine.loading`)."""
        raise NotImplementedError

    async def reconcile(self, startup: bool = False) -> ReconcileSummary:
        """:mod:`overlayd.engine.reconcile`."""
        raise NotImplementedError

    async def check_health(self) -> list[Event]:
        """:mod:`overlayd.engine.health`."""
        raise NotImplementedError

    def _sync_dns_serve(self) -> None:
        """Tell the DNS hooks where to listen (:mod:`overlayd.engine.dns`)."""
        raise NotImplementedError

    def _detach_locked(self, key: str) -> None:
        """Detach the attachment ``key`` under its locks (:mod:`overlayd.engine.attach`)."""
        raise NotImplementedError

    async def detach(self, handle: Any) -> bool:
        """:mod:`overlayd.engine.attach`."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Self:
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
        if self.config.data_dir is not None:
            from overlayd.secrets import open_secrets

            self._secrets = open_secrets(self.config.data_dir)
        else:
            self._secrets = MemorySecrets()
        context = DriverContext(
            data_dir=self.config.data_dir, emit=self.emit, secrets=self._secrets, loop=self._loop
        )
        # The store opens and reads its records in a worker beside the
        # drivers' configuration, and checks itself in a thread beside the
        # load: SQLite does that work without the GIL (docs/design-notes.rst,
        # "Footprint of a large node"). A store that cannot be opened still
        # fails the start before the drivers start; one whose check fails,
        # before anything loaded from it is used.
        opening = None if self._store is not None else asyncio.ensure_future(self._run(self._open))
        checking: asyncio.Future[None] | None = None
        with gc_paused():
            # The drivers' and the engine's state (a million objects on a large
            # node) is built with the cyclic GC off, then frozen: left in the
            # young generation, the first collections after the load rescanned
            # all of it, about 0.5 s of the first answer (docs/design-notes.rst,
            # "Footprint of a large node"). Frozen objects are still freed by
            # their reference counts; stop() unfreezes them.
            try:
                await self._run(self.hooks.configure, self.config)
            finally:
                if opening is not None:
                    self._store = await opening
                    checking = self._check_store()
            await self._run(self.hooks.startup, context)
            try:
                await self._run(self._load)
            except BaseException:
                if checking is not None:
                    checking.cancel()  # the start fails anyway
                raise
            if checking is not None:
                await self._store_checked(checking)
            gc.freeze()
        trim_heap()
        self._started = True
        await self.reconcile(startup=True)
        await self._start_nat()
        interval = self.config.engine.health_interval_secs
        if interval > 0:
            self._tasks.append(asyncio.create_task(self._periodic(interval, self.check_health)))
        interval = self.config.engine.reconcile_interval_secs
        if interval > 0:
            self._tasks.append(asyncio.create_task(self._periodic(interval, self.reconcile)))

    def _dns_records_stored(self) -> None:
        """Tell the DNS plugins the fingerprint of the records left in the store.

        ``None`` (keep nothing) when what they hold may differ from the
        stored records: records of other nodes were served, or a change
        failed in one of them (``Hooks.dns_as_stored``).
        """
        as_stored = self.hooks.dns_as_stored
        self.hooks.dns_records_stored(self._dns_fingerprint() if as_stored else None)

    def _dns_fingerprint(self) -> str | None:
        """The store's fingerprint of the DNS records, for the DNS plugins.

        ``None`` when there are none, without a data directory (where the
        plugins would keep what they built), and from an embedder's store
        written before ``Store.fingerprint`` existed: the DNS plugins then
        build their tables at every start.
        """
        if self.config.data_dir is None:
            return None
        fingerprint = getattr(self._store, "fingerprint", None)
        return None if fingerprint is None else cast("str | None", fingerprint(DNS_KIND))

    def _open(self) -> Store:
        """The state store of ``config.data_dir``, opened and checked (``quick_check``)."""
        from overlayd.state import SqliteStore
        from overlayd.state import open_store

        store = open_store(self.config.data_dir, check=False)
        if isinstance(store, SqliteStore):
            store.read_ahead(values_only=LOAD_VALUES_ONLY)
        return store

    def _check_store(self) -> asyncio.Future[None] | None:
        """Start the check :meth:`_open` left out, on a worker of its own.

        It runs on a connection of its own while the load decodes what was
        read (the GIL's work): SQLite checks on the other core.
        """
        from overlayd.state import SqliteStore

        store = self._store
        if not isinstance(store, SqliteStore):
            return None
        return asyncio.ensure_future(self._run(store.check))

    async def _store_checked(self, checking: asyncio.Future[None]) -> None:
        """Fail the start, closing the store, if its check failed (what was read is not used)."""
        try:
            await checking
        except BaseException:
            if self._store is not None:
                self._store.close()
                self._store = None
            raise

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
        await self._stop_nat()
        self._started = False
        if self._store is not None:
            try:
                await self._run(self._dns_records_stored)
            except (OverlaydError, OSError) as exc:
                log.warning("keeping what the DNS plugins built from the records failed: %s", exc)
        try:
            await self._run(self.hooks.shutdown)
        except OverlaydError as exc:
            log.error("driver shutdown failed: %s", exc)
        if self._store is not None:
            self._store.close()
        self._work.shutdown(wait=not left)
        self._stopping = False
        gc.unfreeze()  # what start() froze is collected as usual again

    # NAT traversal (overlayd.nat.host) is imported only on a node that runs it:
    # its modules (aioice and STUN) were ~5 % of a large node's start-up.

    async def _start_nat(self) -> None:
        """Start the NAT agent when the global overlay and ``[nat]`` ask for it.

        The conditions of :func:`overlayd.nat.host.start_nat`, checked before
        importing it.
        """
        g = self.global_
        if self.nat is not None or g is None or not g.nat_enabled or not self.config.nat.enabled:
            return
        from overlayd.nat import host

        await host.start_nat(self)

    async def _stop_nat(self) -> None:
        if self.nat is not None:
            from overlayd.nat import host

            await host.stop_nat(self)

    def _nat_status(self) -> NatStatus | None:
        if self.nat is None:
            return None
        from overlayd.nat import host

        return host.nat_status(self)

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
        finished (see :class:`overlayd.engine.work.WorkerPool`).
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

    def _dns_entry(self, name: str, ip: IPAddress, source: str = "manual") -> DnsEntry:
        """A record for ``dns`` whose address is the one shared by every record of it."""
        return DnsEntry(name, self._dns_ips.share(ip), source)

    def _dns_key(self, entry: DnsEntry) -> tuple[str, str]:
        lower = entry.name.lower()
        return (entry.name if lower == entry.name else lower, self._dns_ips.text(entry.ip))

    def _dns_put(self, key: tuple[str, str], entry: DnsEntry) -> None:
        """Record ``entry`` in the in-memory view (a commit's after-step, under ``_mem``)."""
        self.dns[key] = entry
        if entry.source == "manual":
            self._dns_manual.add(key[0], key[1])

    def _dns_pop(self, key: tuple[str, str]) -> None:
        """Drop the record under ``key`` from the in-memory view (an after-step)."""
        self.dns.pop(key, None)
        self._dns_manual.discard(key[0], key[1])

    def _commit(self, tx: Tx) -> None:
        """Write ``tx`` in one transaction, then apply its in-memory changes."""
        if tx.puts or tx.deletes:
            self._write(tx.puts, tx.deletes)
        with self._mem:
            for fn in tx.after:
                fn()

    def _write(
        self, puts: Mapping[tuple[str, str], Any], deletes: Iterable[tuple[str, str]]
    ) -> None:
        """Write records to the store in one transaction, and nothing in memory."""
        if self._store is None:
            raise StateError("the state store is not open; start the engine first")
        try:
            self._store.commit(puts, deletes)
        except OverlaydError:
            raise
        except Exception as exc:
            raise StateError(f"could not write the state store: {exc}") from exc

    def _scrub_store(self) -> None:
        """Ask the store to drop copies of deleted records (a secret was deleted)."""
        scrub = getattr(self._store, "scrub", None)
        if callable(scrub):
            try:
                scrub()
            except OverlaydError as exc:
                log.warning("deleted records may linger in the state store: %s", exc)

    # -- addressing -----------------------------------------------------------

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

    def _owned(self, pool: Pool) -> Pool:
        """``pool`` stamped with the driver that answers IPAM for it (``ipam.driver``)."""
        owner = self.config.ipam.driver
        return pool if owner is None else pool.model_copy(update={"driver": owner})

    def _node_pool(self) -> Pool:
        g = self._addressing()
        assert g is not None and self._layout is not None
        return self._owned(self._layout.node_pool(g.node_ip))

    def _flat(self, svc: ServiceOverlay) -> bool:
        """A service without a pool of its own: it uses the node pool (Windows, shared)."""
        return self._layout is not None and self._layout.flat(svc.mode)

    def _pool_for(self, svc: ServiceOverlay) -> Pool:
        if self._flat(svc):
            return self._node_pool()
        reserved: tuple[IPAddress, ...] = (svc.gateway,)
        if svc.overlay_ip is not None:
            reserved += (svc.overlay_ip,)
        return self._owned(Pool(name=service_pool(svc.service), cidr=svc.subnet, reserved=reserved))

    # -- lookups and validation ---------------------------------------------

    _check_name = staticmethod(check_name)
    _parse_net = staticmethod(parse_net)
    _parse_ip = staticmethod(parse_ip)

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

    # -- identities -----------------------------------------------------------

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

    # -- shared pieces of several concerns ----------------------------------

    def _peer_table(self, device: str) -> PeerTable:
        table = self.peers.get(device)
        if table is None:
            table = self.peers[device] = PeerTable(device)
        return table

    def _record_peers(self, tx: Tx, table: PeerTable, merged: Merge[IPNetwork]) -> None:
        """Add the records a merge changes to ``tx``, and the table update after it."""
        for pub, cfg in table.configs(merged).items():
            if cfg is None:
                tx.delete("peer", f"{table.name}|{pub}")
            else:
                tx.put("peer", f"{table.name}|{pub}", cfg)
        tx.after.append(functools.partial(table.commit, merged))

    def _wg_spec(
        self, name: str, owner: str, address: IPInterface, port: int, key: str, subnet: IPNetwork
    ) -> DeviceSpec:
        """The spec of a WireGuard device the engine creates (key: its secret's name)."""
        return DeviceSpec(
            kind=DeviceKind.WIREGUARD,
            name=name,
            owner=owner,
            addresses=(address,),
            mtu=self.config.engine.mtu,
            listen_port=port,
            private_key=self._identity_key(key),
            subnet=subnet,
        )

    async def _read_peers(self, device: Device, what: str) -> list[PeerStatus] | None:
        """The device's peers as the driver reports them; ``None`` (logged) when it cannot."""
        return await self._run(self._read_peers_blocking, device, what)

    def _read_peers_blocking(self, device: Device, what: str) -> list[PeerStatus] | None:
        try:
            return self.hooks.peer_status(device)
        except OverlaydError as exc:
            log.warning("%s could not read the peers of %s: %s", what, device.name, exc)
            return None

    def _wg_devices(self) -> list[Device]:
        with self._mem:
            out = [self.global_.device] if self.global_ else []
            out += [s.dedicated for s in self.services.values() if s.dedicated is not None]
        return out

    def _unmask(self, rule: MasqueradeRule) -> None:
        self.hooks.nat_masquerade(rule, False)
