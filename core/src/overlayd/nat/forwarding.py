"""The data plane of a TURN relay (:mod:`overlayd.nat.turn`): its forwarding thread.

One thread per allocation moves datagrams between the TURN client socket and
the local endpoints WireGuard sends to (one per relayed peer), never touching
the event loop (aioice's own ``sendto`` starts a task per datagram, which a
tunnel cannot afford). By default the thread runs the native forwarder
(``relay_forwarder.c``, :mod:`overlayd.nat.native`): an epoll loop in C that
moves datagrams in batches (``recvmmsg``/``sendmmsg``) and returns to Python
only for what needs it. Where it cannot be built, the same thread forwards in
Python with ``recvfrom_into``/``sendto`` on one preallocated buffer, one
datagram per system call. Both do the same:

* WireGuard -> TURN server: ChannelData on the peer's channel (the 4-byte
  header written in front of the payload); a Send indication while no
  channel is bound;
* TURN server -> WireGuard: ChannelData (or a Data indication) from the peer
  through this node's allocation, the header stripped; a STUN Binding
  indication inside (a peer's keepalive, see below) is dropped;
* a peer's relayed address -> WireGuard: in "both relay" mode the peer sends
  through *its own* allocation, so its datagrams reach this node's TURN
  socket from the peer's relayed address, not TURN-framed, and are handed to
  WireGuard as they are. The TURN socket is therefore not connected: every
  datagram is sent to the server by address, and a datagram from any other
  source than the server or a relayed peer's relayed address is dropped.

What arrives for a peer is handed to WireGuard from the peer's local
endpoint, so WireGuard sees one stable address per relayed peer.
"""

from __future__ import annotations

import abc
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
from dataclasses import dataclass
from typing import Final

from aioice import stun

from overlayd.nat import native
from overlayd.nat.candidates import endpoint_of

__all__ = ["KEEPALIVE_MESSAGE", "DataPlane", "RelayedPeer", "is_keepalive", "socket_address"]

log = logging.getLogger(__name__)

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
#: Largest datagram either side may carry, with a ChannelData header.
_DATAGRAM: Final = 65536 + 4
#: A STUN Binding indication (RFC 8489 §6.3.2; no attributes): what a node
#: sends from its TURN socket to a peer's relayed address to open and keep its
#: NAT's mapping towards it. WireGuard messages never start with a zero byte.
KEEPALIVE_MESSAGE: Final = bytes(
    stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.INDICATION)
)
_KEEPALIVE_HEAD: Final = KEEPALIVE_MESSAGE[:2]
_COOKIE: Final = KEEPALIVE_MESSAGE[4:8]

Address = tuple[str, int]


def is_keepalive(data: bytes | memoryview) -> bool:
    """Whether ``data`` is a STUN Binding indication (a peer's keepalive)."""
    return len(data) >= 20 and data[:2] == _KEEPALIVE_HEAD and data[4:8] == _COOKIE


def socket_address(family: int, address: Address) -> Address:
    """``address`` as a socket of ``family`` reports a source (IPv4 mapped into IPv6)."""
    host, port = address
    if family != socket.AF_INET6:
        return host, port
    if ipaddress.ip_address(host).version == 4:
        host = "::ffff:" + host
    return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host)), port


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
    #: "Both relay" mode: the peer's relayed address. The peer's datagrams come
    #: from there (it sends through its own allocation) and keepalives go there.
    peer_relay: Address | None = None
    #: A datagram came from ``peer_relay``: the peer has learnt where to send.
    relay_seen: bool = False
    #: Monotonic time of the last keepalive sent to ``peer_relay``.
    keepalive_at: float = 0.0
    #: WireGuard's last datagram while ``remote`` was unknown (a handshake
    #: initiation), sent once it is learnt rather than after WireGuard's retry.
    held: bytes | None = None

    @property
    def local_endpoint(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return endpoint_of(host, port)


class DataPlane(abc.ABC):
    """The forwarding thread of one allocation and the tables it reads.

    The tables are rebuilt by the event loop (:meth:`_index`), never mutated
    in place; the thread reads whichever it finds. ``_peers``, ``_sock``,
    ``_server`` and ``_loop`` belong to the relay
    (:class:`overlayd.nat.turn.TurnRelay`).
    """

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        self._sock: socket.socket | None = None
        #: The TURN server's address, as the TURN socket reports a source.
        self._server: Address | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: dict[str, RelayedPeer] = {}
        self._by_channel: dict[int, RelayedPeer] = {}
        self._by_fd: dict[int, RelayedPeer] = {}
        self._by_ip: dict[str, RelayedPeer | None] = {}
        self._by_relay: dict[Address, RelayedPeer] = {}
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
    def _family(self) -> int:
        sock = self._sock
        return sock.family if sock is not None else socket.AF_INET

    @abc.abstractmethod
    def _learnt(self, peer: RelayedPeer, remote: Address) -> None:
        """(loop) The peer's packets come from ``remote`` (the relay binds a channel)."""

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
            name=f"overlayd-turn-{self._server}",
            daemon=True,
        )
        self._thread.start()

    def _index(self) -> None:
        """Rebuild the lookup tables the forwarding thread reads (copied, never mutated)."""
        by_ip: dict[str, RelayedPeer | None] = {}
        for peer in self._peers.values():
            for ip in peer.permitted:
                by_ip[ip] = None if ip in by_ip else peer  # None: shared, ambiguous
        self._by_ip = by_ip
        self._by_channel = {p.channel: p for p in self._peers.values() if p.channel is not None}
        self._by_fd = {p.sock.fileno(): p for p in self._peers.values()}
        family = self._family
        self._by_relay = {
            socket_address(family, p.peer_relay): p
            for p in self._peers.values()
            if p.peer_relay is not None
        }
        self._changed()

    def _changed(self) -> None:
        """Make the native forwarder reload its table (the Python one reads the dicts)."""
        self._generation += 1
        if self._lib is not None and self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"t")

    # -- the Python forwarder --------------------------------------------------

    def _forward(self) -> None:
        sock, server = self._sock, self._server
        assert sock is not None and server is not None
        turn_fd = sock.fileno()
        buf = bytearray(_DATAGRAM)
        view = memoryview(buf)
        payload = view[4:]
        pack_into = _CHANNEL.pack_into
        recvfrom_into = sock.recvfrom_into
        sendto = sock.sendto
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
                            n, source = recvfrom_into(buf)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:
                            log.debug("TURN socket receive failed: %s", exc)
                            break
                        if source[:2] != server:
                            peer = self._by_relay.get(source[:2])
                            if peer is not None:
                                self._from_peer_relay(peer, view[:n])
                        elif n >= 4 and buf[0] & 0xC0 == 0x40:
                            channel, length = _CHANNEL.unpack_from(buf)
                            peer = self._by_channel.get(channel)
                            if peer is None or not peer.inbound or length > n - 4:
                                continue
                            if not is_keepalive(view[4 : 4 + length]):
                                self._deliver(peer, view[4 : 4 + length])
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
                            sendto(view[: 4 + n], server)
                            self.sent += 1
                        except OSError:
                            self.dropped += 1

    # -- the native forwarder --------------------------------------------------

    def _forward_native(self) -> None:
        """The C forwarder's loop; Python sees only what it returns (see relay_forwarder.c)."""
        lib, sock, wake, server = self._lib, self._sock, self._wake_r, self._server
        assert lib is not None and sock is not None and wake is not None and server is not None
        ctx = lib.ovl_fwd_new(sock.fileno(), wake.fileno(), native.sockaddr(sock.family, server))
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
                elif code in (native.PEER, native.RAW):
                    peer = self._by_fd.get(out_fd.value)
                    if peer is not None and code == native.PEER:
                        self._from_wireguard(peer, buf.raw[:n])
                    elif peer is not None:
                        self._from_peer_relay(peer, buf.raw[:n])
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
        count, size = len(peers), max(len(peers), 1)
        family = self._family
        fds = (ctypes.c_int * size)(*(fd for fd, _ in peers))
        channels = (ctypes.c_uint16 * size)(*(p.channel or 0 for _, p in peers))
        inbound = (ctypes.c_uint8 * size)(*(int(p.inbound) for _, p in peers))
        relays = b"".join(native.sockaddr(family, p.peer_relay) for _, p in peers)
        # From the peer's relayed address: 2 hand to Python (not seen yet), 1 deliver, 0 drop.
        raw = (ctypes.c_uint8 * size)(
            *(2 if not p.relay_seen else int(p.inbound) for _, p in peers)
        )
        err = lib.ovl_fwd_table(ctx, count, fds, channels, inbound, relays, raw)
        if err < 0:
            log.warning("the native relay forwarder kept its old peer table: %s", os.strerror(-err))
            return -1
        with self._retired_lock:
            done = [s for g, s in self._retired if g <= generation]
            self._retired = [(g, s) for g, s in self._retired if g > generation]
        for retired in done:
            retired.close()
        return generation

    # -- off the fast path (both forwarders) -------------------------------------

    def _from_turn(self, data: bytes) -> None:
        """(forwarding thread) A datagram from the TURN server that the native loop passed up.

        STUN (answers, Data indications), or ChannelData of a channel bound
        after the native loop loaded its table.
        """
        if len(data) >= 4 and data[0] & 0xC0 == 0x40:
            channel, length = _CHANNEL.unpack_from(data)
            peer = self._by_channel.get(channel)
            content = data[4 : 4 + length]
            if (
                peer is not None
                and peer.inbound
                and length <= len(data) - 4
                and not is_keepalive(content)
            ):
                self._deliver(peer, content)
        elif len(data) >= 20 and data[0] == 0x00 and data[1] == _DATA_INDICATION:
            self._data_indication(data)
        else:
            self._to_control(data)

    def _from_peer_relay(self, peer: RelayedPeer, data: bytes | memoryview) -> None:
        """(forwarding thread) A datagram the peer sent through its own allocation."""
        if not peer.relay_seen:
            # The peer has learnt where to send: keepalives slow down, and the
            # native table delivers from now on (same thread: no race).
            peer.relay_seen = True
            self._generation += 1
        if peer.inbound:
            self._deliver(peer, data)

    def _deliver(self, peer: RelayedPeer, data: bytes | memoryview) -> None:
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
        sock, server = self._sock, self._server
        if sock is None or server is None:
            self.dropped += 1
            return
        if peer.channel is None and peer.remote is None:
            peer.held = data  # where the peer is is not known yet
            self.dropped += 1
            return
        try:
            if peer.channel is not None:
                sock.sendto(_CHANNEL.pack(peer.channel, len(data)) + data, server)
            else:
                assert peer.remote is not None
                sock.sendto(_send_indication(peer.remote, data), server)
            self.sent += 1
        except OSError:
            self.dropped += 1

    @abc.abstractmethod
    def _to_control(self, data: bytes) -> None:
        """(forwarding thread) A STUN message from the server for the control plane."""

    def _data_indication(self, data: bytes) -> None:
        """A peer sent before its channel is bound: deliver, and bind a channel to it.

        A keepalive (a peer in "both relay" mode opening its NAT towards this
        node's relayed address) is not delivered; it only tells where the peer is.
        """
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
            # WireGuard's held datagram goes first, as a Send indication: once
            # the loop hears of the address it may bind a channel at any moment.
            held, peer.held = peer.held, None
            if held is not None:
                self._from_wireguard(peer, held)
            if self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._learnt, peer, remote)
        if peer.inbound and not is_keepalive(content):
            self._deliver(peer, content)


def _send_indication(remote: Address, data: bytes) -> bytes:
    message = stun.Message(message_method=stun.Method.SEND, message_class=stun.Class.INDICATION)
    message.attributes["XOR-PEER-ADDRESS"] = remote
    message.attributes["DATA"] = data
    return bytes(message)
