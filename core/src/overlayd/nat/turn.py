"""A TURN allocation (RFC 8656) and the local UDP endpoints that relay WireGuard through it.

When no direct path works, a pair of nodes relays in one of two modes, which
both nodes derive from the candidates (:mod:`overlayd.nat.agent`):

both relay (both nodes have an allocation)
   Each direction leaves through the *sender's* allocation, so no data
   datagram ever enters a relay port from outside (coturn reads its relay
   ports through a small buffer of its own choosing and drops bursts there,
   while its listening socket has a large one). Node A sends small
   keepalives (STUN Binding indications) from its TURN socket straight to B's
   relayed address RB. That opens A's NAT towards RB (even a symmetric NAT
   with port-dependent filtering then accepts what comes from RB), and B,
   which permitted A's addresses, learns A's mapping M_A from the first one
   (a Data indication) and binds a channel to it. B's WireGuard sends to B's
   local endpoint for A; B's forwarder wraps it in ChannelData to the TURN
   server, which sends it from RB to M_A; it reaches A's TURN socket as a
   plain datagram from RB, and A's forwarder hands it to A's WireGuard from
   A's local endpoint for B. The other direction is the same with the roles
   swapped: every node is sender on its own allocation and receiver of what
   its peers' allocations send to its TURN socket.
single owner (only one node has an allocation, or both relay did not work)
   The *owner* (the smaller public key among the nodes with an allocation)
   relays through its allocation. On the owner, WireGuard is pointed at a
   local endpoint: what WireGuard sends there is wrapped in ChannelData (Send
   indications until the channel is bound) and relayed by the TURN server
   from the owner's relayed address to the peer; what the peer sends to the
   relayed address arrives as ChannelData or Data indications and is handed to
   WireGuard from the same local endpoint. The other node points its
   WireGuard straight at the owner's relayed address.

Either way WireGuard sees one stable local endpoint (``127.0.0.1:<port>``) per
relayed peer, and each packet crosses the TURN server once and one
forwarding thread. The node permits the peer's candidate IP addresses (RFC
8656 permissions are per IP) before the peer sends; the port the peer's NAT
uses towards the relay is learnt from its first packet, and a channel is
bound to it then.

The control plane (Allocate with long-term credentials, Refresh,
ChannelBind, which also installs the permission) is :mod:`aioice.turn`'s
client, run on the event loop, sending to the server by address on the same
(unconnected) socket as the data plane, the forwarding thread of
:mod:`overlayd.nat.forwarding`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any
from typing import Final
from typing import Literal

from aioice import stun
from aioice import turn

from overlayd.nat import native
from overlayd.nat.config import TurnServer
from overlayd.nat.forwarding import KEEPALIVE_MESSAGE
from overlayd.nat.forwarding import DataPlane
from overlayd.nat.forwarding import RelayedPeer
from overlayd.nat.forwarding import _tune
from overlayd.nat.forwarding import socket_address
from overlayd.nat.rawport import SocketOpener

__all__ = ["KEEPALIVE", "MODE_TEXT", "RelayMode", "RelayedPeer", "TurnRelay", "relay_mode"]

log = logging.getLogger(__name__)

#: Allocation lifetime asked for (seconds); aioice refreshes at 5/6 of it.
LIFETIME: Final = 600
#: Channel bindings last 10 minutes (RFC 8656 §12); rebind well before.
CHANNEL_REFRESH: Final = 240.0
#: Keepalives to a peer's relayed address ("both relay"): this often once the
#: peer's datagrams arrive from there (NAT mappings of UDP last 30 s or more),
KEEPALIVE: Final = 10.0
#: and this often until they do (the peer may not have permitted us yet).
KEEPALIVE_EARLY: Final = 0.1

Address = tuple[str, int]
Forwarder = Literal["auto", "native", "python"]
#: How a pair relays: ``both`` (each node sends through its own allocation),
#: ``own`` or ``theirs`` (one allocation, this node's or the peer's).
RelayMode = Literal["both", "own", "theirs"]
#: How the log says it.
MODE_TEXT: Final[dict[RelayMode, str]] = {
    "both": "each node sends through its own allocation",
    "own": "through this node's allocation",
    "theirs": "through the peer's allocation",
}


def relay_mode(
    ours: bool, theirs: bool, own_key: str, peer_key: str, *, single: bool = False
) -> RelayMode | None:
    """How a pair relays, seen from the node with ``own_key`` (None: it cannot).

    ``ours``/``theirs``: whether this node and the peer have an allocation
    (offer a relayed candidate). Both nodes derive the same mode from the
    candidates: ``both`` when each has one, else the allocation of the node
    with the smaller public key among those that have one; that too when
    ``single`` (both relay did not confirm).
    """
    if ours and theirs and not single:
        return "both"
    if ours and (not theirs or own_key < peer_key):
        return "own"
    return "theirs" if theirs else None


class _Shim:
    """The transport aioice's client closes when its allocation is lost."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Control(turn.TurnClientMixin):
    """aioice's TURN client state machine, sending on our socket."""

    def __init__(self, sock: socket.socket, server: Address, username: str, password: str) -> None:
        super().__init__(
            server,
            username=username,
            password=password,
            lifetime=LIFETIME,
            channel_refresh_time=int(CHANNEL_REFRESH),
        )
        self._sock = sock
        self.transport: Any = _Shim()

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendto(data, self.server)


class TurnRelay(DataPlane):
    """One allocation on ``server`` and the relayed peers that use it.

    :param server: The TURN server and its long-term credentials.
    :param opener: Opens sockets in the WireGuard port's namespace (the local
        endpoints must be reachable by WireGuard on loopback there).
    :param wg_port: The WireGuard listen port the local endpoints send to.
    :param forwarder: ``native`` (the C forwarder; :meth:`start` fails when it
        cannot be built), ``python``, or ``auto`` (native when it builds).
    """

    def __init__(
        self,
        server: TurnServer,
        opener: SocketOpener,
        wg_port: int,
        forwarder: Forwarder = "auto",
    ) -> None:
        super().__init__()
        self.server = server
        self.forwarder: Forwarder = forwarder
        self._opener = opener
        self.wg_port = wg_port
        self.relayed: Address | None = None
        self.mapped: Address | None = None
        self._control: _Control | None = None
        #: Address family WireGuard is reached on through loopback.
        self.wg_family = socket.AF_INET
        self._next_channel = 0x4000
        self._keepalive_task: asyncio.Task[None] | None = None
        self._keepalive_wake = asyncio.Event()

    @property
    def alive(self) -> bool:
        return (
            self._control is not None
            and not self._control.transport.is_closing()
            and self._thread is not None
            and self._thread.is_alive()
        )

    async def probe(self, within: float) -> bool:
        """Refresh the allocation now (RFC 8656 §7); False when the server no longer has it.

        A NAT in front of this node that changed the client's mapping makes the
        server see another 5-tuple, which owns no allocation (437).
        """
        control = self._control
        if control is None or not self.alive:
            return False
        request = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
        request.attributes["LIFETIME"] = LIFETIME
        try:
            await asyncio.wait_for(control.request_with_retry(request), within)
        except (TimeoutError, OSError, ConnectionError, stun.TransactionError) as exc:
            log.info("TURN allocation %s is gone: %s", self.relayed, str(exc) or type(exc).__name__)
            return False
        return True

    async def start(self, within: float) -> Address:
        """Allocate; returns the relayed address. Raises OSError/TimeoutError/ConnectionError."""
        self._loop = asyncio.get_running_loop()
        host, port = self.server.address()
        infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"TURN server {self.server.url}: {host!r} does not resolve")
        family, _, _, _, sockaddr = infos[0]
        address: Address = (str(sockaddr[0]), int(sockaddr[1]))
        await self._load_forwarder()
        sock = self._opener(family, socket.SOCK_DGRAM, 0)
        try:
            sock.setblocking(False)
            _tune(sock, family)
            # Not connected: peers' relayed addresses send to it too ("both relay").
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            self._sock = sock
            self._server = socket_address(family, address)
            self._control = _Control(sock, address, self.server.username, self.server.credential)
            self._start_thread()
            relayed = await asyncio.wait_for(self._control.connect(), within)
        except BaseException:
            await self.close(delete=False)
            raise
        self.relayed = (str(relayed[0]), int(relayed[1]))
        log.info(
            "TURN relay on %s: %s forwarder",
            self.server.url,
            "native" if self._lib is not None else "Python",
        )
        mapped = self._control.mapped_address
        self.mapped = (str(mapped[0]), int(mapped[1])) if mapped else None
        return self.relayed

    async def _load_forwarder(self) -> None:
        """Build or load the native forwarder unless ``python`` (raises when ``native`` cannot)."""
        self._lib = None
        if self.forwarder == "python":
            return
        try:
            self._lib = await asyncio.get_running_loop().run_in_executor(None, native.load)
        except native.NativeUnavailable as exc:
            if self.forwarder == "native":
                raise native.NativeUnavailable(f"relay_forwarder = 'native': {exc}") from exc

    # -- peers ----------------------------------------------------------------

    async def add_peer(self, public_key: str, permit: Sequence[str], within: float) -> RelayedPeer:
        """Permit the peer's addresses on the allocation and open its local endpoint."""
        control = self._control
        if control is None or not self.alive:
            raise ConnectionError(f"the TURN allocation on {self.server.url} is gone")
        ips = frozenset(str(ipaddress.ip_address(ip)) for ip in permit)
        if not ips:
            raise ValueError("the peer offers no address to permit on the relay")
        peer = self._peers.get(public_key)
        now = time.monotonic()
        if peer is None or peer.permitted != ips or now - peer.permitted_at > CHANNEL_REFRESH:
            for ip in sorted(ips):
                request = stun.Message(
                    message_method=stun.Method.CREATE_PERMISSION,
                    message_class=stun.Class.REQUEST,
                )
                request.attributes["XOR-PEER-ADDRESS"] = (ip, 0)
                await asyncio.wait_for(control.request_with_retry(request), within)
        if peer is not None:
            peer.permitted, peer.permitted_at = ips, now
            self._index()
            if peer.channel is not None and peer.remote and now - peer.bound_at > CHANNEL_REFRESH:
                await asyncio.wait_for(control.channel_bind(peer.channel, peer.remote), within)
                peer.bound_at = time.monotonic()
            return peer
        family = socket.AF_INET6 if self.wg_family == socket.AF_INET6 else socket.AF_INET
        loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        local = self._opener(family, socket.SOCK_DGRAM, 0)
        try:
            local.setblocking(False)
            _tune(local, family)
            local.bind((loopback, 0))
            local.connect((loopback, self.wg_port))
        except BaseException:
            local.close()
            raise
        peer = RelayedPeer(public_key, ips, local, permitted_at=now)
        self._peers[public_key] = peer
        self._index()
        if self._selector is not None:
            self._selector.register(local.fileno(), selectors.EVENT_READ)
        return peer

    def _learnt(self, peer: RelayedPeer, remote: Address) -> None:
        """(loop) The peer's packets come from ``remote``: bind a channel to it.

        In "both relay" mode that is the peer's keepalive: it is now ready
        for ours, so one goes at once (it learns where this node is from it).
        """
        if peer.remote != remote or peer.channel is not None or peer.binding:
            return  # another address since, or bound or binding already
        self._index()
        if peer.peer_relay is not None:
            self._keepalive(peer)
        if self._loop is not None and not peer.binding:
            peer.binding = True
            self._loop.create_task(self._bind(peer, remote))

    async def _bind(self, peer: RelayedPeer, remote: Address) -> None:
        control = self._control
        try:
            if control is None or self._next_channel > turn.CHANNEL_NUMBER_MAX:
                return
            channel = self._next_channel
            self._next_channel += 1
            try:
                await asyncio.wait_for(control.channel_bind(channel, remote), 5.0)
            except (TimeoutError, OSError, ConnectionError, stun.TransactionError) as exc:
                log.info("binding a TURN channel to %s failed: %s", remote, exc)
                return
            if peer.remote == remote and self._peers.get(peer.public_key) is peer:
                peer.channel, peer.bound_at = channel, time.monotonic()
                self._index()
        finally:
            peer.binding = False

    def peer(self, public_key: str) -> RelayedPeer | None:
        return self._peers.get(public_key)

    def set_inbound(self, public_key: str, inbound: bool) -> None:
        peer = self._peers.get(public_key)
        if peer is not None and peer.inbound != inbound:
            peer.inbound = inbound
            self._changed()

    def set_peer_relay(self, public_key: str, relayed: Address | None) -> None:
        """Both relay mode with the peer whose relayed address is ``relayed`` (None: not).

        Datagrams from that address on the TURN socket are the peer's, and
        keepalives go there: one at once, then every :data:`KEEPALIVE_EARLY`
        seconds until the peer's datagrams arrive, then every :data:`KEEPALIVE`.
        """
        peer = self._peers.get(public_key)
        if peer is None or peer.peer_relay == relayed:
            return
        peer.peer_relay, peer.relay_seen = relayed, False
        self._index()
        if relayed is None:
            return
        self._keepalive(peer)
        self._keepalive_wake.set()
        if self._keepalive_task is None or self._keepalive_task.done():
            self._keepalive_task = asyncio.get_running_loop().create_task(self._keepalives())

    def _keepalive(self, peer: RelayedPeer) -> None:
        sock = self._sock
        if sock is None or peer.peer_relay is None:
            return
        peer.keepalive_at = time.monotonic()
        with contextlib.suppress(OSError, ValueError):
            sock.sendto(KEEPALIVE_MESSAGE, socket_address(sock.family, peer.peer_relay))

    async def _keepalives(self) -> None:
        """(loop) Send the keepalives that are due; ends when no peer needs them."""
        while not self._stop:
            now = time.monotonic()
            due: float | None = None
            for peer in list(self._peers.values()):
                if peer.peer_relay is None:
                    continue
                # An unseen peer is looked at every KEEPALIVE_EARLY (the
                # forwarding thread marks it seen).
                every = KEEPALIVE if peer.relay_seen else KEEPALIVE_EARLY
                if now - peer.keepalive_at >= every:
                    self._keepalive(peer)
                left = every - (time.monotonic() - peer.keepalive_at)
                due = left if due is None else min(due, left)
            if due is None:
                return
            self._keepalive_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._keepalive_wake.wait(), max(due, 0.01))

    def remove_peer(self, public_key: str) -> None:
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return
        fd = peer.sock.fileno()
        self._index()
        if self._selector is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self._selector.unregister(fd)
        if self._lib is not None and self._thread is not None and self._thread.is_alive():
            # The C loop may be reading it right now: it is closed once the
            # thread has loaded a table without it (its fd is not reused before).
            with self._retired_lock:
                self._retired.append((self._generation, peer.sock))
            return
        peer.sock.close()

    def peers(self) -> list[RelayedPeer]:
        return list(self._peers.values())

    def _to_control(self, data: bytes) -> None:
        """(forwarding thread) A STUN message from the server for aioice's client."""
        loop, control = self._loop, self._control
        if loop is not None and control is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(control.datagram_received, data, control.server)

    # -- lifecycle -------------------------------------------------------------

    async def close(self, *, delete: bool = True) -> None:
        """Stop relaying; delete the allocation (bounded) unless ``delete`` is False."""
        control = self._control
        if delete and control is not None and not control.transport.is_closing():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(control.delete(), 2.0)
        elif control is not None and control.refresh_task is not None:
            control.refresh_task.cancel()
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        for key in list(self._peers):
            self.remove_peer(key)
        self._stop = True
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 3.0)
        self._thread = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for wake in (self._wake_r, self._wake_w):
            if wake is not None:
                wake.close()
        self._wake_r = self._wake_w = None
        with self._retired_lock:
            retired, self._retired = self._retired, []
        for _, leftover in retired:
            leftover.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._control = None
