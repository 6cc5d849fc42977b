"""overlayd IPC client: :class:`AsyncClient` and the sync :class:`Client`.

One connection carries every call; concurrent calls are matched to their
responses by ``id``. The daemon pushes events only to connections that
subscribed: :meth:`AsyncClient.subscribe` (or :meth:`AsyncClient.events`)
subscribes this client's connection (``hello`` with ``events``) and returns an
async iterator of the events; the subscription is renewed after a reconnect.
The client connects lazily, retrying with exponential backoff while the daemon
starts; when the connection breaks, calls in flight fail with
:class:`ConnectionLost` (they are never re-sent, since an op may have taken
effect) and the next call reconnects.

::

    async with AsyncClient("/var/run/zlayer-overlayd.sock") as client:
        print(await client.status())
        async with await client.subscribe(["peer_health_changed"]) as events:
            async for event in events:
                print(event)

    with Client() as client:                  # same methods, blocking
        client.add_peer(key, "node2:51820", "10.200.1.0/28")

:class:`~overlayd.rawclient.RawClient` (re-exported here) is the blocking,
standard-library-only client for short-lived processes: plain dicts in and
out, a few milliseconds to import.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import AsyncGenerator
from collections.abc import Coroutine
from collections.abc import Generator
from collections.abc import Iterable
from types import TracebackType
from typing import Any
from typing import Final
from typing import TypeVar

from overlayd import __version__
from overlayd.errors import OverlaydError
from overlayd.eventstream import DISCONNECTED
from overlayd.eventstream import EventStream
from overlayd.eventstream import SyncEventStream
from overlayd.eventstream import event_kinds
from overlayd.protocol import PROTOCOL_VERSION
from overlayd.protocol import AddAllowedIpRequest
from overlayd.protocol import AddPeerRequest
from overlayd.protocol import AllocateIpRequest
from overlayd.protocol import AnyEvent
from overlayd.protocol import AnyHandle
from overlayd.protocol import AnyRequest
from overlayd.protocol import AnyResponse
from overlayd.protocol import AnyScope
from overlayd.protocol import ApplyPeersRequest
from overlayd.protocol import AttachContainerRequest
from overlayd.protocol import AttachedResponse
from overlayd.protocol import AttachInterfaceRequest
from overlayd.protocol import AttachmentInfo
from overlayd.protocol import AttachmentResponse
from overlayd.protocol import AttachmentsResponse
from overlayd.protocol import BridgeNameResponse
from overlayd.protocol import ClusterStatusRequest
from overlayd.protocol import ClusterStatusResponse
from overlayd.protocol import DetachContainerRequest
from overlayd.protocol import ErrResponse
from overlayd.protocol import EventFrame
from overlayd.protocol import GcReportResponse
from overlayd.protocol import GcRequest
from overlayd.protocol import GlobalScope
from overlayd.protocol import GuestConfigResponse
from overlayd.protocol import HelloRequest
from overlayd.protocol import HelloResponse
from overlayd.protocol import IpResponse
from overlayd.protocol import LeaseInfo
from overlayd.protocol import LeasesResponse
from overlayd.protocol import ListAttachmentsRequest
from overlayd.protocol import ListLeasesRequest
from overlayd.protocol import MapPortRequest
from overlayd.protocol import NatCandidateInfo
from overlayd.protocol import NatPeerCandidatesRequest
from overlayd.protocol import NatTickRequest
from overlayd.protocol import OkResponse
from overlayd.protocol import OverlayModeName
from overlayd.protocol import PeerChange
from overlayd.protocol import ProtocolError
from overlayd.protocol import ReconcileReportResponse
from overlayd.protocol import ReconcileRequest
from overlayd.protocol import RegisterDnsRequest
from overlayd.protocol import ReleaseIpRequest
from overlayd.protocol import RemoveAllowedIpRequest
from overlayd.protocol import RemovePeerRequest
from overlayd.protocol import RequestFrame
from overlayd.protocol import ResponseFrame
from overlayd.protocol import ServiceOverlayResponse
from overlayd.protocol import ServiceScope
from overlayd.protocol import SetLocalNodeIdRequest
from overlayd.protocol import SetLocalWgPubkeyRequest
from overlayd.protocol import SetupGlobalOverlayRequest
from overlayd.protocol import SetupServiceOverlayRequest
from overlayd.protocol import ShutdownRequest
from overlayd.protocol import StatusRequest
from overlayd.protocol import StatusResponse
from overlayd.protocol import TeardownGlobalOverlayRequest
from overlayd.protocol import TeardownServiceOverlayRequest
from overlayd.protocol import UnmapPortRequest
from overlayd.protocol import UnregisterDnsRequest
from overlayd.protocol import decode_frame
from overlayd.protocol import encode_body
from overlayd.rawclient import ClientClosed
from overlayd.rawclient import ConnectError
from overlayd.rawclient import ConnectionLost
from overlayd.rawclient import RawClient
from overlayd.rawclient import RemoteError
from overlayd.rawclient import RequestTimeout
from overlayd.rawclient import UnexpectedResponse
from overlayd.transport import DEFAULT_SOCKET
from overlayd.transport import FramingError
from overlayd.transport import open_connection
from overlayd.transport import read_frame
from overlayd.transport import write_frame

__all__ = [
    "AsyncClient",
    "Client",
    "ClientClosed",
    "ConnectError",
    "ConnectionLost",
    "EventStream",
    "RawClient",
    "RemoteError",
    "RequestTimeout",
    "SyncEventStream",
    "UnexpectedResponse",
]

log = logging.getLogger(__name__)

_R = TypeVar("_R", bound=AnyResponse)
_T = TypeVar("_T")

#: Connect errors that mean "the daemon is not there yet": retried with backoff.
_RETRYABLE: Final = (FileNotFoundError, ConnectionError, BlockingIOError)


class _Unset:
    """Marker for "use the client's default timeout"."""


_UNSET: Final = _Unset()


def _scope(service: str | None) -> AnyScope:
    return GlobalScope() if service is None else ServiceScope(service=service)


def _cidrs(value: str | Iterable[str]) -> str:
    return value if isinstance(value, str) else ",".join(value)


class _Connection:
    """One live connection: its streams, reader task and calls awaiting answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[AnyResponse]] = {}
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        #: The event kinds this connection is subscribed to.
        self.subscribed: frozenset[str] = frozenset()

    def fail(self, exc: OverlaydError) -> None:
        """Mark closed, fail every pending call with ``exc`` and close the socket."""
        if self.closed:
            return
        self.closed = True
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)
        self.writer.close()


class AsyncClient:
    """asyncio client of the overlayd IPC protocol.

    :param address: Unix socket path, or ``\\\\.\\pipe\\<name>`` on Windows.
    :param timeout: Default seconds to wait for each answer (``None``: forever).
    :param connect_attempts: Connection attempts before :class:`ConnectError`.
    :param backoff: First retry delay in seconds; doubles up to ``max_backoff``.
    """

    def __init__(
        self,
        address: str = DEFAULT_SOCKET,
        *,
        timeout: float | None = 30.0,
        connect_attempts: int = 5,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
    ) -> None:
        if connect_attempts < 1:
            raise ValueError("connect_attempts must be at least 1")
        self.address = address
        self.timeout = timeout
        self.connect_attempts = connect_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._ids = itertools.count(1)
        self._conn: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._streams: set[EventStream] = set()
        self._closed = False

    # -- connection management ------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._conn is not None and not self._conn.closed

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    async def connect(self) -> None:
        """Open the connection now (calls do it lazily)."""
        await self._ensure_connected()

    async def close(self) -> None:
        """Close the connection; pending calls fail and event iterators end."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(ClientClosed("the overlayd client was closed"))
            if conn.task is not None:
                conn.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await conn.task
            with contextlib.suppress(OSError):
                await conn.writer.wait_closed()
        for stream in list(self._streams):
            stream._push(DISCONNECTED)

    async def _ensure_connected(self) -> _Connection:
        if self._closed:
            raise ClientClosed("the overlayd client was closed; create a new one")
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            reader, writer = await self._open()
            conn = _Connection(reader, writer)
            conn.task = asyncio.create_task(
                self._read_loop(conn), name=f"overlayd-client-reader {self.address}"
            )
            self._conn = conn
            return conn

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        delay = self.backoff
        last: OSError | None = None
        for attempt in range(1, self.connect_attempts + 1):
            try:
                return await open_connection(self.address)
            except _RETRYABLE as exc:
                last = exc
                if attempt == self.connect_attempts:
                    break
                log.debug(
                    "overlayd at %s not reachable (%s); retry %d in %.2fs",
                    self.address,
                    exc,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            except OSError as exc:
                raise ConnectError(
                    f"cannot connect to overlayd at {self.address}: {exc}; check the "
                    "socket path and that this user may open it (group zlayer)"
                ) from exc
        raise ConnectError(
            f"cannot connect to overlayd at {self.address} after "
            f"{self.connect_attempts} attempts: {last}; is the daemon running?"
        ) from last

    async def _read_loop(self, conn: _Connection) -> None:
        reason: OverlaydError = ConnectionLost(f"overlayd closed the connection at {self.address}")
        try:
            while True:
                body = await read_frame(conn.reader)
                if body is None:
                    break
                self._dispatch(conn, body)
        except FramingError as exc:
            reason = ConnectionLost(f"the connection to overlayd broke: {exc}")
        except OSError as exc:
            reason = ConnectionLost(f"the connection to overlayd broke: {exc}")
        finally:
            conn.fail(reason)
            if not self._closed:
                for stream in list(self._streams):
                    stream._push(DISCONNECTED)

    def _dispatch(self, conn: _Connection, body: bytes) -> None:
        try:
            frame = decode_frame(body)
        except ProtocolError as exc:
            future = conn.pending.pop(exc.request_id, None) if exc.request_id is not None else None
            if future is not None and not future.done():
                future.set_exception(exc)
            else:
                log.warning("ignoring an undecodable frame from overlayd: %s", exc)
            return
        if isinstance(frame, ResponseFrame):
            future = conn.pending.pop(frame.id, None)
            if future is None and frame.id == 0 and isinstance(frame.response, ErrResponse):
                # The daemon answers id 0 when it cannot tell which request it
                # refuses (e.g. permission denied at connect): every call fails.
                conn.fail(RemoteError(frame.response.message))
            elif future is None or future.done():
                log.debug("ignoring a response to unknown request %d", frame.id)
            else:
                future.set_result(frame.response)
        elif isinstance(frame, EventFrame):
            for stream in list(self._streams):
                if frame.event.event in stream.kinds:
                    stream._push(frame.event)
        else:
            log.warning("ignoring request frame %d sent by the daemon", frame.id)

    # -- generic call and events ----------------------------------------------

    async def call(
        self,
        request: AnyRequest,
        *,
        # A per-call timeout is part of this API; asyncio.timeout is used inside.
        timeout: float | _Unset | None = _UNSET,  # noqa: ASYNC109
    ) -> AnyResponse:
        """Send ``request`` and return the response.

        :raises RemoteError: the daemon answered ``err``.
        :raises RequestTimeout: no answer within ``timeout`` seconds.
        :raises ConnectionLost: the connection broke before the answer arrived.
        :raises ConnectError: the daemon could not be reached.
        """
        limit = self.timeout if isinstance(timeout, _Unset) else timeout
        conn = await self._ensure_connected()
        request_id = next(self._ids)
        body = encode_body(RequestFrame(id=request_id, request=request))
        future: asyncio.Future[AnyResponse] = asyncio.get_running_loop().create_future()
        conn.pending[request_id] = future
        try:
            async with asyncio.timeout(limit):
                try:
                    await write_frame(conn.writer, body)
                except OSError as exc:
                    conn.fail(ConnectionLost(f"sending to overlayd failed: {exc}"))
                response = await future
        except TimeoutError:
            raise RequestTimeout(
                f"overlayd did not answer {request.op} (request {request_id}) within "
                f"{limit} s; it may still complete"
            ) from None
        finally:
            conn.pending.pop(request_id, None)
        if isinstance(response, ErrResponse):
            raise RemoteError(response.message, op=request.op, request_id=request_id)
        return response

    async def subscribe(self, events: Iterable[str] | None = None) -> EventStream:
        """Subscribe to ``events`` (default: every kind) and return the stream of them.

        The daemon pushes nothing to a connection that did not subscribe. When
        this returns, the subscription is in place: every event emitted from
        then on reaches the stream.

        :raises ValueError: an unknown event kind.
        """
        stream = EventStream(self, event_kinds(events))
        self._streams.add(stream)
        try:
            await self._subscribe_connection()
        except BaseException:
            self._streams.discard(stream)
            raise
        return stream

    async def _subscribe_connection(self) -> None:
        """Subscribe the connection to the union of the open streams' kinds."""
        conn = await self._ensure_connected()
        wanted = frozenset().union(*(s.kinds for s in self._streams))
        if conn.subscribed == wanted:
            return
        request = HelloRequest(
            client=f"overlayd.client/{__version__}",
            protocol_version=PROTOCOL_VERSION,
            events=sorted(wanted),
        )
        await self._expect(request, HelloResponse)
        conn.subscribed = wanted

    async def events(self, events: Iterable[str] | None = None) -> AsyncGenerator[AnyEvent, None]:
        """Subscribe (see :meth:`subscribe`) and yield events until the client is closed."""
        stream = await self.subscribe(events)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def _expect(self, request: AnyRequest, kind: type[_R]) -> _R:
        response = await self.call(request)
        if not isinstance(response, kind):
            raise UnexpectedResponse(
                f"overlayd answered {request.op} with {response.result!r}, expected "
                f"{kind.model_fields['result'].default!r}; client and daemon disagree "
                "on the protocol (check `hello`)"
            )
        return response

    # -- typed ops (docs/reference/zlayer.rst §3) -----------------------------------

    async def hello(self, client: str = "overlayd.client") -> HelloResponse:
        """Version handshake: the daemon's protocol version, drivers and ops."""
        request = HelloRequest(client=f"{client}/{__version__}", protocol_version=PROTOCOL_VERSION)
        return await self._expect(request, HelloResponse)

    async def set_local_node_id(self, node_id: int) -> None:
        await self._expect(SetLocalNodeIdRequest(node_id=node_id), OkResponse)

    async def set_local_wg_pubkey(self, pubkey: str) -> None:
        await self._expect(SetLocalWgPubkeyRequest(pubkey=pubkey), OkResponse)

    async def setup_global_overlay(
        self,
        *,
        deployment: str,
        instance_id: str,
        cluster_cidr: str,
        wg_port: int,
        nat_enabled: bool,
        slice_cidr: str | None = None,
    ) -> str:
        """Create (or find) the global device; returns its interface name."""
        request = SetupGlobalOverlayRequest(
            deployment=deployment,
            instance_id=instance_id,
            cluster_cidr=cluster_cidr,
            slice_cidr=slice_cidr,
            wg_port=wg_port,
            nat_enabled=nat_enabled,
        )
        return (await self._expect(request, BridgeNameResponse)).name

    async def teardown_global_overlay(self) -> None:
        await self._expect(TeardownGlobalOverlayRequest(), OkResponse)

    async def setup_service_overlay(
        self, service: str, mode: OverlayModeName = "auto"
    ) -> ServiceOverlayResponse:
        """Create (or find) a service overlay.

        A ``bridge_name`` answer (ZLayer's daemon) is returned as a
        ``service_overlay`` with the requested mode (``auto`` resolved to ``shared``).
        """
        response = await self.call(SetupServiceOverlayRequest(service=service, mode=mode))
        if isinstance(response, ServiceOverlayResponse):
            return response
        if isinstance(response, BridgeNameResponse):
            resolved: OverlayModeName = "shared" if mode == "auto" else mode
            return ServiceOverlayResponse(name=response.name, mode=resolved)
        raise UnexpectedResponse(
            f"overlayd answered setup_service_overlay with {response.result!r}, "
            "expected 'service_overlay'"
        )

    async def teardown_service_overlay(self, service: str) -> None:
        await self._expect(TeardownServiceOverlayRequest(service=service), OkResponse)

    async def allocate_ip(self, service: str, *, join_global: bool = False) -> str:
        request = AllocateIpRequest(service=service, join_global=join_global)
        return (await self._expect(request, IpResponse)).ip

    async def release_ip(self, ip: str) -> None:
        await self._expect(ReleaseIpRequest(ip=ip), OkResponse)

    async def attach_container(
        self,
        handle: AnyHandle,
        service: str,
        *,
        join_global: bool = False,
        dns_server: str | None = None,
        dns_domain: str | None = None,
    ) -> AttachedResponse | GuestConfigResponse:
        """Attach a workload; a ``guest_managed`` handle gets a ``guest_config``."""
        request = AttachContainerRequest(
            handle=handle,
            service=service,
            join_global=join_global,
            dns_server=dns_server,
            dns_domain=dns_domain,
        )
        response = await self.call(request)
        if isinstance(response, AttachedResponse | GuestConfigResponse):
            return response
        raise UnexpectedResponse(
            f"overlayd answered attach_container with {response.result!r}, "
            "expected 'attached' or 'guest_config'"
        )

    async def detach_container(self, handle: AnyHandle) -> None:
        await self._expect(DetachContainerRequest(handle=handle), OkResponse)

    async def add_peer(
        self,
        public_key: str,
        endpoint: str,
        allowed_ips: str | Iterable[str],
        persistent_keepalive_secs: int = 0,
        *,
        service: str | None = None,
    ) -> None:
        """Add or update a peer; ``service`` targets that service's dedicated device."""
        request = AddPeerRequest(
            public_key=public_key,
            endpoint=endpoint,
            allowed_ips=_cidrs(allowed_ips),
            persistent_keepalive_secs=persistent_keepalive_secs,
            scope=_scope(service),
        )
        await self._expect(request, OkResponse)

    async def remove_peer(self, pubkey: str, *, service: str | None = None) -> None:
        request = RemovePeerRequest(pubkey=pubkey, scope=_scope(service))
        await self._expect(request, OkResponse)

    async def add_allowed_ip(self, pubkey: str, cidr: str, *, service: str | None = None) -> None:
        request = AddAllowedIpRequest(pubkey=pubkey, cidr=cidr, scope=_scope(service))
        await self._expect(request, OkResponse)

    async def remove_allowed_ip(
        self, pubkey: str, cidr: str, *, service: str | None = None
    ) -> None:
        request = RemoveAllowedIpRequest(pubkey=pubkey, cidr=cidr, scope=_scope(service))
        await self._expect(request, OkResponse)

    async def register_dns(self, name: str, ip: str) -> None:
        await self._expect(RegisterDnsRequest(name=name, ip=ip), OkResponse)

    async def unregister_dns(self, name: str) -> None:
        await self._expect(UnregisterDnsRequest(name=name), OkResponse)

    async def status(self) -> StatusResponse:
        return await self._expect(StatusRequest(), StatusResponse)

    async def nat_tick(self) -> None:
        await self._expect(NatTickRequest(), OkResponse)

    async def nat_peer_candidates(
        self, public_key: str, candidates: Iterable[NatCandidateInfo]
    ) -> None:
        """Pass a peer's NAT candidates (from its ``status.nat.candidates``)."""
        await self._expect(
            NatPeerCandidatesRequest(public_key=public_key, candidates=list(candidates)),
            OkResponse,
        )

    async def shutdown(self) -> None:
        """Ask the daemon to exit gracefully (it answers ``ok`` first)."""
        await self._expect(ShutdownRequest(), OkResponse)

    async def apply_peers(
        self, changes: Iterable[PeerChange], *, service: str | None = None
    ) -> None:
        """Apply a batch of peer changes to one device together."""
        request = ApplyPeersRequest(changes=list(changes), scope=_scope(service))
        await self._expect(request, OkResponse)

    async def list_attachments(
        self, service: str | None = None, *, handle: AnyHandle | None = None
    ) -> list[AttachmentInfo]:
        """Attachments: all, one service's, or the one of ``handle`` (empty if none)."""
        request = ListAttachmentsRequest(service=service, handle=handle)
        return (await self._expect(request, AttachmentsResponse)).attachments

    async def attach_interface(
        self,
        handle: AnyHandle,
        service: str,
        *,
        join_global: bool = False,
        dns_server: str | None = None,
        dns_domain: str | None = None,
        default_route: bool = True,
        create_mode: OverlayModeName | None = None,
    ) -> AttachmentInfo:
        """Attach a workload and return its interface's details (``attach_interface``).

        ``default_route=False`` routes only the cluster CIDR via the gateway;
        ``create_mode`` creates the service overlay first when it is missing.
        """
        request = AttachInterfaceRequest(
            handle=handle,
            service=service,
            join_global=join_global or None,
            dns_server=dns_server,
            dns_domain=dns_domain,
            default_route=None if default_route else False,
            create_mode=create_mode,
        )
        return (await self._expect(request, AttachmentResponse)).attachment

    async def list_leases(self, pool: str | None = None) -> list[LeaseInfo]:
        request = ListLeasesRequest(pool=pool)
        return (await self._expect(request, LeasesResponse)).leases

    async def gc(
        self, live: Iterable[AnyHandle], *, dry_run: bool = False, network: str | None = None
    ) -> GcReportResponse:
        """Detach every attachment whose handle is not in ``live``.

        ``network`` limits the candidates to the attachments of that CNI network.
        """
        request = GcRequest(live=list(live), dry_run=dry_run or None, network=network)
        return await self._expect(request, GcReportResponse)

    async def map_port(
        self,
        protocol: str,
        host_port: int,
        container_ip: str,
        container_port: int,
        *,
        host_ip: str | None = None,
    ) -> None:
        """Forward ``host_port`` to a container (overlayd extension ``map_port``)."""
        await self._port(MapPortRequest, protocol, host_port, container_ip, container_port, host_ip)

    async def unmap_port(
        self,
        protocol: str,
        host_port: int,
        container_ip: str,
        container_port: int,
        *,
        host_ip: str | None = None,
    ) -> None:
        """Remove a port mapping (overlayd extension ``unmap_port``)."""
        await self._port(
            UnmapPortRequest, protocol, host_port, container_ip, container_port, host_ip
        )

    async def _port(
        self,
        request_type: type[MapPortRequest | UnmapPortRequest],
        protocol: str,
        host_port: int,
        container_ip: str,
        container_port: int,
        host_ip: str | None,
    ) -> None:
        fields = {
            "protocol": protocol,
            "host_port": host_port,
            "container_ip": container_ip,
            "container_port": container_port,
            "host_ip": host_ip,
        }
        await self._expect(request_type.model_validate(fields), OkResponse)

    async def reconcile(self) -> ReconcileReportResponse:
        return await self._expect(ReconcileRequest(), ReconcileReportResponse)

    async def cluster_status(self) -> ClusterStatusResponse:
        """Cluster mode: the nodes this node sees (``err`` without ``[cluster]``)."""
        return await self._expect(ClusterStatusRequest(), ClusterStatusResponse)


class Client:
    """Blocking facade over :class:`AsyncClient` (same methods and arguments).

    It runs a private event loop in a daemon thread; do not call it from that
    loop's own callbacks. Close it (or use ``with``) to stop the thread.
    """

    def __init__(
        self,
        address: str = DEFAULT_SOCKET,
        *,
        timeout: float | None = 30.0,
        connect_attempts: int = 5,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="overlayd-client", daemon=True
        )
        self._thread.start()
        self._async = AsyncClient(
            address,
            timeout=timeout,
            connect_attempts=connect_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
        )

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop.is_closed():
            coro.close()
            raise ClientClosed("the overlayd client was closed; create a new one")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("Client methods cannot run on the client's own loop")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def address(self) -> str:
        return self._async.address

    def connect(self) -> None:
        self._run(self._async.connect())

    def close(self) -> None:
        """Close the connection and stop the background loop (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._async.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def call(self, request: AnyRequest, *, timeout: float | _Unset | None = _UNSET) -> AnyResponse:
        return self._run(self._async.call(request, timeout=timeout))

    def subscribe(self, events: Iterable[str] | None = None) -> SyncEventStream:
        """Subscribe now; a blocking iterator of events (see :meth:`AsyncClient.subscribe`)."""
        return SyncEventStream(self, self._run(self._async.subscribe(events)))

    def events(self, events: Iterable[str] | None = None) -> Generator[AnyEvent, None, None]:
        """Blocking iterator over pushed events; subscribes when first advanced."""
        stream = self.subscribe(events)
        try:
            yield from stream
        finally:
            stream.close()

    def hello(self, client: str = "overlayd.client") -> HelloResponse:
        return self._run(self._async.hello(client))

    def set_local_node_id(self, node_id: int) -> None:
        self._run(self._async.set_local_node_id(node_id))

    def set_local_wg_pubkey(self, pubkey: str) -> None:
        self._run(self._async.set_local_wg_pubkey(pubkey))

    def setup_global_overlay(
        self,
        *,
        deployment: str,
        instance_id: str,
        cluster_cidr: str,
        wg_port: int,
        nat_enabled: bool,
        slice_cidr: str | None = None,
    ) -> str:
        return self._run(
            self._async.setup_global_overlay(
                deployment=deployment,
                instance_id=instance_id,
                cluster_cidr=cluster_cidr,
                wg_port=wg_port,
                nat_enabled=nat_enabled,
                slice_cidr=slice_cidr,
            )
        )

    def teardown_global_overlay(self) -> None:
        self._run(self._async.teardown_global_overlay())

    def setup_service_overlay(
        self, service: str, mode: OverlayModeName = "auto"
    ) -> ServiceOverlayResponse:
        return self._run(self._async.setup_service_overlay(service, mode))

    def teardown_service_overlay(self, service: str) -> None:
        self._run(self._async.teardown_service_overlay(service))

    def allocate_ip(self, service: str, *, join_global: bool = False) -> str:
        return self._run(self._async.allocate_ip(service, join_global=join_global))

    def release_ip(self, ip: str) -> None:
        self._run(self._async.release_ip(ip))

    def attach_container(
        self,
        handle: AnyHandle,
        service: str,
        *,
        join_global: bool = False,
        dns_server: str | None = None,
        dns_domain: str | None = None,
    ) -> AttachedResponse | GuestConfigResponse:
        return self._run(
            self._async.attach_container(
                handle,
                service,
                join_global=join_global,
                dns_server=dns_server,
                dns_domain=dns_domain,
            )
        )

    def detach_container(self, handle: AnyHandle) -> None:
        self._run(self._async.detach_container(handle))

    def add_peer(
        self,
        public_key: str,
        endpoint: str,
        allowed_ips: str | Iterable[str],
        persistent_keepalive_secs: int = 0,
        *,
        service: str | None = None,
    ) -> None:
        self._run(
            self._async.add_peer(
                public_key,
                endpoint,
                allowed_ips,
                persistent_keepalive_secs,
                service=service,
            )
        )

    def remove_peer(self, pubkey: str, *, service: str | None = None) -> None:
        self._run(self._async.remove_peer(pubkey, service=service))

    def add_allowed_ip(self, pubkey: str, cidr: str, *, service: str | None = None) -> None:
        self._run(self._async.add_allowed_ip(pubkey, cidr, service=service))

    def remove_allowed_ip(self, pubkey: str, cidr: str, *, service: str | None = None) -> None:
        self._run(self._async.remove_allowed_ip(pubkey, cidr, service=service))

    def register_dns(self, name: str, ip: str) -> None:
        self._run(self._async.register_dns(name, ip))

    def unregister_dns(self, name: str) -> None:
        self._run(self._async.unregister_dns(name))

    def status(self) -> StatusResponse:
        return self._run(self._async.status())

    def nat_tick(self) -> None:
        self._run(self._async.nat_tick())

    def nat_peer_candidates(self, public_key: str, candidates: Iterable[NatCandidateInfo]) -> None:
        self._run(self._async.nat_peer_candidates(public_key, list(candidates)))

    def shutdown(self) -> None:
        self._run(self._async.shutdown())

    def apply_peers(self, changes: Iterable[PeerChange], *, service: str | None = None) -> None:
        self._run(self._async.apply_peers(list(changes), service=service))

    def list_attachments(
        self, service: str | None = None, *, handle: AnyHandle | None = None
    ) -> list[AttachmentInfo]:
        return self._run(self._async.list_attachments(service, handle=handle))

    def attach_interface(
        self,
        handle: AnyHandle,
        service: str,
        *,
        join_global: bool = False,
        dns_server: str | None = None,
        dns_domain: str | None = None,
        default_route: bool = True,
        create_mode: OverlayModeName | None = None,
    ) -> AttachmentInfo:
        return self._run(
            self._async.attach_interface(
                handle,
                service,
                join_global=join_global,
                dns_server=dns_server,
                dns_domain=dns_domain,
                default_route=default_route,
                create_mode=create_mode,
            )
        )

    def list_leases(self, pool: str | None = None) -> list[LeaseInfo]:
        return self._run(self._async.list_leases(pool))

    def gc(
        self, live: Iterable[AnyHandle], *, dry_run: bool = False, network: str | None = None
    ) -> GcReportResponse:
        return self._run(self._async.gc(list(live), dry_run=dry_run, network=network))

    def reconcile(self) -> ReconcileReportResponse:
        return self._run(self._async.reconcile())

    def cluster_status(self) -> ClusterStatusResponse:
        return self._run(self._async.cluster_status())

    def map_port(
        self,
        protocol: str,
        host_port: int,
        container_ip: str,
        container_port: int,
        *,
        host_ip: str | None = None,
    ) -> None:
        return self._run(
            self._async.map_port(protocol, host_port, container_ip, container_port, host_ip=host_ip)
        )

    def unmap_port(
        self,
        protocol: str,
        host_port: int,
        container_ip: str,
        container_port: int,
        *,
        host_ip: str | None = None,
    ) -> None:
        return self._run(
            self._async.unmap_port(
                protocol, host_port, container_ip, container_port, host_ip=host_ip
            )
        )
