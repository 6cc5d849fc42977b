"""The asyncio DNS server: its listeners, records and TCP connections.

How a query is answered is in ``_answer.py`` (:class:`QueryAnswers`), how
one is forwarded in ``_upstream.py`` (:class:`Forwarding`); the server is
the two together with the sockets that feed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Coroutine
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Final
from typing import TypeVar
from typing import cast

from overlayd.dns import _snapshot
from overlayd.dns._answer import DnsStats
from overlayd.dns._answer import QueryAnswers
from overlayd.dns._config import DnsConfig
from overlayd.dns._config import HostPort
from overlayd.dns._config import normalize_zone
from overlayd.dns._config import parse_hostport
from overlayd.dns._records import Address
from overlayd.dns._records import AddressLike
from overlayd.dns._records import RecordStore
from overlayd.dns._upstream import Forwarding
from overlayd.errors import DnsError
from overlayd.errors import InvalidRequest

__all__ = ["DnsServer", "DnsStats"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Forwarded queries one TCP connection may have in flight before we stop reading.
TCP_PIPELINE: Final = 16
_LEN: Final = struct.Struct("!H")


@dataclass
class _Listener:
    spec: HostPort
    bound: HostPort
    udp: asyncio.DatagramTransport
    udp_proto: _UdpProtocol
    tcp: asyncio.Server
    conns: set[asyncio.StreamWriter] = field(default_factory=set)
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)


class DnsServer(QueryAnswers, Forwarding):
    """Authoritative server for one zone plus a forwarder for everything else.

    Records may be changed from any thread at any time (``set_records`` and
    friends): that only swaps dictionary entries, it never touches a socket.
    Listeners are opened and closed on the event loop that ran :meth:`start`;
    :meth:`set_listeners` only opens and closes the difference. From another
    thread use :meth:`call_threadsafe`.
    """

    def __init__(self, config: DnsConfig | None = None) -> None:
        self.config = config or DnsConfig()
        self.stats = DnsStats()
        self._store = RecordStore(self.config.zone, self.config.ttl)
        self._listeners: dict[HostPort, _Listener] = {}
        self._wanted = [parse_hostport(a) for a in self.config.listen]
        self._upstreams = [parse_hostport(a) for a in self.config.upstreams]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwarding = 0
        self._tcp_count = 0
        self._listen_lock: asyncio.Lock | None = None
        self._live: list[HostPort] = []
        self._ra = False
        self._update_upstreams()

    # -- properties ----------------------------------------------------------------

    @property
    def zone(self) -> str:
        """The zone, absolute and lower case (``prod.local.``)."""
        return self._store.zone.name.to_text()

    @property
    def listeners(self) -> dict[str, HostPort]:
        """Open listeners: requested address text → bound address (real port)."""
        return {str(k): v.bound for k, v in self._listeners.items()}

    def _update_upstreams(self) -> None:
        # Never forward to one of our own sockets: that would loop.
        ours = {(b.host, b.port) for b in (x.bound for x in self._listeners.values())}
        self._live = [u for u in self._upstreams if (u.host, u.port) not in ours]
        self._ra = self.config.forward and bool(self._live)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the configured listeners; on a failure close all and raise DnsError."""
        if self._loop is not None:
            raise InvalidRequest("The DNS server is already started.")
        self._loop = asyncio.get_running_loop()
        self._listen_lock = asyncio.Lock()
        try:
            for spec in self._wanted:
                await self.add_listener(str(spec))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close every listener and connection and cancel forwarded queries."""
        for spec in list(self._listeners):
            await self._close(spec)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None
        self._listen_lock = None

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- listeners -----------------------------------------------------------------

    async def add_listener(self, addr: str) -> HostPort:
        """Listen on ``addr`` (UDP and TCP); return the bound address. Idempotent."""
        spec = parse_hostport(addr)
        lock = self._require_started()
        async with lock:
            if spec not in self._wanted:
                self._wanted.append(spec)
            existing = self._listeners.get(spec)
            if existing is not None:
                return existing.bound
            listener = await self._open(spec)
            self._listeners[spec] = listener
            self._update_upstreams()
            logger.info("DNS server listening on %s (UDP+TCP)", listener.bound)
            return listener.bound

    async def remove_listener(self, addr: str) -> None:
        """Stop listening on ``addr`` and close its TCP connections (no-op)."""
        spec = parse_hostport(addr)
        lock = self._require_started()
        async with lock:
            if spec in self._wanted:
                self._wanted.remove(spec)
            await self._close(spec)

    async def set_listeners(self, addrs: Iterable[str]) -> None:
        """Listen on exactly ``addrs``: open the new ones, close the removed ones.

        Unchanged listeners are not touched. When some addresses cannot be
        bound the others are still opened, then :class:`DnsError` lists the
        failures.
        """
        wanted = list(dict.fromkeys(parse_hostport(a) for a in addrs))
        lock = self._require_started()
        failures: list[str] = []
        async with lock:
            self._wanted = wanted
            for spec in [s for s in self._listeners if s not in wanted]:
                await self._close(spec)
            for spec in wanted:
                if spec in self._listeners:
                    continue
                try:
                    self._listeners[spec] = await self._open(spec)
                except DnsError as exc:
                    failures.append(str(exc))
                else:
                    self._update_upstreams()
                    logger.info("DNS server listening on %s (UDP+TCP)", spec)
        if failures:
            raise DnsError(" ".join(failures), op="dns_serve")

    def _require_started(self) -> asyncio.Lock:
        if self._listen_lock is None:
            raise InvalidRequest("The DNS server is not started; call start() first.")
        return self._listen_lock

    async def _open(self, spec: HostPort) -> _Listener:
        loop = asyncio.get_running_loop()
        usock, tsock = self._bind_pair(spec)
        try:
            bound = HostPort(spec.host, usock.getsockname()[1], spec.version)
            local = None if spec.host in ("0.0.0.0", "::") else spec.host
            udp, udp_proto = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self, local), sock=usock
            )
        except BaseException:
            usock.close()
            tsock.close()
            raise
        conns: set[asyncio.StreamWriter] = set()

        handlers: set[asyncio.Task[Any]] = set()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                handlers.add(task)
            try:
                await self._tcp_client(reader, writer, conns, local)
            finally:
                if task is not None:
                    handlers.discard(task)

        try:
            tcp = await asyncio.start_server(on_client, sock=tsock, backlog=128)
        except BaseException:
            udp.close()
            tsock.close()
            raise
        return _Listener(spec, bound, udp, udp_proto, tcp, conns, handlers)

    @staticmethod
    def _bind_pair(spec: HostPort) -> tuple[socket.socket, socket.socket]:
        """Bind a UDP and a TCP socket on the same port (ephemeral for port 0)."""
        family = socket.AF_INET6 if spec.version == 6 else socket.AF_INET
        attempts = 20 if spec.port == 0 else 1
        last: OSError | None = None
        for _ in range(attempts):
            usock = _bind(family, socket.SOCK_DGRAM, spec.host, spec.port)
            port = usock.getsockname()[1]
            try:
                tsock = _bind(family, socket.SOCK_STREAM, spec.host, port)
            except DnsError as exc:
                usock.close()
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                    last = cause
                    continue
                raise
            return usock, tsock
        raise DnsError(
            f"Cannot find a port free for both UDP and TCP on {spec.host}: {last}.",
            op="dns_serve",
        )

    async def _close(self, spec: HostPort) -> None:
        listener = self._listeners.pop(spec, None)
        if listener is None:
            return
        self._update_upstreams()
        listener.udp.close()
        listener.tcp.close()
        # The socket is closed a loop iteration later; wait so the port is free.
        await asyncio.wait([listener.udp_proto.closed], timeout=2.0)
        for writer in list(listener.conns):
            writer.transport.abort()
        if listener.handlers:
            # Let the connection handlers see the abort and finish on their own.
            await asyncio.wait(listener.handlers, timeout=2.0)
        await listener.tcp.wait_closed()
        logger.info("DNS server stopped listening on %s", listener.bound)

    # -- records (any thread) ------------------------------------------------------

    def set_records(self, name: str, ips: Iterable[AddressLike]) -> None:
        """Make ``ips`` the complete address list of ``name``; empty removes it."""
        self._store.set_records(name, ips)

    def add_record(self, name: str, ip: AddressLike) -> None:
        """Add ``ip`` to ``name``; a no-op when present."""
        self._store.add_record(name, ip)

    def remove_record(self, name: str, ip: AddressLike | None = None) -> None:
        """Remove ``ip`` from ``name``, or the whole name when ``ip`` is None."""
        self._store.remove_record(name, ip)

    def update_records(
        self,
        removed: Iterable[tuple[str, AddressLike]],
        added: Iterable[tuple[str, AddressLike]],
    ) -> None:
        """Remove, then add, many ``(name, address)`` pairs (each name rebuilt once)."""
        self._store.update(removed, added)

    def keep_tables(self, path: Path, fingerprint: str) -> None:
        """Write the record tables to ``path`` under ``fingerprint`` (:mod:`._snapshot`)."""
        _snapshot.write(path, self._store.tables, fingerprint, self._store.ttl)

    def reuse_tables(self, path: Path, fingerprint: str) -> bool:
        """Serve the tables kept in ``path`` if kept under ``fingerprint`` with this TTL.

        False (nothing changed) when they were not, or when records are held already.
        """
        tables = _snapshot.read(path, fingerprint, self._store.ttl)
        return tables is not None and self._store.take_tables(tables)

    def replace_all(self, mapping: Mapping[str, Iterable[AddressLike]]) -> None:
        """Replace every record at once with ``mapping`` (name → addresses)."""
        self._store.replace_all(mapping)

    def get_records(self, name: str) -> list[Address]:
        """Addresses of ``name`` (relative or absolute); empty when unknown."""
        return self._store.get(name)

    def records(self) -> dict[str, list[Address]]:
        """Every record: absolute name → addresses."""
        return self._store.snapshot()

    def set_zone(self, zone: str) -> None:
        """Serve the same records under ``zone`` (records are kept relative)."""
        self._store.set_zone(normalize_zone(zone))

    def call_threadsafe(self, coro: Coroutine[Any, Any, _T], timeout: float | None = 10.0) -> _T:
        """Run ``coro`` (e.g. ``set_listeners(...)``) on the server's loop; wait."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise InvalidRequest("The DNS server is not started; call start() first.")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise InvalidRequest(
                "call_threadsafe() was called on the server's own event loop; "
                "await the coroutine instead."
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    # -- TCP -----------------------------------------------------------------------

    async def _tcp_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conns: set[asyncio.StreamWriter],
        local: str | None,
    ) -> None:
        if self._tcp_count >= self.config.max_tcp_connections:
            self.stats.dropped += 1
            writer.transport.abort()
            return
        self._tcp_count += 1
        conns.add(writer)
        pending: set[asyncio.Task[None]] = set()
        idle = self.config.tcp_idle_timeout
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        (length,) = _LEN.unpack(await reader.readexactly(2))
                        data = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                if not data:
                    break
                result = self._guarded(data, local, True)
                if isinstance(result, bytes):
                    writer.write(_LEN.pack(len(result)) + result)
                    try:
                        await writer.drain()
                    except ConnectionError:
                        break
                elif result is not None:

                    def send(reply: bytes) -> None:
                        if writer.is_closing():
                            raise RuntimeError("the client closed the TCP connection")
                        writer.write(_LEN.pack(len(reply)) + reply)

                    task = asyncio.get_running_loop().create_task(
                        self._forward_and_send(result, send)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    if len(pending) >= TCP_PIPELINE:
                        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                # The client may half-close after its last query: finish the answers.
                await asyncio.wait(pending)
        finally:
            self._tcp_count -= 1
            conns.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer, local: str | None) -> None:
        self._server = server
        self._local = local
        self._transport: asyncio.DatagramTransport | None = None
        #: Set once the socket is really closed (the port can be bound again).
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio gives datagram protocols a datagram transport (typeshed says Base).
        self._transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        result = self._server._guarded(data, self._local, False)
        if result is None:
            return
        transport = self._transport
        if transport is None:
            return
        if isinstance(result, bytes):
            transport.sendto(result, addr)
            return

        def send(reply: bytes) -> None:
            if transport.is_closing():
                raise RuntimeError("the listener was closed")
            transport.sendto(reply, addr)

        self._server._spawn_forward(result, send)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from replies to clients that went away; nothing to do.
        logger.debug("DNS UDP listener error: %s", exc)


def _bind(family: int, kind: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        # getaddrinfo resolves an IPv6 scope (fe80::1%br0) to the sockaddr bind() needs.
        info = socket.getaddrinfo(host, port, family, kind, 0, socket.AI_NUMERICHOST)
        sock.bind(info[0][4])
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        raise DnsError(
            f"Cannot listen for DNS on {host} port {port}/{proto}: "
            f"{exc.strerror or exc}; "
            "check that the address is configured on this host and the port is free.",
            op="dns_serve",
        ) from exc
    return sock
