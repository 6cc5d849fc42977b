"""Per-peer path selection: the NAT agent of one WireGuard device.

Every ``refresh`` seconds (and on ``nat_tick``, and when a peer's candidates
change) the agent

1. gathers this node's candidates -- host addresses from the driver,
   server-reflexive ones from the WireGuard port (:mod:`overlayd.nat.stun`),
   a relayed one from the TURN allocation (:mod:`overlayd.nat.turn`) -- and
   publishes them through the :class:`~overlayd.nat.candidates.CandidateExchange`;
2. for each peer whose candidates it knows, checks the current path: a peer
   that sent nothing for a whole refresh period (its keepalive is at most
   that period) has lost its path, and a relayed peer is offered a direct
   path again;
3. selects a path where needed: connectivity checks to every direct candidate
   at once (:mod:`overlayd.nat.checks`); the first that answers is confirmed
   by a fresh WireGuard handshake on it; when none answers within the head
   start (:func:`overlayd.nat.pacing.head_start`, which follows the round
   trip to the STUN or TURN server) and a relay is available, the peer is
   relayed at once while the checks go on for ``punch_timeout``, and moves
   to the direct path as soon as one answers. When both nodes have an
   allocation, each sends through its own ("both relay"); when only one has,
   or both relay does not confirm, the pair relays through one allocation,
   the smaller key's (see :mod:`overlayd.nat.turn`).

When the endpoint a peer is reached at changes (including WireGuard roaming
to a new mapping of the peer), ``nat_endpoint_changed`` is emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import Final
from typing import Protocol

from aioice import stun

from overlayd.errors import OverlaydError
from overlayd.model import Device
from overlayd.model import Event
from overlayd.model import NatCandidate
from overlayd.model import PeerStatus
from overlayd.nat.candidates import CandidateExchange
from overlayd.nat.candidates import endpoint_of
from overlayd.nat.candidates import parse_endpoint
from overlayd.nat.candidates import rank
from overlayd.nat.checks import CheckKeys
from overlayd.nat.checks import answer
from overlayd.nat.checks import check_request
from overlayd.nat.checks import verify_answer
from overlayd.nat.config import NatSettings
from overlayd.nat.pacing import CHECK_INTERVAL
from overlayd.nat.pacing import UPGRADE_INTERVAL
from overlayd.nat.pacing import UPGRADE_WINDOW
from overlayd.nat.pacing import head_start
from overlayd.nat.pacing import resend_interval
from overlayd.nat.peerpath import PathKind
from overlayd.nat.peerpath import PeerPath
from overlayd.nat.peerpoll import PeerPoll
from overlayd.nat.rawport import WgPort
from overlayd.nat.stun import StunPort
from overlayd.nat.stun import gather_reflexive
from overlayd.nat.turn import MODE_TEXT
from overlayd.nat.turn import RelayMode
from overlayd.nat.turn import TurnRelay
from overlayd.nat.turn import relay_mode

__all__ = ["NatAgent", "NatHooks", "PathKind", "PeerPath"]

log = logging.getLogger(__name__)

#: Bound of one STUN gathering and one TURN control transaction (seconds).
SERVER_TIMEOUT: Final = 2.0

_SERVER_ERRORS: Final = (TimeoutError, OSError, ConnectionError, ValueError, stun.TransactionError)

Address = tuple[str, int]


class NatHooks(Protocol):
    """What the agent needs from the drivers (the engine's :class:`~overlayd.plugins.Hooks`)."""

    def nat_candidates(self, device: Device) -> list[NatCandidate]: ...

    def nat_socket(self, device: Device, family: int, type: int, proto: int) -> socket.socket: ...

    def nat_set_endpoint(
        self, device: Device, public_key: str, endpoint: str, keepalive: int
    ) -> None: ...

    def peer_status(self, device: Device) -> list[PeerStatus]: ...


Runner = Callable[..., Awaitable[Any]]


class NatAgent:
    """NAT traversal for one WireGuard device (the node's global device).

    :param settings: The ``[nat]`` table.
    :param device: The WireGuard device whose port is traversed.
    :param hooks: Driver hooks (blocking; run through ``run``).
    :param run: Runs a blocking callable off the event loop.
    :param emit: Pushes an engine event.
    :param exchange: Where candidates are published and read.
    :param keys: This node's WireGuard key pair (for authenticated checks).
    :param keepalive: Keepalive (seconds) given to each peer whose path the agent manages.
    """

    def __init__(
        self,
        settings: NatSettings,
        device: Device,
        hooks: NatHooks,
        run: Runner,
        emit: Callable[[Event], None],
        exchange: CandidateExchange,
        keys: CheckKeys,
        keepalive: Callable[[str], int],
    ) -> None:
        self.settings = settings
        self.device = device
        self.hooks = hooks
        self._run = run
        self._emit = emit
        self.exchange = exchange
        self.keys = keys
        self._keepalive = keepalive
        self.port: StunPort | None = None
        self.relay: TurnRelay | None = None
        self.peers: dict[str, PeerPath] = {}
        self.local: tuple[NatCandidate, ...] = ()
        self.warnings: list[str] = []
        self._gathering: list[str] = []
        #: The device's peers, read once for every path waiting on a handshake.
        self.peer_poll = PeerPoll(lambda: self._run(self.hooks.peer_status, self.device))
        #: Warnings that hold until the agent stops (the port cannot be probed).
        self._standing: list[str] = []
        self.mapping: dict[int, str] = {}
        #: The shortest round trip to a STUN or TURN server at the last refresh
        #: that measured one (seconds); sets the direct checks' head start.
        self.server_rtt: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._refresh_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Open the WireGuard port's raw sockets and start the refresh loop."""
        self._loop = asyncio.get_running_loop()
        self.exchange.on_change(self._candidates_changed)
        port_no = self.device.listen_port
        if port_no:
            try:
                wg_port = WgPort(port_no, self._opener)
                await self._run(wg_port.open)
            except (OSError, OverlaydError) as exc:
                self._warn(
                    f"cannot send or catch STUN on WireGuard port {port_no} ({exc}); "
                    "only host and relayed candidates are offered and no connectivity "
                    "checks run",
                    standing=True,
                )
            else:
                self.port = StunPort(wg_port)
                self.port.on_request = self._on_check
                self.port.start(self._loop)
        self._task = asyncio.create_task(self._loop_refresh(), name="overlayd-nat")

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._task, *(p.task for p in self.peers.values())) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.port is not None:
            self.port.close()
            self.port = None
        if self.relay is not None:
            await self.relay.close()
            self.relay = None

    def _opener(self, family: int, type_: int, proto: int) -> socket.socket:
        return self.hooks.nat_socket(self.device, family, type_, proto)

    def _warn(self, message: str, *, standing: bool = False) -> None:
        if standing:
            log.warning("NAT traversal: %s", message)
            self._standing.append(message)
            return
        if message not in self.warnings and message not in self._gathering:
            log.warning("NAT traversal: %s", message)
        self._gathering.append(message)
        if not self._refresh_lock.locked():
            self.warnings.append(message)

    async def _loop_refresh(self) -> None:
        while not self._closed:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("NAT refresh failed; it runs again in %.0f s", self.settings.refresh)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.refresh)

    def _candidates_changed(self, public_key: str) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        loop.call_soon_threadsafe(self._on_candidates, public_key)

    def _on_candidates(self, public_key: str) -> None:
        cands = self.exchange.peer_candidates(public_key)
        if cands is None:
            self.forget(public_key)
            return
        peer = self.peers.get(public_key)
        if peer is None:
            peer = self.peers[public_key] = PeerPath(public_key)
        log.info(
            "peer %s: candidates %s", public_key, ", ".join(c.endpoint for c in cands) or "none"
        )
        peer.candidates = tuple(cands)
        peer.single_relay = False
        if peer.task is not None and not peer.task.done():
            # A selection on the old candidates would wait out its timeouts
            # before the new ones are tried: start over now.
            peer.task.cancel()
            peer.task = None
        peer.valid.clear()
        self._start_selection(peer, reason="new candidates")

    def use_exchange(self, exchange: CandidateExchange) -> None:
        """Exchange candidates through ``exchange`` from now on (cluster mode plugs in).

        This node's candidates are published there at once; peers whose
        candidates only the old exchange knew are left alone until the new one
        says something about them.
        """
        self.exchange = exchange
        if self._loop is None:
            return  # start() registers the listener
        exchange.on_change(self._candidates_changed)
        if self.local:
            exchange.publish(self.keys.public_key, self.local)

    def forget(self, public_key: str) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        if peer.task is not None:
            peer.task.cancel()
        if self.relay is not None:
            self.relay.remove_peer(public_key)

    # -- refresh -------------------------------------------------------------

    async def refresh(self) -> None:
        """Gather and publish candidates, then re-check every peer's path."""
        async with self._refresh_lock:
            self._gathering = []
            try:
                await self._gather()
            finally:
                # What status shows: the warnings of the last complete gathering.
                self.warnings = self._gathering
            try:
                statuses = await self.peer_poll.fresh()
            except OverlaydError as exc:
                self._warn(f"cannot read the peers of {self.device.name}: {exc}")
                return
            for peer in list(self.peers.values()):
                self._review(peer, statuses.get(peer.public_key))

    async def _gather(self) -> None:
        try:
            host = await self._run(self.hooks.nat_candidates, self.device)
        except OverlaydError as exc:
            self._warn(f"host candidates of {self.device.name} are unknown: {exc}")
            host = []
        gathered: list[NatCandidate] = [c for c in host if c.kind == "host"]
        rtts: list[float] = []
        if self.settings.stun_servers:
            if self.port is None:
                self._warn("STUN servers are configured but the WireGuard port cannot be probed")
            else:
                result = await gather_reflexive(
                    self.port,
                    self.settings.stun_servers,
                    within=min(SERVER_TIMEOUT, self.settings.punch_timeout),
                    local=[c.endpoint for c in gathered],
                )
                for warning in result.warnings:
                    self._warn(warning)
                if self.port.garbage:
                    self._warn(
                        f"{self.port.garbage} datagram(s) with the STUN cookie on port "
                        f"{self.port.port.port} were not valid STUN; ignored"
                    )
                    self.port.garbage = 0
                self.mapping = result.mapping
                gathered.extend(result.candidates)
                rtts.extend(o.rtt for o in result.observations if o.rtt is not None)
        relayed, relay_rtt = await self._ensure_relay()
        if relay_rtt is not None:
            rtts.append(relay_rtt)
        if rtts:
            self.server_rtt = min(rtts)
        if relayed is not None:
            gathered.append(NatCandidate(kind="relay", endpoint=relayed))
        local = tuple(rank(gathered))
        if local != self.local:
            log.info("candidates of this node: %s", ", ".join(c.endpoint for c in local) or "none")
        self.local = local
        self.exchange.publish(self.keys.public_key, self.local)

    async def _ensure_relay(self) -> tuple[str | None, float | None]:
        """The relayed candidate (the allocation probed, or a new one) and the
        round trip to its server that this took, when it got one."""
        relay = self.relay
        started = time.monotonic()
        if (
            relay is not None
            and relay.relayed is not None
            and await relay.probe(min(SERVER_TIMEOUT, self.settings.punch_timeout))
        ):
            # One Refresh transaction (two after a stale nonce).
            return endpoint_of(*relay.relayed), time.monotonic() - started
        if relay is not None:
            self._warn(f"the TURN allocation on {relay.server.url} was lost; allocating again")
            await relay.close(delete=False)
            self.relay = None
            for peer in self.peers.values():
                if peer.path == "relayed":
                    self._start_selection(peer, reason="relay lost")
        port_no = self.device.listen_port
        if not port_no:
            return None, None
        for server in self.settings.turn_servers:
            candidate = TurnRelay(server, self._opener, port_no, self.settings.relay_forwarder)
            started = time.monotonic()
            try:
                relayed = await candidate.start(SERVER_TIMEOUT)
            except (*_SERVER_ERRORS, OverlaydError) as exc:
                reason = str(exc) or type(exc).__name__
                self._warn(f"TURN server {server.url} gave no allocation: {reason}")
                continue
            self.relay = candidate
            log.info("TURN allocation on %s: relayed address %s", server.url, relayed)
            # An allocation is two transactions (the server's challenge, then the request).
            return endpoint_of(*relayed), (time.monotonic() - started) / 2
        return None, None

    def _review(self, peer: PeerPath, status: PeerStatus | None) -> None:
        """Once per refresh: is the peer's path alive, did WireGuard roam, can a relay go?"""
        if peer.task is not None and not peer.task.done():
            return
        if status is None:
            # Removed from the device: drop its relay channel; its candidates
            # stay known, so a peer added again gets a path at once.
            if self.relay is not None:
                self.relay.remove_peer(peer.public_key)
            peer.path, peer.endpoint, peer.wg_endpoint = "pending", None, None
            peer.rx_bytes = -1
            return
        now = time.monotonic()
        alive = peer.rx_bytes >= 0 and status.rx_bytes > peer.rx_bytes
        peer.rx_bytes = status.rx_bytes
        if status.endpoint and peer.wg_endpoint and status.endpoint != peer.wg_endpoint:
            self._roamed(peer, status.endpoint)
        if alive:
            peer.quiet_since = None
        elif peer.quiet_since is None:
            peer.quiet_since = now
        period = self.settings.refresh * 0.9
        quiet = peer.quiet_since is not None and now - peer.quiet_since >= period
        if peer.path == "pending" or quiet:
            reason = "no path" if peer.path == "pending" else "path quiet"
            self._start_selection(peer, reason=reason)
        elif peer.path == "relayed" and peer.direct_candidates():
            self._start_selection(peer, reason="relayed: trying direct again", upgrade=True)

    def _roamed(self, peer: PeerPath, endpoint: str) -> None:
        relay = self.relay.peer(peer.public_key) if self.relay else None
        modes: list[RelayMode] = ["theirs"]
        if relay is not None:
            modes.insert(0, "both" if relay.peer_relay is not None else "own")
        for mode in modes:
            target = self._relay_target(peer, mode)
            if target is not None and endpoint == target[0]:
                peer.relay_mode = mode
                self._set_path(peer, "relayed", target[1], endpoint)
                return
        kind: PathKind = "direct"
        known = next((c for c in peer.candidates if c.endpoint == endpoint), None)
        if known is not None and known.guessed:
            kind = "guessed"
        self._leave_relay(peer)
        self._set_path(peer, kind, endpoint, endpoint)

    def _set_path(self, peer: PeerPath, kind: PathKind, endpoint: str, wg_endpoint: str) -> None:
        changed = peer.endpoint != endpoint
        peer.path = kind
        peer.wg_endpoint = wg_endpoint
        peer.changed_at = time.monotonic()
        if changed:
            peer.endpoint = endpoint
            log.info("peer %s: %s path via %s", peer.public_key, kind, endpoint)
            self._emit(
                Event(event="nat_endpoint_changed", pubkey=peer.public_key, endpoint=endpoint)
            )

    # -- selection -----------------------------------------------------------

    def _start_selection(self, peer: PeerPath, *, reason: str, upgrade: bool = False) -> None:
        if self._closed or (peer.task is not None and not peer.task.done()):
            return
        log.debug("peer %s: selecting a path (%s)", peer.public_key, reason)
        peer.task = asyncio.create_task(self._select(peer, upgrade=upgrade))

    async def _select(self, peer: PeerPath, *, upgrade: bool) -> None:
        try:
            await self._select_inner(peer, upgrade=upgrade)
        except asyncio.CancelledError:
            raise
        except OverlaydError as exc:
            self._warn(f"path selection for peer {peer.public_key} failed: {exc}")
        except Exception:
            log.exception("path selection for peer %s crashed", peer.public_key)

    async def _select_inner(self, peer: PeerPath, *, upgrade: bool) -> None:
        direct = peer.direct_candidates()
        peer.success.clear()
        peer.valid.clear()
        relay_task = asyncio.create_task(self._prepare_relay(peer))
        checker = None
        if direct and self.port is not None:
            pace = UPGRADE_INTERVAL if upgrade else CHECK_INTERVAL
            checker = asyncio.create_task(self._check_all(peer, direct, pace))
        alone = head_start(self.server_rtt)
        try:
            if checker is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(peer.success.wait(), alone)
            if peer.success.is_set() and await self._go_direct(peer):
                return
            relay_ok = await relay_task
            if relay_ok and (
                (peer.path != "relayed" and not upgrade)
                or (peer.path == "relayed" and self._relay_stale(peer))
            ):
                await self._go_relayed(peer)
            if checker is not None:
                window = min(UPGRADE_WINDOW, self.settings.punch_timeout) if upgrade else None
                deadline = time.monotonic() + (window or self.settings.punch_timeout - alone)
                while time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(peer.success.wait(), deadline - time.monotonic())
                    if not peer.success.is_set():
                        continue
                    if await self._go_direct(peer):
                        return
                    peer.success.clear()
            if peer.path == "pending" and direct:
                # Nothing answered: leave WireGuard on the best candidate, so a
                # path that opens later (or a peer that punches) can still work.
                best = direct[0]
                await self._point(peer, best.endpoint)
                peer.wg_endpoint = best.endpoint
        finally:
            for task in (checker, relay_task):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    def _relay_mode(self, peer: PeerPath) -> RelayMode | None:
        """How this pair relays (None: it cannot); the peer derives the same."""
        return relay_mode(
            self.relay is not None and self.relay.relayed is not None and self.relay.alive,
            peer.relay_candidate() is not None,
            self.keys.public_key,
            peer.public_key,
            single=peer.single_relay,
        )

    def _relay_target(self, peer: PeerPath, mode: RelayMode) -> tuple[str, str] | None:
        """Where WireGuard points in ``mode`` and the endpoint shown for the peer."""
        theirs = peer.relay_candidate()
        if mode == "theirs":
            return (theirs.endpoint, theirs.endpoint) if theirs is not None else None
        relay = self.relay
        bound = relay.peer(peer.public_key) if relay is not None else None
        if relay is None or relay.relayed is None or bound is None:
            return None
        if mode == "own":
            return bound.local_endpoint, endpoint_of(*relay.relayed)
        # Both relay: the peer's datagrams come from its relayed address.
        return (bound.local_endpoint, theirs.endpoint) if theirs is not None else None

    def _relay_stale(self, peer: PeerPath) -> bool:
        """Whether a relayed peer's path no longer matches its mode (an allocation came or went).

        A new relayed address of the peer that WireGuard does not point at
        (both relay) is only shown.
        """
        mode = self._relay_mode(peer)
        target = self._relay_target(peer, mode) if mode is not None else None
        if mode != peer.relay_mode or target is None or target[0] != peer.wg_endpoint:
            return True
        if target[1] != peer.endpoint:
            self._set_path(peer, "relayed", target[1], target[0])
        return False

    async def _prepare_relay(self, peer: PeerPath) -> bool:
        """Make the relayed path ready: permit the peer on our allocation when it is used.

        In both relay mode the keepalives to the peer's relayed address start
        here, beside the direct checks, so that the relay is ready when they fail.
        """
        mode = self._relay_mode(peer)
        if mode not in ("both", "own"):
            return mode == "theirs"
        assert self.relay is not None
        permit = []
        for cand in peer.candidates:
            with contextlib.suppress(ValueError):
                permit.append(str(parse_endpoint(cand.endpoint)[0]))
        try:
            await self.relay.add_peer(peer.public_key, permit, SERVER_TIMEOUT)
        except (*_SERVER_ERRORS, OverlaydError) as exc:
            self._warn(f"cannot relay peer {peer.public_key} through this node's allocation: {exc}")
            return False
        if mode == "both":
            self._use_peer_relay(peer)
        if peer.path in ("direct", "guessed"):
            self.relay.set_inbound(peer.public_key, False)
        return True

    def _use_peer_relay(self, peer: PeerPath) -> None:
        """Both relay: take the peer's datagrams from its relayed address, keep our NAT open."""
        cand = peer.relay_candidate()
        if self.relay is None or cand is None:
            return
        with contextlib.suppress(ValueError):
            ip, port = parse_endpoint(cand.endpoint)
            self.relay.set_peer_relay(peer.public_key, (str(ip), port))

    def _leave_relay(self, peer: PeerPath) -> None:
        """A direct path works: what still arrives through a relay is not WireGuard's."""
        peer.relay_mode = None
        if self.relay is not None:
            self.relay.set_inbound(peer.public_key, False)
            self.relay.set_peer_relay(peer.public_key, None)

    async def _check_all(
        self, peer: PeerPath, candidates: Sequence[NatCandidate], pace: float
    ) -> None:
        """Send checks to every candidate every ``pace`` seconds until cancelled."""
        port = self.port
        assert port is not None
        addresses: list[tuple[str, Address]] = []
        for cand in candidates:
            try:
                ip, port_no = parse_endpoint(cand.endpoint)
            except ValueError:
                continue
            addresses.append((cand.endpoint, (str(ip), port_no)))
        while True:
            for endpoint, addr in addresses:
                msg = check_request(self.keys, peer.public_key)
                peer.pending_checks[msg.transaction_id] = endpoint
                if len(peer.pending_checks) > 512:
                    peer.pending_checks.pop(next(iter(peer.pending_checks)))
                port.expect(msg.transaction_id, self._check_waiter(peer, msg.transaction_id))
                port.send(msg, addr)
            await asyncio.sleep(pace)

    def _check_waiter(
        self, peer: PeerPath, tid: bytes
    ) -> asyncio.Future[tuple[stun.Message, Address]]:
        assert self._loop is not None
        fut: asyncio.Future[tuple[stun.Message, Address]] = self._loop.create_future()

        def done(f: asyncio.Future[tuple[stun.Message, Address]]) -> None:
            if self.port is not None:
                self.port.forget(tid)
            endpoint = peer.pending_checks.pop(tid, None)
            if f.cancelled() or endpoint is None:
                return
            reply, source = f.result()
            if verify_answer(self.keys, peer.public_key, reply) is None:
                return
            if endpoint_of(*source) != endpoint:
                return
            peer.valid[endpoint] = time.monotonic()
            peer.success.set()

        fut.add_done_callback(done)
        self._loop.call_later(max(self.settings.punch_timeout, 1.0), self._expire, tid, fut)
        return fut

    def _expire(self, tid: bytes, fut: asyncio.Future[Any]) -> None:
        if not fut.done():
            fut.cancel()

    def _on_check(self, request: stun.Message, source: Address) -> None:
        """A peer's check arrived on the WireGuard port: answer it, and check back."""
        port = self.port
        if port is None:
            return
        result = answer(self.keys, request, source, self.peers.keys())
        if result is None:
            return
        sender, reply = result
        port.send(reply, source)
        peer = self.peers.get(sender)
        if peer is None:
            return
        endpoint = endpoint_of(*source)
        if endpoint not in peer.valid:
            # A triggered check (RFC 8445 §7.3.1.4): the source may be a
            # peer-reflexive address the peer could not know it had.
            msg = check_request(self.keys, sender)
            peer.pending_checks[msg.transaction_id] = endpoint
            port.expect(msg.transaction_id, self._check_waiter(peer, msg.transaction_id))
            port.send(msg, source)

    async def _go_direct(self, peer: PeerPath) -> bool:
        """Point WireGuard at the best answering candidate and confirm with a handshake."""
        ranking = {c.endpoint: c for c in peer.candidates}
        tried = bool(peer.valid)
        for endpoint in sorted(
            peer.valid, key=lambda e: ranking[e].priority if e in ranking else 0, reverse=True
        ):
            if await self._confirm(peer, endpoint):
                cand = ranking.get(endpoint)
                kind: PathKind = "guessed" if cand is not None and cand.guessed else "direct"
                self._leave_relay(peer)
                self._set_path(peer, kind, endpoint, endpoint)
                return True
            peer.valid.pop(endpoint, None)
        if tried and peer.path == "relayed":
            peer.success.clear()
            await self._go_relayed(peer)  # put the working relay back
        return False

    async def _go_relayed(self, peer: PeerPath) -> bool:
        """Relay the pair in the mode both nodes derive; from both relay to one allocation
        when both relay does not confirm (the peer may relay through one only)."""
        mode = self._relay_mode(peer)
        if mode == "both":
            if await self._relay_via(peer, mode):
                return True
            if peer.success.is_set() or self._relay_mode(peer) != "both":
                return False  # a direct path answered, or the allocations changed
            log.info(
                "peer %s: no handshake with each node sending through its own allocation; "
                "relaying through one",
                peer.public_key,
            )
            peer.single_relay = True
            mode = self._relay_mode(peer)
        return mode is not None and await self._relay_via(peer, mode)

    async def _relay_via(self, peer: PeerPath, mode: RelayMode) -> bool:
        """Point WireGuard at the relayed path of ``mode`` and confirm it with a handshake."""
        target = self._relay_target(peer, mode)
        if target is None:
            return False
        wg_endpoint, shown = target
        if self.relay is not None and mode == "theirs":
            self.relay.remove_peer(peer.public_key)  # left from both relay: not used
        elif self.relay is not None:
            self.relay.set_inbound(peer.public_key, True)
            if mode == "both":
                self._use_peer_relay(peer)
            else:  # no keepalives, and the peer's datagrams come through our allocation
                self.relay.set_peer_relay(peer.public_key, None)
        if not await self._confirm(peer, wg_endpoint, interrupt=peer.success):
            return False
        log.info("peer %s: relayed, %s", peer.public_key, MODE_TEXT[mode])
        peer.relay_mode = mode
        self._set_path(peer, "relayed", shown, wg_endpoint)
        return True

    async def _point(self, peer: PeerPath, endpoint: str) -> None:
        await self._run(
            self.hooks.nat_set_endpoint,
            self.device,
            peer.public_key,
            endpoint,
            self._keepalive(peer.public_key),
        )

    async def _confirm(
        self, peer: PeerPath, endpoint: str, *, interrupt: asyncio.Event | None = None
    ) -> bool:
        """Point WireGuard at ``endpoint`` with a fresh session; True once it handshakes.

        Both nodes may re-create each other at the same moment, and an
        initiation that arrives while the peer is being re-created is lost;
        WireGuard itself would retry only after 5 s. So the re-creation (which
        sends a new initiation at once) is repeated every
        :func:`~overlayd.nat.pacing.resend_interval` (0.2 s on a LAN), after
        a few milliseconds of jitter, until a handshake shows.
        """
        again = resend_interval(self.server_rtt)
        await asyncio.sleep(secrets.randbelow(30) / 1000)
        await self._point(peer, endpoint)
        start = time.monotonic()
        deadline = start + self.settings.punch_timeout
        resend = start + again
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            if interrupt is not None and interrupt.is_set():
                return False  # a direct path answered: try that first
            if time.monotonic() >= resend:
                log.debug(
                    "peer %s: no handshake through %s after %.2f s; initiating again",
                    peer.public_key,
                    endpoint,
                    time.monotonic() - start,
                )
                await self._point(peer, endpoint)
                resend = time.monotonic() + again + secrets.randbelow(200) / 1000
            try:
                status = (await self.peer_poll.fresh()).get(peer.public_key)
            except OverlaydError:
                continue
            if status is not None and status.last_handshake_unix_secs > 0:
                peer.rx_bytes = status.rx_bytes
                peer.quiet_since = None
                return True
        log.info("peer %s: no handshake through %s", peer.public_key, endpoint)
        return False

    # -- reporting -------------------------------------------------------------

    def snapshot(self) -> tuple[tuple[NatCandidate, ...], list[PeerPath], list[str]]:
        warnings = list(dict.fromkeys([*self._standing, *self.warnings]))
        return self.local, list(self.peers.values()), warnings

    async def tick(self) -> None:
        """``nat_tick``: refresh now."""
        await self.refresh()
