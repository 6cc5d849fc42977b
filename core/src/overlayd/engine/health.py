"""Status and health: what ``status`` answers, and peer health transitions.

``status`` takes no lock, so it never waits behind an operation; the peers it
reports are read from the device at most every ``STATUS_PEERS_MAX_AGE``
seconds (a cached read is reused only while the recorded peers are unchanged).
"""

from __future__ import annotations

import logging
import operator
import time
from dataclasses import dataclass

from overlayd.model import Device
from overlayd.model import Event
from overlayd.model import PeerStatus
from overlayd.peers import PeerTable

from .base import EngineBase
from .base import PeerStatusCache
from .results import DedicatedStatus
from .results import Status

__all__ = ["HealthMixin"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _StatusMemo:
    """The inputs of the last ``status`` and what it answered."""

    parts: tuple[object, ...]
    peer_counts: dict[str, int]
    nat: object
    status: Status

    def holds(self, parts: tuple[object, ...], peer_counts: dict[str, int], nat: object) -> bool:
        """Whether ``status`` built from these inputs would be :attr:`status`."""
        return (
            len(self.parts) == len(parts)
            and all(map(operator.is_, self.parts, parts))
            and self.peer_counts == peer_counts
            and self.nat == nat
        )


class HealthMixin(EngineBase):
    """``status`` and ``check_health``."""

    _status_memo: _StatusMemo | None = None

    #: How old (seconds) the peers ``status`` reports may be: traffic counters
    #: and handshake times lag by at most this much; peer changes never do.
    STATUS_PEERS_MAX_AGE: float = 1.0

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
        nat = self._nat_status()
        # A poller asks many times between changes. The overlays are frozen
        # models replaced on every change, and the peers list is the cached
        # read's own object, so identity says "unchanged"; the same Status
        # object then lets the server answer from its encoded copy too.
        parts = (up, g, peers, *services)
        memo = self._status_memo
        if memo is not None and memo.holds(parts, peer_counts, nat):
            return memo.status
        # model_construct: every value below is already typed by the engine's own
        # models, so validating them again on each ``status`` is pure cost.
        dedicated = tuple(
            DedicatedStatus.model_construct(
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
        status = Status.model_construct(
            interface=up.device.name if up is not None else None,
            node_ip=g.node_ip,
            public_key=up.device.public_key if up is not None else None,
            overlay_cidr=g.cluster_cidr,
            slice_cidr=g.reported_slice,
            peer_count=len(peers) if peers else peer_counts.get(up.device.name, 0) if up else 0,
            service_count=len(services),
            peers=tuple(peers),
            dedicated_services=dedicated,
            nat=nat,
        )
        self._status_memo = _StatusMemo(parts, peer_counts, nat, status)
        return status

    def status_unchanged(self) -> Status | None:
        """The last :meth:`status`, without awaiting, if it is still the answer.

        ``None`` whenever :meth:`status` would do any work: nothing answered
        yet, an overlay, service or peer changed, the peers' read is older than
        ``STATUS_PEERS_MAX_AGE``, or the engine is stopping. The server answers
        a polled ``status`` from this on the connection's own read, without a
        task or a coroutine; anything else goes through :meth:`status`.
        """
        memo = self._status_memo
        if memo is None or self._stopping or not self._started:
            return None
        with self._mem:
            up = self.global_
            g = up or self._retired
            services = list(self.services.values())
            peer_counts = {name: len(p) for name, p in self.peers.items()}
            recorded = self._recorded_peers(up.device.name) if up else (None, 0)
        peers: list[PeerStatus] | None = []
        if up is not None:
            peers = self._fresh_peers(up.device, recorded)
            if peers is None:
                return None
        nat = self._nat_status()
        if g is None or not memo.holds((up, g, peers, *services), peer_counts, nat):
            return None
        return memo.status

    async def _status_peers(self, device: Device) -> list[PeerStatus]:
        """The device's peers for ``status``, read at most every ``STATUS_PEERS_MAX_AGE`` s.

        Reading them costs a hop to a worker thread and a device query, which
        was most of a ``status`` round trip. The cached answer is used only
        while it is younger than the bound and the recorded peer set of the
        device is the one it was read under (the table's version), so
        ``status`` right after any peer change reads the device again.
        """
        with self._mem:
            recorded = self._recorded_peers(device.name)
        fresh = self._fresh_peers(device, recorded)
        if fresh is not None:
            return fresh
        now = time.monotonic()
        peers = await self._read_peers(device, "status")
        if peers is None:
            return []
        self._status_cache = PeerStatusCache(now, device, recorded, peers)
        return peers

    def _recorded_peers(self, device: str) -> tuple[PeerTable | None, int]:
        """(under ``_mem``) The device's peer table and its version: what a read is valid for."""
        table = self.peers.get(device)
        return (table, table.version if table is not None else 0)

    def _fresh_peers(
        self, device: Device, recorded: tuple[PeerTable | None, int]
    ) -> list[PeerStatus] | None:
        """The cached peers read, if young enough and read under ``recorded``; else None."""
        cached = self._status_cache
        if (
            cached is not None
            and time.monotonic() - cached.read_at < self.STATUS_PEERS_MAX_AGE
            and (cached.device is device or cached.device == device)
            and cached.recorded[0] is recorded[0]
            and cached.recorded[1] == recorded[1]
        ):
            return cached.peers
        return None

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
            peers = await self._read_peers(device, "the health check")
            if peers is None:
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
