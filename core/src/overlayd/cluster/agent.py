"""The cluster agent: joins the node, keeps its lease, and follows the cluster.

One task runs sessions. A session grants (or keeps) the node's lease, claims
the node's slice on the first join and sets up the global overlay, writes the
node record and the node's DNS names, reads everything under the prefix once,
programs the difference, then watches from the next revision, applying each
batch of events as peer differences and refreshing the lease every ``ttl/3``
seconds. Any failure to reach etcd ends the session: the data plane keeps the
peers it has, and the next session starts after a backoff (0.2 s doubling up
to ``ttl/3``) and again changes only what differs.

NAT candidates ride in the node records (:mod:`overlayd.cluster.exchange`):
the record is written again when this node's candidates change, and every
peer difference applied also hands the NAT agent the touched peers' candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import replace
from typing import Any
from typing import TypeVar

from overlayd.cluster.claim import claim_slice
from overlayd.cluster.claim import ensure_claim
from overlayd.cluster.config import ClusterSettings
from overlayd.cluster.dns import LocalNames
from overlayd.cluster.dns import RemoteNames
from overlayd.cluster.engine_api import ClusterEngine
from overlayd.cluster.errors import ClusterConflict
from overlayd.cluster.errors import ClusterError
from overlayd.cluster.errors import StoreUnavailable
from overlayd.cluster.exchange import ClusterExchange
from overlayd.cluster.membership import Membership
from overlayd.cluster.membership import is_cluster_peer
from overlayd.cluster.membership import peer_changes
from overlayd.cluster.records import Keys
from overlayd.cluster.records import NodeRecord
from overlayd.cluster.records import format_endpoint
from overlayd.cluster.store import EtcdStore
from overlayd.cluster.store import KeyValue
from overlayd.cluster.store import WatchEvent
from overlayd.cluster.store import WatchHandle
from overlayd.errors import OverlaydError
from overlayd.model import DnsRecord
from overlayd.model import PeerConfig

__all__ = ["ClusterAgent", "ClusterStats"]

log = logging.getLogger("overlayd.cluster")

T = TypeVar("T")

_END = object()
_LOCAL_DNS = object()
_LEASE_LOST = object()
_EVENT = object()
_CANDIDATES = object()


class _LeaseLost(ClusterError):
    """The node's lease (or its record) is gone; the next session registers again."""


@dataclass
class ClusterStats:
    """Counters of what the agent did, shown by ``overlayctl cluster --json``."""

    #: Sessions started (the first join, then one per reconnect).
    sessions: int = 0
    #: ``apply_peers`` calls, i.e. peer hook calls, made by the agent.
    peer_batches: int = 0
    peers_added: int = 0
    peers_updated: int = 0
    peers_removed: int = 0
    #: Watch events received.
    events: int = 0
    #: Writes of this node's record because its NAT candidates changed
    #: (kept here for tests and logs; not part of ``cluster_status``).
    candidate_updates: int = 0


class _Backoff:
    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.current = initial

    def next(self) -> float:
        delay = self.current
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.initial


class ClusterAgent:
    """Cluster mode for one engine. ``await start()`` once, ``await stop()`` at the end.

    :param settings: the ``[cluster]`` table.
    :param engine: the engine, through the narrow :class:`ClusterEngine` surface.
    :param local_names: the plugin registered in the engine that reports the
        node's own DNS names.
    :param store: an etcd adapter (default: one over ``settings.endpoints``).
    """

    def __init__(
        self,
        settings: ClusterSettings,
        engine: ClusterEngine,
        local_names: LocalNames,
        store: EtcdStore | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.name = settings.name
        self.keys = Keys(settings.prefix)
        self.membership = Membership(
            keys=self.keys,
            self_name=self.name,
            cluster=settings.cluster_cidr,
            slice_lengths=tuple(settings.slice_length(c) for c in settings.cluster_cidr),
            keepalive=settings.keepalive_secs,
        )
        self.remote = RemoteNames(self.keys, self.name, self.membership._warn)
        self.local = local_names
        self.store = store or EtcdStore(settings)
        self.stats = ClusterStats()
        #: This node's record once joined.
        self.record: NodeRecord | None = None
        self.lease_id: int | None = None
        self.connected = False
        #: Why the last session ended (or the join failed), for ``overlayctl cluster``.
        self.last_error: str | None = None
        self.joined = asyncio.Event()
        #: NAT candidates: this node's go into its record, the peers' come from theirs.
        self.exchange = ClusterExchange(self._candidates_published)
        #: Values this node wrote to its own record lately (their watch echoes are expected).
        self._written: deque[bytes] = deque(maxlen=8)
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="overlayd-etcd")
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._watch: WatchHandle | None = None
        self._published: dict[str, tuple[bytes, int]] = {}
        self._dirty = False
        self._outage_logged = False
        self._last_local: set[tuple[str, str]] = set()
        #: Peers a full pass wants removed, applied after ``_deferred_until``.
        self._deferred: set[str] = set()
        self._deferred_until = 0.0
        self._generation = 0
        self._retry_at = 0.0

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Start following the cluster in the background (returns at once)."""
        self._loop = asyncio.get_running_loop()
        self.local.on_change = self._local_dns_changed
        from overlayd.nat.host import use_exchange

        use_exchange(self.engine, self.exchange)
        self._task = asyncio.create_task(self._supervise(), name="overlayd-cluster")

    async def stop(self) -> None:
        """Stop following; the lease is left to expire (a quick restart causes no churn)."""
        self.local.on_change = lambda: None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._cancel_watch()
        self.store.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _io(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _cancel_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()

    # -- the session loop -----------------------------------------------------

    async def _supervise(self) -> None:
        cap = max(1.0, self.settings.ttl / 3)
        backoff = _Backoff(0.2, cap)
        while True:
            try:
                await self._session(backoff)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                self.last_error = str(exc)
                if not self._outage_logged:
                    self._outage_logged = True
                    log.warning("cluster: %s; keeping the last known peers and retrying", exc)
                else:
                    log.debug("cluster: still unreachable: %s", exc)
            except _LeaseLost as exc:
                self.last_error = str(exc)
                log.warning("cluster: %s", exc)
                self.lease_id = None
            except ClusterConflict as exc:
                self.last_error = str(exc)
                log.error("cluster: cannot join: %s", exc)
                backoff.current = cap
            except OverlaydError as exc:
                self.last_error = str(exc)
                log.error("cluster: %s", exc)
            except Exception as exc:  # a bug must not end cluster mode for good
                self.last_error = f"internal error: {exc!r}"
                log.exception("cluster: session crashed; starting a new one")
            finally:
                self.connected = False
                self._cancel_watch()
            await asyncio.sleep(backoff.next())

    async def _session(self, backoff: _Backoff) -> None:
        self.stats.sessions += 1
        lease = await self._lease()
        # The lease is refreshed by a task of its own from here on, so a long
        # first read of a large cluster cannot let it expire.
        keeper = asyncio.create_task(self._keep_lease(lease), name="overlayd-cluster-lease")
        try:
            await self._follow(backoff, lease)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper

    async def _keep_lease(self, lease: int) -> None:
        interval = self.settings.ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                ttl = await self._io(self.store.keepalive, lease)
            except StoreUnavailable as exc:
                self._queue.put_nowait((_LEASE_LOST, exc))
                return
            if ttl <= 0:
                self._queue.put_nowait((_LEASE_LOST, "the node's lease expired; registering again"))
                return

    async def _follow(self, backoff: _Backoff, lease: int) -> None:
        s = self.settings
        if self.record is None:
            self.record = await self._join()
        else:
            for net in self.record.slices:  # etcd may have lost its data meanwhile
                await self._io(ensure_claim, self.store, self.keys, net, self.name)
        await self._write_record(lease)
        revision, kvs = await self._io(self.store.range_prefix, self.keys.root)
        self._drain_queue()
        await self._load(kvs, lease)
        # Items of an earlier watch still in flight are told apart by generation.
        self._generation += 1
        gen = self._generation
        self._watch = await self._io(
            self.store.watch_prefix,
            self.keys.root,
            revision + 1,
            functools.partial(self._on_watch_event, gen),
            functools.partial(self._on_watch_end, gen),
        )
        if self.last_error is not None:
            log.info("cluster: connected again; peers resynchronised")
        self._outage_logged = False
        self.connected = True
        self.last_error = None
        backoff.reset()
        self.joined.set()
        interval = s.ttl / 3
        while True:
            # Retries and deferred removals are due also while events keep coming.
            if self._dirty and time.monotonic() >= self._retry_at:
                await self._apply(None)
            if self._deferred and time.monotonic() >= self._deferred_until:
                deferred, self._deferred = self._deferred, set()
                await self._apply(deferred)
            try:
                item = await asyncio.wait_for(self._queue.get(), interval)
            except TimeoutError:
                continue
            if (
                isinstance(item, tuple)
                and item[0] in (_EVENT, _END)
                and item[1] != self._generation
            ):
                continue  # from the watch of an earlier session: superseded
            if isinstance(item, tuple) and item[0] is _END:
                raise StoreUnavailable(f"etcd watch: {item[2]}")
            if isinstance(item, tuple) and item[0] is _LEASE_LOST:
                if isinstance(item[1], StoreUnavailable):
                    raise item[1]
                raise _LeaseLost(str(item[1]))
            if item is _LOCAL_DNS:
                self._drain_markers(_LOCAL_DNS)
                await self._publish_dns(lease)
                continue
            if item is _CANDIDATES:
                self._drain_markers(_CANDIDATES)
                if await self._write_record(lease, always=False):
                    self.stats.candidate_updates += 1
                continue
            batch: list[WatchEvent] = [item[2]]
            while not self._queue.empty():
                more = self._queue.get_nowait()
                if not (isinstance(more, tuple) and more[0] is _EVENT and more[1] == item[1]):
                    # Handle anything else after this batch.
                    self._queue.put_nowait(more)
                    break
                batch.append(more[2])
            await self._events(batch)

    async def _lease(self) -> int:
        if self.lease_id is not None:
            ttl = await self._io(self.store.keepalive, self.lease_id)
            if ttl > 0:
                return self.lease_id
        self.lease_id = await self._io(self.store.grant, self.settings.ttl)
        assert self.lease_id is not None
        return self.lease_id

    async def _join(self) -> NodeRecord:
        """Claim the slices and set up the global overlay (first session only)."""
        s = self.settings
        cidr = s.cluster_cidr[0]
        g = self.engine.global_
        preferred = None
        if g is not None:
            if g.cluster_cidr != cidr:
                raise ClusterConflict(
                    f"the global overlay is set up for cluster {g.cluster_cidr}, "
                    f"[cluster] cluster_cidr says {cidr}"
                )
            preferred = g.slice_cidr
        slices = [
            await self._io(
                claim_slice, self.store, self.keys, cidr, s.slice_length(cidr), self.name, preferred
            )
        ]
        for extra in s.cluster_cidr[1:]:
            slices.append(
                await self._io(
                    claim_slice, self.store, self.keys, extra, s.slice_length(extra), self.name
                )
            )
        await self.engine.setup_global_overlay(
            deployment=s.deployment,
            instance_id=self.name,
            cluster_cidr=cidr,
            slice_cidr=slices[0],
            wg_port=s.wg_port,
            nat_enabled=s.nat,
        )
        g = self.engine.global_
        assert g is not None
        if not g.device.public_key:
            raise ClusterError("the global device has no public key; no WireGuard driver loaded?")
        if s.advertise is not None:
            advertise = s.advertise
        elif sys.platform == "win32":
            raise ClusterError("set `advertise` in [cluster]: no default is found on Windows")
        else:
            from overlayd.cluster.underlay import default_route_address

            advertise = default_route_address()
        record = NodeRecord(
            name=self.name,
            public_key=g.device.public_key,
            endpoint=format_endpoint(advertise, s.wg_port),
            slices=tuple(slices),
            node_ip=g.node_ip,
            candidates=self.exchange.local(),
        )
        log.info(
            "cluster: node %s joined with slice %s, endpoint %s",
            self.name,
            ", ".join(map(str, slices)),
            record.endpoint,
        )
        return record

    # -- applying the store ---------------------------------------------------

    async def _load(self, kvs: list[KeyValue], lease: int) -> None:
        # In revision order: of two records claiming one public key, the older wins,
        # as it does when they arrive through the watch.
        ordered = sorted(kvs, key=lambda kv: kv.mod_revision)
        # Checking 10,000 records takes a while: off the event loop, so the
        # lease keeper and the IPC server keep running (nothing else touches
        # the membership until this session follows the watch).
        await self._io(self.membership.load, [(kv.key, kv.value, kv.lease) for kv in ordered])
        await self._apply(None)
        dns = [(kv.key, kv.value) for kv in kvs if self.keys.kind(kv.key) == "dns"]
        added, removed = self.remote.load(dns)
        await self._serve_remote(added, removed)
        own = self.keys.dns_of(self.name)
        self._published = {kv.key: (kv.value, kv.lease) for kv in kvs if kv.key.startswith(own)}
        await self._publish_dns(lease)

    async def _events(self, batch: list[WatchEvent]) -> None:
        self.stats.events += len(batch)
        touched: set[str] = set()
        added: list[DnsRecord] = []
        removed: list[DnsRecord] = []
        own_key = self.keys.node(self.name)
        for ev in batch:
            kind = self.keys.kind(ev.key)
            if kind == "dns":
                if ev.key.startswith(self.keys.dns_of(self.name)):
                    if ev.value is None:
                        self._published.pop(ev.key, None)
                    continue
                a, r = (
                    self.remote.delete(ev.key)
                    if ev.value is None
                    else self.remote.put(ev.key, ev.value)
                )
                added += a
                removed += r
                continue
            if ev.key == own_key:
                if ev.value is None:
                    raise _LeaseLost("this node's record was deleted; registering again")
                if self.record is not None and ev.value not in self._written:
                    self.membership._warn(
                        ev.key, ev.value, "another writer changed this node's own record"
                    )
                continue
            if ev.value is None:
                touched |= self.membership.delete(ev.key)
            else:
                touched |= self.membership.put(ev.key, ev.value, ev.lease)
        if touched:
            await self._apply(touched)
        if added or removed:
            await self._serve_remote(added, removed)

    async def _apply(self, touched: set[str] | None) -> None:
        """Program the differences for ``touched`` peers (``None``: all of them).

        A full pass (after a read of the whole prefix) defers removals by
        ``ttl`` seconds: a node missing from that read may only not have
        re-registered yet (etcd restarted empty, or this node was cut off), and
        removing then re-adding it would be churn. Watched deletions apply at once.
        """
        g = self.engine.global_
        if g is None or self.record is None:
            return
        programmed = self.engine.peers.get(g.device.name, {})
        full = touched is None
        if touched is None:
            own = self.record.slices
            cluster = self.settings.cluster_cidr
            touched = {k for k, p in programmed.items() if is_cluster_peer(p, cluster, own)}
            touched |= self.membership.all_peer_keys()
            self._dirty = False
        if full:
            touched |= set(self.exchange.known_peers())
        try:
            await self._apply_changes(touched, programmed, full)
        finally:
            # The peers' NAT candidates follow their records, once they are programmed.
            self.exchange.sync(touched, self.membership, self.engine.peers.get(g.device.name, {}))

    async def _apply_changes(
        self, touched: set[str], programmed: Mapping[str, PeerConfig], full: bool
    ) -> None:
        current = {k: programmed[k] for k in touched if k in programmed}
        changes = peer_changes(touched, self.membership, current)
        if full:
            deferred = {c.public_key for c in changes if c.remove}
            if deferred:
                self._deferred |= deferred
                self._deferred_until = time.monotonic() + self.settings.ttl
                changes = [c for c in changes if not c.remove]
        if not changes:
            return
        try:
            await self.engine.apply_peers(changes)
        except OverlaydError as exc:
            self._dirty = True
            self._retry_at = time.monotonic() + self.settings.ttl / 3
            log.error("cluster: could not program %d peer change(s): %s", len(changes), exc)
            return
        self.stats.peer_batches += 1
        for change in changes:
            if change.remove:
                self.stats.peers_removed += 1
                log.info("cluster: removed peer %s", change.public_key)
            elif change.public_key in current:
                self.stats.peers_updated += 1
                log.info("cluster: updated peer %s", change.public_key)
            else:
                self.stats.peers_added += 1
                log.info("cluster: added peer %s (%s)", change.public_key, change.endpoint)

    async def _serve_remote(self, added: list[DnsRecord], removed: list[DnsRecord]) -> None:
        local = self.local.snapshot()
        removed = [r for r in removed if (r.name.lower(), str(r.ip)) not in local]
        if added or removed:
            await self.engine.serve_remote_dns(added, removed)

    # -- own NAT candidates ---------------------------------------------------

    def _candidates_published(self) -> None:
        """The NAT agent published new candidates (any thread): write the record again."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._queue.put_nowait, _CANDIDATES)

    async def _write_record(self, lease: int, *, always: bool = True) -> bool:
        """Write this node's record with its current candidates; True when they changed.

        With ``always`` false the record is written only when they changed.
        """
        assert self.record is not None
        candidates = self.exchange.local()
        fresh = self.record.candidates != candidates
        if not fresh and not always:
            return False
        if fresh:
            self.record = replace(self.record, candidates=candidates)
            log.info(
                "cluster: publishing NAT candidates %s",
                ", ".join(c.endpoint for c in candidates) or "none",
            )
        value = self.record.to_json()
        self._written.append(value)
        await self._io(self.store.put, self.keys.node(self.name), value, lease)
        return fresh

    def _drain_markers(self, marker: object) -> None:
        keep = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not marker:
                keep.append(item)
        for item in keep:
            self._queue.put_nowait(item)

    # -- own DNS names --------------------------------------------------------

    def _local_dns_changed(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._queue.put_nowait, _LOCAL_DNS)

    async def _publish_dns(self, lease: int) -> None:
        local = self.local.snapshot()
        want = self.remote.own_keys(local.values())
        for key, value in want.items():
            if self._published.get(key) != (value, lease):
                await self._io(self.store.put, key, value, lease)
                self._published[key] = (value, lease)
        for key in [k for k in self._published if k not in want]:
            await self._io(self.store.delete, key)
            self._published.pop(key, None)
        # A name this node stopped serving may still be served by another node:
        # the engine's removal took it out of the DNS server, so serve it again.
        gone = self._last_local - set(local)
        self._last_local = set(local)
        if gone:
            again = self.remote.served(gone)
            if again:
                await self.engine.serve_remote_dns(again, [])

    # -- watch callbacks (watch thread) ---------------------------------------

    def _on_watch_event(self, gen: int, event: WatchEvent) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._queue.put_nowait, (_EVENT, gen, event))

    def _on_watch_end(self, gen: int, reason: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._queue.put_nowait, (_END, gen, reason))

    def _drain_queue(self) -> None:
        """Drop events of an earlier watch (the full read supersedes them)."""
        keep = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item in (_LOCAL_DNS, _CANDIDATES) or (
                isinstance(item, tuple) and item[0] is _LEASE_LOST
            ):
                keep.append(item)
        for item in keep:
            self._queue.put_nowait(item)
