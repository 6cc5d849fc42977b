"""A TURN allocation (RFC 8656) and the local UDP endpoints that relay WireGuard through it.

When no direct path works, one of the two nodes (the *owner*: the one with
the smaller public key among those with an allocation) relays through its
allocation. On the owner, WireGuard is pointed at a local endpoint
(``127.0.0.1:<port>``, one per relayed peer): what WireGuard sends there is
wrapped in ChannelData (Send indications until the channel is bound) and
relayed by the TURN server from the owner's relayed address to the peer;
what the peer sends to the relayed address arrives as ChannelData or Data
indications and is handed to WireGuard from the same local endpoint, so
WireGuard sees one stable address per relayed peer. The other node points
its WireGuard straight at the owner's relayed address: each packet crosses
the TURN server once and one relay hop of Python, not two.

The owner permits the peer's candidate IP addresses (RFC 8656 permissions
are per IP) before the peer sends; the port the peer's NAT uses towards the
relay is learnt from its first packet, and a channel is bound to it then.

The control plane (Allocate with long-term credentials, Refresh,
ChannelBind, which also installs the permission) is :mod:`aioice.turn`'s
client, run on the event loop. The data plane is a thread of its own,
never touching the event loop (aioice's own ``sendto`` starts a task per
datagram, which a tunnel cannot afford). By default (``relay_forwarder =
"auto"``) the thread runs the native forwarder (``relay_forwarder.c``,
:mod:`overlayd.nat.native`): an epoll loop in C that moves ChannelData in
batches (``recvmmsg``/``sendmmsg``, the 4-byte header written into headroom
in front of the payload) and returns to Python only for what needs it --
STUN answers and Data indications on the TURN socket, a peer whose channel
is not bound yet (Send indications), a changed peer table, stop. Where it
cannot be built, the same thread forwards in Python with ``recv_into``/``send``
on one preallocated buffer, one datagram per system call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from typing import Final
from typing import Literal

from aioice import stun
from aioice import turn

from overlayd.nat import native
from overlayd.nat.candidates import endpoint_of
from overlayd.nat.config import TurnServer
from overlayd.nat.rawport import SocketOpener

__all__ = ["RelayedPeer", "TurnRelay"]

log = logging.getLogger(__name__)

#: Allocation lifetime asked for (seconds); aioice refreshes at 5/6 of it.
LIFETIME: Final = 600
#: Channel bindings last 10 minutes (RFC 8656 §12); rebind well before.
CHANNEL_REFRESH: Final = 240.0
SOCKET_BUFFER: Final = 4 * 1024 * 1024
# Linux values; Python 3.11 does not name them.
_SO_SNDBUFFORCE: Final = 32
_SO_RCVBUFFORCE: Final = 33
_IP_MTU_DISCOVER: Final = 10
_IPV6_MTU_DISCOVER: Final = 23
_PMTUDISC_DONT: Final = 0


def _tune(sock: socket.socket, family: int) -> None:
    """Large buffers (a burst must not overflow them) and no DF bit.

    WireGuard's datagrams fill the underlay MTU; ChannelData adds 4 bytes, so
    the relayed datagram is a little larger than the path MTU. With path MTU
    discovery on (the UDP default) the kernel refuses to send it
    (``EMSGSIZE``); with it off the kernel fragments, which NATs and TURN
    servers reassemble.
    """
    for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    level, name = (
        (socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER)
        if family == socket.AF_INET6
        else (socket.IPPROTO_IP, _IP_MTU_DISCOVER)
    )
    with contextlib.suppress(OSError):
        sock.setsockopt(level, name, _PMTUDISC_DONT)


_CHANNEL: Final = struct.Struct("!HH")
#: Low byte of the STUN message type of a Data indication (0x0017).
_DATA_INDICATION: Final = 0x17

Address = tuple[str, int]
Forwarder = Literal["auto", "native", "python"]
#: Largest datagram either side may carry, with a ChannelData header.
_DATAGRAM: Final = 65536 + 4


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
            self._sock.send(data)


@dataclass
class RelayedPeer:
    """One peer reached through this node's allocation."""

    public_key: str
    #: Addresses the peer may send from (permissions are per IP address).
    permitted: frozenset[str]
    #: The local endpoint WireGuard sends to.
    sock: socket.socket
    #: Where the peer's packets reach the relayed address from (learnt from them).
    remote: Address | None = None
    #: Channel bound to ``remote``; until then Send indications carry the data.
    channel: int | None = None
    #: Deliver what arrives from the peer to WireGuard.
    inbound: bool = True
    permitted_at: float = 0.0
    bound_at: float = 0.0
    binding: bool = False

    @property
    def local_endpoint(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return endpoint_of(host, port)


class TurnRelay:
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
        self.server = server
        self.forwarder: Forwarder = forwarder
        self._lib: ctypes.CDLL | None = None
        self._opener = opener
        self.wg_port = wg_port
        self.relayed: Address | None = None
        self.mapped: Address | None = None
        self._sock: socket.socket | None = None
        self._control: _Control | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: dict[str, RelayedPeer] = {}
        self._by_channel: dict[int, RelayedPeer] = {}
        self._by_fd: dict[int, RelayedPeer] = {}
        self._by_ip: dict[str, RelayedPeer | None] = {}
        #: Address family WireGuard is reached on through loopback.
        self.wg_family = socket.AF_INET
        self._next_channel = 0x4000
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stop = False
        #: Bumped whenever what the native forwarder's table holds changes.
        self._generation = 0
        #: Local sockets of removed peers, closed by the native forwarding
        #: thread once it runs with a table (generation) without them.
        self._retired: list[tuple[int, socket.socket]] = []
        self._retired_lock = threading.Lock()
        #: Datagrams moved WireGuard -> TURN and TURN -> WireGuard, and dropped.
        self.sent = 0
        self.received = 0
        self.dropped = 0

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
            sock.connect(address)
            self._sock = sock
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

    def _start_thread(self) -> None:
        assert self._sock is not None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        if self._lib is None:
            # DefaultSelector is epoll on Linux; the loop drains every ready socket.
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._sock.fileno(), selectors.EVENT_READ)
            self._selector.register(self._wake_r.fileno(), selectors.EVENT_READ)
        self._thread = threading.Thread(
            target=self._forward if self._lib is None else self._forward_native,
            name=f"overlayd-turn-{self.server.url}",
            daemon=True,
        )
        self._thread.start()

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

    def _index(self) -> None:
        """Rebuild the lookup tables the forwarding thread reads (copied, never mutated)."""
        by_ip: dict[str, RelayedPeer | None] = {}
        for peer in self._peers.values():
            for ip in peer.permitted:
                by_ip[ip] = None if ip in by_ip else peer  # None: shared, ambiguous
        self._by_ip = by_ip
        self._by_channel = {p.channel: p for p in self._peers.values() if p.channel is not None}
        self._by_fd = {p.sock.fileno(): p for p in self._peers.values()}
        self._changed()

    def _changed(self) -> None:
        """Make the native forwarder reload its table (the Python one reads the dicts)."""
        self._generation += 1
        if self._lib is not None and self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"t")

    def _learnt(self, peer: RelayedPeer, remote: Address) -> None:
        """(loop) The peer's packets come from ``remote``: bind a channel to it."""
        if peer.remote != remote or peer.channel is not None or peer.binding:
            return  # another address since, or bound or binding already
        self._index()
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

    # -- data plane ------------------------------------------------------------

    def _forward(self) -> None:
        sock = self._sock
        assert sock is not None
        turn_fd = sock.fileno()
        buf = bytearray(65536 + 4)
        view = memoryview(buf)
        payload = view[4:]
        pack_into = _CHANNEL.pack_into
        recv_into = sock.recv_into
        send = sock.send
        selector = self._selector
        assert selector is not None and self._wake_r is not None
        wake_fd = self._wake_r.fileno()
        while not self._stop:
            try:
                ready = selector.select(1.0)
            except (OSError, ValueError):
                return
            for key, _ in ready:
                fd = key.fd
                if fd == turn_fd:
                    while True:
                        try:
                            n = recv_into(buf)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:
                            log.debug("TURN socket receive failed: %s", exc)
                            break
                        if n >= 4 and buf[0] & 0xC0 == 0x40:
                            channel, length = _CHANNEL.unpack_from(buf)
                            peer = self._by_channel.get(channel)
                            if peer is None or not peer.inbound or length > n - 4:
                                continue
                            try:
                                peer.sock.send(view[4 : 4 + length])
                                self.received += 1
                            except OSError:
                                self.dropped += 1
                        else:
                            self._from_turn(bytes(view[:n]))
                elif fd == wake_fd:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(512)
                else:
                    peer = self._by_fd.get(fd)
                    if peer is None:
                        continue
                    local_recv = peer.sock.recv_into
                    while True:
                        try:
                            n = local_recv(payload)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            break
                        channel = peer.channel
                        if channel is None:
                            self._from_wireguard(peer, bytes(payload[:n]))
                            continue
                        try:
                            pack_into(buf, 0, channel, n)
                            send(view[: 4 + n])
                            self.sent += 1
                        except OSError:
                            self.dropped += 1

    def _forward_native(self) -> None:
        """The C forwarder's loop; Python sees only what it returns (see relay_forwarder.c)."""
        lib, sock, wake = self._lib, self._sock, self._wake_r
        assert lib is not None and sock is not None and wake is not None
        ctx = lib.ovl_fwd_new(sock.fileno(), wake.fileno())
        if not ctx:
            log.error("the native relay forwarder could not start (out of memory)")
            return
        buf = ctypes.create_string_buffer(_DATAGRAM)
        out_len, out_fd = ctypes.c_int(), ctypes.c_int()
        stats = (ctypes.c_uint64 * 3)()
        counted = (0, 0, 0)
        loaded = -1
        try:
            while not self._stop:
                if loaded != self._generation:
                    loaded = self._load_table(lib, ctx)
                code = lib.ovl_fwd_run(
                    ctx, 1000, buf, _DATAGRAM, ctypes.byref(out_len), ctypes.byref(out_fd)
                )
                lib.ovl_fwd_stats(ctx, stats)
                self.sent += stats[0] - counted[0]
                self.received += stats[1] - counted[1]
                self.dropped += stats[2] - counted[2]
                counted = (stats[0], stats[1], stats[2])
                n = min(out_len.value, _DATAGRAM)
                if code == native.TURN:
                    self._from_turn(buf.raw[:n])
                elif code == native.PEER:
                    peer = self._by_fd.get(out_fd.value)
                    if peer is not None:
                        self._from_wireguard(peer, buf.raw[:n])
                elif code == native.WAKE:
                    with contextlib.suppress(OSError):
                        wake.recv(4096)
                elif code < 0:
                    log.error("the native relay forwarder failed: %s", os.strerror(-code))
                    return
        finally:
            lib.ovl_fwd_free(ctx)

    def _load_table(self, lib: ctypes.CDLL, ctx: int) -> int:
        """(forwarding thread) Hand the C loop the current peers; close retired sockets."""
        generation = self._generation
        peers = list(self._by_fd.items())
        count = len(peers)
        fds = (ctypes.c_int * max(count, 1))(*(fd for fd, _ in peers))
        channels = (ctypes.c_uint16 * max(count, 1))(*(p.channel or 0 for _, p in peers))
        inbound = (ctypes.c_uint8 * max(count, 1))(*(int(p.inbound) for _, p in peers))
        err = lib.ovl_fwd_table(ctx, count, fds, channels, inbound)
        if err < 0:
            log.warning("the native relay forwarder kept its old peer table: %s", os.strerror(-err))
            return -1
        with self._retired_lock:
            done = [s for g, s in self._retired if g <= generation]
            self._retired = [(g, s) for g, s in self._retired if g > generation]
        for retired in done:
            retired.close()
        return generation

    def _from_turn(self, data: bytes) -> None:
        """(forwarding thread) A datagram from the TURN socket that the native loop passed up.

        STUN (answers, Data indications), or ChannelData of a channel bound
        after the native loop loaded its table.
        """
        if len(data) >= 4 and data[0] & 0xC0 == 0x40:
            channel, length = _CHANNEL.unpack_from(data)
            peer = self._by_channel.get(channel)
            if peer is not None and peer.inbound and length <= len(data) - 4:
                self._deliver(peer, data[4 : 4 + length])
        elif len(data) >= 20 and data[0] == 0x00 and data[1] == _DATA_INDICATION:
            self._data_indication(data)
        else:
            self._to_control(data)

    def _deliver(self, peer: RelayedPeer, data: bytes) -> None:
        try:
            peer.sock.send(data)
            self.received += 1
        except OSError:
            self.dropped += 1

    def _from_wireguard(self, peer: RelayedPeer, data: bytes) -> None:
        """(forwarding thread) WireGuard's datagram for a peer off the fast path.

        A Send indication while no channel is bound; ChannelData when one was
        bound after the native loop loaded its table.
        """
        sock = self._sock
        if sock is None or (peer.channel is None and peer.remote is None):
            self.dropped += 1
            return
        try:
            if peer.channel is not None:
                sock.send(_CHANNEL.pack(peer.channel, len(data)) + data)
            else:
                assert peer.remote is not None
                sock.send(_send_indication(peer.remote, data))
            self.sent += 1
        except OSError:
            self.dropped += 1

    def _to_control(self, data: bytes) -> None:
        loop, control = self._loop, self._control
        if loop is not None and control is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(control.datagram_received, data, control.server)

    def _data_indication(self, data: bytes) -> None:
        """A peer sent before its channel is bound: deliver, and bind a channel to it."""
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        peer_address = message.attributes.get("XOR-PEER-ADDRESS")
        content = message.attributes.get("DATA")
        if not isinstance(peer_address, tuple) or not isinstance(content, bytes):
            return
        remote: Address = (str(peer_address[0]), int(peer_address[1]))
        peer = self._by_ip.get(remote[0])
        if peer is None:
            return  # unknown, or several relayed peers share that address
        if peer.remote != remote:
            # Set here, so WireGuard's answer to this very packet finds its way
            # (as a Send indication); the loop then binds a channel.
            peer.remote, peer.channel = remote, None
            self._generation += 1  # the native table loses the channel (same thread)
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._learnt, peer, remote)
        if peer.inbound:
            self._deliver(peer, content)

    # -- lifecycle -------------------------------------------------------------

    async def close(self, *, delete: bool = True) -> None:
        """Stop relaying; delete the allocation (bounded) unless ``delete`` is False."""
        control = self._control
        if delete and control is not None and not control.transport.is_closing():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(control.delete(), 2.0)
        elif control is not None and control.refresh_task is not None:
            control.refresh_task.cancel()
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


def _send_indication(remote: Address, data: bytes) -> bytes:
    message = stun.Message(message_method=stun.Method.SEND, message_class=stun.Class.INDICATION)
    message.attributes["XOR-PEER-ADDRESS"] = remote
    message.attributes["DATA"] = data
    return bytes(message)


def is_stun(data: bytes) -> bool:
    """Whether ``data`` looks like a STUN message (magic cookie in place)."""
    return len(data) >= 20 and data[4:8] == struct.pack("!I", stun.COOKIE)
